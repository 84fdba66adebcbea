"""Arithmetic that rounds the safe way for upper bounds.

Every Lipschitz bound lipcert reports is computed in float64 and then rounded up, so that
the floating-point error of the computation itself cannot make the bound too small. Rules
round through these helpers only: one place says how each operation is made safe.
"""

from __future__ import annotations

import math

import numpy as np

FLOAT64_EPS = float(np.finfo(np.float64).eps)
# Unit roundoffs of the arithmetic a model runs in.
FLOAT32_UNIT_ROUNDOFF = 2.0**-24
FLOAT64_UNIT_ROUNDOFF = 2.0**-53
# The smallest positive float64 (a subnormal): the absolute rounding error of a product that
# underflows is at most half of it.
_SMALLEST_SUBNORMAL = 2.0**-1074

# LAPACK's SVD and eigenvalue routines are backward stable: a computed singular value of a
# matrix with largest dimension n is off by at most p(n) * eps * ||A|| with p a modest
# polynomial (Demmel & Kahan; LAPACK Users' Guide, section 4.9). 64 * n * eps covers p(n)
# with a wide margin for every size lipcert meets, and stays far below any tolerance that
# matters for a certificate (about 1e-11 relative for n = 10^4).
_BACKWARD_ERROR_FACTOR = 64.0


def up(x: float) -> float:
    """The next float64 above x: turns a rounded-to-nearest result into an upper bound."""
    return math.nextafter(float(x), math.inf)


def down(x: float) -> float:
    """The next float64 below x: turns a rounded-to-nearest result into a lower bound."""
    return math.nextafter(float(x), -math.inf)


def mul_up(*factors: float) -> float:
    """Product of non-negative factors, rounded up after every multiplication."""
    result = 1.0
    for factor in factors:
        result = up(result * float(factor))
    return result


def add_up(*terms: float) -> float:
    """Sum of non-negative terms, rounded up after every addition."""
    result = 0.0
    for term in terms:
        result = up(result + float(term))
    return result


def rss_up(*terms: float) -> float:
    """sqrt of the sum of squares of non-negative terms, rounded up."""
    squares = add_up(*(mul_up(t, t) for t in terms))
    return up(math.sqrt(squares))


def sqrt_up(x: float) -> float:
    """sqrt(x) rounded up (IEEE sqrt is correctly rounded, so one step suffices)."""
    return up(math.sqrt(float(x)))


def inverse_sqrt_up(x: float) -> float:
    """1 / sqrt(x) rounded up: two correctly rounded operations, two ulps added (an ulp is
    at least u = 2^-53 of a normal number, each rounding at most u)."""
    return up(up(1.0 / math.sqrt(float(x))))


def div_up(x: float, y: float) -> float:
    """x / y for non-negative x and positive y, rounded up (division is correctly rounded)."""
    return up(float(x) / float(y))


def pow_up(x: float, exponent: float) -> float:
    """x ** exponent for x > 0, rounded up.

    pow is not correctly rounded, but every libm in use is accurate to a few ulps (glibc
    documents at most 1); a relative margin of 8 eps covers that with room to spare.
    """
    return up(math.pow(float(x), float(exponent)) * (1.0 + 8.0 * FLOAT64_EPS))


# sqrt(2) rounded up: IEEE sqrt is correctly rounded, so one ulp above its result bounds it.
SQRT2_UP = math.nextafter(math.sqrt(2.0), math.inf)


def norm_up(values: np.ndarray) -> float:
    """The L2 norm of all of `values`, rounded up."""
    if not np.size(values):
        return 0.0
    return sqrt_up(float(sum_of_squares_up(np.reshape(values, -1))))


def sum_of_squares_up(values: np.ndarray, axis: int | tuple[int, ...] | None = None) -> np.ndarray:
    """Sums of squares along `axis`, each increased by its worst-case rounding error.

    n squares summed in any order are off by at most gamma_(n+1) of the (non-negative) sum,
    short of underflow: a square below the normal range is off by up to half the smallest
    subnormal 2^-1074 in absolute terms (n squares of 0.7 * 2^-537 each round to zero), so
    (n + 2) * 2^-1074 is added (the rest of the sum's underflow is exact: sums of subnormals
    are exact, and the one product by 1 + 2 gamma loses at most half of it more).
    """
    squares = np.square(np.asarray(values, dtype=np.float64))
    total = np.sum(squares, axis=axis)
    count = squares.size // max(np.size(total), 1)
    gamma = (count + 1) * FLOAT64_EPS
    underflow = (count + 2) * _SMALLEST_SUBNORMAL
    return np.nextafter(total * (1.0 + 2.0 * gamma) + underflow, np.inf)


def singular_value_up(sigma: float, dimension: int) -> float:
    """A computed largest singular value turned into a guaranteed upper bound.

    sigma comes from a float64 SVD (or eigenvalue) routine on a matrix whose largest
    dimension is `dimension`; the result exceeds the exact value by the routine's backward
    error allowance.
    """
    margin = _BACKWARD_ERROR_FACTOR * max(int(dimension), 1) * FLOAT64_EPS
    return up(float(sigma) * (1.0 + margin))


def max_abs_up(values: np.ndarray) -> float:
    """max |v| over values computed by a few float64 operations, rounded up.

    The values (a quotient, a square root) carry a few ulps of rounding error each; a
    relative margin of 8 eps covers them.
    """
    largest = float(np.max(np.abs(values))) if np.size(values) else 0.0
    return up(largest * (1.0 + 8.0 * FLOAT64_EPS))


def gamma(terms: int, unit: float = FLOAT32_UNIT_ROUNDOFF) -> float:
    """gamma_n = n u / (1 - n u): the relative error bound of n rounded operations (Higham,
    Lemma 3.1), rounded up."""
    if terms <= 0:
        return 0.0
    product = terms * unit
    return math.inf if product >= 1 else div_up(product, 1 - product)
