"""The stat-test table (mlflow_finops.stattests) against Evidently's own drift verdicts.

Evidently 0.7 reports only a score per column, so the gate derives each verdict
with the table's comparison. Here every entry runs through Evidently's own
stat test on two small frames, with the threshold set at the score itself
(where ``<`` and ``<=`` part) and at twice it (the direction), and the table
must say what Evidently says.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlflow_finops.stattests import STAT_TESTS

evidently_registry = pytest.importorskip("evidently.legacy.calculations.stattests.registry")
from evidently.legacy.core import ColumnType  # noqa: E402

N = 300


def _frames(ctype: ColumnType, binary: bool) -> tuple[pd.Series, pd.Series]:
    """Moderately different samples: p-values and distances well inside (0, 1)."""
    rng = np.random.default_rng(7)
    if ctype == ColumnType.Numerical:
        return pd.Series(rng.normal(0, 1, N)), pd.Series(rng.normal(0.2, 1.1, N))
    levels = ["a", "b"] if binary else ["a", "b", "c"]
    ref_p, cur_p = ([0.5, 0.5], [0.4, 0.6]) if binary else ([0.4, 0.3, 0.3], [0.33, 0.3, 0.37])
    return pd.Series(rng.choice(levels, N, p=ref_p)), pd.Series(rng.choice(levels, N, p=cur_p))


def _cases() -> list[tuple[str, ColumnType]]:
    out = []
    for name in STAT_TESTS:
        for ctype in (ColumnType.Numerical, ColumnType.Categorical):
            try:
                evidently_registry.get_registered_stattest(name, ctype)
            except ValueError:
                continue
            out.append((name, ctype))
    return out


def test_the_table_covers_every_non_text_test_evidently_registers() -> None:
    registered = {
        name for name, by_type in evidently_registry._registered_stat_tests.items()
        if set(by_type) != {ColumnType.Text}
    }
    assert registered == set(STAT_TESTS)
    assert {name for name, _ in _cases()} == set(STAT_TESTS)  # each one runs below


@pytest.mark.parametrize("name, ctype", _cases(), ids=lambda v: getattr(v, "value", v))
def test_table_verdict_equals_evidentlys(name: str, ctype: ColumnType) -> None:
    kind = STAT_TESTS[name]
    test = evidently_registry.get_registered_stattest(name, ctype)
    ref, cur = _frames(ctype, binary=name in ("z", "fisher_exact"))

    def run(threshold: float | None):
        state = np.random.get_state()
        np.random.seed(0)  # empirical_mmd permutes with numpy's global generator: the same score each run
        try:
            return test(ref, cur, ctype, threshold)
        finally:
            np.random.set_state(state)

    first = run(None)  # Evidently's default threshold
    score = first.drift_score
    assert kind.verdict(score, first.actual_threshold) == bool(first.drifted), (name, first)
    assert 0 < score < 1 or not kind.p_value, (name, score)  # a p-value away from the edges
    assert score > 0, (name, score)
    # at the score itself <, <=, >= and > part two ways; at twice the score, the direction shows:
    # (at, twice) is (F, T) for <, (T, T) for <=, (T, F) for >=, (F, F) for >
    for threshold in (score, 2 * score):
        result = run(threshold)
        assert result.drift_score == score  # the threshold does not change the score
        assert kind.verdict(score, threshold) == bool(result.drifted), (name, threshold, result)
    assert bool(result.drifted) is kind.p_value  # a p-value drifts below its threshold, a distance above it
