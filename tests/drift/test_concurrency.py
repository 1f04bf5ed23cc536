"""Two real scheduler processes, one SQLite MLflow store: one retrain trigger per window."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from drift_support import _template_db, all_runs, drift_store, frame  # noqa: F401

# Each child does its imports and opens the store, then waits at a file barrier
# until every child is ready, so the racing steps (look for a checked window,
# claim it) really overlap however slow the imports are on a loaded machine.
CHILD = """
import os, sys, time
barrier, n, mode, arg = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
from mlflow import MlflowClient
from mlflow_finops.drift.monitoring import claim_window
if mode == "schedule":
    from mlflow_finops.cli import cli
    import mlflow_finops.drift, evidently  # noqa: F401
MlflowClient().search_experiments()
open(os.path.join(barrier, str(os.getpid())), "w").close()
deadline = time.time() + 120
while len(os.listdir(barrier)) < n and time.time() < deadline:
    time.sleep(0.01)
if mode == "claim":
    print("WON" if claim_window(MlflowClient(), arg) else "LOST", flush=True)
else:
    cli(["schedule", "--policy", arg, "--once"])
"""


def race(mode: str, arg: str, n: int, env: dict[str, str], cwd: Path) -> list[subprocess.CompletedProcess]:
    barrier = cwd / f"barrier-{mode}"
    barrier.mkdir()
    procs = [
        subprocess.Popen([sys.executable, "-c", CHILD, str(barrier), str(n), mode, arg], env=env, cwd=cwd,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(n)
    ]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    assert len(os.listdir(barrier)) == n, "not every child reached the start line"
    return out


def test_window_claim_has_exactly_one_winner(drift_store: str, tmp_path: Path) -> None:
    env = {**os.environ, "MLFLOW_TRACKING_URI": drift_store}
    results = race("claim", "churn-0123456789abcdef", 3, env, tmp_path)
    said = [r.stdout.strip() for r in results]
    assert all(r.returncode == 0 for r in results), [r.stderr[-2000:] for r in results]
    assert sorted(said) == ["LOST", "LOST", "WON"]


def test_two_schedulers_trigger_one_retrain_per_window(drift_store: str, tmp_path: Path) -> None:
    (tmp_path / "incoming").mkdir()
    frame(2000, seed=1).to_parquet(tmp_path / "ref.parquet")
    frame(800, seed=2, shift=1.0).to_parquet(tmp_path / "incoming" / "window.parquet")
    policy = tmp_path / "finops.toml"
    policy.write_text(
        '[drift]\nmin_rows = 100\n[models.churn]\nreference = "ref.parquet"\ncurrent = "incoming"\n'
        'schedule = "0 * * * *"\n'
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": drift_store}
    results = race("schedule", str(policy), 2, env, tmp_path)
    codes = sorted(r.returncode for r in results)
    lines = [r.stdout.strip() for r in results]
    assert codes == [0, 10], (lines, [r.stderr[-2000:] for r in results])
    assert any("checked -> retrain" in s for s in lines)
    assert any("claimed_elsewhere" in s or "already_checked" in s for s in lines)
    checks = [r for r in all_runs(drift_store) if r.data.tags.get("finops.workload") == "drift_check"]
    assert len(checks) == 1
    assert checks[0].data.tags["finops.decision"] == "retrain"
