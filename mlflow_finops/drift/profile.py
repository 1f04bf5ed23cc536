"""The reference, fitted once: which columns are judged, their types, sizes and levels.

Like an estimator's ``fit``: :meth:`ReferenceProfile.fit` reads the reference
and the policy once (types inferred by Evidently unless a DataDefinition
declares them); :meth:`ReferenceProfile.validate` then says, naming the
column, why a current frame cannot be compared with it.

±inf, the stated rule (both sides): a judged column with no finite value is a
:class:`DataInputError`; otherwise its ±inf values are treated as missing
(:func:`finite` replaces them by NaN and counts them, for the decision to say).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd

from ..frames import DataInputError
from ..policy import DriftPolicy
from .evidently_judge import infer_type
from .results import ColumnType

if TYPE_CHECKING:  # pragma: no cover
    from .evidently_judge import DataDefinition

__all__ = ["Infinite", "ReferenceProfile", "dtype_family", "finite"]

_HEAD_ROWS = 10_000  # rows whose distinct values settle a cardinality question on big frames


def dtype_family(s: pd.Series) -> str:
    """The dtype's family (numeric, bool, datetime, label): a change of family is a schema change."""
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


@dataclass(frozen=True)
class ReferenceProfile:
    """The reference frame and what was learned from it once."""

    frame: pd.DataFrame  # ±inf in the judged columns replaced by NaN
    features: list[str]  # the judged columns, in order
    types: dict[str, ColumnType]
    nonnull: dict[str, int]  # non-null (finite) values per judged column
    levels: dict[str, frozenset]  # distinct values of each categorical column
    allowed: frozenset[str]  # columns a current frame may have: the reference's, ignored ones, the target
    infinite: Infinite  # the reference's ±inf values, treated as missing

    @classmethod
    def fit(
        cls,
        reference: pd.DataFrame,
        policy: DriftPolicy,
        target: str | None = None,
        data_definition: "DataDefinition | None" = None,
    ) -> "ReferenceProfile":
        """Columns to judge (policy ``columns``/``ignore``, the target left out) and their types.

        :class:`DataInputError` names what makes the reference unusable.
        """
        ref = reference
        if len(ref) == 0:
            raise DataInputError("reference data is empty (0 rows)")
        dup = ref.columns[ref.columns.duplicated()].tolist()
        if dup:
            raise DataInputError(f"reference data has duplicate column(s) {_names(dup)}")
        skip = set(policy.ignore) | ({target} if target else set())
        if target and target not in ref.columns:
            raise DataInputError(f"reference data lacks the target column {target!r}")
        unknown = [c for c in [*policy.columns, *policy.per_column] if c not in ref.columns]
        if unknown:
            raise DataInputError(f"policy names column(s) {_names(unknown)} that the reference data lacks")
        declared: dict[str, ColumnType] = {}
        if data_definition is not None:
            for c in data_definition.numerical_columns or []:
                declared[c] = "numerical"
            for c in data_definition.categorical_columns or []:
                declared[c] = "categorical"
            missing = [c for c in declared if c not in ref.columns]
            if missing:
                raise DataInputError(f"DataDefinition names column(s) {_names(missing)} absent from the reference")
        if policy.columns:
            candidates = list(policy.columns)
        else:
            candidates = list(declared) if data_definition is not None else list(ref.columns)
        features = [c for c in candidates if c not in skip]
        if not features:
            raise DataInputError("no columns left to check (all ignored or none declared)")
        nonnull = {c: _require_values(ref[c], c, "reference") for c in features}
        ref, infinite = finite(ref, features)
        types = {c: _column_type(ref[c], c, declared.get(c)) for c in features}
        return cls(
            frame=ref,
            features=features,
            types=types,
            nonnull={c: nonnull[c] - infinite.values.get(c, 0) for c in features},  # ±inf became missing
            levels={c: _levels(ref[c]) for c in features if types[c] == "categorical"},
            allowed=frozenset(ref.columns) | skip,
            infinite=infinite,
        )

    def validate(self, current: pd.DataFrame) -> None:
        """Raise :class:`DataInputError` naming the column when ``current`` cannot be compared."""
        if len(current) == 0:
            raise DataInputError("current data is empty (0 rows)")
        dup = current.columns[current.columns.duplicated()].tolist()
        if dup:
            raise DataInputError(f"current data has duplicate column(s) {_names(dup)}")
        missing = [c for c in self.features if c not in current.columns]
        if missing:
            raise DataInputError(f"current data lacks column(s) {_names(missing)} that the reference has")
        extra = [c for c in current.columns if c not in self.allowed]
        if extra:
            raise DataInputError(
                f"current data has column(s) {_names(extra)} that the reference lacks "
                "(add them to [drift].ignore to skip them)"
            )
        for c in self.features:
            r, s = self.frame[c], current[c]
            if dtype_family(r) != dtype_family(s):
                raise DataInputError(f"column {c!r}: dtype changed from {r.dtype} (reference) to {s.dtype} (current)")
            _require_values(s, c, "current")
            if self.types[c] == "categorical":
                levels = _levels(s)
                if levels and not (levels & self.levels[c]):
                    show = lambda xs: sorted(map(repr, xs))[:5]  # noqa: E731
                    raise DataInputError(
                        f"column {c!r}: no category of the current data occurs in the reference "
                        f"(current {show(levels)}, reference {show(self.levels[c])}); "
                        "were the levels re-encoded? Map them, or ignore the column"
                    )

    def distinct_over(self, column: str, current: pd.Series, k: int) -> bool:
        """Whether reference+current hold more than ``k`` distinct values; cheap on big frames.

        A head of the data with more than k values settles it; only
        low-cardinality columns pay for a full pass.
        """
        ref = self.frame[column]
        for part in (ref.iloc[:_HEAD_ROWS], current.iloc[:_HEAD_ROWS]):
            if part.nunique() > k:
                return True
        return pd.concat([ref.drop_duplicates(), current.drop_duplicates()]).nunique() > k


def _infinite(s: pd.Series) -> int:
    """How many ±inf values a column holds (0 for non-float columns, which cannot hold them)."""
    if not pd.api.types.is_float_dtype(s.dtype):
        return 0
    return int(np.isinf(s.to_numpy(dtype=float, na_value=np.nan)).sum())


def _levels(s: pd.Series) -> frozenset[Any]:
    """A categorical column's values, missing left out (dropped from its few distinct values, not its rows)."""
    return frozenset(v for v in s.unique() if not pd.isna(v))


def _require_values(s: pd.Series, column: str, side: str) -> int:
    """A column must hold at least one finite value: all NaN or ±inf is nothing to compare.

    Returns its non-null count (±inf counted), so that the caller need not count again.
    """
    inf = _infinite(s)
    count = int(s.count())
    if count - inf > 0:
        return count
    if inf:
        raise DataInputError(
            f"column {column!r} has no finite value in the {side} data ({inf} of {len(s)} are ±inf, the rest NaN)"
        )
    raise DataInputError(f"column {column!r} is all NaN in the {side} data")


@dataclass(frozen=True)
class Infinite:
    """The ±inf values a frame held in its judged columns: per column, and rows with any."""

    values: dict[str, int] = field(default_factory=dict)
    rows: int = 0


def finite(df: pd.DataFrame, columns: Sequence[str]) -> tuple[pd.DataFrame, Infinite]:
    """``df`` with ±inf in ``columns`` replaced by NaN (treated as missing), and what was replaced.

    The frame is copied only when some column holds ±inf.
    """
    counts = {c: n for c in columns if (n := _infinite(df[c]))}
    if not counts:
        return df, Infinite()
    cols = list(counts)
    rows = int(np.isinf(df[cols].to_numpy(dtype=float, na_value=np.nan)).any(axis=1).sum())
    out = df.copy(deep=False)
    for c in cols:
        out[c] = df[c].replace([np.inf, -np.inf], np.nan)
    return out, Infinite(counts, rows)


def _column_type(s: pd.Series, column: str, declared: ColumnType | None) -> ColumnType:
    """A column's declared type, checked against its dtype, or the type Evidently infers."""
    if declared is not None:
        if declared == "numerical" and dtype_family(s) != "numeric":
            raise DataInputError(f"column {column!r} is declared numerical but has dtype {s.dtype} in the reference")
        return declared
    inferred = infer_type(s)
    if inferred not in ("numerical", "categorical"):
        raise DataInputError(
            f"column {column!r}: Evidently infers type {inferred!r} (dtype {s.dtype}), which the "
            "gate does not judge; add it to [drift].ignore or declare it in a DataDefinition"
        )
    return inferred  # type: ignore[return-value]
