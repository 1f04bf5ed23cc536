"""Whether new data drifted: the gate (Evidently judges each column, rules decide), its
history and window claims in MLflow, and the cron schedule of checks.

:mod:`.gate` orchestrates one check: :mod:`.profile` fits the reference once,
:mod:`.sampling` plans what Evidently sees, :mod:`.evidently_judge` (the only
module that imports Evidently) scores it, :mod:`.rules` (pure) decides, and
:mod:`.record` logs the check to MLflow; :mod:`.monitoring` reads earlier checks
back and claims windows; :mod:`.schedule` runs checks on cron.

Imports the shared modules and :mod:`mlflow_finops.cost` (a check's own cost); never retrain/.
"""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "DriftGate": "gate",
    "DriftDecision": "gate",
    "ColumnDrift": "gate",
    "PerformanceResult": "gate",
    "DriftInputError": "gate",
    "read_frame": "gate",
    "CheckOutcome": "schedule",
    "run_scheduled_check": "schedule",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
