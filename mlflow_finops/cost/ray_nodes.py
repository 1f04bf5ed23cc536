"""What a Ray driver's tasks and actors use on every node of the cluster.

Ray worker processes are children of each node's raylet, not of the training
script, so the driver's process-tree sampler cannot see them. This module
finds the workers that run *this driver's* job (Ray's state API: the job's
running tasks and live actors give node id + worker pid), and reads their
cumulative CPU time, memory and GPUs. Three ways, per node (the run's
``finops.ray_read`` tag says which it took: local, agent, probe, or mixed):

- *local*: nodes on the driver's own host are read from this process's /proc;
- *agent*: other nodes are read from what Ray already collects: each node's
  dashboard agent (reporter) sends its raylet's worker processes (pid, create
  time, ``cpu_times``, ``memory_info``, and the job id from the raylet's core
  worker stats) to the head, whose dashboard serves them at
  ``GET /nodes/{node_id}`` (``data.detail.workers``). Only the head's dashboard
  port is needed (the one the state API uses), not the agents' ports, and no
  process runs on the node for us;
- *probe*: one tiny probe actor per node (``num_cpus=0``, pinned to the node),
  where the head serves no agent data (no dashboard, an older Ray, or the
  endpoint failing at attach) and for nodes with GPUs (the agent's GPU figures
  have no per-process split). An idle probe costs ~1.2% of a core.

Ray workers are dedicated to one job, so once a worker has been seen running
our tasks, all its later CPU is ours.

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

A worker already alive when tracking started (in the snapshot of every node's
Ray workers taken then) is charged only from its reading at that moment; one
started later is charged from zero (its start-up is part of the run's cost).
psutil's create time reads up to a second early (boot time is whole seconds),
so it alone cannot tell a worker started just after tracking began from an old
one. A node that stops answering keeps its share up to its last reading and is
reported as lost.

The tracker samples all this through :class:`RaySampler`, which attaches once
the process is a Ray driver and keeps the last figures when Ray fails.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.request
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from .._env import env_flag, env_float
from ..names import (
    ENV_RAY_DISCOVERY_S,
    ENV_RAY_READ_AGENT,
    ENV_RAY_READ_LOCAL,
    METRIC_RAY_CPU_CORE_HOURS,
    RETRAIN_ACTOR_CLASS,
    TAG_RAY_JOB_ID,
    TAG_RAY_LOST_NODES,
    TAG_RAY_NODES,
    TAG_RAY_READ,
    node_metric,
)
from ..policy import RayPolicy, load_policy
from ..pricing import Allocation, CostBreakdown, PriceCatalog
from .gpu import GpuReading, GpuSampler
from .samplers import RunUsage, Summary, Usage

_log = logging.getLogger(__name__)

__all__ = ["RaySampler", "RayClusterSampler", "ClusterReading", "ray_driver_active", "NodeProbe", "node_metrics"]

PROBE_TIMEOUT_S = 10.0
# The baseline waits for new probes to start (a driver's first run only: probes are reused).
# One deadline for all nodes together: a worker process can take >10 s to start on a busy
# node, and a node without its baseline is charged only from its workers' first sighting.
PROBE_START_TIMEOUT_S = 30.0
STATE_API_LIMIT = 10_000  # the most Ray's state API returns per call
DISCOVERY_EVERY_S = 5.0  # default of $MLFLOW_FINOPS_RAY_DISCOVERY_S
# psutil's create time = boot time (whole seconds in /proc/stat) + start ticks: up to 1 s early.
CREATE_TIME_SLACK_S = 1.0
AGENT_TIMEOUT_S = 5.0  # one GET of a node's agent data from the head's dashboard
# The head's worker list changes at most every 15 s: reading it every second would only cost CPU.
AGENT_READ_EVERY_S = 5.0
AGENT_POLL_S = 1.0  # the final read's polling, waiting for fresh agent data
# (node id, pid, create time) -> the worker's CPU seconds at this driver's last agent read: the next
# run's baseline for a worker the agent's (stale) list at attach shows with less.
_AGENT_LAST: dict[tuple[str, int, float], float] = {}


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


def ray_driver_active() -> bool:
    """True in a process that is a connected Ray *driver* (never inside a task or actor)."""
    import sys

    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return False
    try:
        from ray._private.worker import SCRIPT_MODE, global_worker

        return global_worker.mode == SCRIPT_MODE
    except Exception:  # pragma: no cover - Ray internals moved
        return False


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


@dataclass
class _Worker:
    baseline_s: float
    last_s: float
    is_probe: bool = False


@dataclass
class _Node:
    node_id: str
    prices: PriceCatalog  # the node's own: the policy's [ray] rule matching its labels
    probe: Any = None
    in_driver: bool = False  # the node's processes are read from this process, not by an actor
    agent: bool = False  # read from the head's copy of the node's dashboard agent reports
    job_pids: set[int] = field(default_factory=set)  # agent nodes: every pid seen running this job
    workers: dict[tuple[int, float], _Worker] = field(default_factory=dict)
    pre_existing: dict[int, tuple[float, float]] = field(default_factory=dict)
    usage: Usage = field(default_factory=Usage)  # the job's workers on this node (not the probe)
    worker_s: float = 0.0  # live workers x seconds: the CPU slots held, for allocation mode
    lost: bool = False
    failures: int = 0

    @property
    def cpu_s(self) -> float:
        return sum(w.last_s - w.baseline_s for w in self.workers.values() if not w.is_probe)

    @property
    def probe_cpu_s(self) -> float:
        return sum(w.last_s - w.baseline_s for w in self.workers.values() if w.is_probe)


@dataclass(frozen=True)
class ClusterReading:
    """One look at every node: when it started, the job's workers found, each node's probe result."""

    time: float
    found: dict[str, set[int]]
    results: dict[str, dict[str, Any]]


class RayClusterSampler:
    """Attributes a Ray job's worker usage, per node, to the tracked run.

    Called from the tracker's sampler thread: ``collect()`` reads every node
    once, ``fold()`` integrates the readings and prices each node with its own
    catalog (:meth:`breakdowns`).
    """

    def __init__(self, prices: PriceCatalog, policy: RayPolicy | None = None, t0: float | None = None):
        import ray

        self._ray = ray
        self.base_prices = prices
        self.policy = policy
        self.t0 = t0 or time.time()
        self.job_id = ray.get_runtime_context().get_job_id()
        self._driver_node = ray.get_runtime_context().get_node_id()
        self.nodes: dict[str, _Node] = {}
        self._state_api_errors = 0
        self._last_discovery = float("-inf")
        self.discovery_every_s = env_float(ENV_RAY_DISCOVERY_S, DISCOVERY_EVERY_S)
        self._state_url: str | None = None  # the connected cluster's state API, resolved once
        self._probe_cls = ray.remote(num_cpus=0, max_restarts=0)(NodeProbe)
        self.read_in_driver = env_flag(ENV_RAY_READ_LOCAL, True)
        self.read_agent = env_flag(ENV_RAY_READ_AGENT, True)
        self._driver_ip: str | None = None
        self._last_agent_read = float("-inf")
        self._refresh_nodes()
        # Baseline: every Ray worker already alive, so CPU spent before the run is not charged.
        local = [n for n in self.nodes.values() if n.in_driver]
        if local:
            here = _in_driver_probe().ray_workers()  # one host: one listing serves all its nodes
            for n in local:
                n.pre_existing = here
        for n in self.nodes.values():
            if n.agent:
                n.pre_existing = self._agent_snapshot(n)
        refs = {n.node_id: n.probe.ray_workers.remote() for n in self.nodes.values() if n.probe is not None
                and not n.in_driver}
        deadline = time.monotonic() + PROBE_START_TIMEOUT_S
        for node_id, ref in refs.items():
            try:
                self.nodes[node_id].pre_existing = ray.get(ref, timeout=max(deadline - time.monotonic(), 0.1))
            except Exception as exc:
                _log.warning(
                    "mlflow-finops: no baseline of the Ray workers on node %s (their CPU counts from "
                    "when they are first seen running this job): %s", node_id, f"{exc}".splitlines()[0][:200]
                )

    # ----------------------------------------------------------- discovery
    def _refresh_nodes(self) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self._raylet_sockets: set[str] | None = None  # listed once per refresh, if a node is new
        for info in self._ray.nodes():
            node_id = info["NodeID"]
            if node_id in self.nodes:
                if not info.get("Alive", False) and not self.nodes[node_id].lost:
                    self._mark_lost(self.nodes[node_id], "node is dead in Ray's view")
                continue
            if not info.get("Alive", False):
                continue
            labels = {k: str(v) for k, v in (info.get("Labels") or {}).items()}
            prices = self.policy.prices_for(self.base_prices, labels) if self.policy else self.base_prices
            if self._on_this_host(info):
                self.nodes[node_id] = _Node(node_id, prices, _in_driver_probe(), in_driver=True)
                continue
            if self._agent_serves(info):
                self.nodes[node_id] = _Node(node_id, prices, agent=True)
                continue
            key = (self.job_id, node_id)
            if key not in _PROBES:  # one probe per node, reused by every run of this driver
                _PROBES[key] = self._probe_cls.options(
                    scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
                ).remote()
            self.nodes[node_id] = _Node(node_id, prices, _PROBES[key])

    def _on_this_host(self, info: dict[str, Any]) -> bool:
        """A node whose raylet runs on the driver's host, in the process namespace we see."""
        if not self.read_in_driver:
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

    def _agent_serves(self, info: dict[str, Any]) -> bool:
        """Whether the head serves agent reports for this node (no GPU: those need a probe)."""
        if not self.read_agent or float((info.get("Resources") or {}).get("GPU", 0)) > 0:
            return False
        try:
            read_agent_workers(agent_url(self._state_api_url()), info["NodeID"])
            return True
        except Exception as exc:
            _log.warning("mlflow-finops: no Ray agent data for node %s, a probe actor reads it: %s",
                         info["NodeID"], f"{exc}".splitlines()[0][:200] if f"{exc}" else type(exc).__name__)
            return False

    def _agent_snapshot(self, node: _Node) -> dict[int, tuple[float, float]]:
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

    def _state_api_url(self) -> str:
        """The state API of the cluster this driver is connected to.

        Without an address Ray's state API looks for a local cluster on every
        call: it scans the machine's processes, picks the *latest* local cluster
        when there are several (not necessarily this driver's: another cluster's
        job with the same id would be charged here) and finds none for a driver
        connected to a remote cluster.
        """
        if self._state_url is None:
            from ray.dashboard.utils import ray_address_to_api_server_url

            self._state_url = ray_address_to_api_server_url(self._ray.get_runtime_context().gcs_address)
        return self._state_url

    def _job_workers(self, all_tasks: bool = False) -> dict[str, set[int]]:
        """Node id -> pids of worker processes running this job's tasks and actors."""
        from ray.util.state import list_actors, list_tasks

        address = self._state_api_url()
        out: dict[str, set[int]] = {}
        task_filters: list[tuple[str, str, str]] = [("job_id", "=", self.job_id)]
        if not all_tasks:
            task_filters.append(("state", "=", "RUNNING"))
        for t in list_tasks(address, filters=task_filters, limit=STATE_API_LIMIT, raise_on_missing_output=False):
            if t.node_id and t.worker_pid and not (t.name or "").startswith(f"{RETRAIN_ACTOR_CLASS}."):
                out.setdefault(t.node_id, set()).add(int(t.worker_pid))
        for a in list_actors(
            address,
            filters=[("job_id", "=", self.job_id), ("state", "=", "ALIVE")],
            limit=STATE_API_LIMIT,
            raise_on_missing_output=False,
        ):
            if a.node_id and a.pid and a.class_name not in ("NodeProbe", RETRAIN_ACTOR_CLASS):
                out.setdefault(a.node_id, set()).add(int(a.pid))
        return out

    def _read_agents(self, found: dict[str, set[int]], final: bool) -> dict[str, dict[str, Any]]:
        """Node id -> a probe-shaped result from the head's agent data, for the agent nodes.

        Read every AGENT_READ_EVERY_S; the final read waits (up to :func:`agent_staleness_s` + 3 s)
        until each node's list has changed after a report the agent took after the job ended.
        """
        nodes = [n for n in self.nodes.values() if n.agent and not n.lost]
        for n in nodes:
            n.job_pids |= found.get(n.node_id, set())
        now = time.monotonic()
        if not nodes or (not final and now - self._last_agent_read < AGENT_READ_EVERY_S):
            return {}
        self._last_agent_read = now
        url = agent_url(self._state_api_url())
        results: dict[str, dict[str, Any]] = {}
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
                results[node.node_id] = self._agent_result(node, workers, at)
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

    def _agent_result(self, node: _Node, workers: list[dict[str, Any]], at: float) -> dict[str, Any]:
        procs = {}
        for w in workers:
            pid = int(w["pid"])
            if _is_driver(w) or (node.node_id == self._driver_node and pid == os.getpid()):
                continue  # the raylet lists drivers too: the run's driver is its process tree's
            if w.get("jobId") == self.job_id:
                node.job_pids.add(pid)  # the raylet's core worker stats name the job too
            if pid not in node.job_pids:
                continue
            created = round(float(w["createTime"]), 2)
            cpu = _agent_cpu_s(w)
            _AGENT_LAST[(node.node_id, pid, created)] = cpu
            procs[pid] = (created, cpu, int((w.get("memoryInfo") or {}).get("rss", 0)))
        return {"time": at, "procs": procs, "gpu": [], "probe_pid": -1}

    # -------------------------------------------------------------- sample
    def collect(self, final: bool = False) -> ClusterReading:
        started = time.time()
        # Discovery (GCS + state API, both on the head) at most every DISCOVERY_EVERY_S:
        # a worker found late loses nothing (its baseline is from the run's start), and
        # known workers are read by the probes at every sample.
        now = time.monotonic()
        if not final and now - self._last_discovery < self.discovery_every_s:
            found: dict[str, set[int]] = {}
        else:
            self._last_discovery = now
            self._refresh_nodes()
            found = self._discover(final)
        results = self._read_probes(found)
        results.update(self._read_agents(found, final))
        return ClusterReading(started, found, results)

    def fold(self, reading: ClusterReading, usage: RunUsage) -> None:
        for node_id, result in reading.results.items():
            node = self.nodes[node_id]
            self._apply(node, result, node.job_pids if node.agent else reading.found.get(node_id, set()))
        usage.nodes = self.breakdowns(reading.time - self.t0)

    def close(self, usage: RunUsage) -> Summary:
        """The job's tags and the per-node figures; probes of lost nodes are forgotten, the
        others stay for the driver's next run."""
        tags = {TAG_RAY_JOB_ID: self.job_id, TAG_RAY_NODES: str(len(usage.nodes)), TAG_RAY_READ: self.read_path}
        if self.lost_nodes:
            tags[TAG_RAY_LOST_NODES] = ",".join(self.lost_nodes)
        for node in self.nodes.values():
            if node.lost:
                _PROBES.pop((self.job_id, node.node_id), None)
        limit = (self.policy or RayPolicy()).max_node_metrics
        return Summary(tags, node_metrics(usage.nodes, limit))

    def _discover(self, final: bool) -> dict[str, set[int]]:
        try:
            return self._job_workers(all_tasks=final)
        except Exception as exc:
            self._state_api_errors += 1
            self._state_url = None  # resolved again next time (the dashboard may have moved)
            log = _log.warning if self._state_api_errors == 1 else _log.debug
            log("mlflow-finops: Ray state API unavailable (known workers still read): %s", exc)
            return {}

    def _read_probes(self, found: dict[str, set[int]]) -> dict[str, dict[str, Any]]:
        """Node id -> probe result, for every node that answered."""
        pending = {}
        local = {}
        results = {}
        for node in self.nodes.values():
            if node.lost or node.agent:
                continue
            known = {pid for pid, _ in node.workers}
            pids = sorted(known | found.get(node.node_id, set()))
            if node.in_driver:
                local[node.node_id] = pids
            else:
                pending[node.node_id] = node.probe.read.remote(pids)  # all nodes read at once
        for node_id, pids in local.items():
            results[node_id] = self.nodes[node_id].probe.read(pids)
        for node_id, ref in pending.items():
            node = self.nodes[node_id]
            try:
                results[node_id] = self._ray.get(ref, timeout=PROBE_TIMEOUT_S)
            except Exception as exc:
                node.failures += 1
                if node.failures >= 2 or "ActorDied" in type(exc).__name__ or "ActorUnavailable" in type(exc).__name__:
                    self._mark_lost(node, f"{type(exc).__name__}: {exc}".splitlines()[0])
                continue
            node.failures = 0
        return results

    def _apply(self, node: _Node, result: dict[str, Any], found: set[int]) -> None:
        now = float(result["time"])
        probe_pid = int(result["probe_pid"])
        rss = 0
        live = 0
        for pid, (created, cpu_s, proc_rss) in result["procs"].items():
            pid = int(pid)
            key = (pid, round(created, 2))
            worker = node.workers.get(key)
            if worker is None:
                if pid == probe_pid:
                    worker = _Worker(baseline_s=cpu_s, last_s=cpu_s, is_probe=True)
                elif pid not in found:
                    continue  # a pid we knew was reused by another process
                else:
                    worker = _Worker(baseline_s=self._baseline(node, pid, created, cpu_s), last_s=cpu_s)
                node.workers[key] = worker
            worker.last_s = max(worker.last_s, cpu_s)
            if not worker.is_probe:
                rss += proc_rss
                live += 1
        node.usage.cpu_s = node.cpu_s
        dt = node.usage.advance(now, rss, [GpuReading(**g) for g in result["gpu"]])
        node.worker_s += live * dt

    def _baseline(self, node: _Node, pid: int, created: float, cpu_s: float) -> float:
        """The CPU seconds of a worker first seen running this job that are not the run's."""
        pre = node.pre_existing.get(pid)
        if pre is not None and abs(pre[0] - created) < 0.05:
            # In the snapshot. Attached mid-run (ray.init() after the run started), the snapshot
            # also lists workers started since: a create time never reads late, so >= t0 is new.
            return 0.0 if created >= self.t0 else pre[1]
        if created >= self.t0 - CREATE_TIME_SLACK_S:
            return 0.0  # started for the run (not in the snapshot, and not visibly older)
        return cpu_s  # alive before the run but unseen then (no snapshot of its node): from now on

    def _mark_lost(self, node: _Node, why: str) -> None:
        node.lost = True
        _log.warning(
            "mlflow-finops: Ray node %s lost (%s); its cost up to the last sample is kept", node.node_id, why
        )

    # ------------------------------------------------------------- figures
    def breakdowns(self, wall_s: float) -> dict[str, CostBreakdown]:
        """Each node's cost so far (``wall_hours`` 0: the run's wall time is the driver's)."""
        out = {}
        wall_s = max(wall_s, 1e-9)
        for node in self.nodes.values():
            if not node.workers and not node.lost:
                continue
            usage = node.usage
            if usage.cpu_s <= 0 and usage.ram_gb_s <= 0 and not usage.gpu.seconds_by_model:
                continue
            b = usage.price(
                node.prices,
                wall_s=wall_s,
                allocation=Allocation(
                    cpus=node.worker_s / wall_s,
                    ram_gb=usage.ram_gb_s / wall_s,
                    gpus=len(usage.gpu.seconds_by_model),
                    gpu_models=tuple(usage.gpu.seconds_by_model),
                ),
            )
            # The run's peak RSS is its driver's process tree's, not a node's.
            out[node.node_id] = replace(
                b, wall_hours=0.0, allocation_mode=self.base_prices.allocation_mode, peak_rss_gb=0.0
            )
        return out

    @property
    def read_path(self) -> str:
        """local | agent | probe: how the nodes that ran the job were read (all nodes if none did);
        mixed when it differs between them."""
        used = [n for n in self.nodes.values() if n.workers] or list(self.nodes.values())
        paths = {"local" if n.in_driver else "agent" if n.agent else "probe" for n in used}
        return paths.pop() if len(paths) == 1 else "mixed" if paths else "none"

    @property
    def lost_nodes(self) -> list[str]:
        return [n.node_id for n in self.nodes.values() if n.lost]

    @property
    def probe_cpu_s(self) -> float:
        return sum(n.probe_cpu_s for n in self.nodes.values())


def node_metrics(shares: Mapping[str, CostBreakdown], limit: int) -> dict[str, float]:
    """The job's CPU, and per-node cost for the ``limit`` dearest nodes, the rest summed as 'other'.

    Final values only: live, they would multiply what every delivery writes by the
    node count (delivery is most of tracking's own CPU). Nothing without a node.
    """
    if not shares:
        return {}
    ranked = sorted(shares.items(), key=lambda kv: kv[1].cost_usd, reverse=True)
    out = {METRIC_RAY_CPU_CORE_HOURS: sum(b.cpu_core_hours for b in shares.values())}
    for i, (node_id, b) in enumerate(ranked):
        name = node_id if i < limit else "other"
        for figure, value in (("cost_usd", b.cost_usd), ("cpu_core_hours", b.cpu_core_hours)):
            metric = node_metric(name, figure)
            out[metric] = out.get(metric, 0.0) + value
    return out


class RaySampler:
    """The tracker's sampler of a Ray job: attaches once this process is a Ray driver.

    ``ray.init()`` may come after the run started, so every sample without a
    cluster checks again (and attaches in the background: probes take a moment
    to start). A Ray sample that fails keeps the last figures: Ray never stops
    the run's own tracking.
    """

    def __init__(self, prices: PriceCatalog, policy: RayPolicy | None = None, name: str = "finops-ray"):
        self.prices = prices
        self.policy = policy
        self.name = name
        self.t0 = time.time()
        self.cluster: RayClusterSampler | None = None
        self._attaching = False
        self._errors = 0

    def start(self, t0: float) -> None:
        """Attach now if this process is a Ray driver already.

        Synchronously, so Ray workers alive now get their baseline before the run's
        tasks start (probes are reused, so only a driver's first run waits for them).
        """
        self.t0 = t0
        if ray_driver_active():
            self._attach()

    def _attach_async(self) -> None:
        if self._attaching or not ray_driver_active():
            return
        self._attaching = True
        threading.Thread(target=self._attach, name=self.name, daemon=True).start()

    def _attach(self) -> None:
        self._attaching = True
        try:
            if self.policy is None:
                try:
                    self.policy = load_policy().ray
                except Exception:
                    self.policy = None
            self.cluster = RayClusterSampler(self.prices, self.policy, t0=self.t0)
            _log.debug("Ray attribution on for job %s", self.cluster.job_id)
        except Exception as exc:
            _log.warning("mlflow-finops: Ray workers not tracked (training continues): %s", exc)

    def collect(self, final: bool = False) -> ClusterReading | None:
        if self.cluster is None:
            self._attach_async()
            return None
        try:
            return self.cluster.collect(final)
        except Exception as exc:
            self._failed(exc)
            return None

    def fold(self, reading: ClusterReading | None, usage: RunUsage) -> None:
        if reading is None or self.cluster is None:
            return  # not attached, or the reading failed: the last figures stay
        try:
            self.cluster.fold(reading, usage)
            self._errors = 0
        except Exception as exc:
            self._failed(exc)

    def close(self, usage: RunUsage) -> Summary:
        return Summary() if self.cluster is None else self.cluster.close(usage)

    def _failed(self, exc: Exception) -> None:
        self._errors += 1
        if self._errors == 1:
            _log.warning("mlflow-finops: Ray sample failed (kept last figures): %s", exc)
