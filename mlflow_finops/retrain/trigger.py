"""Whether a retrain is worth its cost: the champion's loss, what past retrains bought, what they cost.

The drift gate says there is a reason to retrain (the champion lost more than
the policy tolerates since its promotion, or, while labels lag, the data
drifted), or :func:`still_buying` finds one the gate cannot see: the last
retrain bought more than the tolerated loss, so the data is still moving and
the next window's rows may buy more (after a drift, the first retrain has seen
only a little of the new data). :func:`weigh` (pure) then asks whether the
retrain pays:

- expected gain: what this model's last ``history`` retrains *realized* (the promoted
  champion's score minus the version it replaced, both on the first labelled window after the
  promotion, rows neither learned: ``eval/realized_gain``, :mod:`.realized`; 0 when not promoted
  or capped: the champion did not change), averaged with the loss measured now (what a retrain
  could win back). A promoted retrain whose next window has no labels yet counts with what it
  bought on its held-out rows (the challenger's gain over the champion there), the only figure
  there is; the verdict says how many did. A retrain that realized a loss counts negative. With
  neither labels nor history, there is nothing to weigh: drift decides;
- expected cost: the mean ``finops/cost_usd`` of those retrains (or the
  policy's ``expected_cost_usd`` before the first one);
- retrain iff expected gain x the value of a point >= expected cost (a point is 0.01 of
  the metric; its value: what a point earns on the predictions served until the next check,
  ``value_per_1000_predictions_usd`` x ``predictions_per_day`` / 1000 x ``horizon_days``, or
  ``value_per_point_usd`` when set: :meth:`~mlflow_finops.policy.TriggerPolicy.point_value_usd`).

:func:`weigh` is pure; :func:`past_retrains`, :func:`weigh_retrain` and
:func:`record_verdict` are its reads and writes in MLflow.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from ..money import format_usd
from ..names import (
    METRIC_COST_USD,
    METRIC_REALIZED_GAIN,
    METRIC_TRIGGER_COST,
    METRIC_TRIGGER_GAIN,
    METRIC_TRIGGER_LOSS,
    METRIC_TRIGGER_VALUE,
    TAG_RETRAIN_STATE,
    TAG_TRIGGER,
    TAG_TRIGGER_REASON,
    eval_challenger,
    eval_champion,
)
from ..scoring import gain
from .state import RetrainState

if TYPE_CHECKING:  # pragma: no cover
    from mlflow import MlflowClient

    from ..policy import Policy, TriggerPolicy

__all__ = ["PastRetrain", "TriggerVerdict", "weigh", "still_buying", "past_retrains", "weigh_retrain",
           "record_verdict"]

_ENDED = {RetrainState.PROMOTED.value, RetrainState.NOT_PROMOTED.value, RetrainState.CAPPED.value}


@dataclass(frozen=True)
class PastRetrain:
    """One ended retrain: what it bought (metric units) and what it cost.

    ``realized``: ``bought`` was measured on the next labelled window (signed: a retrain can realize
    a loss), or the champion did not change (0); False: only its in-window gain on held-out rows is
    known yet (>= 0), the fallback until its next window is labelled.
    """

    bought: float
    cost_usd: float
    realized: bool = True


@dataclass(frozen=True)
class TriggerVerdict:
    """Retrain or skip, with the numbers that decided it and the sentence a person reads."""

    retrain: bool
    reason: str
    loss: float | None  # the champion's measured loss (metric units, positive = worse); None: no labels
    expected_gain: float | None
    expected_cost_usd: float | None
    expected_value_usd: float | None
    history: int  # past retrains the expectations learned from

    @property
    def decision(self) -> str:
        return "retrain" if self.retrain else "skip"


def weigh(
    policy: "TriggerPolicy",
    *,
    signal: str,
    loss: float | None,
    history: Sequence[PastRetrain],
    prior_cost_usd: float | None = None,
) -> TriggerVerdict:
    """Retrain when the expected gain is worth at least the expected cost; ``signal`` starts the reason."""
    past = list(history)[: policy.history]
    bought = [p.bought for p in past]
    expected: float | None
    if loss is not None:
        expected = (sum(bought) + max(loss, 0.0)) / (len(bought) + 1)
    else:
        expected = sum(bought) / len(bought) if bought else None
    cost = sum(p.cost_usd for p in past) / len(past) if past else prior_cost_usd
    in_window = sum(1 for p in past if not p.realized)
    learned = f"last {len(past)} retrain{'s' if len(past) != 1 else ''}" if past else "no retrain yet"
    if in_window:
        learned += f", {in_window} not realized yet: in-window gain"

    def verdict(retrain: bool, why: str, value: float | None = None) -> TriggerVerdict:
        return TriggerVerdict(retrain, f"{signal}; {why}: {'retrain' if retrain else 'skip'}",
                              loss, expected, cost, value, len(past))

    if expected is None:
        return verdict(True, "no labels and no retrain history to weigh: drift decides")
    if expected <= 0:
        return verdict(False, f"expected gain {_pt(expected)} ({learned} bought nothing)")
    value = expected * 100 * policy.point_value_usd()
    worth = f"expected gain {_pt(expected)} worth {format_usd(value)}"
    if cost is None:
        return verdict(True, f"{worth}; cost not known before the first retrain", value)
    relation = ">=" if value >= cost else "<"
    return verdict(value >= cost, f"{worth} {relation} expected cost {format_usd(cost)} ({learned})", value)


def still_buying(policy: "TriggerPolicy", history: Sequence[PastRetrain], loss: float | None) -> str | None:
    """Why to weigh a retrain the gate did not ask for (None: no reason): labels were scored and the
    newest retrain (``history[0]``) bought more than ``tolerated_loss`` (realized on the next window,
    or in-window while that is not labelled). The streak ends with the first retrain that buys less
    (or is not promoted: it bought nothing)."""
    if not policy.follow_gains or loss is None or not history:
        return None
    last = history[0].bought
    if last <= policy.tolerated_loss:
        return None
    return (f"the last retrain bought {_pt(last)}, more than the tolerated {_pt(policy.tolerated_loss)}: "
            "the data may still be moving")


def _pt(value: float) -> str:
    return f"{value * 100:.1f} pt"


def past_retrains(client: "MlflowClient", experiment_id: str, metric: str, limit: int) -> list[PastRetrain]:
    """The newest ``limit`` ended retrains of the experiment (promoted, not promoted, capped), newest first."""
    out: list[PastRetrain] = []
    runs = client.search_runs([experiment_id], max_results=min(4 * limit + 20, 1000),
                              order_by=["attributes.start_time DESC"])
    for run in runs:
        state = run.data.tags.get(TAG_RETRAIN_STATE)
        if state not in _ENDED:
            continue
        m = run.data.metrics
        bought, realized = 0.0, True  # not promoted, capped: the champion did not change
        if state == RetrainState.PROMOTED.value:
            if METRIC_REALIZED_GAIN in m:
                bought = float(m[METRIC_REALIZED_GAIN])
            else:  # its next window is not labelled yet: what it bought on its held-out rows
                realized = False
                challenger, champion = m.get(eval_challenger(metric)), m.get(eval_champion(metric))
                if challenger is not None and champion is not None:
                    bought = max(gain(metric, challenger, champion), 0.0)
        out.append(PastRetrain(bought, float(m.get(METRIC_COST_USD, 0.0)), realized))
        if len(out) >= limit:
            break
    return out


def weigh_retrain(
    policy: "Policy", model: str, *, signal: str, loss: float | None, client: "MlflowClient | None" = None,
    asked: bool = True,
) -> TriggerVerdict | None:
    """:func:`weigh` with this model's policy and its retrain history read from MLflow.

    ``asked=False``: the gate gave no reason; weigh only what :func:`still_buying` finds
    (None when it finds nothing).
    """
    from mlflow import MlflowClient

    from .requests import retrain_experiment_name

    mp = policy.model(model)
    tp, rp = policy.trigger.merged(mp.trigger), policy.retrain.merged(mp.retrain)
    if not asked and (not tp.follow_gains or loss is None):
        return None  # nothing to read
    client = client or MlflowClient()
    exp = client.get_experiment_by_name(retrain_experiment_name(model))
    history = past_retrains(client, exp.experiment_id, rp.metric, tp.history) if exp is not None else []
    if not asked:
        why = still_buying(tp, history, loss)
        if why is None:
            return None
        signal = f"{signal}; {why}"
    return weigh(tp, signal=signal, loss=loss, history=history, prior_cost_usd=rp.expected_cost_usd)


def record_verdict(client: "MlflowClient", run_id: str, verdict: TriggerVerdict) -> None:
    """The verdict and its numbers on the drift check's run, where a person reads the decision."""
    from mlflow.entities import Metric, RunTag

    now = int(time.time() * 1000)
    numbers = {
        METRIC_TRIGGER_LOSS: verdict.loss,
        METRIC_TRIGGER_GAIN: verdict.expected_gain,
        METRIC_TRIGGER_COST: verdict.expected_cost_usd,
        METRIC_TRIGGER_VALUE: verdict.expected_value_usd,
    }
    client.log_batch(
        run_id,
        metrics=[Metric(k, float(v), now, 0) for k, v in numbers.items() if v is not None],
        tags=[RunTag(TAG_TRIGGER, verdict.decision), RunTag(TAG_TRIGGER_REASON, verdict.reason[:5000])],
    )
