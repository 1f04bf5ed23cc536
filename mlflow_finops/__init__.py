"""mlflow-finops: what every MLflow run costs, and retraining that is worth its cost.

Names are imported on first use: MLflow loads this package's run-context plugin
while MLflow itself is being imported, so nothing heavy may load here eagerly.
"""

from __future__ import annotations

from ._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "autolog": "cost.tracker",
    "track_cost": "cost.tracker",
    "CostTracker": "cost.tracker",
    "active_tracker": "cost.tracker",
    "Policy": "policy",
    "PolicyError": "policy",
    "load_policy": "policy",
    "PriceCatalog": "pricing",
    "CostBreakdown": "pricing",
    "DriftGate": "drift.gate",
    "DriftDecision": "drift.gate",
    "run_schedule": "loop",
    "drain": "loop",
    "LoopOutcome": "loop",
    "local_cluster": "ray_cluster",
    "register_champion": "retrain.registry",
    "request_retrain": "retrain.requests",
    "RetrainSupervisor": "retrain.supervisor",
    "RetrainOutcome": "retrain.supervisor",
}

__all__ = ["__version__", *_EXPORTS]


__getattr__, _ = lazy_exports(__name__, _EXPORTS)


def __dir__() -> list[str]:
    return sorted(__all__)
