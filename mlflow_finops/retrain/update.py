"""The update itself, pure scikit-learn: which path a model allows, the columns it learns,
the challenger fitted, and champion and challenger judged on the held-out rows.

No MLflow, no Ray, no files: :mod:`.job` reads the data and the registry and hands the
frames here; everything here is a function of its arguments (and ``stop``, set when the
run's cost reaches its cap).
"""

from __future__ import annotations

import copy
import threading
from typing import Any

import pandas as pd

from ..policy import ModelPolicy, RetrainPolicy
from ..scoring import score
from .promotion import Evaluation

__all__ = [
    "CapReached",
    "ColumnError",
    "feature_columns",
    "update_path",
    "refit_when_small",
    "refit_all",
    "classes_block",
    "update",
    "evaluate",
]


class CapReached(Exception):
    """The run's cost reached its cap: stop training, promote nothing."""


class ColumnError(ValueError):
    """A column the retrain needs is not in the data, or the policy's columns are not the champion's."""



def feature_columns(mp: ModelPolicy, columns: Any, champion: Any, where: str) -> list[str]:
    """The columns the model learns, in the champion's order when it knows its own
    (``feature_names_in_``), else the policy's or the data's; :class:`ColumnError` naming what
    is missing from ``where`` or differs between the policy and the champion."""
    present = set(columns)
    excluded = {mp.target, *mp.drop}
    wanted = list(mp.features) or [c for c in columns if c not in excluded]
    learned = [str(c) for c in getattr(champion, "feature_names_in_", [])]
    need = learned or wanted
    missing = [c for c in dict.fromkeys([*need, *mp.features]) if c not in present]
    if missing:
        raise ColumnError(f"{where} has no feature column {', '.join(map(repr, missing))}")
    if learned and set(learned) != set(wanted):
        extra = [c for c in wanted if c not in learned]
        lacking = [c for c in learned if c not in wanted]
        fix = "remove it from features" if mp.features else "add it to drop"
        parts = ([f"the champion did not learn {', '.join(map(repr, extra))} ({fix})"] if extra else []) + (
            [f"the policy leaves out {', '.join(map(repr, lacking))}, which the champion learned"] if lacking else [])
        raise ColumnError("features differ from the champion's: " + "; ".join(parts))
    return need


def update_path(model: Any, strategy: str) -> str:
    """Which update the model allows: partial_fit, warm_start, or refit."""
    est = model[-1] if hasattr(model, "steps") else model
    if strategy != "auto":
        return strategy
    if hasattr(est, "partial_fit"):
        return "partial_fit"
    if "warm_start" in est.get_params() and ("n_estimators" in est.get_params() or "max_iter" in est.get_params()):
        return "warm_start"
    return "refit"


def refit_when_small(rp: RetrainPolicy, path: str, reference: pd.DataFrame | None, new_rows: int) -> str:
    """Why ``auto`` refits instead of updating ('' when it does not): what the champion learned plus
    the new rows are at most ``refit_max_rows``. On data that small a refit costs about what an update
    does (a retrain's fixed part dominates both), and it adapts fully where an update adds trees the
    old ones outvote."""
    if rp.strategy != "auto" or path == "refit" or reference is None or not refit_all(rp, reference, new_rows):
        return ""
    return (f"{len(reference):,} learned + {new_rows:,} new rows <= refit_max_rows={rp.refit_max_rows:,}: "
            f"a refit costs about what an update does and learns everything anew")


def refit_all(rp: RetrainPolicy, reference: pd.DataFrame | None, new_rows: int) -> bool:
    """Whether ``reference`` plus ``new_rows`` are at most ``refit_max_rows``: small enough that
    ``auto`` refits, and that a winning refit is fitted again with its held-out rows (a second
    fit of a big refit would double its cost)."""
    return (0 if reference is None else len(reference)) + new_rows <= rp.refit_max_rows


def classes_block(model: Any, y: pd.Series, path: str) -> str:
    """Why ``path`` cannot update a classifier on labels ``y`` ('' when it can).

    Trees added by a warm start must know the champion's classes, all of them
    (a forest averages their probabilities class by class); ``partial_fit``
    accepts only the classes it was first given.
    """
    est = model[-1] if hasattr(model, "steps") else model
    known = getattr(est, "classes_", None)
    if known is None or path not in ("warm_start", "partial_fit"):
        return ""
    seen = set(pd.unique(y.dropna()))
    known_set = set(known.tolist())
    if path == "partial_fit" and seen <= known_set:
        return ""
    if path == "warm_start" and seen == known_set:
        return ""
    return (f"the new rows hold classes {sorted(map(str, seen))} where the champion knows "
            f"{sorted(map(str, known_set))}: {path} cannot change the class set")


def update(model: Any, X: pd.DataFrame, y: pd.Series, path: str, rp: RetrainPolicy,
           stop: threading.Event, reference: pd.DataFrame | None, target: str) -> Any:
    """Return the updated (challenger) model; raises CapReached when ``stop`` is set."""
    challenger = copy.deepcopy(model)
    is_pipe = hasattr(challenger, "steps")
    est = challenger[-1] if is_pipe else challenger
    # the fitted preprocessing is kept: the estimator was trained on its output
    Xt = challenger[:-1].transform(X) if is_pipe and len(challenger.steps) > 1 else X
    if path == "partial_fit":
        n = len(y)
        for _ in range(rp.partial_fit_epochs):
            for i in range(0, n, rp.batch_rows):
                if stop.is_set():
                    raise CapReached()
                est.partial_fit(Xt[i : i + rp.batch_rows], y.iloc[i : i + rp.batch_rows])
        return challenger
    if path == "warm_start":
        size_param = "n_estimators" if "n_estimators" in est.get_params() else "max_iter"
        est.set_params(warm_start=True)
        for _ in range(rp.warm_start_steps):
            if stop.is_set():
                raise CapReached()
            est.set_params(**{size_param: est.get_params()[size_param] + rp.warm_start_step})
            est.fit(Xt, y)
        return challenger
    # refit: from scratch on what the model knew (the reference) plus the new data, X's columns only
    from sklearn.base import clone

    frames = [X.assign(**{target: y.values})]
    if reference is not None:
        frames.insert(0, reference[[*X.columns, target]])
    full = pd.concat(frames, ignore_index=True)
    if stop.is_set():
        raise CapReached()
    return clone(model).fit(full[list(X.columns)], full[target])


def evaluate(champion: Any, challenger: Any, X: pd.DataFrame, y: pd.Series, rp: RetrainPolicy) -> Evaluation:
    """Both models scored on the same held-out rows, with the policy's metric and margin."""
    return Evaluation(rp.metric, score(champion, X, y, rp.metric), score(challenger, X, y, rp.metric), rp.margin)
