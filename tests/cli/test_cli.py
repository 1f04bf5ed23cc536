"""The `mlflow-finops` command as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlflow_finops.cli import cli

EXE = str(Path(sys.executable).parent / "mlflow-finops")


def test_console_script_help_teaches() -> None:
    out = subprocess.run([EXE, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    assert "mlflow_finops.autolog()" in out.stdout
    assert "prices" in out.stdout and "sync" in out.stdout


def test_prices_shows_sources_and_precedence(tmp_path: Path) -> None:
    policy = tmp_path / "finops.toml"
    policy.write_text("[prices]\ncpu_core_hour_usd = 0.05\n")
    result = CliRunner().invoke(
        cli, ["prices", "--policy", str(policy), "--json"], env={"MLFLOW_FINOPS_RAM_GB_HOUR_USD": "0.01"}
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["cpu_core_hour_usd"] == 0.05
    assert data["ram_gb_hour_usd"] == 0.01
    assert data["gpu_hour_usd"] == 0.95
    table = CliRunner().invoke(cli, ["prices", "--policy", str(policy)], env={"COLUMNS": "200"})
    assert "policy" in table.output and "default" in table.output


def test_bad_policy_exits_2_with_one_clear_line(tmp_path: Path) -> None:
    policy = tmp_path / "finops.toml"
    policy.write_text("[prices]\ncpu_core_hour_usd = -1\n")
    result = CliRunner().invoke(cli, ["prices", "--policy", str(policy)])
    assert result.exit_code == 2
    assert "[prices].cpu_core_hour_usd" in result.output
    assert "Traceback" not in result.output


def test_sync_with_nothing_spooled(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["sync"], env={"MLFLOW_FINOPS_SPOOL_DIR": str(tmp_path)})
    assert result.exit_code == 0
    assert result.output == "delivered 0 spooled batch(es); 0 left; 0 dead-lettered\n"


def test_sync_counts_what_is_left_and_what_is_dead_lettered(tmp_path: Path) -> None:
    """One line that adds up, and a non-zero exit whenever anything was not delivered."""
    from mlflow_finops.ray_cluster import free_ports

    spool = tmp_path / "spool"
    spool.mkdir()
    down = f"http://127.0.0.1:{free_ports(1)[0]}"
    waiting = {"tracking_uri": down, "run_id": "r1", "metrics": [["finops/cost_usd", 1.0, 1, 0]], "tags": {}}
    (spool / "waiting.jsonl").write_text(json.dumps(waiting) + "\n" + json.dumps(waiting) + "\n")
    (spool / "corrupt.jsonl").write_text('{"tracking_uri": "x", "run_id": "r2", "metrics": [], "tags": {}, "k": 1}\n')
    env = {"MLFLOW_FINOPS_SPOOL_DIR": str(spool), "MLFLOW_FINOPS_HTTP_TIMEOUT_S": "1"}
    result = CliRunner().invoke(cli, ["sync"], env=env)
    assert result.exit_code == 1
    assert result.output.splitlines()[0] == (
        f"delivered 0 spooled batch(es); 2 left; 1 dead-lettered (see {spool / 'dead'})"
    )
    assert (spool / "dead").is_dir() and len(list(spool.glob("*.jsonl"))) == 1
    again = CliRunner().invoke(cli, ["sync"], env=env)  # what is dead is not counted twice
    assert again.exit_code == 1
    assert again.output == "delivered 0 spooled batch(es); 2 left; 0 dead-lettered\n"


def test_ray_up_and_down_touch_only_their_own_cluster(ray_cluster) -> None:
    import psutil
    import requests

    from mlflow_finops.ray_cluster import free_ports

    port, dashboard = free_ports(2)
    up = subprocess.run([EXE, "ray", "up", "--num-cpus", "1", "--port", str(port), "--dashboard-port", str(dashboard)],
                        capture_output=True, text=True, timeout=180)
    assert up.returncode == 0, up.stderr
    assert f"ray down --port {port}" in up.stdout
    assert requests.get(f"http://127.0.0.1:{dashboard}/api/version", timeout=5).status_code in (200, 401)
    session_gcs = [p for p in psutil.process_iter(["cmdline"])
                   if f"--gcs_server_port={port}" in " ".join(p.info["cmdline"] or [])]
    assert len(session_gcs) == 1
    down = subprocess.run([EXE, "ray", "down", "--port", str(port)], capture_output=True, text=True, timeout=60)
    assert down.returncode == 0, down.stderr
    assert "stopped" in down.stdout
    try:  # dead: gone, or a zombie left to whoever adopted it when `ray start` exited
        assert session_gcs[0].status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        pass
    with pytest.raises(requests.RequestException):
        requests.get(f"http://127.0.0.1:{dashboard}/api/version", timeout=2)
    # the other local cluster (the test session's) still answers
    assert requests.get(ray_cluster.dashboard_url + "/api/version", timeout=5).status_code in (200, 401)
    again = subprocess.run([EXE, "ray", "down", "--port", str(port)], capture_output=True, text=True, timeout=60)
    assert "no local Ray cluster" in again.stdout
