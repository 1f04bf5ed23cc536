"""Real scheduler processes, one MLflow store: one retrain trigger per window, claims that expire."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from drift_support import _template_db, all_runs, drift_store, frame  # noqa: F401
from mlflow import MlflowClient
from mlflow.entities import ViewType

from mlflow_finops.drift.monitoring import claim_window, release_window, window_key
from mlflow_finops.drift.schedule import run_scheduled_check
from mlflow_finops.names import ENV_CLAIM_LEASE_S
from mlflow_finops.policy import load_policy

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
    os.utime(tmp_path / "incoming" / "window.parquet", (time.time() - 60, time.time() - 60))  # settled
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


# ------------------------------------------------------------------ claims that expire
STALE = """
import os, sys
from mlflow import MlflowClient
from mlflow_finops.drift.monitoring import claim_window
client = MlflowClient()
assert claim_window(client, sys.argv[1])
if sys.argv[2] == "mid-release":  # the first of release's calls, then killed
    exp = client.get_experiment_by_name("finops-claims/" + sys.argv[1])
    client.restore_experiment(exp.experiment_id)
os._exit(0)  # killed: no release
"""


def plant_stale_claim(key: str, env: dict[str, str], cwd: Path, how: str = "after-claim") -> None:
    """A claim whose holder (a process on this host) is gone."""
    subprocess.run([sys.executable, "-c", STALE, key, how], env=env, cwd=cwd, check=True, timeout=300)


def holder(client, key: str) -> str | None:
    exp = client.get_experiment_by_name(f"finops-claims/{key}")
    return None if exp is None else exp.tags.get("finops.claim_pid")


@pytest.mark.parametrize("how", ["after-claim", "mid-release"])
def test_a_window_claimed_by_a_killed_scheduler_is_judged_by_the_next(drift_store: str, tmp_path: Path,
                                                                        how: str) -> None:
    (tmp_path / "incoming").mkdir()
    frame(2000, seed=1).to_parquet(tmp_path / "ref.parquet")
    window = tmp_path / "incoming" / "w.parquet"
    frame(800, seed=2, shift=1.0).to_parquet(window)
    os.utime(window, (time.time() - 60, time.time() - 60))
    (tmp_path / "finops.toml").write_text(
        '[drift]\nmin_rows = 100\n[models.churn]\nreference = "ref.parquet"\ncurrent = "incoming"\n'
        'schedule = "0 * * * *"\n'
    )
    key = window_key("churn", [window])
    plant_stale_claim(key, {**os.environ, "MLFLOW_TRACKING_URI": drift_store}, tmp_path, how)
    assert holder(MlflowClient(), key) not in (None, str(os.getpid()))

    out = run_scheduled_check(load_policy(tmp_path / "finops.toml"), "churn")
    assert out.status == "checked" and out.decision is not None and out.decision.retrain, out.message
    assert holder(MlflowClient(), key) == str(os.getpid())


def test_a_stale_claim_has_exactly_one_taker(drift_store: str, tmp_path: Path) -> None:
    env = {**os.environ, "MLFLOW_TRACKING_URI": drift_store}
    plant_stale_claim("churn-00000000000000aa", env, tmp_path)
    results = race("claim", "churn-00000000000000aa", 3, env, tmp_path)
    assert all(r.returncode == 0 for r in results), [r.stderr[-2000:] for r in results]
    assert sorted(r.stdout.strip() for r in results) == ["LOST", "LOST", "WON"]


def test_a_live_claim_holds_until_its_lease_ends_and_only_its_holder_releases_it(
    server_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over the REST store too: a live holder's claim is taken over once its lease ran out."""
    client = MlflowClient()
    key = f"lease-{uuid.uuid4().hex[:16]}"
    monkeypatch.setenv(ENV_CLAIM_LEASE_S, "8")  # long enough for two calls on a loaded machine
    assert claim_window(client, key)
    assert not claim_window(client, key)  # held, by a live process (this one), within its lease
    time.sleep(8.2)
    assert claim_window(client, key)  # the lease ran out: taken over
    # the record of the expired claim stays, renamed away (deleted)
    names = [e.name for e in client.search_experiments(view_type=ViewType.ALL,
                                                       filter_string=f"name LIKE 'finops-claims/{key}/%'")]
    assert len(names) == 1 and names[0].startswith(f"finops-claims/{key}/expired-")

    exp = client.get_experiment_by_name(f"finops-claims/{key}")
    assert exp.tags["finops.claim_pid"] == str(os.getpid()) and exp.tags["finops.claim_lease_s"] == "8"
    with monkeypatch.context() as m:
        m.setattr(os, "getpid", lambda: 1)  # another process asks to release it: left alone
        release_window(client, key)
    assert client.get_experiment_by_name(f"finops-claims/{key}") is not None
    release_window(client, key)
    assert client.get_experiment_by_name(f"finops-claims/{key}") is None
