"""Fixtures and data for the drift gate tests (imported by tests/drift/test_*.py, not a conftest).

MLflow's SQLite store runs its migrations when a database is first opened
(~4 s here), so one migrated database is made per session and each test gets
its own copy: isolated stores at the price of a file copy.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterator

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import ViewType


@pytest.fixture(scope="session")
def _template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    uri = f"sqlite:///{path}"
    MlflowClient(uri).search_experiments()  # creates and migrates the schema
    return path


@pytest.fixture
def drift_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _template_db: Path) -> Iterator[str]:
    """A fresh SQLite MLflow store for this test (URI set in-process and for subprocesses)."""
    db = tmp_path / "mlflow.db"
    shutil.copy(_template_db, db)
    uri = f"sqlite:///{db}"
    monkeypatch.chdir(tmp_path)  # artifacts of new experiments land in ./mlruns under tmp_path
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    previous = mlflow.get_tracking_uri() if "MLFLOW_TRACKING_URI" in os.environ else None
    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(previous)


def frame(
    n: int,
    *,
    seed: int = 0,
    numeric: int = 4,
    shift: float | dict[str, float] = 0.0,
    scale: float | dict[str, float] = 1.0,
    categorical: bool = True,
    levels: tuple[str, ...] = ("a", "b", "c"),
    probs: tuple[float, ...] | None = None,
) -> pd.DataFrame:
    """Numeric columns x0..x{k-1} ~ N(shift, scale) and a categorical 'plan'."""
    rng = np.random.default_rng(seed)
    cols: dict[str, object] = {}
    for i in range(numeric):
        name = f"x{i}"
        mu = shift.get(name, 0.0) if isinstance(shift, dict) else shift
        sd = scale.get(name, 1.0) if isinstance(scale, dict) else scale
        cols[name] = rng.normal(mu, sd, n)
    if categorical:
        cols["plan"] = rng.choice(list(levels), n, p=probs)
    return pd.DataFrame(cols)


def all_runs(uri: str | None = None) -> list:
    """Every run in every experiment of the store (deleted experiments included)."""
    client = MlflowClient(uri) if uri else MlflowClient()
    exps = client.search_experiments(view_type=ViewType.ALL)
    if not exps:
        return []
    return client.search_runs([e.experiment_id for e in exps], run_view_type=ViewType.ALL, max_results=1000)
