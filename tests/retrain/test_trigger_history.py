"""The trigger's reads and writes on a copied SQLite store: what past retrains bought and cost, the
verdict weighed with that history, and the verdict recorded on the drift check's run."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.entities import Metric, RunTag
from mlflow.tracking import MlflowClient

from mlflow_finops import load_policy
from mlflow_finops.names import (
    METRIC_COST_USD,
    METRIC_TRIGGER_COST,
    METRIC_TRIGGER_GAIN,
    METRIC_TRIGGER_LOSS,
    METRIC_TRIGGER_VALUE,
    TAG_RETRAIN_STATE,
    TAG_TRIGGER,
    TAG_TRIGGER_REASON,
)
from mlflow_finops.policy import PolicyError
from mlflow_finops.retrain.requests import retrain_experiment_name
from mlflow_finops.retrain.trigger import PastRetrain, TriggerVerdict, past_retrains, record_verdict, weigh_retrain
from store_support import copied_store  # noqa: F401


def _retrain(c: MlflowClient, exp_id: str, start: int, state: str | None, cost: float | None = None,
             metric: str = "accuracy", challenger: float | None = None, champion: float | None = None) -> None:
    run = c.create_run(exp_id, start_time=start)
    metrics = {METRIC_COST_USD: cost, f"eval/challenger_{metric}": challenger, f"eval/champion_{metric}": champion}
    c.log_batch(run.info.run_id, metrics=[Metric(k, v, start, 0) for k, v in metrics.items() if v is not None],
                tags=[RunTag(TAG_RETRAIN_STATE, state)] if state else [])


@pytest.fixture
def history(copied_store: str) -> str:
    """Retrains of model m, newest first as listed here (start times fall)."""
    c = MlflowClient()
    exp_id = c.create_experiment(retrain_experiment_name("m"))
    _retrain(c, exp_id, 9000, "running", cost=5.0)  # not ended: not history
    _retrain(c, exp_id, 8000, "promoted", cost=0.004, challenger=0.90, champion=0.85)  # bought 5 pt
    _retrain(c, exp_id, 7000, "promoted", cost=0.002, challenger=0.80, champion=0.85)  # worse: bought 0
    _retrain(c, exp_id, 6000, "not_promoted", cost=0.003, challenger=0.99, champion=0.5)  # not promoted: 0
    _retrain(c, exp_id, 5000, "capped")  # no cost logged: 0
    _retrain(c, exp_id, 4000, "promoted", cost=0.001, challenger=0.9)  # no champion figure: 0
    _retrain(c, exp_id, 3000, None, cost=1.0)  # no state
    _retrain(c, exp_id, 2000, "promoted", cost=0.5, challenger=0.99, champion=0.01)
    return exp_id


def test_past_retrains_are_the_newest_ended_ones_with_what_each_bought(history: str) -> None:
    # none of these has been scored on its next window yet: a promoted one's gain is its in-window one
    c = MlflowClient()
    got = past_retrains(c, history, "accuracy", limit=5)
    assert got == [PastRetrain(pytest.approx(0.05), 0.004, realized=False), PastRetrain(0.0, 0.002, realized=False),
                   PastRetrain(0.0, 0.003), PastRetrain(0.0, 0.0), PastRetrain(0.0, 0.001, realized=False)]
    assert past_retrains(c, history, "accuracy", limit=2) == got[:2]
    assert past_retrains(c, history, "accuracy", limit=6)[-1] == PastRetrain(pytest.approx(0.98), 0.5, realized=False)
    # a lower-is-better metric: the challenger's rmse below the champion's is a gain
    exp_id = c.create_experiment(retrain_experiment_name("r"))
    _retrain(c, exp_id, 1000, "promoted", cost=0.1, metric="rmse", challenger=2.0, champion=2.5)
    assert past_retrains(c, exp_id, "rmse", limit=3) == [PastRetrain(0.5, 0.1, realized=False)]
    assert past_retrains(c, exp_id, "accuracy", limit=3) == [PastRetrain(0.0, 0.1, realized=False)]  # no figures of that metric


def _policy(tmp_path: Path, extra: str = "") -> object:
    (tmp_path / "finops.toml").write_text(
        '[models.m]\nreference = "ref.csv"\n[models.m.retrain]\nexpected_cost_usd = 0.25\n'
        f'[trigger]\nhistory = 2\nvalue_per_point_usd = 0.001\n{extra}'
    )
    return load_policy(tmp_path / "finops.toml")


def test_a_retrain_is_weighed_with_the_models_history(history: str, tmp_path: Path) -> None:
    policy = _policy(tmp_path)
    v = weigh_retrain(policy, "m", signal="drifted", loss=0.01)
    assert isinstance(v, TriggerVerdict) and v.history == 2  # [trigger] history = 2
    assert v.expected_gain == pytest.approx((0.05 + 0.0 + 0.01) / 3)
    assert v.expected_cost_usd == pytest.approx((0.004 + 0.002) / 2)
    assert v.expected_value_usd == pytest.approx(2.0 * 0.001) and not v.retrain
    # the gate gave no reason, but the newest retrain bought 5 pt > the tolerated 1 pt: weighed all the same
    followed = weigh_retrain(policy, "m", signal="no drift", loss=0.0, asked=False)
    assert followed is not None and followed.reason.startswith(
        "no drift; the last retrain bought 5.0 pt, more than the tolerated 1.0 pt")
    assert weigh_retrain(policy, "m", signal="no drift", loss=None, asked=False) is None  # nothing scored
    quiet = _policy(tmp_path, "follow_gains = false\n")
    assert weigh_retrain(quiet, "m", signal="no drift", loss=0.0, asked=False) is None
    with pytest.raises(PolicyError, match="unknown model"):
        weigh_retrain(policy, "nope", signal="drifted", loss=0.01)
    # no labels: weighed on the history alone when the gate asked
    assert weigh_retrain(policy, "m", signal="drifted", loss=None).expected_gain == pytest.approx(0.025)
    # the model's own [models.m.trigger] wins over [trigger]
    own = _policy(tmp_path, "[models.m.trigger]\nhistory = 1\n")
    assert weigh_retrain(own, "m", signal="drifted", loss=0.01).history == 1


def test_past_retrains_are_looked_for_among_the_newest_runs_only(copied_store: str) -> None:
    """A bounded read: the newest 4 x limit + 20 runs of the experiment, however many it holds."""
    c = MlflowClient()
    exp_id = c.create_experiment(retrain_experiment_name("busy"))
    _retrain(c, exp_id, 1000, "promoted", cost=0.5, challenger=0.9, champion=0.8)  # the 25th newest
    for i in range(24):
        _retrain(c, exp_id, 2000 + i, "running", cost=0.1)
    assert past_retrains(c, exp_id, "accuracy", limit=1) == []
    assert past_retrains(c, exp_id, "accuracy", limit=2) == [PastRetrain(pytest.approx(0.1), 0.5, realized=False)]


def test_a_model_without_retrains_is_weighed_with_the_policys_prior_cost(copied_store: str, tmp_path: Path) -> None:
    policy = _policy(tmp_path, "")
    v = weigh_retrain(policy, "m", signal="drifted", loss=0.02, client=MlflowClient())
    assert v.history == 0 and v.expected_cost_usd == 0.25 and v.expected_gain == pytest.approx(0.02)
    assert "expected cost $0.25 (no retrain yet): skip" in v.reason
    assert weigh_retrain(policy, "m", signal="no drift", loss=0.0, asked=False) is None  # no history to follow


def test_the_verdict_is_recorded_on_the_drift_checks_run(copied_store: str) -> None:
    c = MlflowClient()
    run_id = c.create_run(c.get_experiment_by_name("Default").experiment_id).info.run_id
    v = TriggerVerdict(True, "x" * 6000, 0.03, 0.02, None, 0.5, 1)
    record_verdict(c, run_id, v)
    data = c.get_run(run_id).data
    assert data.tags[TAG_TRIGGER] == "retrain" and data.tags[TAG_TRIGGER_REASON] == "x" * 5000
    assert data.metrics == {METRIC_TRIGGER_LOSS: 0.03, METRIC_TRIGGER_GAIN: 0.02, METRIC_TRIGGER_VALUE: 0.5}
    assert METRIC_TRIGGER_COST not in data.metrics  # not known: not logged as a number
    skip = c.create_run(c.get_experiment_by_name("Default").experiment_id).info.run_id
    record_verdict(c, skip, TriggerVerdict(False, "why", None, 0.0, 0.1, 0.0, 2))
    assert c.get_run(skip).data.tags[TAG_TRIGGER] == "skip"
    assert c.get_run(skip).data.metrics == {METRIC_TRIGGER_GAIN: 0.0, METRIC_TRIGGER_COST: 0.1,
                                            METRIC_TRIGGER_VALUE: 0.0}
