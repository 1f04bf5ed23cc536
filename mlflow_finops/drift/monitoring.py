"""MLflow as the drift gate's memory: monitoring experiments, check history, window claims.

Everything the gate needs to remember between checks (the last retrain
trigger, the last n verdicts, which data windows were already judged) is read
back from MLflow runs and experiments, so there is no side database and two
scheduler processes see the same state.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import time
from pathlib import Path
from typing import Sequence

from mlflow import MlflowClient
from mlflow.entities import Run, ViewType
from mlflow.exceptions import MlflowException

from ..names import (
    CLAIMS_PREFIX,
    TAG_CLAIM_HOST,
    TAG_CLAIM_PID,
    TAG_CLAIM_TIME_MS,
    TAG_DECISION,
    TAG_DRIFT_DETECTED,
    TAG_MODEL,
    TAG_WINDOW_KEY,
    TAG_WORKLOAD,
    WORKLOAD_DRIFT_CHECK,
)
from .rules import NO_HISTORY, CheckHistory

log = logging.getLogger(__name__)


def _q(value: str) -> str:
    return value.replace("'", "\\'")


def read_history(client: MlflowClient, experiment_id: str | None, model: str, n: int) -> CheckHistory:
    """The last retrain trigger and the drift verdicts of the last ``n`` usable checks of ``model``."""
    if experiment_id is None:
        return NO_HISTORY
    base = f"tags.`{TAG_MODEL}` = '{_q(model)}' and tags.`{TAG_WORKLOAD}` = '{WORKLOAD_DRIFT_CHECK}'"
    retrains = client.search_runs(
        [experiment_id],
        f"{base} and tags.`{TAG_DECISION}` = 'retrain'",
        ViewType.ACTIVE_ONLY,
        max_results=1,
        order_by=["attributes.start_time DESC"],
    )
    recent: list[bool] = []
    if n > 0:
        runs = client.search_runs(
            [experiment_id],
            f"{base} and tags.`{TAG_DECISION}` != 'insufficient_data'",
            ViewType.ACTIVE_ONLY,
            max_results=n,
            order_by=["attributes.start_time DESC"],
        )
        recent = [
            r.data.tags.get(TAG_DRIFT_DETECTED) == "true"
            for r in runs
            if r.data.tags.get(TAG_DECISION) in {"retrain", "no_drift", "pending", "cooldown"}
        ]
    last = retrains[0] if retrains else None
    return CheckHistory(
        last.info.run_id if last else None, last.info.start_time if last else None, recent
    )


# ------------------------------------------------------------------ windows
def window_key(model: str, files: Sequence[str | os.PathLike[str]]) -> str:
    """Deterministic id of one data window: model + each file's name, size and mtime.

    The same files give the same key in every process, so the key names the
    window across schedulers; a rewritten file (new size or mtime) is a new window.
    """
    h = hashlib.sha256(model.encode())
    for f in sorted(str(p) for p in files):
        st = Path(f).stat()
        h.update(f"\0{os.path.basename(f)}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return f"{model}-{h.hexdigest()[:16]}"


def find_checked_window(client: MlflowClient, experiment_id: str | None, key: str) -> Run | None:
    """A finished check run already logged for this window, if any (failed attempts do not count)."""
    if experiment_id is None:
        return None
    runs = client.search_runs(
        [experiment_id],
        f"tags.`{TAG_WINDOW_KEY}` = '{_q(key)}' and tags.`{TAG_WORKLOAD}` = '{WORKLOAD_DRIFT_CHECK}' "
        "and attributes.status = 'FINISHED'",
        ViewType.ACTIVE_ONLY,
        max_results=1,
    )
    return runs[0] if runs else None


def claim_window(client: MlflowClient, key: str) -> bool:
    """Atomically claim a data window for this process; True for exactly one claimant.

    The claim is the creation of an experiment named ``finops-claims/<key>``.
    Experiment names are unique in every MLflow store (a UNIQUE constraint in
    the SQL stores, RESOURCE_ALREADY_EXISTS over REST), so the database
    decides the single winner. The tempting alternative, "tag a claim run and
    let the earliest-created claim win", is unsound: a run's start time is
    stamped by the client before the insert commits, so a slow claimant can
    commit an *earlier* time after a fast one already read and saw only
    itself, and both would win. The claim experiment is soft-deleted right
    away (it keeps its name, so the claim stays, but leaves the UI's list);
    its tags say who holds it.
    """
    name = f"{CLAIMS_PREFIX}/{key}"
    try:
        exp_id = client.create_experiment(
            name,
            tags={
                TAG_CLAIM_HOST: socket.gethostname(),
                TAG_CLAIM_PID: str(os.getpid()),
                TAG_CLAIM_TIME_MS: str(int(time.time() * 1000)),
            },
        )
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_ALREADY_EXISTS":
            log.info("window %s already claimed by another process", key)
            return False
        raise
    try:
        client.delete_experiment(exp_id)
    except MlflowException:  # pragma: no cover - cosmetic only
        log.debug("could not hide claim experiment %s", name, exc_info=True)
    return True


def release_window(client: MlflowClient, key: str) -> None:
    """Give a claimed window back (the check failed), so a later scheduler run can judge it.

    The claim's name is freed by renaming the claim experiment; the renamed
    one stays (deleted) as a record of the failed attempt.
    """
    exp = client.get_experiment_by_name(f"{CLAIMS_PREFIX}/{key}")
    if exp is None:
        return
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    client.rename_experiment(exp.experiment_id, f"{CLAIMS_PREFIX}/{key}/released-{int(time.time() * 1000)}")
    client.delete_experiment(exp.experiment_id)
