"""The mutation score of the last `mutmut run`, per module, and every surviving mutant.

    make mutation            # runs mutmut, then this
    .venv/bin/python bench/mutation_score.py

Killed counts mutants a test caught (failed, or timed out); survived counts both mutants
that every selected test let through and mutants no selected test reached ("no tests"):
both are bugs the fast suite would miss. Score = killed / (killed + survived).

A module listed in SCORED_ONLY is scored on the functions named there; its other mutants are
counted apart ("not scored") with the reason, never silently dropped.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

KILLED = {"killed", "timeout", "caught by type check"}
SURVIVED = {"survived", "no tests"}

# Ray attribution: cost/ray_usage.py (each node's readings integrated and priced) is scored whole;
# of cost/ray_readers.py and cost/ray_nodes.py only what runs without a cluster: the reads of one
# node's workers and the agent's answers, and the sampler's folding, pricing and closing. The rest
# attaches to a live cluster (discovery through the GCS and state API, probe actors, the final
# read's polling of the agents): tests/cost/test_ray_nodes.py and test_ray_readers.py run it on
# real multi-node clusters, too slow to run once per mutant.
LIVE_CLUSTER = "needs a live Ray cluster (Ray cluster tests)"
SCORED_ONLY: dict[str, tuple[tuple[str, ...], str]] = {
    "mlflow_finops.cost.ray_readers": (
        ("agent_url", "read_agent_workers", "_is_driver", "_agent_cpu_s", "NodeProbe.read", "NodeProbe.ray_workers",
         "AgentReader._result", "AgentReader._snapshot"),
        LIVE_CLUSTER,
    ),
    "mlflow_finops.cost.ray_nodes": (
        ("RayClusterSampler.fold", "RayClusterSampler.breakdowns", "RayClusterSampler.close"),
        LIVE_CLUSTER,
    ),
}


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


def function_of(mutant: str) -> str:
    """mlflow_finops.cost.ray_nodes.xǁRayClusterSamplerǁ_apply__mutmut_3 -> RayClusterSampler._apply"""
    last = mutant.rsplit(".", 1)[-1].rsplit("__mutmut_", 1)[0]
    if last.startswith("xǁ"):
        return ".".join(last[len("xǁ"):].split("ǁ"))
    return last[len("x_"):] if last.startswith("x_") else last


def scored(module: str, mutant: str) -> bool:
    scope = SCORED_ONLY.get(module)
    return scope is None or function_of(mutant) in scope[0]


def main() -> int:
    rows = results()
    if not rows:
        print("no mutmut results: run `make mutation` first")
        return 1
    by_module: dict[str, Counter[str]] = defaultdict(Counter)
    unscored: Counter[str] = Counter()
    survivors = []
    for name, status in rows:
        module = module_of(name)
        if not scored(module, name):
            unscored[module] += 1
            continue
        by_module[module][status] += 1
        if status in SURVIVED:
            survivors.append((name, status))
    total_k = total_s = 0
    print(f"{'module':40} {'killed':>7} {'survived':>9} {'score':>7}")
    for module, c in sorted(by_module.items()):
        k = sum(c[s] for s in KILLED)
        s = sum(c[s] for s in SURVIVED)
        if not k + s:
            continue  # a module this run did not test (`mutmut run` given names)
        total_k, total_s = total_k + k, total_s + s
        print(f"{module:40} {k:7d} {s:9d} {k / max(k + s, 1):7.1%}")
    print(f"{'all':40} {total_k:7d} {total_s:9d} {total_k / max(total_k + total_s, 1):7.1%}")
    for module, n in sorted(unscored.items()):
        print(f"not scored: {n} mutants of {module} ({SCORED_ONLY[module][1]})")
    if survivors:
        print(f"\n{len(survivors)} surviving mutant(s) (`mutmut show NAME` prints the diff):")
        for name, status in survivors:
            print(f"  {name}  ({status})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
