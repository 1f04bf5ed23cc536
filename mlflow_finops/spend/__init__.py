"""What was spent, and on what: budget envelopes read from MLflow, reports, charts.

Imports only the shared modules below it.
"""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "budget_status": "budget",
    "BudgetStatus": "budget",
    "build_report": "report",
    "CostReport": "report",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
