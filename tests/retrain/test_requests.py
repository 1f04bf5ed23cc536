"""Retrain requests and their claims on a real SQLite MLflow store: one request per decision,
claims that expire, and a Ray job environment without credentials (no Ray needed)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from mlflow_finops import load_policy
from mlflow_finops.names import CLAIMS_PREFIX, TAG_CLAIM_HOST, TAG_CLAIM_LEASE_S, TAG_CLAIM_PID, TAG_CLAIM_TIME_MS
from mlflow_finops.retrain import request_retrain
from mlflow_finops.claims import claim, release
from mlflow_finops.retrain.supervisor import RetrainSupervisor, job_env


def _policy(tmp_path: Path):
    (tmp_path / "finops.toml").write_text('[models.churn]\nreference = "ref.csv"\n')
    return load_policy(tmp_path / "finops.toml")


def _all_at_once(n: int, fn) -> list:
    """``fn()`` in ``n`` threads released together; their results (an exception fails the test)."""
    barrier = threading.Barrier(n)
    results: list = [None] * n
    errors: list = []

    def work(i: int) -> None:
        barrier.wait()
        try:
            results[i] = fn()
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    return results


def _requests(model: str = "churn") -> list[str]:
    c = MlflowClient()
    exp = c.get_experiment_by_name(f"finops-retrains/{model}")
    return [r.info.run_id for r in c.search_runs([exp.experiment_id])] if exp else []


def test_concurrent_manual_requests_make_one_request(tmp_path: Path, sqlite_uri: str) -> None:
    policy = _policy(tmp_path)
    ids = _all_at_once(4, lambda: request_retrain(policy, "churn", client=MlflowClient()))
    assert len(set(ids)) == 1, ids
    assert _requests() == [ids[0]]
    # a later manual request while that one is open returns it too
    assert request_retrain(policy, "churn") == ids[0]


def test_one_request_per_drift_check_even_when_concurrent(tmp_path: Path, sqlite_uri: str) -> None:
    policy = _policy(tmp_path)
    c = MlflowClient()
    drift = [c.create_run(c.get_experiment_by_name("Default").experiment_id).info.run_id for _ in range(2)]
    ids = _all_at_once(3, lambda: request_retrain(policy, "churn", drift_run_id=drift[0], client=MlflowClient()))
    assert len(set(ids)) == 1, ids
    assert c.get_run(drift[0]).data.tags["finops.retrain_run_id"] == ids[0]
    other = request_retrain(policy, "churn", drift_run_id=drift[1])  # another decision, another request
    assert other != ids[0] and sorted(_requests()) == sorted([ids[0], other])


def test_a_request_after_the_open_one_ended_is_a_new_request(tmp_path: Path, sqlite_uri: str) -> None:
    policy = _policy(tmp_path)
    first = request_retrain(policy, "churn")
    RetrainSupervisor(policy).cancel(first, "test")
    second = request_retrain(policy, "churn")
    assert second != first


def test_a_claim_is_taken_once_and_an_expired_one_is_broken(sqlite_uri: str) -> None:
    c = MlflowClient()
    won = _all_at_once(5, lambda: claim(MlflowClient(), "k", lease_s=60))
    assert sorted(won) == [False] * 4 + [True]
    assert not claim(c, "k", lease_s=60)  # held and within its lease
    release(c, "k")
    assert claim(c, "k", lease_s=0.5)
    time.sleep(0.6)
    assert claim(c, "k", lease_s=60)  # the holder's lease ran out: broken and taken
    assert not claim(c, "k", lease_s=60)


def test_a_request_claim_stranded_by_a_dead_process_expires(tmp_path: Path, sqlite_uri: str) -> None:
    # a requester killed while holding the model's claim: its lease (60 s) ran out long ago
    c = MlflowClient()
    c.create_experiment(f"{CLAIMS_PREFIX}/retrain-request-churn", tags={
        TAG_CLAIM_HOST: "elsewhere", TAG_CLAIM_PID: "1",
        TAG_CLAIM_TIME_MS: str(int((time.time() - 600) * 1000)), TAG_CLAIM_LEASE_S: "60",
    })
    t0 = time.monotonic()
    run_id = request_retrain(_policy(tmp_path), "churn")
    assert time.monotonic() - t0 < 30
    assert _requests() == [run_id]


def test_the_ray_job_environment_holds_no_credentials() -> None:
    environ = {
        "MLFLOW_TRACKING_URI": "http://alice:s3cret@mlflow.example:5000",
        "MLFLOW_TRACKING_USERNAME": "alice",
        "MLFLOW_TRACKING_PASSWORD": "s3cret",
        "MLFLOW_TRACKING_TOKEN": "tok-123",
        "MLFLOW_FINOPS_TEAM": "growth",
        "MLFLOW_FINOPS_API_TOKEN": "tok-456",
        "MLFLOW_S3_ENDPOINT_URL": "https://key:s3cret@minio.example",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
        "AWS_SECRET_ACCESS_KEY": "aws-secret",
        "HOME": "/home/alice",
    }
    env = job_env(environ, environ["MLFLOW_TRACKING_URI"])
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow.example:5000"
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "https://minio.example"
    assert env["MLFLOW_FINOPS_TEAM"] == "growth" and env["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "30"
    assert env["MLFLOW_FINOPS_CHARGE_PROCESS_START"] == "true"
    text = repr(env)
    for secret in ("alice", "s3cret", "tok-123", "tok-456", "aws-secret", "AWS_"):
        assert secret not in text
