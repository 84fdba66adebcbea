"""The Sandwich (LBDN) certificate's positive-semidefiniteness check: a proven eigenvalue bound.

`eigenvalue_lower_bound` must never exceed the smallest eigenvalue of the matrix (its float64
entries taken exactly). Ground truth in exact rationals: a matrix B^T B - t I with B an integer
matrix of rank < n has smallest eigenvalue exactly -t (B^T B is PSD and singular), and a
vector v of B's null space shows it: v^T A v / v^T v = -t.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from lipcert.bounds.rules.blocks import lipsdp_bound
from lipcert.bounds.verified_psd import eigenvalue_lower_bound


def _rayleigh(matrix: np.ndarray, v: np.ndarray) -> Fraction:
    a = [[Fraction(float(x)) for x in row] for row in matrix]
    w = [Fraction(int(x)) for x in v]
    n = len(w)
    top = sum(w[i] * a[i][j] * w[j] for i in range(n) for j in range(n))
    return top / sum(x * x for x in w)


def _singular_gram(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(B^T B as float64, exactly; an integer null vector of B)."""
    rng = np.random.default_rng(seed)
    b = rng.integers(-3, 4, size=(n - 1, n)).astype(np.int64)
    # the last column a combination of the others: v = (c, -1) is in the null space
    c = rng.integers(-2, 3, size=n - 1)
    b[:, -1] = b[:, :-1] @ c
    v = np.append(c, -1)
    assert np.all(b @ v == 0)
    return (b.T @ b).astype(np.float64), v


@pytest.mark.parametrize("n", [4, 12, 40])
@pytest.mark.parametrize("seed", [0, 1])
def test_slightly_indefinite_matrix_is_rejected(n: int, seed: int) -> None:
    gram, v = _singular_gram(n, seed)
    matrix = gram - 2.0**-33 * np.eye(n)  # exact: small integers minus 2^-33
    assert _rayleigh(matrix, v) == Fraction(-1, 2**33)
    bound = eigenvalue_lower_bound(matrix)
    assert bound is not None
    assert bound < 0  # not accepted as PSD
    assert Fraction(bound) <= _rayleigh(matrix, v)  # never above the true lambda_min


@pytest.mark.parametrize("n", [4, 12, 40])
def test_matrix_with_a_clear_margin_is_accepted(n: int) -> None:
    gram, _ = _singular_gram(n, 3)
    matrix = gram + 0.5 * np.eye(n)  # lambda_min = 0.5 exactly
    bound = eigenvalue_lower_bound(matrix)
    assert bound is not None
    assert 0.5 * (1 - 1e-6) <= bound <= 0.5


def test_the_estimate_being_wrong_only_loses() -> None:
    """A matrix whose eigenvalue routine result is perturbed cannot fool the bound: Cholesky
    fails at a shift above lambda_min. Here lambda_min is -1 and the matrix is diagonal."""
    matrix = np.diag([-1.0, 2.0, 3.0])
    bound = eigenvalue_lower_bound(matrix)
    assert bound is not None and bound <= -1.0


def test_sandwich_lipsdp_still_certifies_and_bounds_the_true_constant() -> None:
    """The look-alike: a Sandwich pair whose product bound is loose; the certificate must lie
    between the true constant (largest ||W2 L W1|| over the vertices L in {0,1}^h, exact for
    a small h) and the product of the norms."""
    rng = np.random.default_rng(7)
    first = rng.normal(size=(6, 5)) / 3
    second = rng.normal(size=(4, 6)) / 3
    result = lipsdp_bound(first, second)
    assert result is not None
    true = max(
        np.linalg.norm(second @ np.diag(mask) @ first, 2)
        for mask in np.array(np.meshgrid(*[[0, 1]] * 6)).reshape(6, -1).T
    )
    product = np.linalg.norm(first, 2) * np.linalg.norm(second, 2)
    assert true <= result[0] * (1 + 1e-9)
    assert result[0] < product


def _positive_definite_exactly(matrix: list[list[Fraction]]) -> bool:
    """Exact LDL^T without pivoting: a symmetric matrix is positive definite iff every pivot
    is positive."""
    a = [row[:] for row in matrix]
    n = len(a)
    for k in range(n):
        if a[k][k] <= 0:
            return False
        for i in range(k + 1, n):
            factor = a[i][k] / a[k][k]
            for j in range(k + 1, n):
                a[i][j] -= factor * a[k][j]
    return True


@pytest.mark.parametrize("seed", range(12))
def test_bound_never_exceeds_the_exact_smallest_eigenvalue(seed: int) -> None:
    """Random symmetric matrices, some nearly singular or indefinite by a hair: S - (bound -
    2^-70) I is positive definite in exact rational arithmetic, i.e. bound <= lambda_min."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 9))
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    values = rng.normal(size=n) * 10.0 ** rng.integers(-3, 3)
    values[0] = float(rng.choice([0.0, 1e-12, -1e-12, -1e-8]))
    matrix = (q * values) @ q.T
    matrix = (matrix + matrix.T) / 2
    bound = eigenvalue_lower_bound(matrix)
    assert bound is not None
    shift = Fraction(bound) - Fraction(1, 2**70)
    exact = [[Fraction(float(matrix[i, j])) for j in range(n)] for i in range(n)]
    for i in range(n):
        exact[i][i] -= shift
    assert _positive_definite_exactly(exact)
    lowest = float(np.linalg.eigvalsh(matrix)[0])
    assert bound >= lowest - 1e-8 * (abs(lowest) + np.abs(matrix).max())  # and not much less
