"""Pairwise head bounds ||w_i - w_j|| from the Gram matrix (compose.head_row_differences).

Ground truth: exact rational differences of the float64 rows (fractions.Fraction). The Gram
form n_i + n_j - 2 G_ij cancels for rows that nearly coincide: the look-alike without its
allowance falls below the exact distance there; lipcert's bound must not, anywhere, and must
stay within 1e-9 of it.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from lipcert.bounds.compose import head_row_differences


def _exact_squares(rows: np.ndarray, i: int, j: int) -> Fraction:
    return sum(
        (Fraction(float(a)) - Fraction(float(b))) ** 2
        for a, b in zip(rows[i], rows[j], strict=True)
    )


def _rows() -> np.ndarray:
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(12, 40))
    rows[3] = rows[4] + 1e-9 * rng.normal(size=40)  # nearly coincide
    rows[5] = rows[6] * (1 + 2.0**-50)  # within a few ulps
    rows[7] = 1e8 * rng.normal(size=40)  # large beside small
    rows[8] = rows[7] + 1.0
    return rows


def test_head_row_differences_bound_the_exact_distances() -> None:
    rows = _rows()
    bounds = head_row_differences(rows, 0.0)
    for i in range(len(rows)):
        for j in range(len(rows)):
            exact = _exact_squares(rows, i, j)
            assert Fraction(float(bounds[i, j])) ** 2 >= exact
            if i != j:
                assert Fraction(float(bounds[i, j])) ** 2 <= exact * Fraction(1 + 1e-9) ** 2


def test_the_gram_form_without_its_allowance_falls_short() -> None:
    """The look-alike: sqrt(n_i + n_j - 2 G_ij) alone is below the exact distance for some
    nearly coinciding pair (cancellation), so the allowance and the exact recomputation of
    such pairs are needed."""
    rows = _rows()
    squares = np.einsum("ij,ij->i", rows, rows)
    gram = squares[:, None] + squares[None, :] - 2.0 * (rows @ rows.T)
    plain = np.sqrt(np.maximum(gram, 0.0))
    short = [
        (i, j)
        for i in range(len(rows))
        for j in range(len(rows))
        if i != j and Fraction(float(plain[i, j])) ** 2 < _exact_squares(rows, i, j)
    ]
    assert short


def test_spread_widens_by_the_rows_norms() -> None:
    rows = _rows()[:4]
    spread = 1e-6
    norms = np.linalg.norm(rows, axis=1)
    widened = head_row_differences(rows, spread)
    plain = head_row_differences(rows, 0.0)
    assert np.all(widened >= plain + spread * (norms[:, None] + norms[None, :]) * (1 - 1e-12))
