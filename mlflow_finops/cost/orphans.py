"""Runs whose tracked process died without ending them (SIGKILL, the OOM killer, a lost machine).

Such a process runs no handler: its run stays RUNNING, with the cost of its last
delivery, forever. So a tracked run carries its process (tags: the hostname, pid,
create time and pid namespace) and ``finops.tracking_status=live`` while a tracker
samples it. The next tracked run on the same host, and ``mlflow-finops sync``, look for
live RUNNING runs of this host whose process is gone (or whose pid now belongs to
another process) and end them KILLED, keeping the cost they last delivered and saying
what happened. One ``search_runs`` with a tag filter, bounded, finds them.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import psutil
from mlflow.entities import Run, RunTag, ViewType
from mlflow.tracking import MlflowClient

from ..money import format_usd
from ..names import (
    METRIC_COST_USD,
    TAG_END_REASON,
    TAG_MACHINE_HOSTNAME,
    TAG_PROCESS_PID,
    TAG_PROCESS_PID_NS,
    TAG_PROCESS_STARTED,
    TAG_TRACKING_ERROR,
    TAG_TRACKING_STATUS,
    TRACKING_DEGRADED,
    TRACKING_LIVE,
)
from ..store import all_experiment_ids, quote
from .spool import spool_dir
from .process import machine_info

_log = logging.getLogger(__name__)

__all__ = ["END_SIGTERM", "END_PROCESS_DIED", "process_tags", "end_orphaned_runs"]

END_SIGTERM = "sigterm"  # values of finops.end_reason
END_PROCESS_DIED = "process_died"
SCAN_LIMIT = 100  # runs looked at per scan: the oldest first, the rest on the next scan
# psutil's create time is boot time (whole seconds) + ticks: stable for one process, so a
# difference means another process holds the pid now.
SAME_PROCESS_S = 0.5


def process_tags() -> dict[str, str]:
    """This process, as tags of the run it tracks (the hostname tag names the host)."""
    me = psutil.Process()
    return {
        TAG_MACHINE_HOSTNAME: machine_info().hostname,
        TAG_PROCESS_PID: str(me.pid),
        TAG_PROCESS_STARTED: f"{me.create_time():.2f}",
        TAG_PROCESS_PID_NS: _pid_namespace(),
    }


def _pid_namespace() -> str:
    """``pid:[inode]``: containers sharing a hostname have their own pids, so their runs are not judged here."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _alive(pid: int, started: float) -> bool:
    try:
        return abs(psutil.Process(pid).create_time() - started) < SAME_PROCESS_S
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:  # there, but not readable: not ours to judge
        return True


def end_orphaned_runs(tracking_uri: str | None = None, *, by: str = "mlflow-finops sync",
                      max_results: int = SCAN_LIMIT) -> list[str]:
    """End KILLED the live runs of this host whose tracked process is gone; their ids.

    Each keeps the cost it last delivered and gets ``finops.tracking_status=degraded``,
    ``finops.end_reason=process_died`` and the story in ``finops.tracking_error``.
    A run with batches still in the spool is left alone: ``sync`` delivers them first.
    """
    client = MlflowClient(tracking_uri)
    host = process_tags()[TAG_MACHINE_HOSTNAME]
    host_literal = quote(host)
    if host_literal is None:
        return []
    experiment_ids = all_experiment_ids(client, ViewType.ACTIVE_ONLY)
    if not experiment_ids:
        return []
    runs = client.search_runs(
        experiment_ids,
        f"attributes.status = 'RUNNING' and tags.`{TAG_TRACKING_STATUS}` = '{TRACKING_LIVE}' "
        f"and tags.`{TAG_MACHINE_HOSTNAME}` = {host_literal}",
        max_results=max_results,
        order_by=["attributes.start_time ASC"],
    )
    namespace = _pid_namespace()
    spooled: str | None = None
    ended = []
    for run in runs:
        tags = run.data.tags
        try:
            pid, started = int(tags[TAG_PROCESS_PID]), float(tags[TAG_PROCESS_STARTED])
        except (KeyError, ValueError):
            continue  # tracked by a version that did not record its process
        if tags.get(TAG_PROCESS_PID_NS, "") != namespace or _alive(pid, started):
            continue
        if spooled is None:
            spooled = _spool_text()
        if run.info.run_id in spooled:
            continue
        _end_killed(client, run, pid, host, by)
        ended.append(run.info.run_id)
    return ended


def _spool_text() -> str:
    """Everything waiting in the spool folder (normally nothing), to tell which runs it holds.

    Its top level only: what is there is still to be delivered (dead letters are not)."""
    parts = []
    try:
        files = [p for p in Path(spool_dir()).iterdir() if p.is_file()]
    except OSError:
        return ""
    for path in files:
        try:
            parts.append(path.read_text(errors="replace"))
        except OSError:
            continue
    return "\n".join(parts)


def _end_killed(client: MlflowClient, run: Run, pid: int, host: str, by: str) -> None:
    info, data = run.info, run.data
    history = client.get_metric_history(info.run_id, METRIC_COST_USD)
    last_ms = max((m.timestamp for m in history), default=info.start_time)
    cost = data.metrics.get(METRIC_COST_USD)
    why = (
        f"process {pid} on {host} died without ending this run (SIGKILL, out of memory, machine lost); "
        f"ended KILLED by {by}, with the cost it last delivered ({format_usd(cost)}): "
        "its usage after that is missing"
    )
    client.log_batch(info.run_id, tags=[
        RunTag(TAG_TRACKING_STATUS, TRACKING_DEGRADED),
        RunTag(TAG_TRACKING_ERROR, why),
        RunTag(TAG_END_REASON, END_PROCESS_DIED),
    ])
    client.set_terminated(info.run_id, "KILLED", end_time=max(last_ms, info.start_time))
    _log.warning("mlflow-finops: run %s: %s", info.run_id, why)
