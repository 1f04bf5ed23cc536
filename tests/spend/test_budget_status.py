"""Where an envelope stands, from numbers alone (no store): states, allowance, projection, JSON, scope."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from mlflow_finops.policy import BudgetEnvelope, Policy
from mlflow_finops.spend.budget import BudgetStatus, _fraction, envelopes_for

START = datetime(2026, 11, 1, tzinfo=timezone.utc)
END = datetime(2026, 12, 1, tzinfo=timezone.utc)
MID = datetime(2026, 11, 16, tzinfo=timezone.utc)  # half of November


def status(spent: float, *, amount: float = 10.0, projected: float | None = None, warn_at: float = 0.8,
           per_job: float | None = None) -> BudgetStatus:
    env = BudgetEnvelope(amount_usd=amount, models=["m"], warn_at=warn_at, per_job_usd=per_job, priority="critical")
    return BudgetStatus(name="e", envelope=env, period_start=START, period_end=END, now=MID, spent_usd=spent,
                        remaining_usd=amount - spent, projected_usd=spent * 2 if projected is None else projected,
                        warn=spent >= warn_at * amount, runs=3)


@pytest.mark.parametrize("spent, projected, state, exceeded, projected_over", [
    (1.0, 2.0, "ok", False, False),
    (4.0, 10.0, "ok", False, False),  # projected exactly at the amount is not over
    (4.0, 10.01, "projected over", False, True),
    (8.0, 16.0, "WARN", False, True),  # warn_at 0.8 of 10 reached exactly
    (9.99, 9.99, "WARN", False, False),
    (10.0, 20.0, "OVER", True, True),  # spent exactly the amount: nothing left
    (12.0, 12.0, "OVER", True, True),
])
def test_states(spent: float, projected: float, state: str, exceeded: bool, projected_over: bool) -> None:
    s = status(spent, projected=projected)
    assert (s.state, s.exceeded, s.projected_over) == (state, exceeded, projected_over)


@pytest.mark.parametrize("spent, per_job, cost, allowed", [
    (6.0, None, 4.0, True),  # exactly what is left
    (6.0, None, 4.01, False),
    (6.0, 2.0, 2.0, True),  # exactly the per-job cap
    (6.0, 2.0, 2.01, False),
    (11.0, None, 0.0, False),  # overspent: not even a free job fits a negative remainder
])
def test_allows(spent: float, per_job: float | None, cost: float, allowed: bool) -> None:
    assert status(spent, per_job=per_job).allows(cost) is allowed


def test_to_dict_is_the_whole_status() -> None:
    s = status(4.0, per_job=1.5)
    assert s.elapsed_fraction == pytest.approx(0.5)
    assert s.to_dict() == {
        "name": "e", "amount_usd": 10.0, "period": "month", "period_start": START.isoformat(),
        "period_end": END.isoformat(), "elapsed_fraction": 0.5, "spent_usd": 4.0, "remaining_usd": 6.0,
        "projected_usd": 8.0, "warn_at": 0.8, "warn": False, "exceeded": False, "projected_over": False,
        "runs": 3, "priority": "critical", "per_job_usd": 1.5, "models": ["m"], "team": None,
    }


def test_envelopes_for_a_model_or_a_team() -> None:
    policy = Policy.from_dict({
        "models": {"churn": {}, "fraud": {}},
        "budgets": {
            "churn-only": {"amount_usd": 1, "models": ["churn"]},
            "growth": {"amount_usd": 1, "team": "growth"},
            "both": {"amount_usd": 1, "models": ["fraud"], "team": "risk"},
        },
    })
    assert envelopes_for(policy, model="churn") == ["churn-only"]
    assert envelopes_for(policy, team="growth") == ["growth"]
    assert envelopes_for(policy, model="fraud", team="growth") == ["growth", "both"]
    assert envelopes_for(policy, team="risk") == ["both"]
    assert envelopes_for(policy) == [] and envelopes_for(policy, model="nobody") == []


@pytest.mark.parametrize(
    "now, expected",
    [
        (datetime(2026, 1, 1, tzinfo=timezone.utc), 0.0),  # before the period: nothing elapsed
        (datetime(2026, 3, 1, tzinfo=timezone.utc), 1.0),  # after its end: all of it, not more
    ],
)
def test_elapsed_fraction_stays_within_the_period(now: datetime, expected: float) -> None:
    start, end = datetime(2026, 2, 1, tzinfo=timezone.utc), datetime(2026, 2, 11, tzinfo=timezone.utc)
    assert _fraction(start, end, now) == expected
