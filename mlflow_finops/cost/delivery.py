"""Getting cost samples into MLflow without ever holding up training.

An :class:`Outbox` owns one daemon thread that sends queued metric/tag batches
with ``log_batch``. When the tracking server does not answer, batches stay
queued and are retried with backoff; whatever is still undelivered when the
run ends is written to a spool folder and delivered by the next tracker (or
``mlflow-finops sync``). HTTP stores are called with no client-side retries
and a short timeout, so a dead server costs seconds, not MLflow's minutes of
retries.

The spool cannot lose data: files are written atomically (0600, in a 0700
folder, with no credentials in the stored URI); a sync claims a file by
renaming it to a name carrying its pid, host and time (a lease), so a claim
whose process died, or that is older than :data:`CLAIM_LEASE_S`, is renamed
back and retried; batches that can never be delivered (corrupt lines, a run
that does not exist) go to ``<spool>/dead/`` with the reason; a spool folder
that cannot be written falls back to a private folder under the temp dir.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
import stat
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit, urlunsplit

from .._env import env_float
from ..names import ENV_HTTP_TIMEOUT_S, ENV_LOG_INTERVAL_S, ENV_SPOOL_DIR

_log = logging.getLogger(__name__)

__all__ = ["Batch", "Outbox", "SyncResult", "spool_dir", "sync_spool", "deliver", "redact_uri"]

MAX_METRICS_PER_REQUEST = 1000  # MLflow's log_batch limits
MAX_TAGS_PER_REQUEST = 100
HTTP_TIMEOUT_S = 5.0  # default of $MLFLOW_FINOPS_HTTP_TIMEOUT_S
LOG_INTERVAL_S = 5.0  # default of $MLFLOW_FINOPS_LOG_INTERVAL_S
CLAIM_LEASE_S = 600.0  # a claim older than this is taken back even if its process may live
DEAD_LETTER_DIR = "dead"  # below the spool folder: batches that can never be delivered
# This machine as it appears in claim names ("~" separates the parts of a claim name).
HOST = re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname()) or "localhost"


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


def spool_dir() -> Path:
    """``$MLFLOW_FINOPS_SPOOL_DIR``, else ``~/.cache/mlflow-finops/spool``."""
    env = os.environ.get(ENV_SPOOL_DIR)
    return Path(env) if env else Path.home() / ".cache" / "mlflow-finops" / "spool"


def redact_uri(uri: str) -> str:
    """``uri`` without its userinfo (``user:password@``): what may be written to disk."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def _is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def deliver(batch: Batch) -> None:
    """Send one batch; raises on any failure (the caller keeps the batch)."""
    for chunk in batch.chunks():
        if chunk.metrics or chunk.tags:
            if _is_http(chunk.tracking_uri):
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
    if _is_http(batch.tracking_uri):
        run = _http(batch.tracking_uri, "/api/2.0/mlflow/runs/get", "GET", params={"run_id": batch.run_id}).json()
        if run.get("run", {}).get("info", {}).get("status") == "RUNNING":
            _http(batch.tracking_uri, "/api/2.0/mlflow/runs/update", "POST",
                  json={"run_id": batch.run_id, "status": status, "end_time": end_ms})
            _log.info("mlflow-finops: run %s ended %s (its end had not reached MLflow)", batch.run_id, status)
        return
    from mlflow.tracking import MlflowClient

    client = MlflowClient(batch.tracking_uri)
    if client.get_run(batch.run_id).info.status == "RUNNING":
        client.set_terminated(batch.run_id, status, end_time=end_ms)


def _http(uri: str, endpoint: str, method: str, **kwargs: Any) -> Any:
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
    _http(batch.tracking_uri, "/api/2.0/mlflow/runs/log-batch", "POST", json=body)


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
                    _short(exc),
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
        out[key].end = b.end or out[key].end
    return list(out.values())


def _short(exc: BaseException) -> str:
    """The first line of an error, without the ``user:password@`` of any URL it quotes."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return re.sub(r"(\w://)[^/@\s]+@", r"\1", text)[:200]


# ------------------------------------------------------------------ spool
class SyncResult(NamedTuple):
    """What one sync did, counted in batches (a file that cannot be read counts as one)."""

    delivered: int
    left: int  # kept for a later sync: server unreachable, run deleted but restorable, file unreadable
    dead: int  # moved to <spool>/dead/ with the reason: they can never be delivered


def _private_folder(folder: Path) -> Path:
    """Create ``folder`` 0700, or make an existing one this user owns 0700 (files inside are 0600)."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = folder.stat()
    if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(folder, 0o700)
    return folder


def _fallback_dir(primary: Path) -> Path:
    """This user's private folder under the temp dir, one per configured spool folder."""
    digest = hashlib.sha256(str(primary).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"mlflow-finops-{os.geteuid()}" / f"spool-{digest}"


def _check_fallback_base(base: Path) -> None:
    """The temp dir is shared: use its folder only if it is a real folder of this user."""
    st = base.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise OSError(f"{base} is not a private folder of this user")


def _prepare(folder: Path, primary: Path) -> Path:
    if folder != primary:
        base = folder.parent
        base.mkdir(exist_ok=True, mode=0o700)
        _check_fallback_base(base)
        _private_folder(base)
    return _private_folder(folder)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)[:64] or "run"


def _leased(stem: str, suffix: str) -> str:
    """A file name that says who holds it and since when: ``stem~pid~host~unixtime.suffix``."""
    return f"{stem}~{os.getpid()}~{HOST}~{int(time.time())}{suffix}"


def _write_lines(folder: Path, stem: str, lines: list[bytes], suffix: str = ".jsonl") -> Path:
    """Write atomically (a reader never sees half a file), 0600."""
    tmp = folder / _leased(stem, ".tmp")
    path = folder / f"{stem}{suffix}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.writelines(line + b"\n" for line in lines)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _encode(batch: Batch) -> bytes:
    d = asdict(replace(batch, tracking_uri=redact_uri(batch.tracking_uri)))
    if d["end"] is None:
        del d["end"]  # the line as it was before runs' ends were spooled
    return json.dumps(d).encode()


def write_spool(batches: list[Batch]) -> Path | None:
    """Spool ``batches``; never raises. ``None`` means they are lost, which is logged."""
    primary = spool_dir()
    stem = f"{_safe(batches[0].run_id)}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    lines = [_encode(b) for b in batches]
    failure = ""
    for folder in (primary, _fallback_dir(primary)):
        try:
            path = _write_lines(_prepare(folder, primary), stem, lines)
        except (OSError, ValueError) as exc:
            failure = failure or f"{type(exc).__name__}: {exc}"
            continue
        if folder != primary:
            _log.warning(
                "mlflow-finops: spool folder %s cannot be written (%s); %d cost batch(es) "
                "spooled to %s instead",
                primary,
                failure,
                len(batches),
                path,
            )
        return path
    _log.warning(
        "mlflow-finops: %d cost batch(es) for run(s) %s LOST: spool folder %s cannot be written "
        "(%s), nor its fallback under %s",
        len(batches),
        ", ".join(sorted({b.run_id for b in batches})),
        primary,
        failure,
        tempfile.gettempdir(),
    )
    return None


def _parse(line: bytes) -> Batch:
    """One spooled batch, checked field by field: anything else is a corrupt line."""
    d = json.loads(line)
    if not isinstance(d, dict) or not {"tracking_uri", "run_id", "metrics", "tags"} <= set(d) \
            or not set(d) <= {"tracking_uri", "run_id", "metrics", "tags", "end"}:
        raise ValueError(f"expected the keys tracking_uri, run_id, metrics, tags (and end); got {sorted(d)[:10]}"
                         if isinstance(d, dict) else "not a JSON object")
    end = d.get("end")
    if end is not None and not (
        isinstance(end, list) and len(end) == 2 and end[0] in RUN_END_STATUSES
        and isinstance(end[1], int) and not isinstance(end[1], bool)
    ):
        raise ValueError(f"bad run end {str(end)[:80]}")
    uri, run_id, metrics, tags = d["tracking_uri"], d["run_id"], d["metrics"], d["tags"]
    if not (isinstance(uri, str) and uri and isinstance(run_id, str) and run_id):
        raise ValueError("tracking_uri and run_id must be non-empty strings")
    if not isinstance(tags, dict) or not all(isinstance(v, str) for v in tags.values()):
        raise ValueError("tags must map strings to strings")
    rows = []
    for m in metrics if isinstance(metrics, list) else [None]:
        ok = (
            isinstance(m, list) and len(m) == 4 and isinstance(m[0], str)
            and isinstance(m[1], (int, float)) and not isinstance(m[1], bool)
            and all(isinstance(x, int) and not isinstance(x, bool) for x in m[2:])
        )
        if not ok:
            raise ValueError(f"bad metric row {str(m)[:80]}")
        rows.append((m[0], float(m[1]), m[2], m[3]))
    return Batch(uri, run_id, rows, tags, (end[0], end[1]) if end is not None else None)


def _lease_of(path: Path) -> tuple[str, int | None, str | None, float]:
    """``(stem, pid, host, since)`` of a claim or of a file being written.

    Claims of earlier versions (``stem.PID.sending``) name only the pid: this host,
    since the file's mtime. Unknown names: nobody known, since the mtime.
    """
    name = path.name[: -len(path.suffix)]
    parts = name.rsplit("~", 3)
    if len(parts) == 4 and parts[1].isdigit() and parts[3].isdigit():
        return parts[0], int(parts[1]), parts[2], float(parts[3])
    stem, _, pid = name.rpartition(".")
    if path.suffix == ".sending" and stem and pid.isdigit():
        return stem, int(pid), HOST, path.stat().st_mtime
    return name, None, None, path.stat().st_mtime


def _holder_alive(pid: int | None, host: str | None, since: float) -> bool:
    """Whether the process that took a lease may still hold it (unknown: yes, the lease decides)."""
    if pid is None or host != HOST:
        return True
    import psutil

    try:
        proc = psutil.Process(pid)
        # A pid reused by a process started after the lease was taken is not its holder.
        return proc.status() != psutil.STATUS_ZOMBIE and proc.create_time() <= since + 1.0
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True


def _recover_leases(folder: Path) -> None:
    """Rename back to ``*.jsonl`` every claim (or half-written file) whose holder is gone."""
    now = time.time()
    for path in [*folder.glob("*.sending"), *folder.glob("*.tmp")]:
        try:
            stem, pid, host, since = _lease_of(path)
        except OSError:
            continue  # gone already
        if now - since <= CLAIM_LEASE_S and _holder_alive(pid, host, since):
            continue
        target = folder / f"{stem}.jsonl"
        if target.exists():
            target = folder / f"{stem}-{uuid.uuid4().hex[:8]}.jsonl"
        try:
            path.rename(target)
        except OSError:
            continue  # another sync recovered it first
        _log.warning(
            "mlflow-finops: recovered spool file %s left by process %s on %s %.0f s ago; retrying it",
            path.name,
            pid if pid is not None else "?",
            host or "?",
            now - since,
        )


def _delivery_uri(stored: str, preferred: str | None) -> str:
    """Where to send a spooled batch: the stored URI (no credentials), or the same store as this
    process names it (``preferred``, then the current tracking URI), credentials included."""
    import mlflow

    for uri in (preferred, mlflow.get_tracking_uri()):
        if uri and uri != stored and redact_uri(uri) == redact_uri(stored):
            return uri
    return stored


def _error_code(exc: BaseException, uri: str) -> str | None:
    """MLflow's error code, only when MLflow itself answered (not a proxy's 404 page)."""
    from mlflow.exceptions import MlflowException, RestException

    if isinstance(exc, RestException) or (isinstance(exc, MlflowException) and not _is_http(uri)):
        return exc.error_code
    return None


_PERMANENT = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


def _never_deliverable(batch: Batch, exc: BaseException) -> str | None:
    """Why ``batch`` can never be delivered, or ``None`` when a later sync may succeed.

    A deleted run is kept: ``restore_run`` brings it back. Only a run that does not
    exist, or a batch MLflow refuses for an active run, is given up.
    """
    code = _error_code(exc, batch.tracking_uri)
    if code not in _PERMANENT:
        return None
    try:
        if _is_http(batch.tracking_uri):
            stage = _http(batch.tracking_uri, "/api/2.0/mlflow/runs/get", "GET",
                          params={"run_id": batch.run_id}).json()["run"]["info"]["lifecycle_stage"]
        else:
            from mlflow.tracking import MlflowClient

            stage = MlflowClient(batch.tracking_uri).get_run(batch.run_id).info.lifecycle_stage
    except Exception as check:
        if _error_code(check, batch.tracking_uri) in _PERMANENT:
            return f"run {batch.run_id} does not exist in {redact_uri(batch.tracking_uri)}: {_short(exc)}"
        return None
    if stage == "active" and code == "INVALID_PARAMETER_VALUE":
        return f"MLflow refuses the batch for run {batch.run_id}: {_short(exc)}"
    return None


def _spool_folders() -> list[Path]:
    primary = spool_dir()
    fallback = _fallback_dir(primary)
    folders = [primary] if primary.is_dir() else []
    try:
        _check_fallback_base(fallback.parent)
        if fallback.is_dir():
            folders.append(fallback)
    except OSError:
        pass
    return folders


def sync_spool(tracking_uri: str | None = None) -> SyncResult:
    """Deliver spooled batches (only those for ``tracking_uri`` when given).

    Claims of processes that died mid-sync are recovered first. Batches are sent with
    this process's credentials for their store (see :func:`_delivery_uri`).
    """
    total = SyncResult(0, 0, 0)
    for folder in _spool_folders():
        _recover_leases(folder)
        for path in sorted(folder.glob("*.jsonl")):
            done = _sync_file(folder, path, tracking_uri)
            total = SyncResult(*(a + b for a, b in zip(total, done)))
    return total


def _sync_file(folder: Path, path: Path, tracking_uri: str | None) -> SyncResult:
    try:
        raw = [line for line in path.read_bytes().splitlines() if line.strip()]
    except FileNotFoundError:
        return SyncResult(0, 0, 0)  # another sync took it
    except OSError as exc:
        _log.warning("mlflow-finops: spool file %s cannot be read (%s); kept for a later sync", path, exc)
        return SyncResult(0, 1, 0)
    batches: list[Batch] = []
    corrupt: list[tuple[bytes, str]] = []
    for line in raw:
        try:
            batches.append(_parse(line))
        except (ValueError, TypeError) as exc:  # UnicodeDecodeError and JSONDecodeError included
            corrupt.append((line, f"corrupt spool line: {_short(exc)}"))
    if tracking_uri and any(redact_uri(b.tracking_uri) != redact_uri(tracking_uri) for b in batches):
        return SyncResult(0, len(raw), 0)  # another store's file: left to `mlflow-finops sync`
    claimed = folder / _leased(path.stem, ".sending")
    try:
        path.rename(claimed)  # claim it, so two syncs never send the same file
    except OSError:
        return SyncResult(0, 0, 0)
    delivered = 0
    remaining: list[Batch] = []
    held_runs: set[str] = set()  # a run MLflow refused: its later batches wait, in order
    unreachable = False
    for b in batches:
        if unreachable or b.run_id in held_runs:
            remaining.append(b)
            continue
        target = replace(b, tracking_uri=_delivery_uri(b.tracking_uri, tracking_uri))
        try:
            deliver(target)
            delivered += 1
            continue
        except Exception as exc:
            reason = _never_deliverable(target, exc)
            if reason:
                corrupt.append((_encode(b), reason))
                continue
            _log.info("spooled batch for run %s not delivered yet: %s", b.run_id, _short(exc))
            remaining.append(b)
            if _error_code(exc, target.tracking_uri) is None:
                unreachable = True  # no answer from MLflow: the rest would wait just as long
            else:
                held_runs.add(b.run_id)
    try:
        if corrupt:
            _dead_letter(folder, path.stem, corrupt)
        if remaining and write_spool(remaining) is None:
            raise OSError("cannot rewrite the undelivered batches")
    except OSError as exc:
        _log.warning("mlflow-finops: spool file %s kept whole (%s); it is retried by the next sync",
                     path, exc)
        claimed.rename(path)  # nothing lost; what was delivered may be sent again
        return SyncResult(delivered, len(raw) - delivered, 0)
    claimed.unlink(missing_ok=True)
    return SyncResult(delivered, len(remaining), len(corrupt))


def _dead_letter(folder: Path, stem: str, entries: list[tuple[bytes, str]]) -> None:
    """Keep batches that can never be delivered in ``dead/``, with a ``.reason`` file beside them.

    The ``.jsonl`` holds them as spooled: moved back into the spool folder, they are retried.
    """
    dead = _private_folder(folder / DEAD_LETTER_DIR)
    path = _write_lines(dead, f"{stem}-{uuid.uuid4().hex[:8]}", [line for line, _ in entries])
    reasons = [f"line {i}: {reason}".encode() for i, (_, reason) in enumerate(entries, 1)]
    _write_lines(dead, path.stem, reasons, suffix=".reason")
    by_reason: dict[str, int] = {}
    for _, reason in entries:
        by_reason[reason] = by_reason.get(reason, 0) + 1
    for reason, count in by_reason.items():
        _log.warning("mlflow-finops: %d spooled cost batch(es) can never be delivered and were moved "
                     "to %s: %s", count, path, reason)
