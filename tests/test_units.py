"""Energy and carbon as text: the unit that keeps two significant digits between 1 and 1000."""

from __future__ import annotations

import math

import pytest

from mlflow_finops.units import format_co2e, format_energy


@pytest.mark.parametrize("kwh, text", [
    (4.09e-05, "41 mWh"),          # what the FinOps page showed as 4.09e-05 kWh
    (0.0032, "3.2 Wh"),
    (3.2, "3.2 kWh"),
    (12.0, "12 kWh"),
    (150.0, "150 kWh"),
    (1234.5, "1.2 MWh"),
    (2e6, "2,000 MWh"),
    (0.9996, "1.0 kWh"),           # rounds up into the next unit, not "1000 Wh"
    (9.96e-7, "1.0 mWh"),
    (1e-6, "1.0 mWh"),             # exactly one of the unit: that unit
    (9.4e-7, "940 µWh"),
    (1e-12, "0.0010 µWh"),         # below the smallest unit: decimals, as money, never an exponent
    (0.0, "0 Wh"),
    (-0.5, "-500 Wh"),
    (None, "-"),
    (math.nan, "-"),
    (math.inf, "inf kWh"),
])
def test_energy_reads_like_energy(kwh: float | None, text: str) -> None:
    assert format_energy(kwh) == text


@pytest.mark.parametrize("kg, text", [
    (1.94e-05, "19 mg CO2e"),      # what the page showed as 1.94e-05 kg CO2e
    (0.019, "19 g CO2e"),
    (0.5, "500 g CO2e"),
    (2.0, "2.0 kg CO2e"),
    (4100.0, "4.1 t CO2e"),
    (0.0, "0 g CO2e"),
    (None, "untracked"),
])
def test_carbon_reads_like_carbon(kg: float | None, text: str) -> None:
    assert format_co2e(kg, none="untracked" if kg is None else "-") == text


@pytest.mark.parametrize("value", [10 ** (k / 7) for k in range(-90, 50)])
def test_never_an_exponent_and_never_more_than_three_digits_before_the_unit(value: float) -> None:
    for text in (format_energy(value), format_co2e(value)):
        number = text.split(" ")[0].replace(",", "")
        assert "e" not in number.lower(), text
        assert float(number) < 1000 or text.endswith(("MWh", "t CO2e")), text
