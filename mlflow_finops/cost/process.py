"""The run's own processes: CPU and memory of one process tree, and the GPUs it holds.

Attribution is by process tree, never machine-wide: a busy neighbour on the
same host is not charged to the run. CPU time is read from the kernel's
cumulative counters, so nothing is lost between samples:

* live processes of the tree: their ``utime + stime``;
* children that already exited: the kernel folds a reaped child's CPU time
  (and that of everything *it* reaped) into its parent's ``cutime + cstime``
  (``getrusage(RUSAGE_CHILDREN)``), so adding each live member's children
  counters covers loky / multiprocessing workers that come and go between
  samples.

Memory is the sum of the tree's resident set sizes. Ray's own processes (and a
Ray driver's workers, which the Ray sampler attributes per node) are left out.

A member that cannot be read (``AccessDenied``: another user's setuid child, a
``hidepid`` /proc) is counted once its parent in the tree reaps it; one still
alive at the run's end, or gone without a member reaping it, is reported as
unaccounted (its pid and the count), and the run is then not ``complete``.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import socket
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import psutil

from ..names import (
    TAG_MACHINE_CPU_CORES,
    TAG_MACHINE_CPU_MODEL,
    TAG_MACHINE_GPU_COUNT,
    TAG_MACHINE_GPU_MODELS,
    TAG_MACHINE_HOSTNAME,
    TAG_MACHINE_RAM_GB,
    TAG_UNACCOUNTED_PIDS,
    TAG_UNACCOUNTED_PROCESSES,
)
from .gpu import GpuReading, GpuSampler
from .samplers import GB, RunUsage, Summary

_log = logging.getLogger(__name__)

__all__ = [
    "ProcessTreeSampler",
    "TreeReading",
    "is_ray_component",
    "MachineInfo",
    "machine_info",
    "allocated_cpus",
    "allocated_ram_gb",
]

# Linux exposes each thread's children (CONFIG_PROC_CHILDREN); psutil's scan of /proc otherwise.
_HAS_CHILDREN_FILES = os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children")
_RAY_NAMES = {"gcs_server", "raylet", "plasma_store", "plasma_store_server"}
MAX_PIDS_TAGGED = 50  # finops.unaccounted_pids lists at most this many


def is_ray_component(proc: Any) -> bool:
    """A Ray system process or worker (GCS, raylet, dashboard, agents, ``ray::`` workers)."""
    try:
        if proc.name() in _RAY_NAMES:
            return True
        cmd = proc.cmdline()
    except Exception:
        return False
    if cmd and cmd[0].startswith("ray::"):
        return True
    return any(
        marker in c
        for c in cmd[:4]
        for marker in ("/ray/dashboard/", "/ray/_private/", "/ray/core/src/", "/ray/autoscaler/")
    )


# --------------------------------------------------------------- CPU / RAM
@dataclass(frozen=True)
class TreeReading:
    """One look at the process tree: cumulative CPU seconds, current RSS, members, their GPUs."""

    timestamp: float
    cpu_s: float
    rss_bytes: int
    pids: frozenset[int]
    gpus: tuple[GpuReading, ...] = ()
    unreadable: frozenset[int] = frozenset()  # live members whose counters were denied


class ProcessTreeSampler:
    """Reads the CPU time and memory of one process and all its descendants.

    As the tracker's :class:`~mlflow_finops.cost.samplers.Sampler` it also reads the
    GPUs the tree holds (``gpu``) and folds into the run's own usage.
    """

    def __init__(
        self,
        pid: int | None = None,
        exclude: Callable[[psutil.Process], bool] | None = is_ray_component,
        gpu: GpuSampler | None = None,
    ):
        self.root = psutil.Process(pid or os.getpid())
        # Subtrees to leave out. By default: Ray's own processes (a local cluster started
        # by this process is in its tree; a Ray driver's job workers are attributed per
        # node by the Ray sampler, the rest is Ray's upkeep). Decisions cached per process.
        self.exclude = exclude
        self.gpu = gpu
        # CPU seconds that are not the run's: the first folded reading's, unless set before.
        self.cpu_baseline_s: float | None = None
        self._excluded: dict[tuple[int, float], bool] = {}
        # CPU seconds of members that vanished without being reaped by a member
        # (orphans re-parented to init): kept at their last reading.
        self._last_seen: dict[tuple[int, float], tuple[float, int | None]] = {}
        self._orphaned_s = 0.0
        self._parents: dict[int, int] = {}  # member pid -> the parent it was found under (last walk)
        # Unreadable members: pid -> parent pid, as of the last reading; and those that went
        # away with no readable member to reap them (their CPU is nowhere in the tree's counters).
        self._unreadable: dict[int, int | None] = {}
        self._lost_unreadable: set[int] = set()

    def read(self) -> TreeReading:
        now = time.time()
        members = [self.root] + self._descendants()
        cpu = 0.0
        rss = 0
        seen: dict[tuple[int, float], tuple[float, int | None]] = {}
        unreadable: dict[int, int | None] = {}
        for proc in members:
            try:
                key, own, reaped, ppid, proc_rss = _read_member(proc)
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
            except psutil.AccessDenied:
                unreadable[proc.pid] = self._parents.get(proc.pid)
                continue
            rss += proc_rss
            cpu += own + reaped
            seen[key] = (own + reaped, ppid)
        pids = {k[0] for k in seen}
        # A member that disappeared while its parent is no longer in the tree was
        # not reaped by us: keep the CPU it had used instead of losing it.
        for key, (used, ppid) in self._last_seen.items():
            if key not in seen and ppid not in pids:
                self._orphaned_s += used
        for pid, parent in self._unreadable.items():
            if pid not in unreadable and pid not in pids and parent not in pids:
                self._lost_unreadable.add(pid)
        self._last_seen, self._unreadable = seen, unreadable
        return TreeReading(now, cpu + self._orphaned_s, rss, frozenset(pids), unreadable=frozenset(unreadable))

    @property
    def unaccounted_pids(self) -> list[int]:
        """Members whose CPU the run lacks: unreadable at the last reading, or gone unreaped."""
        return sorted(set(self._unreadable) | self._lost_unreadable)

    # ------------------------------------------------------------ Sampler
    def collect(self, final: bool = False) -> TreeReading:
        reading = self.read()
        if self.gpu is None:
            return reading
        return replace(reading, gpus=tuple(self.gpu.read(reading.pids)))

    def charge_from(self, start: float, usage: RunUsage, cpu_s: float = 0.0, rss_bytes: int = 0) -> None:
        """Charge the run from ``start`` (its process's start), not from the first reading:
        all the tree's CPU, and memory growing from nothing at ``start``; or, in a long-lived
        worker, from a mark: its tree's CPU ``cpu_s`` and RSS ``rss_bytes`` at ``start``."""
        self.cpu_baseline_s = cpu_s
        usage.local.last_time, usage.local.last_rss = start, rss_bytes

    def fold(self, reading: TreeReading, usage: RunUsage) -> None:
        if self.cpu_baseline_s is None:
            self.cpu_baseline_s = reading.cpu_s
        local = usage.local
        local.cpu_s = max(local.cpu_s, reading.cpu_s - self.cpu_baseline_s)
        local.advance(reading.timestamp, reading.rss_bytes, reading.gpus)

    def close(self, usage: RunUsage) -> Summary:
        missing = self.unaccounted_pids
        if not missing:
            return Summary()
        tags = {
            TAG_UNACCOUNTED_PROCESSES: str(len(missing)),
            TAG_UNACCOUNTED_PIDS: ",".join(map(str, missing[:MAX_PIDS_TAGGED])),
        }
        why = (
            f"{len(missing)} process(es) of the run's tree could not be read (access denied); "
            "their CPU and memory are not in the cost"
        )
        _log.warning("mlflow-finops: %s: pids %s", why, tags[TAG_UNACCOUNTED_PIDS])
        return Summary(tags, lost=why)

    def _descendants(self) -> list[psutil.Process]:
        """The root's descendants, walked from the root; excluded subtrees are never entered."""
        out: list[psutil.Process] = []
        self._parents = {}
        stack = [self.root.pid]
        seen = {self.root.pid}
        while stack:
            parent = stack.pop()
            for child in _children(parent):
                if child in seen:
                    continue
                seen.add(child)
                self._parents[child] = parent
                try:
                    proc = psutil.Process(child)
                except psutil.Error:
                    continue
                try:
                    if self._is_excluded(proc):
                        continue  # and its whole subtree: never walked
                except psutil.NoSuchProcess:
                    continue
                except psutil.AccessDenied:
                    pass  # a member all the same: reported as unaccounted if it stays unreadable
                stack.append(child)
                out.append(proc)
        return out

    def _is_excluded(self, proc: psutil.Process) -> bool:
        if self.exclude is None:
            return False
        key = (proc.pid, proc.create_time())
        if key not in self._excluded:
            self._excluded[key] = bool(self.exclude(proc))
        return self._excluded[key]


def _read_member(proc: psutil.Process) -> tuple[tuple[int, float], float, float, int, int]:
    """One member's ``(pid, create time)``, own CPU, reaped children's CPU, parent pid and RSS."""
    with proc.oneshot():
        t = proc.cpu_times()
        key = (proc.pid, proc.create_time())
        ppid = proc.ppid()
        try:
            rss = proc.memory_info().rss
        except (psutil.ZombieProcess, psutil.AccessDenied):
            rss = 0
    return key, t.user + t.system, t.children_user + t.children_system, ppid, rss


def _children(pid: int) -> list[int]:
    """Direct children of ``pid``: from ``/proc/PID/task/TID/children`` where the kernel has them.

    That reads a few files per member instead of every process's ``stat`` (psutil's
    ``children()``): cheaper, and it keeps a sample short when a pure-Python training
    loop holds the GIL (each file read waits for the GIL).
    """
    if not _HAS_CHILDREN_FILES:
        try:
            return [c.pid for c in psutil.Process(pid).children()]
        except psutil.Error:
            return []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    kids: list[int] = []
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as fh:
                kids += [int(k) for k in fh.read().split()]
        except OSError:
            continue
    return kids


# ----------------------------------------------------------------- machine
@dataclass(frozen=True)
class MachineInfo:
    """What the run ran on; logged as tags so a run can be re-priced later."""

    hostname: str
    cpu_model: str
    cpu_cores: int
    ram_gb: float
    gpu_models: tuple[str, ...]

    def tags(self) -> dict[str, str]:
        return {
            TAG_MACHINE_HOSTNAME: self.hostname,
            TAG_MACHINE_CPU_MODEL: self.cpu_model,
            TAG_MACHINE_CPU_CORES: str(self.cpu_cores),
            TAG_MACHINE_RAM_GB: f"{self.ram_gb:.1f}",
            TAG_MACHINE_GPU_COUNT: str(len(self.gpu_models)),
            TAG_MACHINE_GPU_MODELS: ",".join(self.gpu_models) or "none",
        }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


@functools.lru_cache(maxsize=1)
def machine_info() -> MachineInfo:
    return MachineInfo(
        hostname=socket.gethostname(),
        cpu_model=_cpu_model(),
        cpu_cores=psutil.cpu_count(logical=True) or 1,
        ram_gb=psutil.virtual_memory().total / GB,
        gpu_models=GpuSampler().models,
    )


def _cgroup_file(name: str) -> str | None:
    """Read a cgroup v2 control file of this process's own cgroup."""
    try:
        rel = Path("/proc/self/cgroup").read_text().strip().split("::", 1)[1]
        return (Path("/sys/fs/cgroup") / rel.lstrip("/") / name).read_text().strip()
    except (OSError, IndexError):
        return None


def allocated_cpus() -> float:
    """Cores this process may use: CPU affinity, capped by a cgroup v2 quota."""
    try:
        cores = float(len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        cores = float(psutil.cpu_count() or 1)
    quota = _cgroup_file("cpu.max")
    if quota and not quota.startswith("max"):
        q, period = quota.split()[:2]
        cores = min(cores, int(q) / int(period))
    return cores


def allocated_ram_gb() -> float:
    """Memory this process may use: the cgroup v2 limit, else the machine's RAM."""
    limit = _cgroup_file("memory.max")
    total = psutil.virtual_memory().total
    if limit and limit != "max":
        total = min(total, int(limit))
    return total / GB
