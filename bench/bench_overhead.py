"""Overhead of cost tracking on a CPU-bound scikit-learn training (n_jobs=2, sampling every 1 s).

Paired runs, each in a fresh process, in shuffled order: untracked, our
autolog(), and MLflow's own log_system_metrics=True at the same interval.
Prints the median wall-time ratio against the untracked anchor, and the CPU
our tracking's own threads used (``CostTracker.overhead_cpu_s``, per-thread
accounting) as a share of the training's CPU: the same overhead without the
pair-to-pair noise of wall times on a shared machine. For the comparison with
MLflow's system metrics on the same footing: the CPU of each tracker's own
threads (ours ``finops-*``, MLflow's ``SystemMetricsMonitor``, read from
``/proc/self/task``) just before the run ends.

    .venv/bin/python bench/bench_overhead.py [--pairs 7]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
MODES = ["plain", "finops", "sysmetrics"]


def measure(mode: str, store: str, n_estimators: int = 120) -> dict:
    out = subprocess.run(
        [sys.executable, str(HERE / "_training.py"), mode, store, str(n_estimators)],
        capture_output=True, text=True, check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=7)
    ap.add_argument("--n-estimators", type=int, default=120, help="Forest size: the training's length.")
    args = ap.parse_args()
    rng = random.Random(0)
    walls: dict[str, list[float]] = {m: [] for m in MODES}
    ratios: dict[str, list[float]] = {"finops": [], "sysmetrics": []}
    own_cpu: list[float] = []  # tracking's own CPU / the training's CPU, per finops run
    threads_cpu: dict[str, list[float]] = {"finops": [], "sysmetrics": []}  # the trackers' threads
    samples: list[int] = []
    with tempfile.TemporaryDirectory() as store:
        measure("plain", store)  # warm the store and the page cache
        for i in range(args.pairs):
            order = MODES[:]
            rng.shuffle(order)
            runs = {m: measure(m, store, args.n_estimators) for m in order}
            got = {m: r["wall_s"] for m, r in runs.items()}
            own_cpu.append(runs["finops"]["finops_overhead_cpu_s"] / runs["finops"]["os_cpu_s_training"])
            for m in threads_cpu:
                threads_cpu[m].append(runs[m]["tracker_threads_cpu_s"])
            samples.append(runs["finops"]["finops_samples"])
            for m in MODES:
                walls[m].append(got[m])
            ratios["finops"].append(got["finops"] / got["plain"])
            ratios["sysmetrics"].append(got["sysmetrics"] / got["plain"])
            print(f"pair {i + 1}/{args.pairs}: " + "  ".join(f"{m} {got[m]:.2f}s" for m in MODES), flush=True)
    med = {m: statistics.median(v) for m, v in walls.items()}
    print()
    print(f"untracked (anchor)         median wall {med['plain']:.2f} s")
    print(f"mlflow-finops autolog      median wall {med['finops']:.2f} s   "
          f"ratio {statistics.median(ratios['finops']):.4f}")
    print(f"MLflow log_system_metrics  median wall {med['sysmetrics']:.2f} s   "
          f"ratio {statistics.median(ratios['sysmetrics']):.4f}")
    print(f"finops vs system metrics   {med['finops'] / med['sysmetrics']:.4f}")
    print(f"tracking's own CPU / training CPU   median {statistics.median(own_cpu):.4%}  "
          f"max {max(own_cpu):.4%}  ({statistics.median(samples):.0f} samples per run)")
    ours, theirs = statistics.median(threads_cpu["finops"]), statistics.median(threads_cpu["sysmetrics"])
    print(f"trackers' threads' CPU during the run (median): mlflow-finops {ours:.3f} s, "
          f"MLflow system metrics {theirs:.3f} s, ratio {ours / theirs if theirs else float('nan'):.3f}")


if __name__ == "__main__":
    main()
