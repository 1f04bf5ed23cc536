"""Issue 13, the drift side: bad input caught before anything is logged, errors that name the
file, ±inf counted, store failures that never hide a check's own error, unsettled files."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from drift_support import _template_db, all_runs, drift_store, frame  # noqa: F401
from mlflow import MlflowClient

from mlflow_finops.cli import cli
from mlflow_finops.drift import DriftGate, DriftInputError
from mlflow_finops.drift import schedule as schedule_mod
from mlflow_finops.drift.schedule import run_scheduled_check
from mlflow_finops.names import ENV_SETTLE_S
from mlflow_finops.policy import load_policy


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def drift_runs(uri: str | None = None) -> list:
    return [r for r in all_runs(uri) if r.data.tags.get("finops.workload") == "drift_check"]


def settled(path: Path, age_s: float = 600) -> Path:
    stamp = time.time() - age_s
    os.utime(path, (stamp, stamp))
    return path


def scheduled_policy(tmp: Path, model: str = "churn") -> Path:
    (tmp / "incoming").mkdir(exist_ok=True)
    frame(2000, seed=1).to_parquet(tmp / "ref.parquet")
    p = tmp / "finops.toml"
    p.write_text(f'[drift]\nmin_rows = 100\n[models.{model}]\nreference = "ref.parquet"\ncurrent = "incoming"\n'
                 'schedule = "0 * * * *"\n')
    return p


# ------------------------------------------------------------------ ±inf
def test_an_all_infinite_column_is_a_named_error_naming_the_file_and_logs_nothing(
    drift_store: str, tmp_path: Path
) -> None:
    frame(2000, seed=1).to_csv(tmp_path / "ref.csv", index=False)
    cur = frame(800, seed=2)
    cur["x1"] = np.where(np.arange(800) % 2, np.inf, -np.inf)
    cur.loc[:10, "x1"] = np.nan
    cur.to_csv(tmp_path / "cur.csv", index=False)
    (tmp_path / "finops.toml").write_text("[drift]\nmin_rows = 100\n")
    res = invoke("drift", "check", "--policy", str(tmp_path / "finops.toml"), "--model", "churn",
                 "--reference", str(tmp_path / "ref.csv"), "--current", str(tmp_path / "cur.csv"))
    assert res.exit_code == 2, res.output
    line = res.output.strip()
    assert "\n" not in line and str(tmp_path / "cur.csv") in line
    assert "'x1' has no finite value in the current data" in line
    assert drift_runs() == []  # validated before any run exists
    assert MlflowClient().get_experiment_by_name("finops-monitoring/churn") is None

    # the reference side: the same rule, naming the reference file
    ref = frame(2000, seed=1)
    ref["x3"] = np.inf
    ref.to_csv(tmp_path / "ref_inf.csv", index=False)
    res = invoke("drift", "check", "--policy", str(tmp_path / "finops.toml"), "--model", "churn",
                 "--reference", str(tmp_path / "ref_inf.csv"), "--current", str(tmp_path / "cur.csv"))
    assert res.exit_code == 2, res.output
    assert str(tmp_path / "ref_inf.csv") in res.output and "'x3' has no finite value in the reference data" in res.output
    assert drift_runs() == []


def test_partly_infinite_columns_are_judged_as_missing_and_counted_in_the_decision(drift_store: str) -> None:
    ref = frame(2000, seed=1)
    ref.loc[:4, "x2"] = -np.inf  # 5 reference rows
    cur = frame(800, seed=2)
    cur.loc[:29, "x0"] = np.inf  # rows 0..29
    cur.loc[20:39, "x1"] = -np.inf  # rows 20..39: 40 rows in all hold an inf
    as_nan = cur.replace([np.inf, -np.inf], np.nan)

    d = DriftGate(ref, model="infs", min_rows=100).check(cur)
    same = DriftGate(ref.replace([np.inf, -np.inf], np.nan), model="nans", min_rows=100,
                     log_to_mlflow=False).check(as_nan)
    assert {c: r.score for c, r in d.columns.items()} == pytest.approx({c: r.score for c, r in same.columns.items()})
    assert d.decision == same.decision and d.columns["x0"].rows_current == 770
    assert d.rows_infinite_current == 40 and d.rows_infinite_reference == 5
    assert "±inf treated as missing" in d.reason
    assert "current 'x0' 30, 'x1' 20 (40 rows)" in d.reason and "reference 'x2' 5 (5 rows)" in d.reason
    run = MlflowClient().get_run(d.run_id)
    assert run.data.metrics["drift/rows_infinite_current"] == 40
    assert run.data.metrics["drift/rows_infinite_reference"] == 5
    assert "±inf treated as missing" in run.data.tags["finops.drift_reason"]
    assert same.rows_infinite_current == 0 and "±inf" not in same.reason


# ------------------------------------------------------------------ errors name the file
def test_an_empty_file_error_names_the_file(drift_store: str, tmp_path: Path) -> None:
    frame(2000, seed=1).to_csv(tmp_path / "ref.csv", index=False)
    frame(0).to_csv(tmp_path / "empty.csv", index=False)
    (tmp_path / "finops.toml").write_text("[drift]\nmin_rows = 100\n")
    res = invoke("drift", "check", "--policy", str(tmp_path / "finops.toml"), "--model", "churn",
                 "--reference", str(tmp_path / "ref.csv"), "--current", str(tmp_path / "empty.csv"))
    assert res.exit_code == 2
    assert res.output.strip() == f"Error: {tmp_path / 'empty.csv'}: current data is empty (0 rows)", res.output
    frame(0).to_csv(tmp_path / "ref_empty.csv", index=False)
    with pytest.raises(DriftInputError, match=r"ref_empty\.csv: reference data is empty"):
        DriftGate(tmp_path / "ref_empty.csv", model="m")

    # a scheduled window names its file too
    pol = load_policy(scheduled_policy(tmp_path))
    empty = tmp_path / "incoming" / "w1.csv"
    frame(0).to_csv(empty, index=False)
    settled(empty)
    out = run_scheduled_check(pol, "churn")
    assert out.status == "bad_input" and out.message == f"{empty}: current data is empty (0 rows)"
    assert drift_runs() == []


# ------------------------------------------------------------------ a failing store never hides the error
def test_a_store_down_in_the_error_path_does_not_hide_the_checks_own_error(
    drift_store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    gate = DriftGate(frame(2000, seed=1), model="masked", min_rows=100)

    def lost(self, cur):  # the check fails, and by then the tracking server is gone too
        self._record()._client = MlflowClient("http://127.0.0.1:9")
        raise RuntimeError("worker lost")

    monkeypatch.setattr(DriftGate, "_judge", lost)
    with pytest.raises(RuntimeError, match="worker lost"):
        gate.check(frame(800, seed=2))
    (run,) = drift_runs()
    assert run.info.status != "FINISHED"  # never counts as a judged window


# ------------------------------------------------------------------ settled files only
def test_a_window_modified_within_the_settle_time_waits_for_the_next_pass(drift_store: str, tmp_path: Path) -> None:
    pol_path = scheduled_policy(tmp_path)
    frame(800, seed=2).to_csv(tmp_path / "incoming" / "w.csv", index=False)  # just written
    res = invoke("schedule", "--policy", str(pol_path), "--once")
    assert res.exit_code == 0 and "churn: not_settled: not settled yet" in res.output, res.output
    assert drift_runs() == []
    settled(tmp_path / "incoming" / "w.csv", age_s=6)  # older than the default 5 s
    res = invoke("schedule", "--policy", str(pol_path), "--once")
    assert res.exit_code == 0 and "churn: checked -> no_drift" in res.output, res.output


def test_a_window_written_to_while_it_is_read_is_not_judged(
    drift_store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pol = load_policy(scheduled_policy(tmp_path))
    path = tmp_path / "incoming" / "w.csv"
    frame(400, seed=2).to_csv(path, index=False)
    settled(path)
    real = schedule_mod.load_window

    def writer_still_appending(files):
        df = real(files)  # the reader got the first part ...
        frame(400, seed=3, shift=2.0).to_csv(path, mode="a", header=False, index=False)  # ... the writer goes on
        return df

    monkeypatch.setattr(schedule_mod, "load_window", writer_still_appending)
    monkeypatch.setenv(ENV_SETTLE_S, "0.001")
    out = run_scheduled_check(pol, "churn")
    assert out.status == "not_settled" and "changed while they were read" in out.message, out.message
    assert drift_runs() == [] and MlflowClient().search_experiments(filter_string="name LIKE 'finops-claims/%'",
                                                                  view_type=3) == []
    monkeypatch.setattr(schedule_mod, "load_window", real)
    whole = run_scheduled_check(pol, "churn")  # the next pass sees the whole file
    assert whole.status == "checked" and whole.decision is not None and whole.decision.rows_current == 800
