"""A drift check, recorded in MLflow: one run per check in the model's monitoring experiment.

The run carries the decision as tags, the scores and sizes as ``drift/*``
metrics, the policy as params, ``drift/columns.json`` and Evidently's HTML
reports; the check's own cost is tracked into it. Reading earlier checks back
(history, window claims) is :mod:`.monitoring`.
"""

from __future__ import annotations

import logging
import re
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from ..names import (
    TAG_DECISION,
    TAG_DRIFT_DETECTED,
    TAG_DRIFT_REASON,
    TAG_DRIFTED_COLUMNS,
    TAG_ERROR,
    TAG_MODEL,
    TAG_WINDOW_KEY,
    TAG_WORKLOAD,
    WORKLOAD_DRIFT_CHECK,
)
from ..policy import DriftPolicy
from ..store import get_or_create_experiment
from .monitoring import read_history
from .results import DriftDecision
from .rules import CheckHistory

__all__ = ["CheckRecorder", "CheckRun"]

log = logging.getLogger(__name__)

_BATCH = 900  # metrics per log_batch call (MLflow accepts 1000)
_TAG_CHARS = 5000  # MLflow's limit on a tag value


class CheckRecorder:
    """Writes one model's drift checks to its monitoring experiment, found (or made) on first use."""

    def __init__(self, model: str, experiment_name: str) -> None:
        self.model = model
        self.experiment_name = experiment_name
        self._client: MlflowClient | None = None
        self._exp_id: str | None = None

    def monitoring(self, create: bool = True) -> tuple[MlflowClient, str | None]:
        """MLflow client and the monitoring experiment's id; created when ``create``, else None if absent.

        Looked up again when the tracking URI changed since the last call.
        """
        client = MlflowClient()
        if self._client is None or client.tracking_uri != self._client.tracking_uri:
            self._client, self._exp_id = client, None
        if self._exp_id is None:
            if create:
                self._exp_id = get_or_create_experiment(client, self.experiment_name)
            else:
                exp = client.get_experiment_by_name(self.experiment_name)
                self._exp_id = exp.experiment_id if exp is not None and exp.lifecycle_stage == "active" else None
        return self._client, self._exp_id

    def history(self, n: int) -> CheckHistory:
        """The last retrain trigger and the verdicts of the last ``n`` checks (creates the experiment)."""
        client, exp_id = self.monitoring()
        return read_history(client, exp_id, self.model, n)

    @property
    def _run_client(self) -> MlflowClient:
        """The client that started the run (a run outlives a change of tracking URI)."""
        assert self._client is not None, "start() a run first"
        return self._client

    def start(self, window_key: str | None, extra_tags: Mapping[str, str] | None) -> str:
        """A running check run, tagged with the model, the workload and the window."""
        client, exp_id = self.monitoring()
        tags = {TAG_MODEL: self.model, TAG_WORKLOAD: WORKLOAD_DRIFT_CHECK, **(extra_tags or {})}
        if window_key:
            tags[TAG_WINDOW_KEY] = window_key
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
        return client.create_run(exp_id, run_name=f"drift-{self.model}-{stamp}", tags=tags).info.run_id

    def log(
        self, run_id: str, d: DriftDecision, policy: DriftPolicy, snapshots: list[tuple[str, Any]],
        check_seconds: float,
    ) -> None:
        """The decision's tags, metrics, params and files.

        ``snapshots`` are ``(name, report)``: an Evidently snapshot, or the path of its saved HTML.
        """
        client = self._run_client
        ts = int(time.time() * 1000)
        metrics = {
            "drift/share": d.drift_share,
            "drift/columns_drifted": float(len(d.drifted_columns)),
            "drift/columns_checked": float(len(d.columns)),
            "drift/rows_reference": float(d.rows_reference),
            "drift/rows_current": float(d.rows_current),
            "drift/retrain": float(d.retrain),
            "drift/rows_infinite_reference": float(d.rows_infinite_reference),
            "drift/rows_infinite_current": float(d.rows_infinite_current),
        }
        if d.sampled_rows_current:
            metrics["drift/rows_sampled_reference"] = float(d.sampled_rows_reference)
            metrics["drift/rows_sampled_current"] = float(d.sampled_rows_current)
        for c, r in d.columns.items():
            metrics[f"drift/column/{_metric_name(c)}"] = r.score
        if d.performance is not None:
            metrics[f"drift/performance/{d.performance.metric}_reference"] = d.performance.reference
            metrics[f"drift/performance/{d.performance.metric}_current"] = d.performance.current
        p = policy
        params = {
            "drift_share": p.drift_share, "min_rows": p.min_rows, "sample_rows": p.sample_rows,
            "correction": p.correction, "cooldown_hours": p.cooldown_hours,
            "persistence": f"{p.persistence_k}/{p.persistence_n}",
        }
        tags = {
            TAG_DECISION: d.decision,
            TAG_DRIFT_DETECTED: "true" if d.drift_detected else "false",
            TAG_DRIFT_REASON: d.reason[:_TAG_CHARS],
        }
        if d.drifted_columns:
            tags[TAG_DRIFTED_COLUMNS] = ",".join(d.drifted_columns)[:_TAG_CHARS]
        metrics["drift/check_seconds"] = check_seconds
        items = list(metrics.items())
        for i in range(0, len(items), _BATCH):
            client.log_batch(
                run_id,
                metrics=[Metric(k, float(v), ts, 0) for k, v in items[i : i + _BATCH]],
                params=[Param(k, str(v)) for k, v in params.items()] if i == 0 else [],
                tags=[RunTag(k, v) for k, v in tags.items()] if i == 0 else [],
            )
        if d.columns:
            rows = [asdict(r) for r in d.columns.values()]
            client.log_dict(run_id, {"decision": d.decision, "reason": d.reason, "columns": rows}, "drift/columns.json")
        with tempfile.TemporaryDirectory(prefix="finops-drift-") as tmp:
            for name, snap in snapshots:
                if isinstance(snap, Path):  # saved by the check's own process
                    path = snap
                else:
                    path = Path(tmp) / f"{name}.html"
                    snap.save_html(str(path))
                client.log_artifact(run_id, str(path), "drift")

    @contextmanager
    def tracking_cost(self, run_id: str, pid: int | None = None) -> Iterator[None]:
        """The check's own cost, into its run: this process's tree, or ``pid``'s."""
        try:
            from ..cost.tracker import track_cost
        except ImportError:  # pragma: no cover - tracker not installed
            yield
            return
        with track_cost(run_id=run_id, pid=pid):
            yield

    def finish(self, run_id: str) -> None:
        self._run_client.set_terminated(run_id, "FINISHED")

    def fail(self, run_id: str) -> None:
        """Mark a check that raised: FAILED, so it never counts as a judged window.

        Called while the check's own error propagates: a store that fails here
        too (the server is down) is logged, never raised over that error. A run
        left RUNNING is not FINISHED, so it is not a judged window either.
        """
        client = self._run_client
        try:
            client.set_tag(run_id, TAG_ERROR, "check failed; see the scheduler's log")
            client.set_terminated(run_id, "FAILED")
        except Exception as exc:  # noqa: BLE001 - cleanup: the check's own error is the one to report
            log.warning("could not mark drift check run %s FAILED (%s: %s)", run_id, type(exc).__name__, exc)


class CheckRun:
    """One check's run, opened in this process: the history is read and the run started at once.

    :class:`~.record_process.CheckRunProcess` is the same verbs, answered by a second process.
    """

    def __init__(
        self, recorder: CheckRecorder, history_n: int, window_key: str | None, extra_tags: Mapping[str, str] | None
    ) -> None:
        self._recorder = recorder
        self._history = recorder.history(history_n)
        self.run_id = recorder.start(window_key, extra_tags)

    def history(self) -> CheckHistory:
        return self._history

    def tracking_cost(self) -> Any:
        return self._recorder.tracking_cost(self.run_id)

    def log(self, d: DriftDecision, policy: DriftPolicy, snapshots: list[tuple[str, Any]], check_seconds: float) -> None:
        self._recorder.log(self.run_id, d, policy, snapshots, check_seconds)

    def finish(self) -> None:
        self._recorder.finish(self.run_id)

    def fail(self) -> None:
        self._recorder.fail(self.run_id)


def _metric_name(column: str) -> str:
    """A column name as MLflow accepts it in a metric key."""
    return re.sub(r"[^0-9A-Za-z_\-. /]", "_", str(column))
