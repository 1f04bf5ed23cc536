"""A real SQLite MLflow store with autologged runs: two experiments, models and teams, a nested
run and an untracked run (what the cost report tests read)."""

from __future__ import annotations

import time

import mlflow
import pytest
from mlflow.tracking import MlflowClient

import mlflow_finops


def burn(seconds: float) -> None:
    deadline = time.process_time() + seconds
    while time.process_time() < deadline:
        pass


@pytest.fixture
def tracked_store(sqlite_uri: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """Real autologged runs: two experiments, models and teams, a nested run, an untracked run."""
    mlflow_finops.autolog(interval_s=0.05)
    ids: dict[str, object] = {}
    for exp, model, team, accs in (("churn-train", "churn", "growth", (0.70, 0.80)),
                                   ("fraud-train", "fraud", "risk", (0.90,))):
        mlflow.set_experiment(exp)
        monkeypatch.setenv("MLFLOW_FINOPS_MODEL", model)
        monkeypatch.setenv("MLFLOW_FINOPS_TEAM", team)
        for i, acc in enumerate(accs):
            with mlflow.start_run(run_name=f"{model}-{i}") as run:
                burn(0.1 * (i + 1))
                mlflow.log_metric("accuracy", acc)
                if exp == "churn-train" and i == 1:
                    with mlflow.start_run(run_name="child", nested=True) as child:
                        burn(0.05)
                    ids["nested"] = child.info.run_id
            ids[f"{model}-{i}"] = run.info.run_id
    mlflow_finops.autolog(disable=True)
    monkeypatch.setenv("MLFLOW_FINOPS_MODEL", "churn")
    monkeypatch.setenv("MLFLOW_FINOPS_TEAM", "growth")
    mlflow.set_experiment("churn-train")
    with mlflow.start_run(run_name="not-tracked") as run:
        mlflow.log_metric("accuracy", 0.99)
    ids["untracked"] = run.info.run_id
    return ids


def cost_of(run_id: str) -> float:
    return MlflowClient().get_run(run_id).data.metrics["finops/cost_usd"]
