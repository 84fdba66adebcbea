"""The certificate spec: what certification needs to know about a model's bounds.

Built by `lipcert.bounds.compose.analyse` from the per-layer bounds; consumed by the radii,
the runtimes (to check that evaluators agree within rounding) and the reports. It is a plain
value: guaranteed upper bounds of the logits' Lipschitz constants, and the affine bound of the
floating-point error of the logits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from lipcert.bounds.numeric import mul_up


@dataclass(frozen=True)
class CertificateSpec:
    """What certify consumes: guaranteed upper bounds of the logits' Lipschitz constants.

    `lipschitz_bound` bounds the whole logit vector (L2 -> L2), `logit_bounds[i]` the logit
    i alone, and `pairwise_bounds[i, j]` (when a linear head was found) the difference
    f_i - f_j. Without a head, f_i - f_j is bounded by sqrt(2) * lipschitz_bound.
    """

    lipschitz_bound: float
    logit_bounds: tuple[float, ...]
    pairwise_bounds: np.ndarray | None
    num_logits: int
    input_shape: tuple[int, ...]
    size_known: bool
    body_bound: float | None = None
    head: str | None = None
    # ||f computed in float32 (x) - f(x)||_2 <= fp_error_constant + fp_error_slope * ||x||_2
    fp_error_constant: float = 0.0
    fp_error_slope: float = 0.0

    def fp_allowance(self, input_norms: np.ndarray) -> np.ndarray:
        """Per sample, a bound of the float32 error of the logit vector (L2)."""
        norms = np.asarray(input_norms, dtype=np.float64)
        return np.nextafter(
            self.fp_error_constant + self.fp_error_slope * norms * (1 + 1e-12), np.inf
        )

    def scaled(self, factor: float) -> CertificateSpec:
        """The spec of x -> f(a x) for an input map of Lipschitz constant `factor`."""
        pairwise = None
        if self.pairwise_bounds is not None:
            # One ulp up: in the subnormal range a product's rounding is absolute (2^-1075),
            # which no relative margin covers (a pair bound 6e-322 was 0.4 % short).
            product = np.nextafter(self.pairwise_bounds * factor * (1 + 1e-15), np.inf)
            pairwise = np.where(self.pairwise_bounds > 0, product, self.pairwise_bounds)
        return replace(
            self,
            lipschitz_bound=mul_up(self.lipschitz_bound, factor),
            logit_bounds=tuple(mul_up(b, factor) for b in self.logit_bounds),
            pairwise_bounds=pairwise,
            body_bound=None if self.body_bound is None else mul_up(self.body_bound, factor),
        )

    def pair_bound(self, i: int, j: int) -> float:
        """Upper bound of the Lipschitz constant of f_i - f_j (pairwise when there is a head)."""
        if self.pairwise_bounds is not None:
            return float(self.pairwise_bounds[i, j])
        return self.global_pair_bound

    @property
    def global_pair_bound(self) -> float:
        """sqrt(2) L: bounds f_i - f_j for every pair, since |u_i - u_j| <= sqrt(2) ||u||."""
        return mul_up(math.sqrt(2.0) * (1.0 + 1e-15), self.lipschitz_bound)
