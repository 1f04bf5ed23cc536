"""How one Ray node's workers are read: the head's agent data on them becomes a reading of the job's
workers, a probe reads given processes; and nodes of other hosts read from Ray's own agent reports
(no probe actor) on a real multi-node cluster.

The readers' own parts run here against real processes and a stand-in for the head's dashboard
(an HTTP server answering ``GET /nodes/<id>``); what the readings cost is tests/cost/test_ray_usage.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any, Iterator

import mlflow
import psutil
import pytest
from mlflow.tracking import MlflowClient

import mlflow_finops
from mlflow_finops.cost import ray_readers
from mlflow_finops.cost.ray_readers import AgentReader, NodeProbe, read_agent_workers
from mlflow_finops.cost.ray_usage import RayNode
from mlflow_finops.pricing import PriceCatalog
from store_support import serve_wsgi

ray = pytest.importorskip("ray")
from support.ray_work import burn_task  # noqa: E402

T0 = 1000.0
MB = 1_000_000
JOB = "02000000"
ON_DEMAND = PriceCatalog()


def no_head() -> str:
    raise AssertionError("this test asks the head's dashboard nothing")


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
    agent = AgentReader(no_head, JOB, "driver-node")
    a = RayNode("driver-node", ON_DEMAND, agent)
    agent.request([a], {"driver-node": {8}})  # 8 found running the job by an earlier discovery
    got = agent._result(a, [
        worker(os.getpid()),  # the run's own driver, listed by its node: its process tree's, not the node's
        worker(3, driver=True, job="02000000"),  # another driver of the job
        worker(5, job="02000000"),  # named by the raylet as the job's
        worker(6, job="03000000"),  # another job's
        worker(8, rss=None),  # seen running the job before
    ], at=T0 + 3)
    assert got == {"time": T0 + 3, "gpu": [], "probe_pid": -1,
                   "procs": {5: (1234.57, 1.875, 4 * MB), 8: (1234.57, 1.875, 0)}}
    assert agent.job_pids(a, {}) == {5, 8}
    assert ray_readers._AGENT_LAST[("driver-node", 5, 1234.57)] == 1.875
    # on another node this process's pid is another process: a worker like any other
    other = RayNode("other-node", ON_DEMAND, agent)
    assert set(agent._result(other, [worker(os.getpid(), job="02000000")], at=T0)["procs"]) == {os.getpid()}
    assert not ray_readers._is_driver({"pid": 1}) and ray_readers._agent_cpu_s(
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
    assert [w["pid"] for w in read_agent_workers(ray_readers.agent_url(url + "/"), "n1")] == [5, 6, 7]
    with pytest.raises(KeyError) as err:
        read_agent_workers(url, "broken")
    assert err.value.args == ("workers",)
    agent = AgentReader(lambda: url, JOB, "driver-node")
    ray_readers._AGENT_LAST[("n1", 5, 500.0)] = 10.0  # the agent's list at attach is older than our last read
    try:
        snap = agent._snapshot(RayNode("n1", ON_DEMAND, agent))
    finally:
        ray_readers._AGENT_LAST.pop(("n1", 5, 500.0), None)
    assert snap == {5: (500.0, 10.0), 6: (600.46, 1.875), 7: (700.0, 0.25)}
    assert agent._snapshot(RayNode("missing", ON_DEMAND, agent)) == {}  # no baseline: logged, not raised
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
    assert ray_readers.agent_url("http://127.0.0.1:8265//") == "http://127.0.0.1:8265"
    assert ray_readers.agent_url("/api/") == "/api"
