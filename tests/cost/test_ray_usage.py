"""Each Ray node's share, from readings to priced figures, without a cluster.

The arithmetic of :mod:`mlflow_finops.cost.ray_usage` that turns what a node's reader says about
its workers into that node's cost: which workers are the job's, from what baseline their CPU
counts, memory integrated over time, each node priced with its own catalog, and the per-node
metrics; folded and closed by :class:`~mlflow_finops.cost.ray_nodes.RayClusterSampler` as on a
cluster. The readings are the dicts a probe returns; how readers produce them is
tests/cost/test_ray_readers.py, how they are fetched from a live cluster test_ray_nodes.py.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from mlflow_finops.cost import ray_readers
from mlflow_finops.cost.gpu import GpuReading
from mlflow_finops.cost.ray_nodes import ClusterReading, RayClusterSampler
from mlflow_finops.cost.ray_readers import AgentReader, LocalReader, ProbeReader
from mlflow_finops.cost.ray_usage import CREATE_TIME_SLACK_S, RayNode, node_metrics, worker_baseline
from mlflow_finops.cost.samplers import GB, RunUsage
from mlflow_finops.names import METRIC_RAY_CPU_CORE_HOURS, node_metric
from mlflow_finops.policy import RayPolicy
from mlflow_finops.pricing import Allocation, CostBreakdown, PriceCatalog, price_usage

T0 = 1000.0
MB = 1_000_000
JOB = "02000000"
DRIVER_NODE = "driver-node"
ON_DEMAND = PriceCatalog()
SPOT = PriceCatalog(market="spot", spot_discount=0.7, allocation_mode="allocation",
                    gpu_hour_usd_by_model={"A100": 3.0})


def no_head() -> str:
    raise AssertionError("nothing here asks the head's dashboard")


def probe_reader() -> ProbeReader:
    """The probe reader after attach, without Ray: these tests ask no probe actor."""
    reader = ProbeReader.__new__(ProbeReader)
    reader._ray, reader.job_id, reader._nodes = None, JOB, {}
    return reader


PROBE = probe_reader()


def agent_reader() -> AgentReader:
    return AgentReader(no_head, JOB, DRIVER_NODE)


def cluster(*nodes: RayNode, t0: float = T0, prices: PriceCatalog = ON_DEMAND,
            policy: RayPolicy | None = None) -> RayClusterSampler:
    """The sampler's state after attach, without Ray: what ``__init__`` would have found."""
    s = RayClusterSampler.__new__(RayClusterSampler)
    s.base_prices, s.policy, s.t0 = prices, policy, t0
    s.job_id = JOB
    s.nodes = {n.node_id: n for n in nodes}
    s._state_url = None
    readers = {n.mode: n.reader for n in nodes}
    s._local = readers.get("local") or LocalReader(None)
    s._agent = readers.get("agent") or AgentReader(s._state_api_url, JOB, DRIVER_NODE)
    s._probe = readers.get("probe") or probe_reader()
    return s


def result(t: float, procs: dict[int, tuple[float, float, int]], probe_pid: int = -1,
           gpu: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"time": t, "procs": procs, "gpu": gpu or [], "probe_pid": probe_pid}


def gpu(energy_j: float) -> dict[str, Any]:
    return GpuReading(0, "A100", energy_j, None, 2 * 10**9, 50.0).__dict__


def test_each_nodes_workers_are_integrated_and_priced_with_the_nodes_own_catalog() -> None:
    a = RayNode("node-a", ON_DEMAND, PROBE, pre_existing={11: (900.0, 50.0)})  # worker 11 was alive before the run
    b = RayNode("node-b", SPOT, PROBE)  # no snapshot of b's workers
    s = cluster(a, b)
    usage = RunUsage()
    s.fold(ClusterReading(T0 + 10, {"node-a": {11, 12}, "node-b": {21, 22}}, {
        "node-a": result(T0 + 10, {11: (900.0, 52.0, 100 * MB), 12: (T0 + 5, 3.0, 200 * MB),
                                   99: (800.0, 7.0, 50 * MB),  # the probe: its own CPU, never the run's
                                   13: (950.0, 20.0, 10**9)},  # not the job's: never seen running it
                         probe_pid=99),
        "node-b": result(T0 + 10, {21: (T0 - CREATE_TIME_SLACK_S, 4.0, 300 * MB), 22: (990.0, 30.0, 100 * MB)},
                         gpu=[gpu(1000.0)]),
    }), usage)
    s.fold(ClusterReading(T0 + 20, {}, {  # no discovery this time: known workers are still read
        "node-a": result(T0 + 20, {11: (900.0, 55.0, 100 * MB), 12: (T0 + 5, 8.0, 300 * MB),
                                   99: (800.0, 7.5, 50 * MB), 13: (950.0, 40.0, 10**9)}, probe_pid=99),
        "node-b": result(T0 + 20, {21: (T0 - CREATE_TIME_SLACK_S, 6.0, 300 * MB), 22: (990.0, 31.0, 100 * MB)},
                         gpu=[gpu(1600.0)]),
    }), usage)
    # a: 11 from its snapshot (55 - 50), 12 from zero (started for the run); b: 21 from zero (started
    # within the create-time slack), 22 from its first sighting (older, and no snapshot says otherwise)
    assert (a.cpu_s, a.probe_cpu_s, b.cpu_s, s.probe_cpu_s) == (13.0, 0.5, 7.0, 0.5)
    assert (a.usage.cpu_s, b.usage.cpu_s) == (13.0, 7.0)
    assert a.usage.ram_gb_s == pytest.approx(0.5 * (300 + 400) * MB / GB * 10)
    assert a.usage.peak_rss_bytes == 400 * MB and b.usage.peak_rss_bytes == 400 * MB
    assert (a.worker_s, b.worker_s) == (20.0, 20.0)  # two live workers for 10 s
    assert b.usage.gpu.seconds_by_model == {"A100": 10.0} and b.usage.gpu.energy_j == 600.0

    wall_s = 20.0
    assert set(usage.nodes) == {"node-a", "node-b"}
    for node, prices in ((a, ON_DEMAND), (b, SPOT)):
        expected = price_usage(prices, wall_s=wall_s, cpu_s=node.usage.cpu_s, ram_gb_s=node.usage.ram_gb_s,
                               gpu_s_by_model=node.usage.gpu.seconds_by_model,
                               gpu_energy_j=node.usage.gpu.energy_j,
                               allocation=Allocation(cpus=node.worker_s / wall_s, ram_gb=node.usage.ram_gb_s / wall_s,
                                                     gpus=len(node.usage.gpu.seconds_by_model),
                                                     gpu_models=tuple(node.usage.gpu.seconds_by_model)))
        # the run's wall time and peak memory are its driver's; the allocation mode the run's
        assert usage.nodes[node.node_id] == replace(expected, wall_hours=0.0, allocation_mode="usage",
                                                    peak_rss_gb=0.0)
    assert usage.nodes["node-a"].cpu_core_hours == pytest.approx(13 / 3600)
    assert usage.nodes["node-b"].gpu_hours == pytest.approx(10 / 3600)
    # b is priced at spot, by allocation: two worker slots held for the whole 20 s
    assert usage.nodes["node-b"].cpu_allocated_core_hours == pytest.approx(2 * 10 / 3600 * (20 / 20))


def test_a_worker_whose_cpu_reads_lower_keeps_its_highest_and_a_reused_pid_starts_afresh() -> None:
    a = RayNode("a", ON_DEMAND, PROBE)
    s = cluster(a)
    usage = RunUsage()
    s.fold(ClusterReading(T0 + 1, {"a": {7}}, {"a": result(T0 + 1, {7: (T0 + 0.5, 5.0, MB)})}), usage)
    s.fold(ClusterReading(T0 + 2, {}, {"a": result(T0 + 2, {7: (T0 + 0.5, 4.0, MB)})}), usage)
    assert a.cpu_s == 5.0
    # pid 7 now belongs to another process (another create time), found running the job: a new worker
    s.fold(ClusterReading(T0 + 3, {"a": {7}}, {"a": result(T0 + 3, {7: (T0 + 2.5, 1.0, MB)})}), usage)
    assert a.cpu_s == 6.0 and len(a.workers) == 2
    # the same pid again under a third create time, not found running the job: not ours
    s.fold(ClusterReading(T0 + 4, {}, {"a": result(T0 + 4, {7: (T0 + 3.5, 9.0, MB)})}), usage)
    assert a.cpu_s == 6.0 and len(a.workers) == 2


def test_an_agent_nodes_workers_stay_the_jobs_between_discoveries() -> None:
    agent = agent_reader()
    a = RayNode("a", ON_DEMAND, agent)
    agent.request([a], {"a": {5}})  # 5 found running the job by an earlier discovery
    s = cluster(a)
    usage = RunUsage()
    s.fold(ClusterReading(T0 + 10, {}, {"a": result(T0 + 10, {5: (T0 + 1, 2.0, MB), 6: (T0 + 1, 9.0, MB)})}),
           usage)
    assert a.cpu_s == 2.0 and usage.nodes["a"].cpu_core_hours == pytest.approx(2 / 3600)


@pytest.mark.parametrize(
    "pre, created, t0, expected",
    [
        ({3: (900.0, 40.0)}, 900.0, T0, 40.0),  # in the snapshot: from its CPU then
        ({3: (900.0, 40.0)}, 900.04, T0, 40.0),  # create times read up to 0.05 s apart are one process
        ({3: (900.0, 40.0)}, 900.06, T0, 45.0),  # another process under the same pid, older than the run
        ({3: (T0 + 2, 1.0)}, T0 + 2, T0, 0.0),  # in a snapshot taken mid-run, but started after t0
        ({3: (T0, 1.0)}, T0, T0, 0.0),  # started at t0 exactly: the run's
        ({}, T0 - CREATE_TIME_SLACK_S, T0, 0.0),  # not visibly older than the run
        ({}, T0 - CREATE_TIME_SLACK_S - 0.01, T0, 45.0),  # older, unseen at attach: from now on
    ],
)
def test_the_baseline_of_a_worker_first_seen_running_the_job(pre, created, t0, expected) -> None:
    assert worker_baseline(pre, 3, created, 45.0, t0) == expected


def share(cost: float, cpu_h: float) -> CostBreakdown:
    return CostBreakdown(cpu_core_hours=cpu_h, usage_cost_usd=cost)


def test_node_metrics_name_the_dearest_nodes_and_sum_the_rest() -> None:
    shares = {"n1": share(1.0, 0.1), "n2": share(3.0, 0.2), "n3": share(2.0, 0.4)}
    out = node_metrics(shares, 1)
    assert out == pytest.approx({
        METRIC_RAY_CPU_CORE_HOURS: 0.7,
        node_metric("n2", "cost_usd"): 3.0, node_metric("n2", "cpu_core_hours"): 0.2,
        node_metric("other", "cost_usd"): 3.0, node_metric("other", "cpu_core_hours"): 0.5,
    })
    assert node_metrics(shares, 3) == pytest.approx({
        METRIC_RAY_CPU_CORE_HOURS: 0.7, **{node_metric(n, "cost_usd"): b.cost_usd for n, b in shares.items()},
        **{node_metric(n, "cpu_core_hours"): b.cpu_core_hours for n, b in shares.items()}})
    assert set(node_metrics(shares, 0)) == {METRIC_RAY_CPU_CORE_HOURS, node_metric("other", "cost_usd"),
                                           node_metric("other", "cpu_core_hours")}
    assert node_metrics({}, 16) == {}


def test_close_tags_the_job_and_forgets_the_probes_of_lost_nodes() -> None:
    a = RayNode("a", ON_DEMAND, PROBE)
    b = RayNode("b", ON_DEMAND, PROBE)
    s = cluster(a, b, policy=RayPolicy(max_node_metrics=1))
    usage = RunUsage()
    s.fold(ClusterReading(T0 + 10, {"a": {1}, "b": {2}}, {
        "a": result(T0 + 5, {1: (T0, 1.0, MB)}), "b": result(T0 + 5, {2: (T0, 3.0, MB)})}), usage)
    b.mark_lost("gone")
    ray_readers._PROBES.update({(s.job_id, "a"): "probe-a", (s.job_id, "b"): "probe-b"})
    try:
        summary = s.close(usage)
        assert (s.job_id, "b") not in ray_readers._PROBES and (s.job_id, "a") in ray_readers._PROBES
    finally:
        ray_readers._PROBES.pop((s.job_id, "a"), None)
    assert summary.tags == {"finops.ray_job_id": "02000000", "finops.ray_nodes": "2", "finops.ray_read": "probe",
                            "finops.ray_lost_nodes": "b"}
    assert summary.metrics == pytest.approx({  # b, the dearer (3 CPU-s), named; a summed as other
        METRIC_RAY_CPU_CORE_HOURS: 4 / 3600,
        node_metric("b", "cost_usd"): usage.nodes["b"].cost_usd, node_metric("b", "cpu_core_hours"): 3 / 3600,
        node_metric("other", "cost_usd"): usage.nodes["a"].cost_usd,
        node_metric("other", "cpu_core_hours"): 1 / 3600})
    assert usage.nodes["b"].cost_usd > usage.nodes["a"].cost_usd > 0
    # without a policy: 16 nodes by name
    assert set(cluster(a, b).close(usage).metrics) >= {node_metric("a", "cost_usd"), node_metric("b", "cost_usd")}


def test_create_times_are_one_process_to_the_hundredth_and_memory_is_held_over_every_interval() -> None:
    a = RayNode("a", ON_DEMAND, PROBE)
    s = cluster(a)
    usage = RunUsage()
    s.fold(ClusterReading(T0 + 1, {"a": {7, 8}}, {"a": result(T0 + 1, {7: (T0 + 0.1234, 5.0, MB),
                                                                       8: (T0 + 0.2, 1.0, MB)})}), usage)
    # 99: a pid this job never ran, listed first; 7's create time read with float noise: the same process
    s.fold(ClusterReading(T0 + 2, {}, {"a": result(T0 + 2, {99: (T0, 50.0, MB), 7: (T0 + 0.1249, 7.0, MB),
                                                            8: (T0 + 0.2, 2.0, MB)})}), usage)
    # 8 is now another process started within the same second, found running the job
    s.fold(ClusterReading(T0 + 3, {"a": {8}}, {"a": result(T0 + 3, {7: (T0 + 0.1234, 7.0, MB),
                                                                     8: (T0 + 0.4, 0.5, MB)})}), usage)
    assert a.cpu_s == 7.0 + 2.0 + 0.5 and len(a.workers) == 3
    assert a.worker_s == 2 * 1.0 + 2 * 1.0  # two live workers over each of two intervals


def test_the_baseline_boundary_of_one_process_is_below_five_hundredths() -> None:
    pre = {3: (0.0, 40.0)}
    assert worker_baseline(pre, 3, 0.05, 45.0, T0) == 45.0  # 0.05 s apart: another process
    assert worker_baseline(pre, 3, 0.0499, 45.0, T0) == 40.0


def test_only_nodes_that_used_something_get_a_share_priced_over_the_runs_wall_time() -> None:
    idle = RayNode("idle", ON_DEMAND, PROBE)  # no worker of the job ever ran there
    zero = RayNode("zero", ON_DEMAND, PROBE)  # a worker seen once: nothing used yet
    light = RayNode("light", ON_DEMAND, PROBE)  # no CPU, a little memory
    busy = RayNode("busy", ON_DEMAND, PROBE)
    s = cluster(idle, zero, light, busy)
    usage = RunUsage()
    for t in (T0 + 0.25, T0 + 0.5):
        s.fold(ClusterReading(t, {"zero": {1}, "light": {2}, "busy": {3}}, {
            "zero": result(t, {1: (T0, 0.0, 0)}) if t == T0 + 0.25 else result(T0 + 0.25, {}),
            "light": result(t, {2: (T0, 0.0, 100 * MB)}),
            "busy": result(t, {3: (T0, 2 * (t - T0), 100 * MB)}),
        }), usage)
    assert list(usage.nodes) == ["light", "busy"]
    assert light.usage.cpu_s == 0 and 0 < light.usage.ram_gb_s < 1
    # half a second of the run's wall time: one worker slot held over 0.25 s of it
    assert usage.nodes["busy"].cpu_allocated_core_hours == pytest.approx(0.5 * 0.5 / 3600)
    lost = RayNode("lost", ON_DEMAND, PROBE, lost=True)
    assert cluster(lost).breakdowns(1.0) == {}  # lost before it ran anything: no share
    two = cluster(RayNode("x", ON_DEMAND, PROBE, lost=True), RayNode("y", ON_DEMAND, PROBE, lost=True))
    assert two.close(RunUsage()).tags["finops.ray_lost_nodes"] == "x,y"


def test_a_lost_node_is_said_once_with_its_reason(caplog: pytest.LogCaptureFixture) -> None:
    node = RayNode("n7", ON_DEMAND, PROBE)
    node.mark_lost("ActorDiedError: probe gone")
    assert node.lost and [r.getMessage() for r in caplog.records] == [
        "mlflow-finops: Ray node n7 lost (ActorDiedError: probe gone); its cost up to the last sample is kept"]
