"""`report` and `budget`: what was spent, and on what."""

from __future__ import annotations

import contextlib
import json
import sys

import click

from ..names import REPORTS_EXPERIMENT, TAG_MODEL, TAG_TEAM
from ._common import fail, load_policy_or_exit, policy_option
from .exit_codes import EXIT_BUDGET_WARN, EXIT_INTERNAL


def _report_console(stderr: bool = False):
    """A rich console; wide when writing to a pipe or file, so tables are not squeezed to 80 columns."""
    from rich.console import Console

    console = Console(stderr=stderr)
    if not console.is_terminal and not stderr:
        console = Console(width=180)
    return console


def _mlflow_call(what: str, fn, *args, **kwargs):
    """Run an MLflow read or write; a store that cannot be reached is a one-line error (exit 1)."""
    from mlflow.exceptions import MlflowException
    from requests.exceptions import RequestException

    try:
        return fn(*args, **kwargs)
    except (MlflowException, RequestException, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        fail(f"{what}: {first}", EXIT_INTERNAL)


@click.command()
@policy_option
@click.option("-e", "--experiment", "experiments", multiple=True, metavar="NAME",
              help="Experiment to report on (repeatable). Default: every experiment.")
@click.option("--model", default=None, help=f"Only runs tagged {TAG_MODEL}=MODEL.")
@click.option("--team", default=None, help=f"Only runs tagged {TAG_TEAM}=TEAM.")
@click.option("--since", default=None, help="Runs started at or after: 2026-11-01, 2026-11-01T08:00, 7d, 12h.")
@click.option("--until", default=None, help="Runs started before (a bare date includes that day).")
@click.option("--by", type=click.Choice(["experiment", "model", "team", "run"]), default=None,
              help="Roll-up level for the table and CSV (default: all levels in the table, runs in CSV).")
@click.option("--metric", default=None, help="Model metric to show beside cost (default: the most common one).")
@click.option("--goal", type=click.Choice(["max", "min"]), default=None,
              help="Whether higher or lower --metric is better (default: guessed from its name).")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json", "html", "focus"]), default="table",
              help="focus: FOCUS 1.2 cost rows for finance tools (CSV; Parquet when --output ends in .parquet).")
@click.option("--focus-granularity", type=click.Choice(["run", "day"]), default="run", show_default=True,
              help="--format focus: one row per run, or per run and UTC day.")
@click.option("--focus-provider", default="mlflow-finops", show_default=True, metavar="NAME",
              help="--format focus: ProviderName, PublisherName, InvoiceIssuerName and billing account.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None, help="Write there instead of stdout.")
@click.option("--charts", "charts_dir", type=click.Path(file_okay=False), default=None,
              help="Also write every chart as PNG and HTML into this folder.")
@click.option("--log-to-mlflow", is_flag=True, help=f"Attach report and charts to a run in '{REPORTS_EXPERIMENT}'.")
@click.option("--top", default=15, show_default=True, help="Runs listed in the table.")
@click.option("--include-deleted", is_flag=True, help="Also count deleted runs and experiments.")
@click.option("--page-size", default=10_000, show_default=True, type=click.IntRange(1, 50_000),
              help="Runs per search_runs request.")
def report(policy_path, experiments, model, team, since, until, by, metric, goal, fmt, focus_granularity,
           focus_provider, output, charts_dir, log_to_mlflow, top, include_deleted, page_size) -> None:
    """Spend per experiment, model, team and run, with the best model metric beside cost.

    Untracked runs (no finops/cost_usd) are listed as untracked, never as $0;
    nested runs are listed but not summed (their cost is in their parent's).
    When the policy has [budgets.*] envelopes their status and burn-down are included.
    --format focus writes the same runs as FOCUS 1.2 rows (one per counted run, or per run and day).
    """
    from ..spend.budget import budget_status
    from ..spend.report import ReportError, build_report, log_report, parse_when, rich_tables

    policy = load_policy_or_exit(policy_path)
    try:
        start = parse_when(since) if since else None
        end = parse_when(until, end=True) if until else None
    except ReportError as exc:
        fail(str(exc))
    err = _report_console(stderr=True)
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(SpinnerColumn(), TextColumn("reading runs from MLflow"), BarColumn(),
                  TextColumn("{task.completed:,} runs, {task.fields[pages]} page(s)"), TimeElapsedColumn(),
                  console=err, transient=True, disable=not err.is_terminal) as progress:
        task = progress.add_task("runs", total=None, pages=0)

        def on_page(n: int) -> None:
            progress.update(task, advance=n, pages=progress.tasks[task].fields["pages"] + 1)

        try:
            rep = _mlflow_call("cannot read runs", build_report, experiments=experiments, model=model, team=team,
                               since=start, until=end, metric=metric, goal=goal, include_deleted=include_deleted,
                               page_size=page_size, on_page=on_page, keep_tags=fmt == "focus")
        except ReportError as exc:
            fail(str(exc))
        budgets = []
        if policy.budgets:
            budgets = _mlflow_call("cannot read budget spend", budget_status, policy, page_size=page_size)
    if not rep.runs:
        err.print("[yellow]No runs match this selection.[/yellow]")
    if fmt == "table":
        from rich.console import Console

        with open(output, "w", encoding="utf-8") if output else contextlib.nullcontext() as f:
            console = Console(file=f, width=160) if f else _report_console()
            for part in rich_tables(rep, by=by, top=top, budgets=budgets):
                console.print(part)
    elif fmt == "focus":
        from ..spend.focus import write as write_focus

        try:
            write_focus(rep, output, granularity=focus_granularity, provider=focus_provider)
        except OSError as exc:
            fail(f"cannot write {output}: {exc}", EXIT_INTERNAL)
    else:  # streamed a run at a time: the runs are never all in memory
        try:
            with open(output, "w", encoding="utf-8", newline="") if output else contextlib.nullcontext(sys.stdout) as f:
                rep.write(fmt, f, by=by, budgets=budgets)
                if not output and fmt != "csv":  # CSV lines end in their own newline
                    f.write("\n")
        except OSError as exc:
            fail(f"cannot write {output}: {exc}", EXIT_INTERNAL)
    if charts_dir:
        written = rep.write_charts(charts_dir, budgets)
        err.print(f"wrote {len(written)} chart file(s) to {charts_dir}")
    if log_to_mlflow:
        rid = _mlflow_call("cannot log the report", log_report, rep, budgets=budgets)
        err.print(f"logged report to run {rid} in experiment {REPORTS_EXPERIMENT!r}")


@click.command()
@policy_option
@click.option("--name", "names", multiple=True, metavar="ENVELOPE", help="Only this envelope (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--charts", "charts_dir", type=click.Path(file_okay=False), default=None,
              help="Write the burn-down chart (PNG and HTML) into this folder.")
@click.option("--check", is_flag=True, help=f"Exit {EXIT_BUDGET_WARN} when an envelope is past its warn_at share.")
def budget(policy_path, names, as_json, charts_dir, check) -> None:
    """Each [budgets.NAME] envelope: spent, remaining, projected end-of-period spend, warnings.

    Spend = finops/cost_usd of the tracked, non-nested runs in the envelope's
    scope started in the current period, in every experiment. Projection =
    spent / elapsed fraction of the period (the current rate carried forward).
    """
    from ..charting import write_charts
    from ..spend.budget import budget_status
    from ..spend.charts import budget_burndown
    from ..spend.report import budget_rich_table, budget_warning

    policy = load_policy_or_exit(policy_path)
    if not policy.budgets:
        where = policy.source or "no policy file found"
        fail(f"no budget envelopes in the policy ({where}): add [budgets.NAME] sections with amount_usd and models or team")
    try:
        statuses = _mlflow_call("cannot read budget spend", budget_status, policy, names=names or None)
    except KeyError as exc:
        fail(exc.args[0])
    if as_json:
        click.echo(json.dumps([s.to_dict() for s in statuses], indent=2))
    else:
        _report_console().print(budget_rich_table(statuses, "Budget envelopes"))
    for s in statuses:
        if s.warn:
            click.secho(f"Warning: {budget_warning(s)}", fg="yellow", err=True)
    if charts_dir:
        written = write_charts(charts_dir, {"budget_burndown": budget_burndown(statuses).pair()})
        click.echo(f"wrote {len(written)} chart file(s) to {charts_dir}", err=True)
    if check and any(s.warn for s in statuses):
        sys.exit(EXIT_BUDGET_WARN)
