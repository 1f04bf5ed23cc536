"""Claims with a lease on a real SQLite MLflow store (copied, not migrated): who holds one, when it
goes stale, who may take it over or release it, and what stays as a record."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest
from mlflow.entities import Experiment, ExperimentTag
from mlflow.tracking import MlflowClient

from mlflow_finops import claims
from mlflow_finops.claims import claim, claim_name, release
from mlflow_finops.names import CLAIMS_PREFIX, TAG_CLAIM_HOST, TAG_CLAIM_LEASE_S, TAG_CLAIM_PID, TAG_CLAIM_TIME_MS
from store_support import copied_store  # noqa: F401

HOST = socket.gethostname()


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _held(client: MlflowClient, key: str) -> Experiment | None:
    return client.get_experiment_by_name(claim_name(key))


def _records(client: MlflowClient, key: str) -> list[str]:
    from mlflow.entities import ViewType

    return sorted(e.name for e in client.search_experiments(view_type=ViewType.ALL,
                                                            filter_string=f"name LIKE '{claim_name(key)}/%'"))


def _plant(client: MlflowClient, key: str, *, host: str = HOST, pid: int | str = 1, age_s: float = 0.0,
           lease_s: str | None = "60") -> str:
    tags = {TAG_CLAIM_HOST: host, TAG_CLAIM_PID: str(pid), TAG_CLAIM_TIME_MS: str(int((time.time() - age_s) * 1000))}
    if lease_s is not None:
        tags[TAG_CLAIM_LEASE_S] = lease_s
    return client.create_experiment(claim_name(key), tags=tags)


def test_a_claim_is_a_hidden_experiment_saying_who_holds_it_and_for_how_long(copied_store: str) -> None:
    c = MlflowClient()
    before = int(time.time() * 1000)
    assert claim(c, "w-1", lease_s=90.5)
    exp = _held(c, "w-1")
    assert claim_name("w-1") == f"{CLAIMS_PREFIX}/w-1" and exp is not None
    assert exp.lifecycle_stage == "deleted"  # out of the UI's list, but its name still taken
    assert exp.tags[TAG_CLAIM_HOST] == HOST and exp.tags[TAG_CLAIM_PID] == str(os.getpid())
    assert exp.tags[TAG_CLAIM_LEASE_S] == "90.5"
    assert before <= int(exp.tags[TAG_CLAIM_TIME_MS]) <= int(time.time() * 1000)
    assert not claim(c, "w-1", lease_s=90.5)  # held by a live process within its lease
    assert claim(c, "w-2", lease_s=90.5)  # another key, another claim


def test_a_stale_claim_is_taken_over_and_its_record_kept(copied_store: str) -> None:
    c = MlflowClient()
    old = _plant(c, "k", host="elsewhere", age_s=61)  # lease 60 s: ran out
    assert claim(c, "k", lease_s=600)
    exp = _held(c, "k")
    assert exp.experiment_id != old and exp.tags[TAG_CLAIM_PID] == str(os.getpid())
    [record] = _records(c, "k")
    assert record.startswith(f"{claim_name('k')}/expired-")
    assert c.get_experiment(old).name == record and c.get_experiment(old).lifecycle_stage == "deleted"


def test_a_claim_of_a_dead_process_on_this_host_is_taken_over_within_its_lease(copied_store: str) -> None:
    c = MlflowClient()
    _plant(c, "dead", pid=_dead_pid())
    assert claim(c, "dead", lease_s=60)
    _plant(c, "alive-elsewhere", host="elsewhere", pid=_dead_pid())  # the pid means nothing on another host
    assert not claim(c, "alive-elsewhere", lease_s=60)
    _plant(c, "alive", pid=1)
    assert not claim(c, "alive", lease_s=60)
    _plant(c, "no-pid", pid="")  # nothing to check: the lease decides
    assert not claim(c, "no-pid", lease_s=60)


def exp(tags: dict[str, str], created_ms: int | None = 1_000_000) -> Experiment:
    return Experiment("1", claim_name("x"), "", "deleted", tags=[ExperimentTag(k, v) for k, v in tags.items()],
                      creation_time=created_ms)


@pytest.mark.parametrize(
    "tags, now_ms, lease_s, stale",
    [
        ({TAG_CLAIM_TIME_MS: "1000000", TAG_CLAIM_LEASE_S: "10"}, 1_010_000, 99, "claimed 10 s ago, lease 10 s"),
        ({TAG_CLAIM_TIME_MS: "1000000", TAG_CLAIM_LEASE_S: "10"}, 1_009_999, 1, None),  # its own lease wins
        ({TAG_CLAIM_TIME_MS: "1000000"}, 1_005_000, 5, "claimed 5 s ago, lease 5 s"),  # no lease tag: ours
        ({TAG_CLAIM_TIME_MS: "1000000"}, 1_004_999, 5, None),
        ({}, 1_002_500, 2.5, "claimed 2 s ago, lease 2.5 s"),  # no time tag: the experiment's creation
        ({TAG_CLAIM_TIME_MS: "soon"}, 1_003_000, 3, "claimed 3 s ago, lease 3 s"),  # unreadable: creation, ours
        ({TAG_CLAIM_LEASE_S: "ever", TAG_CLAIM_TIME_MS: "0"}, 1_000_999, 1, None),
        ({TAG_CLAIM_LEASE_S: "1"}, 1_000_999, 10, None),
        ({TAG_CLAIM_TIME_MS: "1000000", TAG_CLAIM_HOST: HOST}, 1_000_001, 60, None),  # this host, no pid tag
    ],
)
def test_when_a_claim_goes_stale(tags: dict[str, str], now_ms: int, lease_s: float, stale: str | None) -> None:
    assert claims._stale(exp(tags), now_ms, lease_s) == stale


def test_a_claim_without_any_time_counts_from_the_epoch() -> None:
    assert claims._stale(exp({}, created_ms=None), 5_000, 6) is None
    assert claims._stale(exp({}, created_ms=None), 6_000, 6) == "claimed 6 s ago, lease 6 s"


def test_whose_process_is_alive() -> None:
    dead = _dead_pid()
    assert claims._alive(os.getpid()) and claims._alive(1) and not claims._alive(dead)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.3)
        assert claims._alive(sleeper.pid)
        time.sleep(0.2)
        assert sleeper.poll() is None  # asked with signal 0: nothing was sent to it
    finally:
        sleeper.kill()
        sleeper.wait()
    tags = {TAG_CLAIM_TIME_MS: "1000000", TAG_CLAIM_HOST: HOST}
    assert claims._stale(exp({**tags, TAG_CLAIM_PID: str(dead)}), 1_000_001, 60) == f"process {dead} is gone"
    assert claims._stale(exp({**tags, TAG_CLAIM_PID: str(os.getpid())}), 1_000_001, 60) is None


def test_only_the_holder_releases_a_claim_and_a_release_never_raises(
    copied_store: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = MlflowClient()
    assert claim(c, "mine", lease_s=60)
    release(c, "mine")
    assert _held(c, "mine") is None
    [record] = _records(c, "mine")
    assert record.startswith(f"{claim_name('mine')}/released-")
    assert c.get_experiment_by_name(record).lifecycle_stage == "deleted"
    assert claim(c, "mine", lease_s=60)  # free again

    theirs = _plant(c, "theirs", host="elsewhere")
    release(c, "theirs")
    assert _held(c, "theirs").experiment_id == theirs
    assert f"{claim_name('theirs')} is now held by elsewhere pid 1: not releasing it" in [
        r.getMessage() for r in caplog.records]
    _plant(c, "same-host", pid=1)  # this host, another process
    release(c, "same-host")
    assert _held(c, "same-host") is not None

    release(c, "never-claimed")  # nothing to do
    assert _records(c, "never-claimed") == []
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    release(MlflowClient("http://127.0.0.1:9"), "mine")  # no store: the lease frees it later
    last = caplog.records[-1].getMessage()
    assert last.startswith("could not release claim mine (") and last.endswith("); it frees when its lease ends")
    assert "127.0.0.1" in last  # the store's error says why


def test_a_retire_that_fails_leaves_the_claim(copied_store: str, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    caplog.set_level(logging.INFO, logger="mlflow_finops.claims")
    c = MlflowClient()
    _plant(c, "k", host="elsewhere")
    held = _held(c, "k")
    c.delete_experiment(held.experiment_id)
    claims._retire(c, held, "expired")  # an old copy: it says "active", the store "deleted" (no rename then)
    assert "could not retire claim" in caplog.text
    assert _held(c, "k").experiment_id == held.experiment_id and _records(c, "k") == []  # the lease stays
    claims._retire(c, _held(c, "k"), "expired")
    assert _held(c, "k") is None and len(_records(c, "k")) == 1
    claims._hide(c, "no-such-id")  # cosmetic: never raises
