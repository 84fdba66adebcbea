"""input_norms bounds the norm of the exact inputs from float32 (or float64) values.

Ground truth: exact rational sums of squares (fractions). The float32 path sums squares in
float32 groups; the inputs below make those sums as wrong as float32 lets them be (every
square rounded down, sums that lose their low bits, squares that underflow or overflow).
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from lipcert.evaluators.norms import group_size, input_norms

U32 = Fraction(1, 2**24)


def exact_squares(row: np.ndarray) -> Fraction:
    return sum((Fraction(float(v)) ** 2 for v in row.ravel()), Fraction(0))


def check_bound(batch: np.ndarray) -> np.ndarray:
    """Each bound covers every exact input the float32 values may be a rounding of:
    ||x_e|| <= ||x|| / (1 - u) + sqrt(d) 2^-150. Returns bound / ||x|| per row."""
    bounds = input_norms(batch)
    size = batch[0].size
    ratios = []
    for row, bound in zip(batch, bounds, strict=True):
        squares = exact_squares(row)
        # (bound - sqrt(d) 2^-150) (1 - u) >= ||x||, squared (both sides non-negative)
        underflow = Fraction(float(np.sqrt(size))) * Fraction(2) ** -150
        lower = (Fraction(float(bound)) - underflow) * (1 - U32)
        assert lower >= 0 and lower**2 >= squares, (float(bound), float(squares))
        ratios.append(float(bound) / float(np.sqrt(float(squares))) if squares else np.inf)
    return np.array(ratios)


def rounded_down_squares(count: int) -> np.ndarray:
    """float32 values 1 + k 2^-23 whose squares round down (k^2 2^-46 below half an ulp)."""
    k = np.arange(1, count + 1) % 700 + 1
    values = (1.0 + k * 2.0**-23).astype(np.float32)
    assert np.all(values.astype(np.float64) ** 2 > (values * values).astype(np.float64))
    return values


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (3, 224, 224)])
def test_float32_groups_cover_the_exact_norm(shape: tuple[int, ...]) -> None:
    size = int(np.prod(shape))
    assert group_size(size) < size  # the float32 path
    rng = np.random.default_rng(11)
    batch = np.stack(
        [
            rounded_down_squares(size).reshape(shape),
            rng.uniform(0, 1, size).astype(np.float32).reshape(shape),
            # a large value then many small ones: float32 sums lose the small ones' bits
            np.concatenate([[4096.0], np.full(size - 1, 1 + 2.0**-12)])
            .astype(np.float32)
            .reshape(shape),
            # squares below float32's normal range underflow (to subnormals or zero)
            np.full(size, 3e-23, dtype=np.float32).reshape(shape),
            np.zeros(shape, dtype=np.float32),
        ]
    )
    ratios = check_bound(batch)
    finite = ratios[np.isfinite(ratios)][:3]
    assert np.all(finite < 1 + 2e-5), ratios  # tight: the group factor is 1 + 7.8e-6


def test_float32_squares_beyond_float32_range_use_float64() -> None:
    batch = np.full((1, 3, 8, 8), 3e19, dtype=np.float32)  # squares overflow float32
    assert np.all(np.isfinite(input_norms(batch)))
    check_bound(batch)


@pytest.mark.parametrize("size", [17, 1009])  # no divisor in 16..64 below the size: float64
def test_sizes_without_groups_and_float64_inputs(size: int) -> None:
    rng = np.random.default_rng(5)
    batch = rng.uniform(0, 1, (2, size)).astype(np.float32)
    check_bound(batch)
    check_bound(batch.astype(np.float64))
