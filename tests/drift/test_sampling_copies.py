"""A sample copies only the cells it is asked for: a check's peak memory on a big frame is its copies.

Measured with tracemalloc (numpy reports its buffers to it), which counts
allocations, not resident memory: the same bytes on every run.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pandas as pd

from mlflow_finops.drift.sampling import sample


def _wide(rows: int, cols: int) -> pd.DataFrame:
    """One float block, as a frame built from one array is: rows of it are contiguous across columns."""
    arr = np.random.default_rng(0).standard_normal((rows, cols))
    return pd.DataFrame(arr, columns=[f"x{i}" for i in range(cols)], copy=False)


def _peak_allocated(fn) -> tuple[object, int]:
    tracemalloc.start()
    try:
        out = fn()
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_sample_of_a_few_columns_does_not_copy_the_other_columns_of_its_rows() -> None:
    df = _wide(200_000, 40)
    rows_all_columns = 100_000 * 40 * 8  # 32 MB: what taking the rows first, then the column, copies
    out, peak = _peak_allocated(lambda: sample(df, 100_000, ["x3"], seed=1))
    assert out.shape == (100_000, 1)
    assert peak < rows_all_columns / 4, f"{peak / 2**20:.1f} MB allocated for one column of 100,000 rows"


def test_all_rows_are_the_columns_own_arrays_not_copies() -> None:
    df = _wide(10_000, 5)
    out = sample(df, len(df), ["x3", "x1"], seed=1)
    assert list(out.columns) == ["x3", "x1"]
    for c in out.columns:
        assert np.shares_memory(out[c].to_numpy(), df[c].to_numpy())


def test_the_sample_is_the_seeded_rows_in_order_with_their_index_and_dtypes() -> None:
    """The rows a seed draws are part of a check's record: a change of layout must not change them."""
    n = 1_000
    rng = np.random.default_rng(3)
    df = pd.DataFrame({
        "f": rng.standard_normal(n),
        "i": rng.integers(0, 5, n),
        "s": rng.choice(["x", "y", None], n),
        "cat": pd.Categorical(rng.choice(["p", "q"], n)),
        "I": pd.array(rng.integers(0, 3, n), dtype="Int64"),
        "t": pd.date_range("2026-01-01", periods=n, freq="h"),
    }, index=np.repeat(np.arange(n // 2), 2))  # duplicate labels are kept as they are
    cols = ["s", "f", "cat", "I", "t"]
    out = sample(df, 300, cols, seed=7)
    idx = np.sort(np.random.default_rng(7).choice(n, size=300, replace=False))
    pd.testing.assert_frame_equal(out, df.iloc[idx][cols])
