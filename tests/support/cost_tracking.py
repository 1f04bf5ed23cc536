"""What several cost tests share: a known CPU burn, the OS's own count of it, the sampler threads."""

from __future__ import annotations

import resource
import threading
import time

METRICS = [
    "finops/cost_usd", "finops/cpu_core_hours", "finops/ram_gb_hours", "finops/gpu_hours",
    "finops/energy_kwh", "finops/co2e_kg", "finops/cpu_efficiency", "finops/idle_cost_usd",
]


def os_tree_cpu() -> float:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def burn(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def samplers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("finops-sampler")]


def fit_forest() -> None:
    """A joblib training with worker processes (children the tracker must count)."""
    from joblib.externals.loky import get_reusable_executor
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier

    X, y = make_classification(4000, 20, random_state=0)
    RandomForestClassifier(60, n_jobs=2, random_state=0).fit(X, y)
    get_reusable_executor().shutdown(wait=True)  # reap loky workers so the OS counts them too
