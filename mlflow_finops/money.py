"""Money as a person reads it: one format everywhere a figure is shown.

``$12.40`` from a dollar up; below it, two significant digits and never fewer
than two decimals (``$0.10``, ``$0.012``, ``$0.00052``, ``$0.000034``); never
scientific notation. Metrics keep full precision: this is for text only.
"""

from __future__ import annotations

import math

__all__ = ["format_usd"]


def format_usd(value: float | None, *, none: str = "-") -> str:
    """``value`` dollars as text; ``none`` for a missing figure (e.g. ``"untracked"``)."""
    if value is None:
        return none
    v = float(value)
    if math.isnan(v):
        return none
    if math.isinf(v):
        return "-$inf" if v < 0 else "$inf"
    sign = "-" if v < 0 else ""
    a = abs(v)
    if a == 0:
        return "$0.00"
    if a >= 1:
        return f"{sign}${a:,.2f}"
    # two significant digits, at least two decimals: 0.1 -> 0.10, 0.00052 -> 0.00052.
    # Round first, so a value that rounds up to the next power of ten keeps two digits
    # (0.00999 -> 0.010, not 0.0100) and one that reaches a dollar is shown as one (0.996 -> 1.00).
    rounded = float(f"{a:.1e}")
    if rounded >= 1:
        return f"{sign}${rounded:,.2f}"
    decimals = max(2, 1 - math.floor(math.log10(rounded)))
    return f"{sign}${rounded:.{decimals}f}"
