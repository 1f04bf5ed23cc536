"""A roll-up equals the sum of its non-nested tracked runs, at every level (hypothesis, no store)."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from mlflow_finops.spend.report import GROUP_LEVELS, CostReport, RunCost

money = st.floats(min_value=0, max_value=1e4, allow_nan=False)
runs = st.lists(
    st.tuples(
        st.sampled_from(["exp-a", "exp-b", "exp-c"]),
        st.sampled_from(["churn", "fraud", None]),
        st.sampled_from(["growth", "risk", None]),
        st.one_of(st.none(), money),  # None: untracked
        st.booleans(),  # nested
        money,
    ),
    max_size=30,
)


def build(rows) -> CostReport:
    out = []
    for i, (exp, model, team, cost, nested, cpu) in enumerate(rows):
        out.append(RunCost(
            run_id=f"r{i}", run_name=f"run {i}", experiment_id=exp, experiment=exp, start_time=float(i),
            end_time=float(i + 1), status="FINISHED", team=team, model=model,
            nested_in="r0" if nested else None, cost_usd=cost, idle_cost_usd=None if cost is None else cost / 2,
            cpu_core_hours=None if cost is None else cpu,
        ))
    return CostReport(runs=out)


@settings(max_examples=200, deadline=None)
@given(runs)
def test_every_roll_up_is_the_sum_of_its_counted_runs(rows) -> None:
    report = build(rows)
    counted = [r for r in report.runs if r.cost_usd is not None and r.nested_in is None]
    total = report.total()
    assert math.isclose(total.cost_usd, sum(r.cost_usd for r in counted), rel_tol=1e-9, abs_tol=1e-9)
    assert math.isclose(total.cpu_core_hours, sum(r.cpu_core_hours for r in counted), rel_tol=1e-9, abs_tol=1e-9)
    assert total.runs == len(counted)
    assert total.untracked == sum(r.cost_usd is None for r in report.runs)
    assert total.nested == sum(r.cost_usd is not None and r.nested_in is not None for r in report.runs)
    for level in GROUP_LEVELS:
        groups = report.groups(level)
        assert math.isclose(sum(g.cost_usd for g in groups), total.cost_usd, rel_tol=1e-9, abs_tol=1e-9)
        assert sum(g.runs for g in groups) == total.runs
        for g in groups:
            mine = [r for r in counted if r.key(level) == g.key]
            assert math.isclose(g.cost_usd, sum(r.cost_usd for r in mine), rel_tol=1e-9, abs_tol=1e-9)
        assert [g.cost_usd for g in groups] == sorted((g.cost_usd for g in groups), reverse=True)
