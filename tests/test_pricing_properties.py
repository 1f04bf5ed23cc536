"""Invariants of pricing that hold for every usage and every price (hypothesis), not just examples."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from mlflow_finops.pricing import Allocation, CostBreakdown, PriceCatalog, price_usage

seconds = st.floats(min_value=0, max_value=1e7, allow_nan=False)
price = st.floats(min_value=0, max_value=100, allow_nan=False)
cores = st.floats(min_value=0.5, max_value=256, allow_nan=False)
money = st.floats(min_value=0, max_value=1e6, allow_nan=False)


def priced(prices: PriceCatalog, cpu_s: float, ram_gb_s: float = 0.0, gpu_s: float = 0.0, wall_s: float = 3600.0,
           cpus: float = 2.0) -> CostBreakdown:
    return price_usage(
        prices, wall_s=wall_s, cpu_s=cpu_s, ram_gb_s=ram_gb_s, gpu_s_by_model={"T4": gpu_s} if gpu_s else {},
        gpu_energy_j=0.0, allocation=Allocation(cpus=cpus, ram_gb=8.0),
    )


@settings(max_examples=200, deadline=None)
@given(a=seconds, b=seconds, ram=seconds, gpu=seconds, cpu_price=price, ram_price=price, gpu_price=price)
def test_cost_is_monotone_in_usage(a, b, ram, gpu, cpu_price, ram_price, gpu_price) -> None:
    prices = PriceCatalog(cpu_core_hour_usd=cpu_price, ram_gb_hour_usd=ram_price, gpu_hour_usd=gpu_price)
    lo, hi = sorted((a, b))
    assert priced(prices, lo, ram, gpu).usage_cost_usd <= priced(prices, hi, ram, gpu).usage_cost_usd
    assert priced(prices, lo, ram, gpu).energy_kwh <= priced(prices, hi, ram, gpu).energy_kwh
    assert priced(prices, hi, lo, gpu).usage_cost_usd <= priced(prices, hi, hi, gpu).usage_cost_usd
    assert priced(prices, hi, ram, lo).usage_cost_usd <= priced(prices, hi, ram, hi).usage_cost_usd


@settings(max_examples=200, deadline=None)
@given(cpu_s=seconds, ram_gb_s=seconds, p1=price, p2=price, spot=st.booleans())
def test_cost_is_monotone_in_prices(cpu_s, ram_gb_s, p1, p2, spot) -> None:
    lo, hi = sorted((p1, p2))
    market = "spot" if spot else "on_demand"
    cheap = priced(PriceCatalog(cpu_core_hour_usd=lo, ram_gb_hour_usd=lo, market=market), cpu_s, ram_gb_s)
    dear = priced(PriceCatalog(cpu_core_hour_usd=hi, ram_gb_hour_usd=hi, market=market), cpu_s, ram_gb_s)
    assert cheap.usage_cost_usd <= dear.usage_cost_usd
    assert cheap.allocation_cost_usd <= dear.allocation_cost_usd


@settings(max_examples=300, deadline=None)
@given(usage=money, allocation=money)
def test_idle_is_never_negative_and_closes_the_gap(usage, allocation) -> None:
    b = CostBreakdown(usage_cost_usd=usage, allocation_cost_usd=allocation)
    assert b.idle_cost_usd >= 0
    if usage <= allocation:
        assert math.isclose(usage + b.idle_cost_usd, allocation, rel_tol=1e-12, abs_tol=1e-12)
    else:  # a run may use more than it reserved (bursting): nothing was idle
        assert b.idle_cost_usd == 0


@settings(max_examples=200, deadline=None)
@given(cpu_s=seconds, wall_s=st.floats(min_value=1, max_value=1e6), cpus=cores, p=price)
def test_usage_within_allocation_prices_to_usage_plus_idle(cpu_s, wall_s, cpus, p) -> None:
    """CPU-only run on CPU-only prices: usage cost + idle cost = allocation cost whenever used <= held."""
    prices = PriceCatalog(cpu_core_hour_usd=p, ram_gb_hour_usd=0.0)
    cpu_s = min(cpu_s, wall_s * cpus)
    b = priced(prices, cpu_s, wall_s=wall_s, cpus=cpus)
    assert b.usage_cost_usd <= b.allocation_cost_usd * (1 + 1e-12) + 1e-15
    assert math.isclose(b.usage_cost_usd + b.idle_cost_usd, b.allocation_cost_usd, rel_tol=1e-9, abs_tol=1e-15)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(seconds, seconds), min_size=1, max_size=6))
def test_segments_add_up_to_the_whole(parts) -> None:
    """Pricing is additive: the sum of priced segments is the price of the summed usage."""
    prices = PriceCatalog()
    total = CostBreakdown(allocation_mode=prices.allocation_mode)
    for cpu_s, ram in parts:
        total = total + priced(prices, cpu_s, ram)
    whole = price_usage(prices, wall_s=3600.0 * len(parts), cpu_s=sum(c for c, _ in parts),
                        ram_gb_s=sum(r for _, r in parts), gpu_s_by_model={}, gpu_energy_j=0.0,
                        allocation=Allocation(cpus=2.0, ram_gb=8.0))
    assert math.isclose(total.usage_cost_usd, whole.usage_cost_usd, rel_tol=1e-9, abs_tol=1e-12)
    assert math.isclose(total.allocation_cost_usd, whole.allocation_cost_usd, rel_tol=1e-9, abs_tol=1e-12)
