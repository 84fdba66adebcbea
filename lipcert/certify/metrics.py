"""Certification metrics: pure functions of labels, predictions and radii.

- clean accuracy: prediction == label;
- certified accuracy at eps: correct and radius > eps;
- mean certifiable robustness (MCR, Béthune et al. 2022): the mean signed radius, positive
  when the prediction is right and negative when it is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

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
    with np.errstate(over="ignore"):  # means of radii near the largest float: inf
        return _summarise(certificates, np.asarray(labels), eps_list, class_names)


def _summarise(
    certificates: Certificates,
    labels: np.ndarray,
    eps_list: list[Eps],
    class_names: tuple[str, ...] | None,
) -> Summary:
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


def eps_from_fraction(value: Fraction | int, label: str | None = None) -> Eps:
    """The threshold of an exact rational radius (36/255 as Fraction(36, 255)): its value is
    the smallest float >= the exact number, so that "radius > eps" proves the radius exceeds
    the number given, not a float half an ulp below it. inf when it overflows (callers refuse
    it). The label defaults to the fraction in lowest terms ("12/85" for 36/255, "1")."""
    exact = Fraction(value)
    try:
        rounded = float(exact)
    except OverflowError:
        rounded = float("inf")
    else:
        if Fraction(rounded) < exact:
            rounded = float(np.nextafter(rounded, np.inf))
    return Eps(str(exact) if label is None else label, rounded)
