"""A policy named in the call (team/team.toml) while the default lookup finds another file.

``./finops.toml`` is absent and ``$MLFLOW_FINOPS_POLICY`` names a file with other prices
and tags: a run's figures and tags must come from the policy the call named.
"""

from __future__ import annotations

from pathlib import Path

import pytest

NAMED = """\
[prices]
cpu_core_hour_usd = 1.0
ram_gb_hour_usd = 0.0
[tags]
team = "named-team"
[[ray.node_prices]]
labels = { market = "spot" }
prices = { cpu_core_hour_usd = 7.0 }
"""

ELSEWHERE = """\
[prices]
cpu_core_hour_usd = 3.0
ram_gb_hour_usd = 0.0
[tags]
team = "default-team"
workload = "only-in-the-default-file"
[[ray.node_prices]]
labels = { market = "spot" }
prices = { cpu_core_hour_usd = 100.0 }
"""


@pytest.fixture
def named_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """team.toml in a folder of its own; the default lookup finds another file."""
    monkeypatch.chdir(tmp_path)  # no ./finops.toml here
    (tmp_path / "elsewhere.toml").write_text(ELSEWHERE)
    monkeypatch.setenv("MLFLOW_FINOPS_POLICY", str(tmp_path / "elsewhere.toml"))
    (tmp_path / "team").mkdir()
    path = tmp_path / "team" / "team.toml"
    path.write_text(NAMED)
    return path
