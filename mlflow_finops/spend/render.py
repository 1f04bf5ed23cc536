"""How a cost report reads: CSV, JSON, a self-contained HTML page, rich tables for the terminal,
and the budget table and warning every one of them shows.

Renders anything shaped like :class:`~.report.CostReport` (:class:`Rendered`): the
runs are read back a run at a time, never held in memory.
"""

from __future__ import annotations

import csv
import html
import itertools
import json
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Protocol, Sequence, TextIO

from ..charting import html_page, html_table
from ..money import format_usd
from ..units import format_co2e, format_energy
from .rollup import FIGURES, GROUP_LEVELS, GroupCost, RunCost

if TYPE_CHECKING:  # pragma: no cover
    from ..charting import Chart
    from .budget import BudgetStatus

__all__ = ["Rendered", "write_json", "write_csv", "html_report", "rich_tables", "budget_table",
           "budget_warning", "budget_rich_table"]


class Rendered(Protocol):
    """What rendering needs of a report: its runs (a ``RunTable``), sums and scope."""

    runs: Any
    metric: str | None
    goal: str
    filters: Mapping[str, object]

    def summary(self) -> dict[str, object]: ...

    def groups(self, by: str) -> list[GroupCost]: ...

    def sorted_runs(self) -> Iterator[RunCost]: ...


def write_json(report: "Rendered", out: TextIO, budgets: Sequence["BudgetStatus"]) -> None:
    """The report as JSON, a run per line (the head first: summary, groups, budgets)."""
    head = {
        "summary": report.summary(),
        "groups": {level: [g.to_dict() for g in report.groups(level)] for level in GROUP_LEVELS},
    }
    if budgets:
        head["budgets"] = [b.to_dict() for b in budgets]
    text = json.dumps(head, indent=2, default=str)
    out.write(text[:-2] + ',\n  "runs": [')  # the head without its closing "}", then the runs one by one
    for i, r in enumerate(report.sorted_runs()):  # one line a run: json's C encoder (indent is pure Python)
        out.write(("," if i else "") + "\n    " + json.dumps(_run_dict(r, report.metric), default=str))
    out.write("\n  ]\n}" if len(report.runs) else "]\n}")


def write_csv(report: "Rendered", out: TextIO, by: str) -> None:
    """One row per run (``by='run'``) or per group; untracked figures are empty cells, never 0."""
    w = csv.writer(out, lineterminator="\n")
    metric_col = f"metric:{report.metric}" if report.metric else "metric"
    if by == "run":
        cols = ["run_id", "run_name", "experiment", "model", "team", "start_time", "status", "tracked",
                "nested_in", *FIGURES, metric_col]
        w.writerow(cols)
        for r in report.sorted_runs():
            d = _run_dict(r, report.metric)
            w.writerow([_cell(d.get(c if c != metric_col else "metric")) for c in cols])
    else:
        cols = ["level", "key", "runs", "untracked", "nested", "cost_usd", "idle_cost_usd", "cpu_core_hours",
                "gpu_hours", "energy_kwh", "co2e_kg", "cpu_efficiency", "best_metric", "best_run_id",
                "best_run_cost_usd"]
        w.writerow(cols)
        for g in report.groups(by):
            d = g.to_dict()
            w.writerow([_cell(d[c]) for c in cols])


def html_report(report: "Rendered", charts: Sequence["Chart"], budgets: Sequence["BudgetStatus"] = (),
                max_runs: int = 500) -> str:
    """A self-contained page: summary, charts (inline SVG), roll-ups and runs."""
    s = report.summary()
    scope = ", ".join(f"{k}={v}" for k, v in report.filters.items() if v) or "all experiments"
    period = f"{s['since'] or 'beginning'} .. {s['until'] or 'now'}"
    intro = (
        f"<p>Scope: {html.escape(scope)}; period: {html.escape(period)}.<br>"
        f"<b>{format_usd(s['cost_usd'])}</b> over {s['tracked_runs']} tracked run(s) "
        f"({s['nested_runs']} nested run(s) inside them, {s['untracked_runs']} untracked run(s) not costed); "
        f"idle {format_usd(s['idle_cost_usd'])}, {format_energy(s['energy_kwh'])}, {format_co2e(s['co2e_kg'])}.</p>"
    )
    tables = []
    if budgets:
        classes = ["over" if b.exceeded else ("warn" if b.warn else "") for b in budgets]
        tables.append("<h2>Budgets</h2>" + html_table(*budget_table(budgets), classes))
    for level in GROUP_LEVELS:
        rows = [_group_row(g, report.metric) for g in report.groups(level)]
        tables.append(f"<h2>By {level}</h2>" + html_table(_group_header(level, report.metric), rows))
    rows, classes = [], []
    for r in itertools.islice(report.sorted_runs(), max_runs):
        rows.append(_run_row(r, report.metric))
        classes.append("untracked" if not r.tracked else "")
    n = len(report.runs)
    more = f"<p class=\"meta\">{n - max_runs} more run(s) in the CSV/JSON output.</p>" if n > max_runs else ""
    tables.append("<h2>Runs</h2>" + html_table(_run_header(report.metric), rows, classes) + more)
    return html_page("mlflow-finops cost report", list(charts), intro, "\n".join(tables))


def _cell(v: object) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:.10g}"
    return str(v)


def _num(v: object, digits: int = 4) -> str:
    if v is None:
        return "-"
    return f"{float(v):.{digits}g}"  # type: ignore[arg-type]


def _pct(v: object) -> str:
    return "-" if v is None else f"{float(v):.0%}"  # type: ignore[arg-type]


def _iso(ts: float | None) -> str:
    return "" if not ts else datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _run_dict(r: RunCost, metric: str | None) -> dict[str, object]:
    d: dict[str, object] = {
        "run_id": r.run_id,
        "run_name": r.run_name,
        "experiment": r.experiment,
        "experiment_id": r.experiment_id,
        "model": r.model,
        "team": r.team,
        "start_time": _iso(r.start_time),
        "end_time": _iso(r.end_time) or None,
        "status": r.status,
        "tracked": r.tracked,
        "nested_in": r.nested_in,
    }
    d.update({f: getattr(r, f) for f in FIGURES})
    d["metric"] = r.metric
    if metric:
        d["metric_name"] = metric
    return d


def _group_header(level: str, metric: str | None) -> list[str]:
    return [level, "runs", "cost", "idle cost", "CPU h", "GPU h", "energy", "CO2e", "CPU eff.",
            f"best {metric}" if metric else "best metric", "cost of best", "untracked"]


def _group_row(g: GroupCost, metric: str | None) -> list[str]:
    return [
        g.key, str(g.runs) + (f" (+{g.nested} nested)" if g.nested else ""), format_usd(g.cost_usd),
        format_usd(g.idle_cost_usd), _num(g.cpu_core_hours), _num(g.gpu_hours), format_energy(g.energy_kwh),
        format_co2e(g.co2e_kg),
        _pct(g.cpu_efficiency), _num(g.best_metric), format_usd(g.best_run_cost_usd),
        str(g.untracked) if g.untracked else "",
    ]


def _run_header(metric: str | None) -> list[str]:
    return ["run", "experiment", "model", "team", "started (UTC)", "cost", "idle cost", "CPU h", "GPU h",
            "energy", "CO2e", "CPU eff.", metric or "metric"]


def _run_row(r: RunCost, metric: str | None) -> list[str]:
    name = r.label + (f" (nested in {r.nested_in[:8]})" if r.nested_in else "")
    head = [name, r.experiment, r.model or "", r.team or "", _iso(r.start_time), format_usd(r.cost_usd, none="untracked")]
    if not r.tracked:
        return head + [""] * 7  # nothing known: blank, never 0
    return head + [format_usd(r.idle_cost_usd), _num(r.cpu_core_hours), _num(r.gpu_hours), format_energy(r.energy_kwh),
                   format_co2e(r.co2e_kg), _pct(r.cpu_efficiency), _num(r.metric)]


def budget_table(budgets: Sequence["BudgetStatus"]) -> tuple[list[str], list[list[str]]]:
    """Header and one row per envelope: scope, period, amount, spent, remaining, projected, runs, state."""
    header = ["envelope", "scope", "period", "amount", "spent", "remaining", "projected", "runs", "status"]
    rows = []
    for b in budgets:
        scope = ", ".join([f"model {m}" for m in b.envelope.models] + ([f"team {b.envelope.team}"] if b.envelope.team else []))
        rows.append([b.name, scope, f"{b.envelope.period} from {b.period_start.date()} ({b.elapsed_fraction:.0%} elapsed)",
                     format_usd(b.amount_usd), format_usd(b.spent_usd), format_usd(b.remaining_usd),
                     format_usd(b.projected_usd), str(b.runs), b.state])
    return header, rows


def budget_warning(b: "BudgetStatus") -> str:
    """One line for an envelope past its warn_at share: spent, share, projection."""
    return (f"budget {b.name!r} has spent {format_usd(b.spent_usd)} of {format_usd(b.amount_usd)} "
            f"({b.spent_usd / b.amount_usd:.0%} >= warn_at {b.envelope.warn_at:.0%}); "
            f"projected {format_usd(b.projected_usd)} by {b.period_end.date()}")


def budget_rich_table(budgets: Sequence["BudgetStatus"], title: str = "Budgets"):
    """The envelopes as a rich table for the terminal: over budget in red, past warn_at in yellow."""
    from rich.table import Table

    header, rows = budget_table(budgets)
    t = Table(title=title)
    for col in header:
        t.add_column(col, justify="left" if col in ("envelope", "scope", "period", "status") else "right")
    for b, row in zip(budgets, rows):
        t.add_row(*row, style="red" if b.exceeded else ("yellow" if b.warn else None))
    return t


def rich_tables(report: "Rendered", by: str | None = None, top: int = 15, budgets: Sequence["BudgetStatus"] = ()):
    """The terminal view: rich renderables, in order."""
    from rich.table import Table
    from rich.text import Text

    out: list[object] = []
    s = report.summary()
    out.append(Text.assemble(
        ("Total ", "bold"), (format_usd(s["cost_usd"]), "bold green"),
        f" over {s['tracked_runs']} tracked run(s); {s['nested_runs']} nested (inside their parents), ",
        (f"{s['untracked_runs']} untracked", "yellow" if s["untracked_runs"] else ""),
        f"; idle {format_usd(s['idle_cost_usd'])}, {format_energy(s['energy_kwh'])}, {format_co2e(s['co2e_kg'])}"
        + (f"; metric {report.metric} ({'higher' if report.goal == 'max' else 'lower'} is better)" if report.metric else ""),
    ))
    if budgets:
        out.append(budget_rich_table(budgets))
    no_gpu = not report.runs.any_gpu()

    def cols(header: list[str], rows: list[list[str]]) -> tuple[list[str], list[list[str]]]:
        if not no_gpu or "GPU h" not in header:
            return header, rows
        i = header.index("GPU h")
        return header[:i] + header[i + 1:], [row[:i] + row[i + 1:] for row in rows]

    for level in ([by] if by and by != "run" else GROUP_LEVELS):
        t = Table(title=f"Spend by {level}")
        header, rows = cols(_group_header(level, report.metric),
                            [_group_row(g, report.metric) for g in report.groups(level)])
        for i, col in enumerate(header):
            t.add_column(col, justify="left" if i == 0 else "right")
        for row in rows:
            t.add_row(*row)
        out.append(t)
    runs = list(itertools.islice(report.sorted_runs(), top))
    t = Table(title=f"Runs ({len(runs)} of {len(report.runs)}, most expensive first, untracked last)")
    header, rows = cols(_run_header(report.metric), [_run_row(r, report.metric) for r in runs])
    for i, col in enumerate(header):
        t.add_column(col, justify="left" if i < 5 else "right")
    for r, row in zip(runs, rows):
        t.add_row(*row, style="dim italic" if not r.tracked else None)
    out.append(t)
    if no_gpu and report.runs:
        out.append(Text("(no run used a GPU: GPU hours column hidden)", style="dim"))
    return out
