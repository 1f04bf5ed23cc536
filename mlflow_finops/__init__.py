"""mlflow-finops: what every MLflow run costs, and retraining that is worth its cost."""

from __future__ import annotations

__version__ = "0.1.0"

from .policy import Policy, PolicyError, load_policy  # noqa: E402
from .pricing import CostBreakdown, PriceCatalog  # noqa: E402
from .tracker import CostTracker, active_tracker, autolog, track_cost  # noqa: E402
from .drift import DriftDecision, DriftGate  # noqa: E402

__all__ = [
    "__version__",
    "autolog",
    "track_cost",
    "CostTracker",
    "active_tracker",
    "Policy",
    "PolicyError",
    "load_policy",
    "PriceCatalog",
    "CostBreakdown",
    "DriftGate",
    "DriftDecision",
]
