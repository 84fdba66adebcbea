"""The evaluator protocol: logits of a batch, and how far they may be from the exact function.

An evaluator computes the logits of a batch in some arithmetic (float32 onnxruntime, the graph
in float64, a GPU runtime) and returns, with them, a GUARANTEED per-sample bound of their
distance to the exact real-valued function lipcert bounded. The radii take that bound off the
margins, so an evaluator whose bound is too small makes certificates unsound: an evaluator
that cannot bound its error must return an infinite allowance (nothing is then certified).

Adding an evaluator (a CUDA runtime, say):
1. Write a class with the attributes and the `evaluate` method of `Evaluator` below, in a new
   module of this package. `allowance[i]` bounds ||logits[i] - f(x_i)||_2 where f is the exact
   function of the graph and x_i the exact input (the batch may be the exact input rounded
   once to `input_dtype`: the allowance covers that rounding too).
2. Compare it with another evaluator through `check_agreement` (on every batch, or at least
   on the first): two evaluators that both claim to bound their error must agree within the
   sum of their allowances, or one of them is not computing the model.
3. Test it against the float64 evaluator (`lipcert.evaluators.exact`) on real models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from lipcert.errors import UnsoundCertificateError
from lipcert.evaluators.norms import input_norms as input_norms


@dataclass(frozen=True)
class HeadError:
    """A finer bound for a model ending in a linear head f = W h + b: the margin f_i - f_j
    of a sample is off by at most differences[i, j] * body + sqrt(2) * rest, where `body`
    (N,) bounds the error of h, `rest` (N,) the rounding the head adds (L2 over the logits),
    and differences[i, j] >= ||w_i - w_j||."""

    body: np.ndarray
    rest: np.ndarray
    differences: np.ndarray

    def take(self, index: np.ndarray) -> HeadError:
        return HeadError(self.body[index], self.rest[index], self.differences)

    def margin_allowance(self, prediction: np.ndarray) -> np.ndarray:
        """(N, K): the bound of the error of f_prediction - f_j, for every j."""
        rows = self.differences[prediction] * self.body[:, None]
        return (rows + np.sqrt(2.0) * self.rest[:, None]) * (1 + 1e-12)


@dataclass(frozen=True)
class Evaluation:
    """Logits of a batch with a guaranteed bound of their error.

    `logits` (N, K) float64 holds the computed values; `allowance` (N,) bounds, per sample,
    the L2 norm of the difference to the exact function's logits (inf: no bound known).
    `head`, when given, bounds the error of each margin more finely (`HeadError`).
    """

    logits: np.ndarray
    allowance: np.ndarray
    head: HeadError | None = None

    def take(self, index: np.ndarray) -> Evaluation:
        """The evaluation of the samples `index` (an integer array or a boolean mask)."""
        head = None if self.head is None else self.head.take(index)
        return Evaluation(self.logits[index], self.allowance[index], head)


@runtime_checkable
class Evaluator(Protocol):
    """Computes logits with a guaranteed error bound (see the module docstring)."""

    name: str  # shown in reports, e.g. "onnxruntime float32"
    precision: str  # the arithmetic: "float32" or "float64"
    input_dtype: type  # the dtype batches should be handed in (np.float32 or np.float64)

    def evaluate(self, batch: np.ndarray) -> Evaluation:
        """Logits (N, K) of a batch (N, *input_shape) and their allowance (N,)."""
        ...


def agreement_gaps(first: Evaluation, second: Evaluation) -> tuple[np.ndarray, np.ndarray]:
    """Per sample: ||first - second||_2 and the most the two allowances let it be.

    Samples with a non-finite logit in either evaluation get gap 0 (they are never
    certified, so they cannot make a certificate unsound).
    """
    a = np.asarray(first.logits, dtype=np.float64)
    b = np.asarray(second.logits, dtype=np.float64)
    if a.shape != b.shape:
        raise UnsoundCertificateError(
            f"two evaluators of the same model gave logits of shapes {a.shape!r} and {b.shape!r}"
        )
    finite = np.all(np.isfinite(a), axis=1) & np.all(np.isfinite(b), axis=1)
    gap = np.linalg.norm(np.where(finite[:, None], a - b, 0.0), axis=1)
    # The gap itself is computed in float64: a relative slack of 1e-12 covers its rounding.
    limit = (first.allowance + second.allowance) * (1 + 1e-12) + 1e-12 * np.linalg.norm(
        np.where(finite[:, None], np.abs(a) + np.abs(b), 0.0), axis=1
    )
    return gap, limit


def agree(first: Evaluation, second: Evaluation) -> bool:
    """Whether two evaluations of the same inputs agree within their allowances."""
    gap, limit = agreement_gaps(first, second)
    return bool(np.all(gap <= limit))


def check_agreement(first: Evaluation, second: Evaluation, what: str) -> None:
    """Raise UnsoundCertificateError when two evaluations of the same inputs differ by more
    than their allowances: one of them does not compute the model (or bounds its error
    wrongly), and no certificate can be trusted. `what` names the two, e.g. "the graph in
    float64 and onnxruntime"."""
    gap, limit = agreement_gaps(first, second)
    excess = gap - limit
    if len(excess) and np.max(excess) > 0:
        worst = int(np.argmax(excess))
        raise UnsoundCertificateError(
            f"{what} differ by {gap[worst]:.3g} on sample {worst}, more than their rounding "
            f"bounds allow ({limit[worst]:.3g}); lipcert cannot tell which computes the model "
            "and refuses to go on"
        )
