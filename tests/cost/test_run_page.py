"""The cost as a person reads it in MLflow's UI: the finops.cost tag, the description's cost line,
the saved runs-table view, and MLFLOW_FINOPS_METRICS (the browser checks are in tests/test_browser.py)."""

from __future__ import annotations

import json

import mlflow
import pytest
from mlflow.tracking import MlflowClient

import mlflow_finops
from mlflow_finops.cost.run_page import COST_NOTE_PREFIX, cost_note
from mlflow_finops.cost.run_tracker import metrics_setting
from mlflow_finops.money import format_usd
from mlflow_finops.names import COST_VIEW_KEY, TAG_COST, TAG_NOTE, TAG_SHARED_VIEW_PREFIX


def test_cost_note_keeps_the_users_text_and_replaces_only_its_own_line() -> None:
    line = f"{COST_NOTE_PREFIX} $1.00"
    assert cost_note("", line) == line
    assert cost_note("Mine\n\nmore", line) == f"Mine\n\nmore\n\n{line}"
    again = cost_note(cost_note("Mine", line), f"{COST_NOTE_PREFIX} $2.00")
    assert again == f"Mine\n\n{COST_NOTE_PREFIX} $2.00"


def test_run_gets_cost_tag_description_line_and_the_experiments_cost_view(sqlite_uri: str) -> None:
    client = MlflowClient()
    exp_id = mlflow.set_experiment("shown").experiment_id
    with mlflow.start_run(description="Baseline") as run, mlflow_finops.track_cost(interval_s=0.05):
        mlflow.log_metric("accuracy", 0.9)
    data = client.get_run(run.info.run_id).data
    assert data.tags[TAG_COST] == format_usd(data.metrics["finops/cost_usd"]) and data.tags[TAG_COST][0] == "$"
    note = data.tags[TAG_NOTE]
    assert note.startswith("Baseline\n\n") and f"{COST_NOTE_PREFIX} {data.tags[TAG_COST]}" in note
    assert f"#/experiments/{exp_id}/runs?viewStateShareKey={COST_VIEW_KEY}" in note
    view = json.loads(client.get_experiment(exp_id).tags[TAG_SHARED_VIEW_PREFIX + COST_VIEW_KEY])
    assert view["columnOrder"] == [f"tags.`{TAG_COST}`", "metrics.`accuracy`"]
    assert set(view["columnOrder"]) <= set(view["selectedColumns"])
    # a filter on the metric still finds it
    assert client.search_runs([exp_id], 'metrics."finops/cost_usd" >= 0')[0].info.run_id == run.info.run_id


def test_core_metrics_setting(sqlite_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert metrics_setting() == "all"
    monkeypatch.setenv("MLFLOW_FINOPS_METRICS", "core")
    with mlflow_finops.track_cost(interval_s=0.05) as tracker:
        pass
    metrics = MlflowClient().get_run(tracker.run_id).data.metrics
    assert {"finops/cost_usd", "finops/usage_cost_usd", "finops/allocation_cost_usd"} <= set(metrics)
    assert "finops/ram_gb_hours" not in metrics and "finops/cpu_efficiency" not in metrics
    monkeypatch.setenv("MLFLOW_FINOPS_METRICS", "some")
    with pytest.raises(ValueError, match="MLFLOW_FINOPS_METRICS"):
        metrics_setting()
