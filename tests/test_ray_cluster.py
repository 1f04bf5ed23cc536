"""`mlflow-finops ray up` beside other local clusters: every port free or chosen, "up" only when jobs run."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlflow_finops.ray_cluster import free_ports, port_in_use

EXE = str(Path(sys.executable).with_name("mlflow-finops"))


def test_a_busy_gcs_port_is_a_clear_error_and_starts_nothing() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        busy = held.getsockname()[1]
        (dashboard,) = free_ports(1)
        up = subprocess.run([EXE, "ray", "up", "--port", str(busy), "--dashboard-port", str(dashboard)],
                            capture_output=True, text=True, timeout=120)
    assert up.returncode == 1
    assert f"port {busy} (--port) is in use" in up.stderr
    assert "Ray is up" not in up.stdout
    assert not port_in_use(dashboard)  # no dashboard was started


@pytest.mark.slow
def test_ray_up_beside_a_cluster_holding_the_default_ports(ray_cluster) -> None:
    """Another cluster (the session's) is running, and Ray's fixed default ports of the job agent and
    client server are held: `ray up` still gives a cluster whose Jobs API runs jobs."""
    import requests

    held = []
    for default in (10001, 52365, 8076, 8077):  # client server, dashboard agent, object/node manager
        sock = socket.socket()
        try:
            sock.bind(("127.0.0.1", default))
            sock.listen()
            held.append(sock)
        except OSError:
            sock.close()  # already held by someone: just as good for this test
    port, dashboard = free_ports(2)
    try:
        up = subprocess.run([EXE, "ray", "up", "--num-cpus", "1", "--port", str(port), "--dashboard-port",
                             str(dashboard)], capture_output=True, text=True, timeout=240)
        assert up.returncode == 0, up.stderr
        assert "Ray is up" in up.stdout
        from ray.job_submission import JobStatus

        from mlflow_finops.ray_cluster import jobs_client

        jobs = jobs_client(f"http://127.0.0.1:{dashboard}")
        assert any(j.status == JobStatus.SUCCEEDED for j in jobs.list_jobs())  # the readiness probe ran
        assert requests.get(ray_cluster.dashboard_url + "/api/version", timeout=5).status_code in (200, 401)
    finally:
        for sock in held:
            sock.close()
        subprocess.run([EXE, "ray", "down", "--port", str(port)], capture_output=True, text=True, timeout=60)


@pytest.mark.slow
def test_free_resources_read_from_a_real_cluster(ray_cluster) -> None:
    """What the window rule reads is Ray's own view: the session cluster's CPUs, nothing used."""
    from mlflow_finops.retrain.windows import cluster_free_resources

    deadline = time.monotonic() + 15  # a just-started cluster's dashboard counts its nodes' CPUs a moment later
    cpus, gpus = cluster_free_resources(ray_cluster.dashboard_url)
    while cpus < 1 and time.monotonic() < deadline:
        time.sleep(0.5)
        cpus, gpus = cluster_free_resources(ray_cluster.dashboard_url)
    assert cpus >= 1 and gpus == 0


def test_the_default_cluster_is_never_used_silently(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from mlflow_finops import ray_cluster

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray_cluster, "_warned_default", False)
    with caplog.at_level("WARNING", logger="mlflow_finops.ray_cluster"):
        assert ray_cluster.jobs_address() == ray_cluster.DEFAULT_JOBS_ADDRESS
        assert ray_cluster.jobs_address() == ray_cluster.DEFAULT_JOBS_ADDRESS
        assert ray_cluster.jobs_address("http://10.0.0.1:8265") == "http://10.0.0.1:8265"
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "127.0.0.1:8265, whoever started it" in warnings[0]


@pytest.mark.parametrize("taken, options", [
    ({6379, 8265, 40001}, []),                                     # the defaults: outside Ray's worker range
    ({16379, 18265}, ["--min-worker-port", "10002", "--max-worker-port", "16378"]),
    ({10002}, ["--min-worker-port", "10003", "--max-worker-port", "19999"]),
    ({12000, 19999}, ["--min-worker-port", "12001", "--max-worker-port", "19998"]),
])
def test_ray_up_keeps_rays_workers_off_the_ports_it_was_given(taken: set[int], options: list[str]) -> None:
    from mlflow_finops.ray_cluster import worker_port_options

    assert worker_port_options(taken) == options


def test_joining_a_cluster_that_is_not_there_fails_at_once_naming_it() -> None:
    """In a user's environment (no Ray variable): one line naming the address and what to do."""
    (port,) = free_ports(1)
    script = ("from mlflow_finops.ray_cluster import join, ClusterUnreachable\n"
              f"try:\n    join('127.0.0.1:{port}', timeout_s=60)\n"
              "except ClusterUnreachable as exc:\n    print(exc)\n")
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         env={"PATH": "/usr/bin:/bin", "HOME": str(Path.home())})
    assert out.returncode == 0, out.stderr
    assert f"no Ray cluster answers at 127.0.0.1:{port}" in out.stdout
    assert "mlflow-finops ray up" in out.stdout and "RAY_ADDRESS" in out.stdout
    assert time.monotonic() - started < 30  # the closed port is seen at once, not after the 60 s


@pytest.mark.slow
def test_the_gcs_of_a_local_cluster_is_found_from_its_jobs_api(ray_cluster) -> None:
    from mlflow_finops.ray_cluster import gcs_address_of

    assert gcs_address_of(ray_cluster.dashboard_url) == ray_cluster.address
    (unused,) = free_ports(1)
    assert gcs_address_of(f"http://127.0.0.1:{unused}") is None
    assert gcs_address_of("http://ray-head.example:8265") is None  # another machine: $RAY_ADDRESS says
