"""Cost, energy and CO2e arithmetic."""

from __future__ import annotations

import pytest

from mlflow_finops.pricing import Allocation, CostBreakdown, PriceCatalog, price_usage


def test_usage_and_allocation_cost_of_one_hour() -> None:
    prices = PriceCatalog(cpu_watts_per_core=10, ram_watts_per_gb=1, pue=1.0, carbon_g_per_kwh=500)
    b = price_usage(
        prices,
        wall_s=3600,
        cpu_s=3600,  # one core busy for the hour
        ram_gb_s=2 * 3600,  # 2 GB resident
        gpu_s_by_model={},
        gpu_energy_j=0.0,
        allocation=Allocation(cpus=4, ram_gb=8),
    )
    assert b.cpu_core_hours == pytest.approx(1.0)
    assert b.usage_cost_usd == pytest.approx(0.031611 + 2 * 0.004237)
    assert b.allocation_cost_usd == pytest.approx(4 * 0.031611 + 8 * 0.004237)
    assert b.idle_cost_usd == pytest.approx(b.allocation_cost_usd - b.usage_cost_usd)
    assert b.cpu_efficiency == pytest.approx(0.25)
    assert b.energy_kwh == pytest.approx((10 + 2) / 1000)
    assert b.co2e_kg == pytest.approx(0.012 * 0.5)
    assert b.cost_usd == b.usage_cost_usd


def test_gpu_energy_spot_and_instance_price() -> None:
    prices = PriceCatalog(
        gpu_hour_usd_by_model={"A100": 3.0, "A100 80GB": 4.0},
        market="spot",
        spot_discount=0.5,
        energy_usd_per_kwh=0.2,
        instance_hour_usd=10.0,
        allocation_mode="allocation",
        cpu_watts_per_core=0,
        ram_watts_per_gb=0,
        pue=1.0,
    )
    b = price_usage(
        prices,
        wall_s=1800,
        cpu_s=0,
        ram_gb_s=0,
        gpu_s_by_model={"NVIDIA A100 80GB PCIe": 1800},
        gpu_energy_j=3.6e6,  # 1 kWh
        allocation=Allocation(cpus=8, ram_gb=64, gpus=1, gpu_models=("NVIDIA A100 80GB PCIe",)),
    )
    assert b.gpu_hours == pytest.approx(0.5)
    assert b.energy_kwh == pytest.approx(1.0)
    assert b.usage_cost_usd == pytest.approx(0.5 * 4.0 * 0.5 + 0.2)  # longest key wins, spot halves
    assert b.allocation_cost_usd == pytest.approx(10.0 * 0.5 * 0.5 + 0.2)
    assert b.cost_usd == b.allocation_cost_usd


def test_breakdown_round_trips_through_metrics_and_adds() -> None:
    a = CostBreakdown(wall_hours=1, cpu_core_hours=1, cpu_allocated_core_hours=2, usage_cost_usd=1,
                      allocation_cost_usd=2, peak_rss_gb=1)
    b = CostBreakdown.from_metrics(a.to_metrics())
    assert b == a
    total = a + a
    assert total.usage_cost_usd == 2 and total.cpu_efficiency == pytest.approx(0.5)
    assert total.peak_rss_gb == 1
    assert a.to_metrics()["finops/idle_cost_usd"] == pytest.approx(1.0)
