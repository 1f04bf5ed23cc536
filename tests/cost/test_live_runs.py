"""A tracked training stopped by a scheduler with SIGTERM: the cost is flushed, the run ended
KILLED, and the handler in place still runs (a real subprocess, a real SQLite MLflow store)."""

from __future__ import annotations

import signal

import psutil
import pytest
from mlflow.tracking import MlflowClient
from support.killed_training import start_training, wait_reaped, wait_until_live


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
