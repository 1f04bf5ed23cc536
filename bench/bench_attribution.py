"""Attribution accuracy: the same training while a second process burns one core.

Our figure (finops/cpu_core_hours) is compared with the operating system's
accounting of the training's process tree over the same block
(getrusage(RUSAGE_SELF) + getrusage(RUSAGE_CHILDREN) after the workers are
reaped), and with what MLflow's machine-wide system/cpu_utilization_percentage
would imply (mean % x cores x wall).

    .venv/bin/python bench/bench_attribution.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as store:
        neighbour = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            rows = []
            for i in range(args.repeats):
                out = subprocess.run(
                    [sys.executable, str(HERE / "_training.py"), "both", store],
                    capture_output=True, text=True, check=True,
                )
                r = json.loads(out.stdout.strip().splitlines()[-1])
                pct = r["system_cpu_pct"]
                implied = (sum(pct) / len(pct) / 100.0) * cores * r["finops_wall_s"] if pct else float("nan")
                rows.append((r["finops_cpu_s"], r["os_cpu_s_training"], implied))
                print(f"run {i + 1}: finops {r['finops_cpu_s']:.2f} core-s, OS {r['os_cpu_s_training']:.2f} "
                      f"core-s, machine-wide implies {implied:.2f} core-s", flush=True)
        finally:
            neighbour.kill()
            neighbour.wait()
    ours = sum(r[0] for r in rows)
    os_s = sum(r[1] for r in rows)
    mach = sum(r[2] for r in rows)
    print()
    print(f"attributed / OS accounting of the process tree : {ours / os_s:.4f}   (target 0.98 .. 1.02)")
    print(f"machine-wide system metrics / OS accounting    : {mach / os_s:.4f}   (for contrast)")


if __name__ == "__main__":
    main()
