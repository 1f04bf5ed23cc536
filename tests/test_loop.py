"""The loop's trigger end to end on a real SQLite store and real Evidently: drift is not harm,
a measured loss is weighed against what past retrains bought and cost, and the verdict is readable."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from drift_support import _template_db, drift_store  # noqa: F401
from mlflow import MlflowClient
from sklearn.linear_model import LogisticRegression

from mlflow_finops.drift.schedule import run_scheduled_check
from mlflow_finops.loop import trigger
from mlflow_finops.names import METRIC_COST_USD, TAG_MODEL, TAG_RETRAIN_STATE, TAG_TRIGGER, TAG_TRIGGER_REASON
from mlflow_finops.policy import load_policy
from mlflow_finops.retrain.requests import open_requests, retrain_experiment_name

FEATURES = ["x0", "x1", "x2", "x3"]


def window(n: int, seed: int, *, shift: float = 0.0, flip: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({c: rng.normal(shift if c in ("x2", "x3") else 0.0, 1.0, n) for c in FEATURES})
    df.insert(0, "row_id", np.arange(n) + seed * 10_000)  # an id: dropped, never judged nor learned
    y = (df.x0 + df.x1 > 0).astype(int)
    df["y"] = 1 - y if flip else y
    return df


@pytest.fixture
def loop_env(drift_store: str, tmp_path: Path):  # noqa: F811
    (tmp_path / "incoming").mkdir()
    ref = window(2000, seed=1)
    ref.to_parquet(tmp_path / "ref.parquet")
    (tmp_path / "finops.toml").write_text(
        '[drift]\nmin_rows = 100\n[trigger]\ntolerated_loss = 0.03\n[models.churn]\nreference = "ref.parquet"\ncurrent = "incoming"\n'
        'schedule = "0 * * * *"\nregistered_model = "churn-reg"\ntarget = "y"\ndrop = ["row_id"]\n'
    )
    with mlflow.start_run():
        model = LogisticRegression().fit(ref[FEATURES], ref.y)
        info = mlflow.sklearn.log_model(model, name="model", registered_model_name="churn-reg",
                                        serialization_format="cloudpickle")
    MlflowClient().set_registered_model_alias("churn-reg", "champion", str(info.registered_model_version))
    return tmp_path, load_policy(tmp_path / "finops.toml")


def _drop(tmp: Path, name: str, df: pd.DataFrame) -> None:
    path = tmp / "incoming" / name
    df.to_parquet(path)
    stamp = datetime.now().timestamp() - 600 + len(list((tmp / "incoming").iterdir()))
    os.utime(path, (stamp, stamp))


def _check(tmp: Path, policy, name: str, df: pd.DataFrame, gates: dict):
    _drop(tmp, name, df)
    out = run_scheduled_check(policy, "churn", gates)
    assert out.status == "checked", out.message
    return out, trigger(policy, "churn", out)


def test_drift_without_harm_spends_nothing_and_a_real_loss_is_weighed(loop_env) -> None:
    tmp, policy = loop_env
    gates: dict = {}
    first, verdict = _check(tmp, policy, "w1.parquet", window(600, seed=2), gates)
    assert verdict is None and first.decision.decision == "no_drift"
    assert "row_id" not in first.decision.columns  # dropped: not judged
    perf = first.decision.performance
    assert perf is not None and perf.baseline == "first labelled window" and perf.version == "1"
    assert "accuracy +0.0 pt since its first labelled window of v1" in first.decision.reason

    # x2, x3 shift far: Evidently sees drift in half the columns, but the model does not use them
    drifted, verdict = _check(tmp, policy, "w2.parquet", window(600, seed=3, shift=3.0), gates)
    d = drifted.decision
    assert set(d.drifted_columns) == {"x2", "x3"} and d.drift_share == pytest.approx(0.5)
    assert verdict is None and d.decision == "no_drift"  # drift is not harm
    assert "2 of 4 columns drifted" in d.reason and "within the tolerated 3.0 pt" in d.reason

    # the labels turn: the champion loses ~all its accuracy, nothing is known of retrains yet -> retrain
    turned, verdict = _check(tmp, policy, "w3.parquet", window(600, seed=4, flip=True), gates)
    assert turned.decision.decision == "retrain" and verdict is not None and verdict.retrain
    assert verdict.loss > 0.5 and verdict.expected_gain == pytest.approx(verdict.loss)
    # the decision carries what it rests on: the measured signal without the verdict, and the loss
    assert turned.decision.reason == turned.decision.signal + ": retrain recommended"
    assert turned.decision.loss == verdict.loss and verdict.reason.startswith(turned.decision.signal)
    assert "cost not known before the first retrain: retrain" in verdict.reason
    client = MlflowClient()
    tags = client.get_run(turned.decision.run_id).data.tags
    assert tags[TAG_TRIGGER] == "retrain" and tags[TAG_TRIGGER_REASON] == verdict.reason
    metrics = client.get_run(turned.decision.run_id).data.metrics
    assert metrics["trigger/loss"] == pytest.approx(verdict.loss)
    exp = client.get_experiment_by_name(retrain_experiment_name("churn"))
    assert len(open_requests(client, exp.experiment_id)) == 1


def test_a_loss_is_skipped_when_past_retrains_bought_less_than_they_cost(loop_env) -> None:
    tmp, policy = loop_env
    client = MlflowClient()
    exp_id = client.create_experiment(retrain_experiment_name("churn"))
    for _ in range(3):  # three retrains that cost $1 each and were never promoted
        run = client.create_run(exp_id, tags={TAG_MODEL: "churn", TAG_RETRAIN_STATE: "not_promoted"})
        client.log_metric(run.info.run_id, METRIC_COST_USD, 1.0)
        client.set_terminated(run.info.run_id)
    gates: dict = {}
    _check(tmp, policy, "w1.parquet", window(600, seed=2), gates)  # the baseline
    turned, verdict = _check(tmp, policy, "w2.parquet", window(600, seed=4, flip=True), gates)
    assert turned.decision.decision == "retrain" and verdict is not None and not verdict.retrain
    assert verdict.expected_cost_usd == pytest.approx(1.0) and verdict.expected_gain == pytest.approx(verdict.loss / 4)
    assert "< expected cost $1.00 (last 3 retrains): skip" in verdict.reason
    assert client.get_run(turned.decision.run_id).data.tags[TAG_TRIGGER] == "skip"
    assert open_requests(client, exp_id) == []


def test_after_a_retrain_that_bought_much_the_next_labelled_window_is_weighed_too(loop_env) -> None:
    tmp, policy = loop_env
    client = MlflowClient()
    exp_id = client.create_experiment(retrain_experiment_name("churn"))
    run = client.create_run(exp_id, tags={TAG_MODEL: "churn", TAG_RETRAIN_STATE: "promoted"})
    for key, value in ((METRIC_COST_USD, 0.0001), ("eval/champion_accuracy", 0.70), ("eval/challenger_accuracy", 0.80)):
        client.log_metric(run.info.run_id, key, value)
    client.set_terminated(run.info.run_id)
    gates: dict = {}
    out, verdict = _check(tmp, policy, "w1.parquet", window(600, seed=2), gates)
    # the gate passes it (no loss), but the last retrain bought 10 pt > the tolerated 3: weighed, retrain
    assert out.decision.decision == "no_drift" and verdict is not None and verdict.retrain
    assert "the last retrain bought 10.0 pt, more than the tolerated 3.0 pt" in verdict.reason
    assert verdict.reason.startswith(out.decision.reason.removesuffix(": no retrain") + "; ")
    assert client.get_run(out.decision.run_id).data.tags[TAG_TRIGGER] == "retrain"
    assert len(open_requests(client, exp_id)) == 1

    # follow_gains = false: the same window leaves it to the gate
    text = (tmp / "finops.toml").read_text().replace("tolerated_loss = 0.03", "tolerated_loss = 0.03\nfollow_gains = false")
    (tmp / "finops.toml").write_text(text)
    out, verdict = _check(tmp, load_policy(tmp / "finops.toml"), "w2.parquet", window(600, seed=5), gates)
    assert out.decision.decision == "no_drift" and verdict is None


def test_a_loss_is_measured_from_the_better_of_promotion_and_first_window(loop_env) -> None:
    """A low score at promotion (0.50) must not hide a drop from what the version has served (~0.99)."""
    tmp, policy = loop_env
    client = MlflowClient()
    client.set_model_version_tag("churn-reg", "1", "finops.accuracy", "0.500000")
    gates: dict = {}
    first, _ = _check(tmp, policy, "w1.parquet", window(600, seed=2), gates)
    perf = first.decision.performance
    assert perf.baseline == "first labelled window" and perf.reference == pytest.approx(perf.current)
    assert client.get_model_version("churn-reg", "1").tags["finops.baseline.accuracy"] == f"{perf.current:.6f}"

    worse = window(600, seed=6)
    worse.loc[worse.index[:120], "y"] = 1 - worse.loc[worse.index[:120], "y"]  # 20% of the labels turn
    out, verdict = _check(tmp, policy, "w2.parquet", worse, gates)
    perf = out.decision.performance
    assert perf.baseline == "first labelled window" and perf.reference == pytest.approx(first.decision.performance.current)
    assert perf.degraded and out.decision.decision == "retrain" and verdict is not None and verdict.retrain
    assert "since its first labelled window of v1" in out.decision.reason

    # a promotion score above the first window's stays the baseline
    client.set_model_version_tag("churn-reg", "1", "finops.accuracy", "0.999900")
    out, _ = _check(tmp, policy, "w3.parquet", window(600, seed=7), gates)
    assert out.decision.performance.baseline == "promotion" and out.decision.performance.reference == 0.9999


def test_drain_returns_each_open_requests_last_step_and_leaves_none_it_ended(loop_env) -> None:
    """A request that cannot run (its budget is spent) ends at its first step; drain says so and
    leaves nothing open (no Ray is reached: the budget is read before any cluster)."""
    from mlflow_finops.loop import drain
    from mlflow_finops.retrain.requests import request_retrain
    from mlflow_finops.retrain.state import RetrainState

    tmp, _ = loop_env
    policy_file = tmp / "finops.toml"
    policy_file.write_text(policy_file.read_text() + '[budgets.tiny]\namount_usd = 0.0001\nmodels = ["churn"]\n')
    policy = load_policy(policy_file)
    client = MlflowClient()
    spent = client.create_run(client.create_experiment("training"), tags={TAG_MODEL: "churn"})
    client.log_metric(spent.info.run_id, METRIC_COST_USD, 1.0)
    client.set_terminated(spent.info.run_id)
    run_id = request_retrain(policy, "churn", reason="test")
    [out] = drain(policy, "churn", timeout_s=60)
    assert out.run_id == run_id and out.state == RetrainState.OUT_OF_BUDGET and out.done
    assert "spent" in out.reason
    assert drain(policy, "churn", timeout_s=60) == []  # nothing left open


def _noisy(n: int, seed: int) -> pd.DataFrame:
    """A window of the reference's concept with 10% of its labels turned: ~90% accuracy at best."""
    df = window(n, seed)
    turned = np.random.default_rng(seed + 99).random(n) < 0.10
    df.loc[turned, "y"] = 1 - df.loc[turned, "y"]
    return df


def _promoted_retrain(client: MlflowClient, exp_id: str, version: str | None, *, parent: str, cost: float,
                      realized: float | None) -> str:
    """A promoted retrain run that bought 20 pt on its held-out rows (and ``version`` its champion)."""
    run = client.create_run(exp_id, tags={TAG_MODEL: "churn", TAG_RETRAIN_STATE: "promoted"})
    rid = run.info.run_id
    for key, value in ((METRIC_COST_USD, cost), ("eval/champion_accuracy", 0.70), ("eval/challenger_accuracy", 0.90)):
        client.log_metric(rid, key, value)
    if realized is not None:
        client.log_metric(rid, "eval/realized_gain", realized)
    client.set_terminated(rid)
    if version is not None:
        for k, v in (("finops.parent_version", parent), ("finops.retrain_run_id", rid), ("finops.accuracy", "0.999")):
            client.set_model_version_tag("churn-reg", version, k, v)
    return rid


def test_a_stream_where_retrains_realize_nothing_stops_retraining(loop_env) -> None:
    """Retrains that bought 20 pt on held-out rows of their own window but realized nothing on the next
    one: the next loss is weighed with what they realized (learned from the gate's own measurement of the
    newest on the window), and skipped; weighed with what they bought in-window it would retrain."""
    tmp, policy = loop_env
    text = (tmp / "finops.toml").read_text().replace("tolerated_loss = 0.03", "tolerated_loss = 0.03\nvalue_per_point_usd = 0.0001")
    (tmp / "finops.toml").write_text(text)
    policy = load_policy(tmp / "finops.toml")
    client = MlflowClient()
    exp_id = client.create_experiment(retrain_experiment_name("churn"))
    for _ in range(2):  # two older retrains: realized nothing on their next windows
        _promoted_retrain(client, exp_id, None, parent="1", cost=0.0005, realized=0.0)
    # the newest: v2, the same model refitted on another sample of the same concept, promoted over v1
    ref = window(2000, seed=11)
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(LogisticRegression().fit(ref[FEATURES], ref.y), name="model",
                                        registered_model_name="churn-reg", serialization_format="cloudpickle")
    v2 = str(info.registered_model_version)
    newest = _promoted_retrain(client, exp_id, v2, parent="1", cost=0.0005, realized=None)
    client.set_registered_model_alias("churn-reg", "champion", v2)

    gates: dict = {}
    out, verdict = _check(tmp, policy, "w1.parquet", _noisy(600, seed=2), gates)
    perf = out.decision.performance
    # the gate scored v2 and the version it replaced on the window: v2 realized (about) nothing
    assert perf.version == v2 and perf.replaced_version == "1" and abs(perf.realized) < 0.01
    logged = client.get_run(newest).data.metrics["eval/realized_gain"]
    assert logged == pytest.approx(perf.realized)
    assert str(client.get_model_version_by_alias("churn-reg", "champion").version) == v2  # within noise: kept
    # v2 lost ~9 pt from its promotion score (0.999): the gate asks; what retrains realized says no
    assert out.decision.decision == "retrain" and verdict is not None and not verdict.retrain, verdict
    assert verdict.expected_gain == pytest.approx((perf.realized + verdict.loss) / 4)
    assert verdict.reason.endswith("< expected cost $0.00050 (last 3 retrains): skip")
    assert open_requests(client, exp_id) == []

    # a realized gain is measured once, on the version's first labelled window: the next window reuses it
    out, verdict = _check(tmp, policy, "w2.parquet", _noisy(600, seed=3), gates)
    assert out.decision.performance.replaced is None and verdict is not None and not verdict.retrain


def test_a_seasonal_stream_keeps_its_old_data(loop_env) -> None:
    """Forward verification: v2 was promoted after it won on held-out rows of a season (the labels turned)
    on which it alone was fitted, forgetting the rest; the old season comes back and v2 loses to v1 on
    that next labelled window (rows neither learned): @champion goes back to v1, which kept the old data,
    and the retrain run says why."""
    tmp, policy = loop_env
    client = MlflowClient()
    exp_id = client.create_experiment(retrain_experiment_name("churn"))
    passed = window(2000, seed=12, flip=True)  # a passing state: the labels turned for a while
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(LogisticRegression().fit(passed[FEATURES], passed.y), name="model",
                                        registered_model_name="churn-reg", serialization_format="cloudpickle")
    v2 = str(info.registered_model_version)
    rid = _promoted_retrain(client, exp_id, v2, parent="1", cost=0.0005, realized=None)
    client.set_registered_model_alias("churn-reg", "champion", v2)
    out, verdict = _check(tmp, policy, "w1.parquet", window(600, seed=2), {})
    perf = out.decision.performance
    assert perf.realized < -0.5 and client.get_run(rid).data.metrics["eval/realized_gain"] == pytest.approx(perf.realized)
    assert str(client.get_model_version_by_alias("churn-reg", "champion").version) == "1"
    assert "rolled back to v1" in client.get_run(rid).data.tags["finops.rolled_back"]
