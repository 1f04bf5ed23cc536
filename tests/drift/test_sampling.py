"""The sample-size rule on its own: which rows each column's test sees, the error band, the refinement.

Real Evidently scores the samples (``score_columns``, no report); frames are small, so the
rule's arithmetic is what is checked, not the statistics (tests/drift/test_gate.py checks
that sampled verdicts match full-data ones on 120,000 rows).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from mlflow_finops.drift.evidently_judge import score_columns
from mlflow_finops.drift.profile import ReferenceProfile
from mlflow_finops.drift.sampling import (
    REFINE_FACTOR,
    ColumnPlan,
    error_band,
    j_integral,
    measure,
    plan_columns,
    policy_choice,
    sample,
)
from mlflow_finops.policy import ColumnDriftPolicy, DriftPolicy
from mlflow_finops.stattests import stat_test_kind


def _frame(n: int, seed: int, shift: float = 0.0, near: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "far": rng.normal(shift, 1.0, n),
        "near": rng.normal(near, 1.0, n),
        "cat": rng.choice(["a", "b", "c"], n),
        "few": rng.integers(0, 3, n).astype(float),
        "grade": rng.choice(["x", "y"], n),
    })


@pytest.mark.parametrize(
    "policy, column, ctype, expected",
    [
        (DriftPolicy(), "x", "numerical", (None, None)),
        (DriftPolicy(method="psi", threshold=0.2), "x", "categorical", ("psi", 0.2)),
        (DriftPolicy(method="psi", threshold=0.2, num_method="ks", num_threshold=0.01), "x", "numerical",
         ("ks", 0.01)),
        (DriftPolicy(method="psi", threshold=0.2, num_method="ks", num_threshold=0.01), "x", "categorical",
         ("psi", 0.2)),
        (DriftPolicy(cat_method="jensenshannon", cat_threshold=0.3), "x", "categorical", ("jensenshannon", 0.3)),
        (DriftPolicy(cat_method="jensenshannon", cat_threshold=0.3), "x", "numerical", (None, None)),
        (DriftPolicy(num_method="ks", per_column={"x": ColumnDriftPolicy(method="wasserstein", threshold=0.5)}),
         "x", "numerical", ("wasserstein", 0.5)),
        (DriftPolicy(num_method="ks", num_threshold=0.01, per_column={"x": ColumnDriftPolicy(threshold=0.5)}),
         "x", "numerical", ("ks", 0.5)),  # the column sets only its threshold: the method is the type's
        (DriftPolicy(num_method="ks", num_threshold=0.01, per_column={"x": ColumnDriftPolicy(method="psi")}),
         "y", "numerical", ("ks", 0.01)),  # another column's setting is not this one's
    ],
)
def test_the_policys_choice_per_column_then_per_type_then_for_all(policy, column, ctype, expected) -> None:
    assert policy_choice(policy, column, ctype) == expected


def _plans(ref: pd.DataFrame, cur: pd.DataFrame, policy: DriftPolicy) -> dict[str, ColumnPlan]:
    return {p.column: p for p in plan_columns(ReferenceProfile.fit(ref, policy), cur, policy)}


def test_distance_tests_see_a_sample_of_each_side_and_exact_ones_the_full_frames() -> None:
    ref, cur = _frame(6000, 1), _frame(5000, 2)
    cur.loc[:99, "near"] = np.nan
    policy = DriftPolicy(sample_rows=1000, per_column={"grade": ColumnDriftPolicy(method="chisquare")})
    plans = _plans(ref, cur, policy)
    # a reference of more than 1000 rows: Evidently's defaults are distances
    assert (plans["far"].method, plans["far"].threshold, plans["far"].by_name) == ("wasserstein", 0.1, True)
    assert plans["cat"].method == "jensenshannon" and plans["cat"].kind == stat_test_kind("jensenshannon")
    for c in ("far", "near", "cat", "few"):
        assert (plans[c].sample_ref, plans[c].sample_cur) == (1000, 1000)
    assert (plans["near"].n_ref, plans["near"].n_cur) == (6000, 4900)  # non-null values
    assert plans["cat"].type == "categorical" and plans["far"].type == "numerical"
    assert plans["few"].method == "jensenshannon"  # few values on a large reference
    assert (plans["grade"].method, plans["grade"].sample_ref, plans["grade"].sample_cur) == ("chisquare", 6000, 5000)
    # sample_rows above the frames: nothing is cut
    big = _plans(ref, cur, DriftPolicy(sample_rows=10_000))["far"]
    assert (big.sample_ref, big.sample_cur) == (6000, 5000)


@pytest.mark.parametrize(
    "n_ref, n_cur, expected",
    [
        (40, 2001, (40, 2000)),  # the larger side cut to 50x the smaller
        (40, 2000, (40, 2000)),  # exactly 50x: nothing cut
        (2001, 40, (2000, 40)),
        (2000, 40, (2000, 40)),
        (300, 500, (300, 500)),
        (1200, 1500, (1200, 1500)),
        (1000, 1500, (1000, 1500)),  # the smaller side at sample_rows: not above it, no warning
    ],
)
def test_a_two_sample_test_cuts_only_the_larger_side_to_50x_the_smaller(n_ref, n_cur, expected, caplog) -> None:
    ref, cur = _frame(n_ref, 1), _frame(n_cur, 2)
    plan = _plans(ref, cur, DriftPolicy(sample_rows=1000, num_method="ks"))["far"]
    assert plan.kind.sampling == "two_sample" and (plan.sample_ref, plan.sample_cur) == expected
    # both sides above sample_rows: the p-value test is slow and oversensitive there, and the log says so
    warned = [r.getMessage() for r in caplog.records if r.getMessage().startswith("column 'far'")]
    assert warned == ([f"column 'far': p-value test 'ks' on {n_ref} x {n_cur} rows is slow and flags tiny "
                       "differences; a distance method (wasserstein, jensenshannon) suits large data better"]
                      if min(n_ref, n_cur) > 1000 else [])


def test_a_method_evidently_picks_itself_sees_the_full_frames() -> None:
    ref, cur = _frame(900, 1), _frame(3000, 2)  # a small reference: few-valued numerical -> chi-square / Z
    plan = _plans(ref, cur, DriftPolicy(sample_rows=1000))["few"]
    assert not plan.by_name and (plan.sample_ref, plan.sample_cur) == (900, 3000)


def test_a_sample_is_drawn_without_replacement_in_the_frames_order() -> None:
    df = pd.DataFrame({"a": range(100), "b": range(100, 200), "c": 0})
    s = sample(df, 60, ["a", "b"], seed=7)
    assert list(s.columns) == ["a", "b"] and len(s) == 60
    assert s["a"].is_unique and list(s.index) == sorted(s.index) and (s["b"] == s["a"] + 100).all()
    assert s.equals(sample(df, 60, ["a", "b"], seed=7)) and not s.equals(sample(df, 60, ["a", "b"], seed=8))
    assert sample(df, 100, ["a", "b", "c"], seed=7) is df  # everything: the frame itself, no copy
    assert list(sample(df, 100, ["a"], seed=7).columns) == ["a"] and len(sample(df, 500, ["a"], seed=7)) == 100
    assert len(sample(df, 99, ["a"], seed=7)) == 99


def test_the_w1_constant_integrates_the_empirical_cdf() -> None:
    assert j_integral(np.array([])) == 0.0 and j_integral(np.array([3.0])) == 0.0
    assert j_integral(np.array([1.0, 0.0])) == pytest.approx(0.5)  # one step of height F = 1/2, width 1
    steps = [math.sqrt(f * (1 - f)) for f in (0.25, 0.5, 0.75)]
    assert j_integral(np.array([3.0, 0.0, 2.0, 1.0])) == pytest.approx(sum(steps))
    assert j_integral(np.array([0.0, 2.0, 4.0, 6.0])) == pytest.approx(2 * sum(steps))  # scales with x


def _plan(method: str, ctype: str = "numerical", threshold: float = 0.1) -> ColumnPlan:
    return ColumnPlan("x", ctype, method, threshold, stat_test_kind(method), 0, 0, 0, 0)


def test_the_error_band_of_each_method() -> None:
    rng = np.random.default_rng(3)
    r, c = pd.Series(rng.normal(0, 2, 400)), pd.Series(rng.normal(0, 2, 300))
    fpc = (1 / 400 - 1 / 4000, 1 / 300 - 1 / 900)
    sd = float(np.std(r.to_numpy()))
    j_r, j_c = j_integral(r.to_numpy()) / sd, j_integral(c.to_numpy()) / sd
    assert error_band(_plan("wasserstein"), r, c, 4000, 900) == pytest.approx(
        2 * math.sqrt(j_r**2 * fpc[0] + j_c**2 * fpc[1]))
    assert error_band(_plan("wasserstein"), r, c, 400, 300) == 0.0  # nothing cut: no sampling error
    assert error_band(_plan("wasserstein"), r, c, 100, 100) == 0.0  # (full sizes below the sample's)
    # only the current side cut: only its term
    assert error_band(_plan("wasserstein"), r, c, 400, 900) == pytest.approx(2 * j_c * math.sqrt(fpc[1]))
    assert error_band(_plan("wasserstein"), r.where(r.index >= 100), c, 4000, 900) == pytest.approx(
        2 * math.sqrt((j_integral(r[100:].to_numpy()) / float(np.std(r[100:].to_numpy()))) ** 2
                      * (1 / 300 - 1 / 4000) + (j_c * float(np.std(r.to_numpy())) / float(np.std(r[100:].to_numpy())))
                      ** 2 * fpc[1]))  # missing values are not rows of the sample
    flat = pd.Series([1.0] * 400)  # a constant reference: its spread floored, not zero
    assert error_band(_plan("wasserstein"), flat, c, 4000, 900) == pytest.approx(
        2 * math.sqrt((j_c * sd / 0.001) ** 2 * fpc[1]))
    # Jensen-Shannon: numerical with many values -> Sturges bins over both sides
    k = math.ceil(math.log2(700) + 1)
    assert error_band(_plan("jensenshannon"), r, c, 4000, 900) == pytest.approx(
        3 * math.sqrt((k - 1) / 8 * (fpc[0] + fpc[1])))
    # categorical (or few values): the levels of both sides
    cr, cc = pd.Series(["a", "b"] * 200), pd.Series(["b", "c", "d"] * 100)
    assert error_band(_plan("jensenshannon", "categorical"), cr, cc, 4000, 900) == pytest.approx(
        3 * math.sqrt(3 / 8 * (fpc[0] + fpc[1])))
    few = pd.Series([float(i % 21) for i in range(400)])  # 21 values: Sturges; 20 would be levels
    assert error_band(_plan("jensenshannon"), few, few[:300], 4000, 900) == pytest.approx(
        3 * math.sqrt((k - 1) / 8 * (fpc[0] + fpc[1])))
    twenty = pd.Series([float(i % 20) for i in range(400)])
    assert error_band(_plan("jensenshannon"), twenty, twenty[:300], 4000, 900) == pytest.approx(
        3 * math.sqrt(19 / 8 * (fpc[0] + fpc[1])))
    one = pd.Series(["a"] * 400)
    assert error_band(_plan("jensenshannon", "categorical"), one, one[:300], 4000, 900) == pytest.approx(
        3 * math.sqrt(1 / 8 * (fpc[0] + fpc[1])))  # one level: at least one degree of freedom
    assert error_band(_plan("psi", threshold=0.2), r, c, 4000, 900) == pytest.approx(0.05)
    assert error_band(_plan("psi", threshold=0.2), r, c, 400, 300) == 0.0  # nothing cut: no band, any method


def test_scores_come_from_the_planned_samples_and_columns_near_their_threshold_are_refined() -> None:
    ref, cur = _frame(12000, 1), _frame(12000, 2, shift=1.0, near=0.1)
    policy = DriftPolicy(sample_rows=1000, per_column={"grade": ColumnDriftPolicy(method="chisquare")})
    plans = plan_columns(ReferenceProfile.fit(ref, policy), cur, policy)
    steps: list[str] = []
    m = measure(ref, cur, plans, random_state=11, step=steps.append)
    by = {p.column: p for p in plans}
    assert set(m.scores) == {"far", "near", "cat", "few", "grade"}
    assert m.refined == {"near"}  # far is far above 0.1; cat and few did not drift (their scores far below)
    # the first pass: one report per sample size, each on its sample
    assert [name for name, *_ in m.reports] == ["drift_report", "drift_report_2", "drift_report_refined"]
    name, ref_s, cur_s, group = m.reports[0]
    assert (len(ref_s), len(cur_s), [g.column for g in group]) == (1000, 1000, ["far", "near", "cat", "few"])
    assert ref_s.equals(sample(ref, 1000, ["far", "near", "cat", "few"], 12))
    assert cur_s.equals(sample(cur, 1000, ["far", "near", "cat", "few"], 13))
    assert m.scores["far"] == score_columns(ref_s, cur_s, [by["far"]])["far"]
    assert (len(m.reports[1][1]), len(m.reports[1][2])) == (12000, 12000)  # chi-square: the full frames
    assert (m.sampled_rows_reference, m.sampled_rows_current) == (12000, 12000)
    # the refinement: 8x the rows (capped at the frames), its own seeds, the refined score kept
    _, ref_r, cur_r, near = m.reports[2]
    assert [g.column for g in near] == ["near"] and len(ref_r) == len(cur_r) == REFINE_FACTOR * 1000
    assert ref_r.equals(sample(ref, 8000, ["near"], 14)) and cur_r.equals(sample(cur, 8000, ["near"], 15))
    assert m.scores["near"] == score_columns(ref_r, cur_r, [by["near"]])["near"]
    assert steps == ["Evidently drift tests: 4 columns on 1,000 x 1,000 rows",
                     "Evidently drift tests: 1 columns on 12,000 x 12,000 rows",
                     "refining 1 near-threshold column(s) on 8,000 x 8,000 rows"]


def test_nothing_is_refined_when_every_score_is_clear_of_its_band() -> None:
    ref, cur = _frame(3000, 1), _frame(2000, 2, shift=1.0, near=1.5)
    policy = DriftPolicy(sample_rows=2500, columns=["far", "near"])
    m = measure(ref, cur, plan_columns(ReferenceProfile.fit(ref, policy), cur, policy), random_state=0)
    assert m.refined == set() and [r[0] for r in m.reports] == ["drift_report"]
    assert (m.sampled_rows_reference, m.sampled_rows_current) == (2500, 2000)


def test_a_policy_method_that_cannot_judge_a_column_is_named_with_it() -> None:
    from mlflow_finops.policy import PolicyError

    ref = _frame(1200, 1)
    with pytest.raises(PolicyError, match="column 'far': Stattest chisquare"):
        _plans(ref, ref, DriftPolicy(per_column={"far": ColumnDriftPolicy(method="chisquare")}))
