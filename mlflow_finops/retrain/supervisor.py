"""Budget-limited retraining as Ray jobs: request, wait for a window, submit, supervise.

A retrain request is an MLflow run in ``finops-retrains/<model>`` with status
``SCHEDULED`` and tag ``finops.retrain_state`` (``pending``, ``waiting``,
``retry``, ``submitted``, ``running`` (set by the job), then one of ``promoted``, ``not_promoted``,
``capped``, ``failed``, ``out_of_budget``, ``dropped``, ``no_new_data``). Being
in MLflow, a pending retrain survives a scheduler restart, and the same run
becomes the retrain's own tracked run inside the Ray job: its cost lands
where the budget reads it.

:class:`RetrainSupervisor.process` takes one request one step further:

1. past its deadline: dropped;
2. the model's budget envelopes (``[budgets.*]``, spend read from MLflow):
   no money left, or less than the expected cost: ``out_of_budget``, no job;
3. the opportunistic window (``[windows]``) by priority (see :mod:`.windows`);
4. a Ray job through ``JobSubmissionClient`` running ``ray_jobs/retrain.py``
   with the cap ``min(per_job_usd, remaining)``; the job stops itself at the
   cap, and the supervisor calls ``stop_job`` at ``cap x (1 + cap_tolerance)``
   as a hard backstop, and after ``max_job_minutes`` (a hung job spends
   nothing, so no cap would ever stop it);
5. a failed job is retried with exponential backoff while budget remains.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Literal

from mlflow.tracking import MlflowClient

from ..spend.budget import envelopes_for, spend
from ..store import get_or_create_experiment
from .. import ray_cluster
from ..policy import Policy, PolicyError, RetrainPolicy, load_policy
from .windows import window_state

_log = logging.getLogger(__name__)

__all__ = [
    "RetrainOutcome",
    "RetrainSupervisor",
    "request_retrain",
    "retrain_experiment_name",
    "jobs_address",
]

State = Literal[
    "pending", "waiting", "retry", "submitted", "running",
    "promoted", "not_promoted", "capped", "failed", "out_of_budget", "dropped", "no_new_data",
]
TERMINAL = {"promoted", "not_promoted", "capped", "failed", "out_of_budget", "dropped", "no_new_data"}
PRIORITY_ORDER = {"critical": 0, "standard": 1, "exploratory": 2}


@dataclass(frozen=True)
class RetrainOutcome:
    """Where one retrain request stands after a step (like Ray's ``JobDetails``: typed, not a dict)."""

    model: str
    run_id: str
    state: str
    reason: str
    priority: str = "standard"
    attempts: int = 0
    ray_job_id: str | None = None
    cost_usd: float | None = None
    cap_usd: float | None = None
    model_version: str | None = None

    @property
    def done(self) -> bool:
        return self.state in TERMINAL

    @property
    def promoted(self) -> bool:
        return self.state == "promoted"


def retrain_experiment_name(model: str) -> str:
    return f"finops-retrains/{model}"


def jobs_address(rp: RetrainPolicy) -> str:
    """The Ray Jobs API address for a retrain policy (its ``ray_address``, else ``$RAY_ADDRESS``, else local)."""
    return ray_cluster.jobs_address(rp.ray_address)


def jobs_client(rp: RetrainPolicy) -> Any:
    """A Ray ``JobSubmissionClient`` for the policy's cluster, with its token when it needs one."""
    return ray_cluster.jobs_client(rp.ray_address)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _model_policy(policy: Policy, model: str) -> Any:
    if model not in policy.models:
        known = ", ".join(sorted(policy.models)) or "none"
        raise PolicyError(policy.source or "policy", [f"[models.{model}]: unknown model (models in the policy: {known})"])
    return policy.models[model]


def _priority(policy: Policy, model: str) -> str:
    names = envelopes_for(policy, model=model)
    if not names:
        return "standard"
    return min((policy.budgets[n].priority for n in names), key=PRIORITY_ORDER.__getitem__)


def request_retrain(
    policy: Policy,
    model: str,
    *,
    drift_run_id: str | None = None,
    reason: str = "requested",
    client: MlflowClient | None = None,
    now: datetime | None = None,
) -> str:
    """Record a pending retrain for ``model`` (idempotent per drift check); returns its run id."""
    mp = _model_policy(policy, model)
    rp = policy.retrain.merged(mp.retrain)
    client = client or MlflowClient()
    now = now or _now()
    exp_id = get_or_create_experiment(client, retrain_experiment_name(model))
    if drift_run_id:
        existing = client.search_runs(
            [exp_id], f"tags.`finops.drift_run_id` = '{drift_run_id}'", max_results=1
        )
        if existing:
            return existing[0].info.run_id
    priority = _priority(policy, model)
    tags = {
        "finops.retrain_state": "pending",
        "finops.priority": priority,
        "finops.attempts": "0",
        "finops.requested_at": now.isoformat(),
        "finops.deadline": (now + timedelta(hours=rp.deadline_hours)).isoformat(),
        "finops.reason": reason,
        "mlflow.runName": f"retrain-{model}-{now:%Y%m%d-%H%M%S}",
        **policy.tags.resolve(),
        # after the policy's tags (as a drift check's own workload wins over them): this run
        # is a retrain of this model
        "finops.workload": "retrain",
        "finops.model": model,
    }
    if drift_run_id:
        tags["finops.drift_run_id"] = drift_run_id
    run = client.create_run(exp_id, start_time=int(now.timestamp() * 1000), tags=tags)
    client.update_run(run.info.run_id, status="SCHEDULED")
    if drift_run_id:
        try:
            client.set_tag(drift_run_id, "finops.retrain_run_id", run.info.run_id)
        except Exception as exc:  # lineage is best effort; the retrain still happens
            _log.warning("could not tag drift run %s with its retrain: %s", drift_run_id, exc)
    _log.info("retrain of %s requested (%s), run %s, priority %s", model, reason, run.info.run_id, priority)
    return run.info.run_id


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

    # -------------------------------------------------------------- queries
    def pending(self, model: str | None = None) -> list[Any]:
        """Retrain requests not finished yet (status SCHEDULED or RUNNING), oldest first."""
        models = [model] if model else list(self.policy.models)
        out = []
        for m in models:
            exp = self.client.get_experiment_by_name(retrain_experiment_name(m))
            if exp is None:
                continue
            runs = [
                r
                for status in ("SCHEDULED", "RUNNING")
                for r in self.client.search_runs(
                    [exp.experiment_id], f"attributes.status = '{status}'", max_results=1000
                )
            ]
            runs.sort(key=lambda r: r.info.start_time)
            out += [r for r in runs if r.data.tags.get("finops.retrain_state") not in TERMINAL]
        return out

    def run_pending(self, model: str | None = None, wait: bool = True) -> list[RetrainOutcome]:
        """Process every open request once (each supervised to its end when ``wait``)."""
        return [self.process(run.info.run_id, wait=wait) for run in self.pending(model)]

    # ---------------------------------------------------------------- steps
    def process(self, run_id: str, wait: bool = True) -> RetrainOutcome:
        run = self.client.get_run(run_id)
        tags = run.data.tags
        model = tags["finops.model"]
        state = tags.get("finops.retrain_state", "pending")
        # The job tags its verdict (promoted, capped, ...) before it ends its run, and its final
        # cost is recorded only then: until the run has ended, supervise it like a submitted one.
        finishing = state in TERMINAL and run.info.status == "RUNNING" and bool(tags.get("finops.ray_submission_id"))
        if state in TERMINAL and not finishing:
            return self._outcome(run_id, state, tags.get("finops.reason", ""))
        mp = _model_policy(self.policy, model)
        rp = self.policy.retrain.merged(mp.retrain)
        now = self.now()

        # "running": the job's own tag once its run has started; never submit that job again
        if (state in ("submitted", "running") or finishing) and tags.get("finops.ray_submission_id"):
            return self._supervise(run_id, model, rp, wait)  # a later step, or the scheduler restarted mid-job

        deadline = datetime.fromisoformat(tags["finops.deadline"])
        if now >= deadline:
            return self._finish(run_id, "dropped", f"not started before its deadline {deadline.isoformat()}", "KILLED")
        retry_at = tags.get("finops.retry_at")
        if retry_at and now < datetime.fromisoformat(retry_at):
            return self._outcome(run_id, state, f"retry not before {retry_at}")

        # 1. the budget: money left, and enough for what a retrain costs
        cap, why_not = self._cap(model, rp)
        if why_not:
            return self._finish(run_id, "out_of_budget", why_not, "FINISHED")

        # 2. the window, by priority
        priority = tags.get("finops.priority", "standard")
        window = window_state(self.policy.windows, jobs_address(rp), now)
        requested = datetime.fromisoformat(tags["finops.requested_at"])
        waited_enough = now - requested >= timedelta(hours=self.policy.windows.max_wait_hours)
        go = window.open or priority == "critical" or (priority == "standard" and waited_enough)
        if not go:
            self._tag(run_id, {"finops.retrain_state": "waiting", "finops.reason": f"waiting: {window.reason}"})
            return self._outcome(run_id, "waiting", window.reason)
        why = "window open" if window.open else f"{priority}: runs outside the window ({window.reason})"

        # 3. submit
        self._submit(run_id, model, rp, cap, why)
        return self._supervise(run_id, model, rp, wait)

    def _cap(self, model: str, rp: RetrainPolicy) -> tuple[float | None, str | None]:
        """The job's cost cap, or why no job may run."""
        names = envelopes_for(self.policy, model=model)
        caps: list[float] = []
        expected = rp.expected_cost_usd if rp.expected_cost_usd is not None else self._typical_cost(model)
        for name in names:
            status = spend(self.policy.budgets[name], self.client, self.now(), name=name)
            if status.remaining_usd <= 0:
                return None, (
                    f"envelope {name!r} is spent: ${status.spent_usd:.4f} of ${status.amount_usd:.4f} "
                    f"this {status.envelope.period}; no job submitted"
                )
            if expected and expected > status.remaining_usd:
                return None, (
                    f"envelope {name!r} has ${status.remaining_usd:.4f} left, less than the "
                    f"${expected:.4f} a retrain is expected to cost; no job submitted"
                )
            caps.append(status.remaining_usd)
            if status.envelope.per_job_usd is not None:
                caps.append(status.envelope.per_job_usd)
        return (min(caps) if caps else None), None

    def _typical_cost(self, model: str) -> float | None:
        """Mean cost of the model's last 3 completed retrains (None before the first)."""
        exp = self.client.get_experiment_by_name(retrain_experiment_name(model))
        if exp is None:
            return None
        runs = self.client.search_runs(
            [exp.experiment_id], "attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"], max_results=50,
        )
        done = [r for r in runs if r.data.tags.get("finops.retrain_state") in ("promoted", "not_promoted")]
        costs = [r.data.metrics["finops/cost_usd"] for r in done[:3] if "finops/cost_usd" in r.data.metrics]
        return sum(costs) / len(costs) if costs else None

    def _submit(self, run_id: str, model: str, rp: RetrainPolicy, cap: float | None, why: str) -> None:
        tags = self.client.get_run(run_id).data.tags
        attempt = int(tags.get("finops.attempts", "0")) + 1
        policy_path = os.path.abspath(self.policy.source) if self.policy.source else ""
        entrypoint = (
            f"{sys.executable} -m ray_jobs.retrain --run-id {run_id} --model {model}"
            + (f" --policy {policy_path}" if policy_path else "")
            + (f" --cap-usd {cap:.10f}" if cap is not None else "")
        )
        env = {k: v for k, v in os.environ.items() if k.startswith(("MLFLOW_FINOPS_", "MLFLOW_"))}
        env["MLFLOW_TRACKING_URI"] = _absolute_uri(self.client.tracking_uri)
        env["MLFLOW_FINOPS_CHARGE_PROCESS_START"] = "true"  # the job's start-up is the retrain's cost
        env.setdefault("PYTHONUNBUFFERED", "1")
        submission_id = f"finops-retrain-{run_id[:12]}-{attempt}"
        jobs = jobs_client(rp)
        deadline = time.monotonic() + 60
        while True:
            try:
                jobs.submit_job(
                    entrypoint=entrypoint,
                    submission_id=submission_id,
                    runtime_env={"env_vars": env},
                    entrypoint_num_cpus=rp.entrypoint_num_cpus,
                    metadata={"finops.model": model, "finops.run_id": run_id},
                )
                break
            except RuntimeError as exc:  # a cluster that just started has no job agent yet
                if "try again later" not in str(exc) or time.monotonic() > deadline:
                    raise
                self.sleep(2.0)
        new_tags = {
            "finops.retrain_state": "submitted",
            "finops.ray_submission_id": submission_id,
            "finops.attempts": str(attempt),
            "finops.reason": f"submitted ({why})",
            "finops.stopped_for_time": "false",  # this attempt's own time limit
        }
        if cap is not None:
            new_tags["finops.cap_usd"] = f"{cap:.10f}"
        self._tag(run_id, new_tags)
        self.client.update_run(run_id, status="RUNNING")
        _log.info("retrain %s of %s submitted as Ray job %s (cap %s)", run_id, model, submission_id, cap)

    def _supervise(self, run_id: str, model: str, rp: RetrainPolicy, wait: bool) -> RetrainOutcome:
        from ray.job_submission import JobStatus

        tags = self.client.get_run(run_id).data.tags
        submission_id = tags["finops.ray_submission_id"]
        cap = float(tags["finops.cap_usd"]) if "finops.cap_usd" in tags else None
        jobs = jobs_client(rp)
        stopped_for_cap = tags.get("finops.stopped_for_cap") == "true"  # by an earlier step (wait=False)
        timed_out = tags.get("finops.stopped_for_time") == "true"
        while True:
            info = jobs.get_job_info(submission_id)
            status = info.status
            if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
                break
            cost, job_state = self._cost_and_state(run_id)
            # a job that tagged itself capped is already stopping: no SIGTERM into its wind-down
            if job_state == "capped":
                stopped_for_cap = True
            if cap is not None and cost is not None and cost >= cap * (1 + rp.cap_tolerance) and not stopped_for_cap:
                _log.warning("retrain %s spent $%.6f past its cap $%.6f: stopping Ray job %s",
                             run_id, cost, cap, submission_id)
                jobs.stop_job(submission_id)
                stopped_for_cap = True
                self._tag(run_id, {"finops.stopped_for_cap": "true"})
            ran_min = (time.time() * 1000 - (info.start_time or time.time() * 1000)) / 60_000
            if ran_min > rp.max_job_minutes and not timed_out:
                _log.warning("retrain %s: Ray job %s still %s after %.1f min (max_job_minutes %g): stopping it",
                             run_id, submission_id, status, ran_min, rp.max_job_minutes)
                jobs.stop_job(submission_id)
                timed_out = True
                self._tag(run_id, {"finops.stopped_for_time": "true"})
            if not wait:
                return self._outcome(run_id, "submitted", f"Ray job {submission_id} is {status}")
            self.sleep(rp.poll_s)

        run = self.client.get_run(run_id)
        job_state = run.data.tags.get("finops.retrain_state", "submitted")
        if job_state in TERMINAL - {"failed", "capped"}:  # the job reached a verdict itself
            return self._outcome(run_id, job_state, run.data.tags.get("finops.reason", ""))
        if stopped_for_cap or job_state == "capped":
            return self._finish(
                run_id, "capped",
                f"stopped at its cost cap ${cap:.6f} (Ray job {submission_id} {status}); nothing promoted",
                "KILLED",
            )
        # FAILED, STOPPED for time or by someone else: retry with backoff while budget remains
        info = jobs.get_job_info(submission_id)
        message = (info.message or "").splitlines()[-1:] or [""]
        if timed_out:
            message = [f"still running after max_job_minutes = {rp.max_job_minutes:g}, stopped"]
        attempts = int(run.data.tags.get("finops.attempts", "1"))
        _log.error("retrain %s of %s: Ray job %s %s: %s", run_id, model, submission_id, status, message[0])
        cap_left, why_not = self._cap(model, rp)
        if attempts < rp.max_attempts and why_not is None:
            retry_at = self.now() + timedelta(seconds=rp.backoff_s * 2 ** (attempts - 1))
            self._tag(run_id, {
                "finops.retrain_state": "retry",
                "finops.retry_at": retry_at.isoformat(),
                "finops.reason": f"Ray job {status}: {message[0][:200]}; retry {attempts + 1} at {retry_at:%H:%M:%S}",
            })
            self.client.update_run(run_id, status="SCHEDULED")
            return self._outcome(run_id, "retry", f"job {status}; retry at {retry_at.isoformat()}")
        reason = f"Ray job {status} after {attempts} attempt(s): {message[0][:200]}"
        if why_not:
            reason += f"; no retry: {why_not}"
        return self._finish(run_id, "failed", reason, "KILLED" if status == JobStatus.STOPPED else "FAILED")

    def cancel(self, run_id: str, reason: str) -> RetrainOutcome:
        """Drop an open request (it will not run); a submitted job is stopped first."""
        tags = self.client.get_run(run_id).data.tags
        if tags.get("finops.retrain_state") == "submitted" and tags.get("finops.ray_submission_id"):
            model = tags.get("finops.model", "")
            mp = self.policy.models.get(model)
            rp = self.policy.retrain.merged(mp.retrain if mp else None)
            try:
                jobs_client(rp).stop_job(tags["finops.ray_submission_id"])
            except Exception as exc:
                _log.warning("could not stop Ray job %s: %s", tags["finops.ray_submission_id"], exc)
        return self._finish(run_id, "dropped", f"cancelled: {reason}", "KILLED")

    # -------------------------------------------------------------- helpers
    def _cost_and_state(self, run_id: str) -> tuple[float | None, str | None]:
        try:
            run = self.client.get_run(run_id)
        except Exception:
            return None, None
        return run.data.metrics.get("finops/cost_usd"), run.data.tags.get("finops.retrain_state")

    def _tag(self, run_id: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def _finish(self, run_id: str, state: str, reason: str, status: str) -> RetrainOutcome:
        self._tag(run_id, {"finops.retrain_state": state, "finops.reason": reason})
        self.client.set_terminated(run_id, status)
        run = self.client.get_run(run_id)
        log = _log.info if state in ("promoted", "not_promoted") else _log.warning
        log("retrain %s of %s: %s: %s", run_id, run.data.tags.get("finops.model"), state, reason)
        return self._outcome(run_id, state, reason)

    def _outcome(self, run_id: str, state: str, reason: str) -> RetrainOutcome:
        run = self.client.get_run(run_id)
        t = run.data.tags
        return RetrainOutcome(
            model=t.get("finops.model", ""),
            run_id=run_id,
            state=state,
            reason=reason,
            priority=t.get("finops.priority", "standard"),
            attempts=int(t.get("finops.attempts", "0")),
            ray_job_id=t.get("finops.ray_submission_id"),
            cost_usd=run.data.metrics.get("finops/cost_usd"),
            cap_usd=float(t["finops.cap_usd"]) if "finops.cap_usd" in t else None,
            model_version=t.get("finops.model_version"),
        )


def _absolute_uri(uri: str) -> str:
    """A tracking URI a job started elsewhere can use (relative SQLite paths made absolute)."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + os.path.abspath(uri[len("sqlite:///"):])
    return uri
