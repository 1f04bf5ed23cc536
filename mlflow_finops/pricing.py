"""Prices and the arithmetic that turns measured usage into cost, energy and CO2e.

Defaults are OpenCost's list prices (GCP us-central1) for compute, the Cloud
Carbon Footprint project's GCP coefficients for power, and the world-average
grid carbon intensity. Every figure can be overridden in ``finops.toml``
(``[prices]``), by ``MLFLOW_FINOPS_*`` environment variables, or by
``autolog(prices=...)``, in that order of precedence from lowest.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .names import METRIC_PREFIX, env_var

__all__ = ["PriceCatalog", "CostBreakdown", "Allocation", "price_env_var", "METRIC_PREFIX"]


class PriceCatalog(BaseModel):
    """What compute, energy and carbon cost; validated at the boundary, immutable after."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # inf is no price

    profile: str = Field("opencost-default", description="Name logged as the finops.price_profile tag.")
    # OpenCost's default list prices (GCP us-central1).
    cpu_core_hour_usd: float = Field(0.031611, ge=0, description="USD per CPU core-hour.")
    ram_gb_hour_usd: float = Field(0.004237, ge=0, description="USD per GB-hour of resident memory.")
    gpu_hour_usd: float = Field(0.95, ge=0, description="USD per GPU-hour when the model is not listed.")
    gpu_hour_usd_by_model: dict[str, float] = Field(
        default_factory=dict,
        description="USD per GPU-hour by GPU model; a key matches when it is a case-insensitive "
        "substring of the NVML device name (longest key wins), e.g. {'H100' = 2.25}.",
    )
    # Energy is already inside cloud list prices; set this for on-premises hardware.
    energy_usd_per_kwh: float = Field(0.0, ge=0, description="USD per kWh, added on top of compute.")
    carbon_g_per_kwh: float = Field(475.0, ge=0, description="Grid carbon intensity, gCO2e per kWh.")
    # Cloud Carbon Footprint coefficients for GCP: max watts per vCPU, watts per GB of memory, PUE.
    cpu_watts_per_core: float = Field(4.26, ge=0, description="Watts drawn by one fully used core.")
    ram_watts_per_gb: float = Field(0.392, ge=0, description="Watts drawn per GB of resident memory.")
    pue: float = Field(1.1, ge=1.0, description="Data-centre power usage effectiveness.")
    market: Literal["on_demand", "spot"] = Field("on_demand", description="Capacity market.")
    spot_discount: float = Field(
        0.7, ge=0, lt=1, description="Fraction taken off compute prices when market = 'spot'."
    )
    allocation_mode: Literal["usage", "allocation"] = Field(
        "usage",
        description="Which cost finops/cost_usd reports: 'usage' (what was used) or "
        "'allocation' (what was reserved x wall time). Both are always logged.",
    )
    instance_hour_usd: float | None = Field(
        None, ge=0, description="Hourly price of a dedicated machine; allocation cost uses it when set."
    )
    allocated_cpus: float | None = Field(
        None, gt=0, description="Cores reserved for the run; default: the cores this process may use."
    )
    allocated_ram_gb: float | None = Field(
        None, gt=0, description="GB reserved for the run; default: the cgroup limit or the machine's RAM."
    )
    allocated_gpus: int | None = Field(
        None, ge=0, description="GPUs reserved for the run; default: the GPUs NVML sees."
    )

    # ----------------------------------------------------------------- prices
    def gpu_hour_price(self, gpu_model: str | None) -> float:
        """Hourly price of one GPU of ``gpu_model`` (longest matching key, else the default)."""
        if gpu_model:
            name = gpu_model.lower()
            matches = [k for k in self.gpu_hour_usd_by_model if k.lower() in name]
            if matches:
                return self.gpu_hour_usd_by_model[max(matches, key=len)]
        return self.gpu_hour_usd

    @property
    def compute_multiplier(self) -> float:
        return 1.0 - self.spot_discount if self.market == "spot" else 1.0

    # --------------------------------------------------------------- resolve
    @classmethod
    def resolve(
        cls,
        policy_prices: "PriceCatalog | None" = None,
        env: Mapping[str, str] | None = None,
        overrides: "Mapping[str, Any] | PriceCatalog | None" = None,
    ) -> "PriceCatalog":
        """Merge the policy file, ``MLFLOW_FINOPS_*`` variables and explicit overrides.

        Raises ``ValueError`` naming the variable or argument that holds a bad value.
        """
        env = os.environ if env is None else env
        layers: list[tuple[str, dict[str, Any]]] = []
        if policy_prices is not None:
            layers.append(("finops.toml [prices]", policy_prices.model_dump(exclude_unset=True)))
        env_layer: dict[str, Any] = {}
        for name in cls.model_fields:
            var = price_env_var(name)
            if var in env and name != "gpu_hour_usd_by_model":
                env_layer[name] = env[var]
        layers.append(("environment", env_layer))
        if isinstance(overrides, PriceCatalog):
            overrides = overrides.model_dump(exclude_unset=True)
        layers.append(("autolog(prices=...)", dict(overrides or {})))

        merged: dict[str, Any] = {}
        origin: dict[str, str] = {}
        for source, values in layers:
            for key, value in values.items():
                merged[key] = value
                origin[key] = price_env_var(key) if source == "environment" else source
        try:
            return cls.model_validate(merged)
        except ValidationError as exc:
            problems = []
            for err in exc.errors():
                key = str(err["loc"][0]) if err["loc"] else "?"
                where = origin.get(key, "prices")
                if err["type"] == "extra_forbidden":
                    problems.append(
                        f"{where}: unknown price key {key!r} "
                        f"(expected one of: {', '.join(cls.model_fields)})"
                    )
                else:
                    problems.append(f"{where}: {key}: {err['msg']} (got {err.get('input')!r})")
            raise ValueError("invalid prices: " + "; ".join(problems)) from None


def price_env_var(field_name: str) -> str:
    """Environment variable that overrides one ``PriceCatalog`` field."""
    return env_var("price_profile" if field_name == "profile" else field_name)


@dataclass(frozen=True)
class Allocation:
    """What the run holds, whether it uses it or not."""

    cpus: float
    ram_gb: float
    gpus: int = 0
    gpu_models: tuple[str, ...] = ()


@dataclass(frozen=True)
class CostBreakdown:
    """Cumulative figures for one run (or one segment of it); additive across segments."""

    wall_hours: float = 0.0
    cpu_core_hours: float = 0.0
    cpu_allocated_core_hours: float = 0.0
    ram_gb_hours: float = 0.0
    gpu_hours: float = 0.0
    energy_kwh: float = 0.0
    co2e_kg: float = 0.0
    usage_cost_usd: float = 0.0
    allocation_cost_usd: float = 0.0
    allocation_mode: str = "usage"
    peak_rss_gb: float = 0.0

    @property
    def cost_usd(self) -> float:
        return self.allocation_cost_usd if self.allocation_mode == "allocation" else self.usage_cost_usd

    @property
    def idle_cost_usd(self) -> float:
        """What was paid for and not used; never negative."""
        return max(self.allocation_cost_usd - self.usage_cost_usd, 0.0)

    @property
    def cpu_efficiency(self) -> float:
        if self.cpu_allocated_core_hours <= 0:
            return 0.0
        return self.cpu_core_hours / self.cpu_allocated_core_hours

    def __add__(self, other: "CostBreakdown") -> "CostBreakdown":
        values = {}
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if f.name == "allocation_mode":
                values[f.name] = other.allocation_mode
            elif f.name == "peak_rss_gb":
                values[f.name] = max(a, b)
            else:
                values[f.name] = a + b
        return CostBreakdown(**values)

    def __sub__(self, other: "CostBreakdown") -> "CostBreakdown":
        values = {}
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if f.name in ("allocation_mode", "peak_rss_gb"):
                values[f.name] = a
            else:
                values[f.name] = max(a - b, 0.0)
        return CostBreakdown(**values)

    def to_metrics(self) -> dict[str, float]:
        """The ``finops/*`` metrics, as logged to MLflow."""
        d = asdict(self)
        d.pop("allocation_mode")
        d.update(
            cost_usd=self.cost_usd,
            idle_cost_usd=self.idle_cost_usd,
            cpu_efficiency=self.cpu_efficiency,
        )
        return {METRIC_PREFIX + k: float(v) for k, v in d.items()}

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, float], allocation_mode: str = "usage") -> "CostBreakdown":
        """Rebuild from a run's logged ``finops/*`` metrics (to resume a run without double counting)."""
        kwargs: dict[str, Any] = {"allocation_mode": allocation_mode}
        for f in fields(cls):
            key = METRIC_PREFIX + f.name
            if f.name != "allocation_mode" and key in metrics:
                kwargs[f.name] = float(metrics[key])
        return cls(**kwargs)


def price_usage(
    prices: PriceCatalog,
    *,
    wall_s: float,
    cpu_s: float,
    ram_gb_s: float,
    gpu_s_by_model: Mapping[str, float],
    gpu_energy_j: float,
    allocation: Allocation,
    peak_rss_gb: float = 0.0,
) -> CostBreakdown:
    """Price one stretch of measured usage under both allocation modes."""
    h = 3600.0
    cpu_h, ram_gb_h, wall_h = cpu_s / h, ram_gb_s / h, wall_s / h
    gpu_h = sum(gpu_s_by_model.values()) / h
    energy_kwh = (
        cpu_h * prices.cpu_watts_per_core / 1000.0
        + ram_gb_h * prices.ram_watts_per_gb / 1000.0
        + gpu_energy_j / 3.6e6
    ) * prices.pue
    energy_cost = energy_kwh * prices.energy_usd_per_kwh
    m = prices.compute_multiplier

    gpu_cost = sum(s / h * prices.gpu_hour_price(model) for model, s in gpu_s_by_model.items())
    usage = m * (cpu_h * prices.cpu_core_hour_usd + ram_gb_h * prices.ram_gb_hour_usd + gpu_cost)

    if prices.instance_hour_usd is not None:
        alloc = m * prices.instance_hour_usd * wall_h
    else:
        gpu_alloc = sum(prices.gpu_hour_price(g) for g in allocation.gpu_models[: allocation.gpus])
        gpu_alloc += prices.gpu_hour_usd * max(allocation.gpus - len(allocation.gpu_models), 0)
        alloc = m * wall_h * (
            allocation.cpus * prices.cpu_core_hour_usd
            + allocation.ram_gb * prices.ram_gb_hour_usd
            + gpu_alloc
        )
    return CostBreakdown(
        wall_hours=wall_h,
        cpu_core_hours=cpu_h,
        cpu_allocated_core_hours=allocation.cpus * wall_h,
        ram_gb_hours=ram_gb_h,
        gpu_hours=gpu_h,
        energy_kwh=energy_kwh,
        co2e_kg=energy_kwh * prices.carbon_g_per_kwh / 1000.0,
        usage_cost_usd=usage + energy_cost,
        allocation_cost_usd=alloc + energy_cost,
        allocation_mode=prices.allocation_mode,
        peak_rss_gb=peak_rss_gb,
    )
