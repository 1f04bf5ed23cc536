"""Samplers for what one run uses: its own process tree's CPU and memory, and its GPUs.

Attribution is by process tree, never machine-wide: a busy neighbour on the
same host is not charged to the run. CPU time is read from the kernel's
cumulative counters, so nothing is lost between samples:

* live processes of the tree: their ``utime + stime``;
* children that already exited: the kernel folds a reaped child's CPU time
  (and that of everything *it* reaped) into its parent's ``cutime + cstime``
  (``getrusage(RUSAGE_CHILDREN)``), so adding each live member's children
  counters covers loky / multiprocessing workers that come and go between
  samples.

Memory is the sum of the tree's resident set sizes. GPUs are read through
NVML when a driver is present; without one, GPU figures are zero.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import psutil

_log = logging.getLogger(__name__)

__all__ = [
    "ProcessTreeSampler",
    "TreeReading",
    "GpuSampler",
    "GpuReading",
    "MachineInfo",
    "machine_info",
    "allocated_cpus",
    "allocated_ram_gb",
]

GB = 1024**3
# Linux exposes each thread's children (CONFIG_PROC_CHILDREN); psutil's scan of /proc otherwise.
_HAS_CHILDREN_FILES = os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children")


# --------------------------------------------------------------- CPU / RAM
@dataclass(frozen=True)
class TreeReading:
    """One look at the process tree: cumulative CPU seconds, current RSS, members."""

    timestamp: float
    cpu_s: float
    rss_bytes: int
    pids: frozenset[int]


class ProcessTreeSampler:
    """Reads the CPU time and memory of one process and all its descendants."""

    def __init__(self, pid: int | None = None, exclude: Callable[[psutil.Process], bool] | None = None):
        self.root = psutil.Process(pid or os.getpid())
        # Subtrees to leave out. By default: Ray's own processes (a local cluster started
        # by this process is in its tree; a Ray driver's job workers are attributed per
        # node by the Ray sampler, the rest is Ray's upkeep). Decisions cached per process.
        if exclude is None:
            from .ray_nodes import is_ray_component

            exclude = is_ray_component
        self.exclude = exclude
        self._excluded: dict[tuple[int, float], bool] = {}
        # CPU seconds of members that vanished without being reaped by a member
        # (orphans re-parented to init): kept at their last reading.
        self._last_seen: dict[tuple[int, float], tuple[float, int | None]] = {}
        self._orphaned_s = 0.0

    def read(self) -> TreeReading:
        now = time.time()
        members = [self.root] + self._descendants()
        cpu = 0.0
        rss = 0
        seen: dict[tuple[int, float], tuple[float, int | None]] = {}
        for proc in members:
            try:
                with proc.oneshot():
                    t = proc.cpu_times()
                    key = (proc.pid, proc.create_time())
                    ppid = proc.ppid()
                    try:
                        rss += proc.memory_info().rss
                    except (psutil.ZombieProcess, psutil.AccessDenied):
                        pass
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
            except psutil.AccessDenied:  # pragma: no cover - other user's process
                continue
            own = t.user + t.system
            reaped = t.children_user + t.children_system
            cpu += own + reaped
            seen[key] = (own + reaped, ppid)
        pids = {k[0] for k in seen}
        # A member that disappeared while its parent is no longer in the tree was
        # not reaped by us: keep the CPU it had used instead of losing it.
        for key, (used, ppid) in self._last_seen.items():
            if key not in seen and ppid not in pids:
                self._orphaned_s += used
        self._last_seen = seen
        return TreeReading(now, cpu + self._orphaned_s, rss, frozenset(pids))

    def _descendants(self) -> list[psutil.Process]:
        """The root's descendants, walked from the root; excluded subtrees are never entered."""
        out: list[psutil.Process] = []
        stack = [self.root.pid]
        seen = {self.root.pid}
        while stack:
            for child in _children(stack.pop()):
                if child in seen:
                    continue
                seen.add(child)
                try:
                    proc = psutil.Process(child)
                    if self._is_excluded(proc):
                        continue  # and its whole subtree: never walked
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
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


# --------------------------------------------------------------------- GPU
@dataclass(frozen=True)
class GpuReading:
    """One GPU the run held a context on, at one sample."""

    index: int
    name: str
    energy_j: float | None  # cumulative device energy counter, if supported
    power_w: float | None
    memory_bytes: int  # memory used by the run's processes on this device
    utilization_pct: float | None


class GpuSampler:
    """NVML reader. ``nvml`` is the ``pynvml`` module (injectable for tests)."""

    def __init__(self, nvml: Any | None = None):
        self.nvml = nvml
        self.available = False
        self.devices: list[tuple[int, Any, str]] = []
        try:
            if self.nvml is None:
                import pynvml  # nvidia-ml-py

                self.nvml = pynvml
            self.nvml.nvmlInit()
            for i in range(self.nvml.nvmlDeviceGetCount()):
                handle = self.nvml.nvmlDeviceGetHandleByIndex(i)
                name = self.nvml.nvmlDeviceGetName(handle)
                if isinstance(name, bytes):
                    name = name.decode()
                self.devices.append((i, handle, str(name)))
            self.available = True
        except Exception as exc:  # no library, no driver, no GPU: all mean "no GPU"
            _log.debug("NVML unavailable, GPU figures will be 0: %s", exc)
            self.devices = []

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(name for _, _, name in self.devices)

    def read(self, pids: Iterable[int]) -> list[GpuReading]:
        """Devices on which any of ``pids`` holds a context."""
        if not self.available:
            return []
        pids = set(pids)
        out = []
        for index, handle, name in self.devices:
            procs = []
            for getter in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
                fn = getattr(self.nvml, getter, None)
                if fn is None:
                    continue
                try:
                    procs += list(fn(handle))
                except Exception:
                    continue
            ours = [p for p in procs if p.pid in pids]
            if not ours:
                continue
            mem = sum(int(getattr(p, "usedGpuMemory", 0) or 0) for p in ours)
            out.append(
                GpuReading(
                    index=index,
                    name=name,
                    energy_j=self._call("nvmlDeviceGetTotalEnergyConsumption", handle, scale=1e-3),
                    power_w=self._call("nvmlDeviceGetPowerUsage", handle, scale=1e-3),
                    memory_bytes=mem,
                    utilization_pct=self._utilization(handle),
                )
            )
        return out

    def _call(self, fn_name: str, handle: Any, scale: float) -> float | None:
        try:
            return float(getattr(self.nvml, fn_name)(handle)) * scale
        except Exception:  # not supported on this device / driver
            return None

    def _utilization(self, handle: Any) -> float | None:
        try:
            return float(self.nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        except Exception:
            return None


@dataclass
class GpuAccumulator:
    """Integrates GPU readings over time: GPU-seconds per model, energy, peak memory.

    Energy comes from the device's cumulative energy counter where the device
    has one, and from power x time otherwise.
    """

    seconds_by_model: dict[str, float] = field(default_factory=dict)
    energy_j: float = 0.0
    peak_memory_bytes: int = 0
    _prev: dict[int, GpuReading] = field(default_factory=dict)

    def add(self, readings: list[GpuReading], dt: float) -> None:
        current = {r.index: r for r in readings}
        for idx, r in current.items():
            prev = self._prev.get(idx)
            self.peak_memory_bytes = max(self.peak_memory_bytes, r.memory_bytes)
            if prev is None:  # first sight: no interval to charge yet
                continue
            self.seconds_by_model[r.name] = self.seconds_by_model.get(r.name, 0.0) + dt
            if r.energy_j is not None and prev.energy_j is not None and r.energy_j >= prev.energy_j:
                self.energy_j += r.energy_j - prev.energy_j
            elif r.power_w is not None:
                p0 = prev.power_w if prev.power_w is not None else r.power_w
                self.energy_j += 0.5 * (p0 + r.power_w) * dt
        self._prev = current


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
            "finops.machine.hostname": self.hostname,
            "finops.machine.cpu_model": self.cpu_model,
            "finops.machine.cpu_cores": str(self.cpu_cores),
            "finops.machine.ram_gb": f"{self.ram_gb:.1f}",
            "finops.machine.gpu_count": str(len(self.gpu_models)),
            "finops.machine.gpu_models": ",".join(self.gpu_models) or "none",
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
