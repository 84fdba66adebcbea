"""Certified radii from logits: pure functions on arrays.

For a prediction p and every other class j, no input within (f_p - f_j - a) / K_pj of x can
make f_j overtake f_p, where K_pj bounds the Lipschitz constant of f_p - f_j and `a` is the
floating-point allowance of that margin. The radius is the smallest of these over j. One
logit: r = (|f| - a) / L. Ties, NaN and Inf are never certified (radius 0).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np

from lipcert.bounds.spec import CertificateSpec
from lipcert.evaluators.base import HeadError


class Method(enum.Enum):
    """Which Lipschitz bound the margins are divided by."""

    PAIRWISE = "pairwise"  # K_ij = ||w_i - w_j|| * L_body from a linear head
    GLOBAL = "global"  # sqrt(2) * L for every pair (top-2 margin)
    BINARY = "binary"  # one logit: |f| / L


class Status(enum.IntEnum):
    """Why a sample has the radius it has."""

    CERTIFIED = 0  # positive radius
    WITHIN_ALLOWANCE = 1  # margin positive but not above the floating-point allowance
    TIE = 2  # the top logits are equal
    NON_FINITE = 3  # a logit is NaN or infinite


@dataclass(frozen=True)
class Certificates:
    """Per-sample certificates (arrays of length N)."""

    prediction: np.ndarray  # class index, -1 when the logits are not finite
    runner_up: np.ndarray  # the class that bounds the radius, -1 when none
    margin: np.ndarray  # f_pred - f_runner_up (|f| for one logit), NaN when not finite
    radius: np.ndarray  # certified L2 radius, >= 0, in the model input's space
    status: np.ndarray  # Status codes
    method: Method


def choose_method(spec: CertificateSpec, requested: str) -> Method:
    """auto: pairwise when the spec has a head, else global; binary for one logit."""
    from lipcert.errors import UsageError

    if spec.num_logits == 1:
        if requested not in ("auto", "binary"):
            raise UsageError(f"the model has one logit: certificate {requested!r} does not apply")
        return Method.BINARY
    if requested == "auto":
        return Method.PAIRWISE if spec.pairwise_bounds is not None else Method.GLOBAL
    if requested == "pairwise" and spec.pairwise_bounds is None:
        raise UsageError(
            "certificate pairwise needs a linear head at the end of the model; none was found"
        )
    if requested not in ("pairwise", "global"):
        raise UsageError(f"expected certificate auto, pairwise or global but got {requested!r}")
    return Method(requested)


def certify_logits(
    logits: np.ndarray,
    spec: CertificateSpec,
    method: Method,
    allowance: np.ndarray,
    head: HeadError | None = None,
) -> Certificates:
    """Radii of a batch of logits (N, K); `allowance` (N,) bounds each logit vector's error.

    The allowance E bounds ||f_computed(x) - f(x)||_2, so a margin f_i - f_j is off by at
    most sqrt(2) E (one logit: E). With `head`, each margin's own bound is used where it is
    smaller (`HeadError.margin_allowance`).
    """
    logits = np.asarray(logits, dtype=np.float64).reshape(len(logits), -1)
    allowance = np.asarray(allowance, dtype=np.float64)
    if method is Method.BINARY:
        return _binary(logits[:, 0], spec, allowance)
    return _multiclass(logits, spec, method, allowance, head)


_EPS = float(np.finfo(np.float64).eps)


def _round_down(values: np.ndarray) -> np.ndarray:
    """A quotient computed by one rounded division, made a lower bound: two ulps down."""
    return np.nextafter(np.nextafter(values, -np.inf), -np.inf)


def _margin_lower(margins: np.ndarray, allowance: np.ndarray) -> np.ndarray:
    """margin - allowance, decreased by the rounding of computing them in float64.

    The margin (a difference of logits) and the subtraction are rounded once each, each off
    by at most u times the larger operand: 2 eps (|margin| + allowance) covers both, also
    when the two nearly cancel.
    """
    return margins - allowance - 2 * _EPS * (np.abs(margins) + allowance)


def _binary(scores: np.ndarray, spec: CertificateSpec, allowance: np.ndarray) -> Certificates:
    finite = np.isfinite(scores)
    prediction = np.where(finite, (scores > 0).astype(np.int64), -1)
    margin = np.where(finite, np.abs(scores), np.nan)
    radius = np.zeros(len(scores))
    numerator = _margin_lower(np.where(finite, margin, 0.0), allowance)
    usable = finite & (numerator > 0)
    radius[usable] = _round_down(numerator[usable] / spec.logit_bounds[0])
    status = np.full(len(scores), Status.CERTIFIED, dtype=np.int64)
    status[finite & ~usable] = Status.WITHIN_ALLOWANCE
    status[finite & (scores == 0)] = Status.TIE
    status[~finite] = Status.NON_FINITE
    radius = np.maximum(radius, 0.0)
    runner_up = np.where(finite, 1 - prediction, -1)
    return Certificates(prediction, runner_up, margin, radius, status, Method.BINARY)


def _multiclass(
    logits: np.ndarray,
    spec: CertificateSpec,
    method: Method,
    allowance: np.ndarray,
    head: HeadError | None = None,
) -> Certificates:
    n, k = logits.shape
    finite = np.all(np.isfinite(logits), axis=1)
    safe = np.where(finite[:, None], logits, 0.0)
    prediction = np.argmax(safe, axis=1)
    top = safe[np.arange(n), prediction]
    margins = top[:, None] - safe  # (N, K), >= 0
    pair_allowance = (math.sqrt(2.0) * (1.0 + 1e-15) * allowance)[:, None]  # (N, 1)
    if method is Method.PAIRWISE:
        assert spec.pairwise_bounds is not None  # choose_method guarantees it
        bounds = spec.pairwise_bounds[prediction]  # (N, K)
    else:
        bounds = np.full((n, k), spec.global_pair_bound)
    if head is not None and head.differences.shape == (k, k):
        pair_allowance = np.minimum(pair_allowance, head.margin_allowance(prediction))
    numerators = _margin_lower(margins, pair_allowance)
    with np.errstate(over="ignore"):  # beyond the largest float: inf, rounded down below
        ratios = numerators / np.where(bounds > 0, bounds, np.inf)
    ratios[np.arange(n), prediction] = np.inf
    runner_up = np.argmin(ratios, axis=1)
    radius = _round_down(ratios[np.arange(n), runner_up])
    others = margins.copy()
    others[np.arange(n), prediction] = np.inf
    tie = finite & (np.min(others, axis=1) == 0)
    status = np.full(n, Status.CERTIFIED, dtype=np.int64)
    status[finite & ~(radius > 0)] = Status.WITHIN_ALLOWANCE  # NaN (a NaN allowance) too
    status[tie] = Status.TIE
    status[~finite] = Status.NON_FINITE
    radius = np.where(status == Status.CERTIFIED, np.maximum(radius, 0.0), 0.0)
    margin = np.where(finite, margins[np.arange(n), runner_up], np.nan)
    return Certificates(
        prediction=np.where(finite, prediction, -1),
        runner_up=np.where(finite, runner_up, -1),
        margin=margin,
        radius=radius,
        status=status,
        method=method,
    )
