"""The policy file, ``finops.toml``: data only, read with ``tomllib``, validated with pydantic.

Each section is a pydantic model that forbids unknown keys, so a typo is an
error that names the key and lists what was expected, never a silent default.
Later capabilities add their sections to :class:`Policy`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .pricing import PriceCatalog

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["Policy", "TagPolicy", "PolicyError", "load_policy", "find_policy_path", "POLICY_ENV"]

POLICY_ENV = "MLFLOW_FINOPS_POLICY"
DEFAULT_POLICY_FILE = "finops.toml"


class PolicyError(ValueError):
    """A policy file that cannot be used; ``problems`` lists each bad key with what is expected."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + ("; ".join(problems) if len(problems) == 1 else
                                          "\n  - " + "\n  - ".join(problems)))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TagPolicy(_Section):
    """Attribution tags put on every new MLflow run (``finops.team`` and so on)."""

    team: str | None = None
    cost_center: str | None = None
    workload: str | None = None
    extra: dict[str, str] = Field(
        default_factory=dict, description="More tags, logged as finops.<key>."
    )

    def resolve(self, env: os._Environ[str] | dict[str, str] | None = None) -> dict[str, str]:
        """Tags from the file, overridden by ``MLFLOW_FINOPS_TEAM`` / ``_COST_CENTER`` / ``_WORKLOAD``."""
        env = os.environ if env is None else env
        tags = {f"finops.{k}": v for k, v in self.extra.items()}
        for key in ("team", "cost_center", "workload"):
            value = env.get(f"MLFLOW_FINOPS_{key.upper()}") or getattr(self, key)
            if value:
                tags[f"finops.{key}"] = str(value)
        return tags


class Policy(_Section):
    """The whole policy file. Every section is optional."""

    prices: PriceCatalog = Field(default_factory=PriceCatalog)
    tags: TagPolicy = Field(default_factory=TagPolicy)

    source: str | None = Field(None, exclude=True, description="Where this policy was read from.")

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "policy") -> "Policy":
        """Validate a parsed policy; raises :class:`PolicyError` naming each bad key."""
        if "source" in data:
            raise PolicyError(source, [_unknown("source", [])])
        try:
            return cls.model_validate({**data, "source": source})
        except ValidationError as exc:
            raise PolicyError(source, [_describe(err) for err in exc.errors()]) from None


def find_policy_path(path: str | os.PathLike[str] | None = None) -> Path | None:
    """The explicit path, else ``$MLFLOW_FINOPS_POLICY``, else ``./finops.toml`` if present."""
    if path is not None:
        return Path(path)
    env = os.environ.get(POLICY_ENV)
    if env:
        return Path(env)
    local = Path.cwd() / DEFAULT_POLICY_FILE
    return local if local.is_file() else None


def load_policy(path: str | os.PathLike[str] | None = None) -> Policy:
    """Read and validate the policy file; an absent default file gives the default policy."""
    resolved = find_policy_path(path)
    if resolved is None:
        return Policy()
    source = str(resolved)
    try:
        raw = resolved.read_bytes()
    except FileNotFoundError:
        raise PolicyError(source, ["file not found"]) from None
    except OSError as exc:
        raise PolicyError(source, [f"cannot read file: {exc.strerror or exc}"]) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise PolicyError(source, [f"not UTF-8 text: {exc}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(source, [f"not valid TOML: {exc}"]) from None
    return Policy.from_dict(data, source=source)


# ------------------------------------------------------------------ errors
def _key_path(loc: tuple[Any, ...]) -> str:
    """('prices', 'cpu_core_hour_usd') -> '[prices].cpu_core_hour_usd'."""
    if not loc:
        return "(top level)"
    head, *rest = [str(p) for p in loc]
    return f"[{head}]" + "".join(f".{p}" for p in rest)


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    model: Any = Policy
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = field.annotation
    return [k for k in getattr(model, "model_fields", {}) if k != "source"]


def _unknown(key: str, allowed: list[str]) -> str:
    hint = f" (expected one of: {', '.join(allowed)})" if allowed else ""
    return f"{key}: unknown key{hint}"


def _describe(err: Any) -> str:
    loc = tuple(err["loc"])
    if err["type"] == "extra_forbidden":
        parent = loc[:-1]
        allowed = _allowed_keys(parent) if parent else [k for k in Policy.model_fields if k != "source"]
        name = f"[{loc[-1]}]" if not parent else _key_path(loc)
        return _unknown(name, allowed)
    where = _key_path(loc)
    got = err.get("input")
    shown = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"{where}: {err['msg']}{shown}"
