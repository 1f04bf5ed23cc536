"""Cost tracking's public face: ``autolog()``, ``track_cost()``, :class:`CostTracker` and friends.

Each lives in the module of its job, and is imported from here as it always was:

- :mod:`.run_tracker`: :class:`CostTracker`, one sampler thread per tracked process
  logging ``finops/*`` to one run (and :func:`charge_runs_from` for warm workers);
- :mod:`.autologging`: ``autolog()``, MLflow's ``start_run`` / ``end_run`` patched so every
  run gets a tracker, nested runs their own stretch of it;
- :mod:`.track`: ``track_cost()``, the cost of a block of code;
- :mod:`.live_runs`: the trackers sampling in this process, flushed on SIGTERM and at exit;
- :mod:`.run_page`: the cost line on the run page and the experiment's cost view
  (the timeline chart is :mod:`.timeline`'s).
"""

from __future__ import annotations

from .autologging import active_tracker, autolog
from .run_page import COST_NOTE_PREFIX, cost_note, cost_view_state
from .run_tracker import DEFAULT_INTERVAL_S, CostTracker, CpuMark, charge_runs_from, metrics_setting, resolve_prices
from .track import track_cost

__all__ = ["CostTracker", "CpuMark", "autolog", "track_cost", "active_tracker", "charge_runs_from",
           "resolve_prices", "metrics_setting", "cost_note", "cost_view_state", "COST_NOTE_PREFIX",
           "DEFAULT_INTERVAL_S"]
