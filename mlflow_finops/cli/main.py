"""The ``mlflow-finops`` command.

Exit codes are part of the interface (cron and CI read them):
0 success / nothing to do, 2 bad input or configuration, 1 internal error;
commands that recommend an action document their own codes (e.g. ``drift check``: 10).
"""

from __future__ import annotations

import json
import logging
import sys

import click

from .. import __version__
from ..policy import PolicyError, load_policy
from ..pricing import PriceCatalog, price_env_var

from .exit_codes import (
    EXIT_BAD_INPUT,
    EXIT_BLOCKED,
    EXIT_BUDGET_WARN,
    EXIT_CAPPED,
    EXIT_INTERNAL,
    EXIT_NOT_PROMOTED,
    EXIT_OK,
    EXIT_RETRAIN,
)

policy_option = click.option(
    "--policy",
    "policy_path",
    type=click.Path(dir_okay=False),
    envvar="MLFLOW_FINOPS_POLICY",
    default=None,
    help="Policy file (TOML). Default: $MLFLOW_FINOPS_POLICY, else ./finops.toml if present.",
)


def fail(message: str, code: int = EXIT_BAD_INPUT) -> "click.exceptions.Exit":
    """Print a one-line error to stderr and exit with ``code``."""
    click.secho(f"Error: {message}", fg="red", err=True)
    raise click.exceptions.Exit(code)


def load_policy_or_exit(path: str | None):
    try:
        return load_policy(path)
    except PolicyError as exc:
        fail(str(exc))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mlflow-finops")
@click.option("-v", "--verbose", is_flag=True, help="Log at DEBUG level.")
def cli(verbose: bool) -> None:
    """Cost as a first-class signal of the ML lifecycle, on MLflow.

    \b
    Track what every run costs:   add `mlflow_finops.autolog()` to a training script.
    See the prices in force:      mlflow-finops prices --policy finops.toml
    Gate retraining on drift:     mlflow-finops drift check --policy finops.toml --model churn \\
                                      --reference ref.parquet --current new.parquet
    Run the checks on cron:       mlflow-finops schedule --policy finops.toml
    Retrain within budget:        mlflow-finops ray up; mlflow-finops retrain --model churn
    What was spent, and on what:  mlflow-finops report --since 30d; mlflow-finops budget
    Deliver spooled samples:      mlflow-finops sync

    MLflow is read from MLFLOW_TRACKING_URI (default: sqlite:///mlflow.db here).
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@cli.command()
@policy_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def prices(policy_path: str | None, as_json: bool) -> None:
    """Show the price catalog in force and where each value comes from.

    Precedence, lowest first: built-in defaults (OpenCost list prices, GCP
    us-central1), the policy's [prices] section, MLFLOW_FINOPS_* variables.
    """
    import os

    policy = load_policy_or_exit(policy_path)
    try:
        catalog = PriceCatalog.resolve(policy.prices)
    except ValueError as exc:
        fail(str(exc))
    from_file = policy.prices.model_fields_set
    rows = []
    for name, value in catalog.model_dump().items():
        var = price_env_var(name)
        source = var if var in os.environ else ("policy" if name in from_file else "default")
        rows.append((name, value, source, var))
    if as_json:
        click.echo(json.dumps({name: value for name, value, _, _ in rows}, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Price catalog '{catalog.profile}'")
    for col in ("key", "value", "from", "override with"):
        table.add_column(col)
    for name, value, source, var in rows:
        table.add_row(name, str(value), source, var)
    Console().print(table)


@cli.command()
def sync() -> None:
    """Deliver cost samples spooled while the tracking server was unreachable."""
    from ..cost.delivery import sync_spool

    delivered, left = sync_spool()
    click.echo(f"delivered {delivered} spooled batch(es); {left} left")
    sys.exit(EXIT_OK if left == 0 else EXIT_INTERNAL)


# ==================================================================== drift gate (issue 3) ====


def _print_decision(decision, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(decision.to_dict(), indent=2, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    color = {"retrain": "red", "no_drift": "green", "insufficient_data": "yellow"}.get(decision.decision, "yellow")
    console.print(f"[bold]{decision.model}[/]: [bold {color}]{decision.decision}[/] - {decision.reason}")
    if decision.columns:
        table = Table(show_edge=False)
        for col in ("column", "type", "method", "threshold", "score", "drift"):
            table.add_column(col)
        for r in decision.columns.values():
            thr = r.corrected_threshold if r.corrected_threshold is not None else r.threshold
            table.add_row(r.column, r.type, r.method, f"{thr:.4g}", f"{r.score:.4g}", "yes" if r.drifted else "")
        console.print(table)
    if decision.run_id:
        console.print(f"MLflow run: {decision.run_id}")


@cli.group()
def drift() -> None:
    """Drift-gated retraining decisions, judged by Evidently, logged to MLflow."""


@drift.command("check")
@policy_option
@click.option("--model", required=True, help="Model name: its [models.NAME] section, if the policy has one.")
@click.option("--reference", type=click.Path(dir_okay=False),
              help="Reference data (.csv or .parquet). Default: [models.NAME].reference.")
@click.option("--current", type=click.Path(),
              help="Current data (.csv or .parquet). Default: the newest file(s) of [models.NAME].current.")
@click.option("--json", "as_json", is_flag=True, help="Print the decision as JSON.")
@click.option("--no-log", is_flag=True, help="Decide only; log no MLflow run (cooldown/persistence see no history).")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a terminal, for big data).")
def drift_check(policy_path, model, reference, current, as_json, no_log, progress) -> None:
    """Decide whether MODEL needs retraining, from drift between two data sets.

    \b
    Evidently scores every column (method and threshold from [drift], or
    Evidently's defaults); the gate applies min_rows, drift_share, correction,
    persistence, cooldown and the optional performance signal, and logs the
    check as a run in the experiment finops-monitoring/MODEL (or
    [models.MODEL].experiment), with the Evidently HTML report attached.

    \b
    Exit codes (for cron):
      0   no retrain (no drift, pending persistence, cooldown, too few rows)
      10  retrain recommended
      2   bad input or configuration (missing/extra/retyped columns,
          empty or unreadable files, bad policy); nothing is logged
      1   internal error

    \b
    Example:
      mlflow-finops drift check --policy finops.toml --model churn \\
          --reference ref.parquet --current cur.parquet
    """
    from ..drift import DriftGate, DriftInputError, model_policy

    policy = load_policy_or_exit(policy_path)
    try:
        kwargs = {"log_to_mlflow": not no_log, "progress": progress}
        if reference is not None:
            kwargs["reference"] = reference
        if model in policy.models or reference is None:
            gate = DriftGate.from_policy(policy, model=model, **kwargs)
        elif policy.models:
            model_policy(policy, model)  # raises, naming the known models
        else:
            gate = DriftGate(model=model, policy=policy.drift, **kwargs)
        window_key = None
        if current is None:
            from ..drift.monitoring import window_key as make_key
            from ..drift.schedule import current_window, load_window

            files = current_window(policy, model)
            window_key = make_key(model, files)
            current = load_window(files)
        decision = gate.check(current, window_key=window_key)
    except (PolicyError, DriftInputError) as exc:
        fail(str(exc), EXIT_BAD_INPUT)
    except Exception as exc:  # noqa: BLE001 - reported as an internal error, exit 1
        logging.getLogger(__name__).debug("drift check failed", exc_info=True)
        fail(f"internal error: {type(exc).__name__}: {exc}", EXIT_INTERNAL)
    _print_decision(decision, as_json)
    sys.exit(EXIT_RETRAIN if decision.retrain else EXIT_OK)


@cli.command()
@policy_option
@click.option("--once", is_flag=True, help="Run every scheduled check once, now, and exit.")
@click.option("--max-runs", type=click.IntRange(min=1), default=None, help="Exit after N checks.")
@click.option("--model", "models", multiple=True, help="Only these models (repeatable).")
def schedule(policy_path, once, max_runs, models) -> None:
    """Run the policy's drift checks on their cron schedules.

    \b
    Every [models.NAME] with `schedule = "<cron>"` is checked on that cron
    expression; its window is the newest `current_files` file(s) (default 1)
    in the folder or glob `current`. A window is judged once: already-checked
    windows are skipped, and when several schedulers run, an MLflow claim lets
    exactly one of them check a given window.

    \b
    Exit codes (with --once or --max-runs):
      0   all checks ran, no retrain recommended
      10  at least one retrain recommended
      2   bad input or configuration in at least one check
      1   internal error in at least one check

    \b
    Example:
      [models.churn]
      reference = "data/ref.parquet"
      current = "data/incoming/*.parquet"
      schedule = "*/15 * * * *"
    """
    from ..loop import run_schedule

    policy = load_policy_or_exit(policy_path)

    def report(out) -> None:
        line = f"{out.model}: {out.status}"
        if out.decision is not None:
            line += f" -> {out.decision.decision}"
        click.echo(f"{line}: {out.message}")

    try:
        outcomes = run_schedule(policy, once=once, max_runs=max_runs, models=list(models) or None,
                                on_outcome=report)
    except PolicyError as exc:
        fail(str(exc), EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        sys.exit(EXIT_OK)
    statuses = {o.status for o in outcomes}
    if "error" in statuses:
        sys.exit(EXIT_INTERNAL)
    if "bad_input" in statuses:
        sys.exit(EXIT_BAD_INPUT)
    sys.exit(EXIT_RETRAIN if any(o.retrain for o in outcomes) else EXIT_OK)


# ==================================================================== end drift gate ====


# ==================================================================== reports and budgets (issue 5) ====


def _report_console(stderr: bool = False):
    """A rich console; wide when writing to a pipe or file, so tables are not squeezed to 80 columns."""
    from rich.console import Console

    console = Console(stderr=stderr)
    if not console.is_terminal and not stderr:
        console = Console(width=180)
    return console


def _mlflow_call(what: str, fn, *args, **kwargs):
    """Run an MLflow read; a store that cannot be reached is a one-line error (exit 1)."""
    from mlflow.exceptions import MlflowException
    from requests.exceptions import RequestException

    try:
        return fn(*args, **kwargs)
    except (MlflowException, RequestException, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        fail(f"{what}: {first}", EXIT_INTERNAL)


def _write_charts(folder: str, charts: dict) -> list[str]:
    import os

    os.makedirs(folder, exist_ok=True)
    written = []
    for name, (png, page) in charts.items():
        for ext, data in (("png", png), ("html", page.encode("utf-8"))):
            path = os.path.join(folder, f"{name}.{ext}")
            with open(path, "wb") as f:
                f.write(data)
            written.append(path)
    return written


@cli.command()
@policy_option
@click.option("-e", "--experiment", "experiments", multiple=True, metavar="NAME",
              help="Experiment to report on (repeatable). Default: every experiment.")
@click.option("--model", default=None, help="Only runs tagged finops.model=MODEL.")
@click.option("--team", default=None, help="Only runs tagged finops.team=TEAM.")
@click.option("--since", default=None, help="Runs started at or after: 2026-11-01, 2026-11-01T08:00, 7d, 12h.")
@click.option("--until", default=None, help="Runs started before (a bare date includes that day).")
@click.option("--by", type=click.Choice(["experiment", "model", "team", "run"]), default=None,
              help="Roll-up level for the table and CSV (default: all levels in the table, runs in CSV).")
@click.option("--metric", default=None, help="Model metric to show beside cost (default: the most common one).")
@click.option("--goal", type=click.Choice(["max", "min"]), default=None,
              help="Whether higher or lower --metric is better (default: guessed from its name).")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json", "html"]), default="table")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None, help="Write there instead of stdout.")
@click.option("--charts", "charts_dir", type=click.Path(file_okay=False), default=None,
              help="Also write every chart as PNG and HTML into this folder.")
@click.option("--log-to-mlflow", is_flag=True, help="Attach report and charts to a run in 'finops-reports'.")
@click.option("--top", default=15, show_default=True, help="Runs listed in the table.")
@click.option("--include-deleted", is_flag=True, help="Also count deleted runs and experiments.")
@click.option("--page-size", default=10_000, show_default=True, type=click.IntRange(1, 50_000),
              help="Runs per search_runs request.")
def report(policy_path, experiments, model, team, since, until, by, metric, goal, fmt, output, charts_dir,
           log_to_mlflow, top, include_deleted, page_size) -> None:
    """Spend per experiment, model, team and run, with the best model metric beside cost.

    Untracked runs (no finops/cost_usd) are listed as untracked, never as $0;
    nested runs are listed but not summed (their cost is in their parent's).
    When the policy has [budgets.*] envelopes their status and burn-down are included.
    """
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
                               page_size=page_size, on_page=on_page)
        except ReportError as exc:
            fail(str(exc))
        budgets = []
        if policy.budgets:
            from ..spend.budget import budget_status

            budgets = _mlflow_call("cannot read budget spend", budget_status, policy, page_size=page_size)
    if not rep.runs:
        err.print("[yellow]No runs match this selection.[/yellow]")
    if fmt == "table":
        console = _report_console()
        if output:
            from rich.console import Console

            console = Console(file=open(output, "w", encoding="utf-8"), width=160)
        for part in rich_tables(rep, by=by, top=top, budgets=budgets):
            console.print(part)
    else:
        text = {"csv": lambda: rep.to_csv(by or "run"), "json": lambda: rep.to_json(budgets),
                "html": lambda: rep.to_html(budgets)}[fmt]()
        if output:
            with open(output, "w", encoding="utf-8") as f:
                f.write(text)
        else:
            click.echo(text, nl=not text.endswith("\n"))
    if charts_dir:
        written = _write_charts(charts_dir, rep.charts(budgets))
        err.print(f"wrote {len(written)} chart file(s) to {charts_dir}")
    if log_to_mlflow:
        rid = _mlflow_call("cannot log the report", log_report, rep, budgets=budgets)
        err.print(f"logged report to run {rid} in experiment 'finops-reports'")


@cli.command()
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
    from ..spend.budget import budget_status
    from ..spend.charts import _burndown_chart
    from ..spend.report import _budget_header, _budget_row, _money

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
        from rich.table import Table

        table = Table(title="Budget envelopes")
        for col in _budget_header():
            table.add_column(col, justify="left" if col in ("envelope", "scope", "period", "status") else "right")
        for s in statuses:
            table.add_row(*_budget_row(s), style="red" if s.exceeded else ("yellow" if s.warn else None))
        _report_console().print(table)
    for s in statuses:
        if s.warn:
            click.secho(
                f"Warning: budget {s.name!r} has spent {_money(s.spent_usd)} of {_money(s.amount_usd)} "
                f"({s.spent_usd / s.amount_usd:.0%} >= warn_at {s.envelope.warn_at:.0%}); "
                f"projected {_money(s.projected_usd)} by {s.period_end.date()}",
                fg="yellow", err=True,
            )
    if charts_dir:
        written = _write_charts(charts_dir, {"budget_burndown": _burndown_chart(statuses, "Budget burn-down").pair()})
        click.echo(f"wrote {len(written)} chart file(s) to {charts_dir}", err=True)
    if check and any(s.warn for s in statuses):
        sys.exit(EXIT_BUDGET_WARN)


# ==================================================================== end reports and budgets ====


def main() -> None:  # pragma: no cover - console entry point
    cli()


# ==================================================================== retraining (issue 4) ====


def _print_outcome(out) -> None:
    color = {"promoted": "green", "not_promoted": "yellow", "waiting": "yellow"}.get(out.state, "red")
    cost = f"${out.cost_usd:.6f}" if out.cost_usd is not None else "-"
    cap = f" of cap ${out.cap_usd:.6f}" if out.cap_usd is not None else ""
    click.secho(f"{out.model}: {out.state} (run {out.run_id}, cost {cost}{cap})", fg=color)
    click.echo(f"  {out.reason}")


@cli.command()
@policy_option
@click.option("--model", required=True, help="The model, as named in [models.NAME].")
@click.option("--drift-run-id", default=None, help="The drift check that asked for it (lineage).")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Supervise the Ray job to its end, or return once it is submitted.")
def retrain(policy_path: str | None, model: str, drift_run_id: str | None, wait: bool) -> None:
    """Retrain MODEL incrementally as a Ray job, within its budget and windows.

    \b
    Steps: budget envelopes covering the model (spend read from MLflow) ->
    opportunistic window ([windows]; `critical` envelopes bypass it) -> a Ray
    job (ray_jobs/retrain.py) that updates @champion with the data that arrived
    since it was trained (partial_fit / warm_start / refit) and stops at the
    cost cap -> the challenger gets @champion only if it beats it by the margin.
    The Ray Jobs API address is [retrain].ray_address, else $RAY_ADDRESS, else
    http://127.0.0.1:8265 (`mlflow-finops ray up` starts a local cluster).

    \b
    Exit codes:
      0   retrained (promoted or not: see the output)
      12  no job ran: out of budget, dropped, or waiting for a window
      3   stopped at its cost cap, nothing promoted
      1   the job failed (retried with backoff while budget remains)
      2   bad input or configuration
    """
    from ..retrain import RetrainSupervisor, request_retrain

    policy = load_policy_or_exit(policy_path)
    try:
        run_id = request_retrain(policy, model, drift_run_id=drift_run_id, reason="mlflow-finops retrain")
        sup = RetrainSupervisor(policy)
        out = sup.process(run_id, wait=wait)
        while wait and out.state == "retry":
            delay = max(0.0, (_retry_at(sup, run_id) - sup.now()).total_seconds())
            click.echo(f"{model}: job failed, retrying in {delay:.0f} s")
            sup.sleep(delay)
            out = sup.process(run_id, wait=True)
    except PolicyError as exc:
        fail(str(exc))
    except Exception as exc:  # noqa: BLE001
        logging.getLogger(__name__).debug("retrain failed", exc_info=True)
        fail(f"{type(exc).__name__}: {exc}", EXIT_INTERNAL)
    _print_outcome(out)
    codes = {"promoted": 0, "not_promoted": EXIT_NOT_PROMOTED, "submitted": 0, "capped": EXIT_CAPPED,
             "failed": EXIT_INTERNAL, "no_new_data": 0}
    sys.exit(codes.get(out.state, EXIT_BLOCKED))


def _retry_at(sup, run_id: str):
    from datetime import datetime

    return datetime.fromisoformat(sup.client.get_run(run_id).data.tags["finops.retry_at"])


@cli.group("ray")
def ray_group() -> None:
    """A local Ray cluster for retraining jobs (127.0.0.1 only)."""


@ray_group.command("up")
@click.option("--num-cpus", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--port", type=int, default=6379, show_default=True, help="The head's GCS port (its address).")
@click.option("--dashboard-port", type=int, default=8265, show_default=True, help="Jobs API port.")
def ray_up(num_cpus: int, port: int, dashboard_port: int) -> None:
    """Start a local Ray head with the Jobs API on http://127.0.0.1:PORT.

    Equivalent to `ray start --head --node-ip-address 127.0.0.1 ...`; point
    retraining at it with [retrain].ray_address or RAY_ADDRESS.
    """
    from ..ray_cluster import RayClusterError, start_local_cluster

    try:
        cluster = start_local_cluster(num_cpus, port, dashboard_port)
    except RayClusterError as exc:
        fail(str(exc), EXIT_INTERNAL)
    down = "mlflow-finops ray down" + (f" --port {port}" if port != 6379 else "")
    click.echo(f"Ray is up: Jobs API at {cluster.jobs_url} (stop it with `{down}`)")


@ray_group.command("down")
@click.option("--port", type=int, default=6379, show_default=True, help="The GCS port given to `ray up`.")
def ray_down(port: int) -> None:
    """Stop the local Ray cluster that `mlflow-finops ray up` started on 127.0.0.1:PORT.

    Only that cluster's processes (and their workers) are stopped; other Ray
    clusters on this machine keep running (`ray stop` would stop them all).
    """
    from ..ray_cluster import stop_local_cluster

    stopped = stop_local_cluster(port)
    if not stopped:
        click.echo(f"no local Ray cluster at 127.0.0.1:{port}")
        return
    click.echo(f"Ray at 127.0.0.1:{port} stopped ({stopped} processes)")


# ==================================================================== end retraining ====
