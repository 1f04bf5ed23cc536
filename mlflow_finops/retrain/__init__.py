"""Retraining within budget: requests kept in MLflow (``requests``), the state machine as pure
functions (``state``), opportunistic windows (``windows``), the supervisor of Ray jobs
(``supervisor``), and the job (``job``): its update (``update``, pure scikit-learn) and its
registry writes (``registry``).

Imports the shared modules, :mod:`mlflow_finops.cost` and :mod:`mlflow_finops.spend`
(budgets); never drift/.
"""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "request_retrain": "requests",
    "retrain_experiment_name": "requests",
    "RetrainState": "state",
    "next_step": "state",
    "RetrainSupervisor": "supervisor",
    "RetrainOutcome": "supervisor",
    "jobs_address": "supervisor",
    "register_champion": "registry",
    "window_state": "windows",
    "WindowState": "windows",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
