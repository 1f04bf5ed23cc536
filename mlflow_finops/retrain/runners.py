"""Where a retrain attempt runs: a Ray job per attempt, or the warm actor (:mod:`.worker`).

Both answer to one protocol by the attempt's token (its submission id), with Ray's job status
names. The job receives no credentials: its environment holds the ``MLFLOW_*`` settings whose
names do not look secret (no TOKEN, PASSWORD, SECRET, USERNAME, KEY, CREDENTIAL, AUTH), with
``user:password@`` removed from every URI (anyone who can reach the Jobs API can read them).
"""

from __future__ import annotations

import os
import sys
from typing import Any, Mapping, Protocol

from .. import ray_cluster
from ..names import ENV_CHARGE_PROCESS_START, TAG_CAP_USD, TAG_MODEL, TAG_RUN_ID
from ..policy import RetrainPolicy
from ..store import redact_uri
from .worker import ActorRunner, RunnerStatus

__all__ = ["Runner", "JobsRunner", "ActorRunner", "runner_for", "jobs_address", "jobs_client", "job_env"]

_SECRET_WORDS = ("TOKEN", "PASSWORD", "SECRET", "USERNAME", "KEY", "CREDENTIAL", "AUTH")


def jobs_address(rp: RetrainPolicy) -> str:
    """The Ray Jobs API address for a retrain policy (its ``ray_address``, else ``$RAY_ADDRESS``, else local)."""
    return ray_cluster.jobs_address(rp.ray_address)


def jobs_client(rp: RetrainPolicy) -> Any:
    """A Ray ``JobSubmissionClient`` for the policy's cluster, with its token when it needs one."""
    return ray_cluster.jobs_client(rp.ray_address)


class Runner(Protocol):
    """Where an attempt runs, by its token (the submission id): a Ray job or the warm actor."""

    kind: str  # the attempt's finops.retrain_runner tag
    noun: str  # what an attempt is called in messages
    stops_hard: bool  # stop() ends it for sure (else kill() is the backstop)

    def submit(self, token: str, *, run_id: str, model: str, policy_path: str, cap_usd: float | None,
               env: Mapping[str, str]) -> None: ...

    def status(self, token: str) -> RunnerStatus | None: ...

    def stop(self, token: str) -> None: ...

    def kill(self, token: str) -> None: ...


class JobsRunner:
    """Each attempt a Ray job running ``python -m ray_jobs.retrain`` (``runner = "job"``)."""

    kind = "job"
    noun = "Ray job"
    stops_hard = True  # Ray's stop_job sends SIGTERM, then SIGKILL

    def __init__(self, rp: RetrainPolicy):
        self.rp = rp
        self._jobs: Any = None

    @property
    def jobs(self) -> Any:
        if self._jobs is None:  # made on first use: a cluster starting up refuses it for a while
            self._jobs = jobs_client(self.rp)
        return self._jobs

    def submit(self, token: str, *, run_id: str, model: str, policy_path: str, cap_usd: float | None,
               env: Mapping[str, str]) -> None:
        entrypoint = (
            f"{sys.executable} -m ray_jobs.retrain --run-id {run_id} --model {model}"
            + (f" --policy {policy_path}" if policy_path else "")
            + (f" --cap-usd {cap_usd:.10f}" if cap_usd is not None else "")
        )
        metadata = {TAG_MODEL: model, TAG_RUN_ID: run_id}
        if cap_usd is not None:
            metadata[TAG_CAP_USD] = f"{cap_usd:.10f}"
        self.jobs.submit_job(entrypoint=entrypoint, submission_id=token, runtime_env={"env_vars": dict(env)},
                             entrypoint_num_cpus=self.rp.entrypoint_num_cpus, metadata=metadata)

    def status(self, token: str) -> RunnerStatus:
        info = self.jobs.get_job_info(token)
        return RunnerStatus(str(info.status), ((info.message or "").splitlines()[-1:] or [""])[0],
                            info.start_time, _float((info.metadata or {}).get(TAG_CAP_USD)))

    def stop(self, token: str) -> None:
        self.jobs.stop_job(token)

    def kill(self, token: str) -> None:  # stop() is hard already
        self.stop(token)


def runner_for(kind: str, rp: RetrainPolicy) -> Runner:
    """The runner an attempt's ``finops.retrain_runner`` tag names (a Ray job unless the actor)."""
    return ActorRunner(rp, jobs_address(rp)) if kind == ActorRunner.kind else JobsRunner(rp)


def _absolute_uri(uri: str) -> str:
    """A tracking URI a job started elsewhere can use (relative SQLite paths made absolute)."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + os.path.abspath(uri[len("sqlite:///"):])
    return uri


def job_env(environ: Mapping[str, str], tracking_uri: str) -> dict[str, str]:
    """The Ray job's environment: non-secret ``MLFLOW_*`` settings only, URIs without userinfo.

    Anyone who can reach the cluster's Jobs API can read a job's runtime_env, so
    no credential travels in it; the job authenticates with the nodes' own.
    """
    env = {
        k: redact_uri(v) for k, v in environ.items()
        if k.startswith("MLFLOW_") and not any(word in k for word in _SECRET_WORDS)
    }
    env["MLFLOW_TRACKING_URI"] = redact_uri(_absolute_uri(tracking_uri))
    env[ENV_CHARGE_PROCESS_START] = "true"  # the job's start-up is the retrain's cost
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _float(text: str | None) -> float | None:
    return float(text) if text else None
