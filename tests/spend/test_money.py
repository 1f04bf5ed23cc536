"""Money as people read it: one format for every figure shown (tables, warnings, chart labels)."""

from __future__ import annotations

import math

import pytest

from mlflow_finops.money import format_usd


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "$0.00"),
        (0.0, "$0.00"),
        (-0.0, "$0.00"),
        (1, "$1.00"),
        (12.4, "$12.40"),
        (1234.5, "$1,234.50"),
        (1_000_000, "$1,000,000.00"),
        (0.1, "$0.10"),
        (0.5, "$0.50"),
        (0.0123, "$0.012"),
        (0.00052, "$0.00052"),
        (0.0000342, "$0.000034"),
        (0.996, "$1.00"),  # rounds up to a dollar: shown as one
        (0.0999, "$0.10"),  # rounds up to the next power of ten: still two digits, not $0.100
        (0.00999, "$0.010"),
        (-12.4, "-$12.40"),
        (-0.00052, "-$0.00052"),
        (math.inf, "$inf"),
        (-math.inf, "-$inf"),
    ],
)
def test_format_usd(value: float, text: str) -> None:
    assert format_usd(value) == text


def test_a_missing_figure_says_so() -> None:
    assert format_usd(None) == "-"
    assert format_usd(math.nan) == "-"
    assert format_usd(None, none="untracked") == "untracked"
    assert format_usd(math.nan, none="untracked") == "untracked"


@pytest.mark.parametrize("exponent", range(-9, 10))
@pytest.mark.parametrize("mantissa", [1.0, 1.05, 2.5, 5.2, 9.96, 9.999])
def test_never_scientific_notation_and_two_significant_digits_below_a_dollar(exponent: int, mantissa: float) -> None:
    value = mantissa * 10.0**exponent
    for v in (value, -value):
        text = format_usd(v)
        assert "e" not in text.lower(), text
        assert text.startswith("-$" if v < 0 else "$"), text
        shown = float(text.lstrip("-$").replace(",", ""))
        if abs(v) >= 1:
            assert text.split(".")[1] == f"{abs(v):.2f}".split(".")[1]  # cents
            assert shown == pytest.approx(abs(v), abs=0.005)
        else:
            digits = text.split(".")[1].lstrip("0")
            assert len(text.split(".")[1]) >= 2
            assert len(digits) <= 2 or shown == 1.0, text  # two significant digits
            assert shown == pytest.approx(abs(v), rel=0.05, abs=0.005), text
