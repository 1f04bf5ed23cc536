"""How a policy file's mistakes are worded: each bad key, where it is, and what was expected."""

from __future__ import annotations

import types
import typing
from typing import Any

__all__ = ["PolicyError", "describe_error", "unknown_key"]


class PolicyError(ValueError):
    """A policy file that cannot be used; ``problems`` lists each bad key with what is expected."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + ("; ".join(problems) if len(problems) == 1 else
                                          "\n  - " + "\n  - ".join(problems)))


def _key_path(loc: tuple[Any, ...]) -> str:
    """('prices', 'cpu_core_hour_usd') -> '[prices].cpu_core_hour_usd'."""
    if not loc:
        return "(top level)"
    head, *rest = [str(p) for p in loc]
    return f"[{head}]" + "".join(f".{p}" for p in rest)


def _allowed_keys(root: Any, loc: tuple[Any, ...]) -> list[str]:
    model: Any = root
    for part in loc:
        model = _unwrap_optional(model)
        if typing.get_origin(model) is dict:  # a [table.NAME] of sections: the part is the user's name
            model = typing.get_args(model)[1]
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = field.annotation
    model = _unwrap_optional(model)
    return [k for k in getattr(model, "model_fields", {}) if k != "source"]


def _unwrap_optional(annotation: Any) -> Any:
    """``X | None`` -> ``X``; anything else unchanged."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return annotation


def unknown_key(key: str, allowed: list[str]) -> str:
    hint = f" (expected one of: {', '.join(allowed)})" if allowed else ""
    return f"{key}: unknown key{hint}"


def describe_error(err: Any, root: Any) -> str:
    """One pydantic error of ``root`` (the policy model) as a key path and what is expected."""
    loc = tuple(err["loc"])
    if err["type"] == "extra_forbidden":
        parent = loc[:-1]
        allowed = _allowed_keys(root, parent) if parent else [k for k in root.model_fields if k != "source"]
        name = f"[{loc[-1]}]" if not parent else _key_path(loc)
        return unknown_key(name, allowed)
    where = _key_path(loc)
    got = err.get("input")
    shown = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"{where}: {err['msg']}{shown}"
