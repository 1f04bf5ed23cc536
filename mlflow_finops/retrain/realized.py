"""What a promoted retrain realized on the next labelled window, and its rollback when that was a loss.

A retrain is promoted on the newest held-out rows of the window it was fitted beside: rows of
the same period, which favour whatever fits that period (a fit that forgot a season that comes
back, a fit of a passing state). What it bought shows only later: on the first labelled window
after the promotion the drift gate scores the new champion and the version it replaced on the
same rows, which neither learned (:attr:`~mlflow_finops.drift.results.PerformanceResult.realized`).
That difference is logged on the retrain run (``eval/realized_gain``), is what the retrain
trigger learns its expected gain from, and verifies the promotion forward in time: when the
replaced version scores better by more than the tolerated loss, ``@champion`` goes back to it
(promote, then verify on the next window, then roll back if worse: one prediction of the
replaced version per retrain, where judging every choice forward before promoting would need a
second fit and a window of waiting).

:func:`verify` is pure; :func:`record_realized` writes its verdict in MLflow.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..names import METRIC_REALIZED_GAIN, TAG_ROLLED_BACK
from ..scoring import gain

if TYPE_CHECKING:  # pragma: no cover
    from mlflow import MlflowClient

__all__ = ["Verification", "verify", "record_realized"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verification:
    """A promotion judged on the next labelled window: what it realized and whether to roll it back."""

    realized: float  # metric units, positive = the new champion is better
    rollback: bool
    reason: str


def verify(metric: str, champion: float, replaced: float, tolerated_loss: float, *, champion_version: str = "?",
           replaced_version: str = "?") -> Verification:
    """The realized gain of a promotion, and a rollback when the replaced version beat the champion
    by more than ``tolerated_loss`` on rows neither learned (within it: noise, kept)."""
    realized = gain(metric, champion, replaced)
    scores = (f"{metric} {champion:.4f} (v{champion_version}) vs {replaced:.4f} (v{replaced_version}, "
              f"the version it replaced) on the next labelled window")
    if -realized > tolerated_loss + 1e-12:  # exactly the tolerated loss (in floating point) is kept
        return Verification(realized, True, f"realized {realized * 100:+.1f} pt: {scores}, a loss beyond the "
                                            f"tolerated {tolerated_loss * 100:.1f} pt: rolled back to "
                                            f"v{replaced_version}")
    return Verification(realized, False, f"realized {realized * 100:+.1f} pt: {scores}")


def record_realized(client: "MlflowClient", registered: str, *, metric: str, version: str, score: float,
                    replaced_version: str, replaced: float, retrain_run_id: str,
                    tolerated_loss: float) -> Verification:
    """Log what the retrain ``retrain_run_id`` (which promoted ``version`` over ``replaced_version``)
    realized on its run, from both versions' scores on the next labelled window; roll ``@champion``
    back to the replaced version when :func:`verify` says so (only while ``version`` is still the
    champion)."""
    from mlflow.entities import Metric

    from .registry import CHAMPION

    v = verify(metric, score, replaced, tolerated_loss, champion_version=version, replaced_version=replaced_version)
    client.log_batch(retrain_run_id, metrics=[Metric(METRIC_REALIZED_GAIN, v.realized, int(time.time() * 1000), 0)])
    if v.rollback:
        current = client.get_model_version_by_alias(registered, CHAMPION)
        if str(current.version) == str(version):
            client.set_registered_model_alias(registered, CHAMPION, str(replaced_version))
            client.set_tag(retrain_run_id, TAG_ROLLED_BACK, v.reason[:5000])
            log.warning("%s: %s", registered, v.reason)
    else:
        log.info("%s v%s: %s", registered, version, v.reason)
    return v
