"""Drift-gated retraining decisions: Evidently judges each column, the rules decide.

:class:`DriftGate` orchestrates one check: the reference is fitted once
(:mod:`.profile`); each current frame is validated, planned and sampled
(:mod:`.sampling`), scored by Evidently (:mod:`.evidently_judge`), turned into
column verdicts and a decision (:mod:`.rules`, pure), and recorded as an MLflow
run (:mod:`.record`). Persistence and cooldown read earlier checks back from
MLflow (:mod:`.monitoring`).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

import pandas as pd

from ..frames import DataInputError, as_frame, read_frame
from ..policy import DriftPolicy, PerformancePolicy, Policy, PolicyError, load_policy
from ..names import TAG_BASELINE_PREFIX, TAG_PARENT_VERSION, TAG_RETRAIN_RUN_ID, tag
from ..scoring import gain, score
from .profile import Infinite, ReferenceProfile, finite
from .results import ColumnDrift, ColumnType, DriftDecision, FirstBaseline, PerformanceResult
from .rules import NO_HISTORY, CheckHistory, ColumnScore, Ruling, apply_correction, decide, insufficient_data, performance_result
from .sampling import measure, plan_columns, sample

if TYPE_CHECKING:  # pragma: no cover
    from mlflow import MlflowClient

    from .evidently_judge import DataDefinition
    from .record import CheckRecorder, CheckRun
    from .record_process import CheckRunProcess

__all__ = [
    "DriftGate",
    "DriftDecision",
    "ColumnDrift",
    "PerformanceResult",
    "DriftInputError",
    "read_frame",
]

log = logging.getLogger(__name__)

_PROGRESS_MIN_ROWS = 100_000

DriftInputError = DataInputError  # the name the gate's users catch: data it cannot judge


@dataclass
class Judgement:
    """What one check measured, before any rule: column verdicts, rows seen, performance, reports."""

    columns: dict[str, ColumnDrift] = field(default_factory=dict)
    sampled_rows_reference: int = 0
    sampled_rows_current: int = 0
    performance: PerformanceResult | None = None
    # the champion's score on its first labelled window, to remember on its version (this is that window)
    first_baseline: FirstBaseline | None = None
    # what the HTML reports would show: (artifact name, reference sample, current sample, columns)
    reports: list[tuple[str, pd.DataFrame, pd.DataFrame, list[Any]]] = field(default_factory=list)

    @property
    def drifted_columns(self) -> list[str]:
        return [c for c, r in self.columns.items() if r.drifted]


class DriftGate:
    """Decides whether a model needs retraining, from Evidently's drift scores.

    ``DriftGate(reference_df, model="churn", drift_share=0.3)`` or
    ``DriftGate.from_policy("finops.toml", model="churn")``; then
    ``gate.check(current_df)`` returns a :class:`DriftDecision` and (unless
    ``log_to_mlflow=False``) logs it as a run in the model's monitoring experiment.
    MLflow is first contacted by the first check; with ``log_process=True`` each
    check's run is written by a child process that starts MLflow while this one
    judges: what a process that exists for one check wants (the CLI), whose first
    check is charged the whole process; a long-lived process keeps its store.
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
        model_features: list[str] | None = None,
        drop: list[str] | None = None,
        log_to_mlflow: bool = True,
        log_process: bool = False,
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
        if drop:  # columns the model never saw are not judged either
            base = base.model_copy(update={"ignore": [*base.ignore, *(c for c in drop if c not in base.ignore)]})
        if base.problems():
            raise PolicyError("DriftGate", base.problems())
        self.policy = base
        self.model = model
        self.target = target
        self.experiment = experiment
        self.log_to_mlflow = log_to_mlflow
        # log from a second process that starts MLflow while this one judges (a cold command's head start)
        self.log_process = log_process
        self._logger: CheckRunProcess | None = None
        self.progress = progress
        self.random_state = random_state
        self._performance_model = performance_model
        self._perf_reference: float | None = None
        self.model_features = list(model_features) if model_features else None  # what the model predicts from
        self.drop = list(drop or [])  # columns the model never saw (ids, dates)
        self._champions: dict[str, Any] = {}  # registered version -> loaded model
        if base.performance is not None:
            if not target:
                raise PolicyError("drift policy", ["[drift.performance] needs the label column: set "
                                                   "[models.NAME].target (or pass target=...)"])
            if performance_model is None:
                raise PolicyError("drift policy", ["[drift.performance] needs a model: set model_uri "
                                                   "(or pass performance_model=...)"])
        # the file the reference was read from (None for a frame): a scheduler rebuilds the gate when it changes
        self.reference_source: str | None = (
            str(reference) if isinstance(reference, (str, os.PathLike)) else None
        )
        self._recorder: CheckRecorder | None = None
        if log_process and log_to_mlflow:  # started now: it starts MLflow while the data is read and judged
            from .record_process import CheckRunProcess

            self._logger = CheckRunProcess(model, self.experiment_name)
        try:
            ref = as_frame(reference, "reference")
            with _naming(self.reference_source):
                self.profile = ReferenceProfile.fit(ref, base, target, data_definition)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """End a ``log_process`` gate's logging process that no check used (nothing was written).

        A check uses it up; a gate given up before its check (bad current data) calls this.
        """
        logger, self._logger = self._logger, None
        if logger is not None:
            logger.discard()

    @property
    def reference(self) -> pd.DataFrame:
        return self.profile.frame

    @property
    def features(self) -> list[str]:
        """The columns each check judges."""
        return self.profile.features

    @property
    def types(self) -> dict[str, ColumnType]:
        return self.profile.types

    @property
    def experiment_name(self) -> str:
        from ..names import monitoring_experiment

        return self.experiment or monitoring_experiment(self.model)

    def monitoring_experiment_id(self, create: bool = False) -> tuple["MlflowClient", str | None]:
        """MLflow client and the id of the experiment the checks are logged in.

        With ``create=False`` the id is None while no check was logged yet (or
        the experiment was deleted); ``create=True`` makes it.
        """
        return self._record().monitoring(create)

    def _record(self) -> "CheckRecorder":
        if self._recorder is None:
            from .record import CheckRecorder

            self._recorder = CheckRecorder(self.model, self.experiment_name)
        return self._recorder

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_policy(
        cls, policy: Policy | str | os.PathLike[str] | None, *, model: str, **kwargs: Any
    ) -> "DriftGate":
        """A gate for ``[models.<model>]`` of a policy file (its reference, target, drift overrides)."""
        pol = policy if isinstance(policy, Policy) else load_policy(policy)
        mp = pol.model(model)
        if "reference" not in kwargs:
            kwargs["reference"] = pol.reference(model)
        drift = pol.drift.merged(mp.drift)
        if mp.drop:  # never learned from, never judged
            drift = drift.model_copy(update={"ignore": [*drift.ignore, *(c for c in mp.drop if c not in drift.ignore)]})
        if mp.features and not drift.columns:
            drift = drift.model_copy(update={"columns": [c for c in mp.features if c not in drift.ignore]})
        if drift.performance is None and mp.target and mp.registered_model and drift.retrain_on != "drift":
            # harm, not drift, decides by default: the champion's loss since its promotion
            drift = drift.model_copy(update={"performance": PerformancePolicy(
                metric=pol.retrain.merged(mp.retrain).metric,
                margin=pol.trigger.merged(mp.trigger).tolerated_loss,
                model_uri=f"models:/{mp.registered_model}@champion",
                baseline="promotion",
                min_rows=pol.trigger.merged(mp.trigger).min_labelled_rows,
            )})
        perf = drift.performance
        if perf is not None and perf.model_uri and "performance_model" not in kwargs:
            kwargs["performance_model"] = perf.model_uri
        kwargs.setdefault("target", mp.target)
        kwargs.setdefault("experiment", mp.experiment)
        if mp.features or mp.drop:
            kwargs.setdefault("model_features", mp.features or None)
            kwargs.setdefault("drop", list(mp.drop))
        return cls(model=model, policy=drift, **kwargs)

    # ---------------------------------------------------------------- checking
    def validate(self, current: pd.DataFrame, source: str | None = None) -> None:
        """Raise :class:`DriftInputError` naming the column when ``current`` cannot be compared.

        ``source`` (the file(s) the frame was read from) starts the message.
        """
        with _naming(source):
            self.profile.validate(current)

    def check(
        self,
        current: pd.DataFrame | str | os.PathLike[str],
        *,
        window_key: str | None = None,
        now: datetime | None = None,
        extra_tags: Mapping[str, str] | None = None,
        source: str | None = None,
    ) -> DriftDecision:
        """Judge ``current`` against the reference, decide, and log the check as an MLflow run.

        Raises :class:`DriftInputError` before anything is logged when the data
        cannot be compared; its message starts with the file (``current`` as a
        path, or ``source``: where a frame was read from). ±inf values in a
        judged column are treated as missing and counted in the decision.
        """
        t0 = time.perf_counter()
        try:
            cur = as_frame(current, "current")
            if isinstance(current, (str, os.PathLike)):
                source = str(current)
            self.validate(cur, source)
        except BaseException:  # bad input: nothing is logged
            self.close()
            raise
        cur, infinite = finite(cur, self.features)
        if infinite.values or self.profile.infinite.values:
            log.warning("drift check %s: %s", self.model, _infinite_note(infinite, self.profile.infinite))
        now_ms = int((now or datetime.now(timezone.utc)).timestamp() * 1000)
        p = self.policy
        run = self._open_run(window_key, extra_tags)

        too_few = insufficient_data(len(cur), p)
        if too_few is not None:  # nothing to judge or to track: logged in one go
            decision = self._decision(too_few, Judgement(), len(cur), infinite, window_key, t0)
            if run is not None:
                try:
                    decision.run_id = run.run_id
                    run.log(decision, p, [], time.perf_counter() - t0)
                    run.finish()
                except BaseException:
                    run.fail()
                    raise
            return decision

        if run is None:
            decision, _ = self._judge_and_decide(cur, lambda: NO_HISTORY, now_ms, infinite, window_key, t0)
        else:
            try:
                with run.tracking_cost():
                    decision, snapshots = self._judge_and_decide(cur, run.history, now_ms, infinite, window_key, t0)
                    decision.run_id = run.run_id
                    run.log(decision, p, snapshots, time.perf_counter() - t0)
                run.finish()
            except BaseException:
                run.fail()
                raise
        log.info("drift check %s: %s (%s)", self.model, decision.decision, decision.reason)
        return decision

    def _open_run(
        self, window_key: str | None, extra_tags: Mapping[str, str] | None,
    ) -> "CheckRun | CheckRunProcess | None":
        """The check's MLflow run (None when nothing is logged): the model's history read, the run started.

        With ``log_process`` a child process does both while this one judges (see
        :mod:`.record_process`); otherwise they are done here, now.
        """
        if not self.log_to_mlflow:
            return None
        n = self.policy.persistence_n - 1
        if self.log_process:
            from .record_process import CheckRunProcess

            # the one started with the gate is charged the process from its start; a later check is not
            logger = self._logger or CheckRunProcess(self.model, self.experiment_name, whole_process=False)
            self._logger = None
            return logger.open(n, window_key, extra_tags)
        from .record import CheckRun

        return CheckRun(self._record(), n, window_key, extra_tags)

    def _judge_and_decide(
        self, cur: pd.DataFrame, history: Callable[[], CheckHistory], now_ms: int, infinite: Infinite,
        window_key: str | None, t0: float,
    ) -> tuple[DriftDecision, list[tuple[str, Any]]]:
        """Judge, then decide; ``history`` is asked for only then (a logging process may still be reading it)."""
        judged = self._judge(cur)
        if judged.first_baseline is not None and self.log_to_mlflow:
            tag_first_baseline(judged.first_baseline)
        ruling = decide(self.policy, judged.drifted_columns, len(judged.columns), judged.performance, history(), now_ms)
        decision = self._decision(ruling, judged, len(cur), infinite, window_key, t0)
        mode = self.policy.html_report
        if not self.log_to_mlflow or mode == "never" or (mode == "retrain" and not decision.retrain):
            return decision, []
        return decision, self._render_reports(judged, None if mode == "always" else set(judged.drifted_columns))

    @staticmethod
    def _render_reports(judged: Judgement, columns: set[str] | None) -> list[tuple[str, Any]]:
        """Evidently's HTML reports of the check's samples, of ``columns`` only (None: all).

        Its widgets cost ~0.15 s a column, so a retrain decision's report shows the
        drifted columns (every column's score is in ``drift/columns.json``).
        """
        from .evidently_judge import run_report

        out = []
        for name, ref, cur, plans in judged.reports:
            shown = [p for p in plans if columns is None or p.column in columns]
            if shown:
                cols = [p.column for p in shown]
                out.append((name, run_report(ref[cols], cur[cols], shown)[1]))
        return out

    def _decision(
        self, ruling: Ruling, judged: Judgement, rows_current: int, infinite: Infinite, window_key: str | None,
        t0: float,
    ) -> DriftDecision:
        ref_inf = self.profile.infinite
        note = _infinite_note(infinite, ref_inf)
        return DriftDecision(
            model=self.model,
            decision=ruling.decision,
            reason=f"{ruling.reason}; {note}" if note else ruling.reason,
            rows_infinite_reference=ref_inf.rows,
            rows_infinite_current=infinite.rows,
            drift_detected=ruling.drift_detected,
            drift_share=ruling.drift_share,
            drifted_columns=judged.drifted_columns,
            columns=judged.columns,
            rows_reference=len(self.reference),
            rows_current=rows_current,
            sampled_rows_reference=judged.sampled_rows_reference,
            sampled_rows_current=judged.sampled_rows_current,
            performance=judged.performance,
            window_key=window_key,
            elapsed_s=time.perf_counter() - t0,
            signal=ruling.signal,
            loss=None if (perf := judged.performance) is None else gain(perf.metric, perf.reference, perf.current),
        )

    def _judge(self, cur: pd.DataFrame) -> Judgement:
        """Evidently on the planned samples, then column verdicts and performance; no side effects."""
        p = self.policy
        show = self.progress if self.progress is not None else (
            sys.stderr.isatty() and max(len(cur), len(self.reference)) >= _PROGRESS_MIN_ROWS
        )
        with _Progress(show, f"drift check {self.model}") as bar:
            plans = plan_columns(self.profile, cur, p)
            bar.step("sampling")
            measured = measure(self.reference, cur, plans, self.random_state, bar.step)
            bar.step("verdicts")
            verdicts = apply_correction(
                [ColumnScore(pl.column, pl.kind, pl.threshold, measured.scores[pl.column]) for pl in plans],
                p.correction,
            )
            columns = {
                pl.column: ColumnDrift(
                    column=pl.column, type=pl.type, method=pl.method, threshold=pl.threshold,
                    score=measured.scores[pl.column], drifted=verdicts[pl.column].drifted, p_value=pl.kind.p_value,
                    rows_reference=pl.n_ref, rows_current=pl.n_cur, refined=pl.column in measured.refined,
                    corrected_threshold=verdicts[pl.column].corrected_threshold,
                )
                for pl in plans
            }
            performance, first = None, None
            if p.performance is not None:
                bar.step("performance")
                performance, first = self._performance(cur)
        return Judgement(
            columns, measured.sampled_rows_reference, measured.sampled_rows_current, performance, first,
            measured.reports,
        )

    def _performance(self, cur: pd.DataFrame) -> tuple[PerformanceResult | None, FirstBaseline | None]:
        """The model's metric on the labelled current window, against its baseline; and, when this
        is the champion's first labelled window, its score there to remember (nothing is written here).

        The baseline is the model's score on the reference, or (``baseline =
        "promotion"``) the registered champion's score when it was promoted.
        """
        perf = self.policy.performance
        assert perf is not None and self.target is not None
        labelled = cur[cur[self.target].notna()] if self.target in cur.columns else cur.iloc[:0]
        if len(labelled) < perf.min_rows:
            log.info("current data has %d labelled rows in %r (fewer than %d): performance signal skipped",
                     len(labelled), self.target, perf.min_rows)
            return None, None
        if perf.baseline == "promotion":
            return self._loss_since_promotion(labelled, perf)
        model = self._performance_model
        if isinstance(model, str):
            import mlflow.pyfunc

            model = self._performance_model = mlflow.pyfunc.load_model(model)
        n = self.policy.sample_rows
        if self._perf_reference is None:
            ref = sample(self.reference, n, list(self.reference.columns), self.random_state + 5)
            self._perf_reference = self._score(model, ref, perf.metric)
        cur_s = sample(labelled, n, list(labelled.columns), self.random_state + 6)
        current = self._score(model, cur_s, perf.metric)
        return replace(performance_result(perf.metric, self._perf_reference, current, perf.margin), rows=len(cur_s)), None

    def _loss_since_promotion(
        self, labelled: pd.DataFrame, perf: PerformancePolicy,
    ) -> tuple[PerformanceResult | None, FirstBaseline | None]:
        """The registered champion on the labelled window vs the better of its score at promotion
        and its score on its first labelled window (:func:`better_baseline`).

        A version promoted by a retrain carries its promotion score (``finops.<metric>``, on the
        retrain's held-out rows); one trained elsewhere may carry its validation score there. Its
        first labelled window's score is tagged ``finops.baseline.<metric>``. No champion yet: no
        signal (drift decides).
        """
        from mlflow import MlflowClient

        uri = perf.model_uri or ""
        name, _, alias = uri.removeprefix("models:/").partition("@")
        try:
            client = MlflowClient()
            version = client.get_model_version_by_alias(name, alias or "champion")
            model = self._champions.get(version.version)
            if model is None:
                import mlflow.pyfunc

                model = self._champions[version.version] = mlflow.pyfunc.load_model(f"models:/{name}/{version.version}")
        except Exception as exc:  # no champion yet, or the registry is unreachable: drift decides
            log.info("no champion to score for %s (%s: %s): performance signal skipped", uri, type(exc).__name__, exc)
            return None, None
        n = self.policy.sample_rows
        cur_s = sample(labelled, n, list(labelled.columns), self.random_state + 6)
        current = self._score(model, cur_s, perf.metric)
        promoted = version.tags.get(tag(perf.metric))
        first_tag = version.tags.get(f"{TAG_BASELINE_PREFIX}{perf.metric}")
        # this is its first labelled window: remembered on the version (tag_first_baseline)
        remember = FirstBaseline(name, str(version.version), perf.metric, current) if first_tag is None else None
        first = current if first_tag is None else float(first_tag)
        baseline, source = better_baseline(perf.metric, None if promoted is None else float(promoted), first)
        result = performance_result(perf.metric, baseline, current, perf.margin)
        result = replace(result, baseline=source, version=str(version.version), rows=len(cur_s))
        if remember is not None:  # the first window after its promotion: what the retrain realized
            result = self._replaced(result, name, version, cur_s, perf.metric)
        return result, remember

    def _replaced(self, result: PerformanceResult, name: str, version: Any, cur_s: pd.DataFrame,
                  metric: str) -> PerformanceResult:
        """``result`` with the version ``version`` replaced (its ``finops.parent_version``) scored on the
        same rows, when a retrain promoted it: the realized gain is measured forward in time, on rows
        neither version learned, not on the held-out rows of the window both were fitted beside."""
        parent, run_id = version.tags.get(TAG_PARENT_VERSION), version.tags.get(TAG_RETRAIN_RUN_ID)
        if not parent or not run_id:
            return result
        try:
            model = self._champions.get(parent)
            if model is None:
                import mlflow.pyfunc

                model = self._champions[parent] = mlflow.pyfunc.load_model(f"models:/{name}/{parent}")
            replaced = self._score(model, cur_s, metric)
        except Exception as exc:  # the replaced version was deleted or cannot load: nothing realized to say
            log.info("v%s of %s, replaced by v%s, not scored (%s: %s)", parent, name, version.version,
                     type(exc).__name__, exc)
            return result
        return replace(result, replaced_version=parent, replaced=replaced, retrain_run_id=run_id)

    def _score(self, model: Any, frame: pd.DataFrame, metric: str) -> float:
        """``metric`` of ``model`` on ``frame``, from the columns the model was trained on."""
        assert self.target is not None
        X = frame.drop(columns=[self.target, *(c for c in self.drop if c in frame.columns)])
        if self.model_features:
            X = X[self.model_features]
        return score(model, X, frame[self.target], metric)


def tag_first_baseline(first: FirstBaseline) -> None:
    """Write a version's first labelled window score on it (``finops.baseline.<metric>``)."""
    from mlflow import MlflowClient

    MlflowClient().set_model_version_tag(first.name, first.version, f"{TAG_BASELINE_PREFIX}{first.metric}",
                                         f"{first.score:.6f}")


def better_baseline(metric: str, promoted: float | None, first: float) -> tuple[float, str]:
    """The baseline a champion's loss is measured from, and what it is.

    Its score at promotion is measured on rows of the window it learned from; its first labelled
    window is the first it served. Either can be the lower (a held-out slice of a hard regime; a
    window unlike the training data), and a loss measured from the lower one hides drops below
    what the version has shown it does: the better of the two is the baseline.
    """
    if promoted is not None and gain(metric, promoted, first) >= 0:
        return promoted, "promotion"
    return first, "first labelled window"


# ------------------------------------------------------------------ input
@contextmanager
def _naming(source: str | None) -> Iterator[None]:
    """Bad-input errors raised inside start with the file the data came from (when it came from one)."""
    try:
        yield
    except DataInputError as exc:
        if source is None or str(exc).startswith(source):
            raise
        raise DataInputError(f"{source}: {exc}") from None


def _infinite_note(current: Infinite, reference: Infinite) -> str:
    """The warning a decision carries when ±inf values were treated as missing ('' when none were)."""
    parts = [
        f"{side} {', '.join(f'{c!r} {n}' for c, n in inf.values.items())} ({inf.rows} rows)"
        for side, inf in (("current", current), ("reference", reference)) if inf.values
    ]
    return f"±inf treated as missing: {'; '.join(parts)}" if parts else ""


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
