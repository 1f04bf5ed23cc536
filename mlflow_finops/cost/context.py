"""Attribution tags on every new MLflow run, through MLflow's run-context-provider plugin.

Registered as the ``mlflow.run_context_provider`` entry point ``finops``, so
``finops.team`` / ``finops.cost_center`` / ``finops.workload`` (from the
policy's ``[tags]`` or ``MLFLOW_FINOPS_*`` variables) and the machine's
description land on every run, also without ``autolog()``. MLflow calls the
provider when it creates a run, before the run has an id.

The ``[tags]`` come from the policy this process tracks with (``autolog(policy=...)``,
or ``track_cost(policy=...)`` while it starts its run), else from the policy file
found as usual (``$MLFLOW_FINOPS_POLICY``, ``./finops.toml``).
"""

from __future__ import annotations

import contextlib
import logging
from contextvars import ContextVar
from typing import Iterator

from mlflow.tracking.context.abstract_context import RunContextProvider

from .._env import env_flag
from ..names import ENV_DISABLE
from ..policy import Policy, PolicyError, TagPolicy, find_policy_path, load_policy
from .process import machine_info

_log = logging.getLogger(__name__)

__all__ = ["FinOpsRunContextProvider", "run_tags", "use_policy", "policy_in_use"]

_cache: dict[tuple[str, float], TagPolicy] = {}
_warned: set[str] = set()
_process_policy: Policy | None = None  # autolog(policy=...): every run of this process
_block_policy: ContextVar[Policy | None] = ContextVar("finops_block_policy", default=None)


def use_policy(policy: Policy | None) -> None:
    """Tag every run this process starts from now on from ``policy`` (None: the file found as usual)."""
    global _process_policy
    _process_policy = policy


@contextlib.contextmanager
def policy_in_use(policy: Policy | None) -> Iterator[None]:
    """Tag the runs started inside the block (in this thread or task) from ``policy``."""
    token = _block_policy.set(policy)
    try:
        yield
    finally:
        _block_policy.reset(token)


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


def run_tags(policy: Policy | None = None) -> dict[str, str]:
    """Everything the provider adds: the machine's description and the attribution tags
    (``[tags]`` of ``policy``, else of the policy in use, overridden by ``MLFLOW_FINOPS_*`` read now)."""
    policy = policy or _block_policy.get() or _process_policy
    tags = dict(machine_info().tags())
    tags.update((policy.tags if policy is not None else _tag_policy()).resolve())
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
