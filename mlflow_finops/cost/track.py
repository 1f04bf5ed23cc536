"""``track_cost()``: the cost of a block of code, into the active run, a given run or a new one."""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator, Mapping

import mlflow

from ..names import METRIC_PREFIX
from ..policy import Policy
from ..pricing import CostBreakdown, PriceCatalog
from . import live_runs
from .autologging import active_tracker, original
from .context import policy_in_use
from .run_tracker import CostTracker, given_policy, resolve_prices

_log = logging.getLogger(__name__)

__all__ = ["track_cost"]


@contextlib.contextmanager
def track_cost(
    run_id: str | None = None,
    *,
    interval_s: float | None = None,
    prices: PriceCatalog | Mapping[str, Any] | None = None,
    policy: Policy | str | None = None,
    log_timeseries: bool = True,
    pid: int | None = None,
) -> Iterator[CostTracker]:
    """Track the cost of the code inside the block into an MLflow run.

    The run is ``run_id``, else the active run, else a new run started (and
    ended) here. If ``autolog()`` already tracks that run, its tracker is
    reused: there is never a second sampler for the same process. ``pid``:
    the process whose tree is tracked (default: this one).
    """
    live = active_tracker() if pid is None else None  # another process's tree: its own tracker
    if live is not None:
        target = run_id or (mlflow.active_run().info.run_id if mlflow.active_run() else None)
        if target is None or target == live.run_id or target in live._segments:
            yield live
            return
    pol = given_policy(policy)
    catalog = resolve_prices(prices, pol)
    started_here = False
    if run_id is None:
        active = mlflow.active_run()
        if active is None:
            start = original("start_run")
            with policy_in_use(pol):  # the run-context plugin tags the run from it
                active = start()
            started_here = True
        run_id = active.info.run_id
        run_start_ms = active.info.start_time
        prior = active.data.metrics
    else:
        try:
            run = mlflow.tracking.MlflowClient().get_run(run_id)
            run_start_ms, prior = run.info.start_time, run.data.metrics
        except Exception as exc:  # unreachable server: track anyway, deliver later
            _log.warning("mlflow-finops: cannot read run %s (%s); tracking it anyway", run_id, exc)
            run_start_ms, prior = None, {}
    prior = {k: v for k, v in prior.items() if k.startswith(METRIC_PREFIX)}
    tracker = CostTracker(
        run_id,
        interval_s=interval_s,
        prices=catalog,
        log_timeseries=log_timeseries,
        offset=CostBreakdown.from_metrics(prior, catalog.allocation_mode) if prior else None,
        run_start_ms=run_start_ms,
        pid=pid,
        policy=pol,
    ).start()
    owns_root = live_runs.set_root(tracker, only_if_free=True)
    status = "FINISHED"
    try:
        yield tracker
    except BaseException:
        status = "FAILED"
        raise
    finally:
        if owns_root:
            live_runs.release_root(tracker)
        live_runs.guard(tracker.stop, status if started_here else None)  # a run given by id is ended by its owner
        if started_here:
            original("end_run")(status)
