"""Time-ordered data as the loop sees it: the cut of any data set, and the synthetic drifting stream."""

from __future__ import annotations

import pandas as pd
import pytest

from mlflow_finops.streams import DRIFT_POINTS, FEATURES, TARGET, cut, synthetic, window


def _frame(rows: int) -> pd.DataFrame:
    return pd.DataFrame({"t": range(rows), "a": range(rows), "id": range(rows), "y": [i % 3 for i in range(rows)]})


def test_cut_keeps_time_order_and_sizes() -> None:
    ref, windows = cut(_frame(100), 40, 15, 3)
    assert list(ref["t"]) == list(range(40))
    assert [list(w["t"]) for w in windows] == [list(range(40, 55)), list(range(55, 70)), list(range(70, 85))]
    assert len(cut(_frame(100), 40, 15)[1]) == 4  # every whole window that fits
    with pytest.raises(ValueError, match="4 whole window"):
        cut(_frame(100), 40, 15, 5)


def test_the_synthetic_stream_is_seeded_and_shifts_at_its_drift_points() -> None:
    ref, windows = synthetic(windows=7, rows=2000, reference_rows=3000)
    assert len(ref) == 3000 and [len(w) for w in windows] == [2000] * 7
    assert list(ref.columns) == [*FEATURES, TARGET]
    pd.testing.assert_frame_equal(windows[0], window(1, 2000))  # the same rows for the same seed
    means = [w["f0"].mean() for w in windows]  # window k is windows[k - 1]
    first, second = DRIFT_POINTS
    assert abs(means[first - 2]) < 0.1 and means[first - 1] > 0.9  # +1 sd at the first drift point
    assert means[second - 1] < -0.4  # back by 1.5 sd at the second
