"""A fresh SQLite MLflow store per test at the price of a file copy (imported by tests, not a conftest).

MLflow migrates a new SQLite database when it is first opened (seconds). The
migrated empty database is kept once per user and MLflow version under the
temp dir, so that every pytest process (``make mutation`` starts one per
mutant) copies it instead of migrating again.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import mlflow
import pytest
from mlflow.tracking import MlflowClient


def template_db() -> Path:
    """The migrated empty database, made on first use (atomically: concurrent makers are harmless)."""
    folder = Path(tempfile.gettempdir()) / f"mlflow-finops-tests-{os.geteuid()}"
    path = folder / f"empty-mlflow-{mlflow.__version__}.db"
    if not path.exists():
        folder.mkdir(mode=0o700, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(dir=folder)) / "mlflow.db"
        MlflowClient(f"sqlite:///{scratch}").search_experiments()  # creates and migrates the schema
        scratch.replace(path)
        shutil.rmtree(scratch.parent, ignore_errors=True)
    return path


@pytest.fixture
def copied_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh SQLite tracking store, set as the tracking URI for this test (like ``sqlite_uri``)."""
    db = tmp_path / "mlflow.db"
    shutil.copy(template_db(), db)
    uri = f"sqlite:///{db}"
    monkeypatch.chdir(tmp_path)  # artifacts of new experiments land under tmp_path
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(None)
