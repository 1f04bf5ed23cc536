"""``autolog()``: a tracker for every MLflow run this process starts, like ``mlflow.sklearn.autolog()``.

It patches ``mlflow.start_run`` / ``mlflow.end_run`` (MLflow has no run
start/end hook for plugins) so that the first run started afterwards gets a
:class:`~.run_tracker.CostTracker`; nested runs started while it is live get the
cost of their own stretch (tagged ``finops.nested_in``) from the same sampler,
never a second one. Resuming a run (``start_run(run_id=...)``) adds to the cost
it already carries. Every hook is guarded: nothing here may break training.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import mlflow

from .._env import env_flag, env_float
from ..names import ENV_DISABLE, ENV_INTERVAL_S, METRIC_PREFIX
from ..policy import Policy
from ..pricing import CostBreakdown, PriceCatalog
from . import live_runs
from .context import use_policy
from .run_tracker import DEFAULT_INTERVAL_S, CostTracker, given_policy, metrics_setting, resolve_prices

_log = logging.getLogger(__name__)

__all__ = ["autolog", "active_tracker"]


@dataclass
class _AutologConfig:
    interval_s: float | None
    prices: PriceCatalog
    log_timeseries: bool
    policy: Policy | None  # the one given to autolog(): it prices, tags and prices Ray nodes


_config: _AutologConfig | None = None
_originals: dict[str, Callable[..., Any]] = {}  # MLflow's own start_run / end_run while patched


def active_tracker() -> CostTracker | None:
    """The tracker sampling this process now, if any."""
    root = live_runs.root()
    return root if root is not None and root.running else None


def original(name: str) -> Callable[..., Any]:
    """MLflow's own ``start_run`` / ``end_run``, whether autolog patched them or not."""
    return _originals.get(name, getattr(mlflow.tracking.fluent, name))


def autolog(
    interval_s: float | None = None,
    prices: PriceCatalog | Mapping[str, Any] | None = None,
    disable: bool = False,
    *,
    policy: Policy | str | None = None,
    log_timeseries: bool = True,
) -> None:
    """Track the cost of every MLflow run started from now on in this process.

    Like ``mlflow.sklearn.autolog()``: call it once, before ``mlflow.start_run()``.

    Args:
        interval_s: seconds between samples (default ``$MLFLOW_FINOPS_INTERVAL_S`` or 10).
        prices: overrides for the :class:`PriceCatalog` (a catalog or a dict of its fields).
        disable: turn tracking off again (a run being tracked gets its final figures).
        policy: a :class:`Policy` or the path of ``finops.toml`` (default: found as usual);
            its prices, Ray node prices and tags all apply to the runs.
        log_timeseries: also log the cumulative figures at every sample while the run is live.

    Raises:
        PolicyError / ValueError: the policy, an ``MLFLOW_FINOPS_*`` variable or ``prices``
        holds a bad value (raised here, before training starts, naming the key).
    """
    global _config
    if disable or env_flag(ENV_DISABLE, False):
        with live_runs.state_lock:
            _config = None
            use_policy(None)
            live_runs.stop_root()
            _unpatch()
        return
    if interval_s is not None and interval_s <= 0:
        raise ValueError(f"interval_s={interval_s!r}: must be greater than 0")
    pol = given_policy(policy)
    catalog = resolve_prices(prices, pol)
    metrics_setting()  # a bad MLFLOW_FINOPS_METRICS is refused here, not in the run-start hook
    if interval_s is None:
        interval_s = env_float(ENV_INTERVAL_S, DEFAULT_INTERVAL_S)
    with live_runs.state_lock:
        _config = _AutologConfig(interval_s, catalog, log_timeseries, pol)
        use_policy(pol)  # the run-context plugin tags new runs from it too
        _patch()


def _patch() -> None:
    import mlflow.tracking.fluent as fluent

    if _originals:
        return
    _originals["start_run"] = fluent.start_run
    _originals["end_run"] = fluent.end_run

    @functools.wraps(_originals["start_run"])
    def start_run(*args: Any, **kwargs: Any) -> Any:
        active = _originals["start_run"](*args, **kwargs)
        live_runs.guard(_on_run_started, active)
        return active

    @functools.wraps(_originals["end_run"])
    def end_run(*args: Any, **kwargs: Any) -> Any:
        live_runs.guard(_on_run_ending, kwargs.get("status", args[0] if args else "FINISHED"))
        return _originals["end_run"](*args, **kwargs)

    for module in (fluent, mlflow):
        module.start_run = start_run
        module.end_run = end_run


def _unpatch() -> None:
    import mlflow.tracking.fluent as fluent

    if not _originals:
        return
    for module in (fluent, mlflow):
        module.start_run = _originals["start_run"]
        module.end_run = _originals["end_run"]
    _originals.clear()


def _on_run_started(active: Any) -> None:
    with live_runs.state_lock:
        if _config is None:
            return
        run_id = active.info.run_id
        live = active_tracker()
        if live is not None:
            if live.run_id != run_id and run_id not in live._segments:
                live.open_segment(run_id)
            return
        prior = {k: v for k, v in active.data.metrics.items() if k.startswith(METRIC_PREFIX)}
        offset = CostBreakdown.from_metrics(prior, _config.prices.allocation_mode) if prior else None
        if offset is not None:
            _log.info("mlflow-finops: resuming run %s, adding to its $%.6f", run_id, offset.cost_usd)
        live_runs.set_root(CostTracker(
            run_id,
            interval_s=_config.interval_s,
            prices=_config.prices,
            log_timeseries=_config.log_timeseries,
            offset=offset,
            run_start_ms=active.info.start_time,
            policy=_config.policy,
        ).start())


def _on_run_ending(status: str) -> None:
    active = mlflow.active_run()
    live = active_tracker()
    if active is None or live is None:
        return
    run_id = active.info.run_id
    if run_id in live._segments:
        live.close_segment(run_id)
    elif run_id == live.run_id:
        live_runs.stop_root(status)
