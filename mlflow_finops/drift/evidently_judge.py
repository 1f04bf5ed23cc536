"""Evidently, in one place: column types, stat-test methods and thresholds, the drift Report.

This is the only module of mlflow-finops that imports ``evidently`` (lazily, so
that importing the gate stays cheap). Evidently 0.7 returns a drift *score* per
column; turning scores into verdicts is :mod:`mlflow_finops.stattests` and
:mod:`.rules`.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

import pandas as pd

from ..policy import PolicyError
from .results import ColumnType

if TYPE_CHECKING:  # pragma: no cover
    from evidently import DataDefinition  # the type of DriftGate(data_definition=...), named here

__all__ = [
    "ColumnSpec", "DataDefinition", "default_method", "infer_type", "resolve_method", "score_columns", "run_report",
]

_SMALL_REFERENCE = 1000  # Evidently: <= this many reference values -> p-value tests, else distances
_INTEGER_CARDINALITY_LIMIT = 10  # evidently.core.datasets: integer columns with <= this many values are categorical


class _LazyPackage(types.ModuleType):
    """The ``evidently`` package before its ``__init__`` ran; it runs it when first asked for a name."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        self.__class__ = types.ModuleType  # complete once, then behave as the real package
        self.__spec__.loader.exec_module(self)  # type: ignore[union-attr]
        return getattr(self, name)


def _light_evidently() -> None:
    """Let Evidently's stat-test modules load without the package's ``__init__``.

    That ``__init__`` imports every metric, test, descriptor and UI module
    (~4 of the ~6 CPU-s an ``import evidently`` takes here); a check needs only
    the stat tests. The package module is registered empty and completes
    itself on the first name asked of it, so ``from evidently import Report``
    (the HTML report) and any later import of Evidently work as usual.
    """
    if "evidently" in sys.modules:
        return
    spec = importlib.util.find_spec("evidently")
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return  # let the real import say what is wrong
    module = _LazyPackage("evidently")
    module.__spec__, module.__loader__, module.__file__ = spec, spec.loader, spec.origin
    module.__path__, module.__package__ = list(spec.submodule_search_locations), "evidently"
    sys.modules["evidently"] = module


class ColumnSpec(Protocol):
    """What one ValueDrift metric needs: a column, its type, and the method to pass by name (or not)."""

    @property
    def column(self) -> str: ...
    @property
    def type(self) -> ColumnType: ...
    @property
    def method(self) -> str: ...
    @property
    def threshold(self) -> float: ...
    @property
    def by_name(self) -> bool: ...


def infer_type(s: pd.Series) -> str:
    """``numerical`` or ``categorical`` as Evidently infers them; another type's name (``datetime``...).

    Evidently 0.7's rule (``evidently.core.datasets.infer_column_type``),
    restated: importing that module loads all of Evidently (~4 CPU-s) for a
    rule of a few lines. ``tests/drift/test_evidently_judge.py`` checks that
    both agree on every kind of column.
    """
    dtype = s.dtype.name
    if dtype.startswith("float"):
        return "numerical"
    if dtype.startswith("int"):
        return "categorical" if s.nunique() <= _INTEGER_CARDINALITY_LIMIT else "numerical"
    if dtype in ("string", "str"):
        return "text" if s.nunique() > s.count() * 0.5 else "categorical"
    if dtype == "object":
        values = s.dropna()  # one pass for missing values: ~20 ms a 1M-row column
        if len(values) == 0:
            return "unknown"
        if isinstance(values.iloc[0], str) and isinstance(values.iloc[-1], str):
            return "text" if values.nunique() > len(values) * 0.5 else "categorical"
        if isinstance(values.iloc[0], (list, tuple)) and isinstance(values.iloc[-1], (list, tuple)):
            return "list"
        return "unknown"
    if dtype in ("bool", "category"):
        return "categorical"
    if dtype.startswith("datetime"):
        return "datetime"
    return "unknown"


def default_method(ctype: ColumnType, n_reference: int, distinct_over: Callable[[int], bool]) -> str:
    """The stat test Evidently picks by default (``registry._get_default_stattest``).

    ``n_reference`` is the reference's non-null size; ``distinct_over(k)`` says
    whether reference and current hold more than ``k`` distinct values.
    """
    big = n_reference > _SMALL_REFERENCE
    if ctype == "categorical":
        if big:
            return "jensenshannon"
        return "chisquare" if distinct_over(2) else "z"
    few = not distinct_over(5)
    if big:
        return "jensenshannon" if few else "wasserstein"
    if few:
        return "chisquare" if distinct_over(2) else "z"
    return "ks"


def resolve_method(
    column: str,
    ctype: ColumnType,
    method: str | None,
    threshold: float | None,
    n_reference: int,
    distinct_over: Callable[[int], bool],
) -> tuple[str, float, bool]:
    """Method and threshold as Evidently would pick them on the *full* frames, and whether
    the method can be passed to Evidently by name.

    ``method``/``threshold`` are the policy's choice (None: Evidently's default).
    """
    _light_evidently()
    from evidently.legacy.calculations.stattests.registry import get_registered_stattest
    from evidently.legacy.core import ColumnType as EvidentlyType

    chosen = method is not None
    name = method if method is not None else default_method(ctype, n_reference, distinct_over)
    try:
        test = get_registered_stattest(
            name, EvidentlyType.Numerical if ctype == "numerical" else EvidentlyType.Categorical
        )
    except ValueError as exc:
        if chosen:
            raise PolicyError("drift policy", [f"column {column!r}: {exc}"]) from None
        # Evidently's own default for a numerical column with <= 5 values on a small
        # reference is chi-square / Z, which it will not accept by name for that type:
        # let it pick (the frames are not cut for these tests, so its pick is the same)
        test = get_registered_stattest(name, EvidentlyType.Categorical)
        return name, float(threshold if threshold is not None else test.default_threshold), False
    return name, float(threshold if threshold is not None else test.default_threshold), True


def score_columns(ref: pd.DataFrame, cur: pd.DataFrame, specs: Sequence[ColumnSpec]) -> dict[str, float]:
    """Evidently's drift score of each column, without its report.

    The same stat test, on the same cleaned values, as the ``ValueDrift``
    metric of :func:`run_report` computes (``get_stattest`` from Evidently's
    registry, on the column with ±inf and missing values dropped), but without
    the per-column plotly widget a Report renders (~0.15 s a column whatever
    the rows). The report is built only when a person will look at it.
    """
    import numpy as np

    _light_evidently()
    from evidently.legacy.calculations.stattests.registry import get_stattest
    from evidently.legacy.core import ColumnType as EvidentlyType

    scores: dict[str, float] = {}
    for s in specs:
        ctype = EvidentlyType.Numerical if s.type == "numerical" else EvidentlyType.Categorical
        r = ref[s.column].replace([-np.inf, np.inf], np.nan).dropna()
        c = cur[s.column].replace([-np.inf, np.inf], np.nan).dropna()
        test = get_stattest(r, c, ctype, s.method if s.by_name else None)
        scores[s.column] = float(test(r, c, ctype, s.threshold).drift_score)
    return scores


def run_report(ref: pd.DataFrame, cur: pd.DataFrame, specs: Sequence[ColumnSpec]) -> tuple[dict[str, float], Any]:
    """One Evidently Report of ValueDrift metrics: scores by column, and the snapshot (its HTML report)."""
    from evidently import DataDefinition as Definition
    from evidently import Dataset, Report
    from evidently.metrics import ValueDrift

    dd = Definition(
        numerical_columns=[s.column for s in specs if s.type == "numerical"],
        categorical_columns=[s.column for s in specs if s.type == "categorical"],
    )
    report = Report(
        [ValueDrift(column=s.column, method=s.method if s.by_name else None, threshold=s.threshold) for s in specs],
        include_tests=True,
    )
    snapshot = report.run(Dataset.from_pandas(cur, data_definition=dd), Dataset.from_pandas(ref, data_definition=dd))
    scores: dict[str, float] = {}
    for m in snapshot.dict()["metrics"]:
        cfg = m.get("config", {})
        if cfg.get("type", "").endswith("ValueDrift"):
            scores[cfg["column"]] = float(m["value"])
    return scores, snapshot
