"""Getting cost samples into MLflow without ever holding up training.

An :class:`Outbox` owns one daemon thread that sends queued metric/tag batches
with ``log_batch``. When the tracking server does not answer, batches stay
queued and are retried with backoff; whatever is still undelivered when the
run ends is written to a spool folder and delivered by the next tracker (or
``mlflow-finops sync``). HTTP stores are called with no client-side retries
and a short timeout, so a dead server costs seconds, not MLflow's minutes of
retries.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .._env import env_float
from ..names import ENV_HTTP_TIMEOUT_S, ENV_LOG_INTERVAL_S, ENV_SPOOL_DIR

_log = logging.getLogger(__name__)

__all__ = ["Batch", "Outbox", "spool_dir", "sync_spool", "deliver"]

MAX_METRICS_PER_REQUEST = 1000  # MLflow's log_batch limits
MAX_TAGS_PER_REQUEST = 100
HTTP_TIMEOUT_S = 5.0  # default of $MLFLOW_FINOPS_HTTP_TIMEOUT_S
LOG_INTERVAL_S = 5.0  # default of $MLFLOW_FINOPS_LOG_INTERVAL_S


@dataclass
class Batch:
    """Metrics ``(key, value, timestamp_ms, step)`` and tags for one run."""

    tracking_uri: str
    run_id: str
    metrics: list[tuple[str, float, int, int]] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)

    def chunks(self) -> list["Batch"]:
        out = []
        tags = list(self.tags.items())
        m = self.metrics
        i = j = 0
        while i < len(m) or j < len(tags) or not out:
            out.append(
                Batch(
                    self.tracking_uri,
                    self.run_id,
                    m[i : i + MAX_METRICS_PER_REQUEST - MAX_TAGS_PER_REQUEST],
                    dict(tags[j : j + MAX_TAGS_PER_REQUEST]),
                )
            )
            i += MAX_METRICS_PER_REQUEST - MAX_TAGS_PER_REQUEST
            j += MAX_TAGS_PER_REQUEST
        return out


def spool_dir() -> Path:
    """``$MLFLOW_FINOPS_SPOOL_DIR``, else ``~/.cache/mlflow-finops/spool``."""
    env = os.environ.get(ENV_SPOOL_DIR)
    return Path(env) if env else Path.home() / ".cache" / "mlflow-finops" / "spool"


def deliver(batch: Batch) -> None:
    """Send one batch; raises on any failure (the caller keeps the batch)."""
    for chunk in batch.chunks():
        if not chunk.metrics and not chunk.tags:
            continue
        if chunk.tracking_uri.startswith(("http://", "https://")):
            _deliver_http(chunk)
        else:
            _deliver_client(chunk)


def _deliver_http(batch: Batch) -> None:
    from mlflow.tracking._tracking_service.utils import _get_store
    from mlflow.utils.rest_utils import http_request, verify_rest_response

    store = _get_store(batch.tracking_uri)
    body = {
        "run_id": batch.run_id,
        "metrics": [
            {"key": k, "value": v, "timestamp": ts, "step": step} for k, v, ts, step in batch.metrics
        ],
        "tags": [{"key": k, "value": v} for k, v in batch.tags.items()],
    }
    endpoint = "/api/2.0/mlflow/runs/log-batch"
    response = http_request(
        store.get_host_creds(),
        endpoint,
        "POST",
        max_retries=0,
        backoff_factor=0,
        timeout=env_float(ENV_HTTP_TIMEOUT_S, HTTP_TIMEOUT_S),
        json=body,
    )
    verify_rest_response(response, endpoint)


def _deliver_client(batch: Batch) -> None:
    from mlflow.entities import Metric, RunTag
    from mlflow.tracking import MlflowClient

    MlflowClient(batch.tracking_uri).log_batch(
        batch.run_id,
        metrics=[Metric(k, v, ts, step) for k, v, ts, step in batch.metrics],
        tags=[RunTag(k, v) for k, v in batch.tags.items()],
        synchronous=True,
    )


class Outbox:
    """Queue + one daemon thread that delivers batches in order, retrying with backoff."""

    def __init__(
        self, name: str = "finops-outbox", max_backoff_s: float = 30.0, min_interval_s: float | None = None
    ):
        self._pending: list[Batch] = []
        self._cond = threading.Condition()
        self._closing = False
        self._max_backoff_s = max_backoff_s
        # Live time series are sent in one request per run every few seconds, not per sample.
        self._min_interval_s = (
            min_interval_s if min_interval_s is not None else env_float(ENV_LOG_INTERVAL_S, LOG_INTERVAL_S)
        )
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._outage_since: float | None = None
        self.cpu_s = 0.0  # CPU this thread spent delivering (part of tracking's own overhead)
        self._flush_now = False
        self._sync_uri: str | None = None

    def start(self, sync_spool_for: str | None = None) -> "Outbox":
        self._sync_uri = sync_spool_for
        self._thread.start()
        return self

    def put(self, batch: Batch) -> None:
        with self._cond:
            self._pending.append(batch)
            self._cond.notify()

    def close(self, timeout_s: float = 15.0) -> int:
        """Deliver what is queued within ``timeout_s``; spool the rest. Returns batches spooled."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._closing = True
            self._flush_now = True
            self._cond.notify_all()
            while self._pending and time.monotonic() < deadline and self._thread.is_alive():
                self._cond.wait(timeout=min(0.2, max(deadline - time.monotonic(), 0.01)))
            leftovers, self._pending = self._pending, []
            self._cond.notify_all()
        self._thread.join(timeout=max(deadline - time.monotonic(), 0.5))
        if leftovers:
            path = write_spool(leftovers)
            _log.warning(
                "mlflow-finops: tracking server unreachable at run end; %d cost batch(es) "
                "spooled to %s, delivered by the next tracked run or `mlflow-finops sync`",
                len(leftovers),
                path,
            )
        return len(leftovers)

    # -------------------------------------------------------------- thread
    def _loop(self) -> None:
        if self._sync_uri:
            try:
                sync_spool(self._sync_uri)
            except Exception as exc:  # never fatal
                _log.debug("spool sync failed: %s", exc)
        backoff = 1.0
        last_sent = 0.0
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if not self._pending and self._closing:
                    return
                # Coalesce: at most one request per run every min_interval_s while live.
                wait = last_sent + self._min_interval_s - time.monotonic()
                if wait > 0 and not self._flush_now:
                    self._cond.wait(timeout=wait)
                    continue
                taken = list(self._pending)
            taken_ids = {id(b) for b in taken}
            cpu0 = time.thread_time()
            merged = _merge(taken)
            try:
                for batch in merged:
                    deliver(batch)
                    with self._cond:  # drop what is delivered, keep the rest queued
                        key = (batch.tracking_uri, batch.run_id)
                        self._pending = [
                            b for b in self._pending
                            if id(b) not in taken_ids or (b.tracking_uri, b.run_id) != key
                        ]
            except Exception as exc:
                self.cpu_s += time.thread_time() - cpu0
                if self._outage_since is None:
                    self._outage_since = time.monotonic()
                    _log.warning(
                        "mlflow-finops: cannot reach MLflow at %s (%s); cost samples are kept "
                        "and retried, training is not affected",
                        taken[0].tracking_uri,
                        _short(exc),
                    )
                with self._cond:
                    if self._closing and not self._pending:
                        return
                    # Wait for the backoff, or less when the run is ending.
                    self._cond.wait(timeout=0.5 if self._flush_now else backoff)
                backoff = min(backoff * 2, self._max_backoff_s)
                continue
            self.cpu_s += time.thread_time() - cpu0
            backoff = 1.0
            last_sent = time.monotonic()
            if self._outage_since is not None:
                _log.warning(
                    "mlflow-finops: MLflow answers again after %.0f s; delivering queued samples",
                    time.monotonic() - self._outage_since,
                )
                self._outage_since = None
            with self._cond:
                self._cond.notify_all()


def _merge(batches: list[Batch]) -> list[Batch]:
    """One batch per (tracking URI, run), metrics in order, later tags winning."""
    out: dict[tuple[str, str], Batch] = {}
    for b in batches:
        key = (b.tracking_uri, b.run_id)
        if key not in out:
            out[key] = Batch(b.tracking_uri, b.run_id)
        out[key].metrics.extend(b.metrics)
        out[key].tags.update(b.tags)
    return list(out.values())


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]


# ------------------------------------------------------------------ spool
def write_spool(batches: list[Batch]) -> Path:
    folder = spool_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{batches[0].run_id}-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as fh:
        for b in batches:
            fh.write(json.dumps(asdict(b)) + "\n")
    tmp.replace(path)  # atomic: a reader never sees half a file
    return path


def _read_spool(path: Path) -> list[Batch]:
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            d: dict[str, Any] = json.loads(line)
            d["metrics"] = [tuple(m) for m in d["metrics"]]
            out.append(Batch(**d))
    return out


def sync_spool(tracking_uri: str | None = None) -> tuple[int, int]:
    """Deliver spooled batches (only those for ``tracking_uri`` when given).

    Returns ``(delivered, left)`` counted in batches.
    """
    folder = spool_dir()
    if not folder.is_dir():
        return 0, 0
    delivered = left = 0
    for path in sorted(folder.glob("*.jsonl")):
        claimed = path.with_suffix(f".{os.getpid()}.sending")
        try:
            batches = _read_spool(path)
        except (OSError, ValueError) as exc:
            _log.warning("unreadable spool file %s left in place: %s", path, exc)
            continue
        if tracking_uri and any(b.tracking_uri != tracking_uri for b in batches):
            left += len(batches)
            continue
        try:
            path.rename(claimed)  # claim it, so two syncs never send the same file
        except OSError:
            continue
        remaining = []
        for b in batches:
            if remaining:
                remaining.append(b)
                continue
            try:
                deliver(b)
                delivered += 1
            except Exception as exc:
                _log.info("spooled batch for run %s not delivered yet: %s", b.run_id, _short(exc))
                remaining.append(b)
        claimed.unlink(missing_ok=True)
        if remaining:
            write_spool(remaining)
            left += len(remaining)
    return delivered, left
