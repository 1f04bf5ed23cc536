"""Cost reports: spend per experiment, model, team and run, read from MLflow, with charts.

This module is the report and its query; how it reads (CSV, JSON, HTML, rich) is :mod:`.render`.

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

import io
import logging
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Callable, Iterator, Literal, Mapping, Sequence, TextIO

from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from ..charting import MAX_TOOLTIPS, write_charts
from ..names import REPORTS_EXPERIMENT, TAG_MODEL, TAG_REPORT, TAG_TEAM
from ..store import PAGE_SIZE, quote
from . import render, rollup
from .render import budget_rich_table, budget_table, budget_warning, rich_tables  # noqa: F401 - re-exported
from .rollup import GROUP_LEVELS, GroupCost, ReportError, RunCost  # noqa: F401 - GROUP_LEVELS re-exported
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
            render.write_csv(self, out, by or "run")
        elif fmt == "json":
            render.write_json(self, out, budgets)
        elif fmt == "html":
            out.write(self.to_html(budgets))
        else:
            raise ReportError(f"unknown report format {fmt!r} (expected csv, json or html)")

    def to_json(self, budgets: Sequence["BudgetStatus"] = ()) -> str:
        return self.render("json", budgets=budgets)

    def to_csv(self, by: str = "run") -> str:
        """One row per run (``by='run'``) or per group; untracked figures are empty cells, never 0."""
        return self.render("csv", by=by)

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
        return render.html_report(self, list(self._charts(budgets).values()), budgets, max_runs)


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
