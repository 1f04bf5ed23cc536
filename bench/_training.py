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
    t0, c0 = time.perf_counter(), os_tree_cpu()
    with mlflow.start_run(log_system_metrics=mode in ("sysmetrics", "both")) as run:
        c_start = os_tree_cpu()
        RandomForestClassifier(n_estimators, n_jobs=2, random_state=0).fit(X, y)
        get_reusable_executor().shutdown(wait=True)  # reap workers: the kernel now counts them
        c_end = os_tree_cpu()
    wall = time.perf_counter() - t0
    metrics = mlflow.get_run(run.info.run_id).data.metrics
    hist = mlflow.MlflowClient().get_metric_history(run.info.run_id, "system/cpu_utilization_percentage")
    print(json.dumps({
        "mode": mode,
        "wall_s": wall,
        "os_cpu_s_block": os_tree_cpu() - c0,
        "os_cpu_s_training": c_end - c_start,
        "finops_cpu_s": metrics.get("finops/cpu_core_hours", 0.0) * 3600,
        "finops_wall_s": metrics.get("finops/wall_hours", 0.0) * 3600,
        "system_cpu_pct": [h.value for h in hist],
    }))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], *(int(a) for a in sys.argv[3:]))
