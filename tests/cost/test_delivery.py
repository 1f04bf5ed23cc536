"""The outbox and the spool against a real SQLite MLflow store; failures are real ones.

A tracking server that does not answer is an unused port on 127.0.0.1; a store
that refuses a batch is MLflow refusing to log to a deleted run.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mlflow_finops.ray_cluster import free_ports

from mlflow_finops.cost.delivery import Outbox
from mlflow_finops.cost.spool import CLAIM_LEASE_S, DEAD_LETTER_DIR, HOST, spool_dir, sync_spool, write_spool
from mlflow_finops.cost.transport import Batch, redact_uri
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
    down = f"http://127.0.0.1:{free_ports(1)[0]}"
    outbox = Outbox(min_interval_s=0).start()
    for step in range(3):
        outbox.put(cost_batch(down, "run-a", step))
    assert outbox.close(timeout_s=3) == 3
    assert [(b["tracking_uri"], b["run_id"], b["metrics"][0][3]) for b in spooled()] == [
        (down, "run-a", 0), (down, "run-a", 1), (down, "run-a", 2)
    ]
    # A sync while the server is still down delivers nothing and keeps every batch.
    assert sync_spool() == (0, 3, 0)
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
    other = f"http://127.0.0.1:{free_ports(1)[0]}"
    outbox = Outbox(min_interval_s=0).start()
    outbox.put(cost_batch(other, "run-elsewhere", 7))
    assert outbox.close(timeout_s=3) == 1

    assert sync_spool(sqlite_uri) == (0, 3, 0)  # still refused; the other store's file untouched
    assert sorted(b["run_id"] for b in spooled()) == sorted([run_id, run_id, "run-elsewhere"])

    client.restore_run(run_id)
    assert sync_spool(sqlite_uri) == (2, 1, 0)
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


# ------------------------------------------------------------ claims and their leases
def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped): nobody holds its claims."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def spool_one(uri: str, run_id: str, step: int) -> Path:
    path = write_spool([cost_batch(uri, run_id, step)])
    assert path is not None
    return path


@pytest.mark.parametrize("claim", ["dead pid on this host", "earlier version's claim", "lease expired"])
def test_a_claim_whose_sync_died_is_recovered_and_delivered(sqlite_uri: str, claim: str) -> None:
    client = MlflowClient()
    run_id = new_run(client)
    path = spool_one(sqlite_uri, run_id, 4)
    name = {
        "dead pid on this host": f"{path.stem}~{dead_pid()}~{HOST}~{int(time.time())}.sending",
        "earlier version's claim": f"{path.stem}.{dead_pid()}.sending",
        # a live process (this one), on another host, but claimed long ago
        "lease expired": f"{path.stem}~{os.getpid()}~otherhost~{int(time.time() - CLAIM_LEASE_S - 5)}.sending",
    }[claim]
    path.rename(path.with_name(name))
    assert sync_spool() == (1, 0, 0)
    assert [h.value for h in client.get_metric_history(run_id, METRIC_COST_USD)] == [2.0]
    assert list(spool_dir().iterdir()) == []


def test_a_live_claim_is_left_to_its_holder(sqlite_uri: str) -> None:
    client = MlflowClient()
    run_id = new_run(client)
    path = spool_one(sqlite_uri, run_id, 4)
    claim = path.with_name(f"{path.stem}~{os.getpid()}~{HOST}~{int(time.time())}.sending")
    path.rename(claim)
    assert sync_spool() == (0, 0, 0)
    assert claim.exists()
    assert client.get_metric_history(run_id, METRIC_COST_USD) == []


def test_a_file_whose_writer_died_mid_write_is_recovered(sqlite_uri: str) -> None:
    client = MlflowClient()
    run_id = new_run(client)
    path = spool_one(sqlite_uri, run_id, 2)
    path.rename(path.with_name(f"{path.stem}~{dead_pid()}~{HOST}~{int(time.time())}.tmp"))
    assert sync_spool() == (1, 0, 0)
    assert [h.value for h in client.get_metric_history(run_id, METRIC_COST_USD)] == [1.0]


def test_a_sync_killed_mid_way_loses_nothing(sqlite_uri: str, tmp_path: Path) -> None:
    """A process that exits (here: is killed) while holding a claim: the next sync delivers it."""
    client = MlflowClient()
    run_id = new_run(client)
    spool_one(sqlite_uri, run_id, 6)
    code = (
        "import os, signal\n"
        "import mlflow_finops.cost.spool as d\n"
        "def die(batch): os.kill(os.getpid(), signal.SIGKILL)\n"
        "d.deliver = die\n"  # the fault: the process dies in the middle of delivering
        "d.sync_spool()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=os.environ, timeout=120)
    assert out.returncode == -9
    assert len(list(spool_dir().glob("*.sending"))) == 1  # stranded claim
    assert sync_spool() == (1, 0, 0)
    assert [h.value for h in client.get_metric_history(run_id, METRIC_COST_USD)] == [3.0]


# ------------------------------------------------------------ honest counting, dead letters
def test_corrupt_lines_and_unknown_keys_are_dead_lettered_with_the_reason(
    sqlite_uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = MlflowClient()
    run_id = new_run(client)
    good = json.dumps({"tracking_uri": sqlite_uri, "run_id": run_id,
                       "metrics": [[METRIC_COST_USD, 1.5, 1_700_000_000_000, 1]], "tags": {}})
    unknown_key = json.dumps({"tracking_uri": sqlite_uri, "run_id": run_id, "metrics": [], "tags": {},
                              "extra": 1})
    spool_dir().mkdir(parents=True)
    (spool_dir() / "mixed.jsonl").write_text(f"{good}\n{{not json\n{unknown_key}\n")
    with caplog.at_level(logging.WARNING):
        assert sync_spool() == (1, 0, 2)
    assert [h.value for h in client.get_metric_history(run_id, METRIC_COST_USD)] == [1.5]
    assert list(spool_dir().glob("*.jsonl")) == []
    dead = spool_dir() / DEAD_LETTER_DIR
    [kept] = dead.glob("*.jsonl")
    assert kept.read_text().splitlines() == ["{not json", unknown_key]
    reasons = kept.with_suffix(".reason").read_text()
    assert "line 1: corrupt spool line" in reasons and "line 2: corrupt spool line" in reasons
    assert "extra" in reasons
    assert any("can never be delivered" in r.message and r.levelno == logging.WARNING for r in caplog.records)


def test_a_batch_for_a_run_that_does_not_exist_is_dead_lettered(sqlite_uri: str) -> None:
    client = MlflowClient()
    alive = new_run(client)
    write_spool([cost_batch(sqlite_uri, "0" * 32, 1), cost_batch(sqlite_uri, alive, 2)])
    assert sync_spool() == (1, 0, 1)
    assert [h.value for h in client.get_metric_history(alive, METRIC_COST_USD)] == [1.0]
    [reason] = (spool_dir() / DEAD_LETTER_DIR).glob("*.reason")
    assert f"run {'0' * 32} does not exist" in reason.read_text()
    assert sync_spool() == (0, 0, 0)  # not retried forever


def test_an_unreadable_spool_file_is_counted_as_left(sqlite_uri: str, caplog: pytest.LogCaptureFixture) -> None:
    (spool_dir() / "unreadable.jsonl").mkdir(parents=True)  # reading it fails, even as root
    with caplog.at_level(logging.WARNING):
        assert sync_spool() == (0, 1, 0)
    assert any("unreadable.jsonl cannot be read" in r.message for r in caplog.records)


# ------------------------------------------------------------ a spool folder that cannot be written
@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The temp dir the fallback folder goes under, private to this test."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return tmp


@pytest.mark.parametrize("blocker", ["file", "dangling symlink"])
def test_an_unwritable_spool_folder_falls_back_and_says_so(
    private_tmp: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, blocker: str
) -> None:
    monkeypatch.setenv(ENV_HTTP_TIMEOUT_S, "1")
    folder = spool_dir()
    folder.parent.mkdir(parents=True, exist_ok=True)
    if blocker == "file":
        folder.write_text("in the way")
    else:
        folder.symlink_to(folder.parent / "nowhere")
    down = f"http://127.0.0.1:{free_ports(1)[0]}"
    outbox = Outbox(min_interval_s=0).start()
    for step in range(3):
        outbox.put(cost_batch(down, "run-a", step))
    with caplog.at_level(logging.WARNING):
        assert outbox.close(timeout_s=2) == 3
    warning = next(r.message for r in caplog.records if "cannot be written" in r.message)
    assert str(folder) in warning and "3 cost batch(es)" in warning
    [path] = private_tmp.glob("mlflow-finops-*/spool-*/*.jsonl")
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert len(path.read_text().splitlines()) == 3
    assert sync_spool() == (0, 3, 0)  # sync reads the fallback too


def test_every_loss_is_logged_with_folder_and_count(
    private_tmp: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    spool_dir().parent.mkdir(parents=True, exist_ok=True)
    spool_dir().write_text("in the way")
    (private_tmp / f"mlflow-finops-{os.geteuid()}").write_text("in the way too")
    with caplog.at_level(logging.WARNING):
        for count in (2, 1):
            assert write_spool([cost_batch("sqlite:///x.db", "run-a", s) for s in range(count)]) is None
    lost = [r.message for r in caplog.records if "LOST" in r.message]
    assert len(lost) == 2
    assert lost[0].startswith("mlflow-finops: 2 cost batch(es)") and str(spool_dir()) in lost[0]
    assert lost[1].startswith("mlflow-finops: 1 cost batch(es)")


def test_a_fallback_folder_someone_else_planted_is_not_used(private_tmp: Path) -> None:
    spool_dir().parent.mkdir(parents=True, exist_ok=True)
    spool_dir().write_text("in the way")
    (private_tmp / f"mlflow-finops-{os.geteuid()}").symlink_to(private_tmp)
    assert write_spool([cost_batch("sqlite:///x.db", "run-a", 1)]) is None
    assert list(private_tmp.rglob("*.jsonl")) == []


# ------------------------------------------------------------ batches after close
def test_a_batch_put_after_close_is_delivered_or_spooled(sqlite_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_HTTP_TIMEOUT_S, "1")
    client = MlflowClient()
    run_id = new_run(client)
    outbox = Outbox(min_interval_s=0).start()
    assert outbox.close(timeout_s=5) == 0
    outbox.put(cost_batch(sqlite_uri, run_id, 8))  # e.g. a nested run ended after its parent
    assert [h.value for h in client.get_metric_history(run_id, METRIC_COST_USD)] == [4.0]
    down = f"http://127.0.0.1:{free_ports(1)[0]}"
    outbox.put(cost_batch(down, "run-late", 9))
    assert [(b["run_id"], b["metrics"][0][3]) for b in spooled()] == [("run-late", 9)]


# ------------------------------------------------------------ no leaks
def test_spool_files_are_private_and_hold_no_credentials(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(ENV_HTTP_TIMEOUT_S, "1")
    spool_dir().mkdir(parents=True, mode=0o755)
    os.chmod(spool_dir(), 0o755)  # as earlier versions left it
    port = free_ports(1)[0]
    outbox = Outbox(min_interval_s=0).start()
    outbox.put(cost_batch(f"http://finops-user:s3cret@127.0.0.1:{port}", "run-a", 1))
    with caplog.at_level(logging.WARNING):
        assert outbox.close(timeout_s=2) == 1
    assert "cannot reach MLflow at http://127.0.0.1" in caplog.text and "s3cret" not in caplog.text
    [path] = spool_dir().glob("*.jsonl")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(spool_dir().stat().st_mode) == 0o700
    text = path.read_text()
    assert "s3cret" not in text and "finops-user" not in text
    assert json.loads(text)["tracking_uri"] == f"http://127.0.0.1:{port}"


def test_redact_uri_keeps_everything_but_userinfo() -> None:
    assert redact_uri("http://u:p@host:5000/path?x=1") == "http://host:5000/path?x=1"
    assert redact_uri("postgresql://u:p@db/mlflow") == "postgresql://db/mlflow"
    assert redact_uri("sqlite:////tmp/a@b/mlflow.db") == "sqlite:////tmp/a@b/mlflow.db"
    assert redact_uri("https://host") == "https://host"


@pytest.mark.server
def test_sync_sends_with_the_credentials_of_the_process_that_syncs(
    server_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file holds no password; the syncing process's tracking URI (same store) supplies it."""
    client = MlflowClient()
    run_id = new_run(client)
    with_creds = server_uri.replace("http://", "http://finops-user:s3cret@")
    spool_one(with_creds, run_id, 5)
    assert "s3cret" not in "".join(p.read_text() for p in spool_dir().glob("*.jsonl"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", with_creds)
    import mlflow

    mlflow.set_tracking_uri(with_creds)
    from mlflow_finops.cost.spool import delivery_uri as _delivery_uri

    assert _delivery_uri(server_uri, None) == with_creds
    assert sync_spool() == (1, 0, 0)
    assert [h.value for h in client.get_metric_history(run_id, METRIC_COST_USD)] == [2.5]
