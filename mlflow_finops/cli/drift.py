"""`drift check` and `schedule`: judge data windows, on demand or on cron."""

from __future__ import annotations

import json
import logging
import sys

import click

from ..policy import PolicyError
from ._common import fail, load_policy_or_exit, policy_option
from .exit_codes import EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_OK, EXIT_RETRAIN


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


@click.group()
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
    from ..drift import DriftGate, DriftInputError

    policy = load_policy_or_exit(policy_path)
    gate = None
    try:
        window_key = source = files = None
        if current is None:  # which files first: a window that is not there starts nothing
            from ..drift.monitoring import window_key as make_key
            from ..drift.schedule import current_window

            files = current_window(policy, model)
            window_key = make_key(model, files)
            source = ", ".join(map(str, files))
        # one check per process: MLflow starts in a second process while this one judges
        kwargs = {"log_to_mlflow": not no_log, "log_process": not no_log, "progress": progress}
        if reference is not None:
            kwargs["reference"] = reference
        if model in policy.models or reference is None:
            gate = DriftGate.from_policy(policy, model=model, **kwargs)
        elif policy.models:
            policy.model(model)  # raises, naming the known models
        else:
            gate = DriftGate(model=model, policy=policy.drift, **kwargs)
        if files is not None:
            from ..drift.schedule import load_window

            current = load_window(files)
        decision = gate.check(current, window_key=window_key, source=source)
    except (PolicyError, DriftInputError) as exc:
        fail(str(exc), EXIT_BAD_INPUT)
    except Exception as exc:  # noqa: BLE001 - reported as an internal error, exit 1
        logging.getLogger(__name__).debug("drift check failed", exc_info=True)
        fail(f"internal error: {type(exc).__name__}: {exc}", EXIT_INTERNAL)
    finally:
        if gate is not None:
            gate.close()  # its logging process, when no check used it (a check uses it up)
    _print_decision(decision, as_json)
    sys.exit(EXIT_RETRAIN if decision.retrain else EXIT_OK)


@click.command()
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
    exactly one of them check a given window. A window whose files were
    modified in the last MLFLOW_FINOPS_SETTLE_S seconds (default 5) is
    reported as not_settled and tried again on the next pass.

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
