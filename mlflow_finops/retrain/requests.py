"""Retrain requests: an MLflow run per request, so a pending retrain survives a restart.

A request lives in ``finops-retrains/<model>`` with status ``SCHEDULED`` and
its facts as tags (state, priority, attempts, requested_at, deadline; see
:class:`~mlflow_finops.retrain.state.RetrainRequest`). The same run becomes the
retrain's own tracked run inside the Ray job: its cost lands where the budget
reads it.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

from mlflow.tracking import MlflowClient

from ..names import (
    TAG_ATTEMPTS,
    TAG_DEADLINE,
    TAG_DRIFT_RUN_ID,
    TAG_MODEL,
    TAG_PRIORITY,
    TAG_REASON,
    TAG_REQUESTED_AT,
    TAG_RETRAIN_RUN_ID,
    TAG_RETRAIN_STATE,
    TAG_WORKLOAD,
    WORKLOAD_RETRAIN,
    retrains_experiment,
)
from ..policy import ModelPolicy, Policy, PolicyError
from ..spend.budget import envelopes_for
from ..store import get_or_create_experiment
from .state import PRIORITY_ORDER, RetrainState

_log = logging.getLogger(__name__)

__all__ = ["request_retrain", "retrain_experiment_name", "model_policy", "priority_of"]


def retrain_experiment_name(model: str) -> str:
    """Where ``model``'s retrain requests live (``finops-retrains/<model>``)."""
    return retrains_experiment(model)


def model_policy(policy: Policy, model: str) -> ModelPolicy:
    """``[models.<model>]``, or a :class:`PolicyError` listing the models the policy has."""
    if model not in policy.models:
        known = ", ".join(sorted(policy.models)) or "none"
        raise PolicyError(policy.source or "policy", [f"[models.{model}]: unknown model (models in the policy: {known})"])
    return policy.models[model]


def priority_of(policy: Policy, model: str) -> str:
    """The most urgent priority among the envelopes covering ``model`` (``standard`` when none does)."""
    names = envelopes_for(policy, model=model)
    if not names:
        return "standard"
    return min((policy.budgets[n].priority for n in names), key=PRIORITY_ORDER.__getitem__)


def request_retrain(
    policy: Policy,
    model: str,
    *,
    drift_run_id: str | None = None,
    reason: str = "requested",
    client: MlflowClient | None = None,
    now: datetime | None = None,
) -> str:
    """Record a pending retrain for ``model`` (idempotent per drift check); returns its run id."""
    mp = model_policy(policy, model)
    rp = policy.retrain.merged(mp.retrain)
    client = client or MlflowClient()
    now = now or datetime.now(timezone.utc)
    exp_id = get_or_create_experiment(client, retrain_experiment_name(model))
    if drift_run_id:
        existing = client.search_runs([exp_id], f"tags.`{TAG_DRIFT_RUN_ID}` = '{drift_run_id}'", max_results=1)
        if existing:
            return existing[0].info.run_id
    priority = priority_of(policy, model)
    tags = {
        TAG_RETRAIN_STATE: RetrainState.PENDING.value,
        TAG_PRIORITY: priority,
        TAG_ATTEMPTS: "0",
        TAG_REQUESTED_AT: now.isoformat(),
        TAG_DEADLINE: (now + timedelta(hours=rp.deadline_hours)).isoformat(),
        TAG_REASON: reason,
        "mlflow.runName": f"retrain-{model}-{now:%Y%m%d-%H%M%S}",
        **policy.tags.resolve(),
        # after the policy's tags (as a drift check's own workload wins over them): this run
        # is a retrain of this model
        TAG_WORKLOAD: WORKLOAD_RETRAIN,
        TAG_MODEL: model,
    }
    if drift_run_id:
        tags[TAG_DRIFT_RUN_ID] = drift_run_id
    run = client.create_run(exp_id, start_time=int(now.timestamp() * 1000), tags=tags)
    client.update_run(run.info.run_id, status="SCHEDULED")
    if drift_run_id:
        try:
            client.set_tag(drift_run_id, TAG_RETRAIN_RUN_ID, run.info.run_id)
        except Exception as exc:  # lineage is best effort; the retrain still happens
            _log.warning("could not tag drift run %s with its retrain: %s", drift_run_id, exc)
    _log.info("retrain of %s requested (%s), run %s, priority %s", model, reason, run.info.run_id, priority)
    return run.info.run_id
