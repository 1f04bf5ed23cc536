"""Nodes of other hosts read from Ray's own agent reports: no probe actor, a real multi-node cluster."""

from __future__ import annotations

import time

import mlflow
import pytest
from mlflow.tracking import MlflowClient

import mlflow_finops

ray = pytest.importorskip("ray")


@ray.remote(num_cpus=1)
def burn_task(seconds: float) -> tuple[float, str]:
    """Spin for ``seconds`` of CPU; return the CPU the task itself measured and its node."""
    start = time.process_time()
    while time.process_time() - start < seconds:
        pass
    return time.process_time() - start, ray.get_runtime_context().get_node_id()


def test_agent_reports_charge_every_node_without_probes(ray_driver, sqlite_uri: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """~70 s: the head's agent data lags up to agent_staleness_s(), at the start and at the end."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    from ray.util.state import list_actors

    from mlflow_finops.cost.ray_readers import agent_staleness_s

    monkeypatch.setenv("MLFLOW_FINOPS_RAY_READ_LOCAL", "false")  # as for nodes on other hosts
    nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    assert len(nodes) >= 2

    def on(node_id: str):
        return burn_task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False))

    ray.get([on(n).remote(0.01) for n in nodes])  # warm workers: start-up is not the run's
    time.sleep(agent_staleness_s())  # ... once the head's agent data shows them
    mlflow_finops.autolog(interval_s=0.5)
    with mlflow.start_run() as run:
        # 7.5 s of work per node: a worker's own upkeep until the agent's report after the job's
        # end (~0.2 s) stays within 5%
        results = ray.get([on(n).remote(2.5) for n in nodes for _ in range(3)])
        actors = list_actors(ray_driver.dashboard_url, filters=[("state", "=", "ALIVE")])
    assert not [a for a in actors if a.class_name == "NodeProbe"]
    in_task = sum(cpu for cpu, _ in results)
    r = MlflowClient().get_run(run.info.run_id)
    assert r.data.tags["finops.ray_read"] == "agent"
    assert r.data.metrics["finops/ray_cpu_core_hours"] * 3600 == pytest.approx(in_task, rel=0.05)
    for n in nodes:
        assert r.data.metrics[f"finops/node/{n}/cpu_core_hours"] * 3600 == pytest.approx(7.5, rel=0.05)
