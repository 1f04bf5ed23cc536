"""Cost reports over a real SQLite MLflow store: roll-ups, untracked runs, filters, paging, CLI
(how a report reads, CSV / JSON / HTML, is tests/spend/test_render.py)."""

from __future__ import annotations

import re
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from support.tracked_runs import cost_of, tracked_store  # noqa: F401

from mlflow_finops.cli import cli
from mlflow_finops.spend.charts import pareto_front
from mlflow_finops.spend.report import REPORTS_EXPERIMENT, ReportError, build_report, parse_when

PNG = b"\x89PNG\r\n\x1a\n"


def test_rollups_skip_nested_and_show_untracked(tracked_store: dict) -> None:
    rep = build_report()
    by_id = {r.run_id: r for r in rep.runs}
    assert len(rep.runs) == 5
    untracked = by_id[tracked_store["untracked"]]
    assert not untracked.tracked and untracked.cost_usd is None and untracked.metric is None
    assert by_id[tracked_store["nested"]].nested_in == tracked_store["churn-1"]

    parents = [cost_of(tracked_store[k]) for k in ("churn-0", "churn-1")]
    exp = {g.key: g for g in rep.groups("experiment")}
    assert exp["churn-train"].cost_usd == pytest.approx(sum(parents))  # child's cost is inside churn-1's
    assert (exp["churn-train"].runs, exp["churn-train"].nested, exp["churn-train"].untracked) == (2, 1, 1)
    assert rep.total().cost_usd == pytest.approx(sum(parents) + cost_of(tracked_store["fraud-0"]))
    assert rep.metric == "accuracy" and rep.goal == "max"
    assert exp["churn-train"].best_metric == 0.80  # the untracked run's 0.99 is not a costed result
    assert exp["churn-train"].best_run_cost_usd == pytest.approx(parents[1])
    assert {g.key for g in rep.groups("team")} == {"growth", "risk"}
    assert REPORTS_EXPERIMENT not in {r.experiment for r in rep.runs}


def test_filters_go_to_the_store(tracked_store: dict) -> None:
    rep = build_report(model="fraud")
    assert [r.run_id for r in rep.runs] == [tracked_store["fraud-0"]]
    rep = build_report(experiments=["churn-train"], team="growth")
    assert {r.experiment for r in rep.runs} == {"churn-train"} and len(rep.runs) == 4
    assert len(build_report(since=datetime(2099, 1, 1, tzinfo=timezone.utc)).runs) == 0


def test_paging_reads_every_run_in_small_pages(sqlite_uri: str) -> None:
    client = MlflowClient()
    exp = client.create_experiment("many")
    now = int(time.time() * 1000)
    for i in range(11):
        run = client.create_run(exp, tags={"finops.tracked": "true"})
        client.log_batch(run.info.run_id, metrics=[Metric("finops/cost_usd", 1.0 + i, now, 1)])
    pages: list[int] = []
    rep = build_report(page_size=4, on_page=pages.append)
    assert pages == [4, 4, 3] and rep.pages == 3
    assert len({r.run_id for r in rep.runs}) == 11
    assert rep.total().cost_usd == pytest.approx(sum(1.0 + i for i in range(11)))


def test_pareto_front() -> None:
    pts = [(1.0, 0.70), (2.0, 0.80), (3.0, 0.75), (0.5, 0.60), (2.0, 0.85), (5.0, 0.85)]
    assert pareto_front(pts, "max") == [3, 0, 4]  # cheapest first; (5.0, 0.85) buys nothing more
    assert pareto_front([(1.0, 0.3), (2.0, 0.2), (3.0, 0.25)], "min") == [0, 1]


def test_parse_when() -> None:
    now = datetime(2026, 11, 20, 12, tzinfo=timezone.utc)
    assert parse_when("2026-11-01") == datetime(2026, 11, 1, tzinfo=timezone.utc)
    assert parse_when("2026-11-30", end=True) == datetime(2026, 12, 1, tzinfo=timezone.utc)
    assert parse_when("7d", now=now) == datetime(2026, 11, 13, 12, tzinfo=timezone.utc)
    assert parse_when("2026-11-01T08:00+02:00").hour == 8
    with pytest.raises(ReportError, match="bad date 'yesterday-ish'"):
        parse_when("yesterday-ish")


# ------------------------------------------------------------------ CLI
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--experiment", "nope"], "unknown experiment 'nope' (known: "),
        (["--since", "2026-13-45"], "bad date '2026-13-45'"),
        (["--since", "2026-11-10", "--until", "2026-11-01"], "empty period"),
    ],
)
def test_cli_bad_arguments_exit_2_with_one_line(tracked_store: dict, args: list[str], message: str) -> None:
    res = CliRunner().invoke(cli, ["report", *args])
    assert res.exit_code == 2, res.output
    assert message in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_cli_report_table_csv_charts_and_log_to_mlflow(tracked_store: dict, tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(cli, ["report", "--experiment", "churn-train"])
    assert res.exit_code == 0, res.output
    assert "Spend by experiment" in res.stdout and "not-tracked" in res.stdout
    assert re.search(r"not-tracked\s.*\suntracked\s", res.stdout)

    res = runner.invoke(cli, ["report", "--format", "csv", "--by", "team"])
    assert res.exit_code == 0 and res.stdout.startswith("level,key,runs")

    out = tmp_path / "r.html"
    res = runner.invoke(cli, ["report", "--format", "html", "-o", str(out), "--charts", str(tmp_path / "c"),
                              "--log-to-mlflow"])
    assert res.exit_code == 0, res.output
    assert "<svg" in out.read_text()
    for name in ("cost_over_time", "cost_vs_metric"):
        assert (tmp_path / "c" / f"{name}.png").read_bytes().startswith(PNG)
        assert "<svg" in (tmp_path / "c" / f"{name}.html").read_text()
    client = MlflowClient()
    exp = client.get_experiment_by_name(REPORTS_EXPERIMENT)
    (run,) = client.search_runs([exp.experiment_id])
    files = {a.path for a in client.list_artifacts(run.info.run_id, "charts")}
    assert {"charts/cost_over_time.png", "charts/cost_vs_metric.html"} <= files
    assert run.data.metrics["report/untracked_runs"] == 1
    assert run.data.metrics["report/cost_usd"] == pytest.approx(build_report().total().cost_usd)
    assert "finops/cost_usd" not in run.data.metrics  # the report run itself is not a tracked run
