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
from ..pricing import PriceCatalog, price_env_var
from . import drift as drift_commands
from . import retrain as retrain_commands
from . import spend as spend_commands
from ._common import fail, load_policy_or_exit, policy_option
from .exit_codes import EXIT_INTERNAL, EXIT_OK


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
    """Deliver cost samples spooled while the tracking server was unreachable.

    \b
    Exit 0: everything delivered (or nothing spooled).
    Exit 1: batches are left for a later sync (server unreachable, run deleted
            but restorable), or were dead-lettered: moved to the spool folder's
            dead/ with a .reason file, as they can never be delivered (corrupt,
            or their run does not exist). Each loss is logged with its reason.
    """
    from ..cost.spool import DEAD_LETTER_DIR, spool_dir, sync_spool

    result = sync_spool()
    line = f"delivered {result.delivered} spooled batch(es); {result.left} left; {result.dead} dead-lettered"
    if result.dead:
        line += f" (see {spool_dir() / DEAD_LETTER_DIR})"
    click.echo(line)
    sys.exit(EXIT_OK if not (result.left or result.dead) else EXIT_INTERNAL)


cli.add_command(drift_commands.drift)
cli.add_command(drift_commands.schedule)
cli.add_command(spend_commands.report)
cli.add_command(spend_commands.budget)
cli.add_command(retrain_commands.retrain)
cli.add_command(retrain_commands.ray_group)
