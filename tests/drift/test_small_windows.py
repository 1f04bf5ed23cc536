"""Small real windows are judged: the default min_rows (30) fits scikit-learn's bundled real data sets."""

from __future__ import annotations

import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer, load_digits, load_wine

from mlflow_finops.drift import DriftGate
from mlflow_finops.policy import DriftPolicy


def _split(loader, reference_classes, current_classes) -> tuple[pd.DataFrame, pd.DataFrame]:
    data = loader(as_frame=True)
    X, y = data.data, data.target
    X = X.loc[:, X.std() > 0]  # digits has always-blank pixels: nothing to judge there
    return X[y.isin(reference_classes)], X[y.isin(current_classes)]


@pytest.mark.parametrize("name, loader, ref_classes, cur_classes", [
    ("breast cancer benign vs malignant", load_breast_cancer, [1], [0]),
    ("wine class 0 vs 2", load_wine, [0], [2]),
    ("digits 0-4 vs 5-9", load_digits, [0, 1, 2, 3, 4], [5, 6, 7, 8, 9]),
])
def test_obvious_drift_in_a_small_real_window_is_a_retrain(name, loader, ref_classes, cur_classes) -> None:
    ref, cur = _split(loader, ref_classes, cur_classes)
    assert len(cur) < 1000  # below the old default min_rows
    decision = DriftGate(ref, model="small", log_to_mlflow=False).check(cur)
    assert decision.decision == "retrain", decision.reason
    assert decision.drift_share >= DriftPolicy().drift_share


def test_same_population_small_window_is_no_drift() -> None:
    data = load_wine(as_frame=True)
    X = data.data[data.target == 1]  # 71 rows of one class, split in two halves
    decision = DriftGate(X.iloc[::2], model="small", log_to_mlflow=False).check(X.iloc[1::2])
    assert decision.decision == "no_drift", decision.reason


def test_below_min_rows_is_insufficient_data_and_says_so() -> None:
    ref, cur = _split(load_wine, [0], [2])
    decision = DriftGate(ref, model="small", log_to_mlflow=False).check(cur.iloc[:29])
    assert decision.decision == "insufficient_data"
    assert decision.reason.startswith("current window has 29 rows, fewer than min_rows=30")
