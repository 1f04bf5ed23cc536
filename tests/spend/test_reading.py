"""A report read through the finops app's projection equals the one read through ``search_runs``.

A real ``mlflow server --app-name finops`` over SQLite (the projection) and a plain
``mlflow server`` (no such route: the report falls back); runs written with MLflow's client.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

import pytest
import requests
from mlflow.entities import Metric, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mlflow_finops.names import ENV_REPORT_READ, TAG_MODEL, TAG_NESTED_IN, TAG_TEAM
from mlflow_finops.spend import reading
from mlflow_finops.spend.focus import focus_rows, to_csv
from mlflow_finops.spend.report import build_report

from conftest import MlflowServer

NOW = datetime.now(timezone.utc)


@pytest.fixture(scope="module")
def finops_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    server = MlflowServer(tmp_path_factory.mktemp("finops-app"), app_name="finops")
    server.start()
    _seed(MlflowClient(server.url))
    yield server
    server.stop()


def _seed(client: MlflowClient) -> None:
    """Tracked, nested, untracked, deleted, NaN and infinite metrics, tags a report reads and some it does not."""
    for e, exp in enumerate(("train-a", "train-b")):
        exp_id = client.create_experiment(exp)
        parent = None
        for i in range(7):
            start = NOW - timedelta(days=i * 3, minutes=e)
            tags = {TAG_TEAM: ("growth", "risk")[i % 2], TAG_MODEL: ("churn", "fraud", "eta")[i % 3],
                    "finops.price_profile": "local", "other": "x" * 10}
            if i == 4 and parent:
                tags[TAG_NESTED_IN] = parent
            run = client.create_run(exp_id, start_time=int(start.timestamp() * 1000), run_name=f"{exp}-{i}",
                                    tags=tags)
            ms = int(start.timestamp() * 1000)
            metrics = [Metric("accuracy", 0.5 + i / 20, ms, 0), Metric("loss", 1.0 - i / 10, ms, 0),
                       Metric("accuracy", 0.1, ms - 1, -1)]  # an older step: the latest value counts
            if i != 5:  # run 5 is untracked
                metrics += [Metric("finops/cost_usd", 0.25 * (i + 1) + e, ms, 0),
                            Metric("finops/cpu_core_hours", 0.01 * i, ms, 0),
                            Metric("finops/gpu_hours", math.nan, ms, 0),
                            Metric("finops/energy_kwh", math.inf if i == 2 else 0.003, ms, 0),
                            Metric("finops/ram_gb_hours", 0.5, ms, 0),  # a figure no report reads
                            Metric("system/cpu_utilization_percentage", 40.0, ms, 0)]
            if i == 6:
                metrics.append(Metric("f1", math.nan, ms, 0))
            client.log_batch(run.info.run_id, metrics=metrics, tags=[RunTag("mlflow.note.content", "n")])
            client.set_terminated(run.info.run_id, "FINISHED", end_time=ms + 60_000 * (i + 1))
            if i == 0:
                parent = run.info.run_id
            if i == 3 and e == 1:
                client.delete_run(run.info.run_id)
    same = client.create_run(client.get_experiment_by_name("train-a").experiment_id,
                             start_time=int(NOW.timestamp() * 1000) - 1, run_name="same-start")
    client.log_metric(same.info.run_id, "finops/cost_usd", 0.5)


def _both(monkeypatch: pytest.MonkeyPatch, uri: str, **kwargs) -> tuple[dict, dict, int]:
    client = MlflowClient(uri)
    monkeypatch.setenv(ENV_REPORT_READ, "auto")
    fast = build_report(client, **kwargs)
    monkeypatch.setenv(ENV_REPORT_READ, "search_runs")
    slow = build_report(client, **kwargs)
    return json.loads(fast.to_json()), json.loads(slow.to_json()), len(fast.runs)


@pytest.mark.parametrize("kwargs", [
    {},
    {"experiments": ["train-b"]},
    {"team": "growth"},
    {"model": "fraud", "since": NOW - timedelta(days=10)},
    {"until": NOW - timedelta(days=4), "include_deleted": True},
    {"metric": "loss"},
], ids=["all", "experiment", "team", "model-since", "until-deleted", "metric"])
def test_the_projection_gives_the_report_search_runs_gives(finops_server: MlflowServer,
                                                          monkeypatch: pytest.MonkeyPatch, kwargs: dict) -> None:
    fast, slow, n = _both(monkeypatch, finops_server.url, **kwargs)
    assert n > 0
    assert fast == slow


def test_the_projection_is_what_was_asked_for(finops_server: MlflowServer) -> None:
    body = {"experiment_ids": [MlflowClient(finops_server.url).get_experiment_by_name("train-a").experiment_id],
            "view": "active", "team": "risk"}
    lines = requests.post(finops_server.url + reading.ROUTE, json=body, timeout=30).text.splitlines()
    head, *runs, end = (json.loads(line) for line in lines)
    assert head == {"format": reading.FORMAT} and end == {"end": True, "runs": len(runs)} and len(runs) == 3
    assert all(r[7][TAG_TEAM] == "risk" and "other" not in r[7] for r in runs)  # only the tags a report reads
    assert [r[3] for r in runs] == sorted((r[3] for r in runs), reverse=True)  # newest first
    assert all("f1" not in r[6] and r[6]["accuracy"] != 0.1 for r in runs)  # no NaN; the latest step
    # what a report reads, nothing more: its finops/* figures and the model metrics
    assert {k for r in runs for k in r[6]} == {"accuracy", "loss", "finops/cost_usd", "finops/cpu_core_hours",
                                               "finops/energy_kwh"}
    bad = requests.post(finops_server.url + reading.ROUTE, json={"view": "some"}, timeout=30)
    assert bad.status_code == 400 and "bad report-runs request" in bad.json()["error"]


def test_focus_tags_come_through_the_projection(finops_server: MlflowServer, monkeypatch: pytest.MonkeyPatch) -> None:
    client = MlflowClient(finops_server.url)
    out = []
    for how in ("auto", "search_runs"):
        monkeypatch.setenv(ENV_REPORT_READ, how)
        rep = build_report(client, keep_tags=True)
        out.append(to_csv(focus_rows(rep.runs, rep.tags)))
    assert out[0] == out[1] and "finops.price_profile" in out[0]


def test_a_server_without_the_app_is_read_through_search_runs(tmp_path: Path, finops_server: MlflowServer,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    server = MlflowServer(tmp_path)  # plain `mlflow server`: no /finops/ routes
    server.start()
    try:
        plain = MlflowClient(server.url)
        _seed(plain)
        monkeypatch.setenv(ENV_REPORT_READ, "auto")
        with caplog.at_level("INFO", logger="mlflow_finops.spend.reading"):
            rep = build_report(plain)
    finally:
        server.stop()
    assert any("answered 404" in r.message for r in caplog.records)
    assert len(rep.runs) == 14  # 7 + 6 active runs (one of train-b's is deleted) + "same-start"
    fast = build_report(MlflowClient(finops_server.url))
    def figures(report) -> dict:  # run ids differ between the two servers; everything else is the same
        return {level: [(g.key, g.runs, g.untracked, g.nested, round(g.cost_usd, 9), g.best_metric)
                        for g in report.groups(level)] for level in ("experiment", "model", "team")}

    assert figures(rep) == figures(fast)


class _CutShort:
    """A stream that ends before its last line, as when the server dies mid-answer (injected fault)."""

    status_code = 200

    def __init__(self, lines: list[bytes]) -> None:
        self._lines = lines

    def iter_lines(self, chunk_size: int = 512):
        return iter(self._lines)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


def test_an_answer_cut_short_is_an_error_not_a_smaller_report() -> None:
    run = json.dumps(["r1", "n", "1", 0, None, "FINISHED", {"finops/cost_usd": 1.0}, {}]).encode()
    got = []
    with pytest.raises(MlflowException, match="ended after 1 run"):
        for item in reading._projected(_CutShort([b'{"format": 1}', run]), {"1": "e"}, False, 10, got.append):
            pass
    whole = _CutShort([b'{"format": 1}', run, b'{"end": true, "runs": 1}'])
    assert [r.run_id for r, _, _ in reading._projected(whole, {"1": "e"}, False, 10, got.append)] == ["r1"]
    with pytest.raises(MlflowException, match="unknown answer format"):
        list(reading._projected(_CutShort([b'{"format": 99}']), {}, False, 10, got.append))


def test_a_local_store_is_read_through_search_runs(tmp_path: Path) -> None:
    assert reading._host_creds(MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")) is None
