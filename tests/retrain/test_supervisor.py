"""Budget-limited incremental retraining as real Ray jobs on the session's Ray cluster."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import SGDClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mlflow_finops import DriftGate, load_policy
from mlflow_finops.retrain import RetrainSupervisor, request_retrain

pytest.importorskip("ray")

EXE = str(Path(sys.executable).parent / "mlflow-finops")


def make_data(n: int, shift: float, seed: int) -> pd.DataFrame:
    """Two informative features; after a shift the label boundary moves with the data."""
    rng = np.random.default_rng(seed)
    X = rng.normal(loc=shift, size=(n, 4))
    y = ((X[:, 0] - shift) + 0.5 * (X[:, 1] - shift) + 0.8 * shift * np.sign(X[:, 2]) > 0).astype(int)
    return pd.DataFrame(X, columns=["f0", "f1", "f2", "f3"]).assign(y=y)


POLICY = """
[models.churn]
reference = "ref.csv"
current = "incoming/*.csv"
target = "y"
registered_model = "churn-{tag}"
[models.churn.drift]
min_rows = 100
[models.churn.retrain]
ray_address = "{jobs}"
sample_interval_s = 0.5
poll_s = 0.5
backoff_s = 0
max_attempts = {attempts}
warm_start_step = 30
warm_start_steps = 30
[budgets.churn]
amount_usd = {amount}
per_job_usd = {per_job}
models = ["churn"]
priority = "{priority}"
"""


def setup(tmp_path: Path, ray_cluster, model, *, tag: str, amount: float = 5.0, per_job: float = 1.0,
          priority: str = "standard", attempts: int = 3, extra: str = "", new: pd.DataFrame | None = None,
          fmt: str = "skops"):
    """A policy, a reference file, a registered @champion, then newer data in incoming/."""
    ref = make_data(3000, 0.0, 1)
    ref.to_csv(tmp_path / "ref.csv", index=False)
    (tmp_path / "finops.toml").write_text(
        POLICY.format(tag=tag, jobs=ray_cluster.dashboard_url, amount=amount, per_job=per_job,
                      priority=priority, attempts=attempts) + extra
    )
    model.fit(ref.drop(columns="y"), ref["y"])
    name = f"churn-{tag}"
    with mlflow.start_run():
        serialization = (
            {"skops_trusted_types": ["sklearn.tree._tree.Tree"]} if fmt == "skops" else {"serialization_format": fmt}
        )
        info = mlflow.sklearn.log_model(model, name="model", registered_model_name=name, **serialization)
    MlflowClient().set_registered_model_alias(name, "champion", str(info.registered_model_version))
    time.sleep(0.05)
    (tmp_path / "incoming").mkdir()
    (new if new is not None else make_data(3000, 1.5, 2)).to_csv(tmp_path / "incoming" / "w1.csv", index=False)
    return load_policy(tmp_path / "finops.toml"), name


@pytest.mark.parametrize("fmt", ["skops", "cloudpickle"])
def test_drift_to_promoted_challenger_with_lineage_and_cost(
    tmp_path: Path, ray_cluster, sqlite_uri: str, fmt: str
) -> None:
    policy, name = setup(tmp_path, ray_cluster, make_pipeline(StandardScaler(), SGDClassifier(random_state=0)),
                         tag=f"pf-{fmt}", fmt=fmt)
    gate = DriftGate.from_policy(policy, model="churn")
    decision = gate.check(pd.read_csv(tmp_path / "incoming" / "w1.csv"))
    assert decision.retrain, decision.reason
    run_id = request_retrain(policy, "churn", drift_run_id=decision.run_id)
    assert request_retrain(policy, "churn", drift_run_id=decision.run_id) == run_id  # idempotent
    out = RetrainSupervisor(policy).process(run_id)
    assert out.state == "promoted", out.reason
    c = MlflowClient()
    run = c.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["finops.update_path"] == "partial_fit"
    assert run.data.metrics["finops/cost_usd"] > 0
    assert run.data.metrics["eval/challenger_accuracy"] > run.data.metrics["eval/champion_accuracy"]
    champion = c.get_model_version_by_alias(name, "champion")
    assert str(champion.version) == out.model_version == str(c.get_model_version_by_alias(name, "challenger").version)
    assert champion.tags["finops.retrain_run_id"] == run_id
    assert champion.tags["finops.drift_run_id"] == decision.run_id
    assert float(champion.tags["finops.cost_usd"]) > 0
    assert c.get_run(decision.run_id).data.tags["finops.retrain_run_id"] == run_id
    # the challenger keeps the champion's serialization format
    flavor = mlflow.models.get_model_info(f"models:/{name}@champion").flavors["sklearn"]
    assert flavor["serialization_format"] == fmt


def test_out_of_budget_submits_no_job(tmp_path: Path, ray_cluster, sqlite_uri: str) -> None:
    policy, name = setup(tmp_path, ray_cluster, make_pipeline(StandardScaler(), SGDClassifier()), tag="oob",
                         amount=0.01)
    c = MlflowClient()
    spent = c.create_run(c.get_experiment_by_name("Default").experiment_id,
                         tags={"finops.model": "churn", "finops.tracked": "true"})
    c.log_metric(spent.info.run_id, "finops/cost_usd", 0.02)  # last month's... no: this period's spend
    c.set_terminated(spent.info.run_id)
    run_id = request_retrain(policy, "churn")
    out = RetrainSupervisor(policy).process(run_id)
    assert out.state == "out_of_budget"
    assert "envelope 'churn' is spent" in out.reason
    assert out.ray_job_id is None
    assert c.get_run(run_id).data.tags["finops.retrain_state"] == "out_of_budget"
    assert str(c.get_model_version_by_alias(name, "champion").version) == "1"


def test_the_retrain_command_exits_12_when_the_envelope_is_spent(tmp_path: Path, sqlite_uri: str) -> None:
    (tmp_path / "finops.toml").write_text(
        '[models.churn]\nregistered_model = "churn-spent"\n'
        '[budgets.churn]\namount_usd = 0.01\nmodels = ["churn"]\n'
    )
    c = MlflowClient()
    spent = c.create_run(c.get_experiment_by_name("Default").experiment_id,
                         tags={"finops.model": "churn", "finops.tracked": "true"})
    c.log_metric(spent.info.run_id, "finops/cost_usd", 0.02)
    c.set_terminated(spent.info.run_id)
    result = subprocess.run([EXE, "retrain", "--policy", str(tmp_path / "finops.toml"), "--model", "churn"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 12, result.stdout + result.stderr
    assert "churn: out_of_budget" in result.stdout
    assert "envelope 'churn' is spent: $0.020 of $0.010 this month; no job submitted" in result.stdout


def test_the_retrain_command_retries_a_failing_job_then_exits_1(
    tmp_path: Path, ray_cluster, sqlite_uri: str
) -> None:
    bad = make_data(500, 1.5, 3).drop(columns="y")  # the new data lost its label column
    setup(tmp_path, ray_cluster, make_pipeline(StandardScaler(), SGDClassifier()), tag="cli", attempts=2, new=bad)
    result = subprocess.run([EXE, "retrain", "--policy", str(tmp_path / "finops.toml"), "--model", "churn"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "churn: job failed, retrying in 0 s" in result.stdout
    assert "churn: failed" in result.stdout
    assert "Ray job FAILED after 2 attempt(s)" in result.stdout


def test_windows_priorities_and_deadline(tmp_path: Path, ray_cluster, sqlite_uri: str) -> None:
    now = datetime.now(timezone.utc)
    closed = (now + timedelta(hours=3)).strftime("%H:00")
    closes = (now + timedelta(hours=4)).strftime("%H:00")
    extra = f'\n[windows]\ntimezone = "UTC"\n[[windows.off_peak]]\nstart = "{closed}"\nend = "{closes}"\n'
    policy, _ = setup(tmp_path, ray_cluster, make_pipeline(StandardScaler(), SGDClassifier()), tag="win",
                      priority="exploratory", extra=extra)
    run_id = request_retrain(policy, "churn")
    sup = RetrainSupervisor(policy)
    out = sup.process(run_id)
    assert out.state == "waiting"
    assert "outside the off-peak ranges" in out.reason
    assert [r.info.run_id for r in sup.pending("churn")] == [run_id]  # kept in MLflow across restarts
    later = RetrainSupervisor(policy, now=lambda: now + timedelta(hours=25))
    out = later.process(run_id)
    assert out.state == "dropped"
    assert MlflowClient().get_run(run_id).info.status == "KILLED"
    assert sup.pending("churn") == []


def test_cap_stops_the_job_and_nothing_is_promoted(tmp_path: Path, ray_cluster, sqlite_uri: str) -> None:
    policy, name = setup(tmp_path, ray_cluster, RandomForestClassifier(n_estimators=20, random_state=0),
                         tag="cap", per_job=2e-6)
    run_id = request_retrain(policy, "churn")
    out = RetrainSupervisor(policy).process(run_id)
    assert out.state == "capped", out.reason
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags["finops.update_path"] == "warm_start"
    assert run.data.metrics["finops/cost_usd"] >= 2e-6  # the partial cost is recorded
    assert [str(v.version) for v in MlflowClient().search_model_versions(f"name = '{name}'")] == ["1"]


def test_failing_job_is_retried_then_marked_failed(tmp_path: Path, ray_cluster, sqlite_uri: str) -> None:
    bad = make_data(500, 1.5, 3).drop(columns="y")  # the new data lost its label column
    policy, name = setup(tmp_path, ray_cluster, make_pipeline(StandardScaler(), SGDClassifier()), tag="fail",
                         attempts=2, new=bad)
    run_id = request_retrain(policy, "churn")
    sup = RetrainSupervisor(policy)
    first = sup.process(run_id)
    assert first.state == "retry", first.reason
    second = sup.process(run_id)
    assert second.state == "failed"
    assert second.attempts == 2
    assert MlflowClient().get_run(run_id).info.status == "FAILED"


def test_a_hung_job_is_stopped_after_max_job_minutes(tmp_path: Path, ray_cluster, sqlite_uri: str) -> None:
    # A refit reads the reference, here a FIFO nobody writes to: reading it blocks forever, as
    # on a stuck network mount. The job spends nothing, so only the time limit can stop it.
    policy, name = setup(tmp_path, ray_cluster, make_pipeline(StandardScaler(), SGDClassifier()), tag="hung",
                         attempts=1)
    (tmp_path / "ref.csv").unlink()
    os.mkfifo(tmp_path / "ref.csv")
    text = (tmp_path / "finops.toml").read_text()
    (tmp_path / "finops.toml").write_text(
        text.replace("max_attempts = 1", 'max_attempts = 1\nmax_job_minutes = 0.1\nstrategy = "refit"')
    )
    policy = load_policy(tmp_path / "finops.toml")
    run_id = request_retrain(policy, "churn")
    sup = RetrainSupervisor(policy)
    t0 = time.monotonic()
    out = sup.process(run_id, wait=False)  # stepped, as the scheduler does
    while not out.done:
        assert time.monotonic() - t0 < 120, out.reason
        time.sleep(0.5)
        out = sup.process(run_id, wait=False)
    assert out.state == "failed", out.reason
    assert "max_job_minutes" in out.reason
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags["finops.stopped_for_time"] == "true"
    assert [str(v.version) for v in MlflowClient().search_model_versions(f"name = '{name}'")] == ["1"]


def test_a_request_is_a_retrain_of_its_model_whatever_the_policy_tags(tmp_path: Path, sqlite_uri: str) -> None:
    (tmp_path / "finops.toml").write_text(
        '[tags]\nteam = "growth"\nworkload = "training"\nmodel = "other"\n[models.churn]\nreference = "ref.csv"\n'
    )
    run_id = request_retrain(load_policy(tmp_path / "finops.toml"), "churn")
    tags = MlflowClient().get_run(run_id).data.tags
    assert tags["finops.workload"] == "retrain"
    assert tags["finops.model"] == "churn"
    assert tags["finops.team"] == "growth"  # the policy's attribution tags are kept
