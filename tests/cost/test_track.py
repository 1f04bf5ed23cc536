"""track_cost(): the cost of a block into the active run, a given run or one it starts."""

from __future__ import annotations

import time
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient
from support.cost_tracking import burn, samplers
from support.named_policy import named_policy  # noqa: F401

import mlflow_finops
from mlflow_finops.names import TAG_TEAM, TAG_WORKLOAD


def test_track_cost_starts_and_ends_a_run_when_none_is_active(sqlite_uri: str) -> None:
    with mlflow_finops.track_cost(interval_s=0.2) as tracker:
        burn(0.3)
        run_id = tracker.run_id
        assert tracker.sample_now().cpu_core_hours * 3600 >= 0.28
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["finops/cpu_core_hours"] * 3600 >= 0.28
    assert mlflow.active_run() is None


def test_track_cost_inside_an_autologged_run_reuses_its_tracker(sqlite_uri: str) -> None:
    mlflow_finops.autolog(interval_s=0.2)
    with mlflow.start_run() as run:
        with mlflow_finops.track_cost() as tracker:
            assert tracker.run_id == run.info.run_id
            assert len(samplers()) == 1


def test_track_cost_tags_a_run_it_starts_from_the_named_policy(sqlite_uri: str, named_policy: Path) -> None:
    with mlflow_finops.track_cost(policy=str(named_policy), interval_s=0.2) as tracker:
        time.sleep(0.3)
    tags = MlflowClient().get_run(tracker.run_id).data.tags
    assert tags[TAG_TEAM] == "named-team"
    assert TAG_WORKLOAD not in tags  # nothing from the default file
    assert tracker.prices.cpu_core_hour_usd == 1.0
