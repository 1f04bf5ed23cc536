"""The warm retrain actor: one detached, named Ray actor that runs retrains one at a time.

Why: a Ray job per retrain pays for a fresh Python with MLflow, pandas, scikit-learn and
skops imported, plus Ray's job supervisor and driver start-up (9-13 CPU-s measured), for an
update that itself is often a fraction of that. The actor (``finops-retrainer`` in namespace
``mlflow-finops``) keeps them imported between retrains, and exits by itself after
``warm_idle_s`` without work.

It mirrors the Jobs API the supervisor uses: :meth:`RetrainWorker.submit` by a token (the
submission id: run id + attempt; a second submit of one token is refused),
:meth:`~RetrainWorker.status` with Ray's job status names, :meth:`~RetrainWorker.stop`.
A retrain runs :func:`~mlflow_finops.retrain.job.run_job` on a thread of the actor, so status
and stop calls are answered meanwhile (``max_concurrency`` > 1).

Cost stays exact and complete: each retrain's run is charged everything the actor's process
used since the previous retrain's run took its last reading (idle upkeep included), the first
one from the process's start (warming is a cost): :func:`~mlflow_finops.cost.tracker.charge_runs_from`.
An actor is no Ray driver, so its tracker samples its own process tree only. What it uses
after its last retrain until it exits for idleness (its idle tail, ~0.5 CPU-s a minute) is
added to that retrain's run as it exits; only an actor killed takes its tail with it.

Stopping is cooperative, like the SIGTERM a Ray job gets: :class:`RetrainStopped` is raised in
the retrain's thread at its next Python instruction, which ends the run with its cost so far.
A thread stuck in C (a blocking read) never sees it: the supervisor then kills the actor, and
the next retrain starts cold on a new one.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

from .. import ray_cluster
from ..names import ENV_CHARGE_PROCESS_START, RETRAIN_ACTOR_NAME, RETRAIN_ACTOR_NAMESPACE
from ..policy import RetrainPolicy

_log = logging.getLogger(__name__)

__all__ = ["RetrainWorker", "RetrainStopped", "ActorRunner", "RunnerStatus", "ClusterUnreachable", "connect"]

ENDED = ("SUCCEEDED", "FAILED", "STOPPED")
MAX_CONCURRENCY = 4  # one retrain + status/stop calls answered while it runs
CALL_TIMEOUT_S = 30.0  # a status or stop call
CREATE_TIMEOUT_S = 180.0  # the first submit waits for the actor's start-up (its imports)
KEEP_ENDED = 100  # retrains whose status the actor remembers after they ended
_SUCCEEDED = ("promoted", "not_promoted")  # as a job's exit code 0; any other verdict is a Ray FAILED


# This process cannot join the cluster as a Ray driver, which the actor needs (a Ray job needs
# only the Jobs API's HTTP): the supervisor runs the attempt as a Ray job instead.
ClusterUnreachable = ray_cluster.ClusterUnreachable


class RetrainStopped(BaseException):
    """Raised in a retrain's thread by :meth:`RetrainWorker.stop` (a BaseException: no
    ``except Exception`` of the training code swallows it)."""


@dataclass(frozen=True)
class RunnerStatus:
    """One attempt as a runner reports it: Ray's job status names, its last word, start and cap."""

    status: str  # PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED
    message: str = ""
    start_ms: int | None = None
    cap_usd: float | None = None

    @property
    def ended(self) -> bool:
        """Ray says the attempt is over (``JobStatus.is_terminal``); Ray is loaded wherever a status is read."""
        from ray.job_submission import JobStatus

        return JobStatus(self.status).is_terminal()


@dataclass
class _Retrain:
    token: str
    cap_usd: float | None
    status: str = "PENDING"
    message: str = ""
    start_ms: int | None = None
    stop_requested: bool = False
    thread: threading.Thread | None = None


class RetrainWorker:
    """The actor's class (made a Ray actor by :class:`ActorRunner`; plain here, so it imports
    without Ray and is pickled by reference)."""

    def __init__(self, warm_idle_s: float):
        import psutil

        from ..cost.tracker import CpuMark, charge_runs_from

        # first: the imports below are the first retrain's cost, as they are a job's
        charge_runs_from(CpuMark(psutil.Process().create_time()))
        import mlflow.sklearn  # noqa: F401  (loading and logging the models)
        import sklearn  # noqa: F401

        from . import job

        with contextlib.suppress(ImportError):
            import skops.io  # noqa: F401  (the champion's format, when it is skops)
        self._job = job
        self._lock = threading.Lock()  # the table below
        self._one = threading.Lock()  # one retrain at a time: the next waits PENDING
        self._retrains: dict[str, _Retrain] = {}
        self._base_env = dict(os.environ)
        self._last_work = time.monotonic()
        self._last_run: tuple[str, str, dict[str, str]] | None = None  # run id, policy path, env
        self._closing = False
        threading.Thread(target=self._exit_when_idle, args=(warm_idle_s,), name="finops-idle", daemon=True).start()

    # ---------------------------------------------------------------- the Jobs API's mirror
    def submit(self, token: str, policy_path: str, model: str, run_id: str, cap_usd: float | None,
               env: Mapping[str, str]) -> None:
        """Start the retrain of ``run_id`` on a thread of its own; refused for a known token."""
        with self._lock:
            if self._closing:
                raise RuntimeError("the retrain actor is exiting (idle); try again later")
            if token in self._retrains:
                raise ValueError(f"retrain {token} already exists")
            r = _Retrain(token, cap_usd)
            self._retrains[token] = r
            self._last_work = time.monotonic()
            r.thread = threading.Thread(target=self._run, args=(r, policy_path, model, run_id, dict(env)),
                                        name=f"retrain-{token}", daemon=True)
            r.thread.start()

    def status(self, token: str) -> RunnerStatus | None:
        """The retrain's status (None: this actor never ran it, e.g. it was started after a kill)."""
        with self._lock:
            r = self._retrains.get(token)
            return None if r is None else RunnerStatus(r.status, r.message, r.start_ms, r.cap_usd)

    def stop(self, token: str) -> None:
        """Stop the retrain: not started yet, it never will; running, :class:`RetrainStopped` is
        raised in its thread at its next Python instruction."""
        with self._lock:
            r = self._retrains.get(token)
            if r is None or r.status in ENDED or r.stop_requested:
                return
            r.stop_requested = True
            if r.status == "RUNNING" and r.thread is not None and r.thread.ident is not None:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(r.thread.ident),
                                                           ctypes.py_object(RetrainStopped))

    def pid(self) -> int:
        return os.getpid()

    # ---------------------------------------------------------------- inside
    def _run(self, r: _Retrain, policy_path: str, model: str, run_id: str, env: dict[str, str]) -> None:
        try:
            status, message = self._attempt(r, policy_path, model, run_id, env)
        except RetrainStopped:  # landed after the retrain's own handlers
            status, message = "STOPPED", "stopped"
        while True:  # a stop landing here is the retrain's only one (stop() sends one): the retry succeeds
            try:
                self._finish(r, status, message)
                return
            except RetrainStopped:
                continue

    def _attempt(self, r: _Retrain, policy_path: str, model: str, run_id: str,
                 env: dict[str, str]) -> tuple[str, str]:
        """The retrain, once the one before it ended: its status in Ray's names, and its last word."""
        with self._one:
            with self._lock:
                if r.stop_requested:
                    return "STOPPED", "stopped before it started"
                r.status, r.start_ms = "RUNNING", int(time.time() * 1000)
            self._last_run = (run_id, policy_path, env)
            try:
                with self._env(env):
                    state = self._job.run_job(self._job.load_config(policy_path or None, model), run_id, r.cap_usd)
            except RetrainStopped:
                return "STOPPED", "stopped"
            except Exception as exc:
                _log.exception("retrain %s failed", r.token)
                lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
                return "FAILED", f"{type(exc).__name__}: {lines[-1] if lines else ''}"[:300]
        return ("SUCCEEDED" if state.value in _SUCCEEDED else "FAILED"), f"retrain ended {state.value}"

    def _finish(self, r: _Retrain, status: str, message: str) -> None:
        with self._lock:
            r.status, r.message = ("STOPPED" if r.stop_requested else status), message
            self._last_work = time.monotonic()
            ended = [t for t, x in self._retrains.items() if x.status in ENDED]
            for t in ended[:-KEEP_ENDED]:
                del self._retrains[t]

    @contextlib.contextmanager
    def _env(self, env: dict[str, str]) -> Iterator[None]:
        """The retrain's ``MLFLOW_*`` settings (what a job's runtime env holds), then the actor's own
        again; without ``MLFLOW_FINOPS_CHARGE_PROCESS_START``: here a run is charged from the actor's mark."""
        env = {k: v for k, v in env.items() if k != ENV_CHARGE_PROCESS_START}
        os.environ.update(env)
        try:
            yield
        finally:
            for k in env:
                if k in self._base_env:
                    os.environ[k] = self._base_env[k]
                else:
                    os.environ.pop(k, None)

    def _exit_when_idle(self, warm_idle_s: float) -> None:
        import ray

        while True:
            time.sleep(min(max(warm_idle_s / 4, 0.05), 5.0))
            with self._lock:
                if any(r.status not in ENDED for r in self._retrains.values()):
                    continue
                if time.monotonic() - self._last_work < warm_idle_s:
                    continue
                self._closing = True
            _log.info("no retrain for %.0f s (warm_idle_s): the retrain actor exits", warm_idle_s)
            self._charge_idle_tail()
            ray.kill(ray.get_runtime_context().current_actor, no_restart=True)
            return

    def _charge_idle_tail(self) -> None:
        """Add what the actor used since its last retrain's last reading to that retrain's run
        (resumed: its cost grows by the tail), so the actor's whole CPU is charged."""
        if self._last_run is None:
            return
        from ..cost.tracker import track_cost

        run_id, policy_path, env = self._last_run
        try:
            with self._env(env), track_cost(run_id=run_id, policy=policy_path or None, log_timeseries=False):
                pass
        except Exception as exc:
            _log.warning("the retrain actor's idle tail was not charged to run %s: %s", run_id, exc)


# ====================================================================== the supervisor's side
def _port(address: str) -> str:
    return address.rstrip("/").rsplit(":", 1)[-1]


def connect(jobs_address: str, timeout_s: float = ray_cluster.DEFAULT_CONNECT_TIMEOUT_S) -> None:
    """Connect this process to the cluster behind ``jobs_address`` as a Ray driver, once, within ``timeout_s``.

    The GCS address is that of the local cluster whose Jobs API is ``jobs_address`` when one
    runs on this machine, else ``$RAY_ADDRESS`` when it is one (not HTTP), else the cluster
    this host started last; the connected cluster's dashboard must be the one at
    ``jobs_address`` (same port). :class:`ClusterUnreachable` if not.
    """
    import ray

    if ray.is_initialized():
        return  # connected already (by us, checked; or by the caller's own ray.init)
    address = ray_cluster.gcs_address_of(jobs_address)
    ctx = ray_cluster.join(address, timeout_s=timeout_s, namespace=RETRAIN_ACTOR_NAMESPACE, log_to_driver=False)
    dashboard = str(getattr(ctx, "dashboard_url", "") or "")
    if dashboard and _port(dashboard) != _port(jobs_address):
        gcs = ray.get_runtime_context().gcs_address
        ray.shutdown()
        raise ClusterUnreachable(
            f"Ray at {gcs} has its dashboard at {dashboard}, not {jobs_address}: "
            "set RAY_ADDRESS to the GCS address of that cluster"
        )


class ActorRunner:
    """Runs retrains on the warm actor: the supervisor's runner for ``runner = "actor"``."""

    kind = "actor"
    noun = "retrain on the warm actor"
    stops_hard = False  # a thread stuck in C ignores stop(): kill() is the backstop

    def __init__(self, rp: RetrainPolicy, jobs_address: str):
        self.rp = rp
        self.jobs_address = jobs_address

    def actor(self, create: bool = False) -> Any:
        """The actor (None when none is alive); ``create``: made when none is (cold: its start-up
        is its first retrain's cost)."""
        import ray

        connect(self.jobs_address, self.rp.connect_timeout_s)
        if create:
            return ray.remote(RetrainWorker).options(
                name=RETRAIN_ACTOR_NAME, namespace=RETRAIN_ACTOR_NAMESPACE, lifetime="detached",
                get_if_exists=True, max_concurrency=MAX_CONCURRENCY, num_cpus=self.rp.entrypoint_num_cpus,
                max_restarts=0,
            ).remote(self.rp.warm_idle_s)
        try:
            return ray.get_actor(RETRAIN_ACTOR_NAME, namespace=RETRAIN_ACTOR_NAMESPACE)
        except ValueError:  # none alive
            return None

    def submit(self, token: str, *, run_id: str, model: str, policy_path: str, cap_usd: float | None,
               env: Mapping[str, str]) -> None:
        import ray

        deadline = time.monotonic() + CREATE_TIMEOUT_S
        while True:
            actor = self.actor(create=True)
            try:
                ray.get(actor.submit.remote(token, policy_path, model, run_id, cap_usd, dict(env)),
                        timeout=max(1.0, deadline - time.monotonic()))
                return
            except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as exc:
                # an actor exiting for idleness (or just killed): its successor takes the retrain
                if ("exiting (idle)" in str(exc) or isinstance(exc, ray.exceptions.RayActorError)) \
                        and time.monotonic() < deadline:
                    time.sleep(0.5)
                    continue
                raise

    def status(self, token: str) -> RunnerStatus | None:
        import ray

        actor = self.actor()
        if actor is None:
            return None
        try:
            return ray.get(actor.status.remote(token), timeout=CALL_TIMEOUT_S)
        except ray.exceptions.RayActorError:
            return None

    def stop(self, token: str) -> None:
        import ray

        actor = self.actor()
        if actor is not None:
            with contextlib.suppress(ray.exceptions.RayActorError):
                ray.get(actor.stop.remote(token), timeout=CALL_TIMEOUT_S)

    def kill(self, token: str) -> None:
        """The backstop: the actor ignored :meth:`stop` (a thread stuck in C). Every retrain on it ends."""
        import ray

        actor = self.actor()
        if actor is not None:
            _log.warning("retrain %s ignored its stop: killing the retrain actor", token)
            ray.kill(actor, no_restart=True)
