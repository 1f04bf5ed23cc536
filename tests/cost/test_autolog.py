"""autolog() and track_cost() under a policy that is not the default one: the whole policy travels.

``./finops.toml`` is absent and ``$MLFLOW_FINOPS_POLICY`` names another file with other
prices and tags: every figure and tag of the run must come from the policy named in the call.
"""

from __future__ import annotations

import time
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

import mlflow_finops
from mlflow_finops.names import TAG_TEAM, TAG_WORKLOAD

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


def test_track_cost_tags_a_run_it_starts_from_the_named_policy(sqlite_uri: str, named_policy: Path) -> None:
    with mlflow_finops.track_cost(policy=str(named_policy), interval_s=0.2) as tracker:
        time.sleep(0.3)
    tags = MlflowClient().get_run(tracker.run_id).data.tags
    assert tags[TAG_TEAM] == "named-team"
    assert TAG_WORKLOAD not in tags  # nothing from the default file
    assert tracker.prices.cpu_core_hour_usd == 1.0


def test_a_ray_job_under_autolog_gets_node_prices_and_tags_from_the_named_policy(
    ray_driver, sqlite_uri: str, named_policy: Path
) -> None:
    ray = pytest.importorskip("ray")
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=1)
    def burn(seconds: float) -> float:
        start = time.process_time()
        while time.process_time() - start < seconds:
            pass
        return time.process_time() - start

    nodes = {n["Labels"]["market"]: n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert {"spot", "on_demand"} <= set(nodes)

    def on(node_id: str):
        return burn.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False))

    ray.get([on(n).remote(0.01) for n in nodes.values()])  # warm workers
    mlflow_finops.autolog(interval_s=0.5, policy=str(named_policy))
    with mlflow.start_run() as run:
        ray.get([on(n).remote(1.0) for n in nodes.values()])
    r = MlflowClient().get_run(run.info.run_id)
    m, tags = r.data.metrics, r.data.tags
    # USD per core-hour on each node: the named file's rule on the spot node, its [prices] elsewhere
    rate = {market: m[f"finops/node/{node}/cost_usd"] / m[f"finops/node/{node}/cpu_core_hours"]
            for market, node in nodes.items()}
    assert rate["spot"] == pytest.approx(7.0, rel=1e-3)
    assert rate["on_demand"] == pytest.approx(1.0, rel=1e-3)
    assert tags[TAG_TEAM] == "named-team"
    assert TAG_WORKLOAD not in tags
