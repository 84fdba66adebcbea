"""CI gates: fail when a measured value falls below its threshold."""

from __future__ import annotations

import decimal
import math
from dataclasses import dataclass

from lipcert.certify.metrics import Eps, Summary
from lipcert.errors import UsageError

# Gates whose thresholds are fractions of the samples (MCR is a radius, in input units).
FRACTION_GATES = ("min_certified_accuracy", "min_accuracy")


def check_threshold(value: float, *, fraction: bool, origin: str) -> float:
    """A gate threshold as given, refused when NaN or infinite, or not a fraction in [0, 1].

    `origin` names where the value comes from (`--min-accuracy`, or a key and its file).
    A percentage (70 for 0.70) is refused with the fraction it probably meant.
    """
    if isinstance(value, bool):
        raise UsageError(f"expected a number for {origin} but got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise UsageError(f"expected a finite number for {origin} but got {value!r}")
    if fraction and not 0.0 <= value <= 1.0:
        hint = f"; did you mean {value / 100:.2f}?" if 1.0 < value <= 100.0 else ""
        raise UsageError(f"expected {origin} to be a fraction in [0, 1] but got {value:g}{hint}")
    return value


@dataclass(frozen=True)
class Gate:
    name: str
    value: float
    threshold: float

    @property
    def passed(self) -> bool:
        return self.value >= self.threshold

    def message(self) -> str:
        """The value rounded down (never shown above what was measured: 0.69999996 is
        0.699999, not 0.7), the threshold as given (every digit)."""
        relation = ">=" if self.passed else "<"
        value = _down(self.value)
        if self.passed and float(value) < self.threshold:  # 0.70000004 >= 0.70000001
            value = repr(self.value)
        return f"{self.name} is {value} {relation} {self.threshold_text} required"

    @property
    def threshold_text(self) -> str:
        """The threshold with every digit it has (0.9999995 is not "1")."""
        short = f"{self.threshold:g}"
        return short if float(short) == self.threshold else repr(self.threshold)


def _down(value: float) -> str:
    """Six significant digits, rounded toward -inf; a value within 1e-12 relative below a
    six-digit number (0.7 is the float 0.69999999999999996) reads as that number."""
    if not math.isfinite(value):
        return repr(value)
    exact = decimal.Decimal(value)
    context = decimal.Context(prec=6, rounding=decimal.ROUND_FLOOR)
    return format(context.plus(exact + abs(exact) * decimal.Decimal("1e-12")).normalize(), "g")


def evaluate_gates(
    summary: Summary,
    *,
    gate_eps: Eps | None,
    min_certified_accuracy: float | None,
    min_accuracy: float | None,
    min_mcr: float | None,
    mcr_lower: float | None = None,
) -> list[Gate]:
    """The gates asked for. With `mcr_lower`, a guaranteed lower bound of the exact
    function's MCR (`lipcert.certify.mcr_gap.mcr_lower_bound`), the MCR gate compares that
    (the reported MCR can lie above the exact function's where a prediction is wrong)."""

    gates = []
    if min_certified_accuracy is not None:
        if gate_eps is None:
            raise ValueError("a certified-accuracy gate needs an eps")
        value = next(v for e, v in summary.certified_accuracy if e.value == gate_eps.value)
        gates.append(
            Gate(f"certified accuracy at eps={gate_eps.label}", value, min_certified_accuracy)
        )
    if min_accuracy is not None:
        gates.append(Gate("clean accuracy", summary.accuracy, min_accuracy))
    if min_mcr is not None:
        if mcr_lower is None:
            gates.append(Gate("mean certifiable robustness (MCR)", summary.mcr, min_mcr))
        else:
            # the smaller of the two; NaN (no samples) stays NaN and fails
            value = summary.mcr if summary.mcr <= mcr_lower else mcr_lower
            name = "mean certifiable robustness (MCR), guaranteed lower bound"
            gates.append(Gate(name, value, min_mcr))
    return gates
