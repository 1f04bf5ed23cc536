"""Budget-limited incremental retraining as real Ray jobs (``runner = "job"``) on the session's Ray cluster.

The warm actor (``runner = "actor"``) has its own tests: test_worker.py."""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import SGDClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mlflow_finops import DriftGate, load_policy
from mlflow_finops.ray_cluster import free_ports
from mlflow_finops.retrain import RetrainSupervisor, request_retrain
from mlflow_finops.claims import claim, release

JobSubmissionClient = pytest.importorskip("ray.job_submission").JobSubmissionClient

EXE = str(Path(sys.executable).parent / "mlflow-finops")


def make_data(n: int, shift: float, seed: int) -> pd.DataFrame:
    """Two informative features; after a shift the label boundary moves with the data."""
    rng = np.random.default_rng(seed)
    X = rng.normal(loc=shift, size=(n, 4))
    y = ((X[:, 0] - shift) + 0.5 * (X[:, 1] - shift) + 0.8 * shift * np.sign(X[:, 2]) > 0).astype(int)
    return pd.DataFrame(X, columns=["f0", "f1", "f2", "f3"]).assign(y=y)


POLICY = """
[models.{model}]
reference = "ref.csv"
current = "incoming/*.csv"
target = "y"
registered_model = "{model}-{tag}"
[models.{model}.drift]
min_rows = 100
retrain_on = "drift"
[models.{model}.retrain]
runner = "job"
ray_address = "{jobs}"
sample_interval_s = 0.5
poll_s = 0.5
backoff_s = 0
max_attempts = {attempts}
refit_max_rows = 0
warm_start_step = 30
warm_start_steps = 30
[budgets.{model}]
amount_usd = {amount}
per_job_usd = {per_job}
models = ["{model}"]
priority = "{priority}"
"""


def setup(tmp_path: Path, ray_cluster, model, *, tag: str, amount: float = 5.0, per_job: float = 1.0,
          priority: str = "standard", attempts: int = 3, extra: str = "", new: pd.DataFrame | None = None,
          fmt: str = "skops", model_name: str = "churn"):
    """A policy, a reference file, a registered @champion, then newer data in incoming/."""
    ref = make_data(3000, 0.0, 1)
    ref.to_csv(tmp_path / "ref.csv", index=False)
    (tmp_path / "finops.toml").write_text(
        POLICY.format(tag=tag, jobs=ray_cluster.dashboard_url, amount=amount, per_job=per_job,
                      priority=priority, attempts=attempts, model=model_name) + extra
    )
    model.fit(ref.drop(columns="y"), ref["y"])
    name = f"{model_name}-{tag}"
    with mlflow.start_run():
        serialization = (
            {"skops_trusted_types": ["sklearn.tree._tree.Tree"]} if fmt == "skops" else {"serialization_format": fmt}
        )
        info = mlflow.sklearn.log_model(model, name="model", registered_model_name=name, **serialization)
    MlflowClient().set_registered_model_alias(name, "champion", str(info.registered_model_version))
    time.sleep(0.05)
    (tmp_path / "incoming").mkdir()
    (new if new is not None else make_data(3000, 1.5, 2)).to_csv(tmp_path / "incoming" / "w1.csv", index=False)
    return load_policy(tmp_path / "finops.toml"), name


@pytest.mark.parametrize("fmt", ["skops", "cloudpickle"])
def test_drift_to_promoted_challenger_with_lineage_and_cost(
    tmp_path: Path, ray_cluster, sqlite_uri: str, fmt: str
) -> None:
    policy, name = setup(tmp_path, ray_cluster, make_pipeline(StandardScaler(), SGDClassifier(random_state=0)),
                         tag=f"pf-{fmt}", fmt=fmt)
    gate = DriftGate.from_policy(policy, model="churn")
    decision = gate.check(pd.read_csv(tmp_path / "incoming" / "w1.csv"))
    assert decision.retrain, decision.reason
    run_id = request_retrain(policy, "churn", drift_run_id=decision.run_id)
    assert request_retrain(policy, "churn", drift_run_id=decision.run_id) == run_id  # idempotent
    out = RetrainSupervisor(policy).process(run_id)
    assert out.state == "promoted", out.reason
    c = MlflowClient()
    run = c.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["finops.update_path"] == "partial_fit"
    assert run.data.metrics["finops/cost_usd"] > 0
    assert run.data.metrics["eval/challenger_accuracy"] > run.data.metrics["eval/champion_accuracy"]
    champion = c.get_model_version_by_alias(name, "champion")
    assert str(champion.version) == out.model_version == str(c.get_model_version_by_alias(name, "challenger").version)
    assert champion.tags["finops.retrain_run_id"] == run_id
    assert champion.tags["finops.drift_run_id"] == decision.run_id
    assert float(champion.tags["finops.cost_usd"]) > 0
    assert c.get_run(decision.run_id).data.tags["finops.retrain_run_id"] == run_id
    # the challenger keeps the champion's serialization format
    flavor = mlflow.models.get_model_info(f"models:/{name}@champion").flavors["sklearn"]
    assert flavor["serialization_format"] == fmt


def test_out_of_budget_submits_no_job(tmp_path: Path, ray_cluster, sqlite_uri: str) -> None:
    policy, name = setup(tmp_path, ray_cluster, make_pipeline(StandardScaler(), SGDClassifier()), tag="oob",
                         amount=0.01)
    c = MlflowClient()
    spent = c.create_run(c.get_experiment_by_name("Default").experiment_id,
                         tags={"finops.model": "churn", "finops.tracked": "true"})
    c.log_metric(spent.info.run_id, "finops/cost_usd", 0.02)  # last month's... no: this period's spend
    c.set_terminated(spent.info.run_id)
    run_id = request_retrain(policy, "churn")
    out = RetrainSupervisor(policy).process(run_id)
    assert out.state == "out_of_budget"
    assert "envelope 'churn' is spent" in out.reason
    assert out.ray_job_id is None
    assert c.get_run(run_id).data.tags["finops.retrain_state"] == "out_of_budget"
    assert str(c.get_model_version_by_alias(name, "champion").version) == "1"


def test_the_retrain_command_exits_12_when_the_envelope_is_spent(tmp_path: Path, sqlite_uri: str) -> None:
    (tmp_path / "finops.toml").write_text(
        '[models.churn]\nregistered_model = "churn-spent"\n'
        '[budgets.churn]\namount_usd = 0.01\nmodels = ["churn"]\n'
    )
    c = MlflowClient()
    spent = c.create_run(c.get_experiment_by_name("Default").experiment_id,
                         tags={"finops.model": "churn", "finops.tracked": "true"})
    c.log_metric(spent.info.run_id, "finops/cost_usd", 0.02)
    c.set_terminated(spent.info.run_id)
    result = subprocess.run([EXE, "retrain", "--policy", str(tmp_path / "finops.toml"), "--model", "churn"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 12, result.stdout + result.stderr
    assert "churn: out_of_budget" in result.stdout
    assert "envelope 'churn' is spent: $0.020 of $0.010 this month; no job submitted" in result.stdout


def test_the_retrain_command_retries_a_failing_job_then_exits_1(
    tmp_path: Path, ray_cluster, sqlite_uri: str
) -> None:
    bad = make_data(500, 1.5, 3).drop(columns="y")  # the new data lost its label column
    setup(tmp_path, ray_cluster, make_pipeline(StandardScaler(), SGDClassifier()), tag="cli", attempts=2, new=bad)
    result = subprocess.run([EXE, "retrain", "--policy", str(tmp_path / "finops.toml"), "--model", "churn"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "churn: job failed, retrying in 0 s" in result.stdout
    assert "churn: failed" in result.stdout
    assert "Ray job FAILED after 2 attempt(s)" in result.stdout
    # the request itself: failed in MLflow after its two attempts (what a restarted supervisor reads)
    [request] = MlflowClient().search_runs(
        [e.experiment_id for e in MlflowClient().search_experiments()],
        filter_string="tags.`finops.retrain_state` = 'failed'",
    )
    assert request.info.status == "FAILED"
    assert request.data.tags["finops.attempts"] == "2"


def test_windows_priorities_and_deadline(tmp_path: Path, ray_cluster, sqlite_uri: str) -> None:
    now = datetime.now(timezone.utc)
    closed = (now + timedelta(hours=3)).strftime("%H:00")
    closes = (now + timedelta(hours=4)).strftime("%H:00")
    extra = f'\n[windows]\ntimezone = "UTC"\n[[windows.off_peak]]\nstart = "{closed}"\nend = "{closes}"\n'
    policy, _ = setup(tmp_path, ray_cluster, make_pipeline(StandardScaler(), SGDClassifier()), tag="win",
                      priority="exploratory", extra=extra)
    run_id = request_retrain(policy, "churn")
    sup = RetrainSupervisor(policy)
    out = sup.process(run_id)
    assert out.state == "waiting"
    assert "outside the off-peak ranges" in out.reason
    assert [r.info.run_id for r in sup.pending("churn")] == [run_id]  # kept in MLflow across restarts
    later = RetrainSupervisor(policy, now=lambda: now + timedelta(hours=25))
    out = later.process(run_id)
    assert out.state == "dropped"
    assert MlflowClient().get_run(run_id).info.status == "KILLED"
    assert sup.pending("churn") == []


def test_the_job_stops_itself_at_its_cap_and_nothing_is_promoted(
    tmp_path: Path, ray_cluster, sqlite_uri: str
) -> None:
    # The cap (12 CPU-s at the default price) lies past the job's start-up and far short of its
    # 1000 warm-start steps; the backstop (cap x 2) is out of reach of a job that stops itself
    # within one step, so only the job's own stop can end it.
    cap = 12 * 0.031611 / 3600
    policy, name = setup(tmp_path, ray_cluster, RandomForestClassifier(n_estimators=20, random_state=0),
                         tag="cap", per_job=cap)
    text = (tmp_path / "finops.toml").read_text()
    (tmp_path / "finops.toml").write_text(
        text.replace("warm_start_steps = 30", "warm_start_steps = 1000\ncap_tolerance = 1.0")
    )
    policy = load_policy(tmp_path / "finops.toml")
    run_id = request_retrain(policy, "churn")
    out = RetrainSupervisor(policy).process(run_id)
    assert out.state == "capped", out.reason
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags["finops.update_path"] == "warm_start"
    # the job's own verdict (written by the job, kept by the supervisor), not Ray's FAILED
    assert run.data.tags["finops.retrain_state"] == "capped"
    assert re.fullmatch(r"stopped at the cost cap: \$\S+ >= \$\S+; nothing promoted", run.data.tags["finops.reason"])
    assert out.reason == run.data.tags["finops.reason"] and "FAILED" not in out.reason
    assert run.data.tags.get("finops.stopped_for_cap") != "true"  # the backstop did not fire
    assert cap <= run.data.metrics["finops/cost_usd"] < 2 * cap  # the partial cost is recorded
    assert [str(v.version) for v in MlflowClient().search_model_versions(f"name = '{name}'")] == ["1"]


def test_a_hung_job_is_stopped_after_max_job_minutes(tmp_path: Path, ray_cluster, sqlite_uri: str) -> None:
    # A refit reads the reference, here a FIFO nobody writes to: reading it blocks forever, as
    # on a stuck network mount. The job spends nothing, so only the time limit can stop it.
    policy, name = setup(tmp_path, ray_cluster, make_pipeline(StandardScaler(), SGDClassifier()), tag="hung",
                         attempts=1)
    (tmp_path / "ref.csv").unlink()
    os.mkfifo(tmp_path / "ref.csv")
    text = (tmp_path / "finops.toml").read_text()
    (tmp_path / "finops.toml").write_text(
        text.replace("max_attempts = 1", 'max_attempts = 1\nmax_job_minutes = 0.1\nstrategy = "refit"')
    )
    policy = load_policy(tmp_path / "finops.toml")
    run_id = request_retrain(policy, "churn")
    sup = RetrainSupervisor(policy)
    t0 = time.monotonic()
    out = sup.process(run_id, wait=False)  # stepped, as the scheduler does
    while not out.done:
        assert time.monotonic() - t0 < 120, out.reason
        time.sleep(0.5)
        out = sup.process(run_id, wait=False)
    assert out.state == "failed", out.reason
    assert "max_job_minutes" in out.reason
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags["finops.stopped_for_time"] == "true"
    assert [str(v.version) for v in MlflowClient().search_model_versions(f"name = '{name}'")] == ["1"]


def test_a_request_is_a_retrain_of_its_model_whatever_the_policy_tags(tmp_path: Path, sqlite_uri: str) -> None:
    (tmp_path / "finops.toml").write_text(
        '[tags]\nteam = "growth"\nworkload = "training"\nmodel = "other"\n[models.churn]\nreference = "ref.csv"\n'
    )
    run_id = request_retrain(load_policy(tmp_path / "finops.toml"), "churn")
    tags = MlflowClient().get_run(run_id).data.tags
    assert tags["finops.workload"] == "retrain"
    assert tags["finops.model"] == "churn"
    assert tags["finops.team"] == "growth"  # the policy's attribution tags are kept


def _wait_for(what, check, timeout_s: float = 120.0, every_s: float = 0.5):
    t0 = time.monotonic()
    while not (got := check()):
        assert time.monotonic() - t0 < timeout_s, f"no {what} after {timeout_s:.0f} s"
        time.sleep(every_s)
    return got


def test_a_worse_challenger_is_not_promoted(tmp_path: Path, ray_cluster, sqlite_uri: str) -> None:
    # The older new file has its labels flipped, the newest one (exactly the 20 % held out) is
    # clean: the updated model is far worse than the champion, by much more than the margin.
    flipped = make_data(2400, 0.0, 2)
    flipped["y"] = 1 - flipped["y"]
    policy, name = setup(tmp_path, ray_cluster, make_pipeline(StandardScaler(), SGDClassifier(random_state=0)),
                         tag="worse", new=flipped, extra="")
    text = (tmp_path / "finops.toml").read_text()
    (tmp_path / "finops.toml").write_text(text.replace("backoff_s = 0", "backoff_s = 0\nmargin = 0.05"))
    policy = load_policy(tmp_path / "finops.toml")
    make_data(600, 0.0, 3).to_csv(tmp_path / "incoming" / "w2.csv", index=False)
    newer = os.path.getmtime(tmp_path / "incoming" / "w1.csv") + 5
    os.utime(tmp_path / "incoming" / "w2.csv", (newer, newer))
    run_id = request_retrain(policy, "churn")
    out = RetrainSupervisor(policy).process(run_id)
    assert out.state == "not_promoted", out.reason
    c = MlflowClient()
    run = c.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["eval/challenger_accuracy"] < run.data.metrics["eval/champion_accuracy"] - 0.05
    assert run.data.tags["finops.reason"].startswith("not promoted: challenger v2 accuracy=")
    assert str(c.get_model_version_by_alias(name, "champion").version) == "1"  # @champion stays
    assert str(c.get_model_version_by_alias(name, "challenger").version) == "2" == out.model_version


def test_one_ray_job_per_attempt(tmp_path: Path, ray_cluster, sqlite_uri: str) -> None:
    (tmp_path / "finops.toml").write_text(
        f'[models.churn]\nregistered_model = "churn-once"\n[models.churn.retrain]\n'
        f'runner = "job"\nray_address = "{ray_cluster.dashboard_url}"\npoll_s = 0.5\n'
    )
    policy = load_policy(tmp_path / "finops.toml")
    c = MlflowClient()
    run_id = request_retrain(policy, "churn")
    sid = f"finops-retrain-{run_id[:12]}-1"
    jobs = JobSubmissionClient(ray_cluster.dashboard_url)

    def our_jobs() -> list[str]:
        return [j.submission_id for j in jobs.list_jobs() if (j.metadata or {}).get("finops.run_id") == run_id]

    # another scheduler holds attempt 1 (it is submitting it): no second job, nothing written
    assert claim(c, f"retrain-{run_id}-1", lease_s=300)
    out = RetrainSupervisor(policy).process(run_id, wait=False)
    assert "attempt 1 is being submitted by another scheduler" in out.reason, out.reason
    tags = c.get_run(run_id).data.tags
    assert (tags["finops.retrain_state"], tags["finops.attempts"], our_jobs()) == ("pending", "0", [])
    # that scheduler submitted attempt 1's job, then died before recording it (its claim freed)
    release(c, f"retrain-{run_id}-1")
    jobs.submit_job(entrypoint="python -c 'import time; time.sleep(120)'", submission_id=sid,
                    entrypoint_num_cpus=0, metadata={"finops.run_id": run_id, "finops.cap_usd": "0.5"})
    outs = [None, None]

    def step(i: int) -> None:
        outs[i] = RetrainSupervisor(policy).process(run_id, wait=False)

    threads = [threading.Thread(target=step, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    # the existing job is followed, not submitted again, and recorded once with its own cap
    assert "submitted" in [o.state for o in outs], [o.reason for o in outs if o]
    assert all(o.state == "submitted" or "another scheduler" in o.reason for o in outs), [o.reason for o in outs]
    assert RetrainSupervisor(policy).process(run_id, wait=False).state == "submitted"
    tags = c.get_run(run_id).data.tags
    assert (tags["finops.ray_submission_id"], tags["finops.attempts"], tags["finops.cap_usd"]) == (
        sid, "1", "0.5000000000")
    assert our_jobs() == [sid]
    # cancel stops the job (and drops the request)
    out = RetrainSupervisor(policy).cancel(run_id, "test over")
    assert out.state == "dropped"
    from ray.job_submission import JobStatus

    _wait_for("stopped job", lambda: jobs.get_job_status(sid) == JobStatus.STOPPED, 60)


def test_a_submission_failure_leaves_the_request_with_its_reason(tmp_path: Path, sqlite_uri: str) -> None:
    nobody = f"http://127.0.0.1:{free_ports(1)[0]}"  # nothing listens there: connection refused
    (tmp_path / "finops.toml").write_text(
        f'[models.churn]\nregistered_model = "churn-nosub"\n[models.churn.retrain]\n'
        f'runner = "job"\nray_address = "{nobody}"\nmax_attempts = 2\nbackoff_s = 0\n'
    )
    policy = load_policy(tmp_path / "finops.toml")
    run_id = request_retrain(policy, "churn")
    sup = RetrainSupervisor(policy)
    first = sup.process(run_id)
    assert first.state == "retry", first.reason
    tags = MlflowClient().get_run(run_id).data.tags
    assert tags["finops.retrain_state"] == "retry" and tags["finops.attempts"] == "1"
    assert tags["finops.reason"].startswith(f"could not submit to Ray at {nobody}: ")
    second = sup.process(run_id)
    assert second.state == "failed" and second.attempts == 2
    assert second.reason.startswith(f"could not submit to Ray at {nobody}: ")
    assert MlflowClient().get_run(run_id).info.status == "FAILED"
    # the command says so in one line each, without a traceback, and exits 1
    result = subprocess.run([EXE, "retrain", "--policy", str(tmp_path / "finops.toml"), "--model", "churn"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"churn: could not submit to Ray at {nobody}: " in result.stdout
    assert "churn: failed" in result.stdout and "Traceback" not in result.stdout + result.stderr


def test_the_job_gets_no_credentials_and_a_running_job_can_be_cancelled(
    tmp_path: Path, ray_cluster, server_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the tracking URI with a password in it, and a token: neither may reach the Ray job
    secret_uri = server_uri.replace("http://", "http://alice:s3cret-pw@")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", secret_uri)
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "s3cret-token")
    mlflow.set_tracking_uri(secret_uri)
    policy, name = setup(tmp_path, ray_cluster, RandomForestClassifier(n_estimators=20, random_state=0),
                         tag=f"leak-{time.time_ns()}", model_name=f"leak{time.time_ns()}")
    text = (tmp_path / "finops.toml").read_text()
    (tmp_path / "finops.toml").write_text(text.replace("warm_start_steps = 30", "warm_start_steps = 1000"))
    policy = load_policy(tmp_path / "finops.toml")
    model = next(iter(policy.models))
    run_id = request_retrain(policy, model)
    sup = RetrainSupervisor(policy)
    out = sup.process(run_id, wait=False)
    assert out.state == "submitted", out.reason
    jobs = JobSubmissionClient(ray_cluster.dashboard_url)
    info = jobs.get_job_info(out.ray_job_id)
    seen = json.dumps({"entrypoint": info.entrypoint, "runtime_env": info.runtime_env, "metadata": info.metadata})
    for secret in ("s3cret", "alice", "MLFLOW_TRACKING_TOKEN"):
        assert secret not in seen
    assert info.runtime_env["env_vars"]["MLFLOW_TRACKING_URI"] == server_uri
    # the job reaches the server without them (it writes `running`), and cancel stops it then
    c = MlflowClient()
    _wait_for("running job", lambda: c.get_run(run_id).data.tags.get("finops.retrain_state") == "running")
    out = sup.cancel(run_id, "test over")
    assert out.state == "dropped"
    from ray.job_submission import JobStatus

    _wait_for("stopped job", lambda: jobs.get_job_status(out.ray_job_id) == JobStatus.STOPPED, 60)
    assert c.get_run(run_id).data.tags["finops.retrain_state"] == "dropped"
