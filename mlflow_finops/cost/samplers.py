"""The one interface between the tracker and what it samples (the process tree, the Ray nodes).

Like MLflow's ``system_metrics`` monitors, a sampler is split in two:
``collect`` reads counters (``/proc``, NVML, Ray probes: the part that waits),
and ``fold`` adds what the reading shows since the previous one to the run's
:class:`RunUsage`. The tracker's thread calls both for every sampler in turn,
prices the result, and asks each sampler what it leaves on the run (``close``)
when tracking stops. How memory and GPUs are integrated over time is written
here once (:class:`Usage`), for the driver's process tree and every Ray node alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Protocol, TypeVar

from ..pricing import Allocation, CostBreakdown, PriceCatalog, price_usage
from .gpu import GpuAccumulator, GpuReading

__all__ = ["GB", "Usage", "RunUsage", "Summary", "Sampler"]

GB = 1024**3

R = TypeVar("R")


@dataclass
class Usage:
    """What one set of processes used so far: the running totals pricing takes.

    ``cpu_s`` is set by the sampler (each has its own baseline rule); memory and
    GPUs are integrated by :meth:`advance`, one reading at a time.
    """

    cpu_s: float = 0.0
    ram_gb_s: float = 0.0
    peak_rss_bytes: int = 0
    gpu: GpuAccumulator = field(default_factory=GpuAccumulator)
    last_time: float | None = None  # of the previous reading; None before the first
    last_rss: int = 0

    def advance(self, timestamp: float, rss_bytes: int, gpus: Iterable[GpuReading] = ()) -> float:
        """Integrate memory (trapezoid over RSS, GB-seconds) and GPUs up to ``timestamp``.

        Returns the seconds since the previous reading: 0 for the first one, which
        only sets the baseline (a GPU first seen then is charged from it on).
        """
        dt = 0.0 if self.last_time is None else max(timestamp - self.last_time, 0.0)
        self.ram_gb_s += 0.5 * (self.last_rss + rss_bytes) / GB * dt
        self.peak_rss_bytes = max(self.peak_rss_bytes, rss_bytes)
        self.gpu.add(gpus, dt)
        self.last_time, self.last_rss = timestamp, rss_bytes
        return dt

    def price(self, prices: PriceCatalog, *, wall_s: float, allocation: Allocation) -> CostBreakdown:
        """These totals priced with ``prices`` over ``wall_s`` seconds of holding ``allocation``."""
        return price_usage(
            prices,
            wall_s=wall_s,
            cpu_s=self.cpu_s,
            ram_gb_s=self.ram_gb_s,
            gpu_s_by_model=self.gpu.seconds_by_model,
            gpu_energy_j=self.gpu.energy_j,
            allocation=allocation,
            peak_rss_gb=self.peak_rss_bytes / GB,
        )


@dataclass
class RunUsage:
    """Everything the tracker prices: the run's own processes and each Ray node's share.

    A node's share arrives priced, with that node's own catalog (policy ``[ray]`` rules).
    """

    local: Usage = field(default_factory=Usage)
    nodes: dict[str, CostBreakdown] = field(default_factory=dict)


@dataclass(frozen=True)
class Summary:
    """What a sampler leaves on the run when tracking stops: tags, final-only metrics, and
    ``lost``: what it could not account for (the run is then tagged degraded, with this reason)."""

    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    lost: str = ""


class Sampler(Protocol[R]):
    """One source of a run's usage, sampled by the tracker's thread (one sample at a time)."""

    def collect(self, final: bool = False) -> R:
        """Read the counters; ``final`` is the run's last reading (a sampler may look harder)."""
        ...

    def fold(self, reading: R, usage: RunUsage) -> None:
        """Add what ``reading`` shows since the previous reading to ``usage``."""
        ...

    def close(self, usage: RunUsage) -> Summary:
        """Tracking stops: release what the sampler holds; what it leaves on the run."""
        ...
