"""`mlflow-finops drift check` and `mlflow-finops schedule`: exit codes, files, windows, cron."""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from drift_support import _template_db, all_runs, drift_store, frame  # noqa: F401
from mlflow import MlflowClient

from mlflow_finops.cli import cli
from mlflow_finops.policy import load_policy
from mlflow_finops.loop import run_schedule


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    frame(2000, seed=1).to_parquet(tmp_path / "ref.parquet")
    frame(2000, seed=1).to_csv(tmp_path / "ref.csv", index=False)
    frame(800, seed=2).to_csv(tmp_path / "calm.csv", index=False)
    frame(800, seed=3, shift=1.0).to_parquet(tmp_path / "moved.parquet")
    frame(800, seed=4).drop(columns=["x2"]).to_csv(tmp_path / "no_x2.csv", index=False)
    (tmp_path / "finops.toml").write_text("[drift]\nmin_rows = 100\n")
    return tmp_path


def test_check_exit_codes_csv_and_parquet(drift_store: str, data: Path) -> None:
    pol = str(data / "finops.toml")
    calm = invoke("drift", "check", "--policy", pol, "--model", "churn",
                  "--reference", str(data / "ref.csv"), "--current", str(data / "calm.csv"))
    assert calm.exit_code == 0, calm.output
    assert "no_drift" in calm.output
    moved = invoke("drift", "check", "--policy", pol, "--model", "churn",
                   "--reference", str(data / "ref.parquet"), "--current", str(data / "moved.parquet"), "--json")
    assert moved.exit_code == 10, moved.output
    out = json.loads(moved.output)
    assert out["retrain"] is True and out["decision"] == "retrain"
    assert set(out["drifted_columns"]) == {"x0", "x1", "x2", "x3"}
    run = MlflowClient().get_run(out["run_id"])
    assert run.data.tags["finops.decision"] == "retrain"


def test_check_bad_input_exits_2_names_the_problem_and_logs_nothing(drift_store: str, data: Path) -> None:
    pol = str(data / "finops.toml")
    cases = [
        (["--current", str(data / "no_x2.csv")], "'x2'"),
        (["--current", str(data / "missing.parquet")], "missing.parquet: file not found"),
    ]
    for extra, needle in cases:
        res = invoke("drift", "check", "--policy", pol, "--model", "churn",
                     "--reference", str(data / "ref.csv"), *extra)
        assert res.exit_code == 2, res.output
        assert needle in res.output
    (data / "typo.toml").write_text("[drift]\nmin_row = 5\n")
    res = invoke("drift", "check", "--policy", str(data / "typo.toml"), "--model", "churn",
                 "--reference", str(data / "ref.csv"), "--current", str(data / "calm.csv"))
    assert res.exit_code == 2 and "min_row" in res.output
    (data / "models.toml").write_text('[models.churn]\nreference = "ref.csv"\n')
    res = invoke("drift", "check", "--policy", str(data / "models.toml"), "--model", "fraud",
                 "--current", str(data / "calm.csv"))
    assert res.exit_code == 2 and "[models.fraud]" in res.output
    assert all_runs() == []


def test_check_internal_error_exits_1(drift_store: str, data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unexpected failure inside the gate is exit 1 (not 2, not 10): cron must not read it as bad data."""
    from mlflow_finops.drift import DriftGate

    def boom(self, *a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(DriftGate, "_judge", boom)
    res = invoke("drift", "check", "--policy", str(data / "finops.toml"), "--model", "churn",
                 "--reference", str(data / "ref.csv"), "--current", str(data / "calm.csv"))
    assert res.exit_code == 1, res.output
    assert "internal error: RuntimeError: disk on fire" in res.output
    (run,) = all_runs()  # the run that was started is marked failed, not left running
    assert run.info.status == "FAILED"


def _scheduled_policy(tmp: Path, cron: str = "*/5 * * * *") -> Path:
    (tmp / "incoming").mkdir(exist_ok=True)
    frame(2000, seed=1).to_parquet(tmp / "ref.parquet")
    p = tmp / "finops.toml"
    p.write_text(
        f"""
[drift]
min_rows = 100
[models.churn]
reference = "ref.parquet"
current = "incoming"
schedule = "{cron}"
"""
    )
    return p


def _drop(tmp: Path, name: str, **kw) -> Path:
    path = tmp / "incoming" / name
    frame(600, **kw).to_parquet(path) if name.endswith(".parquet") else frame(600, **kw).to_csv(path, index=False)
    stamp = datetime.now().timestamp() - 600 + len(list((tmp / "incoming").iterdir()))
    os.utime(path, (stamp, stamp))  # strictly newer than the files before it, and settled
    return path


def test_schedule_once_checks_the_newest_window_once(drift_store: str, tmp_path: Path) -> None:
    pol = str(_scheduled_policy(tmp_path))
    _drop(tmp_path, "day1.csv", seed=2)
    _drop(tmp_path, "day2.parquet", seed=3, shift=1.2)  # newest: this is the window

    first = invoke("schedule", "--policy", pol, "--once")
    assert first.exit_code == 10, first.output
    assert "churn: checked -> retrain" in first.output
    again = invoke("schedule", "--policy", pol, "--once")  # same files: the same window
    assert again.exit_code == 0 and "already_checked" in again.output
    _drop(tmp_path, "day3.csv", seed=4)
    third = invoke("schedule", "--policy", pol, "--once")
    assert third.exit_code == 0 and "checked -> no_drift" in third.output

    runs = [r for r in all_runs() if r.data.tags.get("finops.workload") == "drift_check"]
    assert len(runs) == 2
    by_files = {r.data.tags["finops.window_files"]: r.data.tags["finops.decision"] for r in runs}
    assert by_files == {"day2.parquet": "retrain", "day3.csv": "no_drift"}
    assert len({r.data.tags["finops.window_key"] for r in runs}) == 2


def test_schedule_reports_bad_data_with_exit_2(drift_store: str, tmp_path: Path) -> None:
    pol = str(_scheduled_policy(tmp_path))
    bad = tmp_path / "incoming" / "bad.csv"
    frame(600, seed=2).drop(columns=["plan"]).to_csv(bad, index=False)
    os.utime(bad, (datetime.now().timestamp() - 60,) * 2)  # settled
    res = invoke("schedule", "--policy", pol, "--once")
    assert res.exit_code == 2 and "'plan'" in res.output
    empty_pol = tmp_path / "none.toml"
    empty_pol.write_text("[drift]\nmin_rows = 5\n")
    res = invoke("schedule", "--policy", str(empty_pol), "--once")
    assert res.exit_code == 2 and "schedule" in res.output
    assert [r for r in all_runs() if r.data.tags.get("finops.workload") == "drift_check"] == []


def test_schedule_loop_follows_the_cron_expression(drift_store: str, tmp_path: Path) -> None:
    """The loop sleeps until croniter's next fire time; --max-runs stops it."""
    pol = load_policy(_scheduled_policy(tmp_path, cron="*/15 * * * *"))
    _drop(tmp_path, "w1.csv", seed=2)
    now = [datetime(2026, 11, 27, 10, 7, 0).timestamp()]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s
        _drop(tmp_path, f"w{len(slept) + 1}.csv", seed=10 + len(slept))  # new data before each fire

    outcomes = run_schedule(pol, max_runs=3, clock=lambda: now[0], sleep=sleep)
    assert [o.status for o in outcomes] == ["checked"] * 3
    assert slept == [8 * 60, 15 * 60, 15 * 60]  # 10:15, 10:30, 10:45
    assert datetime.fromtimestamp(now[0]).strftime("%H:%M") == "10:45"


def test_a_failed_check_releases_its_window_claim(drift_store: str, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow_finops.drift import DriftGate

    pol = str(_scheduled_policy(tmp_path))
    _drop(tmp_path, "w.csv", seed=2, shift=1.0)
    real = DriftGate._judge

    def boom(self, *a, **k):
        raise RuntimeError("worker lost")

    monkeypatch.setattr(DriftGate, "_judge", boom)
    failed = invoke("schedule", "--policy", pol, "--once")
    assert failed.exit_code == 1 and "error" in failed.output
    monkeypatch.setattr(DriftGate, "_judge", real)
    retry = invoke("schedule", "--policy", pol, "--once")  # same window, claimable again
    assert retry.exit_code == 10 and "checked -> retrain" in retry.output, retry.output
