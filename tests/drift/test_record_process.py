"""A cold `drift check` logs from a second process: the same run, the whole command's cost, nothing lost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from drift_support import _template_db, all_runs, drift_store, frame  # noqa: F401
from mlflow import MlflowClient

from mlflow_finops.cli import cli
from mlflow_finops.drift.record_process import CheckRunProcess
from mlflow_finops.drift.results import ColumnDrift, DriftDecision, PerformanceResult
from mlflow_finops.names import TAG_PROCESS_PID, TAG_TRACKING_STATUS, TRACKING_COMPLETE

CLI = str(Path(sys.executable).parent / "mlflow-finops")


@pytest.fixture
def data(tmp_path: Path) -> Path:
    frame(3000, seed=1).to_parquet(tmp_path / "ref.parquet")
    frame(3000, seed=3, shift=1.0).to_parquet(tmp_path / "moved.parquet")
    frame(3000, seed=2).to_parquet(tmp_path / "calm.parquet")
    (tmp_path / "finops.toml").write_text("[drift]\nmin_rows = 100\n")
    return tmp_path


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_a_cold_check_logs_its_decision_and_is_charged_the_whole_command(drift_store: str, data: Path) -> None:
    proc = subprocess.Popen([CLI, "drift", "check", "--policy", str(data / "finops.toml"), "--model", "churn",
                             "--reference", "ref.parquet", "--current", "moved.parquet", "--json"],
                            cwd=data, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    with proc.stdout, proc.stderr:
        out, err = proc.stdout.read(), proc.stderr.read()
    assert proc.returncode == 10, err
    decision = json.loads(out)
    run = MlflowClient().get_run(decision["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["finops.decision"] == "retrain"
    assert run.data.metrics["drift/columns_drifted"] == 4.0
    assert run.data.tags[TAG_TRACKING_STATUS] == TRACKING_COMPLETE
    assert run.data.tags[TAG_PROCESS_PID] != str(proc.pid)  # the logging process owns the run
    artifacts = {a.path for a in MlflowClient().list_artifacts(run.info.run_id, "drift")}
    assert {"drift/columns.json", "drift/drift_report.html"} <= artifacts, artifacts
    # the whole command, both processes, from its start: what the OS counted, less the last sample's lag
    charged = run.data.metrics["finops/cpu_core_hours"] * 3600
    counted = usage.ru_utime + usage.ru_stime
    assert 0.7 * counted <= charged <= 1.05 * counted, (charged, counted)  # from the check's start alone: ~0.33


def test_history_crosses_to_the_logging_process(drift_store: str, data: Path) -> None:
    """Persistence reads the earlier checks in the second process: the first drifted window waits, the next retrains."""
    (data / "finops.toml").write_text("[drift]\nmin_rows = 100\npersistence_k = 2\npersistence_n = 2\n")
    args = ["drift", "check", "--policy", str(data / "finops.toml"), "--model", "churn",
            "--reference", str(data / "ref.parquet"), "--current", str(data / "moved.parquet"), "--json"]
    first, second = invoke(*args), invoke(*args)
    assert (first.exit_code, json.loads(first.output)["decision"]) == (0, "pending"), first.output
    assert (second.exit_code, json.loads(second.output)["decision"]) == (10, "retrain"), second.output


def test_a_store_that_cannot_be_reached_is_an_internal_error(drift_store: str, data: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    mlflow.set_tracking_uri("http://127.0.0.1:9")  # drift_store puts it back
    res = invoke("drift", "check", "--policy", str(data / "finops.toml"), "--model", "churn",
                 "--reference", str(data / "ref.parquet"), "--current", str(data / "calm.parquet"))
    assert res.exit_code == 1, res.output
    assert "internal error: RecorderProcessError:" in res.output and "127.0.0.1:9" in res.output


def test_bad_input_ends_the_logging_process_and_writes_nothing(drift_store: str, data: Path) -> None:
    for extra in (["--reference", "missing.parquet", "--current", "calm.parquet"],
                  ["--reference", "ref.parquet", "--current", "missing.parquet"]):
        res = invoke("drift", "check", "--policy", str(data / "finops.toml"), "--model", "churn", *extra)
        assert res.exit_code == 2 and "missing.parquet: file not found" in res.output
    assert all_runs() == []
    assert [e.name for e in MlflowClient().search_experiments()] == ["Default"]  # not even the experiment


def test_a_check_that_goes_away_leaves_its_run_failed(drift_store: str) -> None:
    """The parent dies after the run opened (its pipe closes): the run is FAILED, never a judged window."""
    logger = CheckRunProcess("churn", "finops-monitoring/churn").open(0, "window-1", {"who": "test"})
    run_id = logger.run_id
    assert logger.history().recent_drift == []
    assert logger._proc.stdin is not None
    logger._proc.stdin.close()  # as when the parent is killed
    assert logger._proc.wait(timeout=60) == 1
    logger._close()
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "FAILED"
    assert (run.data.tags["finops.window_key"], run.data.tags["who"]) == ("window-1", "test")


def test_a_decision_survives_the_pipe() -> None:
    d = DriftDecision(
        model="churn", decision="retrain", reason="why", drift_detected=True, drift_share=0.5,
        drifted_columns=["x0"], rows_reference=10, rows_current=5, elapsed_s=1.5, run_id="r", window_key="w",
        columns={"x0": ColumnDrift("x0", "numerical", "wasserstein", 0.1, 0.4, True, False, 10, 5, True, 0.05)},
        performance=PerformanceResult("accuracy", 0.9, 0.8, 0.01, True, "promotion", "3", 5),
    )
    assert DriftDecision.from_dict(json.loads(json.dumps(d.to_dict()))) == d


def test_discard_ends_a_logging_process_never_opened() -> None:
    logger = CheckRunProcess("churn", "finops-monitoring/churn")
    t0 = time.monotonic()
    logger.discard()
    assert logger._proc.returncode is not None and time.monotonic() - t0 < 10


def test_a_store_set_in_code_is_the_one_logged_to(drift_store: str, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # what the environment says
    mlflow.set_tracking_uri(drift_store)  # what this process uses
    logger = CheckRunProcess("churn", "finops-monitoring/churn").open(0, None, None)
    logger.log(DriftDecision(model="churn", decision="no_drift", reason="calm"), _policy(), [], 0.5)
    logger.finish()
    run = MlflowClient(drift_store).get_run(logger.run_id)
    assert (run.info.status, run.data.tags["finops.decision"]) == ("FINISHED", "no_drift")
    assert run.data.metrics["drift/check_seconds"] == 0.5


def _policy():
    from mlflow_finops.policy import DriftPolicy

    return DriftPolicy()


def _logging_processes() -> list:
    import psutil

    return [p for p in psutil.Process().children(recursive=True)
            if "mlflow_finops.drift.record_process" in " ".join(p.cmdline())]


def test_a_window_that_cannot_be_read_leaves_no_logging_process(drift_store: str, data: Path) -> None:
    (data / "incoming").mkdir()
    (data / "incoming" / "broken.parquet").write_bytes(b"not parquet")
    (data / "finops.toml").write_text('[drift]\nmin_rows = 100\n[models.churn]\nreference = "ref.parquet"\n'
                                      'current = "incoming"\n')
    res = invoke("drift", "check", "--policy", str(data / "finops.toml"), "--model", "churn")
    assert res.exit_code == 2 and "broken.parquet: cannot read it" in res.output, res.output
    assert _logging_processes() == []  # ended when the check gave up, not when this process exits
    assert all_runs() == []


def test_ctrl_c_leaves_the_run_to_the_check_that_owns_it(drift_store: str) -> None:
    """An interrupt reaches both processes; the logging one waits for the check's word and ends the run FAILED."""
    import signal

    logger = CheckRunProcess("churn", "finops-monitoring/churn").open(0, None, None)
    run_id = logger.run_id
    logger._proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    assert logger._proc.poll() is None  # still there
    logger.fail()
    assert MlflowClient().get_run(run_id).info.status == "FAILED"


def test_a_later_check_of_the_same_gate_is_charged_from_its_own_start(drift_store: str) -> None:
    """Only the gate's first check is charged the whole process (it exists for that check); no double count."""
    import psutil

    from mlflow_finops.drift import DriftGate

    gate = DriftGate(frame(3000, seed=1), model="churn", min_rows=100, log_process=True)
    before = sum(psutil.Process().cpu_times()[:2])  # this process's CPU so far (imports, earlier tests)
    first, second = gate.check(frame(3000, seed=2)), gate.check(frame(3000, seed=3))
    charged = [MlflowClient().get_run(d.run_id).data.metrics["finops/cpu_core_hours"] * 3600 for d in (first, second)]
    assert charged[0] >= before, (charged, before)  # the whole process, from its start
    assert charged[1] < 0.5 * before, (charged, before)  # only its own check


def _register_champion(data: Path) -> None:
    """``churn@champion``: a logistic regression on the reference's labels, logged as MLflow logs
    scikit-learn by default (skops), with its validation accuracy tagged."""
    import mlflow
    import skops.io as sio
    from sklearn.linear_model import LogisticRegression

    ref = _labelled(frame(3000, seed=1))
    ref.to_parquet(data / "ref.parquet")
    _labelled(frame(3000, seed=3, shift=1.0), concept_moved=True).to_parquet(data / "moved.parquet")
    X, y = ref[["x0", "x1", "x2", "x3"]], ref["label"]
    model = LogisticRegression().fit(X, y)
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(model, name="model", registered_model_name="churn",
                                        skops_trusted_types=sio.get_untrusted_types(data=sio.dumps(model)))
    client = MlflowClient()
    client.set_registered_model_alias("churn", "champion", info.registered_model_version)
    client.set_model_version_tag("churn", info.registered_model_version, "finops.accuracy", "0.99")
    (data / "finops.toml").write_text(
        '[drift]\nmin_rows = 100\n[models.churn]\nreference = "ref.parquet"\ntarget = "label"\n'
        'registered_model = "churn"\ndrop = ["plan"]\n'
    )


def _labelled(df, concept_moved: bool = False):
    df["label"] = ((df["x0"] - df["x1"] if concept_moved else df["x0"] + df["x1"]) > 0.5).astype(int)
    return df


def test_a_cold_check_scores_the_champion_and_logs_from_the_second_process(drift_store: str, data: Path) -> None:
    """The default harm signal of a model with a target and a registered champion (skops, MLflow's
    default format), in the cold command; its run logged by the second process, as without a champion."""
    _register_champion(data)
    res = subprocess.run([CLI, "drift", "check", "--policy", str(data / "finops.toml"), "--model", "churn",
                          "--current", str(data / "moved.parquet"), "--json"], capture_output=True, text=True)
    assert res.returncode == 10, res.stderr
    out = json.loads(res.stdout)
    perf = out["performance"]
    version = MlflowClient().get_model_version("churn", "1")
    assert perf["version"] == "1" and perf["rows"] == 3000
    assert (perf["reference"], perf["baseline"]) == (0.99, "promotion")  # its promotion score, the better one
    assert perf["current"] == pytest.approx(float(version.tags["finops.baseline.accuracy"]))  # first window remembered
    assert perf["degraded"] is True and perf["current"] < 0.8
    run = MlflowClient().get_run(out["run_id"])
    assert run.data.metrics["drift/performance/accuracy_current"] == pytest.approx(perf["current"])
    assert run.info.status == "FINISHED"


def test_no_champion_yet_leaves_drift_to_decide(drift_store: str, data: Path) -> None:
    (data / "finops.toml").write_text(
        '[drift]\nmin_rows = 100\n[models.churn]\nreference = "ref.parquet"\ntarget = "label"\n'
        'registered_model = "nobody"\n'
    )
    _labelled(frame(3000, seed=1)).to_parquet(data / "ref.parquet")
    _labelled(frame(3000, seed=3, shift=1.0)).to_parquet(data / "moved.parquet")
    res = invoke("drift", "check", "--policy", str(data / "finops.toml"), "--model", "churn",
                 "--current", str(data / "moved.parquet"), "--json")
    assert res.exit_code == 10, res.output
    assert json.loads(res.output)["performance"] is None
