"""Small formatting helpers shared by the reports."""

from __future__ import annotations

import decimal
import math
from fractions import Fraction
from typing import Any


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
    if abs(exponent) > 290:  # 10 ** (digits - 1 - exponent) would overflow (1e-323: a bound
        # of a model whose output reads only padding): six digits rounded up, exactly
        with decimal.localcontext() as context:
            context.prec, context.rounding = 6, decimal.ROUND_CEILING
            return f"{+decimal.Decimal(value):.5e}"
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


# Measures (accuracies, radii, the MCR) are shown rounded DOWN and bounds of an error (the
# rounding allowance, the MCR gap) rounded UP, so that no shown number claims more than was
# computed: 29,999 of 30,000 certified is 0.9999, not 1.0000. A value within 1e-12 relative
# of a shown number on the wrong side (29 / 100 is the float 0.28999999999999998) reads as
# that number: the floats these come from carry such rounding. Exact rational arithmetic.
_SLACK = Fraction(1, 10**12)


def lower_text(value: float, decimals: int) -> str:
    """`value` rounded down (toward -inf) to `decimals` decimals; from 1e9 on, to six
    significant digits (a radius of a model whose bound is near 0 has 300 digits)."""
    if not math.isfinite(value):
        return str(value)
    if abs(value) >= 1e9:
        return significant_text(value, 6, up=False)
    exact = Fraction(value)
    units = math.floor((exact + abs(exact) * _SLACK) * 10**decimals)
    return _decimal_text(units, decimals)


def significant_text(value: float, digits: int, *, up: bool) -> str:
    """`value` rounded to `digits` significant digits, up (toward +inf) or down."""
    if not math.isfinite(value) or value == 0:
        return str(value) if value != 0 else "0"
    exact = Fraction(value)
    exponent = math.floor(math.log10(abs(value)))
    while Fraction(10) ** exponent > abs(exact):  # log10 of a float may be off by one
        exponent -= 1
    while Fraction(10) ** (exponent + 1) <= abs(exact):
        exponent += 1
    decimals = digits - 1 - exponent
    shifted = exact * Fraction(10) ** decimals
    slack = abs(shifted) * _SLACK
    units = math.ceil(shifted - slack) if up else math.floor(shifted + slack)
    if abs(units) >= 10**digits:  # 0.9999999 up: 1.00, not 1.000
        units, decimals, exponent = units // 10, decimals - 1, exponent + 1
    if -4 <= exponent < digits:
        return _decimal_text(units, decimals)  # decimals >= 0 here
    mantissa = str(abs(units))
    sign = "-" if units < 0 else ""
    fraction = f".{mantissa[1:]}" if len(mantissa) > 1 else ""
    return f"{sign}{mantissa[0]}{fraction}e{exponent:+03d}"


def _decimal_text(units: int, decimals: int) -> str:
    """units / 10**decimals written exactly with `decimals` decimals."""
    sign = "-" if units < 0 else ""
    digits = str(abs(units)).rjust(decimals + 1, "0")
    whole, fraction = digits[: len(digits) - decimals], digits[len(digits) - decimals :]
    return f"{sign}{whole}.{fraction}" if decimals else f"{sign}{whole}"


def json_numbers(value: Any) -> Any:
    """`value` (nested dicts, lists and tuples) with every float that is not finite made
    None, for JSON (null): an infinite radius, of a model whose bound is 0, or an MCR of
    infinite radii would else stop the JSON writer."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_numbers(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_numbers(item) for item in value]
    return value
