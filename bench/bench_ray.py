"""Ray attribution: what a driver's distributed tasks cost, on a real multi-node cluster.

A 3-node ``ray.cluster_utils.Cluster`` on 127.0.0.1 (head + 2 nodes, 1 CPU
each, labels market=on_demand / spot / spot), a SQLite MLflow store in a temp
folder, and a busy process outside Ray (orphaned, so not a descendant of this
driver) burning one core all along. Each repeat is one tracked MLflow run
(``mlflow_finops.autolog(interval_s=1.0)``, a sample a second; ``--interval-s 10`` is
``autolog()``'s default) of a job whose tasks are pinned to
every node (NodeAffinitySchedulingStrategy), each doing ~2.5 s of CPU (numpy
work or a spin loop) and measuring its own ``time.process_time()``.

Printed per run and as the mean of the repeats:

- attributed Ray CPU (``finops/ray_cpu_core_hours`` x 3600) / summed in-task CPU
  (target 0.95 .. 1.05), and the same per node;
- overhead = (the driver tracker's own CPU, ``CostTracker.overhead_cpu_s``:
  sampling, Ray discovery, reading the nodes on this host, delivery, start and
  stop; + the probe actors' CPU, ``RayClusterSampler.probe_cpu_s``) / in-task
  CPU (target < 1%).

All nodes of this cluster share the driver's host, so by default the driver
reads them itself and no probe actor runs; ``--agent`` reads every node from
the head dashboard's copy of Ray's agent reports, as nodes on other hosts are
read (MLFLOW_FINOPS_RAY_READ_LOCAL=false), and ``--probes`` through a probe
actor per node (the fallback; MLFLOW_FINOPS_RAY_READ_AGENT=false too).

    .venv/bin/python bench/bench_ray.py [--runs 3] [--tasks-per-node 3] [--task-cpu-s 2.5] [--agent | --probes]
                                        [--interval-s 1]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _local_ray  # noqa: F401  (before ray is imported: keeps Ray on loopback)

from mlflow_finops.ray_cluster import free_ports, join, loopback_cluster_env


def outside_burner() -> int:
    """A process burning one core that is neither a Ray worker nor our descendant (orphaned)."""
    out = subprocess.run(
        ["sh", "-c", f"'{sys.executable}' -c 'while True: pass' >/dev/null 2>&1 & echo $!"],
        capture_output=True, text=True, check=True,
    )
    return int(out.stdout.strip())


def work(cpu_s: float, kind: str) -> tuple[float, str, int]:
    """~cpu_s of real CPU (numpy or a spin loop); return the CPU this task measured, its node, its pid."""
    import ray

    start = time.process_time()
    if kind == "numpy":
        import numpy as np

        rng = np.random.default_rng(0)
        a = rng.standard_normal((160, 160))
        while time.process_time() - start < cpu_s:
            b = a @ a.T
            a = np.linalg.solve(b + 160 * np.eye(160), a)
            np.sort(rng.standard_normal(20_000))
    else:
        x = 0
        while time.process_time() - start < cpu_s:
            for i in range(2_000):
                x += i * i
    return time.process_time() - start, ray.get_runtime_context().get_node_id(), os.getpid()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--tasks-per-node", type=int, default=3)
    ap.add_argument("--task-cpu-s", type=float, default=2.5)
    ap.add_argument("--no-burner", action="store_true", help="leave out the busy neighbour")
    ap.add_argument("--interval-s", type=float, default=1.0,
                    help="the tracker's sampling interval (autolog()'s default is 10)")
    path = ap.add_mutually_exclusive_group()
    path.add_argument("--agent", action="store_true",
                      help="read every node from Ray's agent reports, as nodes on other hosts "
                           "(MLFLOW_FINOPS_RAY_READ_LOCAL=false)")
    path.add_argument("--probes", action="store_true",
                      help="read every node through a probe actor, the fallback "
                           "(MLFLOW_FINOPS_RAY_READ_LOCAL=false, MLFLOW_FINOPS_RAY_READ_AGENT=false)")
    args = ap.parse_args()

    import mlflow
    import ray
    from mlflow.tracking import MlflowClient
    from ray.cluster_utils import Cluster
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    import mlflow_finops

    tmp = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    os.environ["MLFLOW_FINOPS_SPOOL_DIR"] = str(tmp / "spool")
    os.environ["MLFLOW_FINOPS_LOG_CHARTS"] = "false"  # no chart thread competing with the next run
    if args.agent or args.probes:
        os.environ["MLFLOW_FINOPS_RAY_READ_LOCAL"] = "false"
    if args.probes:
        os.environ["MLFLOW_FINOPS_RAY_READ_AGENT"] = "false"
    (tmp / "finops.toml").write_text(
        '[[ray.node_prices]]\nlabels = { market = "spot" }\nprices = { market = "spot", spot_discount = 0.7 }\n'
    )
    os.environ["MLFLOW_FINOPS_POLICY"] = str(tmp / "finops.toml")
    mlflow.set_tracking_uri(f"sqlite:///{tmp / 'mlflow.db'}")
    mlflow.set_experiment("bench-ray")

    t_start = time.time()
    with loopback_cluster_env():  # the cluster's processes stay on loopback, as `ray up` starts them
        cluster = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": 1,
                "node_ip_address": "127.0.0.1",
                "include_dashboard": True,  # Ray's state API (list_tasks / list_actors) is served there
                "dashboard_host": "127.0.0.1",
                "dashboard_port": free_ports(1)[0],
                "labels": {"market": "on_demand"},
            },
        )
        for _ in range(2):
            cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1", labels={"market": "spot"})
    cluster.wait_for_nodes()
    join(cluster.address, log_to_driver=False)  # as the product joins a loopback cluster
    nodes = [n for n in ray.nodes() if n["Alive"]]
    labels = {n["NodeID"]: n["Labels"].get("market", "?") for n in nodes}
    print(f"cluster: {len(nodes)} nodes up in {time.time() - t_start:.1f} s "
          f"({', '.join(f'{k[:8]}={v}' for k, v in labels.items())})", flush=True)

    task = ray.remote(num_cpus=1)(work)

    def on(node_id: str):
        return task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False))

    # Warm the workers: each node's worker starts and imports numpy before any tracked run.
    t = time.time()
    for _ in range(2):
        ray.get([on(n).remote(0.05, k) for n in labels for k in ("numpy", "spin")])
    print(f"workers warmed in {time.time() - t:.1f} s", flush=True)
    if args.agent:  # the head's agent data must show the warmed workers, or their start-up is the run's
        from mlflow_finops.cost.ray_nodes import agent_staleness_s

        time.sleep(agent_staleness_s())

    burner = None if args.no_burner else outside_burner()
    rows = []
    try:
        mlflow_finops.autolog(interval_s=args.interval_s)
        for i in range(args.runs):
            t = time.time()
            with mlflow.start_run() as run:
                attach_s = time.time() - t  # the first run waits for the probes to start
                tracker = mlflow_finops.active_tracker()
                refs = [
                    on(n).remote(args.task_cpu_s, "numpy" if j % 2 == 0 else "spin")
                    for j in range(args.tasks_per_node) for n in labels
                ]
                results = ray.get(refs)
            wall = time.time() - t
            # after the run: sampling, delivery, start and the final sample and flush
            sampling_s = tracker.overhead_cpu_s
            split = {"sampling": tracker.sampling_cpu_s, "delivery": tracker._outbox.cpu_s,
                     "start/stop": tracker._caller_cpu_s}
            sampler = tracker.ray_cluster
            probe_s = sampler.probe_cpu_s if sampler is not None else float("nan")
            in_driver = sum(node.in_driver for node in sampler.nodes.values())
            by_agent = sum(node.agent for node in sampler.nodes.values())
            got = MlflowClient().get_run(run.info.run_id).data
            m = got.metrics
            in_task = sum(c for c, _, _ in results)
            per_node_task: dict[str, float] = {}
            for c, node_id, _ in results:
                per_node_task[node_id] = per_node_task.get(node_id, 0.0) + c
            ray_cpu = m.get("finops/ray_cpu_core_hours", 0.0) * 3600
            per_node = {n: m.get(f"finops/node/{n}/cpu_core_hours", 0.0) * 3600 for n in labels}
            row = {
                "ratio": ray_cpu / in_task,
                "in_task": in_task,
                "ray_cpu": ray_cpu,
                "overhead": (sampling_s + probe_s) / in_task,
                "sampling_s": sampling_s,
                "sampler_s": split["sampling"],
                "probe_s": probe_s,
                "per_node": {n: (per_node[n], per_node_task.get(n, 0.0)) for n in labels},
                "wall": wall,
                "pids": sorted({(nid[:8], pid) for _, nid, pid in results}),
            }
            rows.append(row)
            baselines = {n[:8]: len(node.pre_existing) for n, node in sampler.nodes.items()}
            print(f"\nrun {i + 1} (finops.ray_read={got.tags.get('finops.ray_read')}): wall {wall:.1f} s "
                  f"(start_run {attach_s:.1f} s), {len(results)} tasks, "
                  f"worker pids {row['pids']}, baseline workers per node {baselines}")
            print(f"  attributed Ray CPU {ray_cpu:.2f} core-s / in-task CPU {in_task:.2f} s = {row['ratio']:.4f}")
            for n, (att, own) in row["per_node"].items():
                print(f"  node {n[:8]} ({labels[n]:>9}): attributed {att:6.2f} core-s, in-task {own:6.2f} s, "
                      f"ratio {att / own if own else float('nan'):.4f}")
            print(f"  overhead: driver's tracking {sampling_s:.3f} s + probe actors {probe_s:.3f} s "
                  f"= {100 * row['overhead']:.2f}% of the job's CPU "
                  f"(driver {1000 * sampling_s / wall:.1f} ms/s, {len(labels) - in_driver - by_agent} probe "
                  f"actors {1000 * probe_s / wall:.1f} ms/s of wall time; {in_driver} nodes read by the driver "
                  f"from /proc, {by_agent} from the agent reports)",
                  flush=True)
            print("  driver's tracking: " + ", ".join(f"{k} {v:.3f} s" for k, v in split.items())
                  + f" ({tracker.samples} samples); sampling alone + probes = "
                  f"{100 * (split['sampling'] + probe_s) / in_task:.2f}% of the job's CPU", flush=True)
    finally:
        if burner is not None:
            try:
                os.kill(burner, signal.SIGKILL)
            except ProcessLookupError:
                pass
        ray.shutdown()
        cluster.shutdown()

    n = len(rows)
    mean = lambda key: sum(r[key] for r in rows) / n  # noqa: E731
    print(f"\nmean of {n} runs:")
    each_ratio = ", ".join(format(r["ratio"], ".4f") for r in rows)
    each_over = ", ".join(format(100 * r["overhead"], ".3f") + "%" for r in rows)
    print(f"  attributed / in-task CPU : {mean('ratio'):.4f}   (each: {each_ratio}; target 0.95 .. 1.05)")
    for node in labels:
        att = sum(r["per_node"][node][0] for r in rows) / n
        own = sum(r["per_node"][node][1] for r in rows) / n
        print(f"  node {node[:8]} ({labels[node]:>9}): attributed {att:.2f} / in-task {own:.2f} = {att / own:.4f}")
    print(f"  tracking overhead        : {100 * mean('overhead'):.3f}%   (each: {each_over}; target < 1%)")
    sampling_only = sum((r["sampler_s"] + r["probe_s"]) / r["in_task"] for r in rows) / n
    print(f"  of which sampling        : {100 * sampling_only:.3f}%   (the sampler thread + probe actors; "
          f"the rest is writing to the SQLite store, start and stop)")
    print(f"  total bench time         : {time.time() - t_start:.0f} s")


if __name__ == "__main__":
    main()
