"""The retrain state machine, table by table: no MLflow, no Ray, no Evidently, no clock."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest

from mlflow_finops.names import (
    TAG_ATTEMPTS,
    TAG_DEADLINE,
    TAG_PRIORITY,
    TAG_RAY_SUBMISSION_ID,
    TAG_REASON,
    TAG_REQUESTED_AT,
    TAG_RETRAIN_STATE,
    TAG_RETRY_AT,
)
from mlflow_finops.retrain.state import (
    BudgetCheck,
    JobEnd,
    RetrainRequest,
    RetrainState,
    Step,
    backstop,
    cancelled,
    job_ended,
    submit_failed,
    may_start,
    next_step,
)
from mlflow_finops.retrain.windows import WindowState

S = RetrainState
T0 = datetime(2026, 1, 5, 12, 0, tzinfo=timezone.utc)  # a Monday
H = timedelta(hours=1)
MAX_WAIT_H = 12.0
DEADLINE = T0 + 24 * H

OK = BudgetCheck(cap_usd=0.5)
SPENT = BudgetCheck(why_not="envelope 'churn' is spent: $5.00 of $5.00 this month; no job submitted")
OPEN = WindowState(True, True, 4.0, 0.0, "window open")
CLOSED = WindowState(False, False, None, None, "outside the off-peak ranges (UTC)")


def req(state: RetrainState = S.PENDING, priority: str = "standard", **kw) -> RetrainRequest:
    return RetrainRequest(state=state, requested_at=T0, deadline=DEADLINE, priority=priority, **kw)


def test_the_states_are_the_tag_values_and_the_terminal_ones_end_a_request() -> None:
    assert [s.value for s in S] == [
        "pending", "waiting", "retry", "submitted", "running",
        "promoted", "not_promoted", "capped", "failed", "out_of_budget", "dropped", "no_new_data",
    ]
    assert {s.value for s in S if s.terminal} == {
        "promoted", "not_promoted", "capped", "failed", "out_of_budget", "dropped", "no_new_data",
    }
    assert S.PROMOTED == "promoted" and str(S.NOT_PROMOTED) == "not_promoted" and f"{S.RETRY}" == "retry"
    assert {"capped": 3}.get(S.CAPPED) == 3  # a state looks up like its text


# ------------------------------------------------------------------ next_step: (request, now, budget, window) -> step
NEXT_STEPS = [
    # id, request, now, budget, window, action, state, reason
    *[
        (f"{s.value} is over", req(s, reason="earlier verdict"), T0, None, None, "done", s, "earlier verdict")
        for s in S if s.terminal
    ],
    ("a verdict whose run the job has not ended yet is supervised",
     req(S.PROMOTED, submitted=True, run_active=True, reason="promoted: v2"), T0, None, None,
     "supervise", S.PROMOTED, "promoted: v2"),
    ("a verdict on an ended run is done", req(S.PROMOTED, submitted=True, run_active=False), T0, None, None,
     "done", S.PROMOTED, ""),
    ("a submitted job is supervised, never submitted again", req(S.SUBMITTED, submitted=True, run_active=True),
     T0 + 30 * H, None, None, "supervise", S.SUBMITTED, ""),
    ("a running job is supervised past its deadline", req(S.RUNNING, submitted=True, run_active=True),
     DEADLINE + H, None, None, "supervise", S.RUNNING, ""),
    ("past its deadline: dropped", req(), DEADLINE, OK, OPEN,
     "drop", S.DROPPED, "not started before its deadline 2026-01-06T12:00:00+00:00"),
    ("a critical request is dropped at its deadline too", req(priority="critical"), DEADLINE + H, OK, OPEN,
     "drop", S.DROPPED, "not started before its deadline 2026-01-06T12:00:00+00:00"),
    ("a waiting exploratory request is dropped at its deadline", req(S.WAITING, "exploratory"), DEADLINE,
     None, None, "drop", S.DROPPED, "not started before its deadline 2026-01-06T12:00:00+00:00"),
    ("the deadline wins over a retry not due", req(S.RETRY, retry_at=DEADLINE + H, submitted=True), DEADLINE,
     None, None, "drop", S.DROPPED, "not started before its deadline 2026-01-06T12:00:00+00:00"),
    ("a retry not due yet waits", req(S.RETRY, attempts=1, retry_at=T0 + H, submitted=True), T0 + 0.5 * H,
     None, None, "retry_later", S.RETRY, "retry not before 2026-01-05T13:00:00+00:00"),
    ("a retry due starts a new job", req(S.RETRY, attempts=1, retry_at=T0 + H, submitted=True), T0 + H, OK, OPEN,
     "submit", S.SUBMITTED, "window open"),
    ("no money: out of budget", req(), T0, SPENT, None, "out_of_budget", S.OUT_OF_BUDGET, SPENT.why_not),
    ("critical never bypasses the envelope", req(priority="critical"), T0, SPENT, None,
     "out_of_budget", S.OUT_OF_BUDGET, SPENT.why_not),
    ("window open: submitted", req(), T0, OK, OPEN, "submit", S.SUBMITTED, "window open"),
    ("exploratory runs inside a window", req(priority="exploratory"), T0, OK, OPEN,
     "submit", S.SUBMITTED, "window open"),
    ("critical bypasses a closed window", req(priority="critical"), T0, OK, CLOSED,
     "submit", S.SUBMITTED, "critical: runs outside the window (outside the off-peak ranges (UTC))"),
    ("standard waits for a window", req(), T0 + 11.9 * H, OK, CLOSED,
     "wait", S.WAITING, "outside the off-peak ranges (UTC)"),
    ("standard runs after max_wait_hours", req(S.WAITING), T0 + MAX_WAIT_H * H, OK, CLOSED,
     "submit", S.SUBMITTED, "standard: runs outside the window (outside the off-peak ranges (UTC))"),
    ("exploratory keeps waiting past max_wait_hours", req(S.WAITING, "exploratory"), T0 + 20 * H, OK, CLOSED,
     "wait", S.WAITING, "outside the off-peak ranges (UTC)"),
]


@pytest.mark.parametrize(
    "request_, now, budget, window, action, state, reason", [c[1:] for c in NEXT_STEPS], ids=[c[0] for c in NEXT_STEPS]
)
def test_next_step(request_, now, budget, window, action, state, reason) -> None:
    step = next_step(request_, now, max_wait_hours=MAX_WAIT_H, budget=budget, window=window)
    assert (step.action, step.state, step.reason) == (action, state, reason)
    # the budget and window are needed exactly when the request may start
    assert may_start(request_, now) == (action in ("submit", "wait", "out_of_budget"))
    if action in ("drop", "out_of_budget"):
        assert step.state.terminal and step.run_status == {"drop": "KILLED", "out_of_budget": "FINISHED"}[action]


def test_a_submit_carries_the_cap_and_says_why_in_the_run() -> None:
    step = next_step(req(priority="critical"), T0, max_wait_hours=MAX_WAIT_H, budget=OK, window=CLOSED)
    assert step.cap_usd == 0.5
    assert step.tag_reason == "submitted (critical: runs outside the window (outside the off-peak ranges (UTC)))"
    waiting = next_step(req(), T0, max_wait_hours=MAX_WAIT_H, budget=OK, window=CLOSED)
    assert waiting.tag_reason == "waiting: outside the off-peak ranges (UTC)"
    assert waiting.run_status is None  # the run stays SCHEDULED


def test_next_step_asks_for_the_budget_then_the_window_only_when_it_needs_them() -> None:
    with pytest.raises(ValueError, match="budget"):
        next_step(req(), T0, max_wait_hours=MAX_WAIT_H)
    with pytest.raises(ValueError, match="window"):
        next_step(req(), T0, max_wait_hours=MAX_WAIT_H, budget=OK)
    refused = next_step(req(), T0, max_wait_hours=MAX_WAIT_H, budget=SPENT)  # no window read when no money
    assert refused.state == S.OUT_OF_BUDGET


def test_a_request_reads_from_its_tags() -> None:
    tags = {
        TAG_RETRAIN_STATE: "retry",
        TAG_PRIORITY: "critical",
        TAG_ATTEMPTS: "2",
        TAG_REQUESTED_AT: T0.isoformat(),
        TAG_DEADLINE: DEADLINE.isoformat(),
        TAG_RETRY_AT: (T0 + H).isoformat(),
        TAG_RAY_SUBMISSION_ID: "finops-retrain-abc-2",
        TAG_REASON: "Ray job FAILED: boom",
    }
    assert RetrainRequest.from_tags(tags, run_active=False) == RetrainRequest(
        state=S.RETRY, requested_at=T0, deadline=DEADLINE, priority="critical", attempts=2,
        retry_at=T0 + H, submitted=True, run_active=False, reason="Ray job FAILED: boom",
    )
    fresh = RetrainRequest.from_tags({TAG_REQUESTED_AT: T0.isoformat(), TAG_DEADLINE: DEADLINE.isoformat()})
    assert (fresh.state, fresh.priority, fresh.attempts, fresh.retry_at, fresh.submitted) == (
        S.PENDING, "standard", 0, None, False
    )


# ------------------------------------------------------------------ job_ended: how a job's end is judged
def end(state: RetrainState = S.RUNNING, status: str = "FAILED", attempts: int = 1, **kw) -> JobEnd:
    return JobEnd(status=status, state=state, reason=kw.pop("reason", "job reason"), attempts=attempts,
                  submission_id="finops-retrain-abc-1", **kw)


RETRY_AT = T0 + timedelta(seconds=60)
CAPPED_BY_JOB = "stopped at the cost cap: $0.011 >= $0.010; nothing promoted"
JOB_ENDS = [
    # id, end, budget, max_attempts, action, state, reason, run_status
    *[
        (f"the job's {s.value} stands", end(s, "SUCCEEDED" if s != S.NO_NEW_DATA else "FAILED"), None, 3,
         "done", s, "job reason", None)
        for s in (S.PROMOTED, S.NOT_PROMOTED, S.NO_NEW_DATA, S.DROPPED, S.OUT_OF_BUDGET)
    ],
    # the job's own verdict, not Ray's FAILED for its exit code 3
    ("the job capped itself", end(S.CAPPED, cap_usd=0.01, reason=CAPPED_BY_JOB), None, 3, "finish", S.CAPPED,
     CAPPED_BY_JOB, "KILLED"),
    ("stopped by the supervisor at the cap", end(S.RUNNING, "STOPPED", stopped_for_cap=True, cap_usd=2e-6), None, 3,
     "finish", S.CAPPED,
     "stopped by the supervisor past its cost cap $0.0000020 (Ray job finops-retrain-abc-1 STOPPED); nothing promoted",
     "KILLED"),
    ("a verdict wins over a late cap stop", end(S.PROMOTED, "SUCCEEDED", stopped_for_cap=True), None, 3,
     "done", S.PROMOTED, "job reason", None),
    ("a failure is retried after backoff_s", end(message="ValueError: boom"), OK, 3,
     "retry", S.RETRY, f"job FAILED; retry at {RETRY_AT.isoformat()}", "SCHEDULED"),
    ("the backoff doubles", end(attempts=2), OK, 3,
     "retry", S.RETRY, f"job FAILED; retry at {(T0 + timedelta(seconds=120)).isoformat()}", "SCHEDULED"),
    ("and doubles again", end(attempts=3), OK, 4,
     "retry", S.RETRY, f"job FAILED; retry at {(T0 + timedelta(seconds=240)).isoformat()}", "SCHEDULED"),
    ("attempts exhausted: failed", end(attempts=3, message="ValueError: boom"), OK, 3,
     "finish", S.FAILED, "Ray job FAILED after 3 attempt(s): ValueError: boom", "FAILED"),
    ("a job the failure tagged failed is retried too", end(S.FAILED), OK, 2,
     "retry", S.RETRY, f"job FAILED; retry at {RETRY_AT.isoformat()}", "SCHEDULED"),
    ("no retry without money", end(message="boom"), SPENT, 3,
     "finish", S.FAILED, f"Ray job FAILED after 1 attempt(s): boom; no retry: {SPENT.why_not}", "FAILED"),
    ("a job stopped for time fails as killed", end(S.SUBMITTED, "STOPPED", stopped_for_time=True), OK, 1,
     "finish", S.FAILED,
     "Ray job STOPPED after 1 attempt(s): still running after max_job_minutes = 0.1, stopped", "KILLED"),
]


@pytest.mark.parametrize(
    "end_, budget, max_attempts, action, state, reason, run_status", [c[1:] for c in JOB_ENDS],
    ids=[c[0] for c in JOB_ENDS],
)
def test_job_ended(end_, budget, max_attempts, action, state, reason, run_status) -> None:
    step = job_ended(end_, T0, max_attempts=max_attempts, backoff_s=60, max_job_minutes=0.1, budget=budget)
    assert (step.action, step.state, step.reason, step.run_status) == (action, state, reason, run_status)
    assert end_.failed == (budget is not None)  # the budget is read only for a failure


def test_a_retry_records_when_and_why() -> None:
    step = job_ended(end(attempts=2, message="x" * 300), T0, max_attempts=3, backoff_s=30, max_job_minutes=60,
                     budget=OK)
    assert step.retry_at == T0 + timedelta(seconds=60)
    assert step.tag_reason == f"Ray job FAILED: {'x' * 200}; retry 3 at 12:01:00"


def test_a_failure_needs_the_budget_to_decide() -> None:
    with pytest.raises(ValueError, match="budget"):
        job_ended(end(), T0, max_attempts=3, backoff_s=60, max_job_minutes=60)


# ------------------------------------------------------------------ backstop: stopping a running job
BACKSTOPS = [
    # id, kwargs, (stop_for_cap, stop_for_time)
    ("under cap x (1 + tolerance)", dict(cost_usd=1.04, cap_usd=1.0), (False, False)),
    ("at cap x (1 + tolerance)", dict(cost_usd=1.05, cap_usd=1.0), (True, False)),
    ("a job capping itself is not stopped", dict(cost_usd=2.0, cap_usd=1.0, job_capped=True), (False, False)),
    ("stopped once for the cap", dict(cost_usd=2.0, cap_usd=1.0, stopped_for_cap=True), (False, False)),
    ("no cap", dict(cost_usd=2.0, cap_usd=None), (False, False)),
    ("no cost yet", dict(cost_usd=None, cap_usd=1.0), (False, False)),
    ("past max_job_minutes", dict(cost_usd=0.0, cap_usd=1.0, minutes=6.01), (False, True)),
    ("at max_job_minutes", dict(cost_usd=0.0, cap_usd=1.0, minutes=6.0), (False, False)),
    ("stopped once for time", dict(cost_usd=0.0, cap_usd=1.0, minutes=60, stopped_for_time=True), (False, False)),
    ("both", dict(cost_usd=3.0, cap_usd=1.0, minutes=60), (True, True)),
]


@pytest.mark.parametrize("kwargs, expected", [c[1:] for c in BACKSTOPS], ids=[c[0] for c in BACKSTOPS])
def test_backstop(kwargs, expected) -> None:
    todo = backstop(**{"cap_tolerance": 0.05, "minutes": 1.0, "max_job_minutes": 6.0, **kwargs})
    assert (todo.stop_for_cap, todo.stop_for_time) == expected


def test_a_cancel_drops_the_request() -> None:
    step = cancelled("the demo starts over")
    assert (step.action, step.state, step.reason, step.run_status) == (
        "drop", S.DROPPED, "cancelled: the demo starts over", "KILLED"
    )


def test_the_state_machine_and_windows_import_no_mlflow_ray_or_evidently() -> None:
    code = (
        "import sys, mlflow_finops.retrain.state, mlflow_finops.retrain.windows\n"
        "print(sorted(m for m in ('mlflow', 'ray', 'evidently', 'sklearn', 'requests') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------ submit_failed: Ray refused the job
ADDR = "http://127.0.0.1:1"
REFUSED = "ConnectionError: Failed to connect to Ray at address: http://127.0.0.1:1."


@pytest.mark.parametrize(
    "attempts, max_attempts, state, reason, run_status",
    [
        (1, 3, S.RETRY, f"could not submit to Ray at {ADDR}: {REFUSED}; retry at {RETRY_AT.isoformat()}",
         "SCHEDULED"),
        (2, 3, S.RETRY,
         f"could not submit to Ray at {ADDR}: {REFUSED}; retry at {(T0 + timedelta(seconds=120)).isoformat()}",
         "SCHEDULED"),
        (3, 3, S.FAILED, f"could not submit to Ray at {ADDR}: {REFUSED} (after 3 attempt(s))", "FAILED"),
    ],
    ids=["retried", "backoff doubles", "attempts exhausted"],
)
def test_a_submission_failure_is_recorded_with_its_reason(attempts, max_attempts, state, reason, run_status) -> None:
    step = submit_failed(attempts, ADDR, REFUSED, T0, max_attempts=max_attempts, backoff_s=60)
    assert (step.state, step.reason, step.run_status) == (state, reason, run_status)
    assert step.tag_reason.startswith(f"could not submit to Ray at {ADDR}: {REFUSED}")


def test_a_submission_failure_step_is_whole() -> None:
    """Every field the supervisor applies: the action, the retry time it waits for, the tag's note."""
    retry = submit_failed(2, ADDR, REFUSED, T0, max_attempts=3, backoff_s=60)
    at = T0 + timedelta(seconds=120)
    assert retry == Step("retry", S.RETRY, f"could not submit to Ray at {ADDR}: {REFUSED}; retry at {at.isoformat()}",
                         note=f"could not submit to Ray at {ADDR}: {REFUSED}; retry 3 at {at:%H:%M:%S}",
                         run_status="SCHEDULED", retry_at=at)
    failed = submit_failed(3, ADDR, REFUSED, T0, max_attempts=3, backoff_s=60)
    assert failed == Step("finish", S.FAILED, f"could not submit to Ray at {ADDR}: {REFUSED} (after 3 attempt(s))",
                          run_status="FAILED")


def test_a_request_read_from_its_tags_keeps_its_reason_and_run_status() -> None:
    tags = {"finops.retrain_state": "waiting", "finops.priority": "critical", "finops.attempts": "2",
            "finops.requested_at": T0.isoformat(), "finops.deadline": DEADLINE.isoformat()}
    r = RetrainRequest.from_tags(tags, run_active=True)
    assert (r.state, r.priority, r.attempts, r.reason, r.run_active) == (S.WAITING, "critical", 2, "", True)
    assert RetrainRequest.from_tags({**tags, "finops.reason": "why"}, run_active=False).reason == "why"
    assert RetrainRequest.from_tags(tags, run_active=False).run_active is False
