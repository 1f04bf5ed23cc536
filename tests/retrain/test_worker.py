"""Retraining on the warm Ray actor (``runner = "actor"``) on the session's real Ray cluster."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import SGDClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mlflow_finops import load_policy
from mlflow_finops.names import RETRAIN_ACTOR_CLASS, RETRAIN_ACTOR_NAME, RETRAIN_ACTOR_NAMESPACE
from mlflow_finops.ray_cluster import join
from mlflow_finops.retrain import RetrainSupervisor, jobs_address, request_retrain
from mlflow_finops.retrain.worker import ActorRunner, RetrainWorker

from .test_supervisor import _wait_for, make_data
from .test_supervisor import setup as setup_champion

ray = pytest.importorskip("ray")


def _actor():
    try:
        return ray.get_actor(RETRAIN_ACTOR_NAME, namespace=RETRAIN_ACTOR_NAMESPACE)
    except ValueError:
        return None


def _kill_actor() -> None:
    actor = _actor()
    if actor is not None:
        ray.kill(actor, no_restart=True)
        _wait_for("the actor's end", lambda: _actor() is None, 60)


@pytest.fixture
def actor_cluster(ray_cluster, monkeypatch: pytest.MonkeyPatch):
    """The session's cluster named by its GCS address, with no retrain actor before or after."""
    monkeypatch.setenv("RAY_ADDRESS", ray_cluster.address)
    if not ray.is_initialized():
        join(ray_cluster.address, namespace=RETRAIN_ACTOR_NAMESPACE, log_to_driver=False)
    _kill_actor()
    yield ray_cluster
    if not ray.is_initialized():
        join(ray_cluster.address, namespace=RETRAIN_ACTOR_NAMESPACE, log_to_driver=False)
    _kill_actor()
    ray.shutdown()


def on_actor(tmp_path: Path, retrain: str = "", warm_idle_s: float = 120):
    """The policy written by setup_champion, retraining on the actor."""
    path = tmp_path / "finops.toml"
    text = path.read_text().replace('runner = "job"', 'runner = "actor"')
    extra = f"warm_start_steps = 30\nwarm_idle_s = {warm_idle_s}\n{retrain}"
    path.write_text(text.replace("warm_start_steps = 30", extra))
    return load_policy(path)


def cpu_s(run) -> float:
    return run.data.metrics["finops/cpu_core_hours"] * 3600


def test_the_actor_class_is_the_one_the_ray_sampler_leaves_out() -> None:
    assert RetrainWorker.__name__ == RETRAIN_ACTOR_CLASS


def test_retrains_on_the_warm_actor_are_promoted_and_split_its_whole_cpu(
    tmp_path: Path, actor_cluster, sqlite_uri: str
) -> None:
    _, name = setup_champion(tmp_path, actor_cluster, make_pipeline(StandardScaler(), SGDClassifier(random_state=0)),
                             tag="actor")
    policy = on_actor(tmp_path)
    sup = RetrainSupervisor(policy)
    c = MlflowClient()
    first = sup.retrain("churn")
    assert first.state == "promoted", first.reason
    run1 = c.get_run(first.run_id)
    assert run1.info.status == "FINISHED"
    assert run1.data.tags["finops.retrain_runner"] == "actor"
    assert run1.data.tags["finops.ray_submission_id"] == f"finops-retrain-{first.run_id[:12]}-1"
    assert run1.data.tags["finops.tracking_status"] == "complete"
    assert "finops.ray_job_id" not in run1.data.tags  # an actor is no Ray driver: its own process only
    assert run1.data.metrics["finops/cost_usd"] > 0
    champion = c.get_model_version_by_alias(name, "champion")
    assert str(champion.version) == first.model_version == "2"
    assert champion.tags["finops.retrain_run_id"] == first.run_id
    assert champion.tags["finops.parent_version"] == "1"
    assert float(champion.tags["finops.cost_usd"]) > 0
    pid = ray.get(_actor().pid.remote())

    time.sleep(2)  # idle upkeep, charged to the next retrain
    make_data(3000, 2.0, 4).to_csv(tmp_path / "incoming" / "w2.csv", index=False)
    second = sup.retrain("churn")
    assert second.state in ("promoted", "not_promoted"), second.reason
    assert ray.get(_actor().pid.remote()) == pid  # the same warm actor
    run2 = c.get_run(second.run_id)
    assert c.get_model_version(name, second.model_version).tags["finops.parent_version"] == "2"
    # warm: no imports to pay again
    assert cpu_s(run2) < cpu_s(run1)
    assert run2.data.metrics["finops/cost_usd"] < run1.data.metrics["finops/cost_usd"]
    # complete: the first run is charged from the actor's start, the second from the first's last
    # reading, so together they are all the actor used up to the second's last reading
    t = psutil.Process(pid).cpu_times()
    used = t.user + t.system + t.children_user + t.children_system
    assert used - 1.5 <= cpu_s(run1) + cpu_s(run2) <= used + 0.05, (cpu_s(run1), cpu_s(run2), used)


def test_the_actor_stops_its_retrain_at_the_cap(tmp_path: Path, actor_cluster, sqlite_uri: str) -> None:
    # 12 CPU-s at the default price: past the actor's start-up (its first retrain pays it), far
    # short of 1000 warm-start steps; the backstop (cap x 2) is out of reach of a retrain that
    # stops itself within one step, so only the retrain's own stop can end it
    cap = 12 * 0.031611 / 3600
    _, name = setup_champion(tmp_path, actor_cluster, RandomForestClassifier(n_estimators=20, random_state=0),
                             tag="actor-cap", per_job=cap)
    policy = on_actor(tmp_path, "cap_tolerance = 1.0")
    text = (tmp_path / "finops.toml").read_text().replace("warm_start_steps = 30", "warm_start_steps = 1000")
    (tmp_path / "finops.toml").write_text(text)
    policy = load_policy(tmp_path / "finops.toml")
    out = RetrainSupervisor(policy).retrain("churn")
    assert out.state == "capped", out.reason
    run = MlflowClient().get_run(out.run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags["finops.retrain_runner"] == "actor"
    assert re.fullmatch(r"stopped at the cost cap: \$\S+ >= \$\S+; nothing promoted", run.data.tags["finops.reason"])
    assert out.reason == run.data.tags["finops.reason"]
    assert run.data.tags.get("finops.stopped_for_cap") != "true"  # the backstop did not fire
    assert cap <= run.data.metrics["finops/cost_usd"] < 2 * cap
    assert [str(v.version) for v in MlflowClient().search_model_versions(f"name = '{name}'")] == ["1"]
    assert _actor() is not None  # still warm for the next one


def test_an_actor_that_ignores_its_stop_is_killed(tmp_path: Path, actor_cluster, sqlite_uri: str) -> None:
    # The fault: the refit reads its reference from a FIFO nobody writes to; the retrain's thread
    # blocks in C and never sees the stop. It spends nothing, so only the time limit stops it,
    # and only killing the actor ends it.
    _, name = setup_champion(tmp_path, actor_cluster, make_pipeline(StandardScaler(), SGDClassifier()),
                             tag="actor-hung", attempts=1)
    (tmp_path / "ref.csv").unlink()
    os.mkfifo(tmp_path / "ref.csv")
    policy = on_actor(tmp_path, 'max_job_minutes = 0.1\nstrategy = "refit"')
    run_id = request_retrain(policy, "churn")
    sup = RetrainSupervisor(policy)
    out = sup.process(run_id, wait=False)
    t0 = time.monotonic()
    while not out.done:
        assert time.monotonic() - t0 < 180, out.reason
        time.sleep(0.5)
        out = sup.process(run_id, wait=False)
    assert out.state == "failed", out.reason
    assert "max_job_minutes" in out.reason
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags["finops.stopped_for_time"] == "true"
    _wait_for("the killed actor's end", lambda: _actor() is None, 60)
    assert [str(v.version) for v in MlflowClient().search_model_versions(f"name = '{name}'")] == ["1"]


def test_a_running_retrain_on_the_actor_is_cancelled_by_a_cooperative_stop(
    tmp_path: Path, actor_cluster, sqlite_uri: str
) -> None:
    _, name = setup_champion(tmp_path, actor_cluster, RandomForestClassifier(n_estimators=20, random_state=0),
                             tag="actor-cancel")
    on_actor(tmp_path)
    text = (tmp_path / "finops.toml").read_text().replace("warm_start_steps = 30", "warm_start_steps = 1000")
    (tmp_path / "finops.toml").write_text(text)
    policy = load_policy(tmp_path / "finops.toml")
    sup = RetrainSupervisor(policy)
    out = sup.retrain("churn", wait=False)
    assert out.state == "submitted", out.reason
    c = MlflowClient()
    _wait_for("running retrain", lambda: c.get_run(out.run_id).data.tags.get("finops.retrain_state") == "running")
    pid = ray.get(_actor().pid.remote())
    assert sup.cancel(out.run_id, "test over").state == "dropped"
    runner = ActorRunner(policy.retrain, jobs_address(policy.retrain))
    assert runner.status(out.ray_job_id).status == "STOPPED"  # it stopped by itself: not killed
    assert ray.get(_actor().pid.remote()) == pid
    run = c.get_run(out.run_id)
    assert run.info.status == "KILLED" and run.data.tags["finops.retrain_state"] == "dropped"
    assert run.data.metrics["finops/cost_usd"] > 0  # the run's cost up to the stop
    assert [str(v.version) for v in c.search_model_versions(f"name = '{name}'")] == ["1"]


def test_a_retrain_on_the_actor_is_followed_after_its_supervisor_exited(
    tmp_path: Path, actor_cluster, sqlite_uri: str
) -> None:
    _, name = setup_champion(tmp_path, actor_cluster, make_pipeline(StandardScaler(), SGDClassifier(random_state=0)),
                             tag="actor-restart")
    policy = on_actor(tmp_path)
    run_id = request_retrain(policy, "churn")
    code = ("import sys; from mlflow_finops.retrain import RetrainSupervisor; "
            "out = RetrainSupervisor(sys.argv[1]).process(sys.argv[2], wait=False); print(out.state)")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "finops.toml"), run_id],
                            capture_output=True, text=True, timeout=300)
    assert result.stdout.strip().endswith("submitted"), result.stdout + result.stderr[-3000:]
    # a new supervisor knows nothing but what MLflow holds
    tags = MlflowClient().get_run(run_id).data.tags
    assert (tags["finops.retrain_runner"], tags["finops.attempts"]) == ("actor", "1")
    out = RetrainSupervisor(policy).process(run_id)
    assert out.state == "promoted", out.reason
    assert str(MlflowClient().get_model_version_by_alias(name, "champion").version) == out.model_version


def test_the_actor_exits_after_warm_idle_s(tmp_path: Path, actor_cluster, sqlite_uri: str) -> None:
    (tmp_path / "finops.toml").write_text(
        f'[retrain]\nrunner = "actor"\nwarm_idle_s = 1\nray_address = "{actor_cluster.dashboard_url}"\n')
    rp = load_policy(tmp_path / "finops.toml").retrain
    actor = ActorRunner(rp, jobs_address(rp)).actor(create=True)
    ray.get(actor.pid.remote(), timeout=120)  # started
    t0 = time.monotonic()
    _wait_for("the idle actor's exit", lambda: _actor() is None, 60)
    assert time.monotonic() - t0 < 30


def test_the_idle_tail_of_an_exiting_actor_is_charged_to_its_last_retrain(
    tmp_path: Path, actor_cluster, sqlite_uri: str
) -> None:
    setup_champion(tmp_path, actor_cluster, make_pipeline(StandardScaler(), SGDClassifier(random_state=0)),
                   tag="actor-tail")
    policy = on_actor(tmp_path, warm_idle_s=3)
    out = RetrainSupervisor(policy).retrain("churn")
    assert out.state == "promoted", out.reason
    before = MlflowClient().get_run(out.run_id)
    _wait_for("the idle actor's exit", lambda: _actor() is None, 60)
    after = MlflowClient().get_run(out.run_id)
    assert cpu_s(after) > cpu_s(before)  # its ~3 s of idle upkeep, added as it exited
    assert after.data.metrics["finops/cost_usd"] > before.data.metrics["finops/cost_usd"]
    assert after.info.status == "FINISHED" and after.data.tags["finops.tracking_status"] == "complete"
