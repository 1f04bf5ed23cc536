"""Each Ray node's share, from readings to priced figures, without a cluster.

The arithmetic of :mod:`mlflow_finops.cost.ray_nodes` that turns what a probe or the head's
agent data says about a node's workers into that node's cost: which workers are the job's,
from what baseline their CPU counts, memory integrated over time, each node priced with its own
catalog, and the per-node metrics. The readings are the dicts a probe returns (its real
``NodeProbe.read`` is checked against real processes below); how they are fetched from a live
cluster is tests/cost/test_ray_nodes.py and test_ray_agent.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from typing import Any, Iterator

import psutil
import pytest

from mlflow_finops.cost import ray_nodes
from mlflow_finops.cost.gpu import GpuReading
from mlflow_finops.cost.ray_nodes import (
    CREATE_TIME_SLACK_S,
    ClusterReading,
    NodeProbe,
    RayClusterSampler,
    _Node,
    node_metrics,
    read_agent_workers,
)
from mlflow_finops.cost.samplers import GB, RunUsage
from mlflow_finops.names import METRIC_RAY_CPU_CORE_HOURS, node_metric
from mlflow_finops.policy import RayPolicy
from mlflow_finops.pricing import Allocation, CostBreakdown, PriceCatalog, price_usage
from store_support import serve_wsgi

T0 = 1000.0
MB = 1_000_000
ON_DEMAND = PriceCatalog()
SPOT = PriceCatalog(market="spot", spot_discount=0.7, allocation_mode="allocation",
                    gpu_hour_usd_by_model={"A100": 3.0})


def cluster(*nodes: _Node, t0: float = T0, prices: PriceCatalog = ON_DEMAND,
            policy: RayPolicy | None = None) -> RayClusterSampler:
    """The sampler's state after attach, without Ray: what ``__init__`` would have found."""
    s = RayClusterSampler.__new__(RayClusterSampler)
    s.base_prices, s.policy, s.t0 = prices, policy, t0
    s.job_id, s._driver_node = "02000000", "driver-node"
    s.nodes = {n.node_id: n for n in nodes}
    s._state_url = None
    return s


def result(t: float, procs: dict[int, tuple[float, float, int]], probe_pid: int = -1,
           gpu: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"time": t, "procs": procs, "gpu": gpu or [], "probe_pid": probe_pid}


def gpu(energy_j: float) -> dict[str, Any]:
    return GpuReading(0, "A100", energy_j, None, 2 * 10**9, 50.0).__dict__


def test_each_nodes_workers_are_integrated_and_priced_with_the_nodes_own_catalog() -> None:
    a = _Node("node-a", ON_DEMAND, pre_existing={11: (900.0, 50.0)})  # worker 11 was alive before the run
    b = _Node("node-b", SPOT)  # no snapshot of b's workers
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
    a = _Node("a", ON_DEMAND)
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
    a = _Node("a", ON_DEMAND, agent=True, job_pids={5})
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
    node = _Node("a", ON_DEMAND, pre_existing=pre)
    assert cluster(node, t0=t0)._baseline(node, 3, created, 45.0) == expected


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
    a = _Node("a", ON_DEMAND, probe="probe-a")
    b = _Node("b", ON_DEMAND, probe="probe-b")
    s = cluster(a, b, policy=RayPolicy(max_node_metrics=1))
    usage = RunUsage()
    s.fold(ClusterReading(T0 + 10, {"a": {1}, "b": {2}}, {
        "a": result(T0 + 5, {1: (T0, 1.0, MB)}), "b": result(T0 + 5, {2: (T0, 3.0, MB)})}), usage)
    s._mark_lost(b, "gone")
    ray_nodes._PROBES.update({(s.job_id, "a"): "probe-a", (s.job_id, "b"): "probe-b"})
    try:
        summary = s.close(usage)
        assert (s.job_id, "b") not in ray_nodes._PROBES and (s.job_id, "a") in ray_nodes._PROBES
    finally:
        ray_nodes._PROBES.pop((s.job_id, "a"), None)
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


def worker(pid: int, cpu: tuple[float, float, float, float] = (1.0, 0.5, 0.25, 0.125), job: str | None = None,
           driver: bool = False, created: float = 1234.5678, rss: int | None = 4 * MB) -> dict[str, Any]:
    w: dict[str, Any] = {"pid": pid, "createTime": created,
                         "cpuTimes": {"user": cpu[0], "system": cpu[1], "childrenUser": cpu[2],
                                      "childrenSystem": cpu[3]},
                         "coreWorkerStats": [{"workerType": "DRIVER" if driver else "WORKER"}]}
    if job is not None:
        w["jobId"] = job
    if rss is not None:
        w["memoryInfo"] = {"rss": rss}
    return w


def test_the_agents_list_of_a_nodes_workers_becomes_a_reading_of_the_jobs_workers() -> None:
    a = _Node("driver-node", ON_DEMAND, agent=True, job_pids={8})
    s = cluster(a)
    got = s._agent_result(a, [
        worker(os.getpid()),  # the run's own driver, listed by its node: its process tree's, not the node's
        worker(3, driver=True, job="02000000"),  # another driver of the job
        worker(5, job="02000000"),  # named by the raylet as the job's
        worker(6, job="03000000"),  # another job's
        worker(8, rss=None),  # seen running the job before
    ], at=T0 + 3)
    assert got == {"time": T0 + 3, "gpu": [], "probe_pid": -1,
                   "procs": {5: (1234.57, 1.875, 4 * MB), 8: (1234.57, 1.875, 0)}}
    assert a.job_pids == {5, 8}
    assert ray_nodes._AGENT_LAST[("driver-node", 5, 1234.57)] == 1.875
    # on another node this process's pid is another process: a worker like any other
    other = _Node("other-node", ON_DEMAND, agent=True)
    assert set(s._agent_result(other, [worker(os.getpid(), job="02000000")], at=T0)["procs"]) == {os.getpid()}
    assert not ray_nodes._is_driver({"pid": 1}) and ray_nodes._agent_cpu_s(
        {"cpuTimes": {"user": 2, "system": 1}}) == 3.0


@pytest.fixture
def head() -> Iterator[tuple[str, dict[str, Any]]]:
    """A stand-in for the head's dashboard: ``GET /nodes/<id>`` answers what the test puts in ``answers``."""
    answers: dict[str, Any] = {}

    def app(environ: dict, start_response: Any) -> list[bytes]:
        node = environ["PATH_INFO"].rsplit("/", 1)[-1]
        if node == "slow":
            time.sleep(1.5)
        if node not in answers:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"no such node"]
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(answers[node]).encode()]

    with serve_wsgi(app, "fake-ray-head") as url:
        yield url, answers


def test_the_agent_snapshot_takes_the_higher_of_the_agents_figure_and_this_drivers_last(head, caplog) -> None:
    url, answers = head
    answers["n1"] = {"data": {"detail": {"workers": [worker(5, created=500.001), worker(6, created=600.456),
                                                     worker(7, cpu=(0.25, 0.0, 0.0, 0.0), created=700.0)]}}}
    answers["broken"] = {"data": {"detail": {"workers": None}}}
    assert [w["pid"] for w in read_agent_workers(ray_nodes.agent_url(url + "/"), "n1")] == [5, 6, 7]
    with pytest.raises(KeyError) as err:
        read_agent_workers(url, "broken")
    assert err.value.args == ("workers",)
    s = cluster()
    s._state_url = url
    ray_nodes._AGENT_LAST[("n1", 5, 500.0)] = 10.0  # the agent's list at attach is older than our last read
    try:
        snap = s._agent_snapshot(_Node("n1", ON_DEMAND, agent=True))
    finally:
        ray_nodes._AGENT_LAST.pop(("n1", 5, 500.0), None)
    assert snap == {5: (500.0, 10.0), 6: (600.46, 1.875), 7: (700.0, 0.25)}
    assert s._agent_snapshot(_Node("missing", ON_DEMAND, agent=True)) == {}  # no baseline: logged, not raised
    assert [r.getMessage() for r in caplog.records] == [
        "mlflow-finops: no baseline of the Ray workers on node missing: HTTP Error 404: Not Found"]


def test_a_probe_reads_the_given_workers_and_accounts_for_itself_unless_in_the_driver() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    try:
        proc = psutil.Process(child.pid)
        in_driver = NodeProbe(in_driver=True).read([child.pid, gone.pid])
        actor = NodeProbe().read([child.pid])
        t = proc.cpu_times()
        expected = (proc.create_time(), t.user + t.system + t.children_user + t.children_system,
                    proc.memory_info().rss)
    finally:
        child.kill()
        child.wait()
    assert set(in_driver["procs"]) == {child.pid} and in_driver["probe_pid"] == os.getpid()
    created, cpu, rss = in_driver["procs"][child.pid]
    assert created == expected[0] and cpu == pytest.approx(expected[1], abs=0.02)
    assert rss == pytest.approx(expected[2], rel=0.05) and rss > MB
    assert set(actor["procs"]) == {child.pid, os.getpid()}  # an actor probe is on its node too
    assert in_driver["gpu"] == [] and abs(in_driver["time"] - time.time()) < 5


def test_a_nodes_ray_workers_are_the_processes_titled_ray_colon_but_not_its_agents() -> None:
    titled = [subprocess.Popen(["bash", "-c", f'exec -a "{title}" sleep 60'])
              for title in ("ray::IDLE", "ray::DashboardAgent", "not-ray")]
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # until exec has replaced bash's title
            if all(psutil.Process(p.pid).cmdline()[:1] != ["bash"] for p in titled):
                break
            time.sleep(0.05)
        found = NodeProbe(in_driver=True).ray_workers()
        created = psutil.Process(titled[0].pid).create_time()
    finally:
        for p in titled:
            p.kill()
            p.wait()
    assert titled[0].pid in found and not {titled[1].pid, titled[2].pid} & set(found)
    assert found[titled[0].pid][0] == created and 0 <= found[titled[0].pid][1] < 5


def test_a_head_that_does_not_answer_in_time_fails_the_read(head) -> None:
    url, answers = head
    answers["slow"] = {"data": {"detail": {"workers": []}}}
    t0 = time.monotonic()
    with pytest.raises(OSError):
        read_agent_workers(url, "slow", timeout=0.3)
    assert time.monotonic() - t0 < 1.2
    assert ray_nodes.agent_url("http://127.0.0.1:8265//") == "http://127.0.0.1:8265"
    assert ray_nodes.agent_url("/api/") == "/api"


def test_create_times_are_one_process_to_the_hundredth_and_memory_is_held_over_every_interval() -> None:
    a = _Node("a", ON_DEMAND)
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
    node = _Node("a", ON_DEMAND, pre_existing={3: (0.0, 40.0)})
    assert cluster(node)._baseline(node, 3, 0.05, 45.0) == 45.0  # 0.05 s apart: another process
    assert cluster(node)._baseline(node, 3, 0.0499, 45.0) == 40.0


def test_only_nodes_that_used_something_get_a_share_priced_over_the_runs_wall_time() -> None:
    idle = _Node("idle", ON_DEMAND)  # no worker of the job ever ran there
    zero = _Node("zero", ON_DEMAND)  # a worker seen once: nothing used yet
    light = _Node("light", ON_DEMAND)  # no CPU, a little memory
    busy = _Node("busy", ON_DEMAND)
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
    lost = _Node("lost", ON_DEMAND, lost=True)
    assert cluster(lost).breakdowns(1.0) == {}  # lost before it ran anything: no share
    two = cluster(_Node("x", ON_DEMAND, lost=True), _Node("y", ON_DEMAND, lost=True))
    assert two.close(RunUsage()).tags["finops.ray_lost_nodes"] == "x,y"


def test_a_lost_node_is_said_once_with_its_reason(caplog: pytest.LogCaptureFixture) -> None:
    node = _Node("n7", ON_DEMAND)
    cluster(node)._mark_lost(node, "ActorDiedError: probe gone")
    assert node.lost and [r.getMessage() for r in caplog.records] == [
        "mlflow-finops: Ray node n7 lost (ActorDiedError: probe gone); its cost up to the last sample is kept"]
