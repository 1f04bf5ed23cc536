"""How a run's cost shows where people look in MLflow's UI: a line at the top of the run page and
the experiment's saved runs-table view with the cost beside the run's own metrics.

The cost timeline chart (an artifact of long runs) is drawn by :mod:`.timeline`.
"""

from __future__ import annotations

import json
import logging

from ..money import format_usd
from ..names import COST_VIEW_KEY, METRIC_PREFIX, TAG_COST, TAG_NOTE, TAG_SHARED_VIEW_PREFIX
from ..pricing import CostBreakdown

_log = logging.getLogger(__name__)

__all__ = ["COST_NOTE_PREFIX", "cost_note", "cost_view_state", "publish_cost_view"]

COST_NOTE_PREFIX = "**Cost (mlflow-finops):**"  # our line in the run's description, replaced on resume


def cost_note(description: str, line: str) -> str:
    """``description`` with our cost line replaced, or appended below the user's own text."""
    kept = [x for x in description.splitlines() if not x.startswith(COST_NOTE_PREFIX)]
    text = "\n".join(kept).rstrip()
    return f"{text}\n\n{line}" if text else line


def cost_view_state(columns: list[str]) -> str:
    """The runs-table view MLflow's UI loads from an experiment tag: the cost tag beside the metrics."""
    # The cost wide enough for "$0.0000017" (MLflow's 100 px default clips it); the UI applies
    # a width only to a column named in columnOrder.
    cost = f"tags.`{TAG_COST}`"
    return json.dumps({"selectedColumns": ["attributes.`Source`", *columns], "columnOrder": columns,
                       "columnWidths": {cost: 150}})


def publish_cost_view(tracking_uri: str, run_id: str, final: CostBreakdown) -> None:
    """Put the cost where people look in MLflow's UI: a line in the run's description (top of
    the run page, the user's own text kept) linking to the experiment's saved runs-table view
    with the cost tag beside the run's own metrics. Four requests at run end; never raises."""
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri)
        run = client.get_run(run_id)
        exp_id = run.info.experiment_id
        view_tag = TAG_SHARED_VIEW_PREFIX + COST_VIEW_KEY
        old = client.get_experiment(exp_id).tags.get(view_tag)
        columns = json.loads(old)["selectedColumns"][1:] if old else [f"tags.`{TAG_COST}`"]
        for key in sorted(run.data.metrics):
            if not key.startswith(METRIC_PREFIX) and f"metrics.`{key}`" not in columns:
                columns.append(f"metrics.`{key}`")
        state = cost_view_state(columns)
        if state != old:
            client.set_experiment_tag(exp_id, view_tag, state)
        line = (f"{COST_NOTE_PREFIX} {format_usd(final.cost_usd)} ({final.allocation_mode}; idle "
                f"{format_usd(final.idle_cost_usd)}) · "
                f"[compare runs by cost](#/experiments/{exp_id}/runs?viewStateShareKey={COST_VIEW_KEY})")
        client.set_tag(run_id, TAG_NOTE, cost_note(run.data.tags.get(TAG_NOTE, ""), line))
    except Exception as exc:  # the figures are logged; this is presentation only
        _log.debug("mlflow-finops: cost line / runs view not written for %s: %s", run_id, exc)
