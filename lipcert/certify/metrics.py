"""Certification metrics: pure functions of labels, predictions and radii.

- clean accuracy: prediction == label;
- certified accuracy at eps: correct and radius > eps;
- mean certifiable robustness (MCR, Béthune et al. 2022): the mean signed radius, positive
  when the prediction is right and negative when it is wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from lipcert.certify.radii import Certificates, Status


@dataclass(frozen=True)
class Eps:
    """A radius threshold, with its label as the user typed it (e.g. "36/255")."""

    label: str
    value: float


@dataclass(frozen=True)
class ClassRow:
    label: int
    name: str | None
    n: int
    accuracy: float
    certified_accuracy: tuple[float, ...]
    mean_radius: float
    mcr: float


@dataclass(frozen=True)
class Summary:
    n: int
    accuracy: float
    certified_accuracy: tuple[tuple[Eps, float], ...]
    mcr: float
    mean_radius: float
    median_radius: float
    ties: int
    non_finite: int
    within_allowance: int
    per_class: tuple[ClassRow, ...]


def signed_radius(certificates: Certificates, labels: np.ndarray) -> np.ndarray:
    correct = certificates.prediction == labels
    return np.where(correct, certificates.radius, -certificates.radius)


def certified_accuracy(correct: np.ndarray, radius: np.ndarray, eps: float) -> float:
    """Fraction of samples that are correct with a certified radius strictly above eps."""
    if len(correct) == 0:
        return float("nan")
    return float(np.mean(correct & (radius > eps)))


def summarise(
    certificates: Certificates,
    labels: np.ndarray,
    eps_list: list[Eps],
    class_names: tuple[str, ...] | None = None,
) -> Summary:
    labels = np.asarray(labels)
    correct = certificates.prediction == labels
    radius = certificates.radius
    signed = np.where(correct, radius, -radius)
    rows = []
    for label in np.unique(labels):
        mask = labels == label
        rows.append(
            ClassRow(
                label=int(label),
                name=class_names[int(label)]
                if class_names and int(label) < len(class_names)
                else None,
                n=int(mask.sum()),
                accuracy=float(np.mean(correct[mask])),
                certified_accuracy=tuple(
                    certified_accuracy(correct[mask], radius[mask], e.value) for e in eps_list
                ),
                mean_radius=float(np.mean(radius[mask])),
                mcr=float(np.mean(signed[mask])),
            )
        )
    status = certificates.status
    return Summary(
        n=len(labels),
        accuracy=float(np.mean(correct)),
        certified_accuracy=tuple(
            (e, certified_accuracy(correct, radius, e.value)) for e in eps_list
        ),
        mcr=float(np.mean(signed)),
        mean_radius=float(np.mean(radius)),
        median_radius=float(np.median(radius)),
        ties=int(np.sum(status == Status.TIE)),
        non_finite=int(np.sum(status == Status.NON_FINITE)),
        within_allowance=int(np.sum(status == Status.WITHIN_ALLOWANCE)),
        per_class=tuple(rows),
    )


_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def parse_number(text: str) -> float | None:
    """A plain decimal number ('0.5', '1e-3'); None for anything else ('1_0', 'inf', 'nan')."""
    text = text.strip()
    return float(text) if _NUMBER.fullmatch(text) else None


def _round_up(pieces: list[str]) -> float:
    """The smallest float >= the exact value of a typed number or fraction ('36/255', '0.1'):
    "radius > eps" then proves the radius exceeds the eps the user typed, not a value half an
    ulp below it. Overflow gives inf (refused by the caller)."""
    from fractions import Fraction

    exact = Fraction(pieces[0]) / Fraction(pieces[1]) if len(pieces) == 2 else Fraction(pieces[0])
    try:
        value = float(exact)
    except OverflowError:
        return float("inf")
    return float(np.nextafter(value, np.inf)) if Fraction(value) < exact else value


def parse_eps_list(text: str, *, what: str = "--eps") -> list[Eps]:
    """'36/255,72/255,1' -> thresholds; each a number or a fraction a/b, finite, > 0, distinct."""
    from lipcert.errors import UsageError

    values: list[Eps] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        pieces = [parse_number(piece) for piece in part.split("/", 1)]
        if any(piece is None for piece in pieces):
            raise UsageError(
                f"expected {what} values like 36/255 or 0.5 (finite decimal numbers) but got "
                f"{part!r}"
            )
        numbers = [float(piece) for piece in pieces if piece is not None]
        if len(numbers) == 2 and numbers[1] == 0:
            raise UsageError(f"expected {what} values with a non-zero denominator but got {part!r}")
        value = _round_up([piece.strip() for piece in part.split("/", 1)])
        if not np.isfinite(value):
            raise UsageError(f"expected finite {what} values but got {part!r}")
        if value <= 0:
            raise UsageError(f"expected {what} values > 0 but got {part!r}")
        same = next((e for e in values if e.value == value), None)
        if same is not None:
            raise UsageError(
                f"expected distinct {what} values but got {same.label!r} and {part!r}, both "
                f"{value:.6g}"
            )
        values.append(Eps(part, value))
    if not values:
        raise UsageError(f"expected at least one {what} value but got {text!r}")
    return values
