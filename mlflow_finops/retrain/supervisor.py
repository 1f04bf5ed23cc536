"""Budget-limited retraining on Ray: the I/O around the state machine of :mod:`.state`.

:class:`RetrainSupervisor.process` takes one request (see :mod:`.requests`) one
step further. It reads the request's tags, and when the request may start, the
model's budget envelopes (spend read from MLflow) and then the opportunistic
window (:mod:`.windows`); :func:`~.state.next_step` decides; this module writes
the step back:

1. past its deadline: ``dropped``;
2. no money left, or less than the expected cost: ``out_of_budget``, no job;
3. the window closed for the request's priority: ``waiting``;
4. else a retrain with the cap ``min(per_job_usd, remaining)``, on the policy's
   ``runner``: the warm Ray actor (``actor``, :mod:`.worker`: no start-up to pay
   per retrain) or a Ray job through ``JobSubmissionClient`` running
   ``ray_jobs/retrain.py`` (``job``; also when this process cannot join the
   cluster as a Ray driver, which the actor needs). The retrain stops itself at the cap, and
   the supervisor stops it at ``cap x (1 + cap_tolerance)`` as a hard backstop,
   and after ``max_job_minutes`` (a hung retrain spends nothing, so no cap would
   ever stop it); an actor's retrain that does not stop within ``STOP_GRACE_S``
   is ended by killing the actor (Ray's ``stop_job`` escalates to SIGKILL itself);
5. once the job ended, :func:`~.state.job_ended` decides: the job's verdict,
   ``capped``, or a retry with exponential backoff while budget remains.

Being in MLflow, every state survives a scheduler restart: a step never needs
the process that took the step before it.

Several schedulers may process the same request: each attempt is claimed in
MLflow (``finops-claims/retrain-<run id>-<attempt>``, with a lease) before it
is submitted, and its ``submission_id`` (the actor's token) is built from the run
id and the attempt, so Ray (or the actor) refuses a second one for one attempt.
Which runner took the attempt is its ``finops.retrain_runner`` tag, so any later
step follows it there. A submission that fails is recorded like a failed job
(retry or failed, with the cluster's address and the error as the reason).

The retrain receives no credentials: its environment holds the ``MLFLOW_*``
settings whose names do not look secret (no TOKEN, PASSWORD, SECRET, USERNAME,
KEY, CREDENTIAL, AUTH), with ``user:password@`` removed from every URI. A job
authenticates to MLflow with the cluster nodes' own credentials (their
environment, or ``~/.mlflow/credentials``).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Mapping

from mlflow.tracking import MlflowClient

from ..money import format_usd
from ..names import (
    METRIC_COST_USD,
    TAG_ATTEMPTS,
    TAG_CAP_USD,
    TAG_MODEL,
    TAG_MODEL_VERSION,
    TAG_PRIORITY,
    TAG_RAY_SUBMISSION_ID,
    TAG_REASON,
    TAG_RETRAIN_RUNNER,
    TAG_RETRAIN_STATE,
    TAG_RETRY_AT,
    TAG_STOPPED_FOR_CAP,
    TAG_STOPPED_FOR_TIME,
)
from ..policy import Policy, RetrainPolicy, load_policy
from ..spend.budget import envelopes_for, spend
from .. import claims
from .requests import open_requests, request_retrain, retrain_experiment_name
from .state import (
    BudgetCheck,
    JobEnd,
    RetrainRequest,
    RetrainState,
    Step,
    backstop,
    cancelled,
    job_ended,
    may_start,
    next_step,
    submit_failed,
)
from .windows import window_state
from .runners import JobsRunner, Runner, job_env, jobs_address, runner_for
from .worker import ClusterUnreachable, RunnerStatus

_log = logging.getLogger(__name__)

__all__ = [
    "RetrainOutcome",
    "RetrainSupervisor",
    "request_retrain",
    "retrain_experiment_name",
    "jobs_address",
    "job_env",
    "JobsRunner",
]

ATTEMPT_LEASE_S = 300.0  # claim -> Ray submit (retried ~60 s on a starting cluster) -> tags written
SUBMIT_RETRY_S = 60.0  # a cluster that just started has no job agent yet: retry that long
STOP_GRACE_S = 10.0  # an actor's retrain still running this long after its stop: the actor is killed


@dataclass(frozen=True)
class RetrainOutcome:
    """Where one retrain request stands after a step (like Ray's ``JobDetails``: typed, not a dict)."""

    model: str
    run_id: str
    state: RetrainState
    reason: str
    priority: str = "standard"
    attempts: int = 0
    ray_job_id: str | None = None
    cost_usd: float | None = None
    cap_usd: float | None = None
    model_version: str | None = None
    retry_at: datetime | None = None

    @property
    def done(self) -> bool:
        return RetrainState(self.state).terminal


def _now() -> datetime:
    return datetime.now(timezone.utc)


class RetrainSupervisor:
    """Moves retrain requests forward: budget, window, Ray job, supervision, retries."""

    def __init__(
        self,
        policy: Policy | str | None = None,
        *,
        client: MlflowClient | None = None,
        now: Callable[[], datetime] = _now,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.policy = policy if isinstance(policy, Policy) else load_policy(policy)
        self.client = client or MlflowClient()
        self.now = now
        self.sleep = sleep
        self._stopped_at: dict[str, float] = {}  # token -> when this process stopped it (monotonic)
        self._killed: set[str] = set()  # tokens whose actor this process killed

    # -------------------------------------------------------------- queries
    def pending(self, model: str | None = None) -> list[Any]:
        """Retrain requests not finished yet (status SCHEDULED or RUNNING), oldest first."""
        models = [model] if model else list(self.policy.models)
        out = []
        for m in models:
            exp = self.client.get_experiment_by_name(retrain_experiment_name(m))
            if exp is not None:
                out += open_requests(self.client, exp.experiment_id)
        return out

    # ------------------------------------------------------------ drivers
    def run_pending(self, model: str | None = None, wait: bool = True) -> list[RetrainOutcome]:
        """Process every open request once (each supervised to its job's end when ``wait``)."""
        return [self.process(run.info.run_id, wait=wait) for run in self.pending(model)]

    def run_to_end(
        self, run_id: str, on_retry: Callable[[RetrainOutcome, float], None] | None = None
    ) -> RetrainOutcome:
        """Supervise a request until it ends or waits for a window, sleeping out each retry's backoff.

        ``on_retry(outcome, delay_s)`` is told before each wait for a retry.
        """
        out = self.process(run_id, wait=True)
        while out.state == RetrainState.RETRY:
            delay = max(0.0, (out.retry_at - self.now()).total_seconds()) if out.retry_at else 0.0
            if on_retry:
                on_retry(out, delay)
            self.sleep(delay)
            out = self.process(run_id, wait=True)
        return out

    def retrain(
        self,
        model: str,
        *,
        drift_run_id: str | None = None,
        reason: str = "requested",
        wait: bool = True,
        on_retry: Callable[[RetrainOutcome, float], None] | None = None,
    ) -> RetrainOutcome:
        """Request a retrain of ``model`` now, then run it to its end (``wait``) or until its job is submitted."""
        run_id = request_retrain(
            self.policy, model, drift_run_id=drift_run_id, reason=reason, client=self.client, now=self.now()
        )
        return self.run_to_end(run_id, on_retry) if wait else self.process(run_id, wait=False)

    # ---------------------------------------------------------------- steps
    def process(self, run_id: str, wait: bool = True) -> RetrainOutcome:
        """One step of a request: start it, supervise its job (to its end when ``wait``), or say why not."""
        run = self.client.get_run(run_id)
        known = Known(dict(run.data.tags), dict(run.data.metrics))  # the step's one read of the request
        model = run.data.tags[TAG_MODEL]
        req = RetrainRequest.from_tags(run.data.tags, run_active=run.info.status == "RUNNING")
        now = self.now()
        max_wait_hours = self.policy.windows.max_wait_hours
        if may_start(req, now):
            rp = self._retrain_policy(model)
            budget = self.budget(model, rp)
            window = window_state(self.policy.windows, jobs_address(rp), now) if budget.allowed else None
            step = next_step(req, now, max_wait_hours=max_wait_hours, budget=budget, window=window)
            if step.action == "submit":
                return self._claim_and_submit(run_id, model, rp, step, req, wait)
        else:
            step = next_step(req, now, max_wait_hours=max_wait_hours)
            if step.action == "supervise":
                return self._supervise(run_id, model, self._retrain_policy(model), wait, known)
        return self._apply(run_id, step, known=known)

    def cancel(self, run_id: str, reason: str) -> RetrainOutcome:
        """Drop an open request (it will not run); a submitted or running job is stopped first."""
        tags = self.client.get_run(run_id).data.tags
        token = tags.get(TAG_RAY_SUBMISSION_ID)
        if _state(tags) in (RetrainState.SUBMITTED, RetrainState.RUNNING) and token:
            mp = self.policy.models.get(tags.get(TAG_MODEL, ""))
            rp = self.policy.retrain.merged(mp.retrain if mp else None)
            runner = self._runner(tags.get(TAG_RETRAIN_RUNNER, JobsRunner.kind), rp)
            try:
                runner.stop(token)
                deadline = time.monotonic() + STOP_GRACE_S
                while not runner.stops_hard and not self._status(runner, token, False).ended:
                    if time.monotonic() > deadline:
                        runner.kill(token)
                        break
                    self.sleep(min(rp.poll_s, 0.5))
            except Exception as exc:
                _log.warning("could not stop %s %s: %s", runner.noun, token, exc)
        return self._apply(run_id, cancelled(reason))

    # --------------------------------------------------------------- budget
    def budget(self, model: str, rp: RetrainPolicy) -> BudgetCheck:
        """The job's cost cap from the model's envelopes, or why no job may run now."""
        expected = rp.expected_cost_usd if rp.expected_cost_usd is not None else self._typical_cost(model)
        caps: list[float] = []
        for name in envelopes_for(self.policy, model=model):
            status = spend(self.policy.budgets[name], self.client, self.now(), name=name)
            if status.exceeded:
                return BudgetCheck(why_not=(
                    f"envelope {name!r} is spent: {format_usd(status.spent_usd)} of "
                    f"{format_usd(status.amount_usd)} this {status.envelope.period}; no job submitted"
                ))
            if expected and not status.allows(expected):
                limit = (f"has {format_usd(status.remaining_usd)} left" if expected > status.remaining_usd
                         else f"allows {format_usd(status.envelope.per_job_usd)} per job")
                return BudgetCheck(why_not=(
                    f"envelope {name!r} {limit}, less than the {format_usd(expected)} a retrain is "
                    "expected to cost; no job submitted"
                ))
            caps.append(status.remaining_usd)
            if status.envelope.per_job_usd is not None:
                caps.append(status.envelope.per_job_usd)
        return BudgetCheck(cap_usd=min(caps) if caps else None)

    def _typical_cost(self, model: str) -> float | None:
        """Mean cost of the model's last 3 completed retrains (None before the first)."""
        exp = self.client.get_experiment_by_name(retrain_experiment_name(model))
        if exp is None:
            return None
        runs = self.client.search_runs(
            [exp.experiment_id], "attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"], max_results=50,
        )
        done = [r for r in runs if _state(r.data.tags) in (RetrainState.PROMOTED, RetrainState.NOT_PROMOTED)]
        costs = [r.data.metrics[METRIC_COST_USD] for r in done[:3] if METRIC_COST_USD in r.data.metrics]
        return sum(costs) / len(costs) if costs else None

    # ------------------------------------------------------------ Ray jobs
    def _claim_and_submit(self, run_id: str, model: str, rp: RetrainPolicy, step: Step,
                          req: RetrainRequest, wait: bool) -> RetrainOutcome:
        """Submit the request's next attempt, unless another scheduler claimed it (then follow that one)."""
        attempt = req.attempts + 1
        if not claims.claim(self.client, f"retrain-{run_id}-{attempt}", ATTEMPT_LEASE_S):
            _log.info("retrain %s: attempt %d is claimed by another scheduler", run_id, attempt)
            if not wait:
                now_state = _state(self.client.get_run(run_id).data.tags)
                return self._outcome(run_id, now_state, f"attempt {attempt} is being submitted by another scheduler")
            self._await_attempt(run_id, attempt, rp)
            return self.process(run_id, wait=True)
        fresh = self.client.get_run(run_id)  # read again under the claim: another scheduler may have submitted
        known = Known(dict(fresh.data.tags), dict(fresh.data.metrics))
        if int(known.tags.get(TAG_ATTEMPTS, "0")) >= attempt:
            return self.process(run_id, wait)  # we read the request before another scheduler's attempt
        failure, written = self._submit(run_id, model, rp, step, attempt)
        if failure is not None:
            return self._apply(run_id, failure, {TAG_ATTEMPTS: str(attempt)}, known=known)
        return self._supervise(run_id, model, rp, wait, Known({**known.tags, **written}, known.metrics))

    def _await_attempt(self, run_id: str, attempt: int, rp: RetrainPolicy) -> None:
        """Wait until another scheduler's attempt shows in the request (or its claim's lease ends)."""
        deadline = time.monotonic() + ATTEMPT_LEASE_S
        while time.monotonic() < deadline:
            if int(self.client.get_run(run_id).data.tags.get(TAG_ATTEMPTS, "0")) >= attempt:
                return
            self.sleep(rp.poll_s)

    def _submit(self, run_id: str, model: str, rp: RetrainPolicy, step: Step,
                attempt: int) -> tuple[Step | None, dict[str, str]]:
        """Submit attempt ``attempt`` to the policy's runner and record it: (None, the tags written),
        or (the failure step, {}) when refused."""
        cap = step.cap_usd
        policy_path = os.path.abspath(self.policy.source) if self.policy.source else ""
        env = job_env(os.environ, self.client.tracking_uri)
        token = f"finops-retrain-{run_id[:12]}-{attempt}"
        address = jobs_address(rp)
        runner = self._runner(rp.runner, rp)
        deadline = time.monotonic() + SUBMIT_RETRY_S
        while True:
            try:
                runner.submit(token, run_id=run_id, model=model, policy_path=policy_path, cap_usd=cap, env=env)
                break
            except ClusterUnreachable as exc:  # the Jobs API may still take it
                _log.warning("retrain %s: the warm actor is out of reach (%s); running it as a Ray job", run_id, exc)
                runner = JobsRunner(rp)
            except Exception as exc:
                if "already exists" in str(exc):  # this attempt runs: the one that submitted it died
                    _log.warning("retrain %s: %s %s already exists; following it", run_id, runner.noun, token)
                    followed = runner.status(token)
                    cap = followed.cap_usd if followed is not None else cap
                    break
                if "try again later" in str(exc) and time.monotonic() < deadline:
                    self.sleep(2.0)
                    continue
                _log.debug("retrain %s: submission to %s failed", run_id, address, exc_info=True)
                return submit_failed(attempt, address, _one_line(exc), self.now(),
                                     max_attempts=rp.max_attempts, backoff_s=rp.backoff_s), {}
        new_tags = {
            TAG_RETRAIN_STATE: step.state.value,
            TAG_RAY_SUBMISSION_ID: token,
            TAG_RETRAIN_RUNNER: runner.kind,
            TAG_ATTEMPTS: str(attempt),
            TAG_REASON: step.tag_reason,
            TAG_STOPPED_FOR_TIME: "false",  # this attempt's own time limit
        }
        if cap is not None:
            new_tags[TAG_CAP_USD] = f"{cap:.10f}"
        self._tag(run_id, new_tags)
        self.client.update_run(run_id, status="RUNNING")
        _log.info("retrain %s of %s submitted to the %s runner as %s (cap %s)", run_id, model, runner.kind, token,
                  format_usd(cap))
        return None, new_tags

    def _supervise(self, run_id: str, model: str, rp: RetrainPolicy, wait: bool, known: Known) -> RetrainOutcome:
        """Watch the request's attempt (stopping it at the backstops); once it ended, judge it.

        ``known``: the request as this step read it; while the attempt runs, each poll reads its
        cost and state (the retrain writes them), and once it ended, its verdict, once."""
        tags = known.tags
        submission_id = tags[TAG_RAY_SUBMISSION_ID]
        cap = float(tags[TAG_CAP_USD]) if TAG_CAP_USD in tags else None
        runner = self._runner(tags.get(TAG_RETRAIN_RUNNER, JobsRunner.kind), rp)
        stopped_for_cap = tags.get(TAG_STOPPED_FOR_CAP) == "true"  # by an earlier step (wait=False)
        stopped_for_time = tags.get(TAG_STOPPED_FOR_TIME) == "true"
        while True:
            info = self._status(runner, submission_id, stopped_for_cap or stopped_for_time)
            status = info.status
            if info.ended:
                break
            cost, job_state = self._cost_and_state(run_id)
            minutes = (time.time() * 1000 - (info.start_ms or time.time() * 1000)) / 60_000
            todo = backstop(
                cost_usd=cost, cap_usd=cap, cap_tolerance=rp.cap_tolerance,
                minutes=minutes, max_job_minutes=rp.max_job_minutes,
                job_capped=job_state == RetrainState.CAPPED,
                stopped_for_cap=stopped_for_cap, stopped_for_time=stopped_for_time,
            )
            if todo.stop_for_cap:
                _log.warning("retrain %s spent %s past its cap %s: stopping %s %s",
                             run_id, format_usd(cost), format_usd(cap), runner.noun, submission_id)
                runner.stop(submission_id)
                stopped_for_cap = True
                self._tag(run_id, {TAG_STOPPED_FOR_CAP: "true"})
            if todo.stop_for_time:
                _log.warning("retrain %s: %s %s still %s after %.1f min (max_job_minutes %g): stopping it",
                             run_id, runner.noun, submission_id, status, minutes, rp.max_job_minutes)
                runner.stop(submission_id)
                stopped_for_time = True
                self._tag(run_id, {TAG_STOPPED_FOR_TIME: "true"})
            if (stopped_for_cap or stopped_for_time) and not runner.stops_hard:
                stopped_at = self._stopped_at.setdefault(submission_id, time.monotonic())
                if time.monotonic() - stopped_at > STOP_GRACE_S and submission_id not in self._killed:
                    runner.kill(submission_id)
                    self._killed.add(submission_id)
                    continue
            if not wait:
                return self._outcome(run_id, RetrainState.SUBMITTED, f"{runner.noun} {submission_id} is {status}")
            self.sleep(rp.poll_s)

        ended = self.client.get_run(run_id)
        tags = dict(ended.data.tags)
        end = JobEnd(
            status=status,
            state=_state(tags, RetrainState.SUBMITTED),
            reason=tags.get(TAG_REASON, ""),
            attempts=int(tags.get(TAG_ATTEMPTS, "1")),
            submission_id=submission_id,
            cap_usd=cap,
            stopped_for_cap=stopped_for_cap,
            stopped_for_time=stopped_for_time,
            message=info.message,
        )
        budget = None
        if end.failed:
            _log.error("retrain %s of %s: %s %s %s: %s", run_id, model, runner.noun, submission_id, status,
                       end.message)
            budget = self.budget(model, rp)
        step = job_ended(end, self.now(), max_attempts=rp.max_attempts, backoff_s=rp.backoff_s,
                         max_job_minutes=rp.max_job_minutes, budget=budget)
        return self._apply(run_id, step, known=Known(tags, dict(ended.data.metrics)))

    # -------------------------------------------------------------- runners
    def _runner(self, kind: str, rp: RetrainPolicy) -> Runner:
        return runner_for(kind, rp)

    def _status(self, runner: Runner, token: str, stopped: bool) -> RunnerStatus:
        """The attempt's status; one its actor does not know (killed, died, exited) has ended:
        STOPPED when it was being stopped, else FAILED."""
        status = runner.status(token)
        if status is not None:
            return status
        if stopped or token in self._killed:
            return RunnerStatus("STOPPED", "the retrain actor was killed: it did not stop when asked")
        return RunnerStatus("FAILED", "the retrain actor running it is gone (it died or was killed)")

    # -------------------------------------------------------------- helpers
    def _retrain_policy(self, model: str) -> RetrainPolicy:
        return self.policy.retrain.merged(self.policy.model(model).retrain)

    def _apply(self, run_id: str, step: Step, extra: Mapping[str, str] | None = None, *,
               known: Known | None = None) -> RetrainOutcome:
        """Record a step that needs no Ray call: the one place a request's state tag is written.

        ``known``: the request as last read; the outcome is built from it and what is written here."""
        if step.action in ("done", "retry_later"):
            return self._outcome(run_id, step.state, step.reason, known)
        tags = {**(extra or {}), TAG_RETRAIN_STATE: step.state.value, TAG_REASON: step.tag_reason}
        if step.retry_at is not None:
            tags[TAG_RETRY_AT] = step.retry_at.isoformat()
        self._tag(run_id, tags)
        if step.state.terminal:
            self.client.set_terminated(run_id, step.run_status)
        elif step.run_status is not None:
            self.client.update_run(run_id, status=step.run_status)
        out = self._outcome(run_id, step.state, step.reason,
                            Known({**known.tags, **tags}, known.metrics) if known is not None else None)
        if step.state.terminal:
            log = _log.info if step.state in (RetrainState.PROMOTED, RetrainState.NOT_PROMOTED) else _log.warning
            log("retrain %s of %s: %s: %s", run_id, out.model, step.state.value, step.reason)
        return out

    def _cost_and_state(self, run_id: str) -> tuple[float | None, str | None]:
        try:
            run = self.client.get_run(run_id)
        except Exception:
            return None, None
        return run.data.metrics.get(METRIC_COST_USD), run.data.tags.get(TAG_RETRAIN_STATE)

    def _tag(self, run_id: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def _outcome(self, run_id: str, state: RetrainState, reason: str, known: Known | None = None) -> RetrainOutcome:
        if known is None:
            run = self.client.get_run(run_id)
            known = Known(run.data.tags, run.data.metrics)
        t = known.tags
        return RetrainOutcome(
            model=t.get(TAG_MODEL, ""),
            run_id=run_id,
            state=state,
            reason=reason,
            priority=t.get(TAG_PRIORITY, "standard"),
            attempts=int(t.get(TAG_ATTEMPTS, "0")),
            ray_job_id=t.get(TAG_RAY_SUBMISSION_ID),
            cost_usd=known.metrics.get(METRIC_COST_USD),
            cap_usd=float(t[TAG_CAP_USD]) if TAG_CAP_USD in t else None,
            model_version=t.get(TAG_MODEL_VERSION),
            retry_at=datetime.fromisoformat(t[TAG_RETRY_AT]) if t.get(TAG_RETRY_AT) else None,
        )


@dataclass(frozen=True)
class Known:
    """A request's tags and metrics as a step last read them (plus what the step wrote since)."""

    tags: dict[str, str]
    metrics: dict[str, float]


def _state(tags: dict[str, str], default: RetrainState = RetrainState.PENDING) -> RetrainState:
    """The request's state tag as a :class:`RetrainState` (``default`` when the tag is absent)."""
    return RetrainState(tags.get(TAG_RETRAIN_STATE, default.value))


def _one_line(exc: BaseException) -> str:
    """An error as one short line: its type and its last line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}"[:300]
