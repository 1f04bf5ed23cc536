"""The drift gate's rules as pure functions: no MLflow, no Evidently, no pandas.

A check measures (which columns drifted, how the model scores); these rules
turn that, what earlier checks said (:class:`CheckHistory`), the policy and the
clock into a decision and the sentence that explains it. The multiple-testing
correction, which turns a check's p-values into column verdicts, is here too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, Sequence

from ..scoring import gain
from ..stattests import StatTestKind
from .results import Decision, PerformanceResult

if TYPE_CHECKING:  # pragma: no cover
    from ..policy import CorrectionName, DriftPolicy

__all__ = [
    "CheckHistory",
    "ColumnScore",
    "NO_HISTORY",
    "Ruling",
    "Verdict",
    "apply_correction",
    "decide",
    "insufficient_data",
    "performance_result",
    "performance_text",
    "points",
    "retrain_signal",
]

_SHOWN_COLUMNS = 8  # drifted columns named in a reason; the rest become "..."
_BOUNDED = frozenset({"accuracy", "f1", "roc_auc", "r2"})  # metrics whose 0.01 is a "point"


@dataclass(frozen=True)
class CheckHistory:
    """What earlier checks of one model said: the inputs of cooldown and persistence."""

    last_retrain_run_id: str | None
    last_retrain_ms: int | None
    recent_drift: list[bool]  # newest first, insufficient-data checks left out


NO_HISTORY = CheckHistory(None, None, [])  # a gate that logs nothing remembers nothing


@dataclass(frozen=True)
class Ruling:
    """A decision, its reason, and the drift signal it rests on."""

    decision: Decision
    reason: str
    drift_detected: bool  # the columns' share reached drift_share, or performance degraded
    drift_share: float  # drifted columns / checked columns
    signal: str = ""  # what was measured (drifted share, performance, persistence), without the verdict


class Verdict(NamedTuple):
    """One column's verdict; ``corrected_threshold`` is set when a correction applied."""

    drifted: bool
    corrected_threshold: float | None


@dataclass(frozen=True)
class ColumnScore:
    """One column's stat test, threshold and score: the input of the correction."""

    column: str
    kind: StatTestKind
    threshold: float
    score: float


def performance_result(metric: str, reference: float, current: float, margin: float) -> PerformanceResult:
    """Degraded when the model lost more than ``margin`` (in the metric's units) since the reference."""
    return PerformanceResult(metric, reference, current, margin, gain(metric, reference, current) > margin)


def performance_text(perf: PerformanceResult) -> str:
    """The loss in a person's words: 'accuracy -0.3 pt since promotion of v3 (0.9120 -> 0.9090; tolerated 1.0 pt)'."""
    since = {"reference": "vs the reference", "promotion": "since promotion",
             "first labelled window": "since its first labelled window"}.get(perf.baseline, perf.baseline)
    if perf.version is not None:
        since += f" of v{perf.version}"
    change = -gain(perf.metric, perf.reference, perf.current)  # negative = worse
    verdict = "beyond" if perf.degraded else "within"
    return (f"{perf.metric} {points(perf.metric, change)} {since} ({perf.reference:.4f} -> {perf.current:.4f}; "
            f"{verdict} the tolerated {points(perf.metric, perf.margin, signed=False)})")


def points(metric: str, value: float, signed: bool = True) -> str:
    """A change of a [0, 1] metric in points (0.01 = 1 pt); other metrics in their own units."""
    if metric in _BOUNDED:
        pt = round(value * 100, 1) + 0.0  # no "-0.0 pt"
        return f"{pt:+.1f} pt" if signed else f"{pt:.1f} pt"
    return f"{value:+.4g}" if signed else f"{value:.4g}"


def retrain_signal(retrain_on: str, drifted: bool, performance: PerformanceResult | None) -> bool:
    """Whether this check signals a retrain.

    ``harm``: drift is not harm, so a measured performance decides (degraded
    beyond its margin) and the drifted share is only the early warning while
    labels lag (no performance measured). ``drift``: the drifted share alone.
    ``either``: the share or a degraded model.
    """
    degraded = performance is not None and performance.degraded
    if retrain_on == "drift":
        return drifted
    if retrain_on == "either":
        return drifted or degraded
    return degraded if performance is not None else drifted


def insufficient_data(rows: int, policy: DriftPolicy) -> Ruling | None:
    """The ruling for a window too small to judge (fewer than ``min_rows``); None otherwise."""
    if rows >= policy.min_rows:
        return None
    return Ruling(
        "insufficient_data",
        f"current window has {rows} rows, fewer than min_rows={policy.min_rows}: "
        "not enough data to judge drift, no retrain",
        False,
        0.0,
    )


def decide(
    policy: DriftPolicy,
    drifted_columns: Sequence[str],
    columns_checked: int,
    performance: PerformanceResult | None,
    history: CheckHistory,
    now_ms: int,
) -> Ruling:
    """Retrain, or why not: no drift signal, persistence not reached yet, or inside the cooldown.

    The signal is :func:`retrain_signal`: by default the model's measured loss
    when labels are there, the drifted share reaching ``drift_share`` while
    they lag. With ``persistence_n > 1`` it must also have been seen in
    ``persistence_k`` of the last ``persistence_n`` checks (this one included);
    with ``cooldown_hours`` the last retrain trigger must be that long ago.
    """
    p = policy
    share = len(drifted_columns) / columns_checked if columns_checked else 0.0
    text = f"{len(drifted_columns)} of {columns_checked} columns drifted ({share:.0%}, drift_share {p.drift_share:.0%})"
    if drifted_columns:
        more = " ..." if len(drifted_columns) > _SHOWN_COLUMNS else ""
        text += ": " + ", ".join(drifted_columns[:_SHOWN_COLUMNS]) + more
    reasons = [text]
    if performance is not None:
        reasons.append(performance_text(performance))
    signal = retrain_signal(p.retrain_on, share >= p.drift_share, performance)

    def ruling(decision: Decision, tail: str) -> Ruling:
        measured = "; ".join(reasons)
        return Ruling(decision, measured + tail, signal, share, measured)

    if not signal:
        return ruling("no_drift", ": no retrain")
    if p.persistence_n > 1:
        recent = history.recent_drift[: p.persistence_n - 1]
        hits = 1 + sum(recent)
        if hits < p.persistence_k:
            return ruling(
                "pending",
                f"; drift in {hits} of the last {1 + len(recent)} checks, "
                f"persistence needs {p.persistence_k} of {p.persistence_n}: not yet",
            )
        reasons.append(f"drift in {hits} of the last {1 + len(recent)} checks")
    if p.cooldown_hours > 0 and history.last_retrain_ms is not None:
        age_h = (now_ms - history.last_retrain_ms) / 3_600_000
        if age_h < p.cooldown_hours:
            return ruling(
                "cooldown",
                f"; last retrain trigger {age_h:.1f} h ago (run {history.last_retrain_run_id}), "
                f"inside the {p.cooldown_hours:g} h cooldown: no retrain",
            )
    return ruling("retrain", ": retrain recommended")


def apply_correction(scores: Sequence[ColumnScore], correction: CorrectionName) -> dict[str, Verdict]:
    """Verdict per column; p-value columns get Bonferroni or Benjamini-Hochberg when asked.

    Bonferroni: drift when p < threshold / m (``<=`` where the test itself uses
    ``<=``). Benjamini-Hochberg: sort the m p-values, find the largest rank k
    with p_(k) <= k * threshold / m, and flag every column up to it (each
    column's own threshold plays alpha). Distance columns are not tests and are
    never corrected; m counts the p-value columns only.
    """
    out = {s.column: Verdict(s.kind.verdict(s.score, s.threshold), None) for s in scores}
    tests = [s for s in scores if s.kind.p_value]
    m = len(tests)
    if correction == "none" or m == 0:
        return out
    if correction == "bonferroni":
        for s in tests:
            out[s.column] = Verdict(s.kind.verdict(s.score, s.threshold / m), s.threshold / m)
        return out
    ranked = sorted(tests, key=lambda s: s.score)
    cutoff = max((k for k, s in enumerate(ranked, start=1) if s.score <= k * s.threshold / m), default=0)
    for k, s in enumerate(ranked, start=1):
        out[s.column] = Verdict(k <= cutoff, k * s.threshold / m)
    return out
