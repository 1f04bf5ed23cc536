"""What a Ray job's workers used on one node, integrated reading by reading, and its price.

A node's readings (whichever way they were read: :mod:`.ray_readers`) give each
worker process's cumulative CPU seconds, RSS and GPUs. Ray workers are dedicated
to one job, so once a worker has been seen running our tasks, all its later CPU
is ours; what it used before the run is not (:func:`worker_baseline`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping

from ..names import METRIC_RAY_CPU_CORE_HOURS, node_metric
from ..pricing import Allocation, CostBreakdown, PriceCatalog
from .gpu import GpuReading
from .samplers import Usage

_log = logging.getLogger(__name__)

__all__ = ["RayNode", "WorkerCpu", "fold_result", "worker_baseline", "node_breakdowns", "node_metrics",
           "CREATE_TIME_SLACK_S"]

# psutil's create time = boot time (whole seconds in /proc/stat) + start ticks: up to 1 s early.
CREATE_TIME_SLACK_S = 1.0


@dataclass
class WorkerCpu:
    """One worker process's CPU seconds: at its baseline (not the run's) and at its last reading."""

    baseline_s: float
    last_s: float
    is_probe: bool = False


@dataclass
class RayNode:
    node_id: str
    prices: PriceCatalog  # the node's own: the policy's [ray] rule matching its labels
    reader: Any  # the ray_readers.NodeReader of the node's read mode (local, agent or probe)
    workers: dict[tuple[int, float], WorkerCpu] = field(default_factory=dict)
    pre_existing: dict[int, tuple[float, float]] = field(default_factory=dict)
    usage: Usage = field(default_factory=Usage)  # the job's workers on this node (not the probe)
    worker_s: float = 0.0  # live workers x seconds: the CPU slots held, for allocation mode
    lost: bool = False
    failures: int = 0

    @property
    def mode(self) -> str:
        """How the node is read: local, agent or probe."""
        return str(self.reader.mode)

    @property
    def in_driver(self) -> bool:
        return self.mode == "local"

    @property
    def agent(self) -> bool:
        return self.mode == "agent"

    @property
    def cpu_s(self) -> float:
        return sum(w.last_s - w.baseline_s for w in self.workers.values() if not w.is_probe)

    @property
    def probe_cpu_s(self) -> float:
        return sum(w.last_s - w.baseline_s for w in self.workers.values() if w.is_probe)

    def mark_lost(self, why: str) -> None:
        self.lost = True
        _log.warning(
            "mlflow-finops: Ray node %s lost (%s); its cost up to the last sample is kept", self.node_id, why
        )


def fold_result(node: RayNode, result: Mapping[str, Any], found: set[int], t0: float) -> None:
    """Integrate one reading of ``node`` (``found``: the pids known to run the job there)."""
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
                worker = WorkerCpu(baseline_s=cpu_s, last_s=cpu_s, is_probe=True)
            elif pid not in found:
                continue  # a pid we knew was reused by another process
            else:
                worker = WorkerCpu(baseline_s=worker_baseline(node.pre_existing, pid, created, cpu_s, t0), last_s=cpu_s)
            node.workers[key] = worker
        worker.last_s = max(worker.last_s, cpu_s)
        if not worker.is_probe:
            rss += proc_rss
            live += 1
    node.usage.cpu_s = node.cpu_s
    dt = node.usage.advance(now, rss, [GpuReading(**g) for g in result["gpu"]])
    node.worker_s += live * dt


def worker_baseline(pre_existing: Mapping[int, tuple[float, float]], pid: int, created: float, cpu_s: float,
                    t0: float) -> float:
    """The CPU seconds of a worker first seen running this job that are not the run's."""
    pre = pre_existing.get(pid)
    if pre is not None and abs(pre[0] - created) < 0.05:
        # In the snapshot. Attached mid-run (ray.init() after the run started), the snapshot
        # also lists workers started since: a create time never reads late, so >= t0 is new.
        return 0.0 if created >= t0 else pre[1]
    if created >= t0 - CREATE_TIME_SLACK_S:
        return 0.0  # started for the run (not in the snapshot, and not visibly older)
    return cpu_s  # alive before the run but unseen then (no snapshot of its node): from now on


def node_breakdowns(nodes: Iterable[RayNode], wall_s: float, allocation_mode: str) -> dict[str, CostBreakdown]:
    """Each node's cost so far (``wall_hours`` 0: the run's wall time is the driver's)."""
    out = {}
    wall_s = max(wall_s, 1e-9)
    for node in nodes:
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
        out[node.node_id] = replace(b, wall_hours=0.0, allocation_mode=allocation_mode, peak_rss_gb=0.0)
    return out


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
