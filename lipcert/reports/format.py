"""Small formatting helpers shared by the reports."""

from __future__ import annotations

import math


def shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape) if shape else "-"


def bound_text(value: float) -> str:
    """A bound for display, rounded up so the text never understates it.

    Six significant digits, unless the value lies just above a six-digit number (less than
    5 % of a unit of the last digit above it: 1.0000000221), where rounding up would
    suggest an excess that is not there (1.00001): then more digits (up to 15), until the
    excess shows (1.0000001). The safe rounding of the computation leaves bounds a few ulps
    above round numbers (1 + 2e-16 for a chain of exact ones): excesses below 1e-12 relative
    are not rounded up, so such a bound reads 1.00000. JSON output carries every digit.
    """
    if not math.isfinite(value):
        return str(value)
    if value == 0:
        return "0"
    exponent = math.floor(math.log10(abs(value)))
    target = value * (1 - 1e-12)
    for digits in range(6, 16):
        scale = 10.0 ** (digits - 1 - exponent)
        floor = math.floor(target * scale)
        if floor == math.ceil(target * scale) or (target * scale - floor) >= 0.05:
            break
    rounded = math.ceil(target * scale) / scale
    if abs(rounded) >= 10.0 ** (exponent + 1):  # 0.9999996 -> 1.00000, not 1.000000
        exponent += 1
    decimals = max(digits - 1 - exponent, 0)
    if -4 <= exponent < 6:
        return f"{rounded:.{decimals}f}"
    return f"{rounded:.{digits - 1}e}"
