"""Final review of the default evaluator's rounding bound (posterior.py, compose's head pairs).

Ground truth: exact rational arithmetic (fractions.Fraction) of the float64 values.

- head_row_differences: rows below float64's normal range (1e-170: every square, and the
  Gram allowance, underflowed to 0) gave ||w_i - w_j|| bounds of 5e-324, or 1e-14 of
  themselves below the exact distance; every sum of squares now carries (8 d + 16) 2^-1074.
  Look-alike: rows of ordinary size keep bounds within 1e-9 of the exact distances.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from lipcert.bounds.compose import head_row_differences


def _exact_squares(a: np.ndarray, b: np.ndarray) -> Fraction:
    return sum(
        ((Fraction(float(x)) - Fraction(float(y))) ** 2 for x, y in zip(a, b, strict=True)),
        Fraction(0),
    )


def _check_upper(rows: np.ndarray, spread: float = 0.0) -> float:
    """Assert every bound is >= the exact distance; return the largest bound^2 / exact^2."""
    bounds = head_row_differences(rows, spread)
    worst = 0.0
    for i in range(len(rows)):
        for j in range(len(rows)):
            if i == j:
                continue
            exact = _exact_squares(rows[i], rows[j])
            assert Fraction(float(bounds[i, j])) ** 2 >= exact, (i, j, float(bounds[i, j]))
            if exact:
                worst = max(worst, float(Fraction(float(bounds[i, j])) ** 2 / exact))
    return worst


def test_head_differences_bound_rows_below_the_normal_range() -> None:
    rows = np.array(
        [
            [3e-170, 1e-170, 0.0],
            [1e-170, -2e-170, 5e-171],
            [2.5e-160, 0.0, 0.0],
            [1e-155, 0, 1e-156],
        ]
    )
    _check_upper(rows)
    _check_upper(rows, spread=1e-3)


def test_head_differences_of_ordinary_rows_stay_tight() -> None:
    rng = np.random.default_rng(7)
    for d in (1, 3, 17):
        base = rng.normal(size=d)
        rows = np.stack([base, base * (1 + 1e-9 * rng.normal(size=d)), rng.normal(size=d)])
        assert _check_upper(rows) <= 1 + 1e-9
