"""The report's arithmetic on given runs, figure by figure (no store; MLflow's own Run entities).

The property test (test_rollup_properties.py) checks that every roll-up is the sum of its
counted runs; these pin the rest: which runs count, the best run, the order, the metric.
"""

from __future__ import annotations

import math
from collections import Counter

import pytest
from mlflow.entities import Metric, Run, RunData, RunInfo, RunTag

from mlflow_finops.spend import rollup
from mlflow_finops.spend.rollup import FIGURES, GroupCost, ReportError, RunCost


def rc(run_id: str, cost: float | None = None, *, experiment: str = "exp", model: str | None = None,
       team: str | None = None, nested_in: str | None = None, metric: float | None = None,
       start: float = 0.0, **figures: float | None) -> RunCost:
    return RunCost(run_id=run_id, run_name="", experiment_id=experiment, experiment=experiment, start_time=start,
                   end_time=None, status="FINISHED", team=team, model=model, nested_in=nested_in, cost_usd=cost,
                   metric=metric, **figures)


# ------------------------------------------------------------------ one run
def test_tracked_counted_key_and_label() -> None:
    plain = rc("a" * 32, 1.0, experiment="train", model="churn", team="growth")
    assert plain.tracked and plain.counted
    assert [plain.key(by) for by in ("experiment", "model", "team", "run")] == ["train", "churn", "growth", "a" * 32]
    assert plain.label == "a" * 8  # no name: the id's first 8 characters
    nameless = rc("b" * 32, None)
    assert not nameless.tracked and not nameless.counted
    assert (nameless.key("model"), nameless.key("team")) == ("(none)", "(none)")
    nested = rc("c" * 32, 2.0, nested_in="a" * 32)
    assert nested.tracked and not nested.counted
    named = RunCost("d" * 32, "my run", "1", "exp", 0.0, None, "FINISHED", None, None, None)
    assert named.label == "my run"


def test_group_cpu_efficiency_and_dict() -> None:
    assert GroupCost("team", "t").cpu_efficiency is None  # nothing allocated: no ratio, not 0
    g = GroupCost("team", "t", cpu_core_hours=0.25, cpu_allocated_core_hours=0.5)
    assert g.cpu_efficiency == 0.5
    d = g.to_dict()
    assert (d["level"], d["key"], d["cpu_efficiency"], d["cpu_core_hours"]) == ("team", "t", 0.5, 0.25)


def run_entity(metrics: dict[str, float], tags: dict[str, str], *, run_name: str | None = "r",
               start_ms: int = 1_700_000_000_500, end_ms: int | None = 1_700_000_360_000) -> Run:
    info = RunInfo(run_id="f" * 32, experiment_id="7", user_id="u", status="FINISHED", start_time=start_ms,
                   end_time=end_ms, lifecycle_stage="active", run_name=run_name)
    data = RunData(metrics=[Metric(k, v, 0, 0) for k, v in metrics.items()],
                   tags=[RunTag(k, v) for k, v in tags.items()])
    return Run(info, data)


def test_run_cost_reads_every_figure_and_tag() -> None:
    metrics = {f"finops/{name}": float(i + 1) for i, name in enumerate(FIGURES)}
    metrics["finops/gpu_hours"] = math.nan  # a figure that is not finite is unknown, not a number
    metrics.update({"accuracy": 0.9, "loss": math.inf, "system/cpu": 5.0})
    tags = {"finops.team": "growth", "finops.model": "churn", "finops.nested_in": "p" * 32}
    row, quality = rollup.run_cost(run_entity(metrics, tags), {"7": "churn-train"})
    expected = {name: float(i + 1) for i, name in enumerate(FIGURES)} | {"gpu_hours": None}
    assert {name: getattr(row, name) for name in FIGURES} == expected
    assert (row.run_id, row.run_name, row.experiment_id, row.experiment, row.status) == (
        "f" * 32, "r", "7", "churn-train", "FINISHED")
    assert (row.start_time, row.end_time) == (1_700_000_000.5, 1_700_000_360.0)
    assert (row.team, row.model, row.nested_in, row.metric) == ("growth", "churn", "p" * 32, None)
    assert quality == {"accuracy": 0.9}  # no finops/ or system/ metric, nothing infinite


@pytest.mark.parametrize("cost", [None, math.inf, -math.inf, math.nan], ids=["absent", "inf", "-inf", "nan"])
def test_a_run_without_a_finite_cost_is_untracked_with_no_figures(cost: float | None) -> None:
    metrics = {"finops/cpu_core_hours": 2.0, "accuracy": 0.5}
    if cost is not None:
        metrics["finops/cost_usd"] = cost
    row, quality = rollup.run_cost(run_entity(metrics, {}), {})
    assert not row.tracked
    assert all(getattr(row, name) is None for name in FIGURES)
    assert (row.team, row.model, row.nested_in) == (None, None, None)
    assert row.experiment == "7"  # an experiment not in the names: its id
    assert quality == {"accuracy": 0.5}


def test_run_name_falls_back_to_the_tag_and_a_missing_end_is_none() -> None:
    row, _ = rollup.run_cost(run_entity({}, {"mlflow.runName": "from-tag"}, run_name=None, start_ms=0,
                                        end_ms=None), {})
    assert (row.run_name, row.start_time, row.end_time) == ("from-tag", 0.0, None)
    row, _ = rollup.run_cost(run_entity({}, {}, run_name=None), {})
    assert row.run_name == ""


# ------------------------------------------------------------------ the metric
@pytest.mark.parametrize("name", ["accuracy", "f1", "f1_score", "roc_auc", "auc", "r2", "r2_score", "rmse", "mae",
                                  "mse", "loss"])
def test_a_well_known_quality_name_wins_a_tie(name: str) -> None:
    assert rollup.pick_metric(Counter({"aaa": 3, name: 3})) == name
    assert rollup.pick_metric(Counter({"aaa": 3, f"val_{name}": 3})) == f"val_{name}"
    assert rollup.pick_metric(Counter({"aaa": 3, f"eval/{name}": 3})) == f"eval/{name}"
    assert rollup.pick_metric(Counter({"aaa": 3, name.upper(): 3})) == name.upper()


def test_pick_metric_takes_the_most_shared_then_the_preferred_then_the_first_name() -> None:
    assert rollup.pick_metric(Counter()) is None
    assert rollup.pick_metric(Counter({"accuracy": 1, "zeta": 4})) == "zeta"  # shared by more runs
    assert rollup.pick_metric(Counter({"loss": 2, "accuracy": 2})) == "accuracy"  # earlier in the preferred list
    assert rollup.pick_metric(Counter({"zeta": 2, "beta": 2, "gamma": 1})) == "beta"
    assert rollup.pick_metric(Counter({"xaccuracy": 2, "beta": 2})) == "beta"  # a suffix needs its separator


@pytest.mark.parametrize("metric, goal", [("val_loss", "min"), ("RMSE", "min"), ("mean_abs_error", "min"),
                                          ("latency_ms", "min"), ("accuracy", "max"), ("r2", "max"),
                                          (None, "max")])
def test_metric_goal_follows_the_name(metric: str | None, goal: str) -> None:
    assert rollup.metric_goal(metric) == goal


def test_with_metric_sets_only_the_metric() -> None:
    r = rc("r1", 1.0)
    assert rollup.with_metric(r, 0.7) == rc("r1", 1.0, metric=0.7)


# ------------------------------------------------------------------ roll-ups
RUNS = [
    rc("r1", 3.0, experiment="e1", model="churn", team="growth", metric=0.7, idle_cost_usd=1.0, cpu_core_hours=2.0,
       gpu_hours=None, energy_kwh=0.5, co2e_kg=0.25, cpu_allocated_core_hours=4.0),
    rc("r2", 5.0, experiment="e1", model="churn", team="risk", metric=0.9, idle_cost_usd=0.5, cpu_core_hours=1.0,
       gpu_hours=1.5, energy_kwh=0.25, co2e_kg=0.125, cpu_allocated_core_hours=2.0),
    rc("r3", 1.0, experiment="e2", model=None, team="growth", metric=0.9),  # ties r2's metric: r2 stays best
    rc("n1", 50.0, experiment="e1", model="churn", team="growth", nested_in="r1", metric=1.0),
    rc("n2", 60.0, experiment="e1", model="churn", team="growth", nested_in="r1"),
    rc("u1", None, experiment="e1", model="churn", team="growth", metric=1.0, start=10.0),
    rc("u2", None, experiment="e2", model=None, team=None, start=20.0),
]


def test_total_counts_sums_and_best_run() -> None:
    t = rollup.total(RUNS, "max")
    assert (t.level, t.key, t.runs, t.nested, t.untracked) == ("total", "total", 3, 2, 2)
    assert (t.cost_usd, t.idle_cost_usd, t.cpu_core_hours, t.gpu_hours, t.energy_kwh, t.co2e_kg,
            t.cpu_allocated_core_hours) == (9.0, 1.5, 3.0, 1.5, 0.75, 0.375, 6.0)
    assert (t.best_metric, t.best_run_id, t.best_run_cost_usd) == (0.9, "r2", 5.0)  # not the nested 1.0
    low = rollup.total(RUNS, "min")
    assert (low.best_metric, low.best_run_id, low.best_run_cost_usd) == (0.7, "r1", 3.0)
    assert rollup.total([], "max") == GroupCost("total", "total")


def test_groups_per_level_most_expensive_first() -> None:
    by_team = rollup.groups(RUNS, "team", "max")
    assert [(g.level, g.key, g.runs, g.nested, g.untracked, g.cost_usd) for g in by_team] == [
        ("team", "risk", 1, 0, 0, 5.0), ("team", "growth", 2, 2, 1, 4.0), ("team", "(none)", 0, 0, 1, 0.0)]
    assert (by_team[1].best_run_id, by_team[1].best_metric) == ("r3", 0.9)
    by_model = rollup.groups(RUNS, "model", "min")
    assert [(g.key, g.cost_usd, g.best_run_id) for g in by_model] == [("churn", 8.0, "r1"), ("(none)", 1.0, "r3")]
    by_exp = rollup.groups(RUNS, "experiment")
    assert [(g.key, g.cost_usd, g.best_run_id) for g in by_exp] == [("e1", 8.0, "r2"), ("e2", 1.0, "r3")]
    with pytest.raises(ReportError, match=r"^cannot group by 'run' \(expected one of: experiment, model, team\)$"):
        rollup.groups(RUNS, "run")


def test_groups_of_equal_cost_are_in_key_order() -> None:
    runs = [rc("a", 2.0, team="zeta"), rc("b", 2.0, team="alpha"), rc("c", 2.0, team="mid")]
    assert [g.key for g in rollup.groups(runs, "team")] == ["alpha", "mid", "zeta"]


def test_sorted_runs_tracked_by_cost_then_untracked_newest_first() -> None:
    assert [r.run_id for r in rollup.sorted_runs(RUNS)] == ["n2", "n1", "r2", "r1", "r3", "u2", "u1"]
    assert [r.run_id for r in rollup.sorted_runs(iter(RUNS[:2]))] == ["r2", "r1"]


def test_the_first_of_equal_runs_stays_best_in_either_direction() -> None:
    runs = [rc("first", 1.0, metric=0.5), rc("second", 2.0, metric=0.5)]
    assert rollup.total(runs, "max").best_run_id == "first"
    assert rollup.total(runs, "min").best_run_id == "first"


def test_a_free_run_sorts_after_a_cheap_one() -> None:
    runs = [rc("free", 0.0), rc("cheap", 0.5), rc("dear", 3.0)]
    assert [r.run_id for r in rollup.sorted_runs(runs)] == ["dear", "cheap", "free"]
