"""The control loop's one joint: a drift decision becomes a retrain request.

This is the only module that knows both :mod:`mlflow_finops.drift` and
:mod:`mlflow_finops.retrain`. A scheduled check that decides ``retrain`` files a
request; open requests are then moved one step forward without waiting for a
Ray job to finish (supervision continues on the next pass, and survives a
scheduler restart because the request's state lives in MLflow). A caller that
needs a retrain's end within one pass (a demo, a benchmark) drives the open
requests itself: ``RetrainSupervisor(policy).run_pending(model, wait=True)``.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

from .drift.results import DriftDecision
from .drift.schedule import CheckOutcome, retrain_configured
from .drift.schedule import run_schedule as run_drift_schedule
from .policy import Policy
from .scoring import gain

__all__ = ["hand_over", "trigger", "run_schedule"]

log = logging.getLogger(__name__)


def hand_over(
    policy: Policy, model: str, out: CheckOutcome, on_retrain: Callable[[Any], None] | None = None
) -> None:
    """A retrain decision that is worth its cost becomes a request; every open request of ``model`` takes one step.

    The gate's retrain signal (loss beyond what the policy tolerates, or drift
    while labels lag) is weighed by :func:`mlflow_finops.retrain.trigger.weigh_retrain`;
    its verdict goes on the check's run and on ``out.trigger``. Never blocks on a
    Ray job (``wait=False``); a retrain problem is logged and never stops the drift checks.
    """
    from .retrain import RetrainSupervisor

    try:
        trigger(policy, model, out)
        for result in RetrainSupervisor(policy).run_pending(model, wait=False):
            if on_retrain:
                on_retrain(result)
    except Exception:  # a retrain problem must not stop the drift checks
        log.exception("retraining %s failed", model)


def trigger(policy: Policy, model: str, out: CheckOutcome) -> Any:
    """Weigh a retrain signal; file the request when it is worth it. The verdict (None: no signal).

    The signal is the gate's, or, on a labelled window the gate passed, the last retrain having
    bought more than the tolerated loss (:func:`~mlflow_finops.retrain.trigger.still_buying`).

    The verdict goes on ``out.trigger`` and, with its numbers, on the check's run.
    """
    from .retrain import request_retrain
    from .retrain.trigger import record_verdict, weigh_retrain

    decision = out.decision
    if decision is None:
        return None
    if out.retrain:
        verdict = weigh_retrain(policy, model, signal=signal_text(decision), loss=loss_of(decision))
    elif decision.decision == "no_drift" and decision.performance is not None:
        # no loss beyond the tolerated one: a retrain only while the last ones keep buying
        verdict = weigh_retrain(policy, model, signal=signal_text(decision), loss=loss_of(decision), asked=False)
    else:
        verdict = None
    if verdict is None:
        return None
    out.trigger = verdict
    log.info("retrain trigger %s: %s", model, verdict.reason)
    if decision.run_id is not None:
        from mlflow import MlflowClient

        record_verdict(MlflowClient(), decision.run_id, verdict)
    if verdict.retrain:
        request_retrain(policy, model, drift_run_id=decision.run_id, reason=verdict.reason)
    return verdict


def signal_text(decision: DriftDecision) -> str:
    """The gate's reason without its verdict: what the trigger's sentence starts with."""
    return decision.reason.removesuffix(": retrain recommended").removesuffix(": no retrain")


def loss_of(decision: DriftDecision) -> float | None:
    """The champion's measured loss (metric units, positive = worse); None when no labels were scored."""
    perf = decision.performance
    return None if perf is None else gain(perf.metric, perf.reference, perf.current)


def run_schedule(
    policy: Policy,
    *,
    once: bool = False,
    max_runs: int | None = None,
    models: list[str] | None = None,
    on_outcome: Callable[[CheckOutcome], None] | None = None,
    on_retrain: Callable[[Any], None] | None = None,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
    gates: dict[str, Any] | None = None,
) -> list[CheckOutcome]:
    """The policy's drift checks on their cron schedules, each retrain decision handed to retraining.

    ``gates``: keep the fitted drift gates between ``once`` passes of one process (a dict).
    """

    def after_check(out: CheckOutcome) -> None:
        if retrain_configured(policy, out.model):
            hand_over(policy, out.model, out, on_retrain)

    return run_drift_schedule(
        policy, once=once, max_runs=max_runs, models=models, on_outcome=on_outcome,
        after_check=after_check, clock=clock, sleep=sleep, gates=gates,
    )
