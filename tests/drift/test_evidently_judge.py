"""The gate scores columns with Evidently's own stat tests without rendering its report: the scores must
be exactly the ones Evidently's ValueDrift Report gives on the same data, for every kind of column."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest

from mlflow_finops.drift.evidently_judge import run_report, score_columns


@dataclass(frozen=True)
class Spec:
    column: str
    type: str
    method: str
    threshold: float
    by_name: bool = True


def _frames(n_ref: int, n_cur: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)

    def one(n: int, shift: float) -> pd.DataFrame:
        df = pd.DataFrame({
            "num": rng.normal(shift, 1, n),
            "few": rng.integers(0, 3, n).astype(float),  # a numerical column with 3 values
            "cat": rng.choice(["a", "b", "c", "d"], n, p=[0.4, 0.3, 0.2 - shift / 10, 0.1 + shift / 10]),
            "bin": rng.choice(["yes", "no"], n),
        })
        df.loc[df.sample(frac=0.05, random_state=seed).index, "num"] = np.nan
        df.loc[df.index[:3], "num"] = np.inf  # Evidently drops ±inf and NaN before testing
        return df

    return one(n_ref, 0.0), one(n_cur, 0.5)


@pytest.mark.parametrize("n_ref, n_cur", [(300, 200), (3000, 2000)])  # small: p-value tests; large: distances
@pytest.mark.parametrize("chosen", [False, True])
def test_scores_equal_evidentlys_report(n_ref: int, n_cur: int, chosen: bool) -> None:
    ref, cur = _frames(n_ref, n_cur, seed=n_ref)
    if chosen:
        specs = [Spec("num", "numerical", "psi", 0.1), Spec("few", "numerical", "wasserstein", 0.1),
                 Spec("cat", "categorical", "jensenshannon", 0.1), Spec("bin", "categorical", "chisquare", 0.05)]
    else:  # Evidently picks the method (by_name False), at its default thresholds
        specs = [Spec("num", "numerical", "", 0.1 if n_ref > 1000 else 0.05, by_name=False),
                 Spec("few", "numerical", "", 0.1 if n_ref > 1000 else 0.05, by_name=False),
                 Spec("cat", "categorical", "", 0.1 if n_ref > 1000 else 0.05, by_name=False),
                 Spec("bin", "categorical", "", 0.1 if n_ref > 1000 else 0.05, by_name=False)]
    expected, snapshot = run_report(ref, cur, specs)
    got = score_columns(ref, cur, specs)
    assert got.keys() == expected.keys() == {"num", "few", "cat", "bin"}
    for column, score in expected.items():
        assert got[column] == pytest.approx(score, rel=1e-12, abs=1e-15), column
    assert snapshot is not None


_SERIES = {
    "float": pd.Series([0.5, 1.5, np.nan, 2.0]),
    "int few": pd.Series(list(range(10)) * 3),
    "int many": pd.Series(range(11)),
    "int32 few": pd.Series([1, 2, 3], dtype="int32"),
    "string categorical": pd.Series(["a", "b", "a", "b", None], dtype="string"),
    "string text": pd.Series(["w1", "w2", "w3", "w4"], dtype="string"),
    "object categorical": pd.Series(["a", "b", "a", "a", None]),
    "object text": pd.Series(["x", "y", "z"]),
    "object empty": pd.Series([None, None], dtype="object"),
    "object lists": pd.Series([[1], [2, 3]]),
    "object mixed": pd.Series([1, "a"]),
    "bool": pd.Series([True, False, True]),
    "category": pd.Series(["a", "b"], dtype="category"),
    "datetime": pd.Series(pd.to_datetime(["2026-01-01", "2026-01-02"])),
    "timedelta": pd.Series(pd.to_timedelta([1, 2], unit="s")),
}


@pytest.mark.parametrize("name", list(_SERIES))
def test_column_types_equal_evidentlys_inference(name: str) -> None:
    from evidently.core.datasets import infer_column_type

    from mlflow_finops.drift.evidently_judge import infer_type

    expected = infer_column_type(_SERIES[name]).value
    assert infer_type(_SERIES[name]) == {"num": "numerical", "cat": "categorical"}.get(expected, expected)


def test_a_check_loads_evidentlys_stat_tests_without_the_whole_package(tmp_path) -> None:
    """A fresh process: the check imports Evidently's stat tests only; `from evidently import Report`
    afterwards still gets the whole package."""
    import subprocess
    import sys

    code = (
        "import sys, pandas as pd, numpy as np\n"
        "from mlflow_finops.drift import DriftGate\n"
        "rng = np.random.default_rng(0)\n"
        "ref = pd.DataFrame({'a': rng.normal(0, 1, 500), 'b': rng.choice(['x', 'y'], 500)})\n"
        "cur = pd.DataFrame({'a': rng.normal(1, 1, 500), 'b': rng.choice(['x', 'y'], 500)})\n"
        "d = DriftGate(ref, model='m', log_to_mlflow=False).check(cur)\n"
        "print(d.decision, 'evidently.legacy.metrics' in sys.modules, 'evidently.ui' in sys.modules)\n"
        "from evidently import Report\n"
        "import evidently\n"
        "print(Report.__name__, hasattr(evidently, 'Dataset'), 'evidently.legacy.metrics' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["retrain", "False", "False", "Report", "True", "True"]
