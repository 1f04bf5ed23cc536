"""Reading ``MLFLOW_FINOPS_*`` settings from the environment, one way everywhere."""

from __future__ import annotations

import os

_TRUE = ("1", "true", "yes")
_FALSE = ("0", "false", "no")


def env_flag(name: str, default: bool) -> bool:
    """``1/true/yes`` or ``0/false/no`` (any case); anything else, or unset, is ``default``."""
    raw = os.environ.get(name, "").lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    return default


def env_float(name: str, default: float) -> float:
    """A positive number; a bad value raises naming the variable."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r}: expected a number") from None
    if value <= 0:
        raise ValueError(f"{name}={raw!r}: must be greater than 0")
    return value
