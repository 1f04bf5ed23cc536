"""Shared fixtures: real MLflow stores (SQLite, and one `mlflow server` per session)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import mlflow
import pytest
import requests

from mlflow_finops.ray_cluster import free_ports

BIN = Path(sys.executable).parent

# The one variable the suite sets for every test (tests/README.md says why it changes nothing a
# user would see): Ray's usage statistics off, as `mlflow-finops ray up` has them.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


# --------------------------------------------------------------- test workers
# `make test` runs the suite on two pytest-xdist workers (`-n 2 --dist loadgroup`): most of its
# time is spent waiting for servers, Ray jobs and subprocesses, not computing. Each group below
# runs on one worker, so a session fixture starts once: every test on the shared Ray cluster
# (and the tests that start Ray clusters of their own beside it) in one group, every other
# module in a group of its own (its module fixtures: servers, browsers, PostgreSQL).
RAY_FIXTURES = {"ray_cluster", "ray_driver", "actor_cluster"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        on_ray = RAY_FIXTURES & set(getattr(item, "fixturenames", ())) or item.path.name == "test_ray_cluster.py"
        group = "ray" if on_ray else str(item.path.relative_to(config.rootpath))
        item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test gets its own spool folder and no inherited finops settings."""
    for key in list(os.environ):
        if key.startswith("MLFLOW_FINOPS_") or key in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID",
                                                        "MLFLOW_EXPERIMENT_NAME"):
            monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_FINOPS_SPOOL_DIR", str(tmp_path / "spool"))
    yield
    import mlflow_finops.cost.tracker as tracker

    tracker.autolog(disable=True)
    while mlflow.active_run():
        mlflow.end_run()
    # set_experiment() in one test must not point the next test's fresh store at an old id
    mlflow.tracking.fluent._active_experiment_id = None
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)


@pytest.fixture
def sqlite_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh SQLite tracking store, set as the tracking URI for this test."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(None)


class MlflowServer:
    """A real `mlflow server` on 127.0.0.1 over SQLite (or ``backend_uri``), which tests may stop and restart."""

    def __init__(self, root: Path, backend_uri: str | None = None, app_name: str | None = None):
        self.root = root
        self.backend_uri = backend_uri or f"sqlite:///{root / 'server.db'}"
        self.app_name = app_name  # an `mlflow.app` plugin (`--app-name`)
        self.port = free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        self.pid: int | None = None
        self.log = root / "server.log"

    def start(self, timeout_s: float = 120) -> None:
        cmd = [
            str(BIN / "mlflow"), "server",
            "--host", "127.0.0.1", "--port", str(self.port),
            "--backend-store-uri", self.backend_uri,
            "--artifacts-destination", str(self.root / "artifacts"),
            "--workers", "1",
            *(["--app-name", self.app_name] if self.app_name else []),
        ]
        # Started through a shell that exits at once: the server is re-parented away from
        # this test process, so it is not part of the process tree the cost tests measure.
        launcher = subprocess.run(
            ["sh", "-c", 'setsid "$@" >>"$LOG" 2>&1 </dev/null & echo $!', "sh", *cmd],
            env={**os.environ, "LOG": str(self.log)}, capture_output=True, text=True, check=True,
        )
        self.pid = int(launcher.stdout.strip())
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"mlflow server exited: {self.log.read_text()[-2000:]}")
            try:
                if requests.get(self.url + "/health", timeout=1).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"mlflow server did not answer in {timeout_s}s: {self.log.read_text()[-2000:]}")

    def alive(self) -> bool:
        if self.pid is None:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        try:  # a zombie is not alive
            return open(f"/proc/{self.pid}/stat").read().split()[2] != "Z"
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL, as the OOM killer or a lost machine would: no shutdown of any kind."""
        if self.alive():
            assert self.pid is not None
            os.killpg(self.pid, signal.SIGKILL)
        self.stop()  # waits until it is gone and its port closed

    def stop(self) -> None:
        if self.alive():
            assert self.pid is not None
            os.killpg(self.pid, signal.SIGTERM)
            for _ in range(200):
                if not self.alive():
                    break
                time.sleep(0.1)
            else:
                os.killpg(self.pid, signal.SIGKILL)
        # wait until the port is really closed
        for _ in range(50):
            try:
                requests.get(self.url + "/health", timeout=0.2)
            except requests.RequestException:
                return
            time.sleep(0.1)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    if shutil.which("mlflow", path=str(BIN)) is None:
        pytest.fail("the mlflow CLI is not installed next to this Python")
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def server_uri(mlflow_server: MlflowServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if not mlflow_server.alive():
        mlflow_server.start()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    # fail fast in tests rather than MLflow's default minutes of retries
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    mlflow.set_tracking_uri(mlflow_server.url)
    yield mlflow_server.url
    mlflow.set_tracking_uri(None)


# ------------------------------------------------------------------------- Ray
class RayTestCluster:
    """One real multi-node Ray cluster on this machine (ray.cluster_utils.Cluster), on loopback."""

    def __init__(self) -> None:
        import ray  # noqa: F401  (imported first: this process reads Ray's settings as a user's would)
        from ray.cluster_utils import Cluster

        from mlflow_finops.ray_cluster import loopback_cluster_env

        self.dashboard_port = free_ports(1)[0]
        with loopback_cluster_env():  # the cluster's processes only, as `ray up` starts them
            self._start(Cluster)
        self.address = self.cluster.address
        self.dashboard_url = f"http://127.0.0.1:{self.dashboard_port}"

    def _start(self, Cluster) -> None:
        self.cluster = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": 1,
                "node_ip_address": "127.0.0.1",
                "include_dashboard": True,
                "dashboard_host": "127.0.0.1",
                "dashboard_port": self.dashboard_port,
                "dashboard_agent_listen_port": free_ports(1)[0],  # not Ray's fixed default (52365)
                "labels": {"market": "on_demand"},
            },
        )
        self.workers = [
            self.cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1", labels={"market": "spot"}),
        ]
        self.cluster.wait_for_nodes()

    def add_node(self, **labels: str):
        from mlflow_finops.ray_cluster import loopback_cluster_env

        with loopback_cluster_env():
            node = self.cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1", labels=labels)
        self.cluster.wait_for_nodes()
        return node

    def shutdown(self) -> None:
        self.cluster.shutdown()


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[RayTestCluster]:
    """Two nodes (head 'on_demand' + one 'spot'), one CPU each, started once per session."""
    pytest.importorskip("ray", reason="the [ray] extra is not installed")
    cluster = RayTestCluster()
    yield cluster
    import ray

    ray.shutdown()
    cluster.shutdown()


@pytest.fixture
def ray_driver(ray_cluster: RayTestCluster) -> Iterator[RayTestCluster]:
    """This test process connected to the session's cluster as a Ray driver (a new job)."""
    import ray

    from mlflow_finops.ray_cluster import join

    join(ray_cluster.address, log_to_driver=False)  # as the product joins a loopback cluster
    yield ray_cluster
    ray.shutdown()
