"""Opportunistic windows: when retraining is cheap enough to run.

A window is open when the local time (in the policy's time zone) falls inside
one of the ``[[windows.off_peak]]`` ranges (or none are defined) **and** the
Ray cluster has at least ``min_free_cpus`` / ``min_free_gpus`` free, read from
Ray's own resource view (the dashboard's ``/api/cluster_status``).

Priorities (from the budget envelope that covers the model):

* ``critical`` runs at once: it bypasses windows, never the envelope;
* ``standard`` waits for a window for at most ``max_wait_hours``, then runs;
* ``exploratory`` runs only inside a window, and is dropped at its deadline.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from ..policy import OffPeakRange, WindowPolicy  # noqa: F401  (re-exported: the window settings)

__all__ = ["WindowPolicy", "OffPeakRange", "WindowState", "window_state", "cluster_free_resources"]


@dataclass(frozen=True)
class WindowState:
    """Whether a retrain may start now, and why (logged with the decision)."""

    open: bool
    off_peak: bool
    free_cpus: float | None
    free_gpus: float | None
    reason: str


def cluster_free_resources(dashboard_url: str, timeout_s: float = 10.0) -> tuple[float, float]:
    """(free CPUs, free GPUs) of a Ray cluster, from its dashboard's resource view."""
    import requests

    from ..ray_cluster import ray_auth_headers

    resp = requests.get(
        dashboard_url.rstrip("/") + "/api/cluster_status", headers=ray_auth_headers(), timeout=timeout_s
    )
    resp.raise_for_status()
    data = resp.json()["data"]["clusterStatus"]["loadMetricsReport"]
    used = data.get("usage", {})
    free_cpu = float(used.get("CPU", [0, 0])[1]) - float(used.get("CPU", [0, 0])[0])
    free_gpu = float(used.get("GPU", [0, 0])[1]) - float(used.get("GPU", [0, 0])[0])
    return free_cpu, free_gpu


def window_state(
    policy: WindowPolicy, dashboard_url: str | None, now: datetime | None = None
) -> WindowState:
    """Is the opportunistic window open now?"""
    now = now or datetime.now(timezone.utc)
    off_peak = policy.in_off_peak(now)
    free_cpus = free_gpus = None
    reasons = []
    if not off_peak:
        reasons.append(f"outside the off-peak ranges ({policy.timezone})")
    if policy.min_free_cpus or policy.min_free_gpus:
        if dashboard_url is None:
            reasons.append("no Ray cluster to read free resources from")
        else:
            try:
                free_cpus, free_gpus = cluster_free_resources(dashboard_url)
                if free_cpus < policy.min_free_cpus:
                    reasons.append(f"cluster has {free_cpus:g} free CPUs < min_free_cpus={policy.min_free_cpus:g}")
                if free_gpus < policy.min_free_gpus:
                    reasons.append(f"cluster has {free_gpus:g} free GPUs < min_free_gpus={policy.min_free_gpus:g}")
            except Exception as exc:
                reasons.append(f"cannot read the cluster's free resources: {exc}")
    is_open = not reasons
    return WindowState(is_open, off_peak, free_cpus, free_gpus, "window open" if is_open else "; ".join(reasons))
