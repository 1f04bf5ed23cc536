"""What the samplers share: integrating memory and GPUs over readings, and the Ray nodes' final figures.

Pure arithmetic on given readings: no process, GPU or cluster is read here.
"""

from __future__ import annotations

import pytest

from mlflow_finops.cost.gpu import GpuReading
from mlflow_finops.cost.ray_nodes import node_metrics
from mlflow_finops.cost.samplers import GB, Usage
from mlflow_finops.names import METRIC_RAY_CPU_CORE_HOURS, node_metric
from mlflow_finops.pricing import Allocation, CostBreakdown, PriceCatalog


def gpu(energy_j: float | None, power_w: float | None = None, name: str = "NVIDIA A100", memory_gb: int = 1) -> GpuReading:
    return GpuReading(index=0, name=name, energy_j=energy_j, power_w=power_w,
                      memory_bytes=memory_gb * GB, utilization_pct=None)


def test_memory_is_integrated_as_a_trapezoid_and_the_first_reading_is_the_baseline() -> None:
    usage = Usage()
    assert usage.advance(100.0, 1 * GB) == 0.0
    assert usage.ram_gb_s == 0.0
    assert usage.advance(102.0, 3 * GB) == 2.0
    assert usage.ram_gb_s == pytest.approx(0.5 * (1 + 3) * 2)
    assert usage.advance(103.0, 1 * GB) == 1.0
    assert usage.ram_gb_s == pytest.approx(4.0 + 2.0)
    assert usage.peak_rss_bytes == 3 * GB


def test_a_reading_older_than_the_last_one_adds_nothing() -> None:
    usage = Usage()
    usage.advance(10.0, GB)
    usage.advance(12.0, GB)
    assert usage.advance(11.0, 5 * GB) == 0.0
    assert usage.ram_gb_s == pytest.approx(2.0)


def test_a_gpu_seen_at_the_first_reading_is_charged_from_it() -> None:
    usage = Usage()
    usage.advance(0.0, 0, [gpu(energy_j=1000.0)])
    usage.advance(10.0, 0, [gpu(energy_j=4000.0, memory_gb=3)])
    usage.advance(15.0, 0, [])  # released: no more GPU time
    assert usage.gpu.seconds_by_model == {"NVIDIA A100": 10.0}
    assert usage.gpu.energy_j == pytest.approx(3000.0)  # the device's energy counter
    assert usage.gpu.peak_memory_bytes == 3 * GB


def test_gpu_energy_without_a_counter_is_power_times_time() -> None:
    usage = Usage()
    usage.advance(0.0, 0, [gpu(energy_j=None, power_w=100.0)])
    usage.advance(4.0, 0, [gpu(energy_j=None, power_w=300.0)])
    assert usage.gpu.energy_j == pytest.approx(0.5 * (100 + 300) * 4)


def test_usage_priced_by_the_hour() -> None:
    usage = Usage(cpu_s=3600.0, ram_gb_s=2 * 3600.0, peak_rss_bytes=2 * GB)
    prices = PriceCatalog(cpu_watts_per_core=0, ram_watts_per_gb=0)
    b = usage.price(prices, wall_s=3600.0, allocation=Allocation(cpus=4, ram_gb=8))
    assert (b.cpu_core_hours, b.ram_gb_hours, b.wall_hours, b.peak_rss_gb) == pytest.approx((1.0, 2.0, 1.0, 2.0))
    assert b.usage_cost_usd == pytest.approx(0.031611 + 2 * 0.004237)
    assert b.cpu_efficiency == pytest.approx(0.25)


def share(cost_usd: float, core_hours: float) -> CostBreakdown:
    return CostBreakdown(cpu_core_hours=core_hours, usage_cost_usd=cost_usd)


def test_node_metrics_name_the_dearest_nodes_and_sum_the_rest() -> None:
    shares = {"a": share(1.0, 10.0), "b": share(3.0, 20.0), "c": share(2.0, 5.0), "d": share(0.5, 1.0)}
    m = node_metrics(shares, limit=2)
    assert m == pytest.approx({
        METRIC_RAY_CPU_CORE_HOURS: 36.0,
        node_metric("b", "cost_usd"): 3.0, node_metric("b", "cpu_core_hours"): 20.0,
        node_metric("c", "cost_usd"): 2.0, node_metric("c", "cpu_core_hours"): 5.0,
        node_metric("other", "cost_usd"): 1.5, node_metric("other", "cpu_core_hours"): 11.0,
    })
    assert node_metric("b", "cost_usd") == "finops/node/b/cost_usd"


def test_node_metrics_without_nodes_are_none() -> None:
    assert node_metrics({}, limit=16) == {}
    assert set(node_metrics({"a": share(1.0, 1.0)}, limit=0)) == {
        METRIC_RAY_CPU_CORE_HOURS, node_metric("other", "cost_usd"), node_metric("other", "cpu_core_hours")
    }
