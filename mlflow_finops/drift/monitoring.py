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
from pathlib import Path
from typing import Sequence

from mlflow import MlflowClient
from mlflow.entities import Run, ViewType

from .. import claims
from .._env import env_float
from ..names import (
    ENV_CLAIM_LEASE_S,
    TAG_DECISION,
    TAG_DRIFT_DETECTED,
    TAG_MODEL,
    TAG_WINDOW_KEY,
    TAG_WORKLOAD,
    WORKLOAD_DRIFT_CHECK,
)
from .rules import NO_HISTORY, CheckHistory

log = logging.getLogger(__name__)

DEFAULT_CLAIM_LEASE_S = 3600.0  # a window claim older than this is taken over, its holder presumed hung


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


def claim_lease_s() -> float:
    """How long a window claim holds (``MLFLOW_FINOPS_CLAIM_LEASE_S``, default 1 h): longer than any check."""
    return env_float(ENV_CLAIM_LEASE_S, DEFAULT_CLAIM_LEASE_S)


def claim_window(client: MlflowClient, key: str) -> bool:
    """Claim a data window for this process (see :mod:`mlflow_finops.claims`); True for exactly one claimant."""
    return claims.claim(client, key, claim_lease_s())


def release_window(client: MlflowClient, key: str) -> None:
    """Give this process's claim on a window back (the check failed), so a later run can judge it."""
    claims.release(client, key)
