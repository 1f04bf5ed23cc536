"""Reaching a Ray cluster: the Jobs API address, its token, and a local cluster's start and stop.

Shared by the cost tracker (Ray's state API), the retrain supervisor (Jobs API,
free resources) and ``mlflow-finops ray up/down``. Nothing here imports Ray at
module import: a process that never talks to Ray never pays for it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Any, Iterator

__all__ = [
    "DEFAULT_JOBS_ADDRESS",
    "RayClusterError",
    "jobs_address",
    "ray_auth_headers",
    "jobs_client",
    "cluster_status",
    "free_ports",
    "start_local_cluster",
    "wait_until_jobs_run",
    "stop_local_cluster",
    "local_cluster_processes",
    "local_cluster",
    "LocalCluster",
]

log = logging.getLogger(__name__)

DEFAULT_JOBS_ADDRESS = "http://127.0.0.1:8265"
DEFAULT_GCS_PORT = 6379


class RayClusterError(RuntimeError):
    """A local Ray cluster could not be started (Ray missing, ``ray start`` failed)."""


def jobs_address(configured: str | None = None) -> str:
    """The Ray Jobs API address: ``configured`` (the policy's), else ``$RAY_ADDRESS`` if HTTP, else local."""
    if configured:
        return configured
    env = os.environ.get("RAY_ADDRESS", "")
    if env.startswith(("http://", "https://")):
        return env
    global _warned_default
    if not _warned_default:  # never used silently: it may be anybody's cluster
        _warned_default = True
        log.warning("no Ray address configured ([retrain] ray_address, $RAY_ADDRESS): using the Ray cluster "
                    "at %s, whoever started it", DEFAULT_JOBS_ADDRESS)
    return DEFAULT_JOBS_ADDRESS


_warned_default = False


def ray_auth_headers() -> dict[str, str]:
    """The bearer token for a Ray cluster with token authentication (Ray 2.59+ turns it on).

    ``$RAY_AUTH_TOKEN``, else the file ``$RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``
    (where ``ray start`` writes it); no header when there is none.
    """
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if not token:
        path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
        try:
            with open(path) as fh:
                token = fh.read().strip()
        except OSError:
            token = ""
    return {"Authorization": f"Bearer {token}"} if token else {}


def jobs_client(address: str | None = None) -> Any:
    """A Ray ``JobSubmissionClient`` for ``address`` (see :func:`jobs_address`), with its token."""
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(jobs_address(address), headers=ray_auth_headers() or None)


def cluster_status(dashboard_url: str, timeout_s: float = 10.0) -> dict:
    """Ray's own resource view (the dashboard's ``/api/cluster_status``), as JSON."""
    import requests

    resp = requests.get(dashboard_url.rstrip("/") + "/api/cluster_status", headers=ray_auth_headers(),
                        timeout=timeout_s)
    resp.raise_for_status()
    return resp.json()


# ------------------------------------------------------------------ a local cluster (ray up / ray down)
@dataclass(frozen=True)
class LocalCluster:
    """What ``ray up`` started: its GCS address and its Jobs API."""

    gcs_address: str
    jobs_url: str


def ray_executable() -> str:
    """The ``ray`` command beside this Python, else on PATH."""
    ray_bin = shutil.which("ray", path=os.path.dirname(sys.executable)) or shutil.which("ray")
    if ray_bin is None:
        raise RayClusterError("Ray is not installed: pip install 'mlflow-finops[ray]'")
    return ray_bin


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct TCP ports nobody listens on now (the kernel's picks, all held while picking)."""
    import socket

    socks = [socket.socket() for _ in range(n)]
    try:
        for sock in socks:
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether ``port`` on ``host`` is taken (bound by another process)."""
    import socket

    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def start_local_cluster(
    num_cpus: int = 2, port: int = DEFAULT_GCS_PORT, dashboard_port: int = 8265, ready_timeout_s: float = 120.0
) -> LocalCluster:
    """``ray start --head`` on 127.0.0.1 with the Jobs API on ``dashboard_port``, ready for jobs.

    Ray's other ports (client server, dashboard agent, runtime-env agent, metrics,
    node and object managers) would take fixed defaults that another local cluster
    may hold; each gets a free port instead. The cluster counts as up only once its
    Jobs API has run a no-op job; otherwise it is stopped again and the reason raised.
    """
    for what, p in (("--port", port), ("--dashboard-port", dashboard_port)):
        if port_in_use(p):
            raise RayClusterError(f"port {p} ({what}) is in use on 127.0.0.1: another Ray cluster? choose another {what}")
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    cmd = [ray_executable(), "start", "--head", "--num-cpus", str(num_cpus), "--node-ip-address", "127.0.0.1",
           "--port", str(port), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard_port),
           "--disable-usage-stats"]
    options = ("--ray-client-server-port", "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
               "--runtime-env-agent-port", "--metrics-export-port", "--node-manager-port", "--object-manager-port")
    for option, free in zip(options, free_ports(len(options))):
        cmd += [option, str(free)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        stop_local_cluster(port)
        raise RayClusterError(f"ray start failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
    cluster = LocalCluster(f"127.0.0.1:{port}", f"http://127.0.0.1:{dashboard_port}")
    try:
        wait_until_jobs_run(cluster.jobs_url, ready_timeout_s)
    except RayClusterError:
        stop_local_cluster(port)
        raise
    return cluster


def wait_until_jobs_run(address: str, timeout_s: float = 120.0) -> None:
    """Submit a no-op job and wait for it to succeed: the proof that jobs can be submitted here."""
    import time

    deadline = time.monotonic() + timeout_s
    last = "no answer"
    client = None
    submission_id = None
    while time.monotonic() < deadline:
        try:
            if client is None:
                client = jobs_client(address)
            if submission_id is None:
                submission_id = client.submit_job(entrypoint="python -c pass", entrypoint_num_cpus=0)
            status = str(client.get_job_status(submission_id))
            if status.endswith("SUCCEEDED"):
                return
            if status.endswith(("FAILED", "STOPPED")):
                info = client.get_job_info(submission_id)
                raise RayClusterError(f"a test job on {address} ended {status}: {(info.message or '').strip()[:300]}")
            last = f"test job {status}"
        except RayClusterError:
            raise
        except Exception as exc:  # not answering yet, or no job agent yet
            last = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1:] or ''}"
        time.sleep(1.0)
    raise RayClusterError(f"the Jobs API at {address} ran no job within {timeout_s:.0f} s ({last})")


def stop_local_cluster(port: int = DEFAULT_GCS_PORT, timeout_s: float = 10.0) -> int:
    """Stop the local cluster whose GCS listens on 127.0.0.1:``port``; returns how many processes.

    Only that cluster's processes (and their workers) are stopped; other Ray
    clusters on this machine keep running (``ray stop`` would stop them all).
    """
    import psutil

    procs = local_cluster_processes(f"127.0.0.1:{port}")
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout_s)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    return len(procs)


def local_cluster_processes(gcs_address: str) -> list[Any]:
    """Every process of the local cluster whose GCS is at ``gcs_address``, workers included.

    Its GCS server names the session folder; the cluster's own processes name that
    folder or the GCS address on their command line; workers and agents are their
    descendants (their titles are rewritten to ``ray::...``).
    """
    import psutil

    port = gcs_address.rsplit(":", 1)[1]
    cmdlines: dict[int, str] = {}
    session = None
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        cmdlines[p.pid] = cmd
        if "gcs_server" in cmd and f"--gcs_server_port={port} " in cmd + " ":
            for arg in p.info["cmdline"]:
                if arg.startswith("--log_dir="):
                    session = os.path.dirname(arg.split("=", 1)[1].rstrip("/"))
    if session is None:
        return []
    roots = [
        pid for pid, cmd in cmdlines.items()
        if session + "/" in cmd
        or (f"={gcs_address}" in cmd and ("/site-packages/ray/" in cmd or "ray.util.client.server" in cmd))
    ]
    out: dict[int, psutil.Process] = {}
    for pid in roots:
        try:
            root = psutil.Process(pid)
            out[pid] = root
            out.update({c.pid: c for c in root.children(recursive=True)})
        except psutil.Error:
            continue
    return list(out.values())


@contextlib.contextmanager
def local_cluster(num_cpus: int = 2) -> Iterator[LocalCluster]:
    """A local Ray cluster of this process's own, for the ``with`` block: stopped after it, and only it.

    It listens on free ports, never on a default one where someone else's cluster may answer,
    and has its own Ray temp dir: a job's driver joins the cluster started last in its temp
    dir, which under the shared /tmp/ray can be another one. While it runs, ``$RAY_ADDRESS``
    is its GCS address, so this process joins it as a driver (the warm retrain actor's
    runner); the environment is restored and the temp dir removed afterwards.
    """
    tmp = tempfile.mkdtemp(prefix="rl-", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    gcs_port, dashboard_port = free_ports(2)
    saved = {k: os.environ.get(k) for k in ("RAY_TMPDIR", "RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    os.environ["RAY_TMPDIR"] = tmp  # inherited by `ray start` and so by every process of the cluster
    # as `ray start` got it: 127.0.0.1 stays loopback (else ray.init swaps in this host's address,
    # where a loopback cluster does not listen); read when ray is first imported
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    started = False
    try:
        log.info("starting a local Ray cluster (%d CPUs, GCS 127.0.0.1:%d, Jobs API port %d, temp dir %s)",
                 num_cpus, gcs_port, dashboard_port, tmp)
        cluster = start_local_cluster(num_cpus, port=gcs_port, dashboard_port=dashboard_port)
        started = True
        os.environ["RAY_ADDRESS"] = cluster.gcs_address  # this process's ray.init joins it: never "auto"
        yield cluster
    finally:
        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized():
            ray.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if started:
            n = stop_local_cluster(gcs_port)
            log.info("stopped the local Ray cluster (GCS 127.0.0.1:%d, %d processes)", gcs_port, n)
        shutil.rmtree(tmp, ignore_errors=True)
