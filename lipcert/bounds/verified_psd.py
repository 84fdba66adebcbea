"""A guaranteed lower bound of the smallest eigenvalue of a symmetric float64 matrix.

The method is S. M. Rump's verification of positive definiteness ("Verification of positive
definiteness", BIT Numerical Mathematics 46 (2006) 433-452, section 2): a floating-point
Cholesky factorisation that runs to completion proves a bound, by the backward error theorem
of Demmel (1989) in the form of Higham, *Accuracy and Stability of Numerical Algorithms*,
2nd ed., Theorem 10.3:

    if Cholesky runs to completion on a symmetric B in floating point (u the unit roundoff,
    no underflow), the computed factor R satisfies R^T R = B + dB with
    |dB| <= gamma_(n+1) |R^T| |R|,   gamma_k = k u / (1 - k u),

whatever the order in which its inner products are summed (so for LAPACK's blocked dpotrf
with ordinary BLAS too). Then ||dB||_2 <= gamma ||R||_F^2 and ||R||_F^2 = tr(B + dB) <=
tr(B) + gamma ||R||_F^2, so ||dB||_2 <= theta = gamma tr(B) / (1 - gamma), and
lambda_min(B) >= lambda_min(R^T R) - theta >= -theta.

Gradual underflow adds at most eta = 2^-1074 absolute to each product and quotient: at most
(n + |r_jj|) eta per entry of dB, r_jj^2 <= b_jj (1 + gamma) / (1 - gamma); in norm at most
n (n + 2 + max b_jj) eta, which is added to theta.

To bound lambda_min(S) for the symmetric S given, B = fl(S - t I) is factored for a shift t
(of either sign) chosen from an estimate: B = S - t I + D with D diagonal, |D_jj| <= u |b_jj|,
so lambda_min(S) >= t + lambda_min(B) - max |D_jj| >= t - theta - u max |b_jj|. The estimate
(LAPACK's eigenvalues) only chooses t; a wrong estimate makes the factorisation fail or the
bound poorer, never wrong.
"""

from __future__ import annotations

import math

import numpy as np

_U = 2.0**-53
_ETA = 2.0**-1074


def _gamma(k: int) -> float:
    return k * _U / (1 - k * _U)


def _lower_from_cholesky(symmetric: np.ndarray, shift: float) -> float | None:
    """lambda_min(symmetric) >= the value returned, when Cholesky of fl(S - shift I) runs to
    completion; None when it does not."""
    n = symmetric.shape[0]
    shifted = symmetric - shift * np.eye(n)
    diagonal = np.diag(shifted)
    if not np.all(np.isfinite(shifted)) or np.any(diagonal <= 0):
        return None
    try:
        factor = np.linalg.cholesky(shifted)
    except np.linalg.LinAlgError:
        return None
    if not np.all(np.isfinite(factor)) or np.any(np.diag(factor) <= 0):
        return None
    gamma = _gamma(n + 1)
    # tr(B) and max b_jj in float64, rounded up by a relative (n + 2) u.
    trace = float(np.sum(diagonal)) * (1 + (n + 2) * 2 * _U)
    largest = float(np.max(diagonal))
    theta = gamma * trace / (1 - gamma) + n * (n + 2 + largest) * _ETA
    drop = theta + _U * largest
    return (shift - drop * (1 + 1e-6)) - abs(shift) * 4 * _U


def eigenvalue_lower_bound(matrix: np.ndarray) -> float | None:
    """A guaranteed lower bound of lambda_min of the symmetric matrix with `matrix`'s lower
    triangle (its entries taken as exact), or None when no shift tried lets Cholesky run.

    Tries shifts just below the estimated smallest eigenvalue, moving further down by the
    Cholesky error bound each time it fails.
    """
    lower = np.tril(np.asarray(matrix, dtype=np.float64))
    symmetric = lower + np.tril(lower, -1).T
    n = symmetric.shape[0]
    if n == 0 or not np.all(np.isfinite(symmetric)):
        return None
    estimate = float(np.linalg.eigvalsh(symmetric)[0])
    scale = float(np.max(np.abs(np.diag(symmetric)))) + abs(estimate)
    # what Cholesky's own error costs, at the size of the diagonal
    step = _gamma(n + 1) * max(scale, float(np.abs(symmetric).max())) * n * 4
    for attempt in range(6):
        gap = step * 4.0**attempt + abs(estimate) * 1e-9
        result = _lower_from_cholesky(symmetric, estimate - gap)
        if result is not None:
            return result if math.isfinite(result) else None
    return None


__all__ = ["eigenvalue_lower_bound"]
