"""examples/retrain_loop.py on any data set: the time-order cut, the policy it writes, the features."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import retrain_loop as ex  # noqa: E402

from mlflow_finops.policy import DriftPolicy, TriggerPolicy, load_policy  # noqa: E402


def _frame(rows: int) -> pd.DataFrame:
    return pd.DataFrame({"t": range(rows), "a": range(rows), "id": range(rows), "y": [i % 3 for i in range(rows)]})


def _policy(tmp_path: Path, **kw):
    args = dict(model="m", registered="m-reg", experiment="exp", target="y", features=["a", "t"], drop=["id"],
                ray_address="http://127.0.0.1:40001")
    path = tmp_path / "finops.toml"
    path.write_text(ex.policy_text(**{**args, **kw}))
    return load_policy(path)


def test_policy_names_the_data_and_keeps_the_gate_and_trigger_defaults(tmp_path: Path) -> None:
    policy = _policy(tmp_path)
    mp = policy.models["m"]
    assert (mp.target, mp.features, mp.drop, mp.registered_model) == ("y", ["a", "t"], ["id"], "m-reg")
    assert mp.experiment == "exp/monitoring"
    assert policy.retrain.ray_address == "http://127.0.0.1:40001"
    assert policy.drift == DriftPolicy() and mp.drift is None  # no drift_share or other gate keys
    assert policy.trigger == TriggerPolicy() and mp.trigger is None
    assert "m-monthly" in policy.budgets


def test_extra_policy_is_added_and_a_repeated_section_is_refused(tmp_path: Path) -> None:
    policy = _policy(tmp_path, extra="[drift]\ndrift_share = 0.3\n\n[trigger]\ntolerated_loss = 0.02\n")
    assert policy.drift.drift_share == 0.3 and policy.trigger.tolerated_loss == 0.02
    with pytest.raises(ValueError, match=r"\[models.m.retrain\]"):
        ex.policy_text(model="m", registered="r", experiment="e", target="y", features=["a"], drop=[],
                       ray_address=None, extra="[retrain]\nmargin = 0.1\n")


def test_no_ray_address_names_no_cluster(tmp_path: Path) -> None:
    assert _policy(tmp_path, ray_address=None).retrain.ray_address is None


def test_features_default_to_every_column_but_target_and_drop() -> None:
    ref = _frame(10)
    assert ex.resolve_features(ref, "y", None, ["id"]) == ["t", "a"]
    assert ex.resolve_features(ref, "y", ["a"], ()) == ["a"]
    with pytest.raises(ValueError, match="'nope'"):
        ex.resolve_features(ref, "y", ["a", "nope"], ())
