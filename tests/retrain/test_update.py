"""The update on real scikit-learn models: which path a model allows, the columns it learns,
the challenger fitted or stopped at the cap, and the evaluation (no files, no MLflow, no Ray)."""

from __future__ import annotations

import re
import threading

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LinearRegression, SGDClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier

from mlflow_finops.policy import ModelPolicy, RetrainPolicy
from mlflow_finops.retrain.update import (
    CapReached,
    ColumnError,
    evaluate,
    feature_columns,
    refit_all,
    refit_when_small,
    update,
    update_path,
)


@pytest.mark.parametrize(
    "features, drop, champion_cols, data_cols, expected",
    [
        ([], ["id"], [], ["id", "a", "b", "y"], ["a", "b"]),  # every column but target and drop
        (["b"], [], [], ["id", "a", "b", "y"], ["b"]),
        ([], ["id"], ["b", "a"], ["id", "a", "b", "y"], ["b", "a"]),  # the champion's order
        (["a", "b"], [], ["b", "a"], ["a", "b", "y"], ["b", "a"]),
    ],
)
def test_feature_columns(features, drop, champion_cols, data_cols, expected) -> None:
    mp = ModelPolicy(target="y", features=features, drop=drop)
    assert feature_columns(mp, data_cols, _Fitted(champion_cols), "new data") == expected


@pytest.mark.parametrize(
    "features, drop, champion_cols, data_cols, message",
    [
        (["a", "c"], [], [], ["a", "b", "y"], "new data has no feature column 'c'"),
        ([], [], ["a", "c"], ["a", "y"], "new data has no feature column 'c'"),
        ([], [], ["a"], ["id", "a", "y"], "the champion did not learn 'id' (add it to drop)"),
        (["a"], [], ["a", "b"], ["a", "b", "y"], "the policy leaves out 'b', which the champion learned"),
        (["a", "b"], [], ["a"], ["a", "b", "y"], "the champion did not learn 'b' (remove it from features)"),
    ],
)
def test_feature_columns_name_what_is_missing_or_differs(features, drop, champion_cols, data_cols,
                                                         message) -> None:
    mp = ModelPolicy(target="y", features=features, drop=drop)
    with pytest.raises(ColumnError, match=re.escape(message)):
        feature_columns(mp, data_cols, _Fitted(champion_cols), "new data")


class _Fitted:
    """A fitted model as feature_columns sees it (scikit-learn's ``feature_names_in_`` when fitted on a frame)."""

    def __init__(self, columns: list[str]) -> None:
        if columns:
            self.feature_names_in_ = np.array(columns, dtype=object)


@pytest.mark.parametrize(
    "model, strategy, path",
    [
        (make_pipeline(StandardScaler(), SGDClassifier()), "auto", "partial_fit"),
        (RandomForestClassifier(), "auto", "warm_start"),
        (DecisionTreeClassifier(), "auto", "refit"),
        (RandomForestClassifier(), "refit", "refit"),
    ],
)
def test_update_path(model, strategy: str, path: str) -> None:
    assert update_path(model, strategy) == path


def test_update_stops_at_the_cap_and_grows_a_forest_otherwise() -> None:
    rng = np.random.default_rng(0)
    X = pd.DataFrame(rng.normal(size=(200, 3)), columns=["a", "b", "c"])
    y = pd.Series((X["a"] > 0).astype(int))
    champion = RandomForestClassifier(n_estimators=5, random_state=0).fit(X, y)
    rp = RetrainPolicy(warm_start_step=3, warm_start_steps=2)
    grown = update(champion, X, y, "warm_start", rp, threading.Event(), None, "y")
    assert grown.n_estimators == 11 and champion.n_estimators == 5  # the champion is untouched
    stop = threading.Event()
    stop.set()
    with pytest.raises(CapReached):
        update(champion, X, y, "warm_start", rp, stop, None, "y")


def test_refit_learns_the_reference_and_the_new_rows_on_the_given_columns_only() -> None:
    X = pd.DataFrame({"x": np.arange(10.0)})
    y = pd.Series(2 * X["x"])
    reference = pd.DataFrame({"id": range(5), "x": np.arange(5.0), "y": 2 * np.arange(5.0)})
    refit = update(LinearRegression().fit(X, y), X, y, "refit", RetrainPolicy(), threading.Event(), reference, "y")
    assert list(refit.feature_names_in_) == ["x"]  # the reference's id column is not learned


def test_evaluate_follows_the_metric_direction_and_the_margin() -> None:
    X = pd.DataFrame({"x": np.arange(20.0)})
    y = pd.Series(2 * X["x"])
    good = LinearRegression().fit(X, y)
    bad = LinearRegression().fit(X, y + 5)
    assert evaluate(bad, good, X, y, RetrainPolicy(metric="rmse")).better  # lower rmse is better
    assert not evaluate(good, bad, X, y, RetrainPolicy(metric="rmse")).better
    assert evaluate(bad, good, X, y, RetrainPolicy(metric="r2")).better
    close = evaluate(bad, good, X, y, RetrainPolicy(metric="rmse", margin=10.0))
    assert close.champion == pytest.approx(5.0) and close.challenger == pytest.approx(0.0, abs=1e-9)
    assert not close.better  # better by 5, not by more than the margin


@pytest.mark.parametrize(
    "strategy, path, learned, new, refits",
    [
        ("auto", "warm_start", 60, 40, True),  # 100 rows: at the limit, refit
        ("auto", "warm_start", 61, 40, False),  # 101 rows: the update
        ("auto", "partial_fit", 10, 10, True),
        ("warm_start", "warm_start", 10, 10, False),  # a strategy the policy names is kept
        ("auto", "refit", 10, 10, False),  # already a refit: nothing to say
        ("auto", "warm_start", None, 10, False),  # nothing learned to refit on
    ],
)
def test_auto_refits_only_small_data(strategy: str, path: str, learned: int | None, new: int, refits: bool) -> None:
    rp = RetrainPolicy(strategy=strategy, refit_max_rows=100)
    reference = None if learned is None else pd.DataFrame({"x": range(learned)})
    why = refit_when_small(rp, path, reference, new)
    assert bool(why) is refits
    if refits:
        assert why.startswith(f"{learned} learned + {new} new rows <= refit_max_rows=100")
    assert refit_when_small(RetrainPolicy(refit_max_rows=0), "warm_start", pd.DataFrame({"x": [1]}), 1) == ""


def test_a_winning_refit_is_fitted_again_only_while_small() -> None:
    rp = RetrainPolicy(refit_max_rows=100)
    assert refit_all(rp, pd.DataFrame({"x": range(60)}), 40)  # 100: at the limit
    assert not refit_all(rp, pd.DataFrame({"x": range(61)}), 40)
    assert refit_all(rp, None, 100) and not refit_all(rp, None, 101)
