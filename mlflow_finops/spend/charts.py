"""The report's charts: cost over time, cost against a model metric (Pareto front), budget burn-down.

Each returns a :class:`~mlflow_finops.charting.Chart` (PNG, inline SVG and the
numbers); the report embeds several in one page, ``Chart.pair()`` gives one on
its own page. matplotlib is imported only when a chart is drawn.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Iterable, Sequence

from ..charting import (MAX_TOOLTIPS, NAME_CHARS, PALETTE, Chart, empty, label, legend_below, money_axis,
                        new_figure, render, shorten)
from ..money import format_usd

if TYPE_CHECKING:  # pragma: no cover
    from .budget import BudgetStatus

__all__ = ["cost_over_time", "cost_vs_metric", "budget_burndown", "pareto_front", "thin_cumulative"]

_TOP_SERIES = 8  # series drawn one by one; the rest are summed as "other"
_TITLE_CHARS = 70  # a title's own words (a metric name in it) before its figures
_NOTE_CHARS = 24  # a Pareto point's run name beside it


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, timezone.utc)


def _series_colors(names: Sequence[str]) -> dict[str, str]:
    return {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(names)}


def cost_over_time(points: Iterable[tuple[str, float, float | None]], title: str = "Cost over time") -> Chart:
    """Cumulative cost per series (experiment) over run start time.

    ``points``: ``(series name, run start unix seconds, run cost USD)``; the 8
    most expensive series are drawn, the rest summed as "other".
    """
    pts = sorted((t, s, c) for s, t, c in points if c is not None and math.isfinite(c))
    fig = new_figure()
    ax = fig.subplots()
    header = ["series", "time_utc", "cumulative_cost_usd"]
    rows: list[list[str]] = []
    if not pts:
        empty(ax, "no tracked runs in this selection")
        return render(fig, title, header, rows)
    totals: dict[str, float] = {}
    for _, s, c in pts:
        totals[s] = totals.get(s, 0.0) + c
    keep = sorted(totals, key=lambda k: -totals[k])[:_TOP_SERIES]
    other = "other" if len(totals) > len(keep) else None
    colors = _series_colors(keep + ([other] if other else []))
    cum: dict[str, float] = {}
    xs: dict[str, list[datetime]] = {}
    ys: dict[str, list[float]] = {}
    for t, s, c in pts:
        key = s if s in keep else other
        cum[key] = cum.get(key, 0.0) + c
        xs.setdefault(key, []).append(_utc(t))
        ys.setdefault(key, []).append(cum[key])
    for key in keep + ([other] if other else []):
        if key not in xs:
            continue
        ax.step(xs[key], ys[key], where="post", color=colors[key], lw=2,
                label=label(f"{shorten(key)} ({format_usd(cum[key])})"), marker="o" if len(xs[key]) < 60 else None,
                ms=3)
        rows.extend([key, x.strftime("%Y-%m-%d %H:%M:%S"), f"{y:.6g}"] for x, y in zip(xs[key], ys[key]))
    ax.set_ylabel("cumulative cost (USD)")
    money_axis(ax.yaxis)
    ax.set_xlabel("run start (UTC)")
    ax.set_title(label(f"{shorten(title, _TITLE_CHARS)} — total {format_usd(sum(totals.values()))}"), fontsize=11)
    ax.grid(alpha=0.3)
    legend_below(fig, ax)
    fig.autofmt_xdate()
    return render(fig, title, header, rows)


def thin_cumulative(points: Iterable[tuple[str, float, float]], limit: int = 1000) -> list[tuple[str, float, float]]:
    """``points`` in time order, merged so that each series keeps at most ``2 * limit`` of them.

    Two neighbours of a series become one at the later time carrying both costs, so a
    cumulative line drawn through what is kept is exact at every kept point and at the end;
    memory stays bounded however many runs stream past.
    """
    kept: dict[str, list[list[float]]] = {}
    for s, t, c in points:
        series = kept.setdefault(s, [])
        series.append([t, c])
        if len(series) > 2 * limit:
            merged = [[series[i + 1][0], series[i][1] + series[i + 1][1]] for i in range(0, len(series) - 1, 2)]
            if len(series) % 2:
                merged.append(series[-1])
            kept[s] = merged
    return [(s, t, c) for s, series in kept.items() for t, c in series]


def _middle(values: Sequence[float], log: bool) -> float:
    """The middle of the x range, as the axis shows it (geometric on a log axis)."""
    lo, hi = min(values), max(values)
    return math.sqrt(lo * hi) if log else (lo + hi) / 2


def pareto_front(points: Sequence[tuple[float, float]], goal: str = "max") -> list[int]:
    """Indices of the (cost, metric) points no other point beats on both: cheaper-or-equal and better-or-equal.

    Sorted by cost. These are the runs that bought their metric cheaply.
    """
    sign = 1.0 if goal == "max" else -1.0
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -sign * points[i][1]))
    front: list[int] = []
    best = -math.inf
    for i in order:
        value = sign * points[i][1]
        if value > best:
            front.append(i)
            best = value
    return front


def cost_vs_metric(points: Sequence[tuple[str, float | None, float | None, str]], metric: str, goal: str = "max",
                   title: str = "Cost vs model metric", drawn_from: int | None = None) -> Chart:
    """Scatter of run cost against a model metric, Pareto front marked and labelled, a tooltip per run.

    ``points``: ``(run label, cost USD, metric value, series)``; ``goal`` is "max" or "min".
    ``drawn_from``: the number of runs ``points`` were drawn from, when they are a sample
    (the front must be in it: the title then says how many runs were drawn).
    """
    if goal not in ("max", "min"):
        raise ValueError(f"goal={goal!r}: expected 'max' or 'min'")
    pts = [p for p in points if p[1] is not None and p[2] is not None and math.isfinite(p[1]) and math.isfinite(p[2])]
    fig = new_figure()
    ax = fig.subplots()
    header = ["run", "series", "cost_usd", metric, "pareto"]
    rows: list[list[str]] = []
    if not pts:
        empty(ax, f"no tracked run has the metric {metric!r}")
        return render(fig, title, header, rows)
    front = set(pareto_front([(c, m) for _, c, m, _ in pts], goal))
    series = sorted({s for *_, s in pts})
    colors = _series_colors(series)
    tooltips: dict[str, list[str]] = {}
    for k, s in enumerate(series):
        idx = [i for i, p in enumerate(pts) if p[3] == s]
        coll = ax.scatter([pts[i][1] for i in idx], [pts[i][2] for i in idx], s=28, color=colors[s],
                          alpha=0.75, label=label(s, NAME_CHARS), edgecolors="none")
        if len(pts) <= MAX_TOOLTIPS:
            gid = f"finops-points-{k}"
            coll.set_gid(gid)
            tooltips[gid] = [f"{pts[i][0]} ({s}): {format_usd(pts[i][1])}, {metric} {pts[i][2]:.4g}" for i in idx]
    fr = sorted(front, key=lambda i: pts[i][1])
    ax.plot([pts[i][1] for i in fr], [pts[i][2] for i in fr], color="#111", lw=1.2, ls="--", zorder=3,
            marker="D", mfc="none", ms=9, label="Pareto front (best metric for the money)")
    costs = [p[1] for p in pts]
    if len(set(costs)) > 1 and min(costs) > 0 and max(costs) / min(costs) > 50:
        ax.set_xscale("log")
    mid = _middle(costs, ax.get_xscale() == "log")
    for i in fr[:12]:
        right = pts[i][1] > mid  # right half: the name goes to the left of the point, inside the plot
        note = ax.annotate(label(pts[i][0], _NOTE_CHARS), (pts[i][1], pts[i][2]), textcoords="offset points",
                           xytext=(-6 if right else 6, 4), ha="right" if right else "left", fontsize=7, clip_on=True)
        note.set_in_layout(False)  # a name never narrows the plot
    ax.set_xlabel("run cost (USD)")
    money_axis(ax.xaxis)
    ax.set_ylabel(label(f"{shorten(metric, NAME_CHARS)} ({'higher' if goal == 'max' else 'lower'} is better)"))
    of = f"{len(fr)} of {len(pts)} runs" if not drawn_from else f"{len(fr)} of {drawn_from:,} runs ({len(pts):,} drawn)"
    ax.set_title(label(f"{shorten(title, _TITLE_CHARS)}: {of} on the Pareto front"), fontsize=11)
    ax.grid(alpha=0.3)
    legend_below(fig, ax)
    order = sorted(range(len(pts)), key=lambda i: pts[i][1])
    rows = [[pts[i][0], pts[i][3], f"{pts[i][1]:.6g}", f"{pts[i][2]:.6g}", "yes" if i in front else ""] for i in order]
    return render(fig, title, header, rows, tooltips)


def budget_burndown(statuses: Sequence["BudgetStatus"], title: str = "Budget burn-down") -> Chart:
    """One panel per envelope: money remaining over the period, the projection to its end, the warn line."""
    n = max(len(statuses), 1)
    cols = min(n, 2)
    rows_n = math.ceil(n / cols)
    fig = new_figure(6.0 * cols, 3.8 * rows_n)
    axes = fig.subplots(rows_n, cols, squeeze=False).ravel()
    header = ["envelope", "period", "amount_usd", "spent_usd", "projected_usd", "remaining_usd", "runs", "status"]
    rows: list[list[str]] = []
    if not statuses:
        empty(axes[0], "no [budgets.*] envelopes in the policy")
        return render(fig, title, header, rows)
    for ax, st in zip(axes, statuses):
        start, end, now = st.period_start, st.period_end, st.now
        t0, t1, tn = start.timestamp(), end.timestamp(), min(now.timestamp(), end.timestamp())
        xs = [_utc(t0)]
        ys = [0.0]
        cum = 0.0
        for t, c in st.points:
            cum += c
            xs.append(_utc(t))
            ys.append(cum)
        xs.append(_utc(tn))
        ys.append(cum)
        remaining = [st.amount_usd - y for y in ys]
        ax.step(xs, remaining, where="post", color="#1f77b4", lw=2, label="remaining")
        proj_end = st.amount_usd - st.projected_usd
        ax.plot([_utc(tn), _utc(t1)], [st.amount_usd - cum, proj_end], color="#ff7f0e", ls="--", lw=1.6,
                label=label(f"projection: {format_usd(st.projected_usd)} spent by period end"))
        ax.plot([_utc(t0), _utc(t1)], [st.amount_usd, 0], color="#aaa", lw=1, ls=":", label="even pace")
        ax.axhline(st.amount_usd * (1 - st.envelope.warn_at), color="#b45309", lw=1, ls="-.",
                   label=f"warn at {st.envelope.warn_at:.0%} spent")
        ax.axhline(0, color="#b91c1c", lw=1)
        ax.set_xlim(_utc(t0), _utc(t1))
        state = st.state
        ax.set_title(label(f"{shorten(st.name, 30)}: {format_usd(st.spent_usd)} of {format_usd(st.amount_usd)} "
                           f"per {st.envelope.period} [{state}]"),
                     fontsize=10, color="#b91c1c" if st.exceeded else ("#b45309" if st.warn else "#222"))
        ax.set_ylabel("remaining (USD)")
        money_axis(ax.yaxis)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncols=2, fontsize=7, frameon=False)
        for tick in ax.get_xticklabels():
            tick.set_rotation(25)
            tick.set_fontsize(7)
        rows.append([st.name, f"{start.date()} .. {end.date()}", f"{st.amount_usd:.2f}", f"{st.spent_usd:.6g}",
                     f"{st.projected_usd:.6g}", f"{st.remaining_usd:.6g}", str(st.runs), state])
    for ax in axes[len(statuses):]:
        ax.set_visible(False)
    return render(fig, title, header, rows)
