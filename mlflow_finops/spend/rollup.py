"""The report's arithmetic, apart from MLflow I/O: one run's figures and the roll-ups of many.

:mod:`.report` reads runs from the store and renders; what is summed, what is
skipped and which run is best is decided here, on plain values:

- runs tagged ``finops.nested_in`` are listed but never summed: their cost is
  already inside their parent's;
- runs without a finite ``finops/cost_usd`` are *untracked*: counted and shown
  as such, never as $0;
- the best run of a group follows the metric's direction (``goal``), and the
  first of equal runs keeps the title.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Iterable, Mapping

from ..names import METRIC_COST_USD, METRIC_PREFIX, TAG_MODEL, TAG_NESTED_IN, TAG_TEAM

if TYPE_CHECKING:  # pragma: no cover
    from mlflow.entities import Run

__all__ = [
    "ReportError",
    "RunCost",
    "GroupCost",
    "GROUP_LEVELS",
    "NONE_KEY",
    "FIGURES",
    "NOT_QUALITY",
    "run_cost",
    "row_cost",
    "pick_metric",
    "metric_goal",
    "with_metric",
    "total",
    "groups",
    "add",
    "add_sums",
    "by_cost",
    "sorted_runs",
]

GROUP_LEVELS: tuple[str, ...] = ("experiment", "model", "team")
NONE_KEY = "(none)"
# Metrics that are not about model quality: never picked as "the model metric".
NOT_QUALITY = (METRIC_PREFIX, "system/")
_PREFERRED = ("accuracy", "f1", "f1_score", "roc_auc", "auc", "r2", "r2_score", "rmse", "mae", "mse", "loss")
_LOWER_IS_BETTER = re.compile(r"(loss|error|rmse|mse|mae|mape|logloss|perplexity|latency|wer|cer)", re.I)
# The run figures a report keeps (``finops/<name>``), in output order.
FIGURES = ("cost_usd", "usage_cost_usd", "allocation_cost_usd", "idle_cost_usd", "cpu_core_hours",
           "gpu_hours", "energy_kwh", "co2e_kg", "cpu_efficiency", "cpu_allocated_core_hours", "wall_hours")


class ReportError(ValueError):
    """Bad report arguments (unknown experiment, empty period, bad date): the CLI exits 2."""


@dataclass(frozen=True, slots=True)
class RunCost:
    """The figures of one run a report needs. Cost fields are None for an untracked run."""

    run_id: str
    run_name: str
    experiment_id: str
    experiment: str
    start_time: float  # unix seconds
    end_time: float | None
    status: str
    team: str | None
    model: str | None
    nested_in: str | None
    cost_usd: float | None = None
    usage_cost_usd: float | None = None
    allocation_cost_usd: float | None = None
    idle_cost_usd: float | None = None
    cpu_core_hours: float | None = None
    gpu_hours: float | None = None
    energy_kwh: float | None = None
    co2e_kg: float | None = None
    cpu_efficiency: float | None = None
    cpu_allocated_core_hours: float | None = None
    wall_hours: float | None = None
    metric: float | None = None

    @property
    def tracked(self) -> bool:
        return self.cost_usd is not None

    @property
    def counted(self) -> bool:
        """Part of the sums: tracked and not a nested run."""
        return self.tracked and self.nested_in is None

    def key(self, by: str) -> str:
        if by == "experiment":
            return self.experiment
        if by == "model":
            return self.model or NONE_KEY
        if by == "team":
            return self.team or NONE_KEY
        return self.run_id

    @property
    def label(self) -> str:
        return self.run_name or self.run_id[:8]


@dataclass
class GroupCost:
    """Sums over the counted runs of one experiment / model / team."""

    level: str
    key: str
    runs: int = 0
    untracked: int = 0
    nested: int = 0
    cost_usd: float = 0.0
    idle_cost_usd: float = 0.0
    cpu_core_hours: float = 0.0
    gpu_hours: float = 0.0
    energy_kwh: float = 0.0
    co2e_kg: float = 0.0
    cpu_allocated_core_hours: float = 0.0
    best_metric: float | None = None
    best_run_id: str | None = None
    best_run_cost_usd: float | None = None

    @property
    def cpu_efficiency(self) -> float | None:
        if self.cpu_allocated_core_hours <= 0:
            return None
        return self.cpu_core_hours / self.cpu_allocated_core_hours

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["cpu_efficiency"] = self.cpu_efficiency
        return d


# ===================================================================== one run
def run_cost(run: "Run", names: dict[str, str]) -> tuple[RunCost, dict[str, float]]:
    """The report's row for one MLflow run, and its finite quality metrics (for picking the metric)."""
    info = run.info
    return row_cost(info.run_id, info.run_name, info.experiment_id, info.start_time, info.end_time, info.status,
                    run.data.metrics, run.data.tags, names)


def row_cost(run_id: str, run_name: str | None, experiment_id: str, start_ms: int | None, end_ms: int | None,
             status: str, metrics: Mapping[str, float], tags: Mapping[str, str],
             names: Mapping[str, str]) -> tuple[RunCost, dict[str, float]]:
    """:func:`run_cost` from a run's plain values (what the finops app's projection sends)."""
    m = metrics
    cost = m.get(METRIC_COST_USD)
    tracked = cost is not None and math.isfinite(cost)
    figures = {}
    if tracked:
        figures = {name: _finite(m.get(METRIC_PREFIX + name)) for name in FIGURES}
        figures["cost_usd"] = float(cost)
    row = RunCost(
        run_id=run_id,
        run_name=run_name or tags.get("mlflow.runName", ""),
        experiment_id=experiment_id,
        experiment=names.get(experiment_id, experiment_id),
        start_time=(start_ms or 0) / 1000.0,
        end_time=end_ms / 1000.0 if end_ms else None,
        status=status,
        team=tags.get(TAG_TEAM),
        model=tags.get(TAG_MODEL),
        nested_in=tags.get(TAG_NESTED_IN),
        **figures,
    )
    quality = {k: v for k, v in m.items() if not k.startswith(NOT_QUALITY) and math.isfinite(v)}
    return row, quality


def _finite(v: float | None) -> float | None:
    return float(v) if v is not None and math.isfinite(v) else None


def pick_metric(counts: Counter[str]) -> str | None:
    """The model metric most tracked runs share; well-known quality names win ties."""
    if not counts:
        return None
    top = max(counts.values())
    common = [k for k, n in counts.items() if n == top]
    for name in _PREFERRED:
        for k in common:
            if k.lower() == name or k.lower().endswith(("_" + name, "/" + name)):
                return k
    return sorted(common)[0]


def metric_goal(metric: str | None) -> str:
    """``min`` for metrics whose name says lower is better (loss, error, rmse, ...), else ``max``."""
    return "min" if metric and _LOWER_IS_BETTER.search(metric) else "max"


def with_metric(r: RunCost, value: float | None) -> RunCost:
    return replace(r, metric=value)


# ===================================================================== roll-ups
def total(runs: Iterable[RunCost], goal: str = "max") -> GroupCost:
    """Every run in one group: the report's total line."""
    g = GroupCost("total", "total")
    for r in runs:
        add(g, r, goal)
    return g


def check_level(by: str) -> None:
    """Raise :class:`ReportError` naming the levels when ``by`` is not one of them."""
    if by not in GROUP_LEVELS:
        raise ReportError(f"cannot group by {by!r} (expected one of: {', '.join(GROUP_LEVELS)})")


def groups(runs: Iterable[RunCost], by: str, goal: str = "max") -> list[GroupCost]:
    """Roll-up per experiment / model / team, most expensive first (ties by key)."""
    check_level(by)
    out: dict[str, GroupCost] = {}
    for r in runs:
        key = r.key(by)
        add(out.setdefault(key, GroupCost(by, key)), r, goal)
    return by_cost(out.values())


def by_cost(groups: Iterable[GroupCost]) -> list[GroupCost]:
    """Groups most expensive first (ties by key)."""
    return sorted(groups, key=lambda g: (-g.cost_usd, g.key))


def add(g: GroupCost, r: RunCost, goal: str) -> None:
    """Count one run into a group: untracked and nested runs are counted, not summed."""
    if add_sums(g, r) and r.metric is not None and (g.best_metric is None or _better(r.metric, g.best_metric, goal)):
        g.best_metric, g.best_run_id, g.best_run_cost_usd = r.metric, r.run_id, r.cost_usd


def add_sums(g: GroupCost, r: RunCost) -> bool:
    """:func:`add` but the best run (chosen later, once the metric is known); True when the run is summed."""
    if not r.tracked:
        g.untracked += 1
        return False
    if r.nested_in is not None:
        g.nested += 1
        return False
    g.runs += 1
    # the figures a group sums (GroupCost's float fields), one line each: every run is added into
    # four groups, so this is a report's inner loop
    g.cost_usd += r.cost_usd or 0.0
    g.idle_cost_usd += r.idle_cost_usd or 0.0
    g.cpu_core_hours += r.cpu_core_hours or 0.0
    g.gpu_hours += r.gpu_hours or 0.0
    g.energy_kwh += r.energy_kwh or 0.0
    g.co2e_kg += r.co2e_kg or 0.0
    g.cpu_allocated_core_hours += r.cpu_allocated_core_hours or 0.0
    return True


def _better(a: float, b: float, goal: str) -> bool:
    return a > b if goal == "max" else a < b


def sorted_runs(runs: Iterable[RunCost]) -> list[RunCost]:
    """Tracked runs by cost (most expensive first), then untracked ones, newest first."""
    runs = list(runs)
    tracked = sorted((r for r in runs if r.tracked), key=lambda r: -(r.cost_usd or 0.0))
    untracked = sorted((r for r in runs if not r.tracked), key=lambda r: -r.start_time)
    return tracked + untracked
