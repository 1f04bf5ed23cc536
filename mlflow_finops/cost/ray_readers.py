"""How the worker processes of one Ray node are read: one reader per way (the run's
``finops.ray_read`` tag says which were used: local, agent, probe, or mixed).

- :class:`LocalReader`: nodes on the driver's own host, read from this process's /proc;
- :class:`AgentReader`: other nodes, from what Ray already collects: each node's
  dashboard agent (reporter) sends its raylet's worker processes (pid, create
  time, ``cpu_times``, ``memory_info``, and the job id from the raylet's core
  worker stats) to the head, whose dashboard serves them at
  ``GET /nodes/{node_id}`` (``data.detail.workers``). Only the head's dashboard
  port is needed (the one the state API uses), not the agents' ports, and no
  process runs on the node for us;
- :class:`ProbeReader`: one tiny probe actor per node (``num_cpus=0``, pinned to the
  node), where the head serves no agent data (no dashboard, an older Ray, or the
  endpoint failing at attach) and for nodes with GPUs (the agent's GPU figures
  have no per-process split). An idle probe costs ~1.2% of a core.

Every reader takes a baseline of its nodes' Ray workers at attach, then reads in
two steps, so that all nodes are read at once: :meth:`NodeReader.request` (probe
actors are asked) and :meth:`NodeReader.results` (answers collected).

Staleness of the agent path: the agent reports every 5 s
(``REPORTER_UPDATE_INTERVAL_MS``), the head merges the reports into its worker
list every 15 s (``RAY_DASHBOARD_STATS_UPDATING_INTERVAL``) and caches HTTP
answers 2 s, so a reading is at most ~22 s old (:func:`agent_staleness_s`, from
the driver's view of those settings). Live figures lag by that much; the run's
final figures do not: after the job's last task the final read waits until
each node's list changes after a report taken after the job ended (up to
``agent_staleness_s() + 3`` s, 25 s by default), so the last seconds count. A
worker already alive before the run is charged from its reading in the
previous run of this driver (exact) or else from the agent's list at attach,
which may miss its last ~22 s before the run (charged to the run).
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.request
from typing import Any, Callable, Mapping

from .gpu import GpuSampler
from .ray_usage import RayNode

_log = logging.getLogger(__name__)

__all__ = ["NodeReader", "LocalReader", "AgentReader", "ProbeReader", "NodeProbe", "agent_staleness_s",
           "agent_url", "read_agent_workers"]

PROBE_TIMEOUT_S = 10.0
# The baseline waits for new probes to start (a driver's first run only: probes are reused).
# One deadline for all nodes together: a worker process can take >10 s to start on a busy
# node, and a node without its baseline is charged only from its workers' first sighting.
PROBE_START_TIMEOUT_S = 30.0
AGENT_TIMEOUT_S = 5.0  # one GET of a node's agent data from the head's dashboard
# The head's worker list changes at most every 15 s: reading it every second would only cost CPU.
AGENT_READ_EVERY_S = 5.0
AGENT_POLL_S = 1.0  # the final read's polling, waiting for fresh agent data
# (node id, pid, create time) -> the worker's CPU seconds at this driver's last agent read: the next
# run's baseline for a worker the agent's (stale) list at attach shows with less.
_AGENT_LAST: dict[tuple[str, int, float], float] = {}

Result = dict[str, Any]  # one node's reading: time, procs {pid: (create time, CPU s, RSS)}, gpu, probe_pid


def agent_staleness_s() -> float:
    """How old the head's agent data on a node's workers can be: report + merge interval + cache."""
    try:
        from ray.dashboard.consts import AIOHTTP_CACHE_TTL_SECONDS, RAY_DASHBOARD_STATS_UPDATING_INTERVAL
        from ray.dashboard.modules.reporter.reporter_consts import REPORTER_UPDATE_INTERVAL_MS

        return REPORTER_UPDATE_INTERVAL_MS / 1000 + RAY_DASHBOARD_STATS_UPDATING_INTERVAL + AIOHTTP_CACHE_TTL_SECONDS
    except Exception:  # pragma: no cover - Ray's dashboard constants moved
        return 22.0


def _agent_report_s() -> float:
    try:
        from ray.dashboard.modules.reporter.reporter_consts import REPORTER_UPDATE_INTERVAL_MS

        return REPORTER_UPDATE_INTERVAL_MS / 1000
    except Exception:  # pragma: no cover
        return 5.0


def agent_url(state_api_url: str) -> str:
    """The head dashboard serving the agents' reports: the state API's server."""
    return state_api_url.rstrip("/")


def read_agent_workers(url: str, node_id: str, timeout: float = AGENT_TIMEOUT_S) -> list[dict[str, Any]]:
    """The head's latest agent data on one node's worker processes (KeyError/OSError if it has none)."""
    with urllib.request.urlopen(f"{url}/nodes/{node_id}", timeout=timeout) as resp:
        body = json.load(resp)
    workers = body["data"]["detail"]["workers"]
    if not isinstance(workers, list):
        raise KeyError("workers")
    return workers


def _is_driver(worker: Mapping[str, Any]) -> bool:
    return any(s.get("workerType") == "DRIVER" for s in worker.get("coreWorkerStats") or [])


def _agent_cpu_s(worker: Mapping[str, Any]) -> float:
    t = worker["cpuTimes"]
    return float(t["user"]) + float(t["system"]) + float(t.get("childrenUser", 0)) + float(t.get("childrenSystem", 0))


class NodeProbe:
    """Reads the given worker processes of one node: as a Ray actor on that node, or in the
    driver itself for nodes on the driver's host (``in_driver``: its own process is not read)."""

    def __init__(self, in_driver: bool = False) -> None:
        self.gpu = GpuSampler()
        self.in_driver = in_driver

    def read(self, pids: list[int]) -> dict[str, Any]:
        import psutil

        procs: dict[int, tuple[float, float, int]] = {}
        own = set() if self.in_driver else {os.getpid()}  # an actor probe accounts for itself
        for pid in set(pids) | own:
            try:
                p = psutil.Process(pid)
                with p.oneshot():
                    t = p.cpu_times()
                    procs[pid] = (
                        p.create_time(),
                        t.user + t.system + t.children_user + t.children_system,
                        p.memory_info().rss,
                    )
            except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                continue
        gpu = [r.__dict__ for r in self.gpu.read(pids)]
        return {"time": time.time(), "procs": procs, "gpu": gpu, "probe_pid": os.getpid()}

    def ray_workers(self) -> dict[int, tuple[float, float]]:
        """Every Ray worker process on this node: pid -> (create time, CPU seconds)."""
        import psutil

        out = {}
        for p in psutil.process_iter(["name", "cmdline"]):
            try:
                title = (p.info["cmdline"] or [""])[0]
                if title.startswith("ray::") and "Agent" not in title:
                    t = p.cpu_times()
                    out[p.pid] = (p.create_time(), t.user + t.system + t.children_user + t.children_system)
            except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied, IndexError):
                continue
        return out


# (job id, node id) -> probe actor handle; probes live as long as the driver's job.
_PROBES: dict[tuple[str, str], Any] = {}
_IN_DRIVER_PROBE: NodeProbe | None = None  # reads the nodes on the driver's own host


def _in_driver_probe() -> NodeProbe:
    global _IN_DRIVER_PROBE
    if _IN_DRIVER_PROBE is None:
        _IN_DRIVER_PROBE = NodeProbe(in_driver=True)
    return _IN_DRIVER_PROBE


def _local_raylet_sockets() -> set[str]:
    """The socket paths of the raylets running on this host (visible in this process's /proc)."""
    import psutil

    out = set()
    for p in psutil.process_iter(["name", "cmdline"]):
        try:
            if p.info["name"] != "raylet":
                continue
            for arg in p.info["cmdline"] or []:
                if arg.startswith("--raylet_socket_name="):
                    out.add(arg.split("=", 1)[1])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


class NodeReader:
    """One way of reading nodes' worker processes; the sampler gives each node to the first
    reader that :meth:`serves` it."""

    mode = "?"

    def refresh(self) -> None:
        """A look at the cluster's nodes begins (discovery)."""

    def serves(self, info: Mapping[str, Any]) -> bool:
        """Whether this reader can read the node ``info`` (an entry of ``ray.nodes()``)."""
        raise NotImplementedError

    def add(self, node_id: str) -> None:
        """A node this reader reads from now on."""

    def baseline(self, nodes: list[RayNode]) -> None:
        """Set each node's ``pre_existing`` snapshot: its Ray workers now (pid -> create time, CPU s)."""

    def request(self, nodes: list[RayNode], found: Mapping[str, set[int]]) -> Any:
        """Start reading ``nodes`` (``found``: node id -> pids just seen running the job)."""
        raise NotImplementedError

    def results(self, pending: Any, final: bool) -> dict[str, Result]:
        """Node id -> its reading, for the nodes that answered."""
        raise NotImplementedError

    def job_pids(self, node: RayNode, found: Mapping[str, set[int]]) -> set[int]:
        """The pids of ``node`` that may be charged: those just seen running the job."""
        return found.get(node.node_id, set())

    def forget(self, node: RayNode) -> None:
        """The node is lost: nothing of it is kept for the driver's next run."""


def _read_pids(node: RayNode, found: Mapping[str, set[int]]) -> list[int]:
    """Known workers of the node and the ones just seen running the job."""
    return sorted({pid for pid, _ in node.workers} | found.get(node.node_id, set()))


class LocalReader(NodeReader):
    """Nodes whose raylet runs on the driver's host, in the process namespace this process sees."""

    mode = "local"

    def __init__(self, ray: Any, enabled: bool = True) -> None:
        self._ray = ray
        self.enabled = enabled
        self._driver_ip: str | None = None
        self._raylet_sockets: set[str] | None = None

    def refresh(self) -> None:
        self._raylet_sockets = None  # listed once per refresh, if a node is new

    def serves(self, info: Mapping[str, Any]) -> bool:
        if not self.enabled:
            return False
        try:
            if self._driver_ip is None:
                self._driver_ip = self._ray.util.get_node_ip_address()
            if info.get("NodeManagerAddress") != self._driver_ip:
                return False
            if self._raylet_sockets is None:
                self._raylet_sockets = _local_raylet_sockets()
            return info.get("RayletSocketName") in self._raylet_sockets
        except Exception as exc:  # then an actor probe reads it, as for any remote node
            _log.debug("cannot tell whether node %s is local: %s", info.get("NodeID"), exc)
            return False

    def baseline(self, nodes: list[RayNode]) -> None:
        if nodes:
            here = _in_driver_probe().ray_workers()  # one host: one listing serves all its nodes
            for n in nodes:
                n.pre_existing = here

    def request(self, nodes: list[RayNode], found: Mapping[str, set[int]]) -> Any:
        return {n.node_id: _read_pids(n, found) for n in nodes}

    def results(self, pending: Any, final: bool) -> dict[str, Result]:
        return {node_id: _in_driver_probe().read(pids) for node_id, pids in pending.items()}


class ProbeReader(NodeReader):
    """A probe actor per node, pinned to it; serves every node the other readers do not."""

    mode = "probe"

    def __init__(self, ray: Any, job_id: str) -> None:
        self._ray = ray
        self.job_id = job_id
        self._probe_cls = ray.remote(num_cpus=0, max_restarts=0)(NodeProbe)
        self._nodes: dict[str, RayNode] = {}

    def serves(self, info: Mapping[str, Any]) -> bool:
        return True

    def add(self, node_id: str) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        key = (self.job_id, node_id)
        if key not in _PROBES:  # one probe per node, reused by every run of this driver
            _PROBES[key] = self._probe_cls.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
            ).remote()

    def _probe(self, node: RayNode) -> Any:
        return _PROBES[(self.job_id, node.node_id)]

    def baseline(self, nodes: list[RayNode]) -> None:
        refs = {n.node_id: (n, self._probe(n).ray_workers.remote()) for n in nodes}
        deadline = time.monotonic() + PROBE_START_TIMEOUT_S
        for node_id, (node, ref) in refs.items():
            try:
                node.pre_existing = self._ray.get(ref, timeout=max(deadline - time.monotonic(), 0.1))
            except Exception as exc:
                _log.warning(
                    "mlflow-finops: no baseline of the Ray workers on node %s (their CPU counts from "
                    "when they are first seen running this job): %s", node_id, f"{exc}".splitlines()[0][:200]
                )

    def request(self, nodes: list[RayNode], found: Mapping[str, set[int]]) -> Any:
        return {n.node_id: (n, self._probe(n).read.remote(_read_pids(n, found))) for n in nodes}  # all at once

    def results(self, pending: Any, final: bool) -> dict[str, Result]:
        results = {}
        for node_id, (node, ref) in pending.items():
            try:
                results[node_id] = self._ray.get(ref, timeout=PROBE_TIMEOUT_S)
            except Exception as exc:
                node.failures += 1
                if node.failures >= 2 or "ActorDied" in type(exc).__name__ or "ActorUnavailable" in type(exc).__name__:
                    node.mark_lost(f"{type(exc).__name__}: {exc}".splitlines()[0])
                continue
            node.failures = 0
        return results

    def forget(self, node: RayNode) -> None:
        _PROBES.pop((self.job_id, node.node_id), None)


class AgentReader(NodeReader):
    """The head's copy of each node's dashboard agent reports (no GPU nodes: those need a probe)."""

    mode = "agent"

    def __init__(self, state_api_url: Callable[[], str], job_id: str, driver_node: str, enabled: bool = True) -> None:
        self._state_api_url = state_api_url
        self.job_id = job_id
        self._driver_node = driver_node
        self.enabled = enabled
        self._pids: dict[str, set[int]] = {}  # node id -> every pid seen running this job
        self._last_read = float("-inf")

    def serves(self, info: Mapping[str, Any]) -> bool:
        if not self.enabled or float((info.get("Resources") or {}).get("GPU", 0)) > 0:
            return False
        try:
            read_agent_workers(agent_url(self._state_api_url()), info["NodeID"])
            return True
        except Exception as exc:
            _log.warning("mlflow-finops: no Ray agent data for node %s, a probe actor reads it: %s",
                         info["NodeID"], f"{exc}".splitlines()[0][:200] if f"{exc}" else type(exc).__name__)
            return False

    def add(self, node_id: str) -> None:
        self._pids.setdefault(node_id, set())

    def baseline(self, nodes: list[RayNode]) -> None:
        for n in nodes:
            n.pre_existing = self._snapshot(n)

    def _snapshot(self, node: RayNode) -> dict[int, tuple[float, float]]:
        """The node's Ray workers at attach, per the agent (pid -> create time, CPU seconds)."""
        try:
            workers = read_agent_workers(agent_url(self._state_api_url()), node.node_id)
        except Exception as exc:
            _log.warning("mlflow-finops: no baseline of the Ray workers on node %s: %s", node.node_id, exc)
            return {}
        out = {}
        for w in workers:
            created = round(float(w["createTime"]), 2)
            cpu = max(_agent_cpu_s(w), _AGENT_LAST.get((node.node_id, int(w["pid"]), created), 0.0))
            out[int(w["pid"])] = (created, cpu)
        return out

    def job_pids(self, node: RayNode, found: Mapping[str, set[int]]) -> set[int]:
        return self._pids.setdefault(node.node_id, set())

    def request(self, nodes: list[RayNode], found: Mapping[str, set[int]]) -> Any:
        for n in nodes:
            self._pids.setdefault(n.node_id, set()).update(found.get(n.node_id, set()))
        return nodes

    def results(self, pending: Any, final: bool) -> dict[str, Result]:
        """Read every AGENT_READ_EVERY_S; the final read waits (up to :func:`agent_staleness_s` + 3 s)
        until each node's list has changed after a report the agent took after the job ended."""
        nodes: list[RayNode] = pending
        now = time.monotonic()
        if not nodes or (not final and now - self._last_read < AGENT_READ_EVERY_S):
            return {}
        self._last_read = now
        url = agent_url(self._state_api_url())
        results: dict[str, Result] = {}
        ended = time.time()
        ready_at = ended + _agent_report_s() + 2.0  # a list unchanged since then predates no report
        deadline = ended + agent_staleness_s() + 3.0
        armed: dict[str, str] = {}  # final: node -> its list read at ready_at or later
        waiting = {n.node_id for n in nodes}
        while waiting:
            for node in [n for n in nodes if n.node_id in waiting]:
                try:
                    workers = read_agent_workers(url, node.node_id)
                except Exception as exc:
                    node.failures += 1
                    _log.log(logging.WARNING if node.failures == 1 else logging.DEBUG,
                             "mlflow-finops: Ray agent data for node %s unavailable (last figures kept): %s",
                             node.node_id, exc)
                    waiting.discard(node.node_id)
                    continue
                node.failures = 0
                at = time.time()
                results[node.node_id] = self._result(node, workers, at)
                if not final or at >= deadline:
                    waiting.discard(node.node_id)
                    continue
                sig = json.dumps(workers, sort_keys=True)
                if node.node_id in armed and sig != armed[node.node_id]:
                    waiting.discard(node.node_id)
                elif at >= ready_at and node.node_id not in armed:
                    armed[node.node_id] = sig
            if waiting:
                time.sleep(AGENT_POLL_S)
        return results

    def _result(self, node: RayNode, workers: list[dict[str, Any]], at: float) -> Result:
        pids = self._pids.setdefault(node.node_id, set())
        procs = {}
        for w in workers:
            pid = int(w["pid"])
            if _is_driver(w) or (node.node_id == self._driver_node and pid == os.getpid()):
                continue  # the raylet lists drivers too: the run's driver is its process tree's
            if w.get("jobId") == self.job_id:
                pids.add(pid)  # the raylet's core worker stats name the job too
            if pid not in pids:
                continue
            created = round(float(w["createTime"]), 2)
            cpu = _agent_cpu_s(w)
            _AGENT_LAST[(node.node_id, pid, created)] = cpu
            procs[pid] = (created, cpu, int((w.get("memoryInfo") or {}).get("rss", 0)))
        return {"time": at, "procs": procs, "gpu": [], "probe_pid": -1}
