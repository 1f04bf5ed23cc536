"""The plugin against MLflow as teams deploy it: a real `mlflow server` over a real PostgreSQL.

One PostgreSQL server (initdb into a temp folder, on 127.0.0.1) and one `mlflow server
--backend-store-uri postgresql://...` on it serve the whole module; each test works in
experiments and model names of its own. Skipped, with the reason, where no PostgreSQL server
binaries or driver are installed (``.ci/install-postgres``, ``pip install 'mlflow-finops[postgres]'``).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

import mlflow
import pytest
import requests
from click.testing import CliRunner
from conftest import MlflowServer
from drift.test_concurrency import race
from drift_support import frame
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from postgres_support import PostgresServer, why_no_postgres
from retrain.test_requests import _all_at_once

import mlflow_finops
from mlflow_finops.cli import cli
from mlflow_finops.money import format_usd
from mlflow_finops.names import ENV_REPORT_READ
from mlflow_finops.policy import BudgetEnvelope, load_policy
from mlflow_finops.retrain import request_retrain
from mlflow_finops.spend.budget import spend
from mlflow_finops.spend.report import build_report

pytestmark = [pytest.mark.server, pytest.mark.postgres]


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL 15+ server on 127.0.0.1, stopped (and its folder removed) at session end."""
    reason = why_no_postgres()
    if reason:
        pytest.skip(reason)
    server = PostgresServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mlflow_pg_server(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """`mlflow server --backend-store-uri postgresql://... --app-name finops` (the FinOps page plugin).

    MLflow makes the schema with its own migrations on first start.
    """
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-pg-server"), backend_uri=postgres.uri, app_name="finops")
    server.start(timeout_s=180)
    yield server
    server.stop()


@pytest.fixture
def pg_uri(mlflow_pg_server: MlflowServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The PostgreSQL-backed server as this test's tracking URI (in-process and for subprocesses)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_pg_server.url)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    mlflow.set_tracking_uri(mlflow_pg_server.url)
    yield mlflow_pg_server.url
    mlflow.set_tracking_uri(None)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def make_run(client: MlflowClient, exp_id: str, start: datetime, cost: float | None, **tags: str) -> str:
    """A run as the tracker leaves it: finops.* tags and final finops/* metrics (cost None = untracked)."""
    run = client.create_run(exp_id, start_time=ms(start), tags={f"finops.{k}": v for k, v in tags.items()})
    if cost is not None:
        client.log_batch(run.info.run_id, metrics=[
            Metric("finops/cost_usd", cost, ms(start), 1),
            Metric("finops/idle_cost_usd", cost / 4, ms(start), 1),
            Metric("finops/cpu_core_hours", cost * 10, ms(start), 1),
            Metric("accuracy", 0.5 + cost / 100, ms(start), 1),
        ])
    client.set_terminated(run.info.run_id, end_time=ms(start) + 1000)
    return run.info.run_id


def test_the_store_is_postgresql(postgres: PostgresServer, pg_uri: str) -> None:
    """Guard for every test below: the server really stores in PostgreSQL (MLflow's tables are there)."""
    exp = MlflowClient().create_experiment(unique("pg-guard"))
    rows = postgres.execute(f"SELECT name FROM experiments WHERE experiment_id = {int(exp)}")
    assert rows and rows[0][0].startswith("pg-guard-")


def test_autolog_delivers_cost_of_a_run(pg_uri: str) -> None:
    mlflow_finops.autolog(interval_s=0.2)
    mlflow.set_experiment(unique("pg-autolog"))
    with mlflow.start_run() as run:
        end = time.process_time() + 0.3
        while time.process_time() < end:
            sum(i * i for i in range(10_000))
        mlflow.log_metric("accuracy", 0.9)
    got = MlflowClient().get_run(run.info.run_id)
    assert got.data.metrics["finops/cost_usd"] > 0
    assert got.data.metrics["finops/cpu_core_hours"] * 3600 >= 0.25
    assert got.data.tags["finops.tracking_status"] == "complete"
    assert len(MlflowClient().get_metric_history(run.info.run_id, "finops/cpu_core_hours")) >= 2  # live, then final


@pytest.mark.slow
def test_two_schedulers_judge_one_window_once(pg_uri: str, tmp_path: Path) -> None:
    model = unique("churn").replace("-", "_")
    (tmp_path / "incoming").mkdir()
    frame(2000, seed=1).to_parquet(tmp_path / "ref.parquet")
    frame(800, seed=2, shift=1.0).to_parquet(tmp_path / "incoming" / "window.parquet")
    os.utime(tmp_path / "incoming" / "window.parquet", (time.time() - 60, time.time() - 60))  # settled
    (tmp_path / "finops.toml").write_text(
        f'[drift]\nmin_rows = 100\n[models.{model}]\nreference = "ref.parquet"\ncurrent = "incoming"\n'
        'schedule = "0 * * * *"\n'
    )
    results = race("schedule", str(tmp_path / "finops.toml"), 2, dict(os.environ), tmp_path)
    lines = [r.stdout.strip() for r in results]
    assert sorted(r.returncode for r in results) == [0, 10], (lines, [r.stderr[-2000:] for r in results])
    assert any("checked -> retrain" in s for s in lines)
    assert any("claimed_elsewhere" in s or "already_checked" in s for s in lines)
    client = MlflowClient()
    exp = client.get_experiment_by_name(f"finops-monitoring/{model}")
    checks = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("finops.workload") == "drift_check"]
    assert len(checks) == 1 and checks[0].data.tags["finops.decision"] == "retrain"


def test_budget_spend_counts_the_runs(pg_uri: str) -> None:
    client = MlflowClient()
    model = unique("budget-model")
    exp = client.create_experiment(unique("pg-budget"))
    now = datetime.now(timezone.utc)
    start = now - timedelta(minutes=5)  # inside any period that contains now (nearly always; see below)
    parent = make_run(client, exp, start, 3.0, model=model)
    make_run(client, exp, start, 1.0, model=model, nested_in=parent)  # inside its parent's cost
    make_run(client, exp, start, 2.5, model=model)
    make_run(client, exp, start, None, model=model)  # untracked
    make_run(client, exp, start, 9.0, model=unique("other"))
    st = spend(BudgetEnvelope(amount_usd=10, models=[model], period="month"), client, now, page_size=2)
    if start < st.period_start:  # the month began in the last 5 minutes
        pytest.skip("the budget period began between the runs and the check")
    assert st.runs == 2 and st.spent_usd == pytest.approx(5.5)
    assert [c for _, c in st.points] == [2.5, 3.0] or [c for _, c in st.points] == [3.0, 2.5]


def test_retrain_request_is_one_per_drift_run(pg_uri: str, tmp_path: Path) -> None:
    model = unique("retrain").replace("-", "_")
    (tmp_path / "finops.toml").write_text(f'[models.{model}]\nreference = "ref.csv"\n')
    policy = load_policy(tmp_path / "finops.toml")
    client = MlflowClient()
    exp = client.create_experiment(unique("pg-drift-runs"))
    drift = [client.create_run(exp).info.run_id for _ in range(2)]
    ids = _all_at_once(3, lambda: request_retrain(policy, model, drift_run_id=drift[0], client=MlflowClient()))
    assert len(set(ids)) == 1, ids
    assert request_retrain(policy, model, drift_run_id=drift[0]) == ids[0]  # asked again: the same request
    assert client.get_run(drift[0]).data.tags["finops.retrain_run_id"] == ids[0]
    other = request_retrain(policy, model, drift_run_id=drift[1])  # another decision, another request
    requests = client.search_runs([client.get_experiment_by_name(f"finops-retrains/{model}").experiment_id])
    assert other != ids[0] and sorted(r.info.run_id for r in requests) == sorted([ids[0], other])


def test_report_cli_totals_equal_the_runs(pg_uri: str) -> None:
    client = MlflowClient()
    name = unique("pg-report")
    exp = client.create_experiment(name)
    now = datetime.now(timezone.utc).replace(microsecond=0)
    old = now - timedelta(days=40)
    costs = {"a": 1.25, "b": 2.5, "c": 4.0}
    ids = {k: make_run(client, exp, now - timedelta(hours=1), c, team="growth" if k != "c" else "risk", model="m")
           for k, c in costs.items()}
    make_run(client, exp, now - timedelta(hours=1), 0.5, team="growth", model="m", nested_in=ids["a"])
    make_run(client, exp, now - timedelta(hours=1), None, team="growth", model="m")  # untracked
    make_run(client, exp, old, 100.0, team="growth", model="m")  # before --since

    runner = CliRunner()
    res = runner.invoke(cli, ["report", "-e", name, "--format", "json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    s = doc["summary"]
    assert (s["runs"], s["tracked_runs"], s["nested_runs"], s["untracked_runs"]) == (6, 4, 1, 1)
    assert s["cost_usd"] == pytest.approx(sum(costs.values()) + 100.0)
    assert s["best_run_id"] is not None

    since = (now - timedelta(days=1)).isoformat()
    res = runner.invoke(cli, ["report", "-e", name, "--since", since, "--team", "growth", "--format", "json"],
                        catch_exceptions=False)
    assert res.exit_code == 0, res.output
    s = json.loads(res.output)["summary"]
    assert (s["tracked_runs"], s["nested_runs"], s["untracked_runs"]) == (2, 1, 1)
    assert s["cost_usd"] == pytest.approx(costs["a"] + costs["b"])
    # the same figures as summing MLflow's own search over the same runs
    frame_ = mlflow.search_runs(experiment_names=[name], filter_string=f"attributes.start_time >= {ms(now) - 86_400_000}"
                                " AND tags.\"finops.team\" = 'growth' AND tags.\"finops.nested_in\" IS NULL")
    assert frame_["metrics.finops/cost_usd"].sum() == pytest.approx(s["cost_usd"])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ENV_REPORT_READ, "search_runs")
        report = build_report(experiments=[name], page_size=2)  # small pages: the paging path over REST
    assert report.pages >= 3 and report.total().cost_usd == pytest.approx(sum(costs.values()) + 100.0)


@pytest.mark.parametrize("scope", [{}, {"team": "growth", "since": 1}, {"model": "m2", "include_deleted": True}],
                         ids=["all", "team-since", "model-deleted"])
def test_report_projection_on_postgresql_equals_search_runs(pg_uri: str, monkeypatch: pytest.MonkeyPatch,
                                                            scope: dict) -> None:
    """The finops app's projection (SQL on PostgreSQL, in the server) gives the report `search_runs` gives."""
    client = MlflowClient()
    name = unique("pg-projection")
    exp = client.create_experiment(name)
    now = datetime.now(timezone.utc).replace(microsecond=0)
    for i in range(9):
        rid = make_run(client, exp, now - timedelta(days=i), None if i == 4 else 0.5 * (i + 1),
                       team=("growth", "risk")[i % 2], model=("m", "m2")[i % 3 == 0])
        if i == 6:
            client.delete_run(rid)
    kwargs = dict(scope, experiments=[name])
    if kwargs.pop("since", None):
        kwargs["since"] = now - timedelta(days=5)
    docs = []
    for how in ("auto", "search_runs"):
        monkeypatch.setenv(ENV_REPORT_READ, how)
        docs.append(json.loads(build_report(**kwargs).to_json()))
    assert docs[0] == docs[1] and docs[0]["summary"]["runs"] > 0


def test_finops_page_plugin_sums_the_runs(pg_uri: str) -> None:
    """The report plugin (`--app-name finops`) reads the PostgreSQL store in-process: its team row is the runs' sum."""
    client = MlflowClient()
    team = unique("pg-page-team")
    exp = client.create_experiment(unique("pg-page"))
    start = datetime.now(timezone.utc) - timedelta(hours=1)
    parent = make_run(client, exp, start, 1.25, team=team, model="page-model")
    make_run(client, exp, start, 2.5, team=team, model="page-model")
    make_run(client, exp, start, 0.5, team=team, model="page-model", nested_in=parent)  # inside its parent
    make_run(client, exp, start, None, team=team, model="page-model")  # untracked
    resp = requests.get(f"{pg_uri}/finops/", params={"since": "2d", "until": "now"}, timeout=300)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
    page = resp.text
    assert "cannot read the tracking store" not in page, page[-2000:]
    row = page[page.index(f"<td>{team}</td>"):]
    row = row[: row.index("</tr>")]
    assert f"<td>{format_usd(3.75)}</td>" in row and "<td>2 (+1 nested)</td>" in row, row
