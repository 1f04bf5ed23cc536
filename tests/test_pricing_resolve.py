"""PriceCatalog.resolve: which layer wins, and errors that name where a bad value came from."""

from __future__ import annotations

import pytest

from mlflow_finops.pricing import PriceCatalog, price_env_var

FIELDS = ", ".join(PriceCatalog.model_fields)


def test_layers_policy_then_environment_then_overrides() -> None:
    policy = PriceCatalog(cpu_core_hour_usd=0.05, ram_gb_hour_usd=0.01, gpu_hour_usd=2.0, profile="file")
    env = {"MLFLOW_FINOPS_RAM_GB_HOUR_USD": "0.02", "MLFLOW_FINOPS_GPU_HOUR_USD": "3",
           "MLFLOW_FINOPS_PRICE_PROFILE": "env", "UNRELATED": "x"}
    c = PriceCatalog.resolve(policy, env, {"gpu_hour_usd": 4.0})
    assert (c.cpu_core_hour_usd, c.ram_gb_hour_usd, c.gpu_hour_usd, c.profile) == (0.05, 0.02, 4.0, "env")
    assert c.pue == PriceCatalog().pue  # set by nobody: the default


def test_only_what_the_policy_and_a_catalog_override_set_is_a_layer() -> None:
    # a default in the policy's catalog does not hide the environment's value
    c = PriceCatalog.resolve(PriceCatalog(pue=1.5), {"MLFLOW_FINOPS_CARBON_G_PER_KWH": "100"})
    assert (c.pue, c.carbon_g_per_kwh) == (1.5, 100.0)
    c = PriceCatalog.resolve(None, {"MLFLOW_FINOPS_PUE": "1.2"}, PriceCatalog(carbon_g_per_kwh=50))
    assert (c.pue, c.carbon_g_per_kwh) == (1.2, 50.0)


def test_every_field_but_the_gpu_table_has_its_variable() -> None:
    env = {price_env_var("allocation_mode"): "allocation", price_env_var("allocated_gpus"): "2",
           price_env_var("market"): "spot", price_env_var("gpu_hour_usd_by_model"): "{not read}"}
    c = PriceCatalog.resolve(None, env)
    assert (c.allocation_mode, c.allocated_gpus, c.market, c.gpu_hour_usd_by_model) == ("allocation", 2, "spot", {})
    assert price_env_var("profile") == "MLFLOW_FINOPS_PRICE_PROFILE"
    assert price_env_var("cpu_core_hour_usd") == "MLFLOW_FINOPS_CPU_CORE_HOUR_USD"


def test_no_env_given_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_FINOPS_CPU_CORE_HOUR_USD", "0.5")
    assert PriceCatalog.resolve().cpu_core_hour_usd == 0.5
    assert PriceCatalog.resolve(env={}).cpu_core_hour_usd == PriceCatalog().cpu_core_hour_usd
    assert PriceCatalog.resolve() == PriceCatalog.resolve(None, None, None)


@pytest.mark.parametrize(
    "env, overrides, message",
    [
        ({"MLFLOW_FINOPS_RAM_GB_HOUR_USD": "lots"}, None,
         "invalid prices: MLFLOW_FINOPS_RAM_GB_HOUR_USD: ram_gb_hour_usd: Input should be a valid number, "
         "unable to parse string as a number (got 'lots')"),
        ({"MLFLOW_FINOPS_PRICE_PROFILE": "x", "MLFLOW_FINOPS_PUE": "0.5"}, None,
         "invalid prices: MLFLOW_FINOPS_PUE: pue: Input should be greater than or equal to 1 (got '0.5')"),
        ({}, {"cpu_core_hour_usd": -1},
         "invalid prices: autolog(prices=...): cpu_core_hour_usd: Input should be greater than or equal to 0 (got -1)"),
        ({}, {"cpu": 1},
         f"invalid prices: autolog(prices=...): unknown price key 'cpu' (expected one of: {FIELDS})"),
        # the override wins, so the error is the override's, not the environment's
        ({"MLFLOW_FINOPS_GPU_HOUR_USD": "1"}, {"gpu_hour_usd": "inf"},
         "invalid prices: autolog(prices=...): gpu_hour_usd: Input should be a finite number (got 'inf')"),
        ({"MLFLOW_FINOPS_MARKET": "auction"}, {"spot_discount": 1.0},
         "invalid prices: MLFLOW_FINOPS_MARKET: market: Input should be 'on_demand' or 'spot' (got 'auction'); "
         "autolog(prices=...): spot_discount: Input should be less than 1 (got 1.0)"),
    ],
    ids=["env not a number", "env below its bound", "argument below its bound", "unknown argument",
         "the winning layer is named", "every problem, in field order"],
)
def test_errors_name_the_variable_or_argument(env: dict, overrides: dict | None, message: str) -> None:
    with pytest.raises(ValueError) as err:
        PriceCatalog.resolve(PriceCatalog(pue=1.3), env, overrides)
    assert str(err.value) == message
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_the_longest_matching_gpu_key_wins_not_the_last_in_sort_order() -> None:
    prices = PriceCatalog(gpu_hour_usd_by_model={"h100": 2.0, "NVIDIA H100": 3.0, "a100": 1.0})
    assert prices.gpu_hour_price("NVIDIA H100 80GB HBM3") == 3.0  # "h100" sorts after "NVIDIA H100"
    assert prices.gpu_hour_price("H100 PCIe") == 2.0
    assert prices.gpu_hour_price("Tesla T4") == prices.gpu_hour_price(None) == 0.95
