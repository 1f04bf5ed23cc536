"""A tracked training in a subprocess that a test stops as a scheduler would (SIGTERM or SIGKILL)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
from mlflow.tracking import MlflowClient

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
