"""What a drift check returns: plain data, shared by the gate, its rules and its recorder.

Kept apart from :mod:`.gate` so that the pure rules and the MLflow recorder can
name these types without importing the gate that orchestrates them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = ["ColumnDrift", "ColumnType", "Decision", "DriftDecision", "FirstBaseline", "PerformanceResult"]

Decision = Literal["retrain", "no_drift", "pending", "cooldown", "insufficient_data"]
ColumnType = Literal["numerical", "categorical"]


@dataclass(frozen=True)
class ColumnDrift:
    """One column's Evidently score and the verdict derived from it."""

    column: str
    type: ColumnType
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
    baseline: str = "reference"  # what ``reference`` is: "reference", "promotion", "first labelled window"
    version: str | None = None  # the registered model version scored, when the model is a registry alias
    rows: int = 0  # labelled current rows scored
    # on the first labelled window after a retrain's promotion: the version it replaced, scored on the same
    # rows, and the retrain run that promoted ``version`` (what the retrain realized is logged there)
    replaced_version: str | None = None
    replaced: float | None = None
    retrain_run_id: str | None = None

    @property
    def realized(self) -> float | None:
        """What the retrain that promoted ``version`` realized here: its score minus the replaced
        version's, on rows neither learned (metric units, positive = better); None when not measured."""
        if self.replaced is None:
            return None
        from ..scoring import gain

        return gain(self.metric, self.current, self.replaced)


@dataclass(frozen=True)
class FirstBaseline:
    """A registered version's score on the first labelled window it served: the baseline of its
    loss when no retrain's held-out score is better (``finops.baseline.<metric>`` on the version)."""

    name: str
    version: str
    metric: str
    score: float


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
    rows_infinite_reference: int = 0  # rows with ±inf in a judged column, treated as missing
    rows_infinite_current: int = 0
    performance: PerformanceResult | None = None
    run_id: str | None = None
    window_key: str | None = None
    elapsed_s: float = 0.0
    # what the decision rests on, without its verdict: the drifted share, the performance, persistence
    signal: str = ""
    # the model's measured loss, in metric units (positive = worse); None when no labels were scored
    loss: float | None = None

    @property
    def retrain(self) -> bool:
        return self.decision == "retrain"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["retrain"] = self.retrain
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DriftDecision":
        """The decision :meth:`to_dict` wrote (the check's logging process reads it back)."""
        fields = {k: v for k, v in data.items() if k != "retrain"}
        fields["columns"] = {c: ColumnDrift(**r) for c, r in (data.get("columns") or {}).items()}
        if data.get("performance") is not None:
            fields["performance"] = PerformanceResult(**data["performance"])
        return cls(**fields)
