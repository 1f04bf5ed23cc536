"""The control loop's one joint: a drift decision becomes a retrain request.

This is the only module that knows both :mod:`mlflow_finops.drift` and
:mod:`mlflow_finops.retrain`. A scheduled check that decides ``retrain`` files a
request; open requests are then moved one step forward without waiting for a
Ray job to finish (supervision continues on the next pass, and survives a
scheduler restart because the request's state lives in MLflow). A caller that
needs a retrain's end within one pass (a demo, a benchmark) drives the open
requests itself: :func:`drain`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from .drift.schedule import CheckOutcome, retrain_configured
from .drift.schedule import run_schedule as run_drift_schedule
from .policy import Policy

if TYPE_CHECKING:  # pragma: no cover
    from .drift.results import DriftDecision
    from .retrain.supervisor import RetrainOutcome, RetrainSupervisor
    from .retrain.realized import Verification
    from .retrain.trigger import TriggerVerdict

__all__ = ["LoopOutcome", "hand_over", "trigger", "realize", "drain", "run_schedule"]

log = logging.getLogger(__name__)

DRAIN_TIMEOUT_S = 1800.0  # drain(): how long open requests may take to end


@dataclass
class LoopOutcome:
    """What one pass of the loop did for one model: the drift check, the retrain trigger's verdict
    on its signal (None: no signal to weigh, or no retrain configured), and the steps its open
    retrain requests took after it (:class:`~mlflow_finops.retrain.supervisor.RetrainOutcome`)."""

    check: CheckOutcome
    verdict: "TriggerVerdict | None" = None
    retrains: "list[RetrainOutcome]" = field(default_factory=list)

    @property
    def model(self) -> str:
        return self.check.model

    @property
    def status(self) -> str:
        """The check's status: ``checked``, ``no_new_data``, ``bad_input``, ``error`` ..."""
        return self.check.status

    @property
    def message(self) -> str:
        return self.check.message

    @property
    def decision(self) -> "DriftDecision | None":
        return self.check.decision

    @property
    def retrain(self) -> bool:
        """The gate recommended a retrain (whether the trigger found it worth its cost: :attr:`verdict`)."""
        return self.check.retrain


def hand_over(
    policy: Policy, model: str, out: CheckOutcome, on_retrain: "Callable[[RetrainOutcome], None] | None" = None
) -> LoopOutcome:
    """A retrain decision that is worth its cost becomes a request; every open request of ``model`` takes one step.

    The gate's retrain signal (loss beyond what the policy tolerates, or drift
    while labels lag) is weighed by :func:`mlflow_finops.retrain.trigger.weigh_retrain`;
    its verdict goes on the check's run and in the outcome. Never blocks on a
    Ray job (``wait=False``); a retrain problem is logged and never stops the drift checks.
    """
    from .retrain import RetrainSupervisor

    result = LoopOutcome(out)
    try:
        result.verdict = trigger(policy, model, out)
        for step in RetrainSupervisor(policy).run_pending(model, wait=False):
            result.retrains.append(step)
            if on_retrain:
                on_retrain(step)
    except Exception:  # a retrain problem must not stop the drift checks
        log.exception("retraining %s failed", model)
    return result


def trigger(policy: Policy, model: str, out: CheckOutcome) -> "TriggerVerdict | None":
    """Weigh a retrain signal; file the request when it is worth it. The verdict (None: no signal).

    First, what the champion's retrain realized on this window is recorded (:func:`realize`),
    so that the trigger learns from it. The signal is the gate's (:attr:`DriftDecision.signal`, with its measured
    :attr:`~DriftDecision.loss`), or, on a labelled batch the gate passed, the last retrain
    having bought more than the tolerated loss (:func:`~mlflow_finops.retrain.trigger.still_buying`).
    The verdict, with its numbers, goes on the check's run.
    """
    from .retrain import request_retrain
    from .retrain.trigger import record_verdict, weigh_retrain

    decision = out.decision
    if decision is None:
        return None
    realize(policy, model, out)
    if out.retrain:
        verdict = weigh_retrain(policy, model, signal=decision.signal, loss=decision.loss)
    elif decision.decision == "no_drift" and decision.performance is not None:
        # no loss beyond the tolerated one: a retrain only while the last ones keep buying
        verdict = weigh_retrain(policy, model, signal=decision.signal, loss=decision.loss, asked=False)
    else:
        verdict = None
    if verdict is None:
        return None
    log.info("retrain trigger %s: %s", model, verdict.reason)
    if decision.run_id is not None:
        from mlflow import MlflowClient

        record_verdict(MlflowClient(), decision.run_id, verdict)
    if verdict.retrain:
        request_retrain(policy, model, drift_run_id=decision.run_id, reason=verdict.reason)
    return verdict


def realize(policy: Policy, model: str, out: CheckOutcome) -> "Verification | None":
    """What the retrain that promoted the champion realized on this labelled window (the first after
    its promotion), logged on its run before the trigger learns from it; ``@champion`` rolled back
    to the version it replaced when that one scored better by more than ``[trigger].tolerated_loss``
    (:mod:`mlflow_finops.retrain.realized`). None when nothing was realized here."""
    from mlflow import MlflowClient

    from .retrain.realized import record_realized

    perf = out.decision.performance if out.decision is not None else None
    if perf is None or perf.replaced is None or perf.version is None or perf.retrain_run_id is None:
        return None
    mp = policy.model(model)
    tp = policy.trigger.merged(mp.trigger)
    return record_realized(MlflowClient(), mp.registered_model or model, metric=perf.metric, version=perf.version,
                           score=perf.current, replaced_version=perf.replaced_version or "",
                           replaced=perf.replaced, retrain_run_id=perf.retrain_run_id,
                           tolerated_loss=tp.tolerated_loss)


def drain(
    policy: Policy, model: str | None = None, *, timeout_s: float = DRAIN_TIMEOUT_S,
    supervisor: "RetrainSupervisor | None" = None,
) -> "list[RetrainOutcome]":
    """Drive every open retrain request of ``model`` (None: of every model) to its end; each one's last step.

    A request whose job runs is supervised step by step, as the scheduler does (the cost cap's
    backstop and the time limit included), and one waiting for its retry is retried when due.
    A request that cannot start now (its opportunistic window is closed) stays open: the
    next pass of the loop takes it up. :class:`TimeoutError` when they take more than ``timeout_s``.
    """
    from .retrain import RetrainState, RetrainSupervisor

    sup = supervisor or RetrainSupervisor(policy)
    deadline = time.monotonic() + timeout_s
    moving = (RetrainState.SUBMITTED, RetrainState.RUNNING, RetrainState.RETRY)
    outcomes = []
    for run in sup.pending(model):
        run_id = run.info.run_id
        out = sup.process(run_id, wait=False)
        while out.state in moving:
            if time.monotonic() > deadline:
                raise TimeoutError(f"retrain request {run_id} of {out.model} still {out.state} after "
                                   f"{timeout_s:.0f} s: {out.reason}")
            mp = policy.models.get(out.model)
            poll_s = policy.retrain.merged(mp.retrain if mp else None).poll_s
            wait = poll_s
            if out.state == RetrainState.RETRY and out.retry_at is not None:
                wait = max(poll_s, (out.retry_at - sup.now()).total_seconds())
            sup.sleep(min(wait, max(0.0, deadline - time.monotonic())))
            out = sup.process(run_id, wait=False)
        outcomes.append(out)
    return outcomes


def run_schedule(
    policy: Policy,
    *,
    once: bool = False,
    max_runs: int | None = None,
    models: list[str] | None = None,
    on_outcome: Callable[[CheckOutcome], None] | None = None,
    on_retrain: "Callable[[RetrainOutcome], None] | None" = None,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
    gates: dict[str, Any] | None = None,
) -> list[LoopOutcome]:
    """The policy's drift checks on their cron schedules, each retrain decision handed to retraining.

    One :class:`LoopOutcome` per check, in the order they ran. ``on_outcome`` is told of each
    check as it is recorded, ``on_retrain`` of each retrain step. ``gates``: keep the fitted
    drift gates between ``once`` passes of one process (a dict).
    """
    outcomes: list[LoopOutcome] = []

    def after_check(out: CheckOutcome) -> None:
        if retrain_configured(policy, out.model):
            outcomes.append(hand_over(policy, out.model, out, on_retrain))
        else:
            outcomes.append(LoopOutcome(out))

    run_drift_schedule(
        policy, once=once, max_runs=max_runs, models=models, on_outcome=on_outcome,
        after_check=after_check, clock=clock, sleep=sleep, gates=gates,
    )
    return outcomes
