"""One way to score a model, for the drift gate's performance signal and for promotion.

Both must agree on what "better" means, so the metric functions and their
direction live here once. F1 is macro-averaged for every label set (defined
for string labels and any number of classes, and the same number whichever
class is called positive).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["METRICS", "HIGHER_IS_BETTER", "score", "gain"]

# metric -> whether a larger value is better
HIGHER_IS_BETTER: dict[str, bool] = {
    "accuracy": True,
    "f1": True,
    "roc_auc": True,
    "r2": True,
    "rmse": False,
    "mae": False,
}
METRICS = tuple(HIGHER_IS_BETTER)


def gain(metric: str, new: float, old: float) -> float:
    """How much ``new`` improves on ``old`` (positive = better), whatever the metric's direction."""
    return (new - old) if HIGHER_IS_BETTER[metric] else (old - new)


def score(model: Any, X: Any, y: Any, metric: str) -> float:
    """``metric`` of ``model`` on features ``X`` and labels ``y`` (rows with a missing label dropped)."""
    from sklearn import metrics as skm

    if metric not in HIGHER_IS_BETTER:
        raise ValueError(f"unknown metric {metric!r} (expected one of {', '.join(METRICS)})")
    y = np.asarray(y)
    keep = ~_isna(y)
    if not keep.all():
        X, y = X[keep], y[keep]
    if metric == "roc_auc" and hasattr(model, "predict_proba"):
        proba = np.asarray(model.predict_proba(X))
        if proba.ndim == 2 and proba.shape[1] == 2:
            return float(skm.roc_auc_score(y, proba[:, 1]))
        return float(skm.roc_auc_score(y, proba, multi_class="ovr"))
    pred = np.asarray(model.predict(X))
    if pred.ndim == 2 and pred.shape[1] == 1:
        pred = pred[:, 0]
    if metric == "accuracy":
        return float(skm.accuracy_score(y, pred))
    if metric == "f1":
        return float(skm.f1_score(y, pred, average="macro"))
    if metric == "roc_auc":
        return float(skm.roc_auc_score(y, pred))
    if metric == "rmse":
        return float(np.sqrt(skm.mean_squared_error(y, pred)))
    if metric == "mae":
        return float(skm.mean_absolute_error(y, pred))
    return float(skm.r2_score(y, pred))


def _isna(y: np.ndarray) -> np.ndarray:
    import pandas as pd

    return np.asarray(pd.isna(y), dtype=bool)
