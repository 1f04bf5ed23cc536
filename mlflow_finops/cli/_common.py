"""What every ``mlflow-finops`` command shares: the --policy option, one-line errors, exit codes.

Exit codes are part of the interface (cron and CI read them):
0 success / nothing to do, 2 bad input or configuration, 1 internal error;
commands that recommend an action document their own codes (e.g. ``drift check``: 10).
"""

from __future__ import annotations

import click

from ..names import ENV_POLICY
from ..policy import PolicyError, load_policy
from .exit_codes import EXIT_BAD_INPUT

policy_option = click.option(
    "--policy",
    "policy_path",
    type=click.Path(dir_okay=False),
    envvar=ENV_POLICY,
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
