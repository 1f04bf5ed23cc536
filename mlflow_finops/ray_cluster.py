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
    "ClusterUnreachable",
    "gcs_address_of",
    "join",
    "local_cluster",
    "LocalCluster",
]

log = logging.getLogger(__name__)

DEFAULT_JOBS_ADDRESS = "http://127.0.0.1:8265"
DEFAULT_GCS_PORT = 6379


class RayClusterError(RuntimeError):
    """A local Ray cluster could not be started (Ray missing, ``ray start`` failed)."""


class ClusterUnreachable(RuntimeError):
    """This process cannot join a Ray cluster as a driver (not there, or not within the time allowed)."""


JOBS_HTTP_TIMEOUT_S = 120.0  # one request to the Jobs API (Ray's client sets none: a silent server hangs it;
# a submission on a busy 2-core machine was seen to take over 30 s while the job agent started)


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


def jobs_client(address: str | None = None, timeout_s: float = JOBS_HTTP_TIMEOUT_S) -> Any:
    """A Ray ``JobSubmissionClient`` for ``address`` (see :func:`jobs_address`), with its token.

    Every request it sends gives up after ``timeout_s``: Ray's client waits for ever on a Jobs
    API that accepts the connection and never answers, and a cron job must not.
    """
    from ray.job_submission import JobSubmissionClient

    class BoundedJobSubmissionClient(JobSubmissionClient):
        def _do_request(self, method: str, endpoint: str, **kwargs: Any) -> Any:
            kwargs.setdefault("timeout", timeout_s)
            return super()._do_request(method, endpoint, **kwargs)

    return BoundedJobSubmissionClient(jobs_address(address), headers=ray_auth_headers() or None)


def cluster_status(dashboard_url: str, timeout_s: float = 10.0) -> dict:
    """Ray's own resource view (the dashboard's ``/api/cluster_status``), as JSON."""
    import requests

    resp = requests.get(dashboard_url.rstrip("/") + "/api/cluster_status", headers=ray_auth_headers(),
                        timeout=timeout_s)
    resp.raise_for_status()
    return resp.json()


# ------------------------------------------------------------------ joining a cluster as a driver
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
DEFAULT_CONNECT_TIMEOUT_S = 60.0


def _host_port(address: str) -> tuple[str, int] | None:
    """``host:port`` (a ``ray://`` or ``http://`` prefix allowed) split, or None when it has no port."""
    rest = address.split("://", 1)[-1].rstrip("/")
    host, _, port = rest.rpartition(":")
    return (host.strip("[]"), int(port)) if host and port.isdigit() else None


def gcs_address_of(jobs_url: str) -> str | None:
    """The GCS address of the cluster on this machine whose Jobs API is ``jobs_url``, else None.

    A local cluster's dashboard process names both on its command line (``--port`` and
    ``--gcs-address``), so the driver joins exactly the cluster the policy points at, even
    with several local clusters running (Ray's ``"auto"`` takes the one started last).
    """
    import psutil

    hp = _host_port(jobs_url)
    if hp is None or hp[0] not in LOOPBACK_HOSTS + (_own_host(),):
        return None
    for p in psutil.process_iter(["cmdline"]):
        args = p.info["cmdline"] or []
        if not any(a.endswith(os.path.join("dashboard", "dashboard.py")) for a in args):
            continue
        if f"--port={hp[1]}" in args:
            for a in args:
                if a.startswith("--gcs-address="):
                    return a.split("=", 1)[1]
    return None


def _own_host() -> str:
    import socket

    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def _keep_ray_on_loopback() -> None:
    """Make Ray keep ``127.0.0.1`` as this driver's address instead of the host's LAN address.

    Ray replaces a loopback GCS address (and this node's own address) with the host's outward
    address unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` was set before Ray was imported; a
    cluster started on loopback (``ray up``) listens on loopback only, so Ray would retry for
    ever. The variable is set for Ray imports to come, and Ray's constant for one imported already.
    """
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None and hasattr(constants, "ENABLE_RAY_CLUSTER"):
        constants.ENABLE_RAY_CLUSTER = False


def _last_started_cluster() -> str | None:
    """The GCS address of the cluster this machine started last (Ray's own note of it), else None."""
    try:
        from ray._private.utils import read_ray_address

        return read_ray_address() or None
    except Exception:  # noqa: BLE001 - Ray's private helper moved: "auto" still finds it
        return None


def _not_main_thread_note(record: logging.LogRecord) -> bool:
    """Ray's note that a driver started off the main thread sets no SIGTERM handler: the
    process keeps its own (the cost tracker's flush, or the default), which is what we want."""
    return "SIGTERM handler is not set" not in record.getMessage()


# What the processes of a cluster on 127.0.0.1 start with: Ray's own processes stay on loopback
# (their drivers and agents would otherwise reach for the LAN address), and send no usage report.
LOOPBACK_CLUSTER_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


@contextlib.contextmanager
def loopback_cluster_env() -> Iterator[None]:
    """:data:`LOOPBACK_CLUSTER_ENV` while a loopback cluster's processes are started from this process
    (``ray.cluster_utils.Cluster``, as Ray's own tests do), restored after: Ray in this process
    keeps reading what it read at import, as a user's process would."""
    saved = {k: os.environ.get(k) for k in LOOPBACK_CLUSTER_ENV}
    os.environ.update(LOOPBACK_CLUSTER_ENV)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def join(address: str | None = None, *, timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S, **init_kwargs: Any) -> Any:
    """``ray.init`` to the cluster at GCS ``address``, bounded in time.

    ``address`` defaults to ``$RAY_ADDRESS`` (when it is a GCS address, not a Jobs API URL), else
    the cluster this machine started last (Ray's own note of it), else Ray's ``"auto"``.

    On loopback or not: a loopback address stays on loopback (:func:`_keep_ray_on_loopback`).
    The GCS port is tried first (a closed one fails at once, naming it), and ``ray.init`` must
    return within ``timeout_s``; either failure is :class:`ClusterUnreachable` with the address
    tried and what to set. Returns Ray's context. Connected already: returns None.
    """
    import socket
    import threading

    env_address = os.environ.get("RAY_ADDRESS", "")
    if not address and not env_address.startswith(("http://", "https://")):
        address = env_address
    address = address or _last_started_cluster() or "auto"
    if address.startswith(("http://", "https://")):
        raise ClusterUnreachable(f"{address} is a Jobs API address, not a Ray GCS address (host:port)")
    hp = _host_port(address)
    if hp is not None and hp[0] in LOOPBACK_HOSTS:
        _keep_ray_on_loopback()
    import ray

    if ray.is_initialized():
        return None
    hint = ("start one with `mlflow-finops ray up`, or set RAY_ADDRESS to the GCS address (host:port) "
            "of a running cluster")
    if hp is not None:
        try:
            socket.create_connection(hp, timeout=min(5.0, timeout_s)).close()
        except OSError as exc:
            raise ClusterUnreachable(f"no Ray cluster answers at {address} ({exc.strerror or exc}): {hint}") from None
    result: dict[str, Any] = {}
    saved = os.environ.pop("RAY_ADDRESS", None)  # ray.init reads it for "auto"; it may be a Jobs API URL

    def init() -> None:
        try:
            result["ctx"] = ray.init(address=address, **init_kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            result["error"] = exc

    ray_log = logging.getLogger("ray._private.worker")
    ray_log.addFilter(_not_main_thread_note)
    try:
        worker = threading.Thread(target=init, name="finops-ray-join", daemon=True)
        worker.start()
        worker.join(timeout_s)
    finally:
        ray_log.removeFilter(_not_main_thread_note)
        if saved is not None:
            os.environ["RAY_ADDRESS"] = saved
    if worker.is_alive():
        raise ClusterUnreachable(
            f"Ray at {address} did not accept this process as a driver within {timeout_s:.0f} s "
            f"([retrain] connect_timeout_s): {hint}")
    if "error" in result:
        exc = result["error"]
        last = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
        raise ClusterUnreachable(f"cannot join Ray at {address}: {last}: {hint}") from exc
    return result["ctx"]


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
    env = {**os.environ, **LOOPBACK_CLUSTER_ENV}
    cmd = [ray_executable(), "start", "--head", "--num-cpus", str(num_cpus), "--node-ip-address", "127.0.0.1",
           "--port", str(port), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard_port),
           "--disable-usage-stats"]
    options = ("--ray-client-server-port", "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
               "--runtime-env-agent-port", "--metrics-export-port", "--node-manager-port", "--object-manager-port")
    picked = free_ports(len(options))
    for option, free in zip(options, picked):
        cmd += [option, str(free)]
    cmd += worker_port_options({port, dashboard_port, *picked})
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


RAY_WORKER_PORTS = (10002, 19999)  # Ray's default range for its workers' ports


def worker_port_options(taken: set[int]) -> list[str]:
    """``--min/max-worker-port`` keeping Ray's workers off ``taken`` ports (none needed when none is in range).

    ``ray start`` refuses a ``--port`` inside its workers' range (10002-19999) rather than
    work around it; the workers get the longest stretch of that range that holds no taken port.
    """
    lo, hi = RAY_WORKER_PORTS
    inside = sorted(p for p in taken if lo <= p <= hi)
    if not inside:
        return []
    edges = [lo - 1, *inside, hi + 1]
    start, end = max(((a + 1, b - 1) for a, b in zip(edges, edges[1:])), key=lambda r: r[1] - r[0])
    return ["--min-worker-port", str(start), "--max-worker-port", str(end)]


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
    saved = {k: os.environ.get(k) for k in ("RAY_TMPDIR", "RAY_ADDRESS")}
    os.environ["RAY_TMPDIR"] = tmp  # inherited by `ray start` and so by every process of the cluster
    started = False
    try:
        log.info("starting a local Ray cluster (%d CPUs, GCS 127.0.0.1:%d, Jobs API port %d, temp dir %s)",
                 num_cpus, gcs_port, dashboard_port, tmp)
        cluster = start_local_cluster(num_cpus, port=gcs_port, dashboard_port=dashboard_port)
        started = True
        os.environ["RAY_ADDRESS"] = cluster.gcs_address  # this process joins it (join(), on loopback): never "auto"
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
