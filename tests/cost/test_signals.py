"""A tracked training stopped by a scheduler: SIGTERM flushes, SIGKILL is repaired afterwards.

Real subprocesses run a small tracked training against a real SQLite MLflow store.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import mlflow
import psutil
import pytest
from mlflow.tracking import MlflowClient

import mlflow_finops
from mlflow_finops.cost.orphans import end_orphaned_runs, process_tags

TRAINING = textwrap.dedent(
    """
    import json, resource, signal, sys
    import mlflow, mlflow_finops

    def os_cpu():
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return ru.ru_utime + ru.ru_stime

    if sys.argv[2] == "user-handler":
        def on_term(signum, frame):
            print("user handler ran", flush=True)
            sys.exit(7)
        signal.signal(signal.SIGTERM, on_term)
    mlflow.set_tracking_uri(sys.argv[1])
    mlflow_finops.autolog(interval_s=0.2)
    before = os_cpu()
    with mlflow.start_run() as run:
        print(json.dumps({"run_id": run.info.run_id, "cpu_before": before, "cpu_after": os_cpu()}), flush=True)
        while True:  # training, until the scheduler stops it
            pass
    """
)


def start_training(uri: str, mode: str) -> tuple[subprocess.Popen, dict]:
    env = {**os.environ, "MLFLOW_FINOPS_LOG_INTERVAL_S": "0.2"}
    child = subprocess.Popen([sys.executable, "-c", TRAINING, uri, mode], env=env,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    return child, json.loads(child.stdout.readline())


def wait_until_live(run_id: str, cpu_s: float, timeout_s: float = 60) -> None:
    """Until the run carries its live tags and some delivered cost."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        data = MlflowClient().get_run(run_id).data
        if data.tags.get("finops.tracking_status") == "live" and \
                data.metrics.get("finops/cpu_core_hours", 0) * 3600 >= cpu_s:
            return
        time.sleep(0.2)
    pytest.fail(f"run {run_id} never showed {cpu_s} CPU-s live")


def wait_reaped(child: subprocess.Popen) -> tuple[int, float]:
    """The child's exit code and all the CPU it used, from the kernel."""
    _, status, ru = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    return child.returncode, ru.ru_utime + ru.ru_stime


@pytest.mark.parametrize("mode", ["default-handler", "user-handler"])
def test_sigterm_flushes_the_cost_ends_the_run_killed_and_chains(sqlite_uri: str, mode: str) -> None:
    child, started = start_training(sqlite_uri, mode)
    try:
        wait_until_live(started["run_id"], 0.3)
        t = psutil.Process(child.pid).cpu_times()
        at_kill = t.user + t.system
        child.send_signal(signal.SIGTERM)
        code, total = wait_reaped(child)
        out = child.stdout.read() if child.stdout else ""
    finally:
        if child.returncode is None:
            child.kill()
            child.wait()
    if mode == "user-handler":
        assert code == 7 and "user handler ran" in out  # the user's handler still runs, after the flush
    else:
        assert code == -signal.SIGTERM  # and the default one still ends the process
    run = MlflowClient().get_run(started["run_id"])
    assert run.info.status == "KILLED"
    assert run.data.tags["finops.end_reason"] == "sigterm"
    assert run.data.tags["finops.tracking_status"] == "complete"
    cpu = run.data.metrics["finops/cpu_core_hours"] * 3600
    assert at_kill - started["cpu_after"] - 0.05 <= cpu <= total - started["cpu_before"]


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
