"""The scheduler's gates: built once per reference, rebuilt when a promoted champion learned from other data."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

import mlflow
import pytest
from drift_support import _template_db, drift_store, frame  # noqa: F401
from mlflow import MlflowClient

from mlflow_finops.drift import DriftGate
from mlflow_finops.drift.schedule import run_scheduled_check
from mlflow_finops.names import TAG_REFERENCE
from mlflow_finops.policy import load_policy


def _drop(tmp: Path, name: str, seed: int) -> None:
    path = tmp / "incoming" / name
    frame(600, seed=seed).to_parquet(path)
    stamp = datetime.now().timestamp() - 600 + len(list((tmp / "incoming").iterdir()))
    os.utime(path, (stamp, stamp))  # strictly newer than the files before it, and settled


def test_a_gate_fits_its_reference_without_mlflow_and_connects_on_its_first_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "bogus://nowhere")
    mlflow.set_tracking_uri("bogus://nowhere")
    try:
        gate = DriftGate(frame(500, seed=1), model="lazy", min_rows=10)
        assert gate.features == ["x0", "x1", "x2", "x3", "plan"]
        assert gate.types["plan"] == "categorical" and gate.types["x0"] == "numerical"
        assert gate.reference_source is None  # a frame, not a file
        with pytest.raises(Exception, match="bogus://nowhere"):
            gate.check(frame(200, seed=2))
    finally:
        mlflow.set_tracking_uri(None)


def test_the_scheduler_keeps_its_gate_until_the_champion_reference_changes(drift_store: str, tmp_path: Path) -> None:
    (tmp_path / "incoming").mkdir()
    frame(2000, seed=1).to_parquet(tmp_path / "ref.parquet")
    frame(3000, seed=9).to_parquet(tmp_path / "champion.parquet")
    (tmp_path / "finops.toml").write_text(
        '[drift]\nmin_rows = 100\n[models.churn]\nreference = "ref.parquet"\ncurrent = "incoming"\n'
        'schedule = "0 * * * *"\nregistered_model = "churn"\n'
    )
    policy = load_policy(tmp_path / "finops.toml")
    gates: dict[str, DriftGate] = {}

    _drop(tmp_path, "w1.parquet", seed=2)
    first = run_scheduled_check(policy, "churn", gates)
    assert first.status == "checked", first.message
    gate = gates["churn"]
    assert gate.reference_source == str(tmp_path.resolve() / "ref.parquet")
    assert first.decision is not None and first.decision.rows_reference == 2000
    client, exp_id = gate.monitoring_experiment_id()
    assert exp_id == client.get_experiment_by_name("finops-monitoring/churn").experiment_id

    _drop(tmp_path, "w2.parquet", seed=3)
    assert run_scheduled_check(policy, "churn", gates).status == "checked"
    assert gates["churn"] is gate  # same reference: the fitted gate is reused

    client = MlflowClient()
    client.create_registered_model("churn")
    version = client.create_model_version(
        "churn", source=str(tmp_path), tags={TAG_REFERENCE: str(tmp_path / "champion.parquet")}
    )
    client.set_registered_model_alias("churn", "champion", version.version)
    _drop(tmp_path, "w3.parquet", seed=4)
    third = run_scheduled_check(policy, "churn", gates)
    assert third.status == "checked", third.message
    assert gates["churn"] is not gate
    assert gates["churn"].reference_source == str(tmp_path / "champion.parquet")
    assert third.decision is not None and third.decision.rows_reference == 3000


def test_no_monitoring_experiment_before_the_first_check(drift_store: str) -> None:
    gate = DriftGate(frame(300, seed=1), model="fresh", min_rows=10)
    client, exp_id = gate.monitoring_experiment_id()
    assert exp_id is None and client.get_experiment_by_name("finops-monitoring/fresh") is None
    d = gate.check(frame(300, seed=2))
    assert gate.monitoring_experiment_id() == (client, client.get_run(d.run_id).info.experiment_id)


def test_once_passes_share_their_gates_when_given_one_dict(drift_store: str, tmp_path: Path) -> None:
    from mlflow_finops.drift.schedule import run_schedule

    (tmp_path / "incoming").mkdir()
    frame(2000, seed=1).to_parquet(tmp_path / "ref.parquet")
    (tmp_path / "finops.toml").write_text(
        '[drift]\nmin_rows = 100\n[models.churn]\nreference = "ref.parquet"\ncurrent = "incoming"\n'
        'schedule = "0 * * * *"\n'
    )
    policy = load_policy(tmp_path / "finops.toml")
    gates: dict[str, DriftGate] = {}
    _drop(tmp_path, "w1.parquet", seed=2)
    assert [o.status for o in run_schedule(policy, once=True, gates=gates)] == ["checked"]
    first = gates["churn"]
    _drop(tmp_path, "w2.parquet", seed=3)
    assert [o.status for o in run_schedule(policy, once=True, gates=gates)] == ["checked"]
    assert gates["churn"] is first  # fitted once for both passes
