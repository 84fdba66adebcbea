"""Certifying a dataset: batches -> logits -> radii -> metrics.

The certified function is the model composed with the optional preprocessing
x -> (x - mean) / std, so radii are in the dataset's pixel space ([0, 1]). Inference runs
once per sample; everything else is vectorised over the batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lipcert.bounds.spec import CertificateSpec
from lipcert.certify.metrics import Eps, Summary, summarise
from lipcert.certify.radii import Certificates, Method, Status, certify_logits
from lipcert.datasets import Dataset
from lipcert.errors import DatasetError, UsageError
from lipcert.runtime import Float64Evaluator, OnnxRuntimeEvaluator

Evaluator = OnnxRuntimeEvaluator | Float64Evaluator


@dataclass(frozen=True)
class Preprocessing:
    """x -> (x - mean) / std per channel, part of the certified function."""

    mean: np.ndarray
    std: np.ndarray

    @property
    def lipschitz(self) -> float:
        """Bound of the preprocessing map: max 1 / std (exact: it is diagonal)."""
        return float(np.nextafter(np.max(1.0 / self.std), np.inf))

    def apply(self, batch: np.ndarray) -> np.ndarray:
        shape = (1, -1) + (1,) * (batch.ndim - 2)
        return (batch.astype(np.float64) - self.mean.reshape(shape)) / self.std.reshape(shape)


def parse_preprocessing(mean: str | None, std: str | None, channels: int) -> Preprocessing | None:
    """--mean/--std: comma-separated, one value or one per channel; std > 0."""
    if mean is None and std is None:
        return None
    values = []
    for name, text, default in (("--mean", mean, 0.0), ("--std", std, 1.0)):
        if text is None:
            values.append(np.full(channels, default))
            continue
        try:
            parsed = np.array([float(v) for v in text.split(",") if v.strip()], dtype=np.float64)
        except ValueError:
            raise UsageError(f"expected {name} like 0.5,0.5,0.5 but got {text!r}") from None
        if parsed.size == 1:
            parsed = np.full(channels, parsed[0])
        if parsed.size != channels:
            raise UsageError(f"expected {name} with 1 or {channels} values but got {text!r}")
        if not np.all(np.isfinite(parsed)):
            raise UsageError(f"expected finite {name} values but got {text!r}")
        values.append(parsed)
    if np.any(values[1] <= 0):
        raise UsageError(f"expected --std > 0 but got {std!r}")
    return Preprocessing(mean=values[0], std=values[1])


@dataclass(frozen=True)
class CertifyResult:
    certificates: Certificates
    labels: np.ndarray
    summary: Summary
    spec: CertificateSpec  # of the certified function (preprocessing included)
    allowance: np.ndarray  # per-sample float32 error bound of the logits
    seconds: float


def certify_dataset(
    evaluator: Evaluator,
    spec: CertificateSpec,
    method: Method,
    dataset: Dataset,
    eps_list: list[Eps],
    *,
    batch_size: int = 256,
    preprocessing: Preprocessing | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> CertifyResult:
    """Certified radius of every sample of `dataset`, and the summary metrics.

    `spec` carries the rounding allowance of the evaluator's precision. Pixels are divided
    by 255 in that precision (correctly rounded); with preprocessing, in float64 and then
    rounded once by the evaluator. The allowance covers that one rounding of the input.
    """
    labels = model_labels(dataset, spec)
    certified_spec = spec if preprocessing is None else spec.scaled(preprocessing.lipschitz)
    parts: list[Certificates] = []
    allowances: list[np.ndarray] = []
    pixel_type = (
        np.float32 if evaluator.precision == "float32" and preprocessing is None else np.float64
    )
    started = time.perf_counter()
    for _, pixels, _ in dataset.batches(batch_size, dtype=pixel_type):
        inputs = pixels if preprocessing is None else preprocessing.apply(pixels)
        logits = evaluator.logits(inputs)
        if logits.shape[1] != spec.num_logits:
            raise UsageError(
                f"the model gave {logits.shape[1]} logits, its graph {spec.num_logits}"
            )
        allowance = spec.fp_allowance(input_norms(inputs))
        parts.append(certify_logits(logits, certified_spec, method, allowance))
        allowances.append(allowance)
        if on_batch is not None:
            on_batch(len(inputs))
    seconds = time.perf_counter() - started
    certificates = _concatenate(parts, method)
    summary = summarise(certificates, labels, eps_list, dataset.class_names)
    return CertifyResult(
        certificates, labels, summary, certified_spec, np.concatenate(allowances), seconds
    )


def input_norms(inputs: np.ndarray) -> np.ndarray:
    """Upper bounds of the L2 norms of the exact inputs, from their rounded values.

    The inputs given may be the exact values rounded to float32 (relative error 2^-24 per
    element, so their norm is within a factor 1 + 2^-23 of the exact one), and the sum of
    squares is accumulated in float64: a factor 1 + 2^-20 covers both.
    """
    flat = inputs.reshape(len(inputs), -1)
    squares = np.einsum("ij,ij->i", flat, flat, dtype=np.float64)
    return np.sqrt(squares) * (1.0 + 2.0**-20)


def model_labels(dataset: Dataset, spec: CertificateSpec) -> np.ndarray:
    """The dataset's labels as class indices of the model's logits, checked."""
    labels = np.asarray(dataset.labels, dtype=np.int64)
    classes = 2 if spec.num_logits == 1 else spec.num_logits
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise DatasetError(
            f"labels of {dataset.name!r} range over {int(labels.min())}..{int(labels.max())} but "
            f"the model has {spec.num_logits} logit(s), i.e. classes 0..{classes - 1}"
        )
    return labels


def _concatenate(parts: list[Certificates], method: Method) -> Certificates:
    if not parts:
        empty = np.zeros(0)
        return Certificates(
            empty.astype(np.int64),
            empty.astype(np.int64),
            empty,
            empty,
            np.zeros(0, dtype=np.int64),
            method,
        )
    return Certificates(
        prediction=np.concatenate([p.prediction for p in parts]),
        runner_up=np.concatenate([p.runner_up for p in parts]),
        margin=np.concatenate([p.margin for p in parts]),
        radius=np.concatenate([p.radius for p in parts]),
        status=np.concatenate([p.status for p in parts]),
        method=method,
    )


STATUS_NAMES = {
    Status.CERTIFIED: "certified",
    Status.WITHIN_ALLOWANCE: "within_allowance",
    Status.TIE: "tie",
    Status.NON_FINITE: "non_finite",
}
