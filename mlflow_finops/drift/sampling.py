"""The sample-size rule: how much of each frame Evidently sees, and when a sampled score is refined.

Evidently's default method depends on the *reference* size (<= 1000 non-null
values: KS / chi-square / Z, p < 0.05; above: normed Wasserstein /
Jensen-Shannon >= 0.1). Each column's method and threshold are resolved from
the *full* frames and passed explicitly, so sampling never changes the method.
Then, per column:

* Distance methods (Wasserstein, Jensen-Shannon, PSI, ...) estimate a distance
  between the two populations. Both are metrics, so by the triangle inequality
  the sampled score is off from the full-data score by at most
  ``d(ref_sample, ref) + d(cur_sample, cur)``. For the normed Wasserstein
  distance ``E W1(F_n, F) <= J / sqrt(n)`` with ``J = int sqrt(F(1-F)) dx / std``
  (Bobkov & Ledoux), about 1.6 for a normal column; for Jensen-Shannon over K
  levels or bins ``E JS(p_n, p) ~= sqrt((K-1) / (8 n))``. With
  ``sample_rows = 50,000`` per side that is ~0.01 for Wasserstein and
  ~0.007 for JS with K = 20, against thresholds of 0.1. The error band
  ``eps`` is computed per column from the sample itself (J is estimated from
  the sorted sample; finite-population corrected, so it is 0 when nothing was
  cut), taken as ``2 eps`` (Wasserstein; measured SD at 50k is 0.007, so that is
  ~3 SD) or ``3 eps`` (JS), and Evidently re-runs with 8x the rows, capped at
  the full data, for any column whose sampled score lies inside that band
  around its threshold. Outside the band the verdict equals the full-data
  verdict with high probability; inside it, the refined score decides.
* Two-sample p-value tests (KS, Z, Mann-Whitney, ...) depend on the effective
  size ``n m / (n + m)``: only the larger side is cut, to 50x the smaller,
  which keeps the effective size within 2% of the full data's.
* Chi-square and G-test compare current counts with the reference's
  proportions; their p-value grows with the current size, so they always see
  the full frames.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd

from ..policy import DriftPolicy
from ..stattests import StatTestKind, stat_test_kind
from .evidently_judge import resolve_method, score_columns
from .profile import ReferenceProfile
from .results import ColumnType

__all__ = ["ColumnPlan", "Measurement", "error_band", "j_integral", "measure", "plan_columns", "sample"]

log = logging.getLogger(__name__)

REFINE_FACTOR = 8
TWO_SAMPLE_RATIO = 50


@dataclass(frozen=True)
class ColumnPlan:
    """How one column is judged: its stat test, threshold, and the rows each side feeds Evidently."""

    column: str
    type: ColumnType
    method: str
    threshold: float
    kind: StatTestKind
    n_ref: int  # non-null rows in the full frames
    n_cur: int
    sample_ref: int  # rows of the frame to feed Evidently (len(frame) = no sampling)
    sample_cur: int
    by_name: bool = True  # False: Evidently resolves this (default) method itself


@dataclass
class Measurement:
    """Evidently's scores per column, which were refined, the rows it saw, and what its reports would show."""

    scores: dict[str, float] = field(default_factory=dict)
    refined: set[str] = field(default_factory=set)
    sampled_rows_reference: int = 0
    sampled_rows_current: int = 0
    # what an HTML report of this check would show: (artifact name, reference sample, current sample, columns)
    reports: list[tuple[str, pd.DataFrame, pd.DataFrame, list[ColumnPlan]]] = field(default_factory=list)


def policy_choice(policy: DriftPolicy, column: str, ctype: ColumnType) -> tuple[str | None, float | None]:
    """The policy's method and threshold for a column: per column, then per type, then for all."""
    col = policy.per_column.get(column)
    numerical = ctype == "numerical"
    method = (col.method if col else None) or (policy.num_method if numerical else policy.cat_method) or policy.method
    threshold = (col.threshold if col else None) or (
        policy.num_threshold if numerical else policy.cat_threshold
    ) or policy.threshold
    return method, threshold


def plan_columns(profile: ReferenceProfile, cur: pd.DataFrame, policy: DriftPolicy) -> list[ColumnPlan]:
    """Each judged column's method (pinned on the full frames) and sample sizes."""
    plans = []
    cap = policy.sample_rows
    n_ref_rows, n_cur_rows = len(profile.frame), len(cur)
    for c in profile.features:
        ctype = profile.types[c]
        method, threshold, by_name = resolve_method(
            c, ctype, *policy_choice(policy, c, ctype), profile.nonnull[c],
            lambda k, c=c: profile.distinct_over(c, cur[c], k),
        )
        kind = stat_test_kind(method)
        s_ref, s_cur = n_ref_rows, n_cur_rows
        if not by_name:
            pass  # Evidently re-picks the method itself: give it the full frames
        elif kind.sampling == "distance":
            s_ref, s_cur = min(n_ref_rows, cap), min(n_cur_rows, cap)
        elif kind.sampling == "two_sample":
            if n_cur_rows > TWO_SAMPLE_RATIO * n_ref_rows:
                s_cur = TWO_SAMPLE_RATIO * n_ref_rows
            elif n_ref_rows > TWO_SAMPLE_RATIO * n_cur_rows:
                s_ref = TWO_SAMPLE_RATIO * n_cur_rows
            if min(n_ref_rows, n_cur_rows) > cap:
                log.warning(
                    "column %r: p-value test %r on %d x %d rows is slow and flags tiny differences; "
                    "a distance method (wasserstein, jensenshannon) suits large data better",
                    c, method, n_ref_rows, n_cur_rows,
                )
        plans.append(
            ColumnPlan(c, ctype, method, threshold, kind, profile.nonnull[c], int(cur[c].count()), s_ref, s_cur,
                       by_name)
        )
    return plans


def sample(df: pd.DataFrame, n: int, cols: list[str], seed: int) -> pd.DataFrame:
    """``n`` rows of ``df[cols]`` drawn without replacement, in their original order; all when n >= len.

    Only the asked cells are copied (none when all rows are asked for): on a 1M-row frame a copy
    of whole rows or whole columns is what a check's peak memory is made of.
    """
    if n >= len(df):  # the columns' own arrays, not copies (``df[cols]`` copies them)
        return df if list(df.columns) == list(cols) else pd.DataFrame({c: df[c] for c in cols}, copy=False)
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(df), size=n, replace=False))
    # column by column: only the asked cells are copied, once (taking rows first copied every
    # column of those rows: a refinement of 2 columns on 400,000 rows of 21 took 67 MB a side)
    return pd.DataFrame({c: df[c].iloc[idx] for c in cols}, copy=False)  # one block a column, none merged


def j_integral(x: np.ndarray) -> float:
    """int sqrt(F(1-F)) dx of the sample's empirical CDF: the W1 sampling-error constant."""
    x = np.sort(x)
    n = len(x)
    if n < 2:
        return 0.0
    f = np.arange(1, n) / n
    return float(np.sum(np.sqrt(f * (1 - f)) * np.diff(x)))


def error_band(plan: ColumnPlan, ref: pd.Series, cur: pd.Series, n_full_ref: int, n_full_cur: int) -> float:
    """Half-width of the sampling-error band around the threshold (0 when nothing was cut)."""
    r, c = ref.dropna(), cur.dropna()
    n, m = len(r), len(c)
    fpc = (max(0.0, 1 / n - 1 / max(n_full_ref, n)), max(0.0, 1 / m - 1 / max(n_full_cur, m)))
    if fpc == (0.0, 0.0):
        return 0.0
    if plan.method == "wasserstein":
        sd = max(float(np.std(r.to_numpy(dtype=float))), 0.001)
        j_ref, j_cur = j_integral(r.to_numpy(dtype=float)) / sd, j_integral(c.to_numpy(dtype=float)) / sd
        return 2.0 * math.sqrt(j_ref**2 * fpc[0] + j_cur**2 * fpc[1])
    if plan.method == "jensenshannon":
        if plan.type == "numerical" and r.nunique() > 20:
            k = math.ceil(math.log2(n + m) + 1)  # numpy's Sturges bins, as Evidently uses
        else:
            k = len(set(r.unique()) | set(c.unique()))
        return 3.0 * math.sqrt(max(k - 1, 1) / 8 * (fpc[0] + fpc[1]))
    return 0.25 * plan.threshold  # other distances: no closed form here; a wide heuristic band


def measure(
    reference: pd.DataFrame,
    cur: pd.DataFrame,
    plans: list[ColumnPlan],
    random_state: int,
    step: Callable[[str], None] = lambda what: None,
) -> Measurement:
    """Evidently's score of every planned column, on the planned samples, refined near thresholds.

    Columns with the same sample sizes share one Report; ``step`` hears what runs next.
    """
    out = Measurement()
    groups: dict[tuple[int, int], list[ColumnPlan]] = {}
    for pl in plans:
        groups.setdefault((pl.sample_ref, pl.sample_cur), []).append(pl)
    seen: dict[str, tuple[pd.Series, pd.Series]] = {}
    for (n_ref, n_cur), group in groups.items():
        cols = [g.column for g in group]
        ref_s = sample(reference, n_ref, cols, random_state + 1)
        cur_s = sample(cur, n_cur, cols, random_state + 2)
        step(f"Evidently drift tests: {len(cols)} columns on {len(ref_s):,} x {len(cur_s):,} rows")
        out.scores.update(score_columns(ref_s, cur_s, group))
        out.reports.append(
            ("drift_report" if not out.reports else f"drift_report_{len(out.reports) + 1}", ref_s, cur_s, group)
        )
        for g in group:
            seen[g.column] = (ref_s[g.column], cur_s[g.column])
        out.sampled_rows_reference = max(out.sampled_rows_reference, len(ref_s))
        out.sampled_rows_current = max(out.sampled_rows_current, len(cur_s))
    near = [
        pl for pl in plans
        if pl.kind.sampling == "distance" and pl.by_name
        and abs(out.scores[pl.column] - pl.threshold)
        <= error_band(pl, *seen[pl.column], len(reference), len(cur))
    ]
    if near:
        n_ref = min(len(reference), REFINE_FACTOR * max(pl.sample_ref for pl in near))
        n_cur = min(len(cur), REFINE_FACTOR * max(pl.sample_cur for pl in near))
        cols = [pl.column for pl in near]
        step(f"refining {len(cols)} near-threshold column(s) on {n_ref:,} x {n_cur:,} rows")
        ref_s, cur_s = sample(reference, n_ref, cols, random_state + 3), sample(cur, n_cur, cols, random_state + 4)
        out.scores.update(score_columns(ref_s, cur_s, near))
        out.reports.append(("drift_report_refined", ref_s, cur_s, near))
        out.refined = set(cols)
    return out
