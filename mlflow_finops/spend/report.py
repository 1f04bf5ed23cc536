"""Cost reports: spend per experiment, model, team and run, read from MLflow, with charts.

The ledger is MLflow: every tracked run carries final ``finops/*`` metrics and
``finops.*`` tags. A report reads the runs in scope (:mod:`.reading`: the finops
app's projection on a server that has it, else ``search_runs`` pages of 10,000),
keeps only the figures it needs in a temporary table (:mod:`.rows`), and rolls
them up. Rules that keep the sums honest:

- runs tagged ``finops.nested_in`` are listed but never summed: their cost is
  already inside their parent's;
- runs without ``finops/cost_usd`` are *untracked*: counted and shown as such,
  never as $0;
- the experiment ``finops-reports`` (where reports log themselves) is left out
  unless asked for by name.
"""

from __future__ import annotations

import csv
import html
import io
import itertools
import json
import logging
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Callable, Iterator, Literal, Mapping, Sequence, TextIO

from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from ..charting import MAX_TOOLTIPS, html_page, html_table, write_charts
from ..money import format_usd
from ..units import format_co2e, format_energy
from ..names import REPORTS_EXPERIMENT, TAG_MODEL, TAG_REPORT, TAG_TEAM
from ..store import PAGE_SIZE, quote
from . import rollup
from .rollup import FIGURES, GROUP_LEVELS, GroupCost, ReportError, RunCost
from .reading import read_runs
from .rows import RunTable, RunView

if TYPE_CHECKING:  # pragma: no cover
    from ..charting import Chart
    from .budget import BudgetStatus

_log = logging.getLogger(__name__)

__all__ = [
    "ReportError",
    "RunCost",
    "GroupCost",
    "CostReport",
    "build_report",
    "parse_when",
    "log_report",
    "rich_tables",
    "budget_table",
    "budget_warning",
    "budget_rich_table",
    "REPORTS_EXPERIMENT",
]

GroupBy = Literal["experiment", "model", "team", "run"]


@dataclass
class CostReport:
    """Runs in scope and their roll-ups; render with :meth:`write` (or :meth:`to_json`, :meth:`to_csv`, :meth:`to_html`).

    ``runs`` is a :class:`~.rows.RunTable` (a plain list of rows is turned into one): the
    rows live in a temporary SQLite file and are read back in the order each output needs,
    so the report's memory does not grow with its runs. Totals and groups are summed
    as the rows arrive (the best run of each group once the metric is known).
    """

    runs: RunTable
    metric: str | None = None
    goal: str = "max"
    since: datetime | None = None
    until: datetime | None = None
    filters: dict[str, object] = field(default_factory=dict)
    pages: int = 0
    read_seconds: float = 0.0
    tags: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # run id -> finops.* tags, when kept
    _rollups: dict[str, object] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.runs, RunTable):
            self.runs = RunTable(self.runs)

    # ---------------------------------------------------------------- sums
    @property
    def counted(self) -> RunView:
        return RunView(self.runs, "counted")

    @property
    def untracked(self) -> RunView:
        return RunView(self.runs, "untracked")

    @property
    def nested(self) -> RunView:
        return RunView(self.runs, "nested")

    def total(self) -> GroupCost:
        return self._sums()["total"]  # type: ignore[return-value]

    def groups(self, by: str) -> list[GroupCost]:
        """Roll-up per experiment / model / team, most expensive first."""
        rollup.check_level(by)
        return list(self._sums()[by])  # type: ignore[call-overload]

    def _sums(self) -> dict[str, object]:
        if self._rollups is None:
            total, levels = self.runs.rollups(self.goal)
            self._rollups = {"total": total, **levels}
        return self._rollups

    def sorted_runs(self) -> Iterator[RunCost]:
        """Tracked runs by cost (most expensive first), then untracked ones, newest first."""
        return self.runs.select("all", "cost")

    # -------------------------------------------------------------- output
    def summary(self) -> dict[str, object]:
        t = self.total()
        return {
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "filters": self.filters,
            "metric": self.metric,
            "metric_goal": self.goal if self.metric else None,
            "runs": len(self.runs),
            "tracked_runs": t.runs,
            "nested_runs": t.nested,
            "untracked_runs": t.untracked,
            "cost_usd": t.cost_usd,
            "idle_cost_usd": t.idle_cost_usd,
            "cpu_core_hours": t.cpu_core_hours,
            "gpu_hours": t.gpu_hours,
            "energy_kwh": t.energy_kwh,
            "co2e_kg": t.co2e_kg,
            "cpu_efficiency": t.cpu_efficiency,
            "best_metric": t.best_metric,
            "best_run_id": t.best_run_id,
        }

    def write(self, fmt: Literal["csv", "json", "html"], out: TextIO, by: str | None = None,
              budgets: Sequence["BudgetStatus"] = ()) -> None:
        """Write the report to ``out`` a run at a time: CSV (per run, or per ``by`` group), JSON or HTML."""
        if fmt == "csv":
            self._write_csv(out, by or "run")
        elif fmt == "json":
            self._write_json(out, budgets)
        elif fmt == "html":
            out.write(self.to_html(budgets))
        else:
            raise ReportError(f"unknown report format {fmt!r} (expected csv, json or html)")

    def to_json(self, budgets: Sequence["BudgetStatus"] = ()) -> str:
        return self.render("json", budgets=budgets)

    def to_csv(self, by: str = "run") -> str:
        """One row per run (``by='run'``) or per group; untracked figures are empty cells, never 0."""
        return self.render("csv", by=by)

    def _write_json(self, out: TextIO, budgets: Sequence["BudgetStatus"]) -> None:
        head = {
            "summary": self.summary(),
            "groups": {level: [g.to_dict() for g in self.groups(level)] for level in GROUP_LEVELS},
        }
        if budgets:
            head["budgets"] = [b.to_dict() for b in budgets]
        text = json.dumps(head, indent=2, default=str)
        out.write(text[:-2] + ',\n  "runs": [')  # the head without its closing "}", then the runs one by one
        for i, r in enumerate(self.sorted_runs()):  # one line a run: json's C encoder (indent is pure Python)
            out.write(("," if i else "") + "\n    " + json.dumps(_run_dict(r, self.metric), default=str))
        out.write("\n  ]\n}" if len(self.runs) else "]\n}")

    def _write_csv(self, out: TextIO, by: str) -> None:
        w = csv.writer(out, lineterminator="\n")
        metric_col = f"metric:{self.metric}" if self.metric else "metric"
        if by == "run":
            cols = ["run_id", "run_name", "experiment", "model", "team", "start_time", "status", "tracked",
                    "nested_in", *FIGURES, metric_col]
            w.writerow(cols)
            for r in self.sorted_runs():
                d = _run_dict(r, self.metric)
                w.writerow([_cell(d.get(c if c != metric_col else "metric")) for c in cols])
        else:
            cols = ["level", "key", "runs", "untracked", "nested", "cost_usd", "idle_cost_usd", "cpu_core_hours",
                    "gpu_hours", "energy_kwh", "co2e_kg", "cpu_efficiency", "best_metric", "best_run_id",
                    "best_run_cost_usd"]
            w.writerow(cols)
            for g in self.groups(by):
                d = g.to_dict()
                w.writerow([_cell(d[c]) for c in cols])

    def render(self, fmt: Literal["csv", "json", "html"], by: str | None = None,
               budgets: Sequence["BudgetStatus"] = ()) -> str:
        """The report as one string (see :meth:`write` to stream it to a file instead)."""
        buf = io.StringIO()
        self.write(fmt, buf, by=by, budgets=budgets)
        return buf.getvalue()

    def charts(self, budgets: Sequence["BudgetStatus"] = ()) -> dict[str, tuple[bytes, str]]:
        """name -> (png, html) for every chart this report can draw."""
        return {name: chart.pair() for name, chart in self._charts(budgets).items()}

    def write_charts(self, folder: str, budgets: Sequence["BudgetStatus"] = ()) -> list[str]:
        """Every chart as ``folder/<name>.png`` and ``.html``; the paths written."""
        return write_charts(folder, self.charts(budgets))

    def _charts(self, budgets: Sequence["BudgetStatus"] = ()) -> dict[str, "Chart"]:
        from . import charts as ch

        spend = ((r.experiment, r.start_time, r.cost_usd) for r in self.runs.select("counted", "start"))
        out = {"cost_over_time": ch.cost_over_time(ch.thin_cumulative(spend), "Cost over time per experiment")}
        if self.metric:
            points, drawn_from = self._metric_points()
            out["cost_vs_metric"] = ch.cost_vs_metric(points, self.metric, self.goal, f"Cost vs {self.metric}",
                                                      drawn_from=drawn_from)
        if budgets:
            out["budget_burndown"] = ch.budget_burndown(list(budgets))
        return out

    def _metric_points(self, limit: int = MAX_TOOLTIPS) -> tuple[list[tuple[str, float, float, str]], int | None]:
        """The runs the cost-vs-metric chart draws: all of them up to ``limit``; beyond, every
        k-th by cost plus the whole Pareto front (read cheapest first, so the front is one pass).
        The second value is how many runs they were drawn from (None: all drawn)."""
        runs = self.runs.select("charted", f"cheap-{self.goal}")  # finite metric and cost
        n = self.runs.count("charted")
        step = max(1, math.ceil(n / limit))
        sign = 1.0 if self.goal == "max" else -1.0
        best = -math.inf
        points = []
        for i, r in enumerate(runs):
            on_front = sign * r.metric > best  # type: ignore[operator]
            best = max(best, sign * r.metric)  # type: ignore[operator]
            if on_front or i % step == 0:
                points.append((r.label, r.cost_usd, r.metric, r.experiment))
        return points, (n if step > 1 else None)  # type: ignore[return-value]

    def to_html(self, budgets: Sequence["BudgetStatus"] = (), max_runs: int = 500) -> str:
        """A self-contained page: summary, charts (inline SVG), roll-ups and runs."""
        s = self.summary()
        scope = ", ".join(f"{k}={v}" for k, v in self.filters.items() if v) or "all experiments"
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
            rows = [_group_row(g, self.metric) for g in self.groups(level)]
            tables.append(f"<h2>By {level}</h2>" + html_table(_group_header(level, self.metric), rows))
        rows, classes = [], []
        for r in itertools.islice(self.sorted_runs(), max_runs):
            rows.append(_run_row(r, self.metric))
            classes.append("untracked" if not r.tracked else "")
        n = len(self.runs)
        more = f"<p class=\"meta\">{n - max_runs} more run(s) in the CSV/JSON output.</p>" if n > max_runs else ""
        tables.append("<h2>Runs</h2>" + html_table(_run_header(self.metric), rows, classes) + more)
        return html_page("mlflow-finops cost report", list(self._charts(budgets).values()), intro, "\n".join(tables))


# ===================================================================== building
def parse_when(text: str, *, end: bool = False, now: datetime | None = None) -> datetime:
    """A date argument: ``2026-11-01``, ``2026-11-01T08:00``, ``+02:00`` offsets, ``7d``/``12h``/``2w`` ago, ``now``.

    Naive times are UTC. As an end (``--until``) a bare date means the end of
    that day, so ``--since 2026-11-01 --until 2026-11-30`` covers all of November.
    """
    now = now or datetime.now(timezone.utc)
    raw = text.strip()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([mhdw])", raw, re.I)
    if m:
        unit = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}[m.group(2).lower()]
        return now - timedelta(**{unit: float(m.group(1))})
    if raw.lower() == "now":
        return now
    if raw.lower() == "today":
        raw = now.date().isoformat()
    try:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ReportError(
            f"bad date {text!r}: expected YYYY-MM-DD, YYYY-MM-DDTHH:MM[:SS][+HH:MM], 'now', 'today' or an age like 7d, 12h, 2w"
        ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    if end and re.fullmatch(r"\d{4}-\d{2}-\d{2}", raw):
        value += timedelta(days=1)
    return value


def build_report(
    client: MlflowClient | None = None,
    *,
    experiments: Sequence[str] = (),
    model: str | None = None,
    team: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    metric: str | None = None,
    goal: str | None = None,
    include_deleted: bool = False,
    page_size: int = PAGE_SIZE,
    on_page: Callable[[int], None] | None = None,
    keep_tags: bool = False,
) -> CostReport:
    """Read the runs in scope from MLflow and return a :class:`CostReport`.

    Filters (model, team, period) go into the store's query (the finops app's
    projection, or the ``search_runs`` filter string), so the store does the selecting;
    through ``search_runs`` runs are read ``page_size`` at a time.
    ``keep_tags`` keeps each run's ``finops.*`` tags in ``CostReport.tags`` (the FOCUS export needs them).
    Raises :class:`ReportError` for an unknown experiment or an empty period.
    """
    import time

    client = client or MlflowClient()
    if since and until and since >= until:
        raise ReportError(f"empty period: --since {since.isoformat()} is not before --until {until.isoformat()}")
    if goal is not None and goal not in ("max", "min"):
        raise ReportError(f"goal={goal!r}: expected 'max' or 'min'")
    view = ViewType.ALL if include_deleted else ViewType.ACTIVE_ONLY
    names = _experiment_names(client, experiments, view)
    clauses = []
    for option, key, value in (("model", TAG_MODEL, model), ("team", TAG_TEAM, team)):
        if value is not None:
            literal = quote(value)
            if literal is None:
                raise ReportError(f"--{option} {value!r}: cannot hold both ' and \" quotes")
            clauses.append(f'tags."{key}" = {literal}')
    since_ms = int(since.timestamp() * 1000) if since else None
    until_ms = int(until.timestamp() * 1000) if until else None
    if since_ms is not None:
        clauses.append(f"attributes.start_time >= {since_ms}")
    if until_ms is not None:
        clauses.append(f"attributes.start_time < {until_ms}")
    pages = 0

    def counted_page(n: int) -> None:
        nonlocal pages
        pages += 1
        if on_page is not None:
            on_page(n)

    t0 = time.perf_counter()
    rows = RunTable()
    for row, quality, kept in read_runs(client, names, " AND ".join(clauses), view=view, model=model, team=team,
                                        since_ms=since_ms, until_ms=until_ms, keep_tags=keep_tags,
                                        page_size=page_size, on_page=counted_page):
        rows.append(row, quality if row.tracked else None, kept)
    chosen = metric or rollup.pick_metric(rows.metric_counts())
    chosen_goal = goal or rollup.metric_goal(chosen)
    if chosen:
        rows.set_metric(chosen)
    report = CostReport(
        runs=rows,
        metric=chosen,
        goal=chosen_goal,
        since=since,
        until=until,
        filters={"experiments": list(experiments), "model": model, "team": team},
        pages=pages,
        read_seconds=time.perf_counter() - t0,
        tags=rows.tags if keep_tags else {},
    )
    _log.info("report: %d run(s) in %d page(s), %.2fs", len(rows), pages, report.read_seconds)
    return report


def _experiment_names(client: MlflowClient, wanted: Sequence[str], view: int) -> dict[str, str]:
    """experiment id -> name for the experiments in scope."""
    if wanted:
        out: dict[str, str] = {}
        for name in wanted:
            exp = client.get_experiment_by_name(name)
            if exp is None or (exp.lifecycle_stage == "deleted" and view == ViewType.ACTIVE_ONLY):
                known = [e.name for e in client.search_experiments(max_results=50) if e.name != REPORTS_EXPERIMENT]
                hint = f" (known: {', '.join(sorted(known)[:10])}{', ...' if len(known) > 10 else ''})" if known else ""
                raise ReportError(f"unknown experiment {name!r}{hint}")
            out[exp.experiment_id] = exp.name
        return out
    out = {}
    token = None
    while True:
        page = client.search_experiments(view_type=view, max_results=1000, page_token=token)
        out.update({e.experiment_id: e.name for e in page if e.name != REPORTS_EXPERIMENT})
        token = page.token
        if not token:
            return out


# ===================================================================== rendering
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


def rich_tables(report: CostReport, by: str | None = None, top: int = 15, budgets: Sequence["BudgetStatus"] = ()):
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


# ===================================================================== to MLflow
def log_report(
    report: CostReport,
    client: MlflowClient | None = None,
    budgets: Sequence["BudgetStatus"] = (),
    run_name: str | None = None,
) -> str:
    """Log the report (JSON, CSV, HTML and every chart as PNG + HTML) to a run in ``finops-reports``.

    Uses the client API, not ``mlflow.start_run``, so autolog never tracks the report itself.
    Returns the run id.
    """
    import os
    import tempfile

    client = client or MlflowClient()
    exp = client.get_experiment_by_name(REPORTS_EXPERIMENT)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(REPORTS_EXPERIMENT)
    if exp is not None and exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp_id)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    run = client.create_run(exp_id, run_name=run_name or f"cost report {stamp}", tags={TAG_REPORT: "true"})
    rid = run.info.run_id
    try:
        s = report.summary()
        params = {k: ",".join(v) if isinstance(v, list) else v for k, v in report.filters.items() if v}
        params.update({"since": s["since"], "until": s["until"], "metric": report.metric})
        from mlflow.entities import Metric, Param

        now_ms = int(datetime.now(timezone.utc).timestamp() * 1000)
        metrics = [
            Metric(f"report/{k}", float(s[k]), now_ms, 0)
            for k in ("cost_usd", "idle_cost_usd", "energy_kwh", "co2e_kg", "tracked_runs", "untracked_runs",
                      "nested_runs", "cpu_core_hours", "gpu_hours")
            if s[k] is not None
        ]
        metrics += [Metric(f"budget/{b.name}/spent_usd", b.spent_usd, now_ms, 0) for b in budgets]
        metrics += [Metric(f"budget/{b.name}/projected_usd", b.projected_usd, now_ms, 0) for b in budgets]
        client.log_batch(rid, metrics=metrics, params=[Param(k, str(v)) for k, v in params.items() if v is not None])
        with tempfile.TemporaryDirectory() as tmp:
            report.write_charts(os.path.join(tmp, "charts"), budgets)
            for name, fmt in (("report.json", "json"), ("report_runs.csv", "csv"), ("report.html", "html")):
                with open(os.path.join(tmp, name), "w", encoding="utf-8", newline="") as f:
                    report.write(fmt, f, by="run", budgets=budgets)  # type: ignore[arg-type]
            client.log_artifacts(rid, tmp)
    except BaseException:
        client.set_terminated(rid, "FAILED")
        raise
    client.set_terminated(rid, "FINISHED")
    return rid
