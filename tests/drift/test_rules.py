"""The drift gate's rules, table-driven: no MLflow, no Evidently, no data frames."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlflow_finops.drift.results import PerformanceResult
from mlflow_finops.drift.rules import (
    NO_HISTORY,
    CheckHistory,
    ColumnScore,
    Verdict,
    apply_correction,
    decide,
    insufficient_data,
    performance_result,
    performance_text,
)
from mlflow_finops.policy import DriftPolicy
from mlflow_finops.stattests import stat_test_kind

HOUR_MS = 3_600_000
NOW_MS = 1_800_000_000_000
COLS = ["a", "b", "c", "d", "e"]


def history(recent: list[bool], retrain_hours_ago: float | None = None) -> CheckHistory:
    if retrain_hours_ago is None:
        return CheckHistory(None, None, recent)
    return CheckHistory("r1", NOW_MS - int(retrain_hours_ago * HOUR_MS), recent)


DEGRADED = PerformanceResult("accuracy", 0.9, 0.8, 0.05, True)
WITHIN = PerformanceResult("accuracy", 0.9, 0.88, 0.05, False)

# (id, policy keys, drifted columns of 5, performance, history, decision, drift_detected, reason)
DECISIONS = [
    ("no-drift", {}, [], None, NO_HISTORY, "no_drift", False,
     "0 of 5 columns drifted (0%, drift_share 50%): no retrain"),
    ("share-below", {}, ["a", "b"], None, NO_HISTORY, "no_drift", False,
     "2 of 5 columns drifted (40%, drift_share 50%): a, b: no retrain"),
    ("share-reached", {"drift_share": 0.4}, ["a", "b"], None, NO_HISTORY, "retrain", True,
     "2 of 5 columns drifted (40%, drift_share 40%): a, b: retrain recommended"),
    ("performance-alone", {}, [], DEGRADED, NO_HISTORY, "retrain", True,
     "0 of 5 columns drifted (0%, drift_share 50%); accuracy -10.0 pt vs the reference (0.9000 -> 0.8000; "
     "beyond the tolerated 5.0 pt): retrain recommended"),
    ("performance-within", {}, [], WITHIN, NO_HISTORY, "no_drift", False,
     "0 of 5 columns drifted (0%, drift_share 50%); accuracy -2.0 pt vs the reference (0.9000 -> 0.8800; "
     "within the tolerated 5.0 pt): no retrain"),
    # drift is not harm: with a measured performance (labels there), "harm" lets the loss decide
    ("harm-drift-without-loss", {}, COLS, WITHIN, NO_HISTORY, "no_drift", False,
     "5 of 5 columns drifted (100%, drift_share 50%): a, b, c, d, e; accuracy -2.0 pt vs the reference "
     "(0.9000 -> 0.8800; within the tolerated 5.0 pt): no retrain"),
    ("either-drift-without-loss", {"retrain_on": "either"}, COLS, WITHIN, NO_HISTORY, "retrain", True,
     "5 of 5 columns drifted (100%, drift_share 50%): a, b, c, d, e; accuracy -2.0 pt vs the reference "
     "(0.9000 -> 0.8800; within the tolerated 5.0 pt): retrain recommended"),
    ("drift-ignores-loss", {"retrain_on": "drift"}, [], DEGRADED, NO_HISTORY, "no_drift", False,
     "0 of 5 columns drifted (0%, drift_share 50%); accuracy -10.0 pt vs the reference (0.9000 -> 0.8000; "
     "beyond the tolerated 5.0 pt): no retrain"),
    ("either-loss-without-drift", {"retrain_on": "either"}, [], DEGRADED, NO_HISTORY, "retrain", True,
     "0 of 5 columns drifted (0%, drift_share 50%); accuracy -10.0 pt vs the reference (0.9000 -> 0.8000; "
     "beyond the tolerated 5.0 pt): retrain recommended"),
    ("no-signal-ignores-history", {"persistence_k": 1, "persistence_n": 3}, [], None,
     history([True, True], retrain_hours_ago=100), "no_drift", False,
     "0 of 5 columns drifted (0%, drift_share 50%): no retrain"),
    # persistence: this check counts as one hit; k of the last n checks are needed
    ("persistence-1-of-2-needed", {"persistence_k": 2, "persistence_n": 3}, COLS, None, history([False, False]),
     "pending", True,
     "5 of 5 columns drifted (100%, drift_share 50%): a, b, c, d, e; drift in 1 of the last 3 checks, "
     "persistence needs 2 of 3: not yet"),
    ("persistence-exactly-k", {"persistence_k": 2, "persistence_n": 3}, COLS, None, history([False, True]),
     "retrain", True,
     "5 of 5 columns drifted (100%, drift_share 50%): a, b, c, d, e; drift in 2 of the last 3 checks: "
     "retrain recommended"),
    ("persistence-k-equals-n", {"persistence_k": 3, "persistence_n": 3}, COLS, None, history([True, True]),
     "retrain", True,
     "5 of 5 columns drifted (100%, drift_share 50%): a, b, c, d, e; drift in 3 of the last 3 checks: "
     "retrain recommended"),
    ("persistence-one-short", {"persistence_k": 3, "persistence_n": 3}, COLS, None, history([True, False]),
     "pending", True,
     "5 of 5 columns drifted (100%, drift_share 50%): a, b, c, d, e; drift in 2 of the last 3 checks, "
     "persistence needs 3 of 3: not yet"),
    ("persistence-short-history", {"persistence_k": 2, "persistence_n": 3}, COLS, None, history([True]),
     "retrain", True,
     "5 of 5 columns drifted (100%, drift_share 50%): a, b, c, d, e; drift in 2 of the last 2 checks: "
     "retrain recommended"),
    ("persistence-older-checks-ignored", {"persistence_k": 2, "persistence_n": 3}, COLS, None,
     history([False, False, True, True]), "pending", True,
     "5 of 5 columns drifted (100%, drift_share 50%): a, b, c, d, e; drift in 1 of the last 3 checks, "
     "persistence needs 2 of 3: not yet"),
    ("persistence-no-history", {"persistence_k": 2, "persistence_n": 3}, COLS, None, NO_HISTORY,
     "pending", True,
     "5 of 5 columns drifted (100%, drift_share 50%): a, b, c, d, e; drift in 1 of the last 1 checks, "
     "persistence needs 2 of 3: not yet"),
    # cooldown: no second trigger until cooldown_hours have passed since the last one
    ("cooldown-inside", {"cooldown_hours": 24}, COLS, None, history([], retrain_hours_ago=2), "cooldown", True,
     "5 of 5 columns drifted (100%, drift_share 50%): a, b, c, d, e; last retrain trigger 2.0 h ago (run r1), "
     "inside the 24 h cooldown: no retrain"),
    ("cooldown-just-inside", {"cooldown_hours": 24}, COLS, None, history([], retrain_hours_ago=23.99),
     "cooldown", True,
     "5 of 5 columns drifted (100%, drift_share 50%): a, b, c, d, e; last retrain trigger 24.0 h ago (run r1), "
     "inside the 24 h cooldown: no retrain"),
    ("cooldown-at-expiry", {"cooldown_hours": 24}, COLS, None, history([], retrain_hours_ago=24), "retrain", True,
     "5 of 5 columns drifted (100%, drift_share 50%): a, b, c, d, e: retrain recommended"),
    ("cooldown-after", {"cooldown_hours": 24}, COLS, None, history([], retrain_hours_ago=25), "retrain", True,
     "5 of 5 columns drifted (100%, drift_share 50%): a, b, c, d, e: retrain recommended"),
    ("cooldown-off", {}, COLS, None, history([], retrain_hours_ago=0.1), "retrain", True,
     "5 of 5 columns drifted (100%, drift_share 50%): a, b, c, d, e: retrain recommended"),
    ("cooldown-never-retrained", {"cooldown_hours": 24}, COLS, None, NO_HISTORY, "retrain", True,
     "5 of 5 columns drifted (100%, drift_share 50%): a, b, c, d, e: retrain recommended"),
    ("performance-inside-cooldown", {"cooldown_hours": 1.5}, [], DEGRADED, history([], retrain_hours_ago=1),
     "cooldown", True,
     "0 of 5 columns drifted (0%, drift_share 50%); accuracy -10.0 pt vs the reference (0.9000 -> 0.8000; "
     "beyond the tolerated 5.0 pt); last retrain trigger 1.0 h ago (run r1), inside the 1.5 h cooldown: no retrain"),
    ("persistence-met-then-cooldown", {"persistence_k": 2, "persistence_n": 2, "cooldown_hours": 6}, ["a", "b", "c"],
     None, history([True], retrain_hours_ago=5), "cooldown", True,
     "3 of 5 columns drifted (60%, drift_share 50%): a, b, c; drift in 2 of the last 2 checks; "
     "last retrain trigger 5.0 h ago (run r1), inside the 6 h cooldown: no retrain"),
]


@pytest.mark.parametrize(
    "keys, drifted, perf, hist, decision, detected, reason",
    [case[1:] for case in DECISIONS],
    ids=[case[0] for case in DECISIONS],
)
def test_decide(keys, drifted, perf, hist, decision, detected, reason) -> None:
    ruling = decide(DriftPolicy(**keys), drifted, 5, perf, hist, NOW_MS)
    assert ruling.decision == decision
    assert ruling.drift_detected is detected
    assert ruling.drift_share == pytest.approx(len(drifted) / 5)
    assert ruling.reason == reason


def test_many_drifted_columns_are_cut_short_in_the_reason() -> None:
    cols = [f"c{i}" for i in range(10)]
    ruling = decide(DriftPolicy(), cols, 10, None, NO_HISTORY, NOW_MS)
    assert ruling.reason == (
        "10 of 10 columns drifted (100%, drift_share 50%): c0, c1, c2, c3, c4, c5, c6, c7 ...: retrain recommended"
    )


@pytest.mark.parametrize("rows, min_rows, expected", [(99, 100, True), (100, 100, False), (5000, 100, False)])
def test_insufficient_data(rows: int, min_rows: int, expected: bool) -> None:
    ruling = insufficient_data(rows, DriftPolicy(min_rows=min_rows))
    assert (ruling is not None) is expected
    if ruling is not None:
        assert ruling.decision == "insufficient_data" and ruling.drift_detected is False and ruling.drift_share == 0
        assert ruling.reason == (
            f"current window has {rows} rows, fewer than min_rows={min_rows}: "
            "not enough data to judge drift, no retrain"
        )


@pytest.mark.parametrize(
    "metric, reference, current, margin, degraded",
    [
        ("accuracy", 0.75, 0.5, 0.125, True),  # lost 0.25
        ("accuracy", 0.75, 0.5, 0.25, False),  # lost exactly the margin: within
        ("accuracy", 0.5, 0.75, 0.0, False),  # improved
        ("rmse", 1.0, 1.5, 0.25, True),  # lower is better: an increase is a loss
        ("rmse", 1.5, 1.0, 0.25, False),
        ("mae", 2.0, 2.25, 0.25, False),
        ("r2", 0.5, 0.25, 0.125, True),
    ],
)
def test_performance_result_follows_the_metric_direction(metric, reference, current, margin, degraded) -> None:
    assert performance_result(metric, reference, current, margin) == PerformanceResult(
        metric, reference, current, margin, degraded
    )


# ------------------------------------------------------------------ multiple testing
def scores(*rows: tuple[str, str, float, float]) -> list[ColumnScore]:
    return [ColumnScore(col, stat_test_kind(method), thr, score) for col, method, thr, score in rows]


ALPHA, M = 0.05, 4

CORRECTIONS = [
    # uncorrected: each test's own comparison, at the boundary score == threshold
    ("none-boundaries", "none",
     scores(("ks", "ks", 0.05, 0.05), ("t", "t_test", 0.05, 0.05), ("w", "wasserstein", 0.1, 0.1),
            ("e", "ed", 0.1, 0.1), ("psi", "psi", 0.1, 0.09)),
     {"ks": (True, None), "t": (False, None), "w": (True, None), "e": (False, None), "psi": (False, None)}),
    # Bonferroni over m = 4 p-value columns: threshold / 4 = 0.0125; distances untouched and not counted
    ("bonferroni", "bonferroni",
     scores(("p1", "ks", ALPHA, 0.001), ("p2", "ks", ALPHA, ALPHA / M), ("p3", "t_test", ALPHA, ALPHA / M),
            ("p4", "ks", ALPHA, 0.04), ("w", "wasserstein", 0.1, 0.2)),
     {"p1": (True, 0.0125), "p2": (True, 0.0125), "p3": (False, 0.0125), "p4": (False, 0.0125),
      "w": (True, None)}),
    ("bonferroni-distances-only", "bonferroni",
     scores(("w", "wasserstein", 0.1, 0.2), ("j", "jensenshannon", 0.1, 0.05)),
     {"w": (True, None), "j": (False, None)}),
    # Benjamini-Hochberg: sorted p 0.01 0.03 0.03 0.2 vs k*0.0125 = 0.0125 0.025 0.0375 0.05:
    # rank 3 passes, so ranks 1-3 are flagged, the tie at rank 2 included though it fails its own rank
    ("bh-step-up-with-ties", "bh",
     scores(("a", "ks", ALPHA, 0.03), ("b", "ks", ALPHA, 0.2), ("c", "ks", ALPHA, 0.01), ("d", "ks", ALPHA, 0.03)),
     {"a": True, "b": False, "c": True, "d": True}),
    # boundary: p_(2) == 2 * alpha / m is flagged (<=), and lifts rank 1 (0.02 > 0.0125) with it
    ("bh-boundary-equal", "bh",
     scores(("a", "ks", ALPHA, 0.02), ("b", "ks", ALPHA, 2 * ALPHA / M), ("c", "ks", ALPHA, 0.3),
            ("d", "ks", ALPHA, 0.4)),
     {"a": (True, 1 * ALPHA / M), "b": (True, 2 * ALPHA / M), "c": (False, 3 * ALPHA / M),
      "d": (False, 4 * ALPHA / M)}),
    ("bh-boundary-just-above", "bh",
     scores(("a", "ks", ALPHA, 0.02), ("b", "ks", ALPHA, 0.0250001), ("c", "ks", ALPHA, 0.3),
            ("d", "ks", ALPHA, 0.4)),
     {"a": False, "b": False, "c": False, "d": False}),
    # BH on a strict test: ranks compare with <=, whatever the test's own operator
    ("bh-strict-test-at-boundary", "bh",
     scores(("a", "t_test", ALPHA, ALPHA / 2), ("b", "t_test", ALPHA, 0.9)),
     {"a": (True, ALPHA / 2), "b": (False, ALPHA)}),
    # distances are never corrected and do not count in m (m = 2 here)
    ("bh-distances-untouched", "bh",
     scores(("w", "wasserstein", 0.1, 0.3), ("j", "jensenshannon", 0.1, 0.05), ("a", "ks", ALPHA, 0.024),
            ("b", "ks", ALPHA, 0.06)),
     {"w": (True, None), "j": (False, None), "a": (True, ALPHA / 2), "b": (False, ALPHA)}),
    # each column's own threshold plays alpha
    ("bh-per-column-thresholds", "bh",
     scores(("a", "ks", 0.1, 0.04), ("b", "ks", 0.01, 0.009)),
     {"a": (True, 2 * 0.1 / 2), "b": (True, 1 * 0.01 / 2)}),
]


@pytest.mark.parametrize("correction, rows, expected", [c[1:] for c in CORRECTIONS], ids=[c[0] for c in CORRECTIONS])
def test_apply_correction(correction, rows, expected) -> None:
    got = apply_correction(rows, correction)
    assert set(got) == set(expected)
    for col, want in expected.items():
        if isinstance(want, bool):
            assert got[col].drifted is want, col
        else:
            assert got[col].drifted is want[0], col
            if want[1] is None:
                assert got[col].corrected_threshold is None, col
            else:
                assert got[col].corrected_threshold == pytest.approx(want[1]), col


def test_bh_ranks_by_score_and_gives_each_rank_its_threshold() -> None:
    got = apply_correction(scores(("x", "ks", ALPHA, 0.3), ("y", "ks", ALPHA, 0.001), ("z", "ks", ALPHA, 0.02)), "bh")
    assert got == {
        "y": Verdict(True, 1 * ALPHA / 3),
        "z": Verdict(True, 2 * ALPHA / 3),
        "x": Verdict(False, 3 * ALPHA / 3),
    }


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=30))
def test_corrections_only_ever_remove_p_value_verdicts(ps: list[float]) -> None:
    """Bonferroni flags a subset of BH, which flags a subset of the uncorrected tests; BH is the
    textbook step-up set (every p at or below the largest p_(k) with p_(k) <= k alpha / m)."""
    rows = scores(*[(f"c{i}", "ks", ALPHA, p) for i, p in enumerate(ps)])
    flagged = {c: {k for k, v in apply_correction(rows, c).items() if v.drifted} for c in ("none", "bonferroni", "bh")}
    assert flagged["bonferroni"] <= flagged["bh"] <= flagged["none"]
    m = len(ps)
    ranked = sorted(ps)
    passing = [ranked[k - 1] for k in range(1, m + 1) if ranked[k - 1] <= k * ALPHA / m]
    assert flagged["bh"] == ({f"c{i}" for i, p in enumerate(ps) if p <= max(passing)} if passing else set())


def test_rules_import_neither_mlflow_nor_evidently_nor_pandas() -> None:
    """The rules are callable where none of them is installed: importing them loads none."""
    code = (
        "import sys, mlflow_finops.drift.rules\n"
        "print(sorted(m for m in ('mlflow', 'evidently', 'pandas', 'ray') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_exactly_eight_drifted_columns_are_all_named() -> None:
    cols = [f"c{i}" for i in range(8)]
    ruling = decide(DriftPolicy(), cols, 8, None, NO_HISTORY, NOW_MS)
    assert ruling.reason.endswith("c5, c6, c7: retrain recommended")


def test_a_cooldown_shorter_than_an_hour_still_holds() -> None:
    ruling = decide(DriftPolicy(cooldown_hours=0.5), COLS, 5, None, history([], retrain_hours_ago=0.25), NOW_MS)
    assert ruling.decision == "cooldown"


def test_no_columns_checked_is_no_share() -> None:
    ruling = decide(DriftPolicy(), [], 0, None, NO_HISTORY, NOW_MS)
    assert (ruling.decision, ruling.drift_share) == ("no_drift", 0.0)


def test_performance_text_since_promotion() -> None:
    perf = PerformanceResult("accuracy", 0.912, 0.909, 0.01, False, baseline="promotion", version="3", rows=500)
    assert performance_text(perf) == (
        "accuracy -0.3 pt since promotion of v3 (0.9120 -> 0.9090; within the tolerated 1.0 pt)"
    )
    rmse = PerformanceResult("rmse", 2.0, 2.5, 0.25, True, baseline="first labelled window", version="1")
    assert performance_text(rmse) == (
        "rmse -0.5 since its first labelled window of v1 (2.0000 -> 2.5000; beyond the tolerated 0.25)"
    )


@pytest.mark.parametrize(
    "metric, promoted, first, expected",
    [
        ("accuracy", 0.80, 0.90, (0.90, "first labelled window")),
        ("accuracy", 0.90, 0.80, (0.90, "promotion")),
        ("accuracy", 0.85, 0.85, (0.85, "promotion")),  # a tie keeps the promotion score
        ("accuracy", None, 0.70, (0.70, "first labelled window")),
        ("rmse", 2.0, 1.0, (1.0, "first labelled window")),  # lower is better
        ("rmse", 1.0, 2.0, (1.0, "promotion")),
    ],
)
def test_the_better_of_promotion_and_first_window_is_the_baseline(metric, promoted, first, expected) -> None:
    from mlflow_finops.drift.gate import better_baseline

    assert better_baseline(metric, promoted, first) == expected
