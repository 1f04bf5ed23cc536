"""autolog() / track_cost() against a real SQLite MLflow store."""

from __future__ import annotations

import json
import logging
import os
import resource
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier

import mlflow_finops
from mlflow_finops import PolicyError
from mlflow_finops.cost.process import ProcessTreeSampler

from .nvml_support import gpu_models_tag

METRICS = [
    "finops/cost_usd", "finops/cpu_core_hours", "finops/ram_gb_hours", "finops/gpu_hours",
    "finops/energy_kwh", "finops/co2e_kg", "finops/cpu_efficiency", "finops/idle_cost_usd",
]


def os_tree_cpu() -> float:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def burn(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def samplers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("finops-sampler")]


def fit_forest() -> None:
    from joblib.externals.loky import get_reusable_executor

    X, y = make_classification(4000, 20, random_state=0)
    RandomForestClassifier(60, n_jobs=2, random_state=0).fit(X, y)
    get_reusable_executor().shutdown(wait=True)  # reap loky workers so the OS counts them too


def test_autolog_logs_cost_of_a_joblib_training(sqlite_uri: str) -> None:
    mlflow_finops.autolog(interval_s=0.2)
    with mlflow.start_run() as run:
        os_before = os_tree_cpu()  # the tracker started with the run, just before this
        fit_forest()
        os_used = os_tree_cpu() - os_before
    r = MlflowClient().get_run(run.info.run_id)
    m, tags = r.data.metrics, r.data.tags
    for key in METRICS:
        assert key in m, key
    cpu_s = m["finops/cpu_core_hours"] * 3600
    assert cpu_s > 0.5
    assert cpu_s == pytest.approx(os_used, rel=0.05, abs=0.1)
    assert m["finops/gpu_hours"] == 0
    assert m["finops/cost_usd"] == pytest.approx(m["finops/usage_cost_usd"])
    assert m["finops/idle_cost_usd"] == pytest.approx(m["finops/allocation_cost_usd"] - m["finops/usage_cost_usd"])
    assert 0 < m["finops/cpu_efficiency"] <= 1.0
    assert m["finops/co2e_kg"] == pytest.approx(m["finops/energy_kwh"] * 0.475)
    assert tags["finops.price_profile"] == "opencost-default"
    assert tags["finops.allocation_mode"] == "usage"
    assert tags["finops.tracking_status"] == "complete"
    assert int(tags["finops.machine.cpu_cores"]) >= 1
    assert tags["finops.machine.gpu_models"] == gpu_models_tag()
    history = MlflowClient().get_metric_history(run.info.run_id, "finops/cpu_core_hours")
    assert len(history) >= 3  # a live time series, then the final scalar
    assert max(history, key=lambda h: (h.step, h.timestamp)).value == m["finops/cpu_core_hours"]
    assert not samplers()


def test_nested_runs_share_one_sampler_and_get_their_own_share(sqlite_uri: str) -> None:
    mlflow_finops.autolog(interval_s=0.2)
    with mlflow.start_run() as parent:
        burn(0.3)
        with mlflow.start_run(nested=True) as child:
            assert len(samplers()) == 1
            burn(0.5)
        burn(0.3)
    c = MlflowClient()
    pm, cm = c.get_run(parent.info.run_id).data, c.get_run(child.info.run_id).data
    assert cm.tags["finops.nested_in"] == parent.info.run_id
    child_cpu = cm.metrics["finops/cpu_core_hours"] * 3600
    parent_cpu = pm.metrics["finops/cpu_core_hours"] * 3600
    assert 0.45 <= child_cpu <= 0.75
    assert parent_cpu >= child_cpu + 0.55
    assert "finops.nested_in" not in pm.tags


def test_resumed_run_adds_to_its_cost(sqlite_uri: str) -> None:
    mlflow_finops.autolog(interval_s=0.2)
    with mlflow.start_run() as run:
        burn(0.4)
    first = MlflowClient().get_run(run.info.run_id).data.metrics["finops/cpu_core_hours"] * 3600
    with mlflow.start_run(run_id=run.info.run_id):
        assert len(samplers()) == 1
        burn(0.4)
    total = MlflowClient().get_run(run.info.run_id).data.metrics["finops/cpu_core_hours"] * 3600
    assert first >= 0.38  # /proc counts in 10 ms ticks
    assert total == pytest.approx(first + 0.4, abs=0.15)


def test_track_cost_starts_and_ends_a_run_when_none_is_active(sqlite_uri: str) -> None:
    with mlflow_finops.track_cost(interval_s=0.2) as tracker:
        burn(0.3)
        run_id = tracker.run_id
        assert tracker.sample_now().cpu_core_hours * 3600 >= 0.28
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["finops/cpu_core_hours"] * 3600 >= 0.28
    assert mlflow.active_run() is None


def test_track_cost_inside_an_autologged_run_reuses_its_tracker(sqlite_uri: str) -> None:
    mlflow_finops.autolog(interval_s=0.2)
    with mlflow.start_run() as run:
        with mlflow_finops.track_cost() as tracker:
            assert tracker.run_id == run.info.run_id
            assert len(samplers()) == 1


def test_failing_sampler_degrades_without_hurting_training(
    sqlite_uri: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real_read = ProcessTreeSampler.read
    calls = {"n": 0}

    def flaky(self: ProcessTreeSampler):  # injected fault: /proc becomes unreadable
        calls["n"] += 1
        if calls["n"] > 2:
            raise OSError("injected: /proc unreadable")
        return real_read(self)

    monkeypatch.setattr(ProcessTreeSampler, "read", flaky)
    mlflow_finops.autolog(interval_s=0.05)
    with caplog.at_level(logging.WARNING, logger="mlflow_finops"):
        with mlflow.start_run() as run:
            burn(0.5)  # training goes on
    tags = MlflowClient().get_run(run.info.run_id).data.tags
    assert tags["finops.tracking_status"] == "degraded"
    assert "injected" in tags["finops.tracking_error"]
    assert sum("cost sample failed" in r.message for r in caplog.records) == 1
    assert MlflowClient().get_run(run.info.run_id).info.status == "FINISHED"


def test_autolog_rejects_a_bad_policy_before_training(tmp_path: Path) -> None:
    bad = tmp_path / "finops.toml"
    bad.write_text("[prices]\ngpu_hour_usd = -3\n")
    with pytest.raises(PolicyError, match=r"\[prices\].gpu_hour_usd"):
        mlflow_finops.autolog(policy=str(bad))


def test_autolog_disable_restores_mlflow(sqlite_uri: str) -> None:
    original = mlflow.start_run
    mlflow_finops.autolog(interval_s=0.2)
    assert mlflow.start_run is not original
    mlflow_finops.autolog(disable=True)
    assert mlflow.start_run is original
    with mlflow.start_run() as run:
        pass
    assert "finops/cost_usd" not in MlflowClient().get_run(run.info.run_id).data.metrics


def test_prices_argument_changes_cost(sqlite_uri: str) -> None:
    mlflow_finops.autolog(interval_s=0.2, prices={"cpu_core_hour_usd": 100.0, "profile": "pricey",
                                                   "allocation_mode": "allocation"})
    with mlflow.start_run() as run:
        burn(0.3)
    r = MlflowClient().get_run(run.info.run_id)
    m = r.data.metrics
    assert r.data.tags["finops.price_profile"] == "pricey"
    assert r.data.tags["finops.allocation_mode"] == "allocation"
    assert m["finops/cost_usd"] == pytest.approx(m["finops/allocation_cost_usd"])
    assert m["finops/usage_cost_usd"] >= m["finops/cpu_core_hours"] * 100.0


def test_a_long_enough_tracked_run_gets_a_cost_timeline_chart(
    sqlite_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    mlflow_finops.autolog(interval_s=0.1)
    with mlflow.start_run() as short_run:  # shorter than the default minimum: no chart
        burn(0.5)
    monkeypatch.setenv("MLFLOW_FINOPS_CHART_MIN_S", "0.3")
    with mlflow.start_run() as run:
        burn(0.5)
    for t in threading.enumerate():
        if t.name.startswith("finops-chart"):
            t.join(timeout=60)
    assert MlflowClient().list_artifacts(short_run.info.run_id, "finops") == []
    names = {a.path for a in MlflowClient().list_artifacts(run.info.run_id, "finops")}
    assert names == {"finops/cost_timeline.png", "finops/cost_timeline.html"}
    png = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="finops/cost_timeline.png"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


CHARGED_FROM_START = textwrap.dedent(
    """
    import json, resource, sys, time
    import psutil

    def os_cpu():
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return ru.ru_utime + ru.ru_stime

    end = time.process_time() + 0.6
    while time.process_time() < end:  # start-up work, before any tracking
        pass
    import mlflow, mlflow_finops
    mlflow.set_tracking_uri(sys.argv[1])
    before, since_start = os_cpu(), time.time() - psutil.Process().create_time()
    with mlflow_finops.track_cost(interval_s=0.2) as tracker:
        pass
    b = tracker.breakdown()  # its final sample, taken inside stop()
    print(json.dumps({"cpu_s": b.cpu_core_hours * 3600, "wall_s": b.wall_hours * 3600,
                      "os_before": before, "os_after": os_cpu(), "since_start": since_start}))
    """
)


def test_a_process_started_for_the_run_is_charged_from_its_start(sqlite_uri: str) -> None:
    """MLFLOW_FINOPS_CHARGE_PROCESS_START (a retrain job): all the process's CPU and wall time,
    its start-up (imports, the burn) included. Without it, tracking starts at zero (tests above)."""
    env = {**os.environ, "MLFLOW_FINOPS_CHARGE_PROCESS_START": "true"}
    out = subprocess.run([sys.executable, "-c", CHARGED_FROM_START, sqlite_uri], env=env,
                         capture_output=True, text=True, check=True, timeout=300)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["os_before"] >= 0.6
    assert r["os_before"] <= r["cpu_s"] <= r["os_after"]
    assert r["wall_s"] >= r["since_start"]


def test_sampling_resumes_after_failures_and_the_final_read_recovers_the_total(
    sqlite_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Transient failures (injected into the sampler thread's reads) cost no usage: sampling
    resumes, and the final read (on the training thread) recovers the cumulative total."""
    from mlflow_finops.cost.tracker import active_tracker

    real_read = ProcessTreeSampler.read
    broken = threading.Event()

    def flaky(self: ProcessTreeSampler):
        if broken.is_set() and threading.current_thread().name.startswith("finops-sampler"):
            raise OSError("injected: /proc busy")
        return real_read(self)

    monkeypatch.setattr(ProcessTreeSampler, "read", flaky)
    mlflow_finops.autolog(interval_s=0.05)
    with mlflow.start_run() as run:
        os_before = os_tree_cpu()
        tracker = active_tracker()
        assert tracker is not None
        broken.set()
        burn(1.0)  # ~20 failed samples in a row
        broken.clear()
        resumed_from = tracker.samples
        deadline = time.monotonic() + 10
        while tracker.samples == resumed_from and time.monotonic() < deadline:
            time.sleep(0.02)
        assert tracker.samples > resumed_from, "sampling did not resume"
        broken.set()  # failing again up to the end: only the final read succeeds
        burn(1.0)
        os_used = os_tree_cpu() - os_before
    r = MlflowClient().get_run(run.info.run_id)
    assert r.data.tags["finops.tracking_status"] == "complete"
    assert "finops.tracking_error" not in r.data.tags
    assert r.data.metrics["finops/cpu_core_hours"] * 3600 == pytest.approx(os_used, abs=0.1)


def test_a_child_that_cannot_be_read_is_reported_not_complete(
    sqlite_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A member denied to us (injected AccessDenied; psutil itself is real) and alive at the end."""
    import psutil

    import mlflow_finops.cost.process as process

    real_read_member = process._read_member
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])

    def denied(proc: psutil.Process):
        if proc.pid == child.pid:
            raise psutil.AccessDenied(proc.pid)
        return real_read_member(proc)

    monkeypatch.setattr(process, "_read_member", denied)
    mlflow_finops.autolog(interval_s=0.1)
    try:
        with mlflow.start_run() as run:
            time.sleep(1.0)  # the child burns, unreadable, and is still alive at the end
    finally:
        child.kill()
        child.wait()
    tags = MlflowClient().get_run(run.info.run_id).data.tags
    assert tags["finops.tracking_status"] == "degraded"
    assert tags["finops.unaccounted_processes"] == "1"
    assert tags["finops.unaccounted_pids"] == str(child.pid)
    assert "could not be read" in tags["finops.tracking_error"]
