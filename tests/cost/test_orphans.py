"""Runs left RUNNING by a SIGKILLed training are ended KILLED by the next tracked run on the host."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import mlflow
from mlflow.tracking import MlflowClient
from support.killed_training import start_training, wait_until_live

import mlflow_finops
from mlflow_finops.cost.orphans import end_orphaned_runs, process_tags


def test_a_sigkilled_training_is_ended_killed_by_the_next_tracked_run(sqlite_uri: str) -> None:
    child, started = start_training(sqlite_uri, "plain")
    run_id = started["run_id"]
    try:
        wait_until_live(run_id, 0.5)
    finally:
        child.kill()
        child.wait()
    left = MlflowClient().get_run(run_id)
    assert left.info.status == "RUNNING"  # what SIGKILL leaves
    assert left.data.tags["finops.process.pid"] == str(child.pid)
    mlflow_finops.autolog(interval_s=0.2)
    with mlflow.start_run() as next_run:
        for t in threading.enumerate():
            if t.name.startswith("finops-orphans"):
                t.join(timeout=60)
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags["finops.end_reason"] == "process_died"
    assert run.data.tags["finops.tracking_status"] == "degraded"
    assert f"process {child.pid}" in run.data.tags["finops.tracking_error"]
    assert next_run.info.run_id in run.data.tags["finops.tracking_error"]
    assert run.data.metrics["finops/cost_usd"] == left.data.metrics["finops/cost_usd"] > 0
    assert run.info.start_time < run.info.end_time <= int(time.time() * 1000)
    assert MlflowClient().get_run(next_run.info.run_id).info.status == "FINISHED"


def test_end_orphaned_runs_judges_by_host_pid_and_create_time(sqlite_uri: str) -> None:
    """What `mlflow-finops sync` calls: only this host's live runs whose process is gone or
    whose pid was reused; a bounded scan, the oldest first."""
    client = MlflowClient()
    exp = client.create_experiment("e")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    me = process_tags()

    def tracked_run(t0: int, **overrides: str) -> str:
        tags = {"finops.tracking_status": "live", **me, **overrides}
        return client.create_run(exp, start_time=t0, tags=tags).info.run_id

    now = int(time.time() * 1000) - 60_000
    reused = tracked_run(now, **{"finops.process.started": f"{float(me['finops.process.started']) - 100:.2f}"})
    dead = tracked_run(now + 1, **{"finops.process.pid": str(gone.pid)})
    alive = tracked_run(now + 2)
    elsewhere = tracked_run(now + 3, **{"finops.machine.hostname": "another-host",
                                        "finops.process.pid": str(gone.pid)})
    client.log_metric(reused, "finops/cost_usd", 0.25, timestamp=now + 5000)

    assert end_orphaned_runs(sqlite_uri, max_results=1) == [reused]
    assert end_orphaned_runs(sqlite_uri) == [dead]
    assert end_orphaned_runs(sqlite_uri) == []
    status = {r: client.get_run(r).info.status for r in (reused, dead, alive, elsewhere)}
    assert status == {reused: "KILLED", dead: "KILLED", alive: "RUNNING", elsewhere: "RUNNING"}
    r = client.get_run(reused)
    assert r.info.end_time == now + 5000  # when it last delivered
    assert r.data.metrics["finops/cost_usd"] == 0.25
    assert "$0.25" in r.data.tags["finops.tracking_error"]
