"""Small formatting helpers shared by the reports."""

from __future__ import annotations

import math


def shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape) if shape else "-"


def bound_text(value: float) -> str:
    """A bound for display: rounded up, never down, so the text never understates it."""
    if not math.isfinite(value):
        return str(value)
    if value == 0:
        return "0"
    digits = 6
    exponent = math.floor(math.log10(abs(value)))
    scale = 10 ** (digits - 1 - exponent)
    rounded = math.ceil(value * scale) / scale
    return (
        f"{rounded:.{max(digits - 1 - exponent, 0)}f}" if -4 <= exponent < 6 else f"{rounded:.5e}"
    )
