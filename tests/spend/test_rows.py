"""The report's rows on disk: the same rows, orders and sums as the lists they replace, in bounded memory.

No store: rows are made here, as :func:`~mlflow_finops.spend.rollup.run_cost` makes them.
"""

from __future__ import annotations

import csv
import io
import json
import math
import random
import tracemalloc
from pathlib import Path

import pyarrow.parquet as pq
from hypothesis import given, settings
from hypothesis import strategies as st

from mlflow_finops.spend import charts, rollup
from mlflow_finops.spend.focus import COLUMNS, iter_focus_rows, to_csv, to_parquet
from mlflow_finops.spend.report import CostReport
from mlflow_finops.spend.rollup import GROUP_LEVELS, RunCost
from mlflow_finops.spend.rows import RunTable


def rc(i: int, cost: float | None, *, start: float = 0.0, nested: bool = False, experiment: str = "e",
       metric: float | None = None, team: str | None = None, gpu: float | None = None) -> RunCost:
    return RunCost(run_id=f"r{i:06d}", run_name=f"run {i}", experiment_id=experiment, experiment=experiment,
                   start_time=start, end_time=start + 60.0, status="FINISHED", team=team, model=None,
                   nested_in="r000000" if nested else None, cost_usd=cost, gpu_hours=gpu,
                   cpu_core_hours=None if cost is None else cost * 2, metric=metric)


# Few distinct costs and start times: ties everywhere, where an order is easiest to get wrong.
rows = st.lists(
    st.tuples(st.one_of(st.none(), st.sampled_from([0.0, 0.5, 1.0, 2.0])), st.sampled_from([0.0, 5.0, 9.0]),
              st.booleans(), st.sampled_from(["a", "b"]), st.sampled_from([None, 0.5, 0.7]),
              st.sampled_from([None, "", "growth"])),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(rows, st.sampled_from(["max", "min"]))
def test_the_table_gives_back_the_rows_in_every_order_the_report_uses(spec, goal: str) -> None:
    runs = [rc(i, cost, start=start, nested=nested, experiment=exp, metric=metric, team=team)
            for i, (cost, start, nested, exp, metric, team) in enumerate(spec)]
    table = RunTable(runs)
    assert list(table) == runs and len(table) == len(runs)
    assert [r.run_id for r in table.select("all", "cost")] == [r.run_id for r in rollup.sorted_runs(runs)]
    assert list(table.select("all", "start")) == sorted(runs, key=lambda r: (r.start_time, r.run_id))
    for which, keep in (("counted", lambda r: r.counted), ("untracked", lambda r: not r.tracked),
                        ("nested", lambda r: r.tracked and r.nested_in is not None)):
        assert list(table.select(which)) == [r for r in runs if keep(r)]
        assert table.count(which) == sum(1 for r in runs if keep(r))
    report = CostReport(runs=runs, goal=goal)  # sums as the rows arrive, best runs in SQL: as rollup's
    assert report.total() == rollup.total(runs, goal)
    for level in GROUP_LEVELS:
        assert report.groups(level) == rollup.groups(runs, level, goal)


def test_the_metric_is_chosen_after_every_run_and_tags_stay_with_their_run() -> None:
    table = RunTable()
    table.append(rc(0, 1.0), {"accuracy": 0.8, "loss": 0.3}, {"finops.team": "growth"})
    table.append(rc(1, 2.0), {"accuracy": 0.9})
    table.append(rc(2, None), None, {"finops.team": "risk"})  # untracked: no metric is read for it
    assert table.metric_counts() == {"accuracy": 2, "loss": 1}
    table.set_metric("loss")
    assert [r.metric for r in table] == [0.3, None, None]
    table.set_metric("accuracy")
    assert [r.metric for r in table] == [0.8, 0.9, None]
    assert dict(table.tags) == {"r000000": {"finops.team": "growth"}, "r000002": {"finops.team": "risk"}}
    assert [(r.run_id, tags) for r, tags in table.select_with_tags("all", "cost")] == [
        ("r000001", {}), ("r000000", {"finops.team": "growth"}), ("r000002", {"finops.team": "risk"})]
    assert not table.any_gpu()
    table.append(rc(3, 1.0, gpu=0.5))
    assert table.any_gpu()


def test_an_empty_report_writes_valid_json_and_a_header_only_csv() -> None:
    report = CostReport(runs=[])
    doc = json.loads(report.to_json())
    assert doc["runs"] == [] and doc["summary"]["runs"] == 0
    assert report.to_csv("run").count("\n") == 1
    assert not report.runs and not report.counted


def test_json_lists_every_run_most_expensive_first() -> None:
    runs = [rc(i, None if i % 7 == 0 else float(i % 5), start=float(i), metric=i / 100) for i in range(30)]
    doc = json.loads(CostReport(runs=runs, metric="accuracy").to_json())
    assert [r["run_id"] for r in doc["runs"]] == [r.run_id for r in rollup.sorted_runs(runs)]
    assert doc["runs"][0]["metric_name"] == "accuracy"
    assert doc["summary"]["cost_usd"] == rollup.total(runs).cost_usd


def _report_peak(n: int) -> int:
    """Peak Python memory while a report of ``n`` runs is built, summed and written out."""
    rnd = random.Random(n)
    tracemalloc.start()
    try:
        table = RunTable()
        for i in range(n):
            cost = None if i % 20 == 0 else rnd.random()
            table.append(rc(i, cost, start=float(i), experiment=f"exp-{i % 4}", team=f"t{i % 8}"),
                         {"accuracy": rnd.random()} if cost is not None else None)
        table.set_metric("accuracy")
        report = CostReport(runs=table, metric="accuracy")
        sink = io.StringIO()
        for fmt in ("json", "csv"):
            report.write(fmt, _Discard(sink))  # type: ignore[arg-type]
        report.groups("team")
        report._metric_points()
        charts.thin_cumulative((r.experiment, r.start_time, r.cost_usd) for r in table.select("counted", "start"))
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


class _Discard:
    """A text sink that keeps nothing (what -o /dev/null is to the CLI)."""

    def __init__(self, _: io.StringIO) -> None:
        self.chars = 0

    def write(self, text: str) -> int:
        self.chars += len(text)
        return len(text)


def test_a_report_keeps_no_row_per_run_in_memory() -> None:
    small, large = _report_peak(3_000), _report_peak(15_000)
    # 12,000 more runs held as RunCost objects would be ~8 MB more; the table holds them on disk.
    assert large - small < 1024 * 1024, (small, large)


def test_thinned_spend_is_bounded_and_exact_where_it_is_kept() -> None:
    rnd = random.Random(3)
    points = [(("a", "b")[i % 3 == 0], float(i), rnd.random()) for i in range(10_000)]
    kept = charts.thin_cumulative(points, limit=100)
    for series in ("a", "b"):
        mine = [(t, c) for s, t, c in kept if s == series]
        assert 100 <= len(mine) <= 200
        assert math.isclose(sum(c for _, c in mine), sum(c for s, _, c in points if s == series), rel_tol=1e-9)
        full = 0.0
        at: dict[float, float] = {}
        for s, t, c in points:
            if s == series:
                full += c
                at[t] = full
        running = 0.0
        for t, c in mine:  # the cumulative line through the kept points is the true one at each of them
            running += c
            assert math.isclose(running, at[t], rel_tol=1e-9)
    few = [("a", 1.0, 0.5), ("a", 2.0, 0.25)]
    assert charts.thin_cumulative(few) == few


def test_the_cost_vs_metric_sample_keeps_the_whole_pareto_front() -> None:
    rnd = random.Random(5)
    runs = [rc(i, rnd.random(), metric=rnd.random(), start=float(i)) for i in range(3_000)]
    report = CostReport(runs=runs, metric="accuracy", goal="max")
    points, drawn_from = report._metric_points(limit=200)
    assert drawn_from == 3_000 and len(points) < 260
    everything = [(r.cost_usd, r.metric) for r in runs]
    true_front = {runs[i].label for i in charts.pareto_front(everything, "max")}
    sample_front = {points[i][0] for i in charts.pareto_front([(p[1], p[2]) for p in points], "max")}
    assert sample_front == true_front
    low = CostReport(runs=runs, metric="loss", goal="min")._metric_points(limit=200)[0]
    assert {low[i][0] for i in charts.pareto_front([(p[1], p[2]) for p in low], "min")} == {
        runs[i].label for i in charts.pareto_front(everything, "min")}
    all_points, none = CostReport(runs=runs[:150], metric="accuracy")._metric_points(limit=200)
    assert none is None and len(all_points) == 150


def test_the_chart_counts_only_runs_with_a_finite_metric_and_cost() -> None:
    inf, nan = math.inf, math.nan
    runs = [rc(0, 1.0, metric=0.5), rc(1, 1.0, metric=inf), rc(2, 1.0, metric=-inf), rc(3, 1.0, metric=nan),
            rc(4, 1.0), rc(5, inf, metric=0.5), rc(6, None, metric=0.5), rc(7, 1.0, metric=0.5, nested=True),
            rc(8, 0.0, metric=0.0)]
    table = RunTable(runs)
    assert table.count("charted") == 2
    assert [r.run_id for r in table.select("charted")] == [runs[0].run_id, runs[8].run_id]
    points, drawn_from = CostReport(runs=runs * 3, metric="accuracy")._metric_points(limit=4)
    assert drawn_from == 6 and {p[0] for p in points} <= {runs[0].label, runs[8].label}


def test_focus_parquet_is_written_in_row_groups_with_the_rows_of_the_csv(tmp_path: Path) -> None:
    runs = [(rc(i, float(i + 1), start=1_700_000_000.0 + 3600 * i), {"finops.team": "growth"}) for i in range(5)]
    out = tmp_path / "focus.parquet"
    to_parquet(iter_focus_rows(iter(runs)), str(out), batch=2)
    assert pq.ParquetFile(out).num_row_groups == 3
    table = pq.read_table(out)
    assert tuple(table.column_names) == COLUMNS
    rows = list(csv.DictReader(io.StringIO(to_csv(iter_focus_rows(iter(runs))))))
    assert table.column("BilledCost").to_pylist() == [float(r["BilledCost"]) for r in rows] == [1.0, 2.0, 3.0, 4.0,
                                                                                                5.0]
