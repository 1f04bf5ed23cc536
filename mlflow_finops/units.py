"""Energy and carbon as a person reads them, beside :mod:`~mlflow_finops.money`.

Two significant digits in the unit that keeps the number between 1 and 1000:
``41 mWh``, ``3.2 kWh``, ``1.2 MWh``; ``19 mg CO2e``, ``19 g CO2e``, ``4.1 t CO2e``;
never scientific notation. Metrics keep full precision (kWh, kg): this is for text only.
"""

from __future__ import annotations

import math

__all__ = ["format_energy", "format_co2e"]

# (size of the unit in the metric's own unit, its name), largest first
ENERGY_UNITS = ((1e3, "MWh"), (1.0, "kWh"), (1e-3, "Wh"), (1e-6, "mWh"), (1e-9, "µWh"))
CO2E_UNITS = ((1e3, "t CO2e"), (1.0, "kg CO2e"), (1e-3, "g CO2e"), (1e-6, "mg CO2e"))


def _scaled(value: float | None, units: tuple[tuple[float, str], ...], none: str) -> str:
    if value is None:
        return none
    v = float(value)
    if math.isnan(v):
        return none
    smallest = units[-1][1]
    if math.isinf(v):
        return f"{'-' if v < 0 else ''}inf {units[1][1]}"
    if v == 0:
        return f"0 {units[2][1]}"
    sign = "-" if v < 0 else ""
    rounded = float(f"{abs(v):.1e}")  # two significant digits first: 999.6 mWh is 1.0 Wh
    for size, name in units:
        if rounded >= size:
            x = rounded / size
            return f"{sign}{x:.1f} {name}" if x < 10 else f"{sign}{x:,.0f} {name}"
    x = float(f"{rounded / units[-1][0]:.1e}")  # below the smallest unit: decimals, as money does
    return f"{sign}{x:.{1 - math.floor(math.log10(x))}f} {smallest}"


def format_energy(kwh: float | None, *, none: str = "-") -> str:
    """``kwh`` kilowatt-hours as text (``41 mWh``, ``3.2 kWh``); ``none`` for a missing figure."""
    return _scaled(kwh, ENERGY_UNITS, none)


def format_co2e(kg: float | None, *, none: str = "-") -> str:
    """``kg`` kilograms of CO2e as text (``19 g CO2e``, ``4.1 t CO2e``); ``none`` for a missing figure."""
    return _scaled(kg, CO2E_UNITS, none)
