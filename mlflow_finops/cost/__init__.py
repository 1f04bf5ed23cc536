"""What a run costs: samplers (process tree, GPUs, Ray nodes) behind one thread, priced and
delivered to the MLflow run, and the run-context plugin that tags every new run.

Imports only the shared modules below it (names, policy, pricing, store, ...).
"""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "autolog": "tracker",
    "track_cost": "tracker",
    "CostTracker": "tracker",
    "active_tracker": "tracker",
    "sync_spool": "delivery",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
