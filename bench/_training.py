"""The fixed training the cost-tracking benchmarks run, in a fresh process per measurement.

    python bench/_training.py MODE STORE_DIR      MODE: plain | finops | sysmetrics | both

Prints one JSON line: the wall time of the tracked block (start_run .. end_run
returned), the OS's CPU accounting of this process tree over that block, and
what each tracker reported.
"""

from __future__ import annotations

import json
import resource
import sys
import time


def os_tree_cpu() -> float:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def self_cpu() -> float:
    """This process alone (all its threads), not its reaped children (the training's workers)."""
    s = resource.getrusage(resource.RUSAGE_SELF)
    return s.ru_utime + s.ru_stime


def tracker_threads_cpu() -> float:
    """CPU so far of the trackers' threads (ours: finops-*, MLflow's: SystemMetricsMonitor), from /proc."""
    import os
    import threading

    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for t in threading.enumerate():
        if t.name.startswith("finops-") or t.name == "SystemMetricsMonitor":
            try:
                fields = open(f"/proc/self/task/{t.native_id}/stat").read().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
            except OSError:
                pass
    return total


def main(mode: str, store: str, n_estimators: int = 120) -> None:
    import mlflow
    from joblib.externals.loky import get_reusable_executor
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier

    import mlflow_finops

    mlflow.set_tracking_uri(f"sqlite:///{store}/mlflow.db")
    mlflow.set_experiment("bench")
    X, y = make_classification(20_000, 20, n_informative=10, random_state=0)
    if mode in ("finops", "both"):
        mlflow_finops.autolog(interval_s=1.0)
    if mode in ("sysmetrics", "both"):
        mlflow.set_system_metrics_sampling_interval(1)
    t0, c0, s0 = time.perf_counter(), os_tree_cpu(), self_cpu()
    with mlflow.start_run(log_system_metrics=mode in ("sysmetrics", "both")) as run:
        c_start = os_tree_cpu()
        tracker = mlflow_finops.active_tracker()
        RandomForestClassifier(n_estimators, n_jobs=2, random_state=0).fit(X, y)
        get_reusable_executor().shutdown(wait=True)  # reap workers: the kernel now counts them
        c_end = os_tree_cpu()
        threads_cpu = tracker_threads_cpu()  # the tracker's threads, just before the run ends
    wall = time.perf_counter() - t0
    self_block = self_cpu() - s0  # before anything runs after end_run (the chart, the reads below)
    if tracker is not None and getattr(tracker, "_chart_thread", None) is not None:
        tracker._chart_thread.join()
    metrics = mlflow.get_run(run.info.run_id).data.metrics
    hist = mlflow.MlflowClient().get_metric_history(run.info.run_id, "system/cpu_utilization_percentage")
    print(json.dumps({
        "mode": mode,
        "wall_s": wall,
        "os_cpu_s_block": os_tree_cpu() - c0,
        "os_cpu_s_training": c_end - c_start,
        "self_cpu_s_block": self_block,
        "tracker_threads_cpu_s": threads_cpu,
        "finops_cpu_s": metrics.get("finops/cpu_core_hours", 0.0) * 3600,
        "finops_wall_s": metrics.get("finops/wall_hours", 0.0) * 3600,
        "system_cpu_pct": [h.value for h in hist],
        "finops_overhead_cpu_s": tracker.overhead_cpu_s if tracker else None,
        "finops_chart_cpu_s": tracker.chart_cpu_s if tracker else None,
        "finops_samples": tracker.samples if tracker else None,
    }))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], *(int(a) for a in sys.argv[3:]))
