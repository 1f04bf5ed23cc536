"""The run-context plugin: MLflow itself calls it for every new run (no autolog, no tracker)."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from mlflow_finops.names import (
    METRIC_COST_USD,
    TAG_COST_CENTER,
    TAG_MACHINE_CPU_CORES,
    TAG_MACHINE_CPU_MODEL,
    TAG_MACHINE_HOSTNAME,
    TAG_MODEL,
    TAG_PREFIX,
    TAG_TEAM,
    TAG_WORKLOAD,
)


def new_run_tags() -> dict[str, str]:
    with mlflow.start_run() as run:
        pass
    return MlflowClient().get_run(run.info.run_id).data.tags


def finops_tags(tags: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in tags.items() if k.startswith(TAG_PREFIX)}


def test_policy_tags_env_overrides_and_the_machine_on_a_new_run(
    sqlite_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "finops.toml").write_text(
        '[tags]\nteam = "fraud"\ncost_center = "cc-7"\nworkload = "training"\n'
        '[tags.extra]\nproject = "atlas"\n'
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_FINOPS_WORKLOAD", "tuning")  # the environment wins over the file
    monkeypatch.setenv("MLFLOW_FINOPS_MODEL", "churn")
    with mlflow.start_run() as run:
        pass
    r = MlflowClient().get_run(run.info.run_id)
    tags = r.data.tags
    assert tags[TAG_TEAM] == "fraud"
    assert tags[TAG_COST_CENTER] == "cc-7"
    assert tags[TAG_WORKLOAD] == "tuning"
    assert tags[TAG_MODEL] == "churn"
    assert tags["finops.project"] == "atlas"
    assert tags[TAG_MACHINE_HOSTNAME] == socket.gethostname()
    assert tags[TAG_MACHINE_CPU_CORES] == str(os.cpu_count())
    assert tags[TAG_MACHINE_CPU_MODEL]
    assert METRIC_COST_USD not in r.data.metrics  # tags only: nothing is tracked without autolog


def test_a_changed_policy_file_is_read_again(sqlite_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    policy = tmp_path / "finops.toml"
    policy.write_text('[tags]\nteam = "fraud"\n')
    monkeypatch.setenv("MLFLOW_FINOPS_POLICY", str(policy))
    assert new_run_tags()[TAG_TEAM] == "fraud"
    policy.write_text('[tags]\nteam = "risk"\n')
    stat = policy.stat()
    os.utime(policy, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a later edit, whatever the clock
    assert new_run_tags()[TAG_TEAM] == "risk"


def test_disable_turns_the_plugin_off(sqlite_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "finops.toml").write_text('[tags]\nteam = "fraud"\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_FINOPS_TEAM", "risk")
    monkeypatch.setenv("MLFLOW_FINOPS_DISABLE", "true")
    assert finops_tags(new_run_tags()) == {}
    monkeypatch.setenv("MLFLOW_FINOPS_DISABLE", "0")
    assert new_run_tags()[TAG_TEAM] == "risk"


@pytest.mark.parametrize(
    "content", ['[tags]\nsquad = "fraud"\n', "[tags\nteam = fraud\n"], ids=["unknown-key", "not-toml"]
)
def test_a_bad_policy_does_not_stop_runs_from_starting(
    sqlite_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    content: str,
) -> None:
    (tmp_path / "finops.toml").write_text(content)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_FINOPS_TEAM", "risk")
    with caplog.at_level(logging.WARNING, logger="mlflow_finops"):
        first, second = new_run_tags(), new_run_tags()
    for tags in (first, second):
        assert tags[TAG_TEAM] == "risk"  # the environment still applies
        assert TAG_MACHINE_HOSTNAME in tags
        assert "finops.squad" not in tags
    warnings = [r for r in caplog.records if "policy not used for run tags" in r.getMessage()]
    assert len(warnings) == 1 and "finops.toml" in warnings[0].getMessage()
