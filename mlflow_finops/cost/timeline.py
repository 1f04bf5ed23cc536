"""The per-run cost timeline chart the tracker logs at run end (``finops/cost_timeline.png`` and ``.html``).

Lives beside the tracker (cost/ imports no report code); the chart primitives
are shared with the reports in :mod:`mlflow_finops.charting`. matplotlib is
imported only when a chart is drawn.
"""

from __future__ import annotations

import os
import tempfile
from typing import TYPE_CHECKING, Sequence

from ..charting import Chart, empty, label, new_figure, render
from ..money import format_usd
from ..units import format_energy
from ..names import ARTIFACT_TIMELINE_HTML, ARTIFACT_TIMELINE_PNG

if TYPE_CHECKING:  # pragma: no cover
    from ..pricing import CostBreakdown

__all__ = ["cost_timeline", "log_cost_timeline"]

History = Sequence[tuple[float, "CostBreakdown"]]


def _timeline_chart(history: History, title: str) -> Chart:
    fig = new_figure(9, 5.6)
    ax, ax2 = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1.3])
    header = ["elapsed_min", "cost_usd", "usage_cost_usd", "allocation_cost_usd", "cpu_cores_used"]
    rows: list[list[str]] = []
    if not history:
        empty(ax, "no cost samples yet")
        empty(ax2, "")
        return render(fig, title, header, rows)
    t0 = history[0][0]
    minutes = [(t - t0) / 60.0 for t, _ in history]
    usage = [b.usage_cost_usd for _, b in history]
    alloc = [b.allocation_cost_usd for _, b in history]
    cost = [b.cost_usd for _, b in history]
    cores = [0.0]
    for (ta, a), (tb, b) in zip(history, history[1:]):
        dt_h = (tb - ta) / 3600.0
        cores.append((b.cpu_core_hours - a.cpu_core_hours) / dt_h if dt_h > 0 else 0.0)
    ax.plot(minutes, alloc, color="#7f7f7f", lw=1.6, label="allocation cost (reserved x wall time)")
    ax.plot(minutes, usage, color="#1f77b4", lw=2.2, label="usage cost (what the process tree used)")
    ax.fill_between(minutes, usage, alloc, where=[a >= u for u, a in zip(usage, alloc)],
                    color="#d62728", alpha=0.12, label="idle cost")
    final = history[-1][1]
    ax.set_ylabel("cumulative cost (USD)")
    ax.set_title(label(
        f"{title} — {format_usd(final.cost_usd)} ({final.allocation_mode}), idle {format_usd(final.idle_cost_usd)}, "
        f"CPU efficiency {final.cpu_efficiency:.0%}, {format_energy(final.energy_kwh)}"),
        fontsize=10,
    )
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    ax2.step(minutes, cores, where="post", color="#2ca02c", lw=1.5)
    ax2.set_ylabel("CPU cores used")
    ax2.set_xlabel("minutes since tracking started")
    ax2.grid(alpha=0.3)
    ax2.set_ylim(bottom=0)
    for m, c, u, a, k in zip(minutes, cost, usage, alloc, cores):
        rows.append([f"{m:.2f}", f"{c:.6g}", f"{u:.6g}", f"{a:.6g}", f"{k:.3g}"])
    return render(fig, title, header, rows)


def cost_timeline(history: History, title: str = "Run cost timeline") -> tuple[bytes, str]:
    """The run's cumulative usage vs allocation cost (idle cost shaded) and CPU cores used over time.

    ``history`` is :attr:`CostTracker.history`: ``(unix time, cumulative CostBreakdown)`` per sample.
    Returns ``(png, html)``.
    """
    return _timeline_chart(list(history), title).pair()


def log_cost_timeline(history: History, run_id: str, tracking_uri: str | None = None,
                      title: str | None = None) -> None:
    """Log :func:`cost_timeline` to the run as ``finops/cost_timeline.png`` and ``.html``."""
    from mlflow.tracking import MlflowClient

    png, page = cost_timeline(history, title or f"Cost timeline of run {run_id[:8]}")
    with tempfile.TemporaryDirectory() as tmp:
        for artifact, data in ((ARTIFACT_TIMELINE_PNG, png), (ARTIFACT_TIMELINE_HTML, page.encode("utf-8"))):
            path = os.path.join(tmp, *artifact.split("/"))  # the artifact path, as laid out on disk
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
        MlflowClient(tracking_uri).log_artifacts(run_id, tmp)
