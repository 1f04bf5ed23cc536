"""Data in time order as the loop sees it: a reference, then windows that arrive one by one.

:func:`cut` cuts any time-ordered data set so (what a user does with their own data to try the
loop, and what the headline benchmark does with every stream). :func:`synthetic` is a drifting
stream with known drift points, for the demo and controlled benchmarks.

The synthetic stream: ten numeric features; the label is a linear rule of them. Windows 0-2 come
from the training distribution. **Drift point 1, window 3**: four features
shift by +1 sd and the decision boundary moves with them. **Drift point 2,
window 6**: the same four shift back by -1.5 sd and the boundary tilts.
Between drift points the distribution is stationary.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["cut", "synthetic", "window", "DRIFT_POINTS", "FEATURES", "TARGET"]

FEATURES = [f"f{i}" for i in range(10)]
DRIFT_POINTS = (3, 6)
TARGET = "churned"


def regime(window: int) -> tuple[np.ndarray, np.ndarray, float]:
    """(feature means, boundary weights, offset) in force at ``window``."""
    mean = np.zeros(10)
    w = np.array([1.0, 0.8, -0.6, 0.5, 0.3, 0.0, 0.0, 0.2, -0.2, 0.0])
    offset = 0.0
    if window >= DRIFT_POINTS[0]:
        mean[:4] += 1.0
        offset = -w[:4].sum() + 0.6
        w = w + np.array([0.0, 0.0, 0.8, -0.4, 0, 0, 0, 0, 0, 0])
    if window >= DRIFT_POINTS[1]:
        mean[:4] -= 1.5
        w = w + np.array([-0.6, 0.6, 0.0, 0.4, 0, 0, 0, 0, 0, 0])
        offset = 0.3
    return mean, w, offset


def window(index: int, rows: int = 20_000, seed: int = 0) -> pd.DataFrame:
    """Rows of window ``index`` (deterministic for a seed)."""
    rng = np.random.default_rng(seed * 1000 + index)
    mean, w, offset = regime(index)
    X = rng.normal(loc=mean, size=(rows, 10))
    noise = rng.normal(scale=0.3, size=rows)
    y = (X @ w + offset + noise > 0).astype(int)
    return pd.DataFrame(X, columns=FEATURES).assign(**{TARGET: y})


def synthetic(windows: int = 8, rows: int = 20_000, reference_rows: int = 20_000, seed: int = 0
              ) -> tuple[pd.DataFrame, list[pd.DataFrame]]:
    """This stream as (reference = window 0, windows 1..``windows``)."""
    return window(0, reference_rows, seed), [window(w, rows, seed) for w in range(1, windows + 1)]


def cut(data: pd.DataFrame, reference_rows: int, window_rows: int, windows: int | None = None
        ) -> tuple[pd.DataFrame, list[pd.DataFrame]]:
    """Any data set in time order as (reference, windows): the first ``reference_rows`` rows, then
    consecutive windows of ``window_rows`` (as many whole ones as fit, or the first ``windows``)."""
    fit = (len(data) - reference_rows) // window_rows
    if windows is None:
        windows = fit
    if reference_rows < 1 or window_rows < 1 or windows < 1 or windows > fit:
        raise ValueError(f"{len(data):,} rows hold a {reference_rows:,}-row reference and {max(fit, 0)} whole "
                         f"window(s) of {window_rows:,} rows; asked for {windows}")
    ref = data.iloc[:reference_rows].reset_index(drop=True)
    starts = range(reference_rows, reference_rows + windows * window_rows, window_rows)
    return ref, [data.iloc[s : s + window_rows].reset_index(drop=True) for s in starts]
