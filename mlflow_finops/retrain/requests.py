"""Retrain requests: an MLflow run per request, so a pending retrain survives a restart.

A request lives in ``finops-retrains/<model>`` with status ``SCHEDULED`` and
its facts as tags (state, priority, attempts, requested_at, deadline; see
:class:`~mlflow_finops.retrain.state.RetrainRequest`). The same run becomes the
retrain's own tracked run inside the Ray job: its cost lands where the budget
reads it.

One request per decision: the check for an existing request and the creation
of a new one happen under the model's request claim (:mod:`.claims`), so two
concurrent callers get the same run id. A drift check's request is found by its
drift run id; a manual request (no drift run) is any open request of the model.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta, timezone

from mlflow.entities import Run
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
from ..policy import Policy
from ..spend.budget import envelopes_for
from ..store import get_or_create_experiment
from .. import claims
from .state import PRIORITY_ORDER, RetrainState

_log = logging.getLogger(__name__)

__all__ = ["request_retrain", "retrain_experiment_name", "priority_of", "open_requests"]

REQUEST_LEASE_S = 60.0  # the claim is held for a few MLflow calls; a dead holder's claim frees after this


def retrain_experiment_name(model: str) -> str:
    """Where ``model``'s retrain requests live (``finops-retrains/<model>``)."""
    return retrains_experiment(model)


def priority_of(policy: Policy, model: str) -> str:
    """The most urgent priority among the envelopes covering ``model`` (``standard`` when none does)."""
    names = envelopes_for(policy, model=model)
    if not names:
        return "standard"
    return min((policy.budgets[n].priority for n in names), key=PRIORITY_ORDER.__getitem__)


def open_requests(client: MlflowClient, experiment_id: str) -> list[Run]:
    """Requests not finished yet (status SCHEDULED or RUNNING, state not terminal), oldest first."""
    runs = [
        r
        for status in ("SCHEDULED", "RUNNING")
        for r in client.search_runs([experiment_id], f"attributes.status = '{status}'", max_results=1000)
    ]
    runs.sort(key=lambda r: r.info.start_time)
    return [r for r in runs if not RetrainState(r.data.tags.get(TAG_RETRAIN_STATE, "pending")).terminal]


def request_retrain(
    policy: Policy,
    model: str,
    *,
    drift_run_id: str | None = None,
    reason: str = "requested",
    client: MlflowClient | None = None,
    now: datetime | None = None,
) -> str:
    """Record a pending retrain for ``model``; returns its run id.

    Idempotent: one request per drift check (``drift_run_id``), and a manual
    request while another request of the model is open returns that one.
    """
    mp = policy.model(model)
    rp = policy.retrain.merged(mp.retrain)
    client = client or MlflowClient()
    now = now or datetime.now(timezone.utc)
    exp_id = get_or_create_experiment(client, retrain_experiment_name(model))
    key = f"retrain-request-{model}"
    _claim_or_wait(client, key)
    try:
        existing = _existing_request(client, exp_id, drift_run_id)
        if existing is not None:
            _log.info("retrain of %s already requested: run %s", model, existing)
            return existing
        run_id = _create_request(policy, model, client, exp_id, now, rp.deadline_hours, drift_run_id, reason)
    finally:
        claims.release(client, key)
    if drift_run_id:
        try:
            client.set_tag(drift_run_id, TAG_RETRAIN_RUN_ID, run_id)
        except Exception as exc:  # lineage is best effort; the retrain still happens
            _log.warning("could not tag drift run %s with its retrain: %s", drift_run_id, exc)
    return run_id


def _claim_or_wait(client: MlflowClient, key: str) -> None:
    """Take the model's request claim, waiting while another caller holds it (at most its lease)."""
    deadline = time.monotonic() + REQUEST_LEASE_S + 10
    while not claims.claim(client, key, REQUEST_LEASE_S):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the claim {claims.claim_name(key)} stayed held past its lease")
        time.sleep(0.2)


def _existing_request(client: MlflowClient, exp_id: str, drift_run_id: str | None) -> str | None:
    """The request this call would duplicate: the drift check's own, else (manual) the oldest open one."""
    if drift_run_id:
        found = client.search_runs([exp_id], f"tags.`{TAG_DRIFT_RUN_ID}` = '{drift_run_id}'", max_results=1)
        return found[0].info.run_id if found else None
    open_ = open_requests(client, exp_id)
    return open_[0].info.run_id if open_ else None


def _create_request(policy: Policy, model: str, client: MlflowClient, exp_id: str, now: datetime,
                    deadline_hours: float, drift_run_id: str | None, reason: str) -> str:
    priority = priority_of(policy, model)
    tags = {
        TAG_RETRAIN_STATE: RetrainState.PENDING.value,
        TAG_PRIORITY: priority,
        TAG_ATTEMPTS: "0",
        TAG_REQUESTED_AT: now.isoformat(),
        TAG_DEADLINE: (now + timedelta(hours=deadline_hours)).isoformat(),
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
    _log.info("retrain of %s requested (%s), run %s, priority %s", model, reason, run.info.run_id, priority)
    return run.info.run_id
