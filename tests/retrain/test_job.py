"""The retrain job's pieces on real files and real scikit-learn models (no Ray, no MLflow run)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LinearRegression, SGDClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier

from mlflow_finops.policy import RetrainPolicy
from mlflow_finops.retrain.job import CapReached, evaluate, new_data, update, update_path


def _write(path: Path, rows: int, mtime: float) -> None:
    pd.DataFrame({"x": range(rows), "y": [i % 2 for i in range(rows)]}).to_csv(path, index=False)
    os.utime(path, (mtime, mtime))


def test_new_data_lists_data_files_modified_after_since_in_time_order(tmp_path: Path) -> None:
    _write(tmp_path / "b.csv", 2, 1000.0)
    _write(tmp_path / "a.csv", 3, 2000.0)
    _write(tmp_path / "old.csv", 5, 500.0)
    (tmp_path / "notes.txt").write_text("not data")
    os.utime(tmp_path / "notes.txt", (3000.0, 3000.0))
    data, files, newest = new_data(str(tmp_path), 999.0)
    assert [Path(f).name for f in files] == ["b.csv", "a.csv"]  # by time, the .txt left out
    assert len(data) == 5 and newest == 2000.0
    # strictly after: a file modified exactly at `since` was already learned
    assert [Path(f).name for f in new_data(str(tmp_path), 1000.0)[1]] == ["a.csv"]
    assert [Path(f).name for f in new_data(str(tmp_path / "*.csv"), 0.0)[1]] == ["old.csv", "b.csv", "a.csv"]
    empty, none, since = new_data(str(tmp_path), 2000.0)
    assert empty.empty and none == [] and since == 2000.0


@pytest.mark.parametrize(
    "model, strategy, path",
    [
        (make_pipeline(StandardScaler(), SGDClassifier()), "auto", "partial_fit"),
        (RandomForestClassifier(), "auto", "warm_start"),
        (DecisionTreeClassifier(), "auto", "refit"),
        (RandomForestClassifier(), "refit", "refit"),
    ],
)
def test_update_path(model, strategy: str, path: str) -> None:
    assert update_path(model, strategy) == path


def test_update_stops_at_the_cap_and_grows_a_forest_otherwise() -> None:
    rng = np.random.default_rng(0)
    X = pd.DataFrame(rng.normal(size=(200, 3)), columns=["a", "b", "c"])
    y = pd.Series((X["a"] > 0).astype(int))
    champion = RandomForestClassifier(n_estimators=5, random_state=0).fit(X, y)
    rp = RetrainPolicy(warm_start_step=3, warm_start_steps=2)
    grown = update(champion, X, y, "warm_start", rp, threading.Event(), None, "y")
    assert grown.n_estimators == 11 and champion.n_estimators == 5  # the champion is untouched
    stop = threading.Event()
    stop.set()
    with pytest.raises(CapReached):
        update(champion, X, y, "warm_start", rp, stop, None, "y")


def test_evaluate_follows_the_metric_direction_and_the_margin() -> None:
    X = pd.DataFrame({"x": np.arange(20.0)})
    y = pd.Series(2 * X["x"])
    good = LinearRegression().fit(X, y)
    bad = LinearRegression().fit(X, y + 5)
    assert evaluate(bad, good, X, y, RetrainPolicy(metric="rmse")).better  # lower rmse is better
    assert not evaluate(good, bad, X, y, RetrainPolicy(metric="rmse")).better
    assert evaluate(bad, good, X, y, RetrainPolicy(metric="r2")).better
    close = evaluate(bad, good, X, y, RetrainPolicy(metric="rmse", margin=10.0))
    assert close.champion == pytest.approx(5.0) and close.challenger == pytest.approx(0.0, abs=1e-9)
    assert not close.better  # better by 5, not by more than the margin
