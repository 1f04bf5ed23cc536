"""Budget periods: a timestamp is in the period iff start <= t < end, on every calendar and in every zone."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import mlflow
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlflow.tracking import MlflowClient

from mlflow_finops.policy import BudgetEnvelope
from mlflow_finops.spend.budget import period_bounds, spend

periods = st.sampled_from(["day", "week", "month", "quarter", "year"])
zones = st.sampled_from(["UTC", "Europe/Paris", "America/New_York", "Australia/Lord_Howe", "Pacific/Chatham"])
instants = st.integers(0, 3 * 366 * 86400).map(lambda s: datetime(2025, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=s))


@settings(max_examples=400, deadline=None)
@given(period=periods, tz=zones, t=instants)
def test_the_period_holding_t_contains_t_and_periods_tile_time(period: str, tz: str, t: datetime) -> None:
    start, end = period_bounds(period, tz, t)
    assert start <= t < end
    # the next period starts exactly where this one ends, and the previous one ends at its start
    assert period_bounds(period, tz, end)[0] == end
    before = period_bounds(period, tz, start - timedelta(microseconds=1))
    assert before[1] == start
    local = start.astimezone(start.tzinfo)
    assert (local.hour, local.minute) == (0, 0)  # periods begin at local midnight


def test_spend_counts_a_run_at_the_start_but_not_one_at_the_end(sqlite_uri: str, tmp_path: Path) -> None:
    """The period is half-open in the store query too: a run starting exactly at its end belongs to the next."""
    now = datetime(2026, 3, 15, 12, 0, tzinfo=timezone.utc)
    start, end = period_bounds("month", "UTC", now)
    client = MlflowClient()
    exp = client.create_experiment("edge")
    for label, at, cost in [("first", start, 1.0), ("last", end - timedelta(milliseconds=1), 2.0),
                            ("next", end, 4.0), ("previous", start - timedelta(milliseconds=1), 8.0)]:
        run = client.create_run(exp, start_time=int(at.timestamp() * 1000),
                                tags={"finops.tracked": "true", "finops.model": "m", "mlflow.runName": label})
        client.log_metric(run.info.run_id, "finops/cost_usd", cost)
        client.set_terminated(run.info.run_id)
    status = spend(BudgetEnvelope(amount_usd=100, models=["m"]), client, now)
    assert status.spent_usd == 3.0 and status.runs == 2
    assert mlflow.get_tracking_uri() == sqlite_uri


def test_budget_and_report_count_the_same_runs(sqlite_uri: str) -> None:
    """A run counts when it carries finops/cost_usd and is not nested, whoever logged the cost; untracked and
    nested runs count in neither."""
    from mlflow_finops.spend.report import build_report

    now = datetime.now(timezone.utc)
    client = MlflowClient()
    exp = client.create_experiment("agree")
    runs = {
        "tracked": ({"finops.tracked": "true"}, 1.0),
        "cost-logged-elsewhere": ({}, 2.0),  # no finops.tracked tag: the budget used to skip it
        "nested": ({"finops.tracked": "true", "finops.nested_in": "x"}, 4.0),
        "untracked": ({}, None),
    }
    for label, (tags, cost) in runs.items():
        run = client.create_run(exp, tags={**tags, "finops.model": "m", "mlflow.runName": label})
        if cost is not None:
            client.log_metric(run.info.run_id, "finops/cost_usd", cost)
        client.set_terminated(run.info.run_id)
    status = spend(BudgetEnvelope(amount_usd=100, models=["m"]), client, now)
    report = build_report(client=client, experiments=["agree"], model="m")
    assert status.spent_usd == report.total().cost_usd == 3.0
    assert status.runs == len(report.counted) == 2


def test_budget_status_reads_each_named_envelope_in_file_order(sqlite_uri: str) -> None:
    from mlflow_finops.policy import Policy
    from mlflow_finops.spend.budget import budget_status

    policy = Policy.from_dict({"budgets": {
        "a": {"amount_usd": 10, "models": ["m"]},
        "b": {"amount_usd": 5, "team": "t", "period": "day"},
    }})
    client = MlflowClient()
    exp = client.create_experiment("status")
    now = datetime.now(timezone.utc)
    run = client.create_run(exp, tags={"finops.model": "m", "finops.team": "t"})
    client.log_metric(run.info.run_id, "finops/cost_usd", 1.25)
    got = budget_status(policy, client, now)
    assert [(s.name, s.spent_usd, s.amount_usd, s.envelope.period) for s in got] == [
        ("a", 1.25, 10, "month"), ("b", 1.25, 5, "day")]
    assert [s.name for s in budget_status(policy, client, now, names=["b"])] == ["b"]
    with pytest.raises(KeyError, match="unknown budget envelope 'c' \\(known: a, b\\)"):
        budget_status(policy, client, now, names=["b", "c"])
