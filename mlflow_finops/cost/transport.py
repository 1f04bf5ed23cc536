"""Sending one batch of cost metrics and tags to MLflow: no retries, a short timeout.

HTTP stores are called with no client-side retries and a short timeout, so a dead server
costs seconds, not MLflow's minutes of retries; the caller keeps what could not be sent
(:mod:`.delivery`'s outbox, then :mod:`.spool`). A batch may carry its run's end, for a run
whose own ``end_run`` could not reach MLflow.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

from .._env import env_float
from ..names import ENV_HTTP_TIMEOUT_S
from ..store import redact_uri

_log = logging.getLogger(__name__)

__all__ = ["Batch", "RUN_END_STATUSES", "deliver", "error_code", "is_http", "mlflow_request", "redact_uri",
           "short_error"]

MAX_METRICS_PER_REQUEST = 1000  # MLflow's log_batch limits
MAX_TAGS_PER_REQUEST = 100
HTTP_TIMEOUT_S = 5.0  # default of $MLFLOW_FINOPS_HTTP_TIMEOUT_S


@dataclass
class Batch:
    """Metrics ``(key, value, timestamp_ms, step)`` and tags for one run."""

    tracking_uri: str
    run_id: str
    metrics: list[tuple[str, float, int, int]] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    # (status, end time ms): the run ended so, and MLflow may not have heard it (its server was
    # down at ``end_run``): once this batch is delivered, a run still RUNNING is ended so.
    end: tuple[str, int] | None = None

    def chunks(self) -> list["Batch"]:
        """Requests within ``log_batch``'s limits (at least one, maybe empty), metrics in order;
        the run's end goes with the last."""
        per_request = MAX_METRICS_PER_REQUEST - MAX_TAGS_PER_REQUEST  # room for a full page of tags
        tags = list(self.tags.items())
        count = max(-(-len(self.metrics) // per_request), -(-len(tags) // MAX_TAGS_PER_REQUEST), 1)
        return [
            Batch(
                self.tracking_uri,
                self.run_id,
                self.metrics[k * per_request : (k + 1) * per_request],
                dict(tags[k * MAX_TAGS_PER_REQUEST : (k + 1) * MAX_TAGS_PER_REQUEST]),
                self.end if k == count - 1 else None,
            )
            for k in range(count)
        ]


def is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def deliver(batch: Batch) -> None:
    """Send one batch; raises on any failure (the caller keeps the batch)."""
    for chunk in batch.chunks():
        if chunk.metrics or chunk.tags:
            if is_http(chunk.tracking_uri):
                _deliver_http(chunk)
            else:
                _deliver_client(chunk)
        if chunk.end is not None:
            _deliver_end(chunk)


RUN_END_STATUSES = ("FINISHED", "FAILED", "KILLED")


def _deliver_end(batch: Batch) -> None:
    """End the run as it ended, unless MLflow has an end for it already (its own ``end_run`` got through)."""
    assert batch.end is not None
    status, end_ms = batch.end
    if is_http(batch.tracking_uri):
        run = mlflow_request(batch.tracking_uri, "/api/2.0/mlflow/runs/get", "GET", params={"run_id": batch.run_id}).json()
        if run.get("run", {}).get("info", {}).get("status") == "RUNNING":
            mlflow_request(batch.tracking_uri, "/api/2.0/mlflow/runs/update", "POST",
                  json={"run_id": batch.run_id, "status": status, "end_time": end_ms})
            _log.info("mlflow-finops: run %s ended %s (its end had not reached MLflow)", batch.run_id, status)
        return
    from mlflow.tracking import MlflowClient

    client = MlflowClient(batch.tracking_uri)
    if client.get_run(batch.run_id).info.status == "RUNNING":
        client.set_terminated(batch.run_id, status, end_time=end_ms)


def mlflow_request(uri: str, endpoint: str, method: str, **kwargs: Any) -> Any:
    """One request, no retries, short timeout; credentials as MLflow resolves them for ``uri``
    (userinfo in the URI, or MLFLOW_TRACKING_USERNAME/PASSWORD/TOKEN of this process)."""
    from mlflow.tracking._tracking_service.utils import _get_store
    from mlflow.utils.rest_utils import http_request, verify_rest_response

    response = http_request(
        _get_store(uri).get_host_creds(),
        endpoint,
        method,
        max_retries=0,
        backoff_factor=0,
        timeout=env_float(ENV_HTTP_TIMEOUT_S, HTTP_TIMEOUT_S),
        **kwargs,
    )
    return verify_rest_response(response, endpoint)


def _deliver_http(batch: Batch) -> None:
    body = {
        "run_id": batch.run_id,
        "metrics": [
            {"key": k, "value": v, "timestamp": ts, "step": step} for k, v, ts, step in batch.metrics
        ],
        "tags": [{"key": k, "value": v} for k, v in batch.tags.items()],
    }
    mlflow_request(batch.tracking_uri, "/api/2.0/mlflow/runs/log-batch", "POST", json=body)


def _deliver_client(batch: Batch) -> None:
    from mlflow.entities import Metric, RunTag
    from mlflow.tracking import MlflowClient

    MlflowClient(batch.tracking_uri).log_batch(
        batch.run_id,
        metrics=[Metric(k, v, ts, step) for k, v, ts, step in batch.metrics],
        tags=[RunTag(k, v) for k, v in batch.tags.items()],
        synchronous=True,
    )


def short_error(exc: BaseException) -> str:
    """The first line of an error, without the ``user:password@`` of any URL it quotes."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return re.sub(r"(\w://)[^/@\s]+@", r"\1", text)[:200]


def error_code(exc: BaseException, uri: str) -> str | None:
    """MLflow's error code, only when MLflow itself answered (not a proxy's 404 page)."""
    from mlflow.exceptions import MlflowException, RestException

    if isinstance(exc, RestException) or (isinstance(exc, MlflowException) and not is_http(uri)):
        return exc.error_code
    return None
