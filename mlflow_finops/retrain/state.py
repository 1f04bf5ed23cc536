"""The retrain state machine, as pure functions: no MLflow, no Ray, no clock of its own.

A retrain request is an MLflow run whose tag ``finops.retrain_state`` holds a
:class:`RetrainState` (declared with the other names written into MLflow, in
:mod:`mlflow_finops.names`, where every reader finds it; the FinOps page too). Every transition is decided here, from plain values: the
request's own facts (:class:`RetrainRequest`, read from its tags), what the
budget allows (:class:`BudgetCheck`), whether the window is open
(:class:`~mlflow_finops.retrain.windows.WindowState`) and the time. The
supervisor reads those values, asks :func:`next_step` (or :func:`job_ended`
once a Ray job is over) and writes the :class:`Step` it gets back; the job
writes ``running`` and its verdict with the same enum.

Priorities (from the budget envelope that covers the model):

* ``critical`` runs at once: it bypasses the window, never the envelope;
* ``standard`` waits for a window for at most ``max_wait_hours``, then runs;
* ``exploratory`` runs only inside a window, and is dropped at its deadline.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, Mapping, Protocol

from ..money import format_usd
from ..names import (
    TAG_ATTEMPTS,
    TAG_DEADLINE,
    TAG_PRIORITY,
    TAG_RAY_SUBMISSION_ID,
    TAG_REASON,
    TAG_REQUESTED_AT,
    TAG_RETRAIN_STATE,
    TAG_RETRY_AT,
    RetrainState,
)

__all__ = [
    "RetrainState",
    "PRIORITY_ORDER",
    "RetrainRequest",
    "BudgetCheck",
    "Step",
    "may_start",
    "next_step",
    "JobEnd",
    "job_ended",
    "SUBMIT_FAILED",
    "submit_failed",
    "Backstop",
    "backstop",
    "cancelled",
]


PRIORITY_ORDER = {"critical": 0, "standard": 1, "exploratory": 2}


def _when(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


@dataclass(frozen=True)
class RetrainRequest:
    """What a request's run says about it (its tags, and whether the run is still RUNNING)."""

    state: RetrainState
    requested_at: datetime
    deadline: datetime
    priority: str = "standard"
    attempts: int = 0
    retry_at: datetime | None = None
    submitted: bool = False  # a Ray job was submitted for it (finops.ray_submission_id is set)
    run_active: bool = False  # its MLflow run is RUNNING: a job may still be writing to it
    reason: str = ""

    @classmethod
    def from_tags(cls, tags: Mapping[str, str], run_active: bool = False) -> "RetrainRequest":
        return cls(
            state=RetrainState(tags.get(TAG_RETRAIN_STATE, RetrainState.PENDING.value)),
            requested_at=datetime.fromisoformat(tags[TAG_REQUESTED_AT]),
            deadline=datetime.fromisoformat(tags[TAG_DEADLINE]),
            priority=tags.get(TAG_PRIORITY, "standard"),
            attempts=int(tags.get(TAG_ATTEMPTS, "0")),
            retry_at=_when(tags.get(TAG_RETRY_AT)),
            submitted=bool(tags.get(TAG_RAY_SUBMISSION_ID)),
            run_active=run_active,
            reason=tags.get(TAG_REASON, ""),
        )

    @property
    def finishing(self) -> bool:
        """The job tagged its verdict but has not ended its run: its final cost is not recorded yet."""
        return self.state.terminal and self.run_active and self.submitted

    @property
    def in_flight(self) -> bool:
        """A Ray job runs (or ran) for it and was not judged yet: supervise it, never submit it again."""
        return self.submitted and (self.state in (RetrainState.SUBMITTED, RetrainState.RUNNING) or self.finishing)


@dataclass(frozen=True)
class BudgetCheck:
    """What the model's budget envelopes allow now: a job's cost cap, or why no job may run."""

    cap_usd: float | None = None  # None: no envelope covers the model, so no cap
    why_not: str | None = None

    @property
    def allowed(self) -> bool:
        return self.why_not is None


class Window(Protocol):
    """What :func:`next_step` reads of a :class:`~mlflow_finops.retrain.windows.WindowState`."""

    @property
    def open(self) -> bool: ...

    @property
    def reason(self) -> str: ...


Action = Literal[
    "done",  # nothing to do: the request is over
    "supervise",  # a job is in flight: watch it
    "retry_later",  # a retry is not due yet
    "drop",  # past its deadline (or cancelled): ends the run
    "out_of_budget",  # the envelope cannot pay for it: ends the run
    "wait",  # the window is closed for its priority
    "submit",  # start a Ray job
    "retry",  # the job failed: try again at retry_at
    "finish",  # the job ended without a verdict of its own (capped, failed): ends the run
]


@dataclass(frozen=True)
class Step:
    """One transition: what to do, the state to record, and why.

    ``reason`` is what the outcome says; ``note`` what the run's ``finops.reason``
    tag says when that differs. ``run_status`` is the MLflow status the run gets
    (terminal states end it; a retry puts it back to ``SCHEDULED``).
    """

    action: Action
    state: RetrainState
    reason: str
    note: str | None = None
    run_status: str | None = None
    cap_usd: float | None = None  # "submit": the job's cost cap
    retry_at: datetime | None = None  # "retry": not before then

    @property
    def tag_reason(self) -> str:
        return self.note if self.note is not None else self.reason


def _timing(req: RetrainRequest, now: datetime) -> Step | None:
    """The steps decided by the request and the clock alone (None: it may start now)."""
    if req.state.terminal and not req.finishing:
        return Step("done", req.state, req.reason)
    if req.in_flight:  # a later step, or the scheduler restarted mid-job
        return Step("supervise", req.state, req.reason)
    if now >= req.deadline:
        return Step("drop", RetrainState.DROPPED, f"not started before its deadline {req.deadline.isoformat()}",
                    run_status="KILLED")
    if req.retry_at is not None and now < req.retry_at:
        return Step("retry_later", req.state, f"retry not before {req.retry_at.isoformat()}")
    return None


def may_start(req: RetrainRequest, now: datetime) -> bool:
    """Whether :func:`next_step` needs the budget (and then the window) to decide: the request may start."""
    return _timing(req, now) is None


def next_step(
    req: RetrainRequest,
    now: datetime,
    *,
    max_wait_hours: float,
    budget: BudgetCheck | None = None,
    window: Window | None = None,
) -> Step:
    """The next step of a request not (or no longer) running a job.

    In order: over -> done; a job in flight -> supervise; past its deadline ->
    drop; a retry not due -> retry_later; then, only when :func:`may_start`,
    the budget (``budget`` is required) -> out_of_budget; then the window by
    priority (``window`` is required once the budget allows) -> wait or submit.
    """
    timed = _timing(req, now)
    if timed is not None:
        return timed
    if budget is None:
        raise ValueError("the request may start: next_step needs its budget check")
    if not budget.allowed:
        return Step("out_of_budget", RetrainState.OUT_OF_BUDGET, budget.why_not or "", run_status="FINISHED")
    if window is None:
        raise ValueError("the budget allows a job: next_step needs the window's state")
    waited_enough = now - req.requested_at >= timedelta(hours=max_wait_hours)
    go = window.open or req.priority == "critical" or (req.priority == "standard" and waited_enough)
    if not go:
        return Step("wait", RetrainState.WAITING, window.reason, note=f"waiting: {window.reason}")
    why = "window open" if window.open else f"{req.priority}: runs outside the window ({window.reason})"
    return Step("submit", RetrainState.SUBMITTED, why, note=f"submitted ({why})", cap_usd=budget.cap_usd)


@dataclass(frozen=True)
class JobEnd:
    """What is known once a request's Ray job has ended (``SUCCEEDED``, ``FAILED`` or ``STOPPED``)."""

    status: str
    state: RetrainState  # the run's state tag now: the job's verdict, or still submitted/running
    reason: str  # the run's reason tag now
    attempts: int
    submission_id: str
    cap_usd: float | None = None
    stopped_for_cap: bool = False  # the supervisor stopped it at cap x (1 + tolerance)
    stopped_for_time: bool = False  # the supervisor stopped it after max_job_minutes
    message: str = ""  # Ray's last line about the job

    @property
    def settled(self) -> bool:
        """The run already holds its final state: the job's verdict (or a cancel), not failed or capped."""
        return self.state.terminal and self.state not in (RetrainState.FAILED, RetrainState.CAPPED)

    @property
    def capped(self) -> bool:
        return not self.settled and (self.stopped_for_cap or self.state == RetrainState.CAPPED)

    @property
    def failed(self) -> bool:
        """Neither settled nor capped: retried while attempts and budget remain (so it needs the budget)."""
        return not self.settled and not self.capped


def job_ended(
    end: JobEnd,
    now: datetime,
    *,
    max_attempts: int,
    backoff_s: float,
    max_job_minutes: float,
    budget: BudgetCheck | None = None,
) -> Step:
    """The step after a job ended: its verdict, capped, a retry with exponential backoff, or failed.

    ``budget`` is required when :attr:`JobEnd.failed` (a retry needs money left).
    """
    if end.settled:
        return Step("done", end.state, end.reason)
    if end.capped:
        # the job's own verdict when it stopped itself (its exit is a Ray FAILED, which is no failure)
        reason = end.reason if end.state == RetrainState.CAPPED and end.reason else (
            f"stopped by the supervisor past its cost cap {format_usd(end.cap_usd)} "
            f"(Ray job {end.submission_id} {end.status}); nothing promoted"
        )
        return Step("finish", RetrainState.CAPPED, reason, run_status="KILLED")
    if budget is None:
        raise ValueError("the job failed: job_ended needs a budget check to decide on a retry")
    message = end.message
    if end.stopped_for_time:
        message = f"still running after max_job_minutes = {max_job_minutes:g}, stopped"
    if end.attempts < max_attempts and budget.allowed:
        retry_at = _retry_at(now, end.attempts, backoff_s)
        return Step(
            "retry", RetrainState.RETRY, f"job {end.status}; retry at {retry_at.isoformat()}",
            note=f"Ray job {end.status}: {message[:200]}; retry {end.attempts + 1} at {retry_at:%H:%M:%S}",
            run_status="SCHEDULED", retry_at=retry_at,
        )
    reason = f"Ray job {end.status} after {end.attempts} attempt(s): {message[:200]}"
    if not budget.allowed:
        reason += f"; no retry: {budget.why_not}"
    return Step("finish", RetrainState.FAILED, reason, run_status="KILLED" if end.status == "STOPPED" else "FAILED")


def _retry_at(now: datetime, attempts: int, backoff_s: float) -> datetime:
    """Exponential backoff: ``backoff_s`` before the 2nd try, doubling each time."""
    return now + timedelta(seconds=backoff_s * 2 ** (attempts - 1))


SUBMIT_FAILED = "could not submit to Ray at"  # how a submission failure's reason starts


def submit_failed(attempts: int, address: str, error: str, now: datetime, *, max_attempts: int,
                  backoff_s: float) -> Step:
    """Attempt ``attempts`` could not even be submitted: retried like a failed job, then failed.

    The reason names the cluster and the error (one line), so a request never
    stays ``pending`` with no word of why.
    """
    reason = f"{SUBMIT_FAILED} {address}: {error}"
    if attempts < max_attempts:
        retry_at = _retry_at(now, attempts, backoff_s)
        return Step("retry", RetrainState.RETRY, f"{reason}; retry at {retry_at.isoformat()}",
                    note=f"{reason}; retry {attempts + 1} at {retry_at:%H:%M:%S}",
                    run_status="SCHEDULED", retry_at=retry_at)
    return Step("finish", RetrainState.FAILED, f"{reason} (after {attempts} attempt(s))", run_status="FAILED")


@dataclass(frozen=True)
class Backstop:
    """What the supervisor must do to a running job after one poll."""

    stop_for_cap: bool = False
    stop_for_time: bool = False


def backstop(
    *,
    cost_usd: float | None,
    cap_usd: float | None,
    cap_tolerance: float,
    minutes: float,
    max_job_minutes: float,
    job_capped: bool = False,
    stopped_for_cap: bool = False,
    stopped_for_time: bool = False,
) -> Backstop:
    """Stop a job spending past ``cap x (1 + tolerance)``, or running past ``max_job_minutes``.

    A job that tagged itself capped (``job_capped``) is already winding down: no
    stop into it. Each stop happens once per attempt (``stopped_for_*``). A hung
    job spends nothing, so only the time limit can stop it.
    """
    over_cap = cap_usd is not None and cost_usd is not None and cost_usd >= cap_usd * (1 + cap_tolerance)
    return Backstop(
        stop_for_cap=over_cap and not (stopped_for_cap or job_capped),
        stop_for_time=minutes > max_job_minutes and not stopped_for_time,
    )


def cancelled(reason: str) -> Step:
    """An open request dropped by hand (its job, if any, is stopped first)."""
    return Step("drop", RetrainState.DROPPED, f"cancelled: {reason}", run_status="KILLED")
