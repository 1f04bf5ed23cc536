"""The retrain state machine's edges (test_state.py has its tables): defaults, cut texts, misuse."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from mlflow_finops.names import TAG_DEADLINE, TAG_REQUESTED_AT
from mlflow_finops.retrain.state import BudgetCheck, JobEnd, RetrainRequest, RetrainState, job_ended, next_step

T0 = datetime(2026, 1, 5, 12, 0, tzinfo=timezone.utc)
PENDING = RetrainRequest(RetrainState.PENDING, T0, T0 + timedelta(days=1))


def test_a_request_read_from_tags_alone_has_no_running_run() -> None:
    tags = {TAG_REQUESTED_AT: T0.isoformat(), TAG_DEADLINE: (T0 + timedelta(days=1)).isoformat()}
    assert RetrainRequest.from_tags(tags).run_active is False
    assert RetrainRequest.from_tags(tags, run_active=True).run_active is True


def test_out_of_budget_keeps_the_budgets_own_words_even_empty() -> None:
    step = next_step(PENDING, T0, max_wait_hours=1, budget=BudgetCheck(why_not=""))
    assert (step.action, step.state, step.reason) == ("out_of_budget", RetrainState.OUT_OF_BUDGET, "")


def test_a_long_ray_message_is_cut_to_200_characters() -> None:
    end = JobEnd("FAILED", RetrainState.RUNNING, "", attempts=3, submission_id="s", message="x" * 199 + "yz")
    step = job_ended(end, T0, max_attempts=3, backoff_s=60, max_job_minutes=60, budget=BudgetCheck())
    assert (step.action, step.state) == ("finish", RetrainState.FAILED)
    assert step.reason == "Ray job FAILED after 3 attempt(s): " + "x" * 199 + "y"


def test_a_missing_check_is_a_programming_error_that_says_which() -> None:
    with pytest.raises(ValueError, match="^the request may start: next_step needs its budget check$"):
        next_step(PENDING, T0, max_wait_hours=1)
    with pytest.raises(ValueError, match="^the budget allows a job: next_step needs the window's state$"):
        next_step(PENDING, T0, max_wait_hours=1, budget=BudgetCheck())
    failed = JobEnd("FAILED", RetrainState.RUNNING, "", attempts=1, submission_id="s")
    with pytest.raises(ValueError, match="^the job failed: job_ended needs a budget check to decide on a retry$"):
        job_ended(failed, T0, max_attempts=3, backoff_s=60, max_job_minutes=60)
