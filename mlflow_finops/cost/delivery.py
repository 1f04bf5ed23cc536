"""Getting cost samples into MLflow without ever holding up training.

An :class:`Outbox` owns one daemon thread that sends queued metric/tag batches
(:mod:`.transport`). When the tracking server does not answer, batches stay
queued and are retried with backoff; whatever is still undelivered when the
run ends is written to the spool (:mod:`.spool`) and delivered by the next
tracker (or ``mlflow-finops sync``). Layers: transport <- spool <- outbox.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace

from .._env import env_float
from ..names import ENV_LOG_INTERVAL_S
from .spool import DEAD_LETTER_DIR, SyncResult, spool_dir, sync_spool, write_spool
from .transport import RUN_END_STATUSES, Batch, deliver, redact_uri, short_error

_log = logging.getLogger(__name__)

__all__ = ["Batch", "Outbox", "SyncResult", "spool_dir", "sync_spool", "deliver", "redact_uri", "write_spool",
           "DEAD_LETTER_DIR", "RUN_END_STATUSES"]

LOG_INTERVAL_S = 5.0  # default of $MLFLOW_FINOPS_LOG_INTERVAL_S


class Outbox:
    """Queue + one daemon thread that delivers batches in order, retrying with backoff."""

    def __init__(
        self, name: str = "finops-outbox", max_backoff_s: float = 30.0, min_interval_s: float | None = None
    ):
        self._pending: list[Batch] = []
        self._cond = threading.Condition()
        self._closing = False
        self._closed = False  # leftovers taken: a later put is delivered or spooled by its caller
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
            if not self._closed:
                self._pending.append(batch)
                self._cond.notify()
                return
        # After close (a sampler past its join, a nested run ended after its parent):
        # nothing is queued any more, so deliver now or spool, never drop.
        try:
            deliver(batch)
        except Exception as exc:
            path = write_spool([batch])
            if path is not None:
                _log.warning(
                    "mlflow-finops: a cost batch for run %s came after delivery closed and "
                    "could not be sent (%s); spooled to %s",
                    batch.run_id,
                    short_error(exc),
                    path,
                )

    def close(self, timeout_s: float = 15.0, end: tuple[str, str, int] | None = None) -> int:
        """Deliver what is queued within ``timeout_s``; spool the rest. Returns batches spooled.

        ``end``: (run id, status, end time ms) of a run ending now; when its batches are spooled,
        the last carries its end, so that delivering them later also ends the run (MLflow's own
        ``end_run`` fails too while the server is away).
        """
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._closing = True
            self._flush_now = True
            self._cond.notify_all()
            while self._pending and time.monotonic() < deadline and self._thread.is_alive():
                self._cond.wait(timeout=min(0.2, max(deadline - time.monotonic(), 0.01)))
            leftovers, self._pending = self._pending, []
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=max(deadline - time.monotonic(), 0.5))
        if end is not None:
            ours = [i for i, b in enumerate(leftovers) if b.run_id == end[0]]
            if ours:
                leftovers[ours[-1]] = replace(leftovers[ours[-1]], end=(end[1], end[2]))
        path = write_spool(leftovers) if leftovers else None
        if path is not None:  # a failed write logs the loss itself
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
                        redact_uri(taken[0].tracking_uri),
                        short_error(exc),
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
        out[key].end = b.end or out[key].end
    return list(out.values())


