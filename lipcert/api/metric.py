"""An accumulator of certified accuracy and MCR for training loops, in torchmetrics' spirit.

    metric = lipcert.CertifiedAccuracy(lipcert.from_torch(net, (1, 28, 28)), eps=[36 / 255])
    for x, y in validation_loader:
        metric.update(x, y)
    metric.compute()  # {"n": ..., "accuracy": ..., "mcr": ..., "certified_accuracy": {...}}

`update` takes the inputs, not logits: lipcert evaluates them itself, so that the rounding
allowance taken off the margins is the one its evaluator guarantees. Logits from the training
code would come from weights that may have moved since the model was bounded (spectral
normalisation updates them at every step), and from kernels (TF32 on GPUs, Winograd
convolutions) whose error the float32 allowance does not cover.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Any

import numpy as np

from lipcert.api.data import eps_thresholds
from lipcert.api.model import Certificate, CertifiedBatch, Model, Precision
from lipcert.certify.metrics import Eps
from lipcert.errors import UsageError


@dataclass(frozen=True)
class _State:
    """Sums over the samples seen: all that compute() needs."""

    n: int = 0
    correct: int = 0
    signed_radius_sum: float = 0.0
    certified: tuple[int, ...] = field(default_factory=tuple)


def _update(state: _State, batch: CertifiedBatch, eps: list[Eps]) -> _State:
    correct = batch.correct
    signed = batch.signed_radius
    if correct is None or signed is None:
        raise UsageError("expected labels with the batch")
    counts = tuple(int(np.sum(correct & (batch.radius > e.value))) for e in eps)
    previous = state.certified or (0,) * len(eps)
    return replace(
        state,
        n=state.n + len(batch),
        correct=state.correct + int(np.sum(correct)),
        signed_radius_sum=state.signed_radius_sum + float(np.sum(signed)),
        certified=tuple(a + b for a, b in zip(previous, counts, strict=True)),
    )


def _compute(state: _State, eps: list[Eps]) -> dict[str, Any]:
    if state.n == 0:
        nan = float("nan")
        return {
            "n": 0,
            "accuracy": nan,
            "mcr": nan,
            "certified_accuracy": {e.value: nan for e in eps},
        }
    certified = state.certified or (0,) * len(eps)
    return {
        "n": state.n,
        "accuracy": state.correct / state.n,
        "mcr": state.signed_radius_sum / state.n,
        "certified_accuracy": {e.value: c / state.n for e, c in zip(eps, certified, strict=True)},
    }


class CertifiedAccuracy:
    """Accumulates clean accuracy, certified accuracy at each eps and the MCR over batches.

    `model` is a `lipcert.Model` (e.g. `lipcert.from_torch(net, input_shape)` of this epoch's
    weights). The values equal those of `certify_dataset` on the same samples.
    """

    def __init__(
        self,
        model: Model,
        eps: Sequence[float | Fraction | Eps] | float | Fraction,
        *,
        precision: Precision = "float32",
        certificate: Certificate = "auto",
    ) -> None:
        if not isinstance(model, Model):
            raise UsageError(
                f"expected a lipcert.Model (lipcert.load or lipcert.from_torch) but got "
                f"{type(model).__name__}"
            )
        self.model = model
        self.eps = eps_thresholds(eps)
        self.precision: Precision = precision
        self.certificate: Certificate = certificate
        model.method(certificate)  # refuse a certificate the model cannot have, now
        self._state = _State()

    def update(self, x: Any, y: Any) -> CertifiedBatch:
        """Certify a batch (inputs, labels) and add it; returns the batch's certificates."""
        batch = self.model.certify(
            x,
            y,
            eps=[e.value for e in self.eps],
            precision=self.precision,
            certificate=self.certificate,
        )
        self._state = _update(self._state, batch, self.eps)
        return batch

    def compute(self) -> dict[str, Any]:
        """{"n", "accuracy", "mcr", "certified_accuracy": {eps: value}} over every update."""
        return _compute(self._state, self.eps)

    def reset(self) -> None:
        self._state = _State()


RobustnessMetric = CertifiedAccuracy
