"""GPUs through NVML: which devices a set of processes holds, and what they use over time.

Read when a driver is present; without one (no library, no driver, no GPU) every
figure is zero. The driver's process tree and each Ray node read their own GPUs
with the same :class:`GpuSampler`, and :class:`GpuAccumulator` integrates them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Iterable

_log = logging.getLogger(__name__)

__all__ = ["GpuReading", "GpuSampler", "GpuAccumulator"]


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

    def add(self, readings: Iterable[GpuReading], dt: float) -> None:
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
