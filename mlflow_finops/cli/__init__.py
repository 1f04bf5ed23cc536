"""The ``mlflow-finops`` command: thin commands that parse, call one library function,
and map its result to an exit code."""

from .exit_codes import EXIT_BAD_INPUT, EXIT_BLOCKED, EXIT_BUDGET_WARN, EXIT_INTERNAL, EXIT_OK, EXIT_RETRAIN
from .main import cli

__all__ = [
    "cli", "EXIT_OK", "EXIT_INTERNAL", "EXIT_BAD_INPUT", "EXIT_RETRAIN", "EXIT_BUDGET_WARN", "EXIT_BLOCKED",
]
