"""Guaranteed upper bounds of L2 norms from sums of squares computed in floating point.

The rounding allowances need, per sample, the norms of the input and of some tensors the
runtime computes. A sum of squares computed in floating point (each square rounded at most
once, the non-negative terms summed in any order) is at most (1 + 2 gamma_(n+1)) times too
small for n terms, plus what underflowed squares lost (below the smallest normal number
each). Summing in short groups keeps n small: the groups' sums are then added in float64.
"""

from __future__ import annotations

import numpy as np

from lipcert.bounds.numeric import FLOAT32_UNIT_ROUNDOFF, FLOAT64_UNIT_ROUNDOFF, gamma

# A float32 tensor is summed in groups of up to this many values (`group_size`), the groups'
# sums added in float64: the rounding bound of a float32 sum of n squares grows with n, and
# short sums make it ~100 times smaller on the sample models (6,272 values per tensor).
GROUP = 64


def group_size(size: int) -> int:
    """How many values of a float32 tensor of `size` values per sample each sum of squares
    takes: the largest divisor of `size` up to GROUP, unless it is below GROUP / 4 (then
    the whole tensor in one sum, as a tensor of at most GROUP values)."""
    for group in range(min(size, GROUP), GROUP // 4 - 1, -1):
        if size % group == 0:
            return group
    return size


def norm_from_group_sums(sums: np.ndarray, size: int, group: int, unit: float) -> np.ndarray:
    """Per sample, an upper bound of the L2 norm of `size` values from `sums` (N, size /
    group): the sums of squares of consecutive groups of `group` values, each computed with
    unit roundoff `unit` in any order.

    A group's exact sum of squares is at most (1 + 2 gamma_(group+1)) times its computed one
    (each square rounded at most once, all terms non-negative) plus `group` times the
    smallest normal number (underflowed squares); the groups' sums are added here in float64,
    at most (1 + 2 gamma_(groups-1)) times too small. Short groups make the first factor
    small: 1 + 7.8e-6 for 64 float32 values, against 1 + 7.5e-4 for 6,272 in one sum."""
    sums = np.asarray(sums, dtype=np.float64).reshape(len(sums), -1)
    g = gamma(group + 1, unit)
    if not g < 0.5:
        return np.full(len(sums), np.inf)
    total = sums[:, 0] if sums.shape[1] == 1 else np.sum(sums, axis=1)
    total = total * (1 + 2 * gamma(sums.shape[1] - 1, FLOAT64_UNIT_ROUNDOFF))
    tiny = 2.0**-126 if unit >= FLOAT32_UNIT_ROUNDOFF else 2.0**-1022
    bound = total * (1 + 2 * g) + size * tiny
    return np.sqrt(bound) * (1 + 1e-15)


def norm_from_squares(squares: np.ndarray, size: int, unit: float) -> np.ndarray:
    """An upper bound of the L2 norm from a sum of `size` squares (any order) computed with
    unit roundoff `unit` (float32 or float64)."""
    squares = np.asarray(squares).reshape(-1, 1)
    return norm_from_group_sums(squares, size, size, unit)


def input_norms(inputs: np.ndarray) -> np.ndarray:
    """Upper bounds of the L2 norms of the exact inputs, from their rounded values.

    The inputs given may be the exact values rounded to float32 (relative error 2^-24 per
    element, so their norm is within a factor 1 + 2^-23 of the exact one): the bound of the
    given values' norms is multiplied by 1 + 2^-20. Gradual underflow adds up to 2^-150 per
    element that is not relative (a value below 2^-149 may round to 0): sqrt(d) 2^-126 more,
    so that the allowances' input term 2 u ||x|| (u = 2^-24) covers sqrt(d) 2^-149.

    float32 inputs are squared and summed in float32 in groups of `group_size` values (five
    times faster than a float64 sum on ImageNet-sized images, where it took 2 % of certify's
    time), with the guarantee of `norm_from_group_sums`. Other inputs, and float32 ones whose
    size has no divisor between 16 and 64 or whose squares overflow float32, are summed in
    float64 (at most (1 + 2 gamma_(d+1)) times too small with unit 2^-53: within 1 + 2^-20).
    """
    flat = np.asarray(inputs).reshape(len(inputs), -1)
    size = flat.shape[1]
    group = group_size(size) if flat.dtype == np.float32 and size > 0 else size
    norms = None
    if group < size:
        grouped = flat.reshape(len(flat), size // group, group)
        norms = norm_from_group_sums(
            np.einsum("ijk,ijk->ij", grouped, grouped), size, group, FLOAT32_UNIT_ROUNDOFF
        )
    if norms is None or not np.all(np.isfinite(norms)):  # squares above float32's range
        norms = np.sqrt(np.einsum("ij,ij->i", flat, flat, dtype=np.float64))
    underflow = np.sqrt(float(size)) * 2.0**-126
    return norms * (1.0 + 2.0**-20) + underflow
