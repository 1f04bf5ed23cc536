"""autolog(): every MLflow run started afterwards is tracked, nested runs get their own share,
and the policy named in the call applies whole (prices, Ray node prices, tags)."""

from __future__ import annotations

import time
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from support.cost_tracking import METRICS, burn, fit_forest, os_tree_cpu, samplers
from support.named_policy import named_policy  # noqa: F401

import mlflow_finops
from mlflow_finops import PolicyError
from mlflow_finops.names import TAG_TEAM, TAG_WORKLOAD

from .nvml_support import gpu_models_tag


def test_a_ray_job_under_autolog_gets_node_prices_and_tags_from_the_named_policy(
    ray_driver, sqlite_uri: str, named_policy: Path
) -> None:
    ray = pytest.importorskip("ray")
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=1)
    def spin(seconds: float) -> float:
        start = time.process_time()
        while time.process_time() - start < seconds:
            pass
        return time.process_time() - start

    nodes = {n["Labels"]["market"]: n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert {"spot", "on_demand"} <= set(nodes)

    def on(node_id: str):
        return spin.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False))

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


def test_autolog_logs_cost_of_a_joblib_training(sqlite_uri: str) -> None:
    mlflow_finops.autolog(interval_s=0.2)
    with mlflow.start_run() as run:
        os_before = os_tree_cpu()  # the tracker started with the run, just before this
        fit_forest()
        os_used = os_tree_cpu() - os_before
    r = MlflowClient().get_run(run.info.run_id)
    m, tags = r.data.metrics, r.data.tags
    for key in METRICS:
        assert key in m, key
    cpu_s = m["finops/cpu_core_hours"] * 3600
    assert cpu_s > 0.5
    assert cpu_s == pytest.approx(os_used, rel=0.05, abs=0.1)
    assert m["finops/gpu_hours"] == 0
    assert m["finops/cost_usd"] == pytest.approx(m["finops/usage_cost_usd"])
    assert m["finops/idle_cost_usd"] == pytest.approx(m["finops/allocation_cost_usd"] - m["finops/usage_cost_usd"])
    assert 0 < m["finops/cpu_efficiency"] <= 1.0
    assert m["finops/co2e_kg"] == pytest.approx(m["finops/energy_kwh"] * 0.475)
    assert tags["finops.price_profile"] == "opencost-default"
    assert tags["finops.allocation_mode"] == "usage"
    assert tags["finops.tracking_status"] == "complete"
    assert int(tags["finops.machine.cpu_cores"]) >= 1
    assert tags["finops.machine.gpu_models"] == gpu_models_tag()
    history = MlflowClient().get_metric_history(run.info.run_id, "finops/cpu_core_hours")
    assert len(history) >= 3  # a live time series, then the final scalar
    assert max(history, key=lambda h: (h.step, h.timestamp)).value == m["finops/cpu_core_hours"]
    assert not samplers()


def test_nested_runs_share_one_sampler_and_get_their_own_share(sqlite_uri: str) -> None:
    mlflow_finops.autolog(interval_s=0.2)
    with mlflow.start_run() as parent:
        burn(0.3)
        with mlflow.start_run(nested=True) as child:
            assert len(samplers()) == 1
            burn(0.5)
        burn(0.3)
    c = MlflowClient()
    pm, cm = c.get_run(parent.info.run_id).data, c.get_run(child.info.run_id).data
    assert cm.tags["finops.nested_in"] == parent.info.run_id
    child_cpu = cm.metrics["finops/cpu_core_hours"] * 3600
    parent_cpu = pm.metrics["finops/cpu_core_hours"] * 3600
    assert 0.45 <= child_cpu <= 0.75
    assert parent_cpu >= child_cpu + 0.55
    assert "finops.nested_in" not in pm.tags


def test_resumed_run_adds_to_its_cost(sqlite_uri: str) -> None:
    mlflow_finops.autolog(interval_s=0.2)
    with mlflow.start_run() as run:
        burn(0.4)
    first = MlflowClient().get_run(run.info.run_id).data.metrics["finops/cpu_core_hours"] * 3600
    with mlflow.start_run(run_id=run.info.run_id):
        assert len(samplers()) == 1
        burn(0.4)
    total = MlflowClient().get_run(run.info.run_id).data.metrics["finops/cpu_core_hours"] * 3600
    assert first >= 0.38  # /proc counts in 10 ms ticks
    assert total == pytest.approx(first + 0.4, abs=0.15)


def test_autolog_rejects_a_bad_policy_before_training(tmp_path: Path) -> None:
    bad = tmp_path / "finops.toml"
    bad.write_text("[prices]\ngpu_hour_usd = -3\n")
    with pytest.raises(PolicyError, match=r"\[prices\].gpu_hour_usd"):
        mlflow_finops.autolog(policy=str(bad))


def test_autolog_disable_restores_mlflow(sqlite_uri: str) -> None:
    original = mlflow.start_run
    mlflow_finops.autolog(interval_s=0.2)
    assert mlflow.start_run is not original
    mlflow_finops.autolog(disable=True)
    assert mlflow.start_run is original
    with mlflow.start_run() as run:
        pass
    assert "finops/cost_usd" not in MlflowClient().get_run(run.info.run_id).data.metrics


def test_prices_argument_changes_cost(sqlite_uri: str) -> None:
    mlflow_finops.autolog(interval_s=0.2, prices={"cpu_core_hour_usd": 100.0, "profile": "pricey",
                                                   "allocation_mode": "allocation"})
    with mlflow.start_run() as run:
        burn(0.3)
    r = MlflowClient().get_run(run.info.run_id)
    m = r.data.metrics
    assert r.data.tags["finops.price_profile"] == "pricey"
    assert r.data.tags["finops.allocation_mode"] == "allocation"
    assert m["finops/cost_usd"] == pytest.approx(m["finops/allocation_cost_usd"])
    assert m["finops/usage_cost_usd"] >= m["finops/cpu_core_hours"] * 100.0
