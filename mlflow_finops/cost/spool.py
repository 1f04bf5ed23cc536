"""The spool: cost batches MLflow could not take yet, kept on disk until a sync delivers them.

The spool cannot lose data: files are written atomically (0600, in a 0700 folder, with no
credentials in the stored URI); a sync claims a file by renaming it to a name carrying its
pid, host and time (a lease), so a claim whose process died, or that is older than
:data:`CLAIM_LEASE_S`, is renamed back and retried; batches that can never be delivered
(corrupt lines, a run that does not exist) go to ``<spool>/dead/`` with the reason; a spool
folder that cannot be written falls back to a private folder under the temp dir.
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
import time
import uuid
from dataclasses import asdict, replace
from pathlib import Path
from typing import NamedTuple

from ..names import ENV_SPOOL_DIR
from .transport import RUN_END_STATUSES, Batch, deliver, error_code, is_http, mlflow_request, redact_uri, short_error

_log = logging.getLogger(__name__)

__all__ = ["SyncResult", "spool_dir", "sync_spool", "write_spool", "DEAD_LETTER_DIR"]

CLAIM_LEASE_S = 600.0  # a claim older than this is taken back even if its process may live
DEAD_LETTER_DIR = "dead"  # below the spool folder: batches that can never be delivered
# This machine as it appears in claim names ("~" separates the parts of a claim name).
HOST = re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname()) or "localhost"


def spool_dir() -> Path:
    """``$MLFLOW_FINOPS_SPOOL_DIR``, else ``~/.cache/mlflow-finops/spool``."""
    env = os.environ.get(ENV_SPOOL_DIR)
    return Path(env) if env else Path.home() / ".cache" / "mlflow-finops" / "spool"


class SyncResult(NamedTuple):
    """What one sync did, counted in batches (a file that cannot be read counts as one)."""

    delivered: int
    left: int  # kept for a later sync: server unreachable, run deleted but restorable, file unreadable
    dead: int  # moved to <spool>/dead/ with the reason: they can never be delivered


def private_folder(folder: Path) -> Path:
    """Create ``folder`` 0700, or make an existing one this user owns 0700 (files inside are 0600)."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = folder.stat()
    if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(folder, 0o700)
    return folder


def fallback_dir(primary: Path) -> Path:
    """This user's private folder under the temp dir, one per configured spool folder."""
    digest = hashlib.sha256(str(primary).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"mlflow-finops-{os.geteuid()}" / f"spool-{digest}"


def check_fallback_base(base: Path) -> None:
    """The temp dir is shared: use its folder only if it is a real folder of this user."""
    st = base.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise OSError(f"{base} is not a private folder of this user")


def prepare_folder(folder: Path, primary: Path) -> Path:
    if folder != primary:
        base = folder.parent
        base.mkdir(exist_ok=True, mode=0o700)
        check_fallback_base(base)
        private_folder(base)
    return private_folder(folder)


def safe_stem(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)[:64] or "run"


def leased_name(stem: str, suffix: str) -> str:
    """A file name that says who holds it and since when: ``stem~pid~host~unixtime.suffix``."""
    return f"{stem}~{os.getpid()}~{HOST}~{int(time.time())}{suffix}"


def write_lines(folder: Path, stem: str, lines: list[bytes], suffix: str = ".jsonl") -> Path:
    """Write atomically (a reader never sees half a file), 0600."""
    tmp = folder / leased_name(stem, ".tmp")
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


def encode_line(batch: Batch) -> bytes:
    d = asdict(replace(batch, tracking_uri=redact_uri(batch.tracking_uri)))
    if d["end"] is None:
        del d["end"]  # the line as it was before runs' ends were spooled
    return json.dumps(d).encode()


def write_spool(batches: list[Batch]) -> Path | None:
    """Spool ``batches``; never raises. ``None`` means they are lost, which is logged."""
    primary = spool_dir()
    stem = f"{safe_stem(batches[0].run_id)}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    lines = [encode_line(b) for b in batches]
    failure = ""
    for folder in (primary, fallback_dir(primary)):
        try:
            path = write_lines(prepare_folder(folder, primary), stem, lines)
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


def parse_line(line: bytes) -> Batch:
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


def lease_of(path: Path) -> tuple[str, int | None, str | None, float]:
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


def holder_alive(pid: int | None, host: str | None, since: float) -> bool:
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


def recover_leases(folder: Path) -> None:
    """Rename back to ``*.jsonl`` every claim (or half-written file) whose holder is gone."""
    now = time.time()
    for path in [*folder.glob("*.sending"), *folder.glob("*.tmp")]:
        try:
            stem, pid, host, since = lease_of(path)
        except OSError:
            continue  # gone already
        if now - since <= CLAIM_LEASE_S and holder_alive(pid, host, since):
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


def delivery_uri(stored: str, preferred: str | None) -> str:
    """Where to send a spooled batch: the stored URI (no credentials), or the same store as this
    process names it (``preferred``, then the current tracking URI), credentials included."""
    import mlflow

    for uri in (preferred, mlflow.get_tracking_uri()):
        if uri and uri != stored and redact_uri(uri) == redact_uri(stored):
            return uri
    return stored



_PERMANENT = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


def never_deliverable(batch: Batch, exc: BaseException) -> str | None:
    """Why ``batch`` can never be delivered, or ``None`` when a later sync may succeed.

    A deleted run is kept: ``restore_run`` brings it back. Only a run that does not
    exist, or a batch MLflow refuses for an active run, is given up.
    """
    code = error_code(exc, batch.tracking_uri)
    if code not in _PERMANENT:
        return None
    try:
        if is_http(batch.tracking_uri):
            stage = mlflow_request(batch.tracking_uri, "/api/2.0/mlflow/runs/get", "GET",
                          params={"run_id": batch.run_id}).json()["run"]["info"]["lifecycle_stage"]
        else:
            from mlflow.tracking import MlflowClient

            stage = MlflowClient(batch.tracking_uri).get_run(batch.run_id).info.lifecycle_stage
    except Exception as check:
        if error_code(check, batch.tracking_uri) in _PERMANENT:
            return f"run {batch.run_id} does not exist in {redact_uri(batch.tracking_uri)}: {short_error(exc)}"
        return None
    if stage == "active" and code == "INVALID_PARAMETER_VALUE":
        return f"MLflow refuses the batch for run {batch.run_id}: {short_error(exc)}"
    return None


def spool_folders() -> list[Path]:
    primary = spool_dir()
    fallback = fallback_dir(primary)
    folders = [primary] if primary.is_dir() else []
    try:
        check_fallback_base(fallback.parent)
        if fallback.is_dir():
            folders.append(fallback)
    except OSError:
        pass
    return folders


def sync_spool(tracking_uri: str | None = None) -> SyncResult:
    """Deliver spooled batches (only those for ``tracking_uri`` when given).

    Claims of processes that died mid-sync are recovered first. Batches are sent with
    this process's credentials for their store (see :func:`delivery_uri`).
    """
    total = SyncResult(0, 0, 0)
    for folder in spool_folders():
        recover_leases(folder)
        for path in sorted(folder.glob("*.jsonl")):
            done = sync_file(folder, path, tracking_uri)
            total = SyncResult(*(a + b for a, b in zip(total, done)))
    return total


def sync_file(folder: Path, path: Path, tracking_uri: str | None) -> SyncResult:
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
            batches.append(parse_line(line))
        except (ValueError, TypeError) as exc:  # UnicodeDecodeError and JSONDecodeError included
            corrupt.append((line, f"corrupt spool line: {short_error(exc)}"))
    if tracking_uri and any(redact_uri(b.tracking_uri) != redact_uri(tracking_uri) for b in batches):
        return SyncResult(0, len(raw), 0)  # another store's file: left to `mlflow-finops sync`
    claimed = folder / leased_name(path.stem, ".sending")
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
        target = replace(b, tracking_uri=delivery_uri(b.tracking_uri, tracking_uri))
        try:
            deliver(target)
            delivered += 1
            continue
        except Exception as exc:
            reason = never_deliverable(target, exc)
            if reason:
                corrupt.append((encode_line(b), reason))
                continue
            _log.info("spooled batch for run %s not delivered yet: %s", b.run_id, short_error(exc))
            remaining.append(b)
            if error_code(exc, target.tracking_uri) is None:
                unreachable = True  # no answer from MLflow: the rest would wait just as long
            else:
                held_runs.add(b.run_id)
    try:
        if corrupt:
            dead_letter(folder, path.stem, corrupt)
        if remaining and write_spool(remaining) is None:
            raise OSError("cannot rewrite the undelivered batches")
    except OSError as exc:
        _log.warning("mlflow-finops: spool file %s kept whole (%s); it is retried by the next sync",
                     path, exc)
        claimed.rename(path)  # nothing lost; what was delivered may be sent again
        return SyncResult(delivered, len(raw) - delivered, 0)
    claimed.unlink(missing_ok=True)
    return SyncResult(delivered, len(remaining), len(corrupt))


def dead_letter(folder: Path, stem: str, entries: list[tuple[bytes, str]]) -> None:
    """Keep batches that can never be delivered in ``dead/``, with a ``.reason`` file beside them.

    The ``.jsonl`` holds them as spooled: moved back into the spool folder, they are retried.
    """
    dead = private_folder(folder / DEAD_LETTER_DIR)
    path = write_lines(dead, f"{stem}-{uuid.uuid4().hex[:8]}", [line for line, _ in entries])
    reasons = [f"line {i}: {reason}".encode() for i, (_, reason) in enumerate(entries, 1)]
    write_lines(dead, path.stem, reasons, suffix=".reason")
    by_reason: dict[str, int] = {}
    for _, reason in entries:
        by_reason[reason] = by_reason.get(reason, 0) + 1
    for reason, count in by_reason.items():
        _log.warning("mlflow-finops: %d spooled cost batch(es) can never be delivered and were moved "
                     "to %s: %s", count, path, reason)

