"""The trackers sampling in this process, and how they end when the process does.

A process has at most one *root* tracker (the one ``autolog()`` or the outermost
``track_cost()`` started: nested runs and inner blocks reuse it), and any number
of trackers sampling other process trees. All of them are flushed at exit.

A scheduler stops training with SIGTERM first: the first tracker started in the
main thread installs a handler that flushes (final sample, delivery, the run
ended KILLED) and then does what was done before (a user's handler runs; the
default one still ends the process). SIGKILL leaves the run RUNNING: the next
tracked run on the host ends it (:mod:`mlflow_finops.cost.orphans`).

Trackers are seen through :class:`LiveTracker` only, so this module sits below
the tracker's own.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
from typing import Any, Callable, Protocol

import mlflow

from .orphans import END_SIGTERM

_log = logging.getLogger(__name__)

__all__ = ["LiveTracker", "state_lock", "guard", "root", "set_root", "release_root", "stop_root",
           "add_running", "discard_running", "install_sigterm_handler"]


class LiveTracker(Protocol):
    """What ending a tracker from here needs of it."""

    run_id: str
    tracking_uri: str
    running: bool
    end_reason: str | None
    log_charts: bool
    _segments: dict[str, Any]

    def stop(self, status: str | None = None) -> Any: ...


state_lock = threading.RLock()  # guards the root, the running set and each tracker's running flag
_root: LiveTracker | None = None  # the one live tracker of this process
_running: set[LiveTracker] = set()  # every tracker sampling now (a SIGTERM flushes them all)
_hook_errors = 0
_sigterm_previous: Any = None  # the SIGTERM handler ours replaced and chains to


def guard(fn: Callable[..., Any], *args: Any) -> None:
    """Run a hook; never let it reach the training code."""
    global _hook_errors
    try:
        fn(*args)
    except Exception:
        _hook_errors += 1
        if _hook_errors == 1:
            _log.warning("mlflow-finops: cost tracking hook failed (training continues)", exc_info=True)


def root() -> Any:
    """The root tracker, sampling or not (None when there is none)."""
    return _root


def set_root(tracker: LiveTracker | None, *, only_if_free: bool = False) -> bool:
    """Make ``tracker`` the root (``only_if_free``: only when there is none); whether it is now."""
    global _root
    with state_lock:
        if only_if_free and _root is not None:
            return _root is tracker
        _root = tracker
        return True


def release_root(tracker: LiveTracker) -> None:
    """No root any more, if ``tracker`` was it."""
    global _root
    with state_lock:
        if _root is tracker:
            _root = None


def stop_root(status: str | None = None) -> None:
    """Stop the root tracker (final sample and delivery), if there is one; ``status``: its run ends so."""
    global _root
    with state_lock:
        tracker, _root = _root, None
    if tracker is not None:
        tracker.stop(status)


def add_running(tracker: LiveTracker) -> None:
    _running.add(tracker)


def discard_running(tracker: LiveTracker) -> None:
    _running.discard(tracker)


@atexit.register
def _flush_at_exit() -> None:
    guard(stop_root, "FINISHED")


def install_sigterm_handler() -> None:
    """Flush on SIGTERM, then chain to the handler in place (once; main thread only, where Python
    allows handlers). A process that ignores SIGTERM goes on ignoring it."""
    global _sigterm_previous
    if threading.current_thread() is not threading.main_thread():
        return
    current = signal.getsignal(signal.SIGTERM)
    if current is _on_sigterm or current is None or current == signal.SIG_IGN:
        return  # None: a handler set outside Python, which we cannot chain to
    _sigterm_previous = current
    signal.signal(signal.SIGTERM, _on_sigterm)


def _on_sigterm(signum: int, frame: Any) -> None:
    guard(_flush_killed)
    previous = _sigterm_previous
    if callable(previous):
        previous(signum, frame)
        return
    # SIG_DFL: die of SIGTERM, as the process would have without tracking.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _flush_killed() -> None:
    """Every live tracker: final sample, delivery (or spool), and its runs ended KILLED."""
    for tracker in list(_running):
        tracker.end_reason = END_SIGTERM
        tracker.log_charts = False  # the process is about to end
        ours = {tracker.run_id, *tracker._segments}
        release_root(tracker)
        tracker.stop("KILLED")
        ended = False
        while (active := mlflow.active_run()) is not None and active.info.run_id in ours:
            ended |= active.info.run_id == tracker.run_id
            mlflow.end_run("KILLED")
        if not ended:  # not on this thread's run stack (track_cost(run_id=...))
            mlflow.tracking.MlflowClient(tracker.tracking_uri).set_terminated(tracker.run_id, "KILLED")
