"""What a Ray driver's tasks and actors use on every node of the cluster.

Ray worker processes are children of each node's raylet, not of the training
script, so the driver's process-tree sampler cannot see them. This module
finds the nodes and the workers that run *this driver's* job (Ray's state API:
the job's running tasks and live actors give node id + worker pid); each node is
read by the reader of its mode (:mod:`.ray_readers`: local, agent or probe), and
its readings are integrated and priced with the node's own catalog
(:mod:`.ray_usage`).

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

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from .._env import env_flag, env_float
from ..names import (
    ENV_RAY_DISCOVERY_S,
    ENV_RAY_READ_AGENT,
    ENV_RAY_READ_LOCAL,
    RETRAIN_ACTOR_CLASS,
    TAG_RAY_JOB_ID,
    TAG_RAY_LOST_NODES,
    TAG_RAY_NODES,
    TAG_RAY_READ,
)
from ..policy import RayPolicy, load_policy
from ..pricing import CostBreakdown, PriceCatalog
from .ray_readers import (  # noqa: F401 - re-exported: their home was this module
    _AGENT_LAST,
    _PROBES,
    AGENT_POLL_S,
    AGENT_READ_EVERY_S,
    AGENT_TIMEOUT_S,
    PROBE_START_TIMEOUT_S,
    PROBE_TIMEOUT_S,
    AgentReader,
    LocalReader,
    NodeProbe,
    NodeReader,
    ProbeReader,
    _agent_cpu_s,
    _agent_report_s,
    _in_driver_probe,
    _is_driver,
    _local_raylet_sockets,
    agent_staleness_s,
    agent_url,
    read_agent_workers,
)
from .ray_usage import (  # noqa: F401 - re-exported: their home was this module
    CREATE_TIME_SLACK_S,
    RayNode,
    WorkerCpu,
    fold_result,
    node_breakdowns,
    node_metrics,
    worker_baseline,
)
from .samplers import RunUsage, Summary

_log = logging.getLogger(__name__)

__all__ = ["RaySampler", "RayClusterSampler", "ClusterReading", "ray_driver_active", "NodeProbe", "node_metrics"]

STATE_API_LIMIT = 10_000  # the most Ray's state API returns per call
DISCOVERY_EVERY_S = 5.0  # default of $MLFLOW_FINOPS_RAY_DISCOVERY_S


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
        self.nodes: dict[str, RayNode] = {}
        self._state_api_errors = 0
        self._last_discovery = float("-inf")
        self.discovery_every_s = env_float(ENV_RAY_DISCOVERY_S, DISCOVERY_EVERY_S)
        self._state_url: str | None = None  # the connected cluster's state API, resolved once
        self._local = LocalReader(ray, enabled=env_flag(ENV_RAY_READ_LOCAL, True))
        self._agent = AgentReader(self._state_api_url, self.job_id, ray.get_runtime_context().get_node_id(),
                                  enabled=env_flag(ENV_RAY_READ_AGENT, True))
        self._probe = ProbeReader(ray, self.job_id)
        self._refresh_nodes()
        # Baseline: every Ray worker already alive, so CPU spent before the run is not charged.
        # The agent's snapshot before waiting for probes to start (the first run's probes).
        for reader in (self._local, self._agent, self._probe):
            reader.baseline(self._nodes_of(reader))

    @property
    def readers(self) -> tuple[NodeReader, ...]:
        """In reading order: the driver's own reads, then probes, then the agents' (which may wait)."""
        return (self._local, self._probe, self._agent)

    def _nodes_of(self, reader: NodeReader) -> list[RayNode]:
        return [n for n in self.nodes.values() if n.reader is reader and not n.lost]

    # ----------------------------------------------------------- discovery
    def _refresh_nodes(self) -> None:
        for reader in self.readers:
            reader.refresh()
        for info in self._ray.nodes():
            node_id = info["NodeID"]
            if node_id in self.nodes:
                if not info.get("Alive", False) and not self.nodes[node_id].lost:
                    self.nodes[node_id].mark_lost("node is dead in Ray's view")
                continue
            if not info.get("Alive", False):
                continue
            labels = {k: str(v) for k, v in (info.get("Labels") or {}).items()}
            prices = self.policy.prices_for(self.base_prices, labels) if self.policy else self.base_prices
            reader = next(r for r in (self._local, self._agent, self._probe) if r.serves(info))
            reader.add(node_id)
            self.nodes[node_id] = RayNode(node_id, prices, reader)

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

    # -------------------------------------------------------------- sample
    def collect(self, final: bool = False) -> ClusterReading:
        started = time.time()
        # Discovery (GCS + state API, both on the head) at most every DISCOVERY_EVERY_S:
        # a worker found late loses nothing (its baseline is from the run's start), and
        # known workers are read at every sample.
        now = time.monotonic()
        if not final and now - self._last_discovery < self.discovery_every_s:
            found: dict[str, set[int]] = {}
        else:
            self._last_discovery = now
            self._refresh_nodes()
            found = self._discover(final)
        pending = [(r, r.request(self._nodes_of(r), found)) for r in self.readers]  # all nodes read at once
        results: dict[str, dict[str, Any]] = {}
        for reader, asked in pending:
            results.update(reader.results(asked, final))
        return ClusterReading(started, found, results)

    def fold(self, reading: ClusterReading, usage: RunUsage) -> None:
        for node_id, result in reading.results.items():
            node = self.nodes[node_id]
            fold_result(node, result, node.reader.job_pids(node, reading.found), self.t0)
        usage.nodes = self.breakdowns(reading.time - self.t0)

    def close(self, usage: RunUsage) -> Summary:
        """The job's tags and the per-node figures; probes of lost nodes are forgotten, the
        others stay for the driver's next run."""
        tags = {TAG_RAY_JOB_ID: self.job_id, TAG_RAY_NODES: str(len(usage.nodes)), TAG_RAY_READ: self.read_path}
        if self.lost_nodes:
            tags[TAG_RAY_LOST_NODES] = ",".join(self.lost_nodes)
        for node in self.nodes.values():
            if node.lost:
                node.reader.forget(node)
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

    # ------------------------------------------------------------- figures
    def breakdowns(self, wall_s: float) -> dict[str, CostBreakdown]:
        """Each node's cost so far (``wall_hours`` 0: the run's wall time is the driver's)."""
        return node_breakdowns(self.nodes.values(), wall_s, self.base_prices.allocation_mode)

    @property
    def read_path(self) -> str:
        """local | agent | probe: how the nodes that ran the job were read (all nodes if none did);
        mixed when it differs between them."""
        used = [n for n in self.nodes.values() if n.workers] or list(self.nodes.values())
        paths = {n.mode for n in used}
        return paths.pop() if len(paths) == 1 else "mixed" if paths else "none"

    @property
    def lost_nodes(self) -> list[str]:
        return [n.node_id for n in self.nodes.values() if n.lost]

    @property
    def probe_cpu_s(self) -> float:
        return sum(n.probe_cpu_s for n in self.nodes.values())


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
