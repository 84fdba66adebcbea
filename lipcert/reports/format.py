"""Small formatting helpers shared by the reports."""

from __future__ import annotations

import math


def shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape) if shape else "-"


def bound_text(value: float) -> str:
    """A bound for display, to 6 digits, rounded up so the text does not understate it.

    The safe rounding of the computation leaves bounds a few ulps above round numbers
    (1 + 2e-16 for a chain of exact ones): excesses below 1e-12 relative are not rounded up,
    so such a bound reads 1.00000, not 1.00001. JSON output carries every digit.
    """
    if not math.isfinite(value):
        return str(value)
    if value == 0:
        return "0"
    digits = 6
    exponent = math.floor(math.log10(abs(value)))
    scale = 10 ** (digits - 1 - exponent)
    rounded = math.ceil(value * (1 - 1e-12) * scale) / scale
    return (
        f"{rounded:.{max(digits - 1 - exponent, 0)}f}" if -4 <= exponent < 6 else f"{rounded:.5e}"
    )
