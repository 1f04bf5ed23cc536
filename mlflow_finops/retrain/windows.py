"""Opportunistic windows: when retraining is cheap enough to run.

A window is open when the local time (in the policy's time zone) falls inside
one of the ``[[windows.off_peak]]`` ranges (or none are defined) **and** the
Ray cluster has at least ``min_free_cpus`` / ``min_free_gpus`` free, read from
Ray's own resource view (the dashboard's ``/api/cluster_status``).

The rule (:func:`judge_window`) is pure, given the clock and the free
resources; :func:`window_state` reads those from Ray first. What each priority
does with a closed window is decided in :mod:`.state`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from ..policy import OffPeakRange, WindowPolicy  # noqa: F401  (re-exported: the window settings)

__all__ = [
    "WindowPolicy",
    "OffPeakRange",
    "WindowState",
    "needs_cluster",
    "judge_window",
    "window_state",
    "cluster_free_resources",
    "free_resources",
]


@dataclass(frozen=True)
class WindowState:
    """Whether a retrain may start now, and why (logged with the decision)."""

    open: bool
    off_peak: bool
    free_cpus: float | None
    free_gpus: float | None
    reason: str


def needs_cluster(policy: WindowPolicy) -> bool:
    """Whether the window depends on the cluster's free resources (else on the clock alone)."""
    return bool(policy.min_free_cpus or policy.min_free_gpus)


def judge_window(
    policy: WindowPolicy,
    now: datetime,
    free_cpus: float | None = None,
    free_gpus: float | None = None,
    unread: str | None = None,
) -> WindowState:
    """The window's verdict from given numbers (pure): off-peak at ``now``, and enough free resources.

    ``free_cpus``/``free_gpus`` are the cluster's, when :func:`needs_cluster`;
    ``unread`` says why they could not be read (the window is then closed).
    """
    off_peak = policy.in_off_peak(now)
    reasons = []
    if not off_peak:
        reasons.append(f"outside the off-peak ranges ({policy.timezone})")
    if needs_cluster(policy):
        if free_cpus is None or free_gpus is None:
            reasons.append(unread or "the cluster's free resources are unknown")
        else:
            if free_cpus < policy.min_free_cpus:
                reasons.append(f"cluster has {free_cpus:g} free CPUs < min_free_cpus={policy.min_free_cpus:g}")
            if free_gpus < policy.min_free_gpus:
                reasons.append(f"cluster has {free_gpus:g} free GPUs < min_free_gpus={policy.min_free_gpus:g}")
    is_open = not reasons
    return WindowState(is_open, off_peak, free_cpus, free_gpus, "window open" if is_open else "; ".join(reasons))


def free_resources(cluster_status: dict) -> tuple[float, float]:
    """(free CPUs, free GPUs) from Ray's ``/api/cluster_status`` answer: total minus used of each."""
    usage = cluster_status["data"]["clusterStatus"]["loadMetricsReport"].get("usage", {})

    def free(resource: str) -> float:
        used, total = usage.get(resource, [0, 0])[:2]
        return float(total) - float(used)

    return free("CPU"), free("GPU")


def cluster_free_resources(dashboard_url: str, timeout_s: float = 10.0) -> tuple[float, float]:
    """(free CPUs, free GPUs) of a Ray cluster, read from its dashboard's resource view."""
    from ..ray_cluster import cluster_status

    return free_resources(cluster_status(dashboard_url, timeout_s))


def window_state(
    policy: WindowPolicy, dashboard_url: str | None, now: datetime | None = None
) -> WindowState:
    """Is the opportunistic window open now? Reads the cluster's free resources only when they matter."""
    now = now or datetime.now(timezone.utc)
    if not needs_cluster(policy):
        return judge_window(policy, now)
    if dashboard_url is None:
        return judge_window(policy, now, unread="no Ray cluster to read free resources from")
    try:
        free_cpus, free_gpus = cluster_free_resources(dashboard_url)
    except Exception as exc:  # an unreachable cluster closes the window; it never fails the step
        return judge_window(policy, now, unread=f"cannot read the cluster's free resources: {exc}")
    return judge_window(policy, now, free_cpus, free_gpus)
