"""Drift-gated retraining decisions: Evidently judges each column, the gate decides.

Evidently (``Report`` of ``ValueDrift`` metrics on ``Dataset``s with a
``DataDefinition``) computes every drift score. Evidently 0.7 returns scores,
not verdicts, so the gate derives them the way Evidently's own tests do
(:mod:`._stattests`), then adds what a retraining decision needs: a minimum
window size, the dataset drift share, an optional multiple-testing correction,
an optional performance signal, persistence over recent checks and a cooldown
after the last retrain, both read back from MLflow. Every check is an MLflow run.

Large data (the sample-size rule)
---------------------------------
Evidently's default method depends on the *reference* size (<= 1000 non-null
values: KS / chi-square / Z, p < 0.05; above: normed Wasserstein /
Jensen-Shannon >= 0.1). The gate resolves each column's method and threshold
from the *full* frames and passes them explicitly, so sampling never changes
the method. Then, per column:

* Distance methods (Wasserstein, Jensen-Shannon, PSI, ...) estimate a distance
  between the two populations. Both are metrics, so by the triangle inequality
  the sampled score is off from the full-data score by at most
  ``d(ref_sample, ref) + d(cur_sample, cur)``. For the normed Wasserstein
  distance ``E W1(F_n, F) <= J / sqrt(n)`` with ``J = int sqrt(F(1-F)) dx / std``
  (Bobkov & Ledoux), about 1.6 for a normal column; for Jensen-Shannon over K
  levels or bins ``E JS(p_n, p) ~= sqrt((K-1) / (8 n))``. With
  ``sample_rows = 50,000`` per side that is ~0.01 for Wasserstein and
  ~0.007 for JS with K = 20, against thresholds of 0.1. The gate computes that
  error band ``eps`` per column from the sample itself (J is estimated from the
  sorted sample; finite-population corrected, so it is 0 when nothing was
  cut), takes ``2 eps`` (Wasserstein; measured SD at 50k is 0.007, so that is ~3
  SD) or ``3 eps`` (JS), and re-runs Evidently with 8x the rows, capped at the
  full data, for any column whose sampled score lies inside that band around
  its threshold. Outside the band the verdict equals the full-data verdict with
  high probability; inside it, the refined score decides.
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
import os
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Literal, Mapping, Sequence

import numpy as np
import pandas as pd

from ..frames import DataInputError, as_frame, read_frame
from ..policy import DriftPolicy, ModelPolicy, Policy, PolicyError, load_policy
from ..scoring import HIGHER_IS_BETTER, score
from ..stattests import StatTestKind, stat_test_kind

if TYPE_CHECKING:  # pragma: no cover
    from evidently import DataDefinition

__all__ = [
    "DriftGate",
    "DriftDecision",
    "ColumnDrift",
    "PerformanceResult",
    "DriftInputError",
    "read_frame",
]

log = logging.getLogger(__name__)

Decision = Literal["retrain", "no_drift", "pending", "cooldown", "insufficient_data"]
_REFINE_FACTOR = 8
_TWO_SAMPLE_RATIO = 50
_PROGRESS_MIN_ROWS = 100_000


DriftInputError = DataInputError  # the name the gate's users catch: data it cannot judge


# ------------------------------------------------------------------ results
@dataclass(frozen=True)
class ColumnDrift:
    """One column's Evidently score and the verdict derived from it."""

    column: str
    type: Literal["numerical", "categorical"]
    method: str
    threshold: float
    score: float
    drifted: bool
    p_value: bool
    rows_reference: int
    rows_current: int
    refined: bool = False
    corrected_threshold: float | None = None


@dataclass(frozen=True)
class PerformanceResult:
    """Model quality on the reference vs the labelled current window."""

    metric: str
    reference: float
    current: float
    margin: float
    degraded: bool


@dataclass
class DriftDecision:
    """What the gate decided and why; ``retrain`` is what a scheduler acts on."""

    model: str
    decision: Decision
    reason: str
    drift_detected: bool = False
    drift_share: float = 0.0
    drifted_columns: list[str] = field(default_factory=list)
    columns: dict[str, ColumnDrift] = field(default_factory=dict)
    rows_reference: int = 0
    rows_current: int = 0
    sampled_rows_reference: int = 0
    sampled_rows_current: int = 0
    performance: PerformanceResult | None = None
    run_id: str | None = None
    window_key: str | None = None
    elapsed_s: float = 0.0

    @property
    def retrain(self) -> bool:
        return self.decision == "retrain"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["retrain"] = self.retrain
        return out


# ------------------------------------------------------------------ input
def _dtype_family(s: pd.Series) -> str:
    dt = s.dtype
    if pd.api.types.is_bool_dtype(dt):
        return "bool"
    if pd.api.types.is_numeric_dtype(dt):
        return "numeric"
    if pd.api.types.is_datetime64_any_dtype(dt):
        return "datetime"
    if isinstance(dt, pd.CategoricalDtype) or pd.api.types.is_string_dtype(dt) or dt == object:
        return "label"
    return str(dt)


def _names(cols: Sequence[str]) -> str:
    return ", ".join(repr(c) for c in cols)


# ------------------------------------------------------------------ the gate
@dataclass
class _ColumnPlan:
    column: str
    type: Literal["numerical", "categorical"]
    method: str
    threshold: float
    kind: StatTestKind
    n_ref: int  # non-null rows in the full frames
    n_cur: int
    sample_ref: int  # rows of the frame to feed Evidently (len(frame) = no sampling)
    sample_cur: int
    by_name: bool = True  # False: Evidently resolves this (default) method itself


class DriftGate:
    """Decides whether a model needs retraining, from Evidently's drift scores.

    ``DriftGate(reference_df, model="churn", drift_share=0.3)`` or
    ``DriftGate.from_policy("finops.toml", model="churn")``; then
    ``gate.check(current_df)`` returns a :class:`DriftDecision` and (unless
    ``log_to_mlflow=False``) logs it as a run in the model's monitoring experiment.
    """

    def __init__(
        self,
        reference: pd.DataFrame | str | os.PathLike[str],
        *,
        model: str = "default",
        policy: DriftPolicy | None = None,
        data_definition: "DataDefinition | None" = None,
        target: str | None = None,
        experiment: str | None = None,
        performance_model: Any = None,
        log_to_mlflow: bool = True,
        progress: bool | None = None,
        random_state: int = 0,
        **overrides: Any,
    ) -> None:
        base = policy or DriftPolicy()
        if overrides:
            try:
                base = DriftPolicy.model_validate({**base.model_dump(), **overrides})
            except Exception as exc:
                raise PolicyError("DriftGate", [str(exc)]) from None
        if base.problems():
            raise PolicyError("DriftGate", base.problems())
        self.policy = base
        self.model = model
        self.target = target
        self.experiment = experiment
        self.log_to_mlflow = log_to_mlflow
        self.progress = progress
        self.random_state = random_state
        self._performance_model = performance_model
        self._perf_reference: float | None = None
        if base.performance is not None:
            if not target:
                raise PolicyError("drift policy", ["[drift.performance] needs the label column: set "
                                                   "[models.NAME].target (or pass target=...)"])
            if performance_model is None:
                raise PolicyError("drift policy", ["[drift.performance] needs a model: set model_uri "
                                                   "(or pass performance_model=...)"])
        self.reference = as_frame(reference, "reference")
        self.features, self.types = self._resolve_columns(self.reference, data_definition)
        self._ref_nonnull = {c: int(self.reference[c].count()) for c in self.features}
        self._ref_levels = {
            c: set(self.reference[c].dropna().unique()) for c in self.features if self.types[c] == "categorical"
        }
        self._client: Any = None
        self._exp_id: str | None = None
        if log_to_mlflow:
            self._monitoring(create=False)  # connect now: a bad tracking URI fails here, checks start warm

    def _monitoring(self, create: bool = True) -> tuple[Any, str | None]:
        """MLflow client and the monitoring experiment's id; created on first use when ``create``."""
        from mlflow import MlflowClient

        from ..store import get_or_create_experiment

        client = MlflowClient()
        if self._client is None or client.tracking_uri != self._client.tracking_uri:
            self._client, self._exp_id = client, None
        if self._exp_id is None:
            if create:
                self._exp_id = get_or_create_experiment(client, self.experiment_name)
            else:
                exp = client.get_experiment_by_name(self.experiment_name)
                self._exp_id = exp.experiment_id if exp is not None and exp.lifecycle_stage == "active" else None
        return self._client, self._exp_id

    @property
    def experiment_name(self) -> str:
        from ..names import monitoring_experiment

        return self.experiment or monitoring_experiment(self.model)

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_policy(
        cls, policy: Policy | str | os.PathLike[str] | None, *, model: str, **kwargs: Any
    ) -> "DriftGate":
        """A gate for ``[models.<model>]`` of a policy file (its reference, target, drift overrides)."""
        pol = policy if isinstance(policy, Policy) else load_policy(policy)
        mp = model_policy(pol, model)
        if "reference" not in kwargs:
            if not mp.reference:
                raise PolicyError(pol.source or "policy", [f"[models.{model}].reference: not set"])
            kwargs["reference"] = _resolve_path(pol, mp.reference)
        perf = pol.drift.merged(mp.drift).performance
        if perf is not None and perf.model_uri and "performance_model" not in kwargs:
            kwargs["performance_model"] = perf.model_uri
        kwargs.setdefault("target", mp.target)
        kwargs.setdefault("experiment", mp.experiment)
        return cls(model=model, policy=pol.drift.merged(mp.drift), **kwargs)

    def _resolve_columns(
        self, ref: pd.DataFrame, dd: "DataDefinition | None"
    ) -> tuple[list[str], dict[str, Literal["numerical", "categorical"]]]:
        if len(ref) == 0:
            raise DriftInputError("reference data is empty (0 rows)")
        dup = ref.columns[ref.columns.duplicated()].tolist()
        if dup:
            raise DriftInputError(f"reference data has duplicate column(s) {_names(dup)}")
        p = self.policy
        skip = set(p.ignore) | ({self.target} if self.target else set())
        if self.target and self.target not in ref.columns:
            raise DriftInputError(f"reference data lacks the target column {self.target!r}")
        unknown = [c for c in [*p.columns, *p.per_column] if c not in ref.columns]
        if unknown:
            raise DriftInputError(f"policy names column(s) {_names(unknown)} that the reference data lacks")
        declared: dict[str, str] = {}
        if dd is not None:
            for c in dd.numerical_columns or []:
                declared[c] = "numerical"
            for c in dd.categorical_columns or []:
                declared[c] = "categorical"
            missing = [c for c in declared if c not in ref.columns]
            if missing:
                raise DriftInputError(f"DataDefinition names column(s) {_names(missing)} absent from the reference")
        candidates = list(p.columns) if p.columns else (list(declared) if dd is not None else list(ref.columns))
        features = [c for c in candidates if c not in skip]
        if not features:
            raise DriftInputError("no columns left to check (all ignored or none declared)")
        types: dict[str, Literal["numerical", "categorical"]] = {}
        from evidently.core.datasets import infer_column_type
        from evidently.legacy.core import ColumnType

        for c in features:
            s = ref[c]
            if s.count() == 0:
                raise DriftInputError(f"column {c!r} is all NaN in the reference data")
            if c in declared:
                t = declared[c]
                if t == "numerical" and _dtype_family(s) != "numeric":
                    raise DriftInputError(f"column {c!r} is declared numerical but has dtype {s.dtype} in the reference")
                types[c] = t  # type: ignore[assignment]
                continue
            inferred = infer_column_type(s)
            if inferred == ColumnType.Numerical:
                types[c] = "numerical"
            elif inferred == ColumnType.Categorical:
                types[c] = "categorical"
            else:
                raise DriftInputError(
                    f"column {c!r}: Evidently infers type {inferred.value!r} (dtype {s.dtype}), which the "
                    "gate does not judge; add it to [drift].ignore or declare it in a DataDefinition"
                )
        return features, types

    # ---------------------------------------------------------------- validation
    def validate(self, current: pd.DataFrame) -> None:
        """Raise :class:`DriftInputError` naming the column when ``current`` cannot be compared."""
        if len(current) == 0:
            raise DriftInputError("current data is empty (0 rows)")
        dup = current.columns[current.columns.duplicated()].tolist()
        if dup:
            raise DriftInputError(f"current data has duplicate column(s) {_names(dup)}")
        missing = [c for c in self.features if c not in current.columns]
        if missing:
            raise DriftInputError(f"current data lacks column(s) {_names(missing)} that the reference has")
        allowed = set(self.reference.columns) | set(self.policy.ignore) | ({self.target} if self.target else set())
        extra = [c for c in current.columns if c not in allowed]
        if extra:
            raise DriftInputError(
                f"current data has column(s) {_names(extra)} that the reference lacks "
                "(add them to [drift].ignore to skip them)"
            )
        for c in self.features:
            r, s = self.reference[c], current[c]
            fr, fc = _dtype_family(r), _dtype_family(s)
            if fr != fc:
                raise DriftInputError(
                    f"column {c!r}: dtype changed from {r.dtype} (reference) to {s.dtype} (current)"
                )
            if s.count() == 0:
                raise DriftInputError(f"column {c!r} is all NaN in the current data")
            if self.types[c] == "categorical":
                levels = set(s.dropna().unique())
                ref_levels = self._ref_levels[c]
                if levels and not (levels & ref_levels):
                    show = lambda xs: sorted(map(repr, xs))[:5]  # noqa: E731
                    raise DriftInputError(
                        f"column {c!r}: no category of the current data occurs in the reference "
                        f"(current {show(levels)}, reference {show(ref_levels)}); "
                        "were the levels re-encoded? Map them, or ignore the column"
                    )

    # ---------------------------------------------------------------- planning
    def _method_for(self, c: str, cur: pd.Series) -> tuple[str, float, bool]:
        """Method and threshold as Evidently would pick them on the *full* frames, and whether
        the method can be passed to Evidently by name."""
        from evidently.legacy.calculations.stattests.registry import get_registered_stattest
        from evidently.legacy.core import ColumnType

        p = self.policy
        t = self.types[c]
        col = p.per_column.get(c)
        method = (col.method if col else None) or (p.num_method if t == "numerical" else p.cat_method) or p.method
        threshold = (col.threshold if col else None) or (
            p.num_threshold if t == "numerical" else p.cat_threshold
        ) or p.threshold
        chosen = method is not None
        if method is None:
            big = self._ref_nonnull[c] > 1000
            if t == "categorical":
                if big:
                    method = "jensenshannon"
                else:
                    method = "chisquare" if self._nunique_over(c, cur, 2) else "z"
            else:
                few = not self._nunique_over(c, cur, 5)
                if big:
                    method = "jensenshannon" if few else "wasserstein"
                elif few:
                    method = "chisquare" if self._nunique_over(c, cur, 2) else "z"
                else:
                    method = "ks"
        ctype = ColumnType.Numerical if t == "numerical" else ColumnType.Categorical
        try:
            test = get_registered_stattest(method, ctype)
        except ValueError as exc:
            if chosen:
                raise PolicyError("drift policy", [f"column {c!r}: {exc}"]) from None
            # Evidently's own default for a numerical column with <= 5 values on a small
            # reference is chi-square / Z, which it will not accept by name for that type:
            # let it pick (the frames are not cut for these tests, so its pick is the same)
            test = get_registered_stattest(method, ColumnType.Categorical)
            return method, float(threshold if threshold is not None else test.default_threshold), False
        return method, float(threshold if threshold is not None else test.default_threshold), True

    def _nunique_over(self, c: str, cur: pd.Series, k: int) -> bool:
        """Whether reference+current hold more than ``k`` distinct values; cheap on big frames.

        A head of the data with more than k values settles it; only
        low-cardinality columns pay for a full pass.
        """
        ref = self.reference[c]
        for part in (ref.iloc[:10_000], cur.iloc[:10_000]):
            if part.nunique() > k:
                return True
        return pd.concat([ref.drop_duplicates(), cur.drop_duplicates()]).nunique() > k

    def _plan(self, cur: pd.DataFrame) -> list[_ColumnPlan]:
        plans = []
        cap = self.policy.sample_rows
        n_ref_rows, n_cur_rows = len(self.reference), len(cur)
        for c in self.features:
            method, threshold, by_name = self._method_for(c, cur[c])
            kind = stat_test_kind(method)
            n_ref, n_cur = self._ref_nonnull[c], int(cur[c].count())
            s_ref, s_cur = n_ref_rows, n_cur_rows
            if not by_name:
                pass  # Evidently re-picks the method itself: give it the full frames
            elif kind.sampling == "distance":
                s_ref, s_cur = min(n_ref_rows, cap), min(n_cur_rows, cap)
            elif kind.sampling == "two_sample":
                if n_cur_rows > _TWO_SAMPLE_RATIO * n_ref_rows:
                    s_cur = _TWO_SAMPLE_RATIO * n_ref_rows
                elif n_ref_rows > _TWO_SAMPLE_RATIO * n_cur_rows:
                    s_ref = _TWO_SAMPLE_RATIO * n_cur_rows
                if min(n_ref_rows, n_cur_rows) > cap:
                    log.warning(
                        "column %r: p-value test %r on %d x %d rows is slow and flags tiny differences; "
                        "a distance method (wasserstein, jensenshannon) suits large data better",
                        c, method, n_ref_rows, n_cur_rows,
                    )
            plans.append(
                _ColumnPlan(c, self.types[c], method, threshold, kind, n_ref, n_cur, s_ref, s_cur, by_name)
            )
        return plans

    # ---------------------------------------------------------------- Evidently
    def _sample(self, df: pd.DataFrame, n: int, cols: list[str], salt: int) -> pd.DataFrame:
        if n >= len(df):
            return df[cols]
        rng = np.random.default_rng(self.random_state + salt)
        idx = np.sort(rng.choice(len(df), size=n, replace=False))
        return df[cols].iloc[idx]

    def _evidently(
        self, ref: pd.DataFrame, cur: pd.DataFrame, plans: list[_ColumnPlan]
    ) -> tuple[dict[str, float], Any]:
        """Run one Evidently Report of ValueDrift metrics; scores by column, and the snapshot."""
        from evidently import DataDefinition, Dataset, Report
        from evidently.metrics import ValueDrift

        dd = DataDefinition(
            numerical_columns=[p.column for p in plans if p.type == "numerical"],
            categorical_columns=[p.column for p in plans if p.type == "categorical"],
        )
        report = Report(
            [
                ValueDrift(column=p.column, method=p.method if p.by_name else None, threshold=p.threshold)
                for p in plans
            ],
            include_tests=True,
        )
        snapshot = report.run(
            Dataset.from_pandas(cur, data_definition=dd), Dataset.from_pandas(ref, data_definition=dd)
        )
        scores: dict[str, float] = {}
        for m in snapshot.dict()["metrics"]:
            cfg = m.get("config", {})
            if cfg.get("type", "").endswith("ValueDrift"):
                scores[cfg["column"]] = float(m["value"])
        return scores, snapshot

    def _band(self, plan: _ColumnPlan, ref: pd.Series, cur: pd.Series, n_full_ref: int, n_full_cur: int) -> float:
        """Half-width of the sampling-error band around the threshold (0 when nothing was cut)."""
        r, c = ref.dropna(), cur.dropna()
        n, m = len(r), len(c)
        fpc = (max(0.0, 1 / n - 1 / max(n_full_ref, n)), max(0.0, 1 / m - 1 / max(n_full_cur, m)))
        if fpc == (0.0, 0.0):
            return 0.0
        if plan.method == "wasserstein":
            sd = max(float(np.std(r.to_numpy(dtype=float))), 0.001)
            j_ref, j_cur = _j_integral(r.to_numpy(dtype=float)) / sd, _j_integral(c.to_numpy(dtype=float)) / sd
            return 2.0 * math.sqrt(j_ref**2 * fpc[0] + j_cur**2 * fpc[1])
        if plan.method == "jensenshannon":
            if plan.type == "numerical" and r.nunique() > 20:
                k = math.ceil(math.log2(n + m) + 1)  # numpy's Sturges bins, as Evidently uses
            else:
                k = len(set(r.unique()) | set(c.unique()))
            return 3.0 * math.sqrt(max(k - 1, 1) / 8 * (fpc[0] + fpc[1]))
        return 0.25 * plan.threshold  # other distances: no closed form here; a wide heuristic band

    # ---------------------------------------------------------------- checking
    def check(
        self,
        current: pd.DataFrame | str | os.PathLike[str],
        *,
        window_key: str | None = None,
        now: datetime | None = None,
        extra_tags: Mapping[str, str] | None = None,
    ) -> DriftDecision:
        """Judge ``current`` against the reference, decide, and log the check as an MLflow run.

        Raises :class:`DriftInputError` before anything is logged when the data
        cannot be compared.
        """
        t0 = time.perf_counter()
        cur = as_frame(current, "current")
        self.validate(cur)
        now_ms = int((now or datetime.now(timezone.utc)).timestamp() * 1000)
        p = self.policy
        decision = DriftDecision(
            model=self.model,
            decision="no_drift",
            reason="",
            rows_reference=len(self.reference),
            rows_current=len(cur),
            window_key=window_key,
        )
        client = exp_id = None
        history = None
        if self.log_to_mlflow:
            from .monitoring import read_history

            client, exp_id = self._monitoring()
            history = read_history(client, exp_id, self.model, p.persistence_n - 1)

        if len(cur) < p.min_rows:
            decision.decision = "insufficient_data"
            decision.reason = (
                f"current window has {len(cur)} rows, fewer than min_rows={p.min_rows}: "
                "not enough data to judge drift, no retrain"
            )
            decision.elapsed_s = time.perf_counter() - t0
            if client is not None:
                self._log(client, exp_id, decision, [], extra_tags, t0)
                client.set_terminated(decision.run_id, "FINISHED")
            return decision

        run_id = None
        if client is not None:
            run_id = self._start_run(client, exp_id, decision, extra_tags)
            decision.run_id = run_id
        try:
            with _track_cost(run_id):
                snapshots = self._judge(cur, decision)
                self._decide(decision, history, now_ms)
                decision.elapsed_s = time.perf_counter() - t0
                if client is not None:
                    self._log(client, exp_id, decision, snapshots, extra_tags, t0)
            if client is not None and run_id is not None:
                client.set_terminated(run_id, "FINISHED")
        except BaseException:
            if client is not None and run_id is not None:
                client.set_tag(run_id, "finops.error", "check failed; see the scheduler's log")
                client.set_terminated(run_id, "FAILED")
            raise
        log.info("drift check %s: %s (%s)", self.model, decision.decision, decision.reason)
        return decision

    def _judge(self, cur: pd.DataFrame, decision: DriftDecision) -> list[tuple[str, Any]]:
        """Run Evidently on the planned samples; fill in column verdicts, share and performance."""
        p = self.policy
        show = self.progress if self.progress is not None else (
            sys.stderr.isatty() and max(len(cur), len(self.reference)) >= _PROGRESS_MIN_ROWS
        )
        with _Progress(show, f"drift check {self.model}") as bar:
            plans = self._plan(cur)
            bar.step("sampling")
            groups: dict[tuple[int, int], list[_ColumnPlan]] = {}
            for pl in plans:
                groups.setdefault((pl.sample_ref, pl.sample_cur), []).append(pl)
            scores: dict[str, float] = {}
            refined: set[str] = set()
            snapshots: list[tuple[str, Any]] = []
            frames: dict[str, tuple[pd.DataFrame, pd.DataFrame]] = {}
            for (n_ref, n_cur), group in groups.items():
                cols = [g.column for g in group]
                ref_s = self._sample(self.reference, n_ref, cols, 1)
                cur_s = self._sample(cur, n_cur, cols, 2)
                bar.step(f"Evidently drift tests: {len(cols)} columns on {len(ref_s):,} x {len(cur_s):,} rows")
                s, snap = self._evidently(ref_s, cur_s, group)
                scores.update(s)
                snapshots.append(("drift_report" if not snapshots else f"drift_report_{len(snapshots) + 1}", snap))
                for g in group:
                    frames[g.column] = (ref_s[g.column], cur_s[g.column])
                decision.sampled_rows_reference = max(decision.sampled_rows_reference, len(ref_s))
                decision.sampled_rows_current = max(decision.sampled_rows_current, len(cur_s))
            # refine columns whose sampled score is too close to the threshold to trust
            near = [
                pl for pl in plans
                if pl.kind.sampling == "distance" and pl.by_name
                and abs(scores[pl.column] - pl.threshold)
                <= self._band(pl, *frames[pl.column], len(self.reference), len(cur))
            ]
            if near:
                n_ref = min(len(self.reference), _REFINE_FACTOR * max(pl.sample_ref for pl in near))
                n_cur = min(len(cur), _REFINE_FACTOR * max(pl.sample_cur for pl in near))
                cols = [pl.column for pl in near]
                bar.step(f"refining {len(cols)} near-threshold column(s) on {n_ref:,} x {n_cur:,} rows")
                s, snap = self._evidently(
                    self._sample(self.reference, n_ref, cols, 3), self._sample(cur, n_cur, cols, 4), near
                )
                scores.update(s)
                snapshots.append(("drift_report_refined", snap))
                refined = set(cols)
            bar.step("verdicts")
            verdicts = _apply_correction(plans, scores, p.correction)
            for pl in plans:
                drifted, corrected = verdicts[pl.column]
                decision.columns[pl.column] = ColumnDrift(
                    column=pl.column, type=pl.type, method=pl.method, threshold=pl.threshold,
                    score=scores[pl.column], drifted=drifted, p_value=pl.kind.p_value,
                    rows_reference=pl.n_ref, rows_current=pl.n_cur,
                    refined=pl.column in refined, corrected_threshold=corrected,
                )
            decision.drifted_columns = [c for c, r in decision.columns.items() if r.drifted]
            decision.drift_share = len(decision.drifted_columns) / len(plans)
            decision.drift_detected = decision.drift_share >= p.drift_share
            if p.performance is not None:
                bar.step("performance")
                decision.performance = self._performance(cur)
        return snapshots

    def _decide(self, d: DriftDecision, history: Any, now_ms: int) -> None:
        p = self.policy
        n_checked = len(d.columns)
        share = (
            f"{len(d.drifted_columns)} of {n_checked} columns drifted ({d.drift_share:.0%}, "
            f"drift_share {p.drift_share:.0%})"
        )
        if d.drifted_columns:
            shown = ", ".join(d.drifted_columns[:8]) + (" ..." if len(d.drifted_columns) > 8 else "")
            share += f": {shown}"
        reasons = [share]
        perf = d.performance
        if perf is not None:
            reasons.append(
                f"{perf.metric} {perf.reference:.4f} -> {perf.current:.4f} "
                f"({'degraded beyond' if perf.degraded else 'within'} margin {perf.margin})"
            )
        signal = d.drift_detected or bool(perf and perf.degraded)
        d.drift_detected = signal
        if not signal:
            d.decision = "no_drift"
            d.reason = "; ".join(reasons) + ": no retrain"
            return
        if p.persistence_n > 1:
            recent = (history.recent_drift if history else [])[: p.persistence_n - 1]
            hits = 1 + sum(recent)
            if hits < p.persistence_k:
                d.decision = "pending"
                d.reason = "; ".join(reasons) + (
                    f"; drift in {hits} of the last {1 + len(recent)} checks, "
                    f"persistence needs {p.persistence_k} of {p.persistence_n}: not yet"
                )
                return
            reasons.append(f"drift in {hits} of the last {1 + len(recent)} checks")
        if p.cooldown_hours > 0 and history is not None and history.last_retrain_ms is not None:
            age_h = (now_ms - history.last_retrain_ms) / 3_600_000
            if age_h < p.cooldown_hours:
                d.decision = "cooldown"
                d.reason = "; ".join(reasons) + (
                    f"; last retrain trigger {age_h:.1f} h ago (run {history.last_retrain_run_id}), "
                    f"inside the {p.cooldown_hours:g} h cooldown: no retrain"
                )
                return
        d.decision = "retrain"
        d.reason = "; ".join(reasons) + ": retrain recommended"

    # ---------------------------------------------------------------- performance
    def _performance(self, cur: pd.DataFrame) -> PerformanceResult | None:
        perf = self.policy.performance
        assert perf is not None and self.target is not None
        if self.target not in cur.columns or cur[self.target].count() == 0:
            log.info("current data has no labels in %r: performance signal skipped", self.target)
            return None
        model = self._performance_model
        if isinstance(model, str):
            import mlflow.pyfunc

            model = self._performance_model = mlflow.pyfunc.load_model(model)
        if self._perf_reference is None:
            ref = self._sample(self.reference, self.policy.sample_rows, list(self.reference.columns), 5)
            self._perf_reference = _score(model, ref, self.target, perf.metric)
        cur_s = self._sample(cur, self.policy.sample_rows, list(cur.columns), 6)
        current = _score(model, cur_s, self.target, perf.metric)
        ref_v = self._perf_reference
        loss = (ref_v - current) if HIGHER_IS_BETTER[perf.metric] else (current - ref_v)
        return PerformanceResult(perf.metric, ref_v, current, perf.margin, loss > perf.margin)

    # ---------------------------------------------------------------- MLflow
    def _tags(self, d: DriftDecision, extra: Mapping[str, str] | None) -> dict[str, str]:
        from ..names import TAG_MODEL, TAG_WINDOW_KEY, TAG_WORKLOAD, WORKLOAD_DRIFT_CHECK

        tags = {TAG_MODEL: self.model, TAG_WORKLOAD: WORKLOAD_DRIFT_CHECK, **(extra or {})}
        if d.window_key:
            tags[TAG_WINDOW_KEY] = d.window_key
        return tags

    def _start_run(self, client: Any, exp_id: str, d: DriftDecision, extra: Mapping[str, str] | None) -> str:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
        run = client.create_run(exp_id, run_name=f"drift-{self.model}-{stamp}", tags=self._tags(d, extra))
        return run.info.run_id

    def _log(
        self, client: Any, exp_id: str, d: DriftDecision, snapshots: list[tuple[str, Any]],
        extra: Mapping[str, str] | None, t0: float,
    ) -> None:
        from mlflow.entities import Metric, Param, RunTag

        from ..names import TAG_DECISION, TAG_DRIFT_DETECTED

        if d.run_id is None:  # insufficient data: nothing to track, log in one go
            d.run_id = self._start_run(client, exp_id, d, extra)
        ts = int(time.time() * 1000)
        metrics = {
            "drift/share": d.drift_share,
            "drift/columns_drifted": float(len(d.drifted_columns)),
            "drift/columns_checked": float(len(d.columns)),
            "drift/rows_reference": float(d.rows_reference),
            "drift/rows_current": float(d.rows_current),
            "drift/retrain": float(d.retrain),
        }
        if d.sampled_rows_current:
            metrics["drift/rows_sampled_reference"] = float(d.sampled_rows_reference)
            metrics["drift/rows_sampled_current"] = float(d.sampled_rows_current)
        for c, r in d.columns.items():
            metrics[f"drift/column/{_metric_name(c)}"] = r.score
        if d.performance is not None:
            metrics[f"drift/performance/{d.performance.metric}_reference"] = d.performance.reference
            metrics[f"drift/performance/{d.performance.metric}_current"] = d.performance.current
        p = self.policy
        params = {
            "drift_share": p.drift_share, "min_rows": p.min_rows, "sample_rows": p.sample_rows,
            "correction": p.correction, "cooldown_hours": p.cooldown_hours,
            "persistence": f"{p.persistence_k}/{p.persistence_n}",
        }
        tags = {
            TAG_DECISION: d.decision,
            TAG_DRIFT_DETECTED: "true" if d.drift_detected else "false",
            "finops.drift_reason": d.reason[:5000],
        }
        if d.drifted_columns:
            tags["finops.drifted_columns"] = ",".join(d.drifted_columns)[:5000]
        metrics["drift/check_seconds"] = time.perf_counter() - t0
        items = list(metrics.items())
        for i in range(0, len(items), 900):
            client.log_batch(
                d.run_id,
                metrics=[Metric(k, float(v), ts, 0) for k, v in items[i : i + 900]],
                params=[Param(k, str(v)) for k, v in params.items()] if i == 0 else [],
                tags=[RunTag(k, v) for k, v in tags.items()] if i == 0 else [],
            )
        if d.columns:
            rows = [
                {**asdict(r), "score": r.score} for r in d.columns.values()
            ]
            client.log_dict(d.run_id, {"decision": d.decision, "reason": d.reason, "columns": rows},
                            "drift/columns.json")
        with tempfile.TemporaryDirectory(prefix="finops-drift-") as tmp:
            for name, snap in snapshots:
                path = Path(tmp) / f"{name}.html"
                snap.save_html(str(path))
                client.log_artifact(d.run_id, str(path), "drift")


# ------------------------------------------------------------------ helpers
def model_policy(policy: Policy, model: str) -> ModelPolicy:
    """``[models.<model>]``; PolicyError naming the model (and the known ones) when absent."""
    try:
        return policy.models[model]
    except KeyError:
        known = ", ".join(sorted(policy.models)) or "none"
        raise PolicyError(
            policy.source or "policy", [f"[models.{model}]: no such model in the policy (models: {known})"]
        ) from None


def _resolve_path(policy: Policy, value: str) -> str:
    """Relative paths in a policy file are relative to that file."""
    p = Path(value).expanduser()
    if not p.is_absolute() and policy.source and Path(policy.source).exists():
        p = Path(policy.source).resolve().parent / p
    return str(p)


def _metric_name(column: str) -> str:
    import re

    return re.sub(r"[^0-9A-Za-z_\-. /]", "_", str(column))


def _j_integral(x: np.ndarray) -> float:
    """int sqrt(F(1-F)) dx of the sample's empirical CDF: the W1 sampling-error constant."""
    x = np.sort(x)
    n = len(x)
    if n < 2:
        return 0.0
    f = np.arange(1, n) / n
    return float(np.sum(np.sqrt(f * (1 - f)) * np.diff(x)))


def _apply_correction(
    plans: list[_ColumnPlan], scores: Mapping[str, float], correction: str
) -> dict[str, tuple[bool, float | None]]:
    """Verdict per column; p-value columns get Bonferroni or Benjamini-Hochberg when asked.

    Bonferroni: drift when p < threshold / m. Benjamini-Hochberg: sort the m
    p-values, find the largest rank k with p_(k) <= k * threshold / m, and
    flag every column up to it (each column's own threshold plays alpha).
    Distance columns are not tests and are never corrected.
    """
    out: dict[str, tuple[bool, float | None]] = {}
    pv = [pl for pl in plans if pl.kind.p_value]
    m = len(pv)
    for pl in plans:
        out[pl.column] = (pl.kind.verdict(scores[pl.column], pl.threshold), None)
    if correction == "none" or m == 0:
        return out
    if correction == "bonferroni":
        for pl in pv:
            thr = pl.threshold / m
            out[pl.column] = (pl.kind.verdict(scores[pl.column], thr), thr)
        return out
    ranked = sorted(pv, key=lambda pl: scores[pl.column])
    cutoff = 0
    for k, pl in enumerate(ranked, start=1):
        if scores[pl.column] <= k * pl.threshold / m:
            cutoff = k
    for k, pl in enumerate(ranked, start=1):
        out[pl.column] = (k <= cutoff, k * pl.threshold / m)
    return out


def _score(model: Any, frame: pd.DataFrame, target: str, metric: str) -> float:
    return score(model, frame.drop(columns=[target]), frame[target], metric)


@contextmanager
def _track_cost(run_id: str | None) -> Iterator[None]:
    """The check's own cost, into its run, when the cost tracker is available."""
    if run_id is None:
        yield
        return
    try:
        from ..cost.tracker import track_cost
    except ImportError:  # pragma: no cover - tracker not installed
        yield
        return
    with track_cost(run_id=run_id):
        yield


class _Progress:
    """A rich progress bar of the check's stages, on stderr, only for long checks."""

    def __init__(self, enabled: bool, title: str) -> None:
        self.enabled = enabled
        self.title = title
        self._stack = ExitStack()
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> "_Progress":
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self._progress = self._stack.enter_context(
                Progress(
                    SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(),
                    TimeElapsedColumn(), console=Console(stderr=True), transient=True,
                )
            )
            self._task = self._progress.add_task(f"{self.title}: planning", total=None)
        return self

    def step(self, what: str) -> None:
        log.debug("%s: %s", self.title, what)
        if self._progress is not None:
            self._progress.update(self._task, description=f"{self.title}: {what}", advance=1)

    def __exit__(self, *exc: Any) -> None:
        self._stack.close()
