"""Work for Ray tests to attribute: a task that burns a known amount of CPU on a chosen node."""

from __future__ import annotations

import time

import ray


@ray.remote(num_cpus=1)
def burn_task(seconds: float) -> tuple[float, str]:
    """Spin for ``seconds`` of CPU; return the CPU the task itself measured and its node."""
    start = time.process_time()
    while time.process_time() - start < seconds:
        pass
    return time.process_time() - start, ray.get_runtime_context().get_node_id()
