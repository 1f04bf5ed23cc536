"""Pricing, figure by figure, against numbers computed by hand (every term of the formula matters)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlflow_finops.pricing import Allocation, CostBreakdown, PriceCatalog, price_usage

PRICES = PriceCatalog(
    cpu_core_hour_usd=0.04, ram_gb_hour_usd=0.005, gpu_hour_usd=1.0,
    gpu_hour_usd_by_model={"A100": 3.0, "A100 80GB": 4.0}, energy_usd_per_kwh=0.2, carbon_g_per_kwh=400,
    cpu_watts_per_core=5.0, ram_watts_per_gb=0.5, pue=1.5,
)


def test_every_figure_of_one_stretch() -> None:
    b = price_usage(
        PRICES, wall_s=7200, cpu_s=3600, ram_gb_s=4 * 7200, gpu_s_by_model={"NVIDIA A100 80GB PCIe": 1800},
        gpu_energy_j=3.6e6, allocation=Allocation(cpus=4, ram_gb=16, gpus=2, gpu_models=("NVIDIA A100 80GB PCIe",)),
        peak_rss_gb=5.5,
    )
    assert b.wall_hours == 2 and b.cpu_core_hours == 1 and b.ram_gb_hours == 8 and b.gpu_hours == 0.5
    assert b.cpu_allocated_core_hours == 8 and b.peak_rss_gb == 5.5
    energy = (1 * 5.0 / 1000 + 8 * 0.5 / 1000 + 1.0) * 1.5  # CPU + RAM watts, 3.6 MJ = 1 kWh of GPU, PUE
    assert b.energy_kwh == pytest.approx(energy, rel=1e-12)  # exact: 3.6 MJ is 1 kWh, not nearly
    assert b.co2e_kg == pytest.approx(energy * 400 / 1000)
    usage = 1 * 0.04 + 8 * 0.005 + 0.5 * 4.0  # the longest matching GPU key wins: "A100 80GB"
    assert b.usage_cost_usd == pytest.approx(usage + energy * 0.2)
    # reserved: 4 cores + 16 GB + one A100 80GB at its price and one unknown GPU at the default, for 2 h
    alloc = 2 * (4 * 0.04 + 16 * 0.005 + 4.0 + 1.0)
    assert b.allocation_cost_usd == pytest.approx(alloc + energy * 0.2)
    assert b.idle_cost_usd == pytest.approx(alloc - usage)
    assert b.cpu_efficiency == pytest.approx(1 / 8)


def test_gpu_price_by_model_and_spot_and_instance() -> None:
    assert PRICES.gpu_hour_price("NVIDIA A100 80GB PCIe") == 4.0
    assert PRICES.gpu_hour_price("NVIDIA A100-SXM4-40GB") == 3.0
    assert PRICES.gpu_hour_price("Tesla T4") == 1.0 and PRICES.gpu_hour_price(None) == 1.0
    spot = PriceCatalog(cpu_core_hour_usd=0.1, ram_gb_hour_usd=0, market="spot", spot_discount=0.7)
    b = price_usage(spot, wall_s=3600, cpu_s=3600, ram_gb_s=0, gpu_s_by_model={}, gpu_energy_j=0,
                    allocation=Allocation(cpus=2, ram_gb=0))
    assert b.usage_cost_usd == pytest.approx(0.1 * 0.3) and b.allocation_cost_usd == pytest.approx(0.2 * 0.3)
    vm = PriceCatalog(instance_hour_usd=0.5, allocation_mode="allocation")
    b = price_usage(vm, wall_s=1800, cpu_s=60, ram_gb_s=0, gpu_s_by_model={}, gpu_energy_j=0,
                    allocation=Allocation(cpus=64, ram_gb=512))
    assert b.allocation_cost_usd == pytest.approx(0.25) and b.cost_usd == b.allocation_cost_usd


def test_metrics_round_trip_and_allocation_mode() -> None:
    b = price_usage(PRICES.model_copy(update={"allocation_mode": "allocation"}), wall_s=3600, cpu_s=1800,
                    ram_gb_s=3600, gpu_s_by_model={}, gpu_energy_j=0, allocation=Allocation(cpus=2, ram_gb=4))
    m = b.to_metrics()
    assert m["finops/cost_usd"] == b.allocation_cost_usd != b.usage_cost_usd
    assert m["finops/idle_cost_usd"] == b.idle_cost_usd and m["finops/cpu_efficiency"] == 0.25
    assert m["finops/wall_hours"] == 1 and m["finops/ram_gb_hours"] == 1
    back = CostBreakdown.from_metrics(m, allocation_mode="allocation")
    assert back == b
    assert CostBreakdown.from_metrics({"finops/allocation_mode": 1.0}).allocation_mode == "usage"


def test_adding_keeps_the_newer_mode_and_the_larger_peak() -> None:
    a = CostBreakdown(cpu_core_hours=1, peak_rss_gb=3, allocation_mode="usage")
    b = CostBreakdown(cpu_core_hours=2, peak_rss_gb=2, allocation_mode="allocation")
    s = a + b
    assert (s.cpu_core_hours, s.peak_rss_gb, s.allocation_mode) == (3, 3, "allocation")


figures = st.floats(min_value=0, max_value=1e6, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(st.lists(figures, min_size=9, max_size=9), st.lists(figures, min_size=9, max_size=9))
def test_subtracting_a_prefix_gives_the_rest(xs: list[float], ys: list[float]) -> None:
    """A nested run's cost is (totals at its end) - (totals at its start): what was added in between."""
    names = ["wall_hours", "cpu_core_hours", "cpu_allocated_core_hours", "ram_gb_hours", "gpu_hours",
             "energy_kwh", "co2e_kg", "usage_cost_usd", "allocation_cost_usd"]
    before = CostBreakdown(**dict(zip(names, xs)), peak_rss_gb=7.0)
    added = CostBreakdown(**dict(zip(names, ys)))
    diff = (before + added) - before
    for n in names:
        assert math.isclose(getattr(diff, n), getattr(added, n), rel_tol=1e-9, abs_tol=1e-6)
    assert diff.peak_rss_gb == 7.0  # a peak is not a difference: the later one is kept
    assert (before - (before + added)).cpu_core_hours == 0.0  # never negative
