"""The cost tracker: failures degrade, never stop training; the final read recovers the total."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from support.cost_tracking import burn, os_tree_cpu

import mlflow_finops
from mlflow_finops.cost.process import ProcessTreeSampler


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
