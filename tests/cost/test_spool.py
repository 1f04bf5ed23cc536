"""Delivery and the spool, edge by edge and fast: the fast half of test_delivery.py, for `make mutation`.

Stores are real and cheap: a copied migrated SQLite file, and MLflow's own server
app in a thread (``rest_store``). Faults are real too: a local HTTP server that
answers with an error status, a proxy's page or nothing in time; a store that
refuses a batch is MLflow refusing to log to a deleted run or a bad metric name.
"""

from __future__ import annotations

from dataclasses import replace
import json
import logging
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import mlflow
import psutil
import pytest
from mlflow.exceptions import MlflowException, RestException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.tracking import MlflowClient
from store_support import AUTH_PASSWORD, AUTH_USER, auth_rest_store, copied_store, rest_store, template_db  # noqa: F401

from mlflow_finops.cost import delivery, transport
from mlflow_finops.cost import spool as d
from mlflow_finops.cost.delivery import Outbox
from mlflow_finops.cost.spool import CLAIM_LEASE_S, HOST, SyncResult, spool_dir, sync_spool, write_spool
from mlflow_finops.cost.transport import Batch, deliver, redact_uri
from mlflow_finops.names import ENV_HTTP_TIMEOUT_S, ENV_LOG_INTERVAL_S, ENV_SPOOL_DIR

COST = "finops/cost_usd"
NOBODY = "http://127.0.0.1:9"  # nothing listens on port 9: refused at once


def cost_batch(uri: str, run_id: str, step: int, tags: dict[str, str] | None = None) -> Batch:
    return Batch(uri, run_id, [(COST, 0.5 * step, 1_700_000_000_000 + step, step)], tags or {})


def new_run(client: MlflowClient) -> str:
    return client.create_run("0").info.run_id


def history(client: MlflowClient, run_id: str) -> list[tuple[float, int]]:
    return sorted((m.value, m.step) for m in client.get_metric_history(run_id, COST))


def spooled(folder: Path | None = None) -> list[dict]:
    folder = folder or spool_dir()
    return [json.loads(line) for p in sorted(folder.glob("*.jsonl")) for line in p.read_text().splitlines()]


def messages(caplog: pytest.LogCaptureFixture, level: int = logging.WARNING) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("mlflow_finops.cost.") and r.levelno == level]


@pytest.fixture(autouse=True)
def _mlflow_http_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow's own HTTP defaults where delivery sets none: one retry (so a request made with
    them shows twice), no backoff, 5 s (not minutes of retries when a setting is lost)."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")


@pytest.fixture
def client(copied_store: str) -> MlflowClient:
    return MlflowClient(copied_store)


# ------------------------------------------------------------------ faults over HTTP
class Fault(BaseHTTPRequestHandler):
    def _answer(self) -> None:
        server = self.server
        server.requests.append(self.path)  # type: ignore[attr-defined]
        if server.fault == "slow":  # type: ignore[attr-defined]
            time.sleep(2)
        body = b"<html>404 Not Found</html>"  # a proxy's page, not MLflow's answer
        self.send_response(503 if server.fault == "503" else 404)  # type: ignore[attr-defined]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


def fault_server(fault: str) -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Fault)
    server.fault, server.requests = fault, []  # type: ignore[attr-defined]
    server.daemon_threads = True
    server.url = f"http://127.0.0.1:{server.server_address[1]}"  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def busy() -> Iterator[ThreadingHTTPServer]:
    yield from fault_server("503")


@pytest.fixture
def proxy() -> Iterator[ThreadingHTTPServer]:
    yield from fault_server("404")


@pytest.fixture
def slow() -> Iterator[ThreadingHTTPServer]:
    yield from fault_server("slow")


# ------------------------------------------------------------------ batches and URIs
@pytest.mark.parametrize("metrics, tags, sizes", [
    (0, 0, [(0, 0)]),
    (900, 100, [(900, 100)]),
    (901, 0, [(900, 0), (1, 0)]),
    (1800, 150, [(900, 100), (900, 50)]),
    (0, 250, [(0, 100), (0, 100), (0, 50)]),
], ids=["empty", "exactly one request", "one metric over", "both over", "tags only"])
def test_chunks_stay_within_log_batchs_limits(metrics: int, tags: int, sizes: list[tuple[int, int]]) -> None:
    batch = Batch("u", "r", [(f"m{i}", float(i), i, i) for i in range(metrics)], {f"t{i}": "v" for i in range(tags)})
    chunks = batch.chunks()
    assert [(len(c.metrics), len(c.tags)) for c in chunks] == sizes
    assert [m for c in chunks for m in c.metrics] == batch.metrics
    assert {k: v for c in chunks for k, v in c.tags.items()} == batch.tags
    assert {(c.tracking_uri, c.run_id) for c in chunks} == {("u", "r")}


def test_the_spool_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert spool_dir() == tmp_path / "spool"  # $MLFLOW_FINOPS_SPOOL_DIR (set for every test)
    monkeypatch.setenv(ENV_SPOOL_DIR, "")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert spool_dir() == tmp_path / "home" / ".cache" / "mlflow-finops" / "spool"


def test_redact_uri_and_short_errors() -> None:
    assert redact_uri("https://token@host/p") == "https://host/p"
    assert redact_uri("http://u:p@h@host:5000/x") == "http://host:5000/x"
    assert redact_uri("file:///a@b") == "file:///a@b"
    assert transport.short_error(ValueError("first http://u:p@host/x\nsecond")) == "first http://host/x"
    assert transport.short_error(KeyError()) == "KeyError"
    assert transport.short_error(ValueError("x" * 300)) == "x" * 200


def test_merge_one_batch_per_store_and_run_metrics_in_order_later_tags_win() -> None:
    a1 = Batch("u", "a", [("m", 1.0, 1, 1)], {"t": "1", "only1": "x"})
    b1 = Batch("u", "b", [("m", 2.0, 2, 2)])
    a2 = Batch("u", "a", [("m", 3.0, 3, 3)], {"t": "2"})
    other = Batch("v", "a", [("m", 4.0, 4, 4)])
    merged = delivery._merge([a1, b1, a2, other])
    assert [(b.tracking_uri, b.run_id, [m[1] for m in b.metrics], b.tags) for b in merged] == [
        ("u", "a", [1.0, 3.0], {"t": "2", "only1": "x"}), ("u", "b", [2.0], {}), ("v", "a", [4.0], {})]
    assert a1.metrics == [("m", 1.0, 1, 1)]  # the inputs are not changed


# ------------------------------------------------------------------ deliver
def test_deliver_to_a_sqlite_store(client: MlflowClient, copied_store: str) -> None:
    run_id = new_run(client)
    deliver(Batch(copied_store, run_id, [(COST, 1.5, 1_700_000_000_000, 3)], {"finops.team": "growth"}))
    deliver(Batch(copied_store, run_id, [], {"finops.model": "churn"}))  # tags alone are sent
    deliver(Batch(copied_store, "0" * 32))  # nothing to send: no request, so no error
    run = client.get_run(run_id)
    assert history(client, run_id) == [(1.5, 3)]
    assert (run.data.tags["finops.team"], run.data.tags["finops.model"]) == ("growth", "churn")
    metrics = [(f"m{i}", float(i), 1_700_000_000_000, 0) for i in range(950)]
    deliver(Batch(copied_store, run_id, metrics, {f"t{i}": "v" for i in range(120)}))
    run = client.get_run(run_id)
    assert len([k for k in run.data.metrics if k.startswith("m")]) == 950
    assert len([k for k in run.data.tags if k.startswith("t")]) == 120


def test_deliver_over_http_to_mlflows_server(rest_store: str) -> None:
    client = MlflowClient(rest_store)
    run_id = new_run(client)
    deliver(Batch(rest_store, run_id, [(COST, 2.5, 1_700_000_000_000, 7)], {"finops.team": "risk"}))
    assert history(client, run_id) == [(2.5, 7)]
    assert client.get_run(run_id).data.tags["finops.team"] == "risk"
    with pytest.raises(RestException) as err:
        deliver(cost_batch(rest_store, "0" * 32, 1))
    assert err.value.error_code == "RESOURCE_DOES_NOT_EXIST"


def test_http_is_one_request_without_retries(busy: ThreadingHTTPServer) -> None:
    with pytest.raises(MlflowException, match="too many 503 error responses"):
        deliver(cost_batch(busy.url, "r", 1))  # type: ignore[attr-defined]
    assert busy.requests == ["/api/2.0/mlflow/runs/log-batch"]  # type: ignore[attr-defined]


def test_http_waits_five_seconds_unless_told(slow: ThreadingHTTPServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "0.5")  # MLflow's own: not the one delivery uses
    with pytest.raises(MlflowException, match="failed with error code 404"):  # answered after 2 s
        deliver(cost_batch(slow.url, "r", 1))  # type: ignore[attr-defined]


def test_http_gives_up_at_the_configured_timeout(slow: ThreadingHTTPServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_HTTP_TIMEOUT_S, "0.3")
    t0 = time.monotonic()
    with pytest.raises(Exception):
        deliver(cost_batch(slow.url, "r", 1))  # type: ignore[attr-defined]
    assert time.monotonic() - t0 < 1.5


# ------------------------------------------------------------------ writing the spool
def test_a_spool_file_atomic_private_and_without_credentials(tmp_path: Path) -> None:
    batches = [cost_batch("http://u:s3cret@host:5000", "run/1 é", 1), cost_batch("sqlite:///x.db", "b", 2)]
    path = write_spool(batches)
    assert path is not None and path.parent == spool_dir()
    assert path.name.startswith(f"run_1__-{os.getpid()}-") and path.suffix == ".jsonl"
    assert len(path.stem.rsplit("-", 1)[1]) == 8
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(spool_dir().stat().st_mode) == 0o700
    assert [json.loads(line) for line in path.read_text().splitlines()] == [
        {"tracking_uri": "http://host:5000", "run_id": "run/1 é", "metrics": [[COST, 0.5, 1_700_000_000_001, 1]],
         "tags": {}},
        {"tracking_uri": "sqlite:///x.db", "run_id": "b", "metrics": [[COST, 1.0, 1_700_000_000_002, 2]], "tags": {}},
    ]
    assert batches[0].tracking_uri == "http://u:s3cret@host:5000"  # the caller's batch is not changed
    assert sorted(p.name for p in spool_dir().iterdir()) == [path.name]  # no temporary file left
    assert d.safe_stem("x" * 100) == "x" * 64 and d.safe_stem("") == "run"


@pytest.mark.parametrize("mode", [0o755, 0o644], ids=oct)
def test_an_existing_spool_folder_is_made_private(tmp_path: Path, mode: int) -> None:
    os.chmod(tmp_path, 0o755)
    spool_dir().mkdir()
    os.chmod(spool_dir(), mode)  # as earlier versions left it (any group or other bit goes)
    write_spool([cost_batch("sqlite:///x.db", "r", 1)])
    assert stat.S_IMODE(spool_dir().stat().st_mode) == 0o700
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o755  # the folder above is not this module's


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a folder to another user needs root")
def test_another_users_spool_folder_is_left_as_it_is() -> None:
    spool_dir().mkdir()
    os.chmod(spool_dir(), 0o755)
    os.chown(spool_dir(), 12345, -1)
    assert write_spool([cost_batch("sqlite:///x.db", "r", 1)]) is not None
    assert stat.S_IMODE(spool_dir().stat().st_mode) == 0o755


def test_a_spool_folder_is_made_with_its_parents(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(ENV_SPOOL_DIR, str(tmp_path / "a" / "b" / "spool"))
    path = write_spool([cost_batch("sqlite:///x.db", "ABC-def", 1)])
    assert path is not None and path.parent == tmp_path / "a" / "b" / "spool"
    assert path.name.startswith("ABC-def-")  # letters of either case are kept
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_a_writer_that_dies_before_its_rename_leaves_a_named_lease() -> None:
    code = (
        "import os, signal, pathlib\n"
        "import mlflow_finops.cost.spool as d\n"
        "pathlib.Path.replace = lambda self, target: os.kill(os.getpid(), signal.SIGKILL)\n"  # the fault
        "d.write_spool([d.Batch('sqlite:///x.db', 'r', [('m', 1.0, 1, 1)])])\n"
    )
    t0 = int(time.time())
    proc = subprocess.Popen([sys.executable, "-c", code], env=os.environ)
    assert proc.wait(timeout=60) == -9
    [tmp] = spool_dir().iterdir()
    stem, pid, host, since = tmp.name.removesuffix(".tmp").split("~")
    assert (stem.startswith("r-"), pid, host, tmp.suffix) == (True, str(proc.pid), HOST, ".tmp")
    assert t0 <= int(since) <= time.time()
    assert json.loads(tmp.read_text())["run_id"] == "r"  # whole: recovery can send it
    d.recover_leases(spool_dir())
    assert [p.name for p in spool_dir().iterdir()] == [f"{stem}.jsonl"]


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The temp dir the fallback folder goes under, private to this test."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return tmp


def test_an_unwritable_spool_folder_falls_back_and_says_where(
    private_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool_dir().write_text("in the way")
    with caplog.at_level(logging.WARNING):
        path = write_spool([cost_batch(NOBODY, "r", s) for s in range(2)])
    base = private_tmp / f"mlflow-finops-{os.geteuid()}"
    assert path is not None and path.parent.parent == base and path.parent.name.startswith("spool-")
    assert path.parent == d.fallback_dir(spool_dir()) and len(path.parent.name) == len("spool-") + 12
    assert d.fallback_dir(spool_dir() / "other") != path.parent  # one per configured folder
    again = write_spool([cost_batch(NOBODY, "r", 3)])  # the fallback's folders exist now
    assert again is not None and again.parent == path.parent
    assert stat.S_IMODE(base.stat().st_mode) == stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    warning = messages(caplog)[0]
    assert warning == (f"mlflow-finops: spool folder {spool_dir()} cannot be written (FileExistsError: [Errno 17] "
                       f"File exists: '{spool_dir()}'); 2 cost batch(es) spooled to {path} instead")
    assert d.spool_folders() == [path.parent]
    assert sync_spool() == (0, 3, 0)  # read from the fallback (and nobody answers)


def test_a_loss_is_logged_with_count_runs_and_folders(private_tmp: Path, caplog: pytest.LogCaptureFixture) -> None:
    spool_dir().write_text("in the way")
    (private_tmp / f"mlflow-finops-{os.geteuid()}").write_text("in the way too")
    with caplog.at_level(logging.WARNING):
        assert write_spool([cost_batch("sqlite:///x.db", r, 1) for r in ("b", "a", "b")]) is None
    assert messages(caplog) == [
        f"mlflow-finops: 3 cost batch(es) for run(s) a, b LOST: spool folder {spool_dir()} cannot be written "
        f"(FileExistsError: [Errno 17] File exists: '{spool_dir()}'), nor its fallback under {private_tmp}"]
    assert d.spool_folders() == []


def test_a_fallback_base_that_is_not_this_users_folder_is_refused(private_tmp: Path) -> None:
    spool_dir().write_text("in the way")
    (private_tmp / f"mlflow-finops-{os.geteuid()}").symlink_to(private_tmp)
    assert write_spool([cost_batch("sqlite:///x.db", "r", 1)]) is None
    with pytest.raises(OSError, match="is not a private folder of this user"):
        d.check_fallback_base(private_tmp / f"mlflow-finops-{os.geteuid()}")
    d.check_fallback_base(private_tmp)  # a real folder of this user


# ------------------------------------------------------------------ reading it back
GOOD = {"tracking_uri": "sqlite:///x.db", "run_id": "r", "metrics": [[COST, 1, 2, 3]], "tags": {"k": "v"}}


def test_parse_a_good_line() -> None:
    b = d.parse_line(json.dumps(GOOD).encode())
    assert b == Batch("sqlite:///x.db", "r", [(COST, 1.0, 2, 3)], {"k": "v"})
    assert isinstance(b.metrics[0][1], float)


def test_a_runs_end_travels_with_its_last_chunk_and_through_the_spool() -> None:
    b = d.parse_line(json.dumps({**GOOD, "end": ["KILLED", 1700000000123]}).encode())
    assert b.end == ("KILLED", 1700000000123)
    assert d.parse_line(d.encode_line(b)) == b
    assert "end" not in json.loads(d.encode_line(replace(b, end=None)))  # a line without an end is as before
    many = replace(b, metrics=[(COST, 1.0, i, 0) for i in range(2000)])
    assert [c.end for c in many.chunks()] == [None, None, ("KILLED", 1700000000123)]


@pytest.mark.parametrize("change, message", [
    ([], "not a JSON object"),
    ({"extra": 1}, "expected the keys tracking_uri, run_id, metrics, tags (and end); got "
                   "['extra', 'metrics', 'run_id', 'tags', 'tracking_uri']"),
    ({"end": ["DONE", 5]}, "bad run end ['DONE', 5]"),
    ({"end": ["FINISHED", 5.5]}, "bad run end ['FINISHED', 5.5]"),
    ({"end": ["FINISHED", True]}, "bad run end ['FINISHED', True]"),
    ({"end": ["FINISHED"]}, "bad run end ['FINISHED']"),
    ({"tracking_uri": ""}, "tracking_uri and run_id must be non-empty strings"),
    ({"tracking_uri": 5}, "tracking_uri and run_id must be non-empty strings"),
    ({"run_id": ""}, "tracking_uri and run_id must be non-empty strings"),
    ({"run_id": 7}, "tracking_uri and run_id must be non-empty strings"),
    ({"tags": []}, "tags must map strings to strings"),
    ({"tags": {"k": 1}}, "tags must map strings to strings"),
    ({"metrics": {}}, "bad metric row None"),
    ({"metrics": [[COST, 1, 2]]}, "bad metric row ['finops/cost_usd', 1, 2]"),
    ({"metrics": [[5, 1, 2, 3]]}, "bad metric row [5, 1, 2, 3]"),
    ({"metrics": [[COST, "1", 2, 3]]}, "bad metric row ['finops/cost_usd', '1', 2, 3]"),
    ({"metrics": [[COST, True, 2, 3]]}, "bad metric row ['finops/cost_usd', True, 2, 3]"),
    ({"metrics": [[COST, 1, 2.5, 3]]}, "bad metric row ['finops/cost_usd', 1, 2.5, 3]"),
    ({"metrics": [[COST, 1, 2, 3.5]]}, "bad metric row ['finops/cost_usd', 1, 2, 3.5]"),
    ({"metrics": [[COST, 1, 2, False]]}, "bad metric row ['finops/cost_usd', 1, 2, False]"),
    ({"metrics": [[5, "v" * 100, 2, 3]]}, "bad metric row " + str([5, "v" * 100, 2, 3])[:80]),  # cut at 80
    ({"metrics": [[COST, 1, 2, 3], "x"]}, "bad metric row x"),
], ids=lambda v: None if isinstance(v, str) else json.dumps(v)[:40])
def test_parse_refuses_anything_else_saying_why(change: object, message: str) -> None:
    doc = change if isinstance(change, list) else {**GOOD, **change}
    with pytest.raises(ValueError) as err:
        d.parse_line(json.dumps(doc).encode())
    assert str(err.value) == message


def test_parse_lists_at_most_ten_keys() -> None:
    doc = {f"k{i:02d}": i for i in range(12)}
    with pytest.raises(ValueError, match=r"got \['k00', .*'k09'\]$"):
        d.parse_line(json.dumps(doc).encode())


# ------------------------------------------------------------------ claims and leases
def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_lease_names_read_back() -> None:
    folder = spool_dir()
    folder.mkdir()
    now = int(time.time())
    assert d.lease_of(folder / f"a-1~123~host.x~{now}.sending") == ("a-1", 123, "host.x", float(now))
    old = folder / "a-1.456.sending"
    old.write_text("")
    assert d.lease_of(old) == ("a-1", 456, HOST, old.stat().st_mtime)
    for name in ("odd.sending", "a~x~h~1.tmp", "a~1~h~x.tmp", "a.456.tmp"):
        path = folder / name
        path.write_text("")
        assert d.lease_of(path) == (name[: -len(path.suffix)], None, None, path.stat().st_mtime)
    # the stem is whatever precedes the last three parts (or, in an old claim, the pid)
    assert d.lease_of(folder / f"a~b~123~h~{now}.sending") == ("a~b", 123, "h", float(now))
    older = folder / "a.b.789.sending"
    older.write_text("")
    assert d.lease_of(older) == ("a.b", 789, HOST, older.stat().st_mtime)
    assert d.leased_name("stem", ".sending").startswith(f"stem~{os.getpid()}~{HOST}~")
    assert abs(int(d.leased_name("s", ".x")[:-2].rsplit("~", 1)[1]) - time.time()) < 5


def test_who_holds_a_lease() -> None:
    now = time.time()
    assert d.holder_alive(None, None, now)  # nobody known: the lease's age decides
    assert d.holder_alive(dead_pid(), "another-host", now)  # another host's pid: cannot tell
    assert d.holder_alive(os.getpid(), HOST, now)
    assert not d.holder_alive(dead_pid(), HOST, now)
    assert not d.holder_alive(os.getpid(), HOST, now - 3600)  # this pid started after the lease was taken
    started = psutil.Process().create_time()
    assert d.holder_alive(os.getpid(), HOST, started - 1.0)  # a second's slack for clocks
    assert not d.holder_alive(os.getpid(), HOST, started - 1.5)
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and open(f"/proc/{zombie.pid}/stat").read().split()[2] != "Z":
        time.sleep(0.02)
    try:
        assert not d.holder_alive(zombie.pid, HOST, now)
    finally:
        zombie.wait()


def test_claims_whose_holder_is_gone_are_recovered(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = spool_dir()
    folder.mkdir()
    now = int(time.time())
    gone = dead_pid()
    (folder / f"a~{gone}~{HOST}~{now}.sending").write_text("A")
    (folder / f"b~{os.getpid()}~{HOST}~{now}.sending").write_text("B")  # alive: left alone
    (folder / f"c~{os.getpid()}~elsewhere~{now - int(CLAIM_LEASE_S) - 60}.sending").write_text("C")  # expired
    (folder / f"d~{os.getpid()}~elsewhere~{now - int(CLAIM_LEASE_S) + 60}.tmp").write_text("D")  # not yet
    (folder / f"e~{gone}~{HOST}~{now}.tmp").write_text("E")  # a writer that died mid-write
    (folder / "a.jsonl").write_text("A0")  # the name is taken: the recovered file gets its own
    with caplog.at_level(logging.WARNING):
        d.recover_leases(folder)
    names = {p.name: p.read_text() for p in folder.iterdir()}
    recovered_a = [n for n in names if n.startswith("a-") and n.endswith(".jsonl")]
    assert len(recovered_a) == 1 and len(recovered_a[0]) == len("a-12345678.jsonl")
    assert {n: t for n, t in names.items() if n not in recovered_a} == {
        "a.jsonl": "A0", f"b~{os.getpid()}~{HOST}~{now}.sending": "B", "c.jsonl": "C",
        f"d~{os.getpid()}~elsewhere~{now - int(CLAIM_LEASE_S) + 60}.tmp": "D", "e.jsonl": "E"}
    warnings = sorted(messages(caplog))
    assert len(warnings) == 3
    assert warnings[0].startswith(f"mlflow-finops: recovered spool file a~{gone}~{HOST}~{now}.sending left by "
                                  f"process {gone} on {HOST} ")
    assert warnings[0].endswith(" s ago; retrying it")
    assert warnings[1].startswith(f"mlflow-finops: recovered spool file c~{os.getpid()}~elsewhere~")
    age = float(warnings[1].split(" on elsewhere ")[1].split(" s ago")[0])
    assert CLAIM_LEASE_S + 59 <= age <= CLAIM_LEASE_S + 65


def test_an_unknown_claim_is_recovered_after_the_lease(caplog: pytest.LogCaptureFixture) -> None:
    folder = spool_dir()
    folder.mkdir()
    old = folder / "x.sending"
    old.write_text("X")
    os.utime(old, (time.time() - CLAIM_LEASE_S - 5,) * 2)
    young = folder / "y.sending"
    young.write_text("Y")
    with caplog.at_level(logging.WARNING):
        d.recover_leases(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["x.jsonl", "y.sending"]
    [warning] = messages(caplog)
    assert "left by process ? on ? " in warning


def test_a_claim_that_vanishes_while_read_does_not_stop_the_others() -> None:
    folder = spool_dir()
    folder.mkdir()
    (folder / "a.sending").symlink_to(folder / "gone")  # its stat fails, as for a file just taken
    (folder / f"b~{dead_pid()}~{HOST}~{int(time.time())}.tmp").write_text("B")
    d.recover_leases(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["a.sending", "b.jsonl"]


# ------------------------------------------------------------------ where and whether to send
def test_the_delivery_uri_adds_this_processes_credentials_for_the_same_store(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stored = "http://host:5000"
    mlflow.set_tracking_uri("sqlite:///other.db")
    assert d.delivery_uri(stored, None) == stored
    assert d.delivery_uri(stored, "http://u:p@host:5000") == "http://u:p@host:5000"
    assert d.delivery_uri(stored, "http://u:p@elsewhere:5000") == stored
    mlflow.set_tracking_uri("http://t:k@host:5000")
    assert d.delivery_uri(stored, None) == "http://t:k@host:5000"
    assert d.delivery_uri(stored, "http://u:p@host:5000") == "http://u:p@host:5000"  # the one named first
    assert d.delivery_uri(stored, "http://elsewhere") == "http://t:k@host:5000"
    mlflow.set_tracking_uri(None)


def test_error_codes_count_only_when_mlflow_answered() -> None:
    rest = RestException({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "m"})
    local = MlflowException("m", error_code=INVALID_PARAMETER_VALUE)
    assert transport.error_code(rest, "http://h") == "RESOURCE_DOES_NOT_EXIST"
    assert transport.error_code(local, "sqlite:///x.db") == "INVALID_PARAMETER_VALUE"
    assert transport.error_code(local, "https://h") is None  # raised by the client, e.g. for a proxy's page
    assert transport.error_code(ValueError("x"), "sqlite:///x.db") is None


def refusal(batch: Batch) -> BaseException:
    with pytest.raises(Exception) as err:
        deliver(batch)
    return err.value


@pytest.mark.parametrize("store", ["sqlite", "http"])
def test_never_deliverable_only_for_a_missing_run_or_a_refused_batch(
    store: str, copied_store: str, rest_store: str, tmp_path: Path
) -> None:
    shutil.copy(template_db(), tmp_path / "other.db")  # not the tracking URI's store: the batch's is asked
    uri = f"sqlite:///{tmp_path / 'other.db'}" if store == "sqlite" else rest_store
    client = MlflowClient(uri)
    missing = cost_batch(uri, "0" * 32, 1)
    assert d.never_deliverable(missing, refusal(missing)) == (
        f"run {'0' * 32} does not exist in {uri}: {transport.short_error(refusal(missing))}")
    alive = new_run(client)
    bad = Batch(uri, alive, [("bad name!", 1.0, 0, 0)])
    exc = refusal(bad)
    assert d.never_deliverable(bad, exc) == f"MLflow refuses the batch for run {alive}: {transport.short_error(exc)}"
    deleted = new_run(client)
    client.delete_run(deleted)
    kept = cost_batch(uri, deleted, 1)
    assert d.never_deliverable(kept, refusal(kept)) is None  # restore_run brings it back
    kept_bad = Batch(uri, deleted, [("bad name!", 1.0, 0, 0)])
    assert d.never_deliverable(kept_bad, refusal(kept_bad)) is None
    assert d.never_deliverable(missing, OSError("network down")) is None


def test_never_deliverable_when_the_check_itself_fails(busy: ThreadingHTTPServer) -> None:
    url = busy.url  # type: ignore[attr-defined]
    refused = RestException({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no run"})
    assert d.never_deliverable(cost_batch(url, "r", 1), refused) is None  # cannot tell: kept
    assert busy.requests == ["/api/2.0/mlflow/runs/get?run_id=r"]  # type: ignore[attr-defined]


# ------------------------------------------------------------------ sync
def spool_file(*batches: Batch) -> Path:
    path = write_spool(list(batches))
    assert path is not None
    return path


def test_sync_counts_delivered_left_and_dead(client: MlflowClient, copied_store: str,
                                             caplog: pytest.LogCaptureFixture) -> None:
    alive, deleted = new_run(client), new_run(client)
    client.delete_run(deleted)
    spool_file(cost_batch(copied_store, alive, 1), cost_batch(copied_store, deleted, 2),
               cost_batch(copied_store, "0" * 32, 3), cost_batch(copied_store, deleted, 4),
               cost_batch(copied_store, alive, 5))
    with caplog.at_level(logging.INFO, logger="mlflow_finops.cost"):
        assert sync_spool() == SyncResult(2, 2, 1)
    assert history(client, alive) == [(0.5, 1), (2.5, 5)]
    assert [(b["run_id"], b["metrics"][0][3]) for b in spooled()] == [(deleted, 2), (deleted, 4)]  # in order
    [dead] = (spool_dir() / "dead").glob("*.jsonl")
    assert [json.loads(line)["metrics"][0][3] for line in dead.read_text().splitlines()] == [3]
    assert dead.with_suffix(".reason").read_text().startswith(f"line 1: run {'0' * 32} does not exist in ")
    infos = messages(caplog, logging.INFO)
    assert len(infos) == 1 and infos[0].startswith(f"spooled batch for run {deleted} not delivered yet: ")
    client.restore_run(deleted)
    assert sync_spool(copied_store) == (2, 0, 0)
    assert history(client, deleted) == [(1.0, 2), (2.0, 4)]
    assert [p.name for p in spool_dir().iterdir()] == ["dead"]


def test_a_refused_run_holds_only_its_own_later_batches(client: MlflowClient, copied_store: str) -> None:
    a, b = new_run(client), new_run(client)
    client.delete_run(a)
    spool_file(cost_batch(copied_store, a, 1), cost_batch(copied_store, b, 2), cost_batch(copied_store, a, 3),
               cost_batch(copied_store, b, 4))
    assert sync_spool() == (2, 2, 0)
    assert history(client, b) == [(1.0, 2), (2.0, 4)]


def test_no_answer_keeps_the_rest_without_trying(proxy: ThreadingHTTPServer, copied_store: str,
                                                 client: MlflowClient, caplog: pytest.LogCaptureFixture) -> None:
    url = proxy.url  # type: ignore[attr-defined]
    run_id = new_run(client)
    spool_file(cost_batch(url, "r", 1), cost_batch(url, "s", 2), cost_batch(url, "r", 3))
    spool_file(cost_batch(copied_store, run_id, 4))
    with caplog.at_level(logging.INFO, logger="mlflow_finops.cost"):
        assert sync_spool() == (1, 3, 0)
    assert proxy.requests == ["/api/2.0/mlflow/runs/log-batch"]  # type: ignore[attr-defined]
    assert [(b["run_id"], b["metrics"][0][3]) for b in spooled()] == [("r", 1), ("s", 2), ("r", 3)]
    assert history(client, run_id) == [(2.0, 4)]
    assert any("API request to endpoint /api/2.0/mlflow/runs/log-batch failed with error code 404" in m
               for m in messages(caplog, logging.INFO))


def test_a_sync_for_one_store_leaves_other_stores_files(client: MlflowClient, copied_store: str) -> None:
    run_id = new_run(client)
    spool_file(cost_batch("http://u:p@127.0.0.1:9", "x", 1))
    spool_file(cost_batch(copied_store, run_id, 2), cost_batch(NOBODY, "x", 3))  # mixed: left too
    spool_file(cost_batch(copied_store, run_id, 4))
    assert sync_spool(copied_store) == (1, 3, 0)
    assert history(client, run_id) == [(2.0, 4)]
    # the stored URI has no password, the one asked for has: the same store, tried (nobody answers)
    assert sync_spool("http://t:k@127.0.0.1:9") == (0, 3, 0)


def test_sync_recovers_dead_claims_first(client: MlflowClient, copied_store: str) -> None:
    run_id = new_run(client)
    path = spool_file(cost_batch(copied_store, run_id, 6))
    path.rename(path.with_name(f"{path.stem}~{dead_pid()}~{HOST}~{int(time.time())}.sending"))
    assert sync_spool() == (1, 0, 0)
    assert history(client, run_id) == [(3.0, 6)]
    assert list(spool_dir().iterdir()) == []


def test_a_sync_interrupted_mid_delivery_leaves_its_claim_to_itself(
    client: MlflowClient, copied_store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = spool_file(cost_batch(copied_store, new_run(client), 6))

    def interrupted(batch: Batch) -> None:
        raise KeyboardInterrupt  # the injected fault: the process is stopped while sending

    t0 = int(time.time())
    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(d, "deliver", interrupted)
        sync_spool()
    [claim] = spool_dir().iterdir()
    stem, pid, host, since = claim.name.removesuffix(".sending").split("~")
    assert (stem, pid, host, claim.suffix) == (path.stem, str(os.getpid()), HOST, ".sending")
    assert t0 <= int(since) <= time.time()
    assert sync_spool() == (0, 0, 0)  # its holder lives: nobody else sends it
    assert list(spool_dir().iterdir()) == [claim]


def test_sync_sends_with_the_credentials_of_the_process_that_syncs(auth_rest_store: str) -> None:
    """The file holds no password; the sync's store (argument, else tracking URI) supplies it."""
    with_creds = auth_rest_store.replace("http://", f"http://{AUTH_USER}:{AUTH_PASSWORD}@")
    client = MlflowClient(with_creds)
    run_id = new_run(client)
    spool_file(cost_batch(with_creds, run_id, 5))
    assert AUTH_PASSWORD not in "".join(p.read_text() for p in spool_dir().glob("*.jsonl"))
    assert sync_spool() == (0, 1, 0)  # no credentials here for that store: refused (401), kept
    assert sync_spool(with_creds) == (1, 0, 0)
    spool_file(cost_batch(with_creds, run_id, 6))
    mlflow.set_tracking_uri(with_creds)
    try:
        assert sync_spool() == (1, 0, 0)
    finally:
        mlflow.set_tracking_uri(None)
    assert history(client, run_id) == [(2.5, 5), (3.0, 6)]


def test_corrupt_lines_go_to_dead_letters_with_reasons(client: MlflowClient, copied_store: str,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    run_id = new_run(client)
    good = json.dumps({**GOOD, "tracking_uri": copied_store, "run_id": run_id})
    spool_dir().mkdir()
    (spool_dir() / "mixed.jsonl").write_text(f"{good}\n\n{{not json\n[1]\n  \n")
    with caplog.at_level(logging.WARNING):
        assert sync_spool() == (1, 0, 2)
    [kept] = (spool_dir() / "dead").glob("*.jsonl")
    assert kept.name.startswith("mixed-") and len(kept.stem) == len("mixed-12345678")
    assert kept.read_text() == "{not json\n[1]\n"
    assert kept.with_suffix(".reason").read_text() == (
        "line 1: corrupt spool line: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)\n"
        "line 2: corrupt spool line: not a JSON object\n")
    assert stat.S_IMODE((spool_dir() / "dead").stat().st_mode) == 0o700
    assert sorted(messages(caplog)) == [
        f"mlflow-finops: 1 spooled cost batch(es) can never be delivered and were moved to {kept}: "
        "corrupt spool line: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)",
        f"mlflow-finops: 1 spooled cost batch(es) can never be delivered and were moved to {kept}: "
        "corrupt spool line: not a JSON object"]


def test_dead_letters_count_each_reason_once(caplog: pytest.LogCaptureFixture) -> None:
    spool_dir().mkdir()
    with caplog.at_level(logging.WARNING):
        d.dead_letter(spool_dir(), "s", [(b"1", "why"), (b"2", "other"), (b"3", "why")])
    [kept] = (spool_dir() / "dead").glob("*.jsonl")
    assert kept.with_suffix(".reason").read_text() == "line 1: why\nline 2: other\nline 3: why\n"
    assert messages(caplog) == [
        f"mlflow-finops: 2 spooled cost batch(es) can never be delivered and were moved to {kept}: why",
        f"mlflow-finops: 1 spooled cost batch(es) can never be delivered and were moved to {kept}: other"]


def test_an_unreadable_file_is_left_and_a_vanished_one_ignored(caplog: pytest.LogCaptureFixture) -> None:
    (spool_dir() / "unreadable.jsonl").mkdir(parents=True)
    with caplog.at_level(logging.WARNING):
        assert sync_spool() == (0, 1, 0)
    assert messages(caplog) == [f"mlflow-finops: spool file {spool_dir() / 'unreadable.jsonl'} cannot be read "
                                f"([Errno 21] Is a directory: '{spool_dir() / 'unreadable.jsonl'}'); "
                                "kept for a later sync"]
    assert d.sync_file(spool_dir(), spool_dir() / "gone.jsonl", None) == (0, 0, 0)


def test_a_file_that_cannot_be_claimed_is_left_to_whoever_has_it(copied_store: str) -> None:
    path = spool_file(cost_batch(copied_store, "r", 1))
    assert d.sync_file(spool_dir() / "no-such-folder", path, None) == (0, 0, 0)
    assert path.exists()


def test_a_file_whose_rest_cannot_be_rewritten_is_kept_whole(
    client: MlflowClient, copied_store: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    a, deleted = new_run(client), new_run(client)
    client.delete_run(deleted)
    path = spool_file(cost_batch(copied_store, a, 1), cost_batch(copied_store, deleted, 2))

    def disk_full(*args: object, **kwargs: object) -> Path:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(d, "write_lines", disk_full)  # the injected fault: no file can be written
    with caplog.at_level(logging.WARNING):
        assert sync_spool() == (1, 1, 0)
    assert sorted(p.name for p in spool_dir().iterdir()) == [path.name]  # whole again, nothing lost
    assert messages(caplog)[-1] == (f"mlflow-finops: spool file {path} kept whole (cannot rewrite the undelivered "
                                    "batches); it is retried by the next sync")


# ------------------------------------------------------------------ the outbox
def wait_for(check, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_the_outbox_delivers_every_batch_in_order(client: MlflowClient, copied_store: str) -> None:
    a, b = new_run(client), new_run(client)
    outbox = Outbox(min_interval_s=0).start()
    assert any(t.name == "finops-outbox" and t.daemon for t in threading.enumerate())
    for step in range(3):
        outbox.put(cost_batch(copied_store, a, step, {"finops.step": str(step)}))
    outbox.put(cost_batch(copied_store, b, 9))
    assert outbox.close(timeout_s=10) == 0
    assert history(client, a) == [(0.0, 0), (0.5, 1), (1.0, 2)] and history(client, b) == [(4.5, 9)]
    assert client.get_run(a).data.tags["finops.step"] == "2"
    assert outbox.cpu_s > 0
    assert spooled() == []


def test_an_interval_given_wins_over_the_environment(client: MlflowClient, copied_store: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_LOG_INTERVAL_S, "60")
    run_id = new_run(client)
    outbox = Outbox(min_interval_s=0)
    assert outbox.cpu_s == 0.0
    outbox.start()
    for step in (1, 2):
        outbox.put(cost_batch(copied_store, run_id, step))
        wait_for(lambda: len(history(client, run_id)) == step, timeout_s=5)  # each sent at once
    assert outbox.close(timeout_s=10) == 0


def test_the_default_interval_sends_and_closes(client: MlflowClient, copied_store: str) -> None:
    run_id = new_run(client)  # no interval given, none in the environment: LOG_INTERVAL_S
    outbox = Outbox().start()
    outbox.put(cost_batch(copied_store, run_id, 1))
    assert outbox.close(timeout_s=10) == 0
    assert history(client, run_id) == [(0.5, 1)]


def test_live_batches_wait_for_the_interval_and_close_sends_them_now(
    client: MlflowClient, copied_store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_LOG_INTERVAL_S, "60")
    run_id = new_run(client)
    outbox = Outbox(name="test-outbox").start()
    assert any(t.name == "test-outbox" for t in threading.enumerate())
    outbox.put(cost_batch(copied_store, run_id, 1))
    wait_for(lambda: history(client, run_id) == [(0.5, 1)])  # the first is sent at once
    outbox.put(cost_batch(copied_store, run_id, 2))
    time.sleep(0.5)
    assert history(client, run_id) == [(0.5, 1)]  # the next waits for the interval
    t0 = time.monotonic()
    assert outbox.close(timeout_s=10) == 0
    assert time.monotonic() - t0 < 3
    assert history(client, run_id) == [(0.5, 1), (1.0, 2)]


def test_an_outage_is_told_once_and_its_end_too(client: MlflowClient, copied_store: str,
                                                caplog: pytest.LogCaptureFixture) -> None:
    run_id = new_run(client)
    client.delete_run(run_id)  # refused until restored
    why = transport.short_error(refusal(cost_batch(copied_store, run_id, 1)))
    outbox = Outbox(min_interval_s=0, max_backoff_s=0.2).start()
    with caplog.at_level(logging.WARNING):
        outbox.put(cost_batch(copied_store, run_id, 1))
        wait_for(lambda: any("cannot reach MLflow" in m for m in messages(caplog)))
        time.sleep(1.3)  # retried after 1 s, then every 0.2 s: still one warning
        client.restore_run(run_id)
        wait_for(lambda: history(client, run_id) == [(0.5, 1)], timeout_s=3)
        assert outbox.close(timeout_s=10) == 0
    warnings = messages(caplog)
    assert len(warnings) == 2
    assert warnings[0] == (f"mlflow-finops: cannot reach MLflow at {copied_store} ({why}); cost samples are kept "
                           "and retried, training is not affected")
    assert re.fullmatch(r"mlflow-finops: MLflow answers again after \d+ s; delivering queued samples", warnings[1])


def test_live_batches_keep_their_interval_and_go_when_it_ends(client: MlflowClient, copied_store: str) -> None:
    run_id = new_run(client)
    outbox = Outbox(min_interval_s=0.9).start()
    outbox.put(cost_batch(copied_store, run_id, 1))
    wait_for(lambda: history(client, run_id) == [(0.5, 1)])
    sent = time.monotonic()
    outbox.put(cost_batch(copied_store, run_id, 2))
    time.sleep(0.2)
    assert len(history(client, run_id)) == 1 or time.monotonic() - sent >= 0.9
    wait_for(lambda: len(history(client, run_id)) == 2, timeout_s=3)  # without a put or a close
    assert outbox.close(timeout_s=10) == 0


def test_a_refused_run_stays_queued_while_the_others_go(client: MlflowClient, copied_store: str) -> None:
    first, alive, deleted = new_run(client), new_run(client), new_run(client)
    client.delete_run(deleted)
    outbox = Outbox(min_interval_s=60).start()
    outbox.put(cost_batch(copied_store, first, 1))
    wait_for(lambda: history(client, first) == [(0.5, 1)])
    outbox.put(cost_batch(copied_store, alive, 2))  # both wait for the interval, then go in one take
    outbox.put(cost_batch(copied_store, deleted, 3))
    assert outbox.close(timeout_s=1) == 1
    assert history(client, alive) == [(1.0, 2)]
    assert [(b["run_id"], b["metrics"][0][3]) for b in spooled()] == [(deleted, 3)]
    assert outbox.cpu_s > 0


def test_what_cannot_be_sent_by_the_deadline_is_spooled(busy: ThreadingHTTPServer, client: MlflowClient,
                                                         copied_store: str, caplog: pytest.LogCaptureFixture) -> None:
    url = "http://u:s3cret@" + busy.url.removeprefix("http://")  # type: ignore[attr-defined]
    run_id = new_run(client)
    outbox = Outbox(min_interval_s=0).start()
    with caplog.at_level(logging.WARNING):
        outbox.put(cost_batch(copied_store, run_id, 1))
        wait_for(lambda: history(client, run_id) == [(0.5, 1)])
        for step in range(2, 5):
            outbox.put(cost_batch(url, "r", step))
        t0 = time.monotonic()
        assert outbox.close(timeout_s=1) == 3
        assert time.monotonic() - t0 < 2.5
    assert 0 < outbox.cpu_s < 10  # failed attempts cost CPU too
    assert [(b["tracking_uri"], b["metrics"][0][3]) for b in spooled()] == [(busy.url, s) for s in (2, 3, 4)]  # type: ignore[attr-defined]
    assert "s3cret" not in caplog.text
    [path] = spool_dir().glob("*.jsonl")
    assert messages(caplog)[-1] == (
        "mlflow-finops: tracking server unreachable at run end; 3 cost batch(es) spooled to "
        f"{path}, delivered by the next tracked run or `mlflow-finops sync`")


def test_a_batch_put_after_close_is_delivered_or_spooled(client: MlflowClient, copied_store: str,
                                                         proxy: ThreadingHTTPServer,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    run_id = new_run(client)
    outbox = Outbox(min_interval_s=0).start()
    assert outbox.close(timeout_s=5) == 0
    outbox.put(cost_batch(copied_store, run_id, 8))
    assert history(client, run_id) == [(4.0, 8)]
    with caplog.at_level(logging.WARNING):
        outbox.put(cost_batch(proxy.url, "late", 9))  # type: ignore[attr-defined]
    [path] = spool_dir().glob("*.jsonl")
    assert [(b["run_id"], b["metrics"][0][3]) for b in spooled()] == [("late", 9)]
    [warning] = messages(caplog)
    assert warning == ("mlflow-finops: a cost batch for run late came after delivery closed and could not be sent "
                       "(API request to endpoint /api/2.0/mlflow/runs/log-batch failed with error code 404 != 200. "
                       f"Response body: '<html>404 Not Found</html>'); spooled to {path}")


def test_the_next_outbox_syncs_the_spool_of_its_store(client: MlflowClient, copied_store: str) -> None:
    run_id = new_run(client)
    spool_file(cost_batch(copied_store, run_id, 3))
    spool_file(cost_batch(NOBODY, "x", 1))
    Outbox(min_interval_s=0).start(sync_spool_for=copied_store).close(timeout_s=10)
    assert history(client, run_id) == [(1.5, 3)]
    assert [b["run_id"] for b in spooled()] == ["x"]


def test_an_outbox_without_a_store_to_sync_leaves_the_spool(client: MlflowClient, copied_store: str) -> None:
    run_id = new_run(client)
    spool_file(cost_batch(copied_store, run_id, 3))
    Outbox(min_interval_s=0).start().close(timeout_s=10)
    assert history(client, run_id) == []
    assert len(spooled()) == 1
