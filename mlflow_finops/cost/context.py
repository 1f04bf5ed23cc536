"""Attribution tags on every new MLflow run, through MLflow's run-context-provider plugin.

Registered as the ``mlflow.run_context_provider`` entry point ``finops``, so
``finops.team`` / ``finops.cost_center`` / ``finops.workload`` (from the
policy's ``[tags]`` or ``MLFLOW_FINOPS_*`` variables) and the machine's
description land on every run, also without ``autolog()``. MLflow calls the
provider when it creates a run, before the run has an id.
"""

from __future__ import annotations

import logging

from mlflow.tracking.context.abstract_context import RunContextProvider

from .._env import env_flag
from ..names import ENV_DISABLE
from ..policy import PolicyError, TagPolicy, find_policy_path, load_policy
from .process import machine_info

_log = logging.getLogger(__name__)

__all__ = ["FinOpsRunContextProvider", "run_tags"]

_cache: dict[tuple[str, float], TagPolicy] = {}
_warned: set[str] = set()


def _tag_policy() -> TagPolicy:
    """The policy file's ``[tags]``, cached by path and modification time; none if it is bad."""
    path = find_policy_path()
    if path is None:
        return TagPolicy()
    try:
        key = (str(path), path.stat().st_mtime)
    except OSError:
        key = (str(path), -1.0)
    if key not in _cache:
        try:
            _cache[key] = load_policy(path).tags
        except PolicyError as exc:
            if str(exc) not in _warned:
                _warned.add(str(exc))
                _log.warning("mlflow-finops: policy not used for run tags: %s", exc)
            _cache[key] = TagPolicy()
    return _cache[key]


def run_tags() -> dict[str, str]:
    """Everything the provider adds: the machine's description and the attribution tags
    (policy ``[tags]``, overridden by ``MLFLOW_FINOPS_*`` read now)."""
    tags = dict(machine_info().tags())
    tags.update(_tag_policy().resolve())
    return tags


class FinOpsRunContextProvider(RunContextProvider):
    """MLflow plugin: adds ``finops.*`` attribution and machine tags to new runs."""

    def in_context(self) -> bool:
        return not env_flag(ENV_DISABLE, False)

    def tags(self) -> dict[str, str]:
        try:
            return run_tags()
        except Exception as exc:  # a tag provider must never stop a run from starting
            _log.warning("mlflow-finops: could not resolve run tags: %s", exc)
            return {}
