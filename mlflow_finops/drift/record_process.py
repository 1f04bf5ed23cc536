"""A drift check's MLflow run, written by a second process while the first one judges.

A cold ``mlflow-finops drift check`` spends ~3.5 s starting MLflow (importing it,
opening the store, reading the model's earlier checks, starting the run) before
its decision can be logged, and none of that needs the data. The decision needs
MLflow only at its very end (persistence and cooldown read the history). So the
CLI starts this module as a child process first thing: it starts MLflow while
the parent reads and judges the data, on the machine's other core, then logs
the decision the parent sends it. The run's cost is the whole command's: the
parent's process tree (the child is in it) from the parent's start (a gate's
later checks in the same process: from their own start).

Parent side: :class:`CheckRunProcess`, the verbs of :class:`~.record.CheckRun`.
Child side: ``python -m mlflow_finops.drift.record_process``; one JSON message
per line, requests on its stdin, replies on its stdout.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any, Iterator, Mapping

from ..names import ENV_CHARGE_PROCESS_START
from ..policy import DriftPolicy
from .results import DriftDecision
from .rules import CheckHistory

__all__ = ["CheckRunProcess", "RecorderProcessError"]

log = logging.getLogger(__name__)


class RecorderProcessError(RuntimeError):
    """The logging process could not open or log the check's run (its error, or how it ended)."""


class CheckRunProcess:
    """One check's run, written by a child process started here; its replies are awaited only when needed.

    Made before the data is read, so that the child starts MLflow meanwhile;
    ``open`` then asks it to read the history and start the run. ``history()``
    and ``run_id`` wait for that; ``log`` hands it the decision; ``finish`` waits
    until it is logged and the run ended. ``fail`` never raises (it runs while
    the check's own error propagates); ``discard`` ends a child never opened.
    """

    def __init__(self, model: str, experiment: str, *, whole_process: bool = True) -> None:
        """``whole_process``: the run is charged this process from its start (it exists for this
        check), else from the run's start."""
        env = {k: v for k, v in os.environ.items() if k != ENV_CHARGE_PROCESS_START}
        if whole_process:
            env[ENV_CHARGE_PROCESS_START] = "true"
        if "mlflow" in sys.modules:  # a store set in code (mlflow.set_tracking_uri) is the one to log to
            env["MLFLOW_TRACKING_URI"] = sys.modules["mlflow"].get_tracking_uri()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", __name__], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True,
        )
        self._reports = tempfile.TemporaryDirectory(prefix="finops-drift-")
        self._opened: dict[str, Any] | None = None
        self._logged = False
        self._send({"op": "start", "model": model, "experiment": experiment, "pid": os.getpid(),
                    "log_level": logging.getLogger().getEffectiveLevel()})

    def open(self, history_n: int, window_key: str | None, extra_tags: Mapping[str, str] | None) -> "CheckRunProcess":
        """Read the last ``history_n`` checks and start the run (in the child; this returns at once)."""
        self._send({"op": "open", "history_n": history_n, "window_key": window_key,
                    "extra_tags": dict(extra_tags or {})})
        return self

    def discard(self) -> None:
        """End a child that was never opened (the check stopped first): nothing was written."""
        self._proc.kill()
        self._close(timeout=10)

    # ------------------------------------------------------------ the verbs of CheckRun
    @property
    def run_id(self) -> str:
        return str(self._open()["run_id"])

    def history(self) -> CheckHistory:
        h = self._open()["history"]
        return CheckHistory(h["last_retrain_run_id"], h["last_retrain_ms"], list(h["recent_drift"]))

    def tracking_cost(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()  # the child tracks the whole tree, this process included

    def log(self, d: DriftDecision, policy: DriftPolicy, snapshots: list[tuple[str, Any]], check_seconds: float) -> None:
        self._open()
        files = []
        for name, snap in snapshots:
            path = Path(self._reports.name) / f"{name}.html"
            snap.save_html(str(path))
            files.append((name, str(path)))
        self._send({"op": "log", "decision": d.to_dict(), "policy": policy.model_dump(mode="json"),
                    "reports": files, "check_seconds": check_seconds})
        self._logged = True

    def finish(self) -> None:
        try:
            self._receive()  # logged, and the run ended
        finally:
            self._close()

    def fail(self) -> None:
        try:
            if not self._logged:
                self._send({"op": "fail"})
        except (OSError, ValueError):  # the child is gone: it ends the run itself
            pass
        finally:
            self._close(timeout=30)

    # ------------------------------------------------------------ the pipe
    def _open(self) -> dict[str, Any]:
        if self._opened is None:
            self._opened = self._receive()
        return self._opened

    def _send(self, message: dict[str, Any]) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(message) + "\n")
        self._proc.stdin.flush()

    def _receive(self) -> dict[str, Any]:
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            code = self._proc.wait()
            raise RecorderProcessError(f"the check's MLflow logging process ended (exit {code}) before it answered")
        message = json.loads(line)
        if "error" in message:
            raise RecorderProcessError(message["error"])
        return message

    def _close(self, timeout: float = 60) -> None:
        with contextlib.suppress(OSError, ValueError):
            if self._proc.stdin is not None:
                self._proc.stdin.close()
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("the drift check's logging process did not end in %.0f s: killed", timeout)
            self._proc.kill()
            self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        self._reports.cleanup()


# ==================================================================== the child
def _serve(requests: IO[str], replies: IO[str]) -> int:
    """Open the run, then log what the parent sends (or mark the run FAILED). Exit status."""
    def read() -> dict[str, Any] | None:
        line = requests.readline()
        return json.loads(line) if line else None  # None: the parent is gone

    def reply(message: dict[str, Any]) -> None:
        replies.write(json.dumps(message) + "\n")
        replies.flush()

    started = read()
    if started is None:
        return 0
    logging.basicConfig(level=started["log_level"], format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .record import CheckRecorder

    recorder = CheckRecorder(started["model"], started["experiment"])
    try:
        recorder.monitoring(create=False)  # MLflow imported, the store open: all before the data is judged
    except Exception:  # noqa: BLE001 - reported by the first call below that needs the store
        log.debug("the store did not open yet", exc_info=True)
    opened = read()
    if opened is None:  # the check stopped before it opened its run (bad input): nothing to write
        return 0
    try:
        history = recorder.history(opened["history_n"])
        run_id = recorder.start(opened["window_key"], opened["extra_tags"])
    except Exception as exc:  # noqa: BLE001 - the parent reports it
        reply({"error": f"{type(exc).__name__}: {exc}"})
        return 1
    reply({"run_id": run_id, "history": asdict(history)})
    try:
        with recorder.tracking_cost(run_id, pid=started["pid"]):
            request = read()
            logged = request is not None and request["op"] == "log"  # else: "fail", or the parent is gone
            if logged:
                recorder.log(
                    run_id, DriftDecision.from_dict(request["decision"]),
                    DriftPolicy.model_validate(request["policy"]),
                    [(name, Path(path)) for name, path in request["reports"]], request["check_seconds"],
                )
        if logged:
            recorder.finish(run_id)
            reply({"done": run_id})
            return 0
    except Exception as exc:  # noqa: BLE001 - the parent reports it
        log.debug("logging drift check run %s failed", run_id, exc_info=True)
        recorder.fail(run_id)
        with contextlib.suppress(OSError, ValueError):
            reply({"error": f"{type(exc).__name__}: {exc}"})
        return 1
    recorder.fail(run_id)  # the check raised, or its process went away
    return 1


@contextlib.contextmanager
def _replies_on_stdout() -> Iterator[IO[str]]:
    """The protocol owns fd 1; anything else this process prints goes to stderr."""
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    try:
        yield replies
    finally:
        replies.close()


def main() -> int:
    # Ctrl-C reaches the whole process group: the parent decides (it sends "fail", or its exit
    # closes the pipe), so that the run is always ended, never left half-written by an interrupt.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with _replies_on_stdout() as replies:
        return _serve(sys.stdin, replies)


if __name__ == "__main__":
    code = main()
    # Everything is written and the parent waits for this exit: tearing down MLflow's and
    # SQLAlchemy's modules would add ~0.6 s to the command for nothing.
    logging.shutdown()
    sys.stderr.flush()
    os._exit(code)
