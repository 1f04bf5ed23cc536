"""window_state's read of the cluster when it fails: the window closes and says why, nothing raises.

The faults are real HTTP answers from a local server (an error status, an answer
without Ray's fields, no answer in time). What a healthy cluster answers is read
from a real Ray cluster in tests/test_ray_cluster.py.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import pytest
import requests

from mlflow_finops.policy import OffPeakRange, WindowPolicy
from mlflow_finops.retrain.windows import cluster_free_resources, free_resources, judge_window, window_state

MONDAY_3AM = datetime(2026, 1, 5, 3, 0, 30, tzinfo=timezone.utc)
ONE_MINUTE = WindowPolicy(off_peak=[OffPeakRange(days=["mon"], start="03:00", end="03:01")])


class Faulty(BaseHTTPRequestHandler):
    """Answers every GET with the fault the server was made for."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        fault = self.server.fault  # type: ignore[attr-defined]
        if fault == "slow":
            time.sleep(2)
        if fault == "503":
            self.send_response(503)
            self.end_headers()
            return
        body = json.dumps({"result": True, "msg": "not the cluster status"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def serve(fault: str) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Faulty)
    server.fault = fault  # type: ignore[attr-defined]
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def busy() -> Iterator[str]:
    yield from serve("503")


@pytest.fixture
def foreign() -> Iterator[str]:
    yield from serve("foreign")


@pytest.fixture
def slow() -> Iterator[str]:
    yield from serve("slow")


def test_an_error_status_closes_the_window_with_the_status(busy: str) -> None:
    state = window_state(WindowPolicy(min_free_cpus=1), busy, MONDAY_3AM)
    assert (state.open, state.off_peak, state.free_cpus, state.free_gpus) == (False, True, None, None)
    assert state.reason == ("cannot read the cluster's free resources: 503 Server Error: Service Unavailable "
                            f"for url: {busy}/api/cluster_status")


def test_an_answer_without_rays_fields_closes_the_window(foreign: str) -> None:
    state = window_state(WindowPolicy(min_free_gpus=1), foreign + "/", MONDAY_3AM)
    assert (state.open, state.reason) == (False, "cannot read the cluster's free resources: 'data'")


def test_the_read_gives_up_at_its_timeout(slow: str) -> None:
    t0 = time.monotonic()
    with pytest.raises(requests.Timeout):
        cluster_free_resources(slow, timeout_s=0.3)
    assert time.monotonic() - t0 < 1.5


def test_the_clock_given_is_the_one_judged(busy: str) -> None:
    # open only in one minute a week: the given clock, not the real one, decides
    assert window_state(ONE_MINUTE, None, MONDAY_3AM).open
    state = window_state(WindowPolicy(off_peak=ONE_MINUTE.off_peak, min_free_cpus=1), busy, MONDAY_3AM)
    assert state.off_peak and not state.open
    state = window_state(WindowPolicy(off_peak=ONE_MINUTE.off_peak, min_free_cpus=1), None, MONDAY_3AM)
    assert (state.off_peak, state.reason) == (True, "no Ray cluster to read free resources from")


# ------------------------------------------------------------------ the numbers given to the rule
@pytest.mark.parametrize("free_cpus, free_gpus", [(None, None), (4.0, None), (None, 4.0)])
def test_either_figure_unknown_closes_a_window_that_needs_the_cluster(free_cpus: float | None,
                                                                      free_gpus: float | None) -> None:
    state = judge_window(WindowPolicy(min_free_cpus=1, min_free_gpus=1), MONDAY_3AM, free_cpus, free_gpus)
    assert (state.open, state.reason) == (False, "the cluster's free resources are unknown")


@pytest.mark.parametrize("report, free", [
    ({}, (0.0, 0.0)),  # no usage reported: nothing free
    ({"usage": {"CPU": [1.0, 4.0, "extra"], "GPU": [0.25, 1.0, 9]}}, (3.0, 0.75)),  # [used, total, ...]
])
def test_free_resources_reads_used_and_total_only(report: dict, free: tuple[float, float]) -> None:
    assert free_resources({"data": {"clusterStatus": {"loadMetricsReport": report}}}) == free
