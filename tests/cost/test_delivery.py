"""The outbox and the spool against a real SQLite MLflow store; failures are real ones.

A tracking server that does not answer is an unused port on 127.0.0.1; a store
that refuses a batch is MLflow refusing to log to a deleted run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import free_port
from mlflow.tracking import MlflowClient

from mlflow_finops.cost.delivery import Batch, Outbox, spool_dir, sync_spool
from mlflow_finops.names import ENV_HTTP_TIMEOUT_S, METRIC_COST_USD, TAG_TEAM


def new_run(client: MlflowClient) -> str:
    return client.create_run(client.get_experiment_by_name("Default").experiment_id).info.run_id


def cost_batch(uri: str, run_id: str, step: int, tags: dict[str, str] | None = None) -> Batch:
    return Batch(uri, run_id, [(METRIC_COST_USD, 0.5 * step, 1_700_000_000_000 + step, step)], tags or {})


def spooled() -> list[dict]:
    """Every batch in the spool folder, as written."""
    return [json.loads(line) for path in sorted(spool_dir().glob("*.jsonl")) for line in path.read_text().splitlines()]


def test_spool_folder_is_read_when_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_FINOPS_SPOOL_DIR", str(tmp_path / "elsewhere"))
    assert spool_dir() == tmp_path / "elsewhere"


def test_outbox_delivers_every_batch_in_order(sqlite_uri: str) -> None:
    client = MlflowClient()
    run_id = new_run(client)
    outbox = Outbox(min_interval_s=0).start()
    for step in range(5):
        outbox.put(cost_batch(sqlite_uri, run_id, step, {TAG_TEAM: f"t{step}"}))
    assert outbox.close(timeout_s=30) == 0
    history = client.get_metric_history(run_id, METRIC_COST_USD)
    assert sorted((h.step, h.value) for h in history) == [(s, 0.5 * s) for s in range(5)]
    assert client.get_run(run_id).data.tags[TAG_TEAM] == "t4"  # the latest tag wins
    assert spooled() == []


def test_a_batch_over_mlflows_request_limits_is_sent_in_chunks(sqlite_uri: str) -> None:
    client = MlflowClient()
    run_id = new_run(client)
    metrics = [(f"finops/m{i % 3}", float(i), 1_700_000_000_000 + i, i) for i in range(2500)]
    tags = {f"finops.t{i}": str(i) for i in range(150)}
    outbox = Outbox(min_interval_s=0).start()
    outbox.put(Batch(sqlite_uri, run_id, metrics, tags))
    assert outbox.close(timeout_s=60) == 0
    assert len(client.get_metric_history(run_id, "finops/m0")) == 834
    assert {k: v for k, v in client.get_run(run_id).data.tags.items() if k.startswith("finops.t")} == tags


def test_unreachable_server_spools_every_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_HTTP_TIMEOUT_S, "2")
    down = f"http://127.0.0.1:{free_port()}"
    outbox = Outbox(min_interval_s=0).start()
    for step in range(3):
        outbox.put(cost_batch(down, "run-a", step))
    assert outbox.close(timeout_s=3) == 3
    assert [(b["tracking_uri"], b["run_id"], b["metrics"][0][3]) for b in spooled()] == [
        (down, "run-a", 0), (down, "run-a", 1), (down, "run-a", 2)
    ]
    # A sync while the server is still down delivers nothing and keeps every batch.
    assert sync_spool() == (0, 3)
    assert [b["metrics"][0][3] for b in spooled()] == [0, 1, 2]


def test_outbox_delivers_what_it_can_and_spools_what_mlflow_refuses(sqlite_uri: str) -> None:
    client = MlflowClient()
    alive, deleted = new_run(client), new_run(client)
    client.delete_run(deleted)  # MLflow refuses to log to a deleted run
    outbox = Outbox(min_interval_s=0).start()
    outbox.put(cost_batch(sqlite_uri, alive, 1))
    outbox.put(cost_batch(sqlite_uri, deleted, 2))
    assert outbox.close(timeout_s=3) == 1
    assert [h.value for h in client.get_metric_history(alive, METRIC_COST_USD)] == [0.5]
    assert [b["run_id"] for b in spooled()] == [deleted]


def test_sync_keeps_what_it_cannot_deliver_and_delivers_it_later(sqlite_uri: str) -> None:
    client = MlflowClient()
    run_id = new_run(client)
    client.delete_run(run_id)
    outbox = Outbox(min_interval_s=0).start()
    for step in range(2):
        outbox.put(cost_batch(sqlite_uri, run_id, step))
    assert outbox.close(timeout_s=3) == 2
    other = f"http://127.0.0.1:{free_port()}"
    outbox = Outbox(min_interval_s=0).start()
    outbox.put(cost_batch(other, "run-elsewhere", 7))
    assert outbox.close(timeout_s=3) == 1

    assert sync_spool(sqlite_uri) == (0, 3)  # still refused; the other store's file untouched
    assert sorted(b["run_id"] for b in spooled()) == sorted([run_id, run_id, "run-elsewhere"])

    client.restore_run(run_id)
    assert sync_spool(sqlite_uri) == (2, 1)
    assert sorted(h.step for h in client.get_metric_history(run_id, METRIC_COST_USD)) == [0, 1]
    assert [b["run_id"] for b in spooled()] == ["run-elsewhere"]


def test_the_next_outbox_delivers_the_spool_for_its_store(sqlite_uri: str) -> None:
    client = MlflowClient()
    run_id = new_run(client)
    client.delete_run(run_id)
    outbox = Outbox(min_interval_s=0).start()
    outbox.put(cost_batch(sqlite_uri, run_id, 3))
    assert outbox.close(timeout_s=3) == 1
    client.restore_run(run_id)
    Outbox(min_interval_s=0).start(sync_spool_for=sqlite_uri).close(timeout_s=30)
    assert [h.value for h in client.get_metric_history(run_id, METRIC_COST_USD)] == [1.5]
    assert spooled() == []
