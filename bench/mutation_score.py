"""The mutation score of the last `mutmut run`, per module, and every surviving mutant.

    make mutation            # runs mutmut, then this
    .venv/bin/python bench/mutation_score.py

Killed counts mutants a test caught (failed, or timed out); survived counts both mutants
that every selected test let through and mutants no selected test reached ("no tests"):
both are bugs the fast suite would miss. Score = killed / (killed + survived).
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

KILLED = {"killed", "timeout", "caught by type check"}
SURVIVED = {"survived", "no tests"}


def results() -> list[tuple[str, str]]:
    mutmut = Path(sys.executable).with_name("mutmut")
    out = subprocess.run([str(mutmut), "results", "--all", "true"], capture_output=True, text=True, check=True)
    rows = []
    for line in out.stdout.splitlines():
        name, _, status = line.strip().rpartition(": ")
        if name:
            rows.append((name, status))
    return rows


def module_of(mutant: str) -> str:
    """mlflow_finops.pricing.x_price_usage__mutmut_3 -> mlflow_finops.pricing"""
    parts = mutant.split(".")
    return ".".join(p for p in parts if not p.startswith(("x_", "xǁ")))


def main() -> int:
    rows = results()
    if not rows:
        print("no mutmut results: run `make mutation` first")
        return 1
    by_module: dict[str, Counter[str]] = defaultdict(Counter)
    survivors = []
    for name, status in rows:
        by_module[module_of(name)][status] += 1
        if status in SURVIVED:
            survivors.append((name, status))
    total_k = total_s = 0
    print(f"{'module':40} {'killed':>7} {'survived':>9} {'score':>7}")
    for module, c in sorted(by_module.items()):
        k = sum(c[s] for s in KILLED)
        s = sum(c[s] for s in SURVIVED)
        total_k, total_s = total_k + k, total_s + s
        print(f"{module:40} {k:7d} {s:9d} {k / max(k + s, 1):7.1%}")
    print(f"{'all':40} {total_k:7d} {total_s:9d} {total_k / max(total_k + total_s, 1):7.1%}")
    if survivors:
        print(f"\n{len(survivors)} surviving mutant(s) (`mutmut show NAME` prints the diff):")
        for name, status in survivors:
            print(f"  {name}  ({status})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
