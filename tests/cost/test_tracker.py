"""mlflow_finops.cost.tracker is the public face of cost tracking: every name is still imported from it."""

from __future__ import annotations

import mlflow_finops
import mlflow_finops.cost as cost
from mlflow_finops.cost import autologging, run_page, run_tracker, track, tracker


def test_the_public_names_are_the_modules_own_objects() -> None:
    assert tracker.autolog is autologging.autolog is mlflow_finops.autolog is cost.autolog
    assert tracker.active_tracker is autologging.active_tracker is mlflow_finops.active_tracker
    assert tracker.track_cost is track.track_cost is mlflow_finops.track_cost is cost.track_cost
    assert tracker.CostTracker is run_tracker.CostTracker is mlflow_finops.CostTracker
    assert tracker.charge_runs_from is run_tracker.charge_runs_from
    assert tracker.CpuMark is run_tracker.CpuMark
    assert tracker.cost_note is run_page.cost_note
    assert set(tracker.__all__) <= set(dir(tracker))
