"""How far the reported MCR can be below the exact function's: a guaranteed per-sample bound.

The MCR is the mean signed radius: +r for a correct prediction, -r for a wrong one. The
radius lipcert reports is computed from logits f^ whose distance to the exact function's
logits f is bounded by the allowance. The exact function's certificate is then known up to
that allowance, and `signed_upper` gives, per sample, an upper bound of the signed radius
the exact function's logits would give (margins of f over the same Lipschitz bounds, no
allowance), so that

    MCR(exact function) - MCR(reported) <= mean(signed_upper - signed reported),

whatever the rounding actually was. The bound is the sum of per-sample terms, so it holds
for any set of samples, and a sample recomputed by the exact evaluator contributes its own
(negligible) float64 term.

Per sample with label y, the exact signed radius s* is:
- when the reported certificate is a positive radius r for a wrong class p != y: the exact
  function predicts p too (its margin is above the allowance) with a radius >= r, so
  s* <= -r, the reported value (a term of 0);
- otherwise, s* <= 0 unless the exact function predicts y, and then
  s* = min_j (f_y - f_j) / K_yj <= min_j (f^_y - f^_j + A_yj) / K_yj, with A_yj a bound of
  the error of the margin f_y - f_j (sqrt(2) times the allowance, or the head's finer one).
  So s* <= max(0, that minimum).
"""

from __future__ import annotations

import math

import numpy as np

from lipcert.bounds.spec import CertificateSpec
from lipcert.certify.radii import Certificates, Method, Status
from lipcert.evaluators.base import HeadError

_EPS = float(np.finfo(np.float64).eps)


def _round_up(values: np.ndarray) -> np.ndarray:
    """A quotient computed by one rounded division, made an upper bound: two ulps up."""
    return np.nextafter(np.nextafter(values, np.inf), np.inf)


def signed_upper(
    logits: np.ndarray,
    spec: CertificateSpec,
    method: Method,
    allowance: np.ndarray,
    labels: np.ndarray,
    certificates: Certificates,
    head: HeadError | None = None,
) -> np.ndarray:
    """Per sample, an upper bound of the exact function's signed radius (module docstring).

    `certificates` are those reported for these logits and allowance (their certified wrong
    predictions are kept as they are); non-finite logits or allowances give +inf.
    """
    logits = np.asarray(logits, dtype=np.float64).reshape(len(logits), -1)
    allowance = np.asarray(allowance, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    n = len(logits)
    if method is Method.BINARY:
        scores = logits[:, 0]
        sign = np.where(labels == 1, 1.0, -1.0)
        toward = sign * scores  # > 0 when the computed score is on the label's side
        numerator = toward + allowance + 2 * _EPS * (np.abs(toward) + allowance)
        with np.errstate(divide="ignore", invalid="ignore"):
            upper = _round_up(np.maximum(numerator, 0.0) / spec.logit_bounds[0])
        upper = np.where(np.isnan(upper), np.inf, upper)
    else:
        rows = np.arange(n)
        safe = np.where(np.isfinite(logits), logits, 0.0)
        margins = safe[rows, labels][:, None] - safe  # (N, K): f^_y - f^_j
        pair = (math.sqrt(2.0) * (1.0 + 1e-15) * allowance)[:, None] * np.ones_like(margins)
        if head is not None and head.differences.shape == (logits.shape[1],) * 2:
            pair = np.minimum(pair, head.margin_allowance(labels))
        numerators = margins + pair + 2 * _EPS * (np.abs(margins) + pair)
        if method is Method.PAIRWISE:
            assert spec.pairwise_bounds is not None
            bounds = np.asarray(spec.pairwise_bounds, dtype=np.float64)[labels]
        else:
            bounds = np.full(margins.shape, spec.global_pair_bound)
        # A pair with a zero bound has an infinite radius (the margin cannot move).
        with np.errstate(over="ignore"):  # beyond the largest float: inf, an upper bound
            ratios = np.where(bounds > 0, numerators / np.where(bounds > 0, bounds, 1.0), np.inf)
        ratios[rows, labels] = np.inf
        upper = _round_up(np.maximum(np.min(ratios, axis=1), 0.0))
    finite = np.all(np.isfinite(logits), axis=1) & np.isfinite(allowance)
    upper = np.where(finite, upper, np.inf)
    wrong = (
        (certificates.prediction != labels)
        & (certificates.status == Status.CERTIFIED)
        & (certificates.radius > 0)
    )
    return np.where(wrong, -certificates.radius, upper)


def signed_reported(certificates: Certificates, labels: np.ndarray) -> np.ndarray:
    """The signed radius the MCR averages (as `lipcert.certify.metrics.summarise`)."""
    correct = certificates.prediction == np.asarray(labels)
    return np.where(correct, certificates.radius, -certificates.radius)


def mcr_gap(
    logits: np.ndarray,
    spec: CertificateSpec,
    method: Method,
    allowance: np.ndarray,
    labels: np.ndarray,
    certificates: Certificates,
    head: HeadError | None = None,
) -> np.ndarray:
    """Per sample, an upper bound of (exact signed radius - reported signed radius), >= 0
    (rounded up: its mean over samples bounds how far the MCR is below the exact one)."""
    upper = signed_upper(logits, spec, method, allowance, labels, certificates, head)
    reported = signed_reported(certificates, labels)
    with np.errstate(invalid="ignore"):
        gap = np.where(upper == reported, 0.0, _round_up(upper - reported))
    return np.where(np.isnan(gap), np.inf, np.maximum(gap, 0.0))


class McrTracker:
    """Running sums over the batches certified so far: the reported signed radii and their
    gap bounds (`mcr_gap`), and the per-sample gaps in order.

    With a `tolerance` (a fraction), `choose` says which more samples of a batch the exact
    evaluator should recompute so that, once they are, the gap bound of every sample so far
    is at most `tolerance` times the sum of their reported signed radii: then the reported
    MCR is at most `tolerance` relatively below the exact function's (if d = MCR(exact) -
    MCR(reported) > 0, d / MCR(exact) <= gap / (MCR(reported) + gap) <= gap / MCR(reported)).
    Each batch keeps the running condition, so it holds for the whole dataset; where the
    reported MCR is not positive it cannot hold, and every sample with a gap is recomputed.
    """

    def __init__(self, tolerance: float | None = None):
        if tolerance is not None and not (math.isfinite(tolerance) and tolerance >= 0):
            raise ValueError(f"expected a tolerance >= 0 but got {tolerance!r}")
        self.tolerance = tolerance
        self.signed_sum = 0.0
        self.gap_sum = 0.0
        self.gaps: list[np.ndarray] = []

    def deficit(self, gap: np.ndarray, signed: np.ndarray) -> float:
        """How much the finite gap bounds of the samples so far and this batch exceed the
        tolerance (<= 0: within it). An infinite gap (logits or allowance not finite) is
        the exact evaluator's to remove, or reported as it is: it is not counted here."""
        assert self.tolerance is not None
        finite = np.isfinite(gap)
        total_gap = self.gap_sum + float(np.sum(gap[finite]))
        total_signed = self.signed_sum + float(np.sum(signed))
        return total_gap - self.tolerance * total_signed

    def choose(
        self,
        gap: np.ndarray,
        signed: np.ndarray,
        signed_estimate: np.ndarray,
        eligible: np.ndarray,
        *,
        everything: bool = False,
    ) -> np.ndarray:
        """Indices of the fewest `eligible` samples of a batch whose recomputation should
        bring the running gap within the tolerance: every infinite gap, then those of the
        largest gap first, each expected to lose its gap and move its signed radius to
        `signed_estimate` (the radius of the computed logits with no allowance).
        `everything`: every eligible sample with a gap, if still needed (the last resort)."""
        if self.tolerance is None:
            return np.zeros(0, dtype=np.int64)
        candidates = np.flatnonzero(eligible & (gap > 0))
        infinite = candidates[~np.isfinite(gap[candidates])]
        finite = candidates[np.isfinite(gap[candidates])]
        deficit = self.deficit(gap, signed)
        if deficit <= 0 or len(finite) == 0:
            return infinite.astype(np.int64)
        if everything:
            return candidates.astype(np.int64)
        benefit = gap[finite] + self.tolerance * (signed_estimate[finite] - signed[finite])
        order = np.argsort(-benefit, kind="stable")
        gains = np.cumsum(np.maximum(benefit[order], 0.0))
        count = int(np.searchsorted(gains, deficit, side="left")) + 1
        chosen = finite[order[: min(count, len(order))]]
        return np.concatenate([infinite, chosen]).astype(np.int64)

    def add(self, gap: np.ndarray, signed: np.ndarray) -> None:
        """Record a batch's final gaps and reported signed radii."""
        gap = np.asarray(gap, dtype=np.float64)
        self.gaps.append(gap)
        with np.errstate(over="ignore"):  # radii near the largest float: an infinite sum
            self.gap_sum += float(np.sum(gap[np.isfinite(gap)]))
            self.signed_sum += float(np.sum(signed))


def signed_lower(
    certificates: Certificates,
    labels: np.ndarray,
    spec: CertificateSpec,
    allowance: np.ndarray,
) -> np.ndarray:
    """Per sample, a LOWER bound of the exact function's signed radius (never above the
    reported one): the other side of `signed_upper`, from the certificates alone.

    The reported signed radius of a wrong prediction is minus a lower bound of its radius, so
    it may lie above the exact function's (a wrong decision more robust than computed): the
    MCR alone can exceed the exact function's. Per sample, with E the allowance, p the
    computed prediction, m its margin over the runner-up r and A = sqrt(2) E (E for one logit):
    - correct with a certified radius: the exact function predicts p = y too, and its radius
      is at least the reported one: the bound is the reported radius;
    - otherwise, if the exact function predicts p != y, its radius is at most
      (f*_p - f*_r) / K_pr <= (m + A) / K_pr; if it predicts some j != p, at most
      (f*_j - f*_p) / K_jp <= A / K_jp (f^_p is the largest computed logit); if it predicts y,
      the signed radius is >= 0. So s* >= -max((m + A) / K_pr, max_j A / K_jp), where a
      correct p drops its own term (the exact function predicting p = y is then >= 0).
    NaN or infinite logits or allowance, or a pair bound of 0 on the way, give -inf.
    """
    labels = np.asarray(labels, dtype=np.int64)
    allowance = np.asarray(allowance, dtype=np.float64)
    prediction = certificates.prediction
    margin = np.asarray(certificates.margin, dtype=np.float64)
    reported = signed_reported(certificates, labels)
    n = len(labels)
    correct = prediction == labels
    kept = correct & (certificates.status == Status.CERTIFIED) & (certificates.radius > 0)
    finite = (prediction >= 0) & np.isfinite(margin) & np.isfinite(allowance)
    safe_prediction = np.where(finite, prediction, 0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if certificates.method is Method.BINARY:
            pair = allowance
            own_bound = np.full(n, float(spec.logit_bounds[0]))
            other = np.where(own_bound > 0, _round_up(pair * (1 + 4 * _EPS) / own_bound), np.inf)
        else:
            pair = math.sqrt(2.0) * (1.0 + 1e-15) * allowance
            k = spec.num_logits
            if certificates.method is Method.PAIRWISE:
                assert spec.pairwise_bounds is not None
                matrix = np.asarray(spec.pairwise_bounds, dtype=np.float64)
                matrix = np.minimum(matrix, matrix.T)  # the smaller of K_jp and K_pj
            else:
                matrix = np.full((k, k), float(spec.global_pair_bound))
            rows = matrix[safe_prediction]  # (N, K)
            rows[np.arange(n), safe_prediction] = np.inf  # j != p
            smallest = np.min(rows, axis=1) if k > 1 else np.full(n, np.inf)
            smallest = np.where(np.isnan(smallest), 0.0, smallest)
            other = np.where(smallest > 0, _round_up(pair * (1 + 4 * _EPS) / smallest), np.inf)
            runner_up = np.where(certificates.runner_up >= 0, certificates.runner_up, 0)
            own_bound = matrix[safe_prediction, runner_up]
        own = np.where(
            own_bound > 0, _round_up((margin + pair) * (1 + 4 * _EPS) / own_bound), np.inf
        )
        worst = np.where(correct, other, np.maximum(own, other))
    lower = np.where(finite & ~np.isnan(worst), -worst, -np.inf)
    lower = np.where(kept, certificates.radius, lower)
    return np.minimum(lower, reported)


def mcr_lower_bound(
    certificates: Certificates,
    labels: np.ndarray,
    spec: CertificateSpec,
    allowance: np.ndarray,
) -> float:
    """A guaranteed lower bound of the exact function's MCR (`signed_lower`, averaged and
    rounded down); -inf when a sample's is unknown, NaN for no samples."""
    lower = signed_lower(certificates, labels, spec, allowance)
    if len(lower) == 0:
        return float("nan")
    if not np.all(np.isfinite(lower)):
        return float("-inf")
    # fsum is the exact sum rounded once: one step down bounds it, one more the division
    try:
        total = float(np.nextafter(math.fsum(lower.tolist()), -np.inf))
        return float(np.nextafter(total / len(lower), -np.inf))
    except OverflowError:  # radii near the largest float: a sum beyond it
        # each term divided first, rounded down: the sum of the quotients stays in range
        with np.errstate(under="ignore"):
            parts = np.nextafter(lower / len(lower), -np.inf)
        return float(np.nextafter(math.fsum(parts.tolist()), -np.inf))
