"""Claims with a lease: the name of an MLflow experiment as a lock exactly one process can take.

Used for drift windows (two schedulers never judge one window twice) and retrain
requests and attempts (one request per decision, one Ray job per attempt).

The claim on ``key`` is the creation of an experiment named ``finops-claims/<key>``.
Experiment names are unique in every MLflow store (a UNIQUE constraint in the SQL
stores, RESOURCE_ALREADY_EXISTS over REST), so the database decides the single
winner. The tempting alternative, "tag a claim run and let the earliest-created
claim win", is unsound: a run's start time is stamped by the client before the
insert commits, so a slow claimant can commit an *earlier* time after a fast one
already read and saw only itself, and both would win. The claim experiment is
soft-deleted right away (it keeps its name, so the claim holds, but leaves the
UI's list); its tags say who holds it and for how long.

A stale claim (its lease ran out, or its holder is a dead process on this host)
is taken over: its experiment is renamed away *by id* to ``.../expired-<ms>``,
then the name is created again, so exactly one of several takers wins (the create
decides), and a taker can never free the fresh claim another one already made.
"""

from __future__ import annotations

import logging
import os
import socket
import time

from mlflow import MlflowClient
from mlflow.entities import Experiment
from mlflow.exceptions import MlflowException

from .names import CLAIMS_PREFIX, TAG_CLAIM_HOST, TAG_CLAIM_LEASE_S, TAG_CLAIM_PID, TAG_CLAIM_TIME_MS

__all__ = ["claim", "release", "claim_name"]

log = logging.getLogger(__name__)


def claim_name(key: str) -> str:
    """The experiment whose existence is the claim on ``key``."""
    return f"{CLAIMS_PREFIX}/{key}"


def claim(client: MlflowClient, key: str, lease_s: float) -> bool:
    """Take the claim on ``key`` for ``lease_s`` seconds; True for exactly one claimant."""
    name = claim_name(key)
    for _ in range(2):  # the second pass only after a stale claim was retired
        now_ms = int(time.time() * 1000)
        try:
            exp_id = client.create_experiment(
                name,
                tags={
                    TAG_CLAIM_HOST: socket.gethostname(),
                    TAG_CLAIM_PID: str(os.getpid()),
                    TAG_CLAIM_TIME_MS: str(now_ms),
                    TAG_CLAIM_LEASE_S: f"{lease_s:g}",
                },
            )
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            held = client.get_experiment_by_name(name)
            if held is None:  # released between the two calls: try again
                continue
            why = _stale(held, now_ms, lease_s)
            if why is None:
                log.info("%s is held by another process", name)
                return False
            log.warning("%s: taking over the claim of %s pid %s (%s)", name,
                        held.tags.get(TAG_CLAIM_HOST), held.tags.get(TAG_CLAIM_PID), why)
            _retire(client, held, "expired")
            continue
        _hide(client, exp_id)
        return True
    return False


def release(client: MlflowClient, key: str) -> None:
    """Give this process's claim on ``key`` back; never raises.

    The claim's name is freed by renaming the claim experiment; the renamed one
    stays (deleted) as a record. A claim held by another process (it took this
    one over) is left alone. A release that fails partway (the store went away)
    leaves a claim that expires with its lease.
    """
    try:
        exp = client.get_experiment_by_name(claim_name(key))
    except Exception as exc:  # the store is unreachable: the claim frees when its lease ends
        log.warning("could not release claim %s (%s); it frees when its lease ends", key, exc)
        return
    if exp is None:
        return
    if (exp.tags.get(TAG_CLAIM_HOST), exp.tags.get(TAG_CLAIM_PID)) != (socket.gethostname(), str(os.getpid())):
        log.warning("%s is now held by %s pid %s: not releasing it", exp.name,
                    exp.tags.get(TAG_CLAIM_HOST), exp.tags.get(TAG_CLAIM_PID))
        return
    _retire(client, exp, "released")


def _stale(exp: Experiment, now_ms: int, lease_s: float) -> str | None:
    """Why a claim may be taken over (lease out, holder dead), or None while it holds.

    The claim's own lease tag wins over this process's setting; a claim from
    before leases existed gets this process's lease, counted from its creation.
    """
    tags = exp.tags
    try:
        since = int(tags.get(TAG_CLAIM_TIME_MS) or exp.creation_time or 0)
        lease = float(tags.get(TAG_CLAIM_LEASE_S) or lease_s)
    except ValueError:
        since, lease = int(exp.creation_time or 0), lease_s
    age_s = (now_ms - since) / 1000
    if age_s >= lease:
        return f"claimed {age_s:.0f} s ago, lease {lease:g} s"
    pid = tags.get(TAG_CLAIM_PID, "")
    if tags.get(TAG_CLAIM_HOST) == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
        return f"process {pid} is gone"
    return None


def _alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (signal 0 checks, sends nothing)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _retire(client: MlflowClient, exp: Experiment, why: str) -> None:
    """Free a claim's name by renaming its experiment (by id) to ``<name>/<why>-<ms>``.

    Three calls (restore, rename, hide); one that fails leaves the claim named,
    and it expires with its lease. Another taker retiring it first is not an error.
    """
    try:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        client.rename_experiment(exp.experiment_id, f"{exp.name}/{why}-{int(time.time() * 1000)}")
    except Exception as exc:  # another process retired it first, or the store failed: the lease stays
        log.info("could not retire claim %s (%s): another process did, or it expires with its lease", exp.name, exc)
        return
    _hide(client, exp.experiment_id)


def _hide(client: MlflowClient, exp_id: str) -> None:
    """Soft-delete a claim experiment: it keeps its name, but leaves the UI's list."""
    try:
        client.delete_experiment(exp_id)
    except MlflowException:  # cosmetic only
        log.debug("could not hide claim experiment %s", exp_id, exc_info=True)
