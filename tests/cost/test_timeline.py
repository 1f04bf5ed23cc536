"""The per-run cost timeline chart: drawn from a real tracker's history, logged where the tracker logs it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

import mlflow_finops
from mlflow_finops.cost.timeline import cost_timeline, log_cost_timeline
from mlflow_finops.names import ARTIFACT_TIMELINE_HTML, ARTIFACT_TIMELINE_PNG

PNG = b"\x89PNG\r\n\x1a\n"


def burn(seconds: float) -> None:
    deadline = time.process_time() + seconds
    while time.process_time() < deadline:
        pass


def _tracked_history() -> tuple[str, list]:
    with mlflow_finops.track_cost(interval_s=0.05) as tracker:
        for _ in range(3):
            burn(0.15)
            tracker.sample_now()  # at least these, however loaded the machine is
    return tracker.run_id, list(tracker.history)


def test_cost_timeline_from_a_real_tracker(sqlite_uri: str) -> None:
    mlflow.set_experiment("timeline")  # not the experiment id a previous test left active
    _, history = _tracked_history()
    assert len(history) >= 3
    png, page = cost_timeline(history)
    assert png.startswith(PNG) and len(png) > 10_000
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page and "usage cost" in page
    png, page = cost_timeline([])  # a run that ended before its first sample still gets a picture
    assert png.startswith(PNG) and "no cost samples yet" in page


def test_log_cost_timeline_lands_at_the_artifact_names(sqlite_uri: str, tmp_path: Path) -> None:
    mlflow.set_experiment("timeline-logged")
    run_id, history = _tracked_history()
    log_cost_timeline(history, run_id, title="my run")
    client = MlflowClient()
    assert {a.path for a in client.list_artifacts(run_id, "finops")} == {ARTIFACT_TIMELINE_PNG, ARTIFACT_TIMELINE_HTML}
    assert Path(client.download_artifacts(run_id, ARTIFACT_TIMELINE_PNG, str(tmp_path))).read_bytes().startswith(PNG)
    page = Path(client.download_artifacts(run_id, ARTIFACT_TIMELINE_HTML, str(tmp_path))).read_text()
    assert "<title>my run</title>" in page


def test_importing_the_tracker_and_chart_modules_leaves_matplotlib_unloaded() -> None:
    """matplotlib costs ~1 s of CPU to import: only a run that draws its chart may pay it."""
    code = (
        "import sys\n"
        "import mlflow_finops, mlflow_finops.cost.tracker, mlflow_finops.cost.timeline, mlflow_finops.charting\n"
        "import mlflow_finops.spend.charts, mlflow_finops.spend.report, mlflow_finops.cli\n"
        "print('matplotlib' in sys.modules)\n"
        "mlflow_finops.cost.timeline.cost_timeline([])\n"
        "print('matplotlib' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True"]  # not on import; loaded once a chart is drawn
