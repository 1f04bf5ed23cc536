"""The README's commands as a user runs them: each one a subprocess whose environment holds only
PATH and HOME (a fresh home: no variable, token or spool of the test suite), in a fresh folder
with the embedded defaults (``./mlflow.db``), against a cluster from ``mlflow-finops ray up``.

The product has to reach a loopback cluster by itself here: nothing tells Ray to stay on
127.0.0.1 (on a machine with a LAN address, Ray would otherwise try that address for ever).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlflow_finops.ray_cluster import free_ports
from mlflow_finops.retrain.state import RetrainState

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
EXE = str(BIN / "mlflow-finops")

TRAIN = """\
# train.py: a user's training script, with cost tracking
import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient
from sklearn.linear_model import SGDClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import mlflow_finops

mlflow_finops.autolog()
ref = pd.read_parquet("reference.parquet")
model = make_pipeline(StandardScaler(), SGDClassifier(random_state=0))
with mlflow.start_run():
    model.fit(ref.drop(columns="y"), ref["y"])
    info = mlflow.sklearn.log_model(model, name="model", registered_model_name="churn-smoke",
                                    serialization_format="cloudpickle")
MlflowClient().set_registered_model_alias("churn-smoke", "champion", str(info.registered_model_version))
print("champion", info.registered_model_version)
"""

POLICY = """\
[models.churn]
reference = "reference.parquet"
current = "incoming/*.parquet"
target = "y"
registered_model = "churn-smoke"
schedule = "*/15 * * * *"

[models.churn.drift]
min_rows = 100
retrain_on = "drift"

[retrain]
ray_address = "http://127.0.0.1:{dashboard}"
runner = "{runner}"
sample_interval_s = 0.5
poll_s = 0.5
connect_timeout_s = 60

[budgets.churn]
amount_usd = 5.0
per_job_usd = 1.0
models = ["churn"]
priority = "critical"
"""


def make_data(n: int, shift: float, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    X = rng.normal(loc=shift, size=(n, 4))
    y = ((X[:, 0] - shift) + 0.5 * (X[:, 1] - shift) + 0.8 * shift * np.sign(X[:, 2]) > 0).astype(int)
    return pd.DataFrame(X, columns=["f0", "f1", "f2", "f3"]).assign(y=y)


def window(folder: Path, name: str, shift: float, seed: int) -> str:
    """A new file in incoming/, already settled (older than MLFLOW_FINOPS_SETTLE_S)."""
    path = folder / "incoming" / name
    path.parent.mkdir(exist_ok=True)
    make_data(2000, shift, seed).to_parquet(path)
    past = time.time() - 60
    os.utime(path, (past, past))
    return str(path.relative_to(folder))


class User:
    """Runs commands as a user's shell would: PATH and HOME only, in their project folder."""

    def __init__(self, folder: Path):
        self.folder = folder
        home = folder.parent / "home"
        home.mkdir(exist_ok=True)
        self.env = {"PATH": f"{BIN}:/usr/local/bin:/usr/bin:/bin", "HOME": str(home)}
        self.log: list[str] = []

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        started = time.monotonic()
        out = subprocess.run(list(args), cwd=self.folder, env=self.env, capture_output=True, text=True,
                             timeout=timeout, stdin=subprocess.DEVNULL)
        self.log.append(f"$ {' '.join(args)}  -> {out.returncode} in {time.monotonic() - started:.1f} s\n"
                        f"{out.stdout[-1500:]}{out.stderr[-1500:]}")
        return out

    def __str__(self) -> str:
        return "\n".join(self.log)


def runners(folder: Path) -> list[tuple[str, str]]:
    """(retrain state, runner) of every retrain request, oldest first, read from ./mlflow.db."""
    with sqlite3.connect(folder / "mlflow.db") as db:
        rows = db.execute(
            "SELECT r.run_uuid, t.key, t.value FROM runs r JOIN experiments e ON r.experiment_id = e.experiment_id "
            "JOIN tags t ON t.run_uuid = r.run_uuid WHERE e.name LIKE 'finops-retrains/%' "
            "AND t.key IN ('finops.retrain_state', 'finops.retrain_runner') ORDER BY r.start_time"
        ).fetchall()
    by_run: dict[str, dict[str, str]] = {}
    for run, key, value in rows:
        by_run.setdefault(run, {})[key] = value
    return [(t.get("finops.retrain_state", ""), t.get("finops.retrain_runner", "")) for t in by_run.values()]


def test_the_readme_commands_in_a_users_environment(tmp_path: Path) -> None:
    folder = tmp_path / "project"
    folder.mkdir()
    user = User(folder)
    port, dashboard = free_ports(2)
    make_data(3000, 0.0, 1).to_parquet(folder / "reference.parquet")
    (folder / "finops.toml").write_text(POLICY.format(dashboard=dashboard, runner="actor"))
    (folder / "finops-job.toml").write_text(POLICY.format(dashboard=dashboard, runner="job"))
    (folder / "train.py").write_text(TRAIN)

    up = user.run(EXE, "ray", "up", "--num-cpus", "2", "--port", str(port), "--dashboard-port", str(dashboard))
    try:
        assert up.returncode == 0 and "Ray is up" in up.stdout, user
        assert user.run("python", "train.py").returncode == 0, user

        w1 = window(folder, "w1.parquet", 1.5, 2)
        check = user.run(EXE, "drift", "check", "--policy", "finops.toml", "--model", "churn",
                         "--reference", "reference.parquet", "--current", w1)
        assert check.returncode == 10, user  # retrain recommended

        on_actor = user.run(EXE, "retrain", "--model", "churn", "--policy", "finops.toml")
        assert on_actor.returncode == 0, user

        window(folder, "w2.parquet", 3.0, 3)
        as_job = user.run(EXE, "retrain", "--model", "churn", "--policy", "finops-job.toml")
        assert as_job.returncode == 0, user

        window(folder, "w3.parquet", -2.0, 4)
        scheduled = user.run(EXE, "schedule", "--policy", "finops.toml", "--once")
        assert scheduled.returncode == 10, user  # the window drifted: a request filed, submitted to the actor
        deadline = time.monotonic() + 180  # the warm actor runs it after `schedule` returned
        while len(done := runners(folder)) < 3 or not (done[2][0] and RetrainState(done[2][0]).terminal):
            assert time.monotonic() < deadline, (done, str(user))
            time.sleep(1)
        assert [r for _, r in done] == ["actor", "job", "actor"], (done, str(user))
        assert all(state in ("promoted", "not_promoted") for state, _ in done), (done, str(user))

        report = user.run(EXE, "report")
        assert report.returncode == 0 and "$" in report.stdout, user
        assert "e-0" not in report.stdout, user  # money and energy read like them, never 4.09e-05
        assert user.run(EXE, "budget", "--policy", "finops.toml").returncode == 0, user
        synced = user.run(EXE, "sync")
        assert synced.returncode == 0 and "0 left" in synced.stdout, user
    finally:
        down = user.run(EXE, "ray", "down", "--port", str(port), timeout=120)
    assert down.returncode == 0 and "stopped" in down.stdout, user
