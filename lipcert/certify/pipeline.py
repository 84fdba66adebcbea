"""Certifying a dataset: batches -> logits -> radii -> metrics.

The certified function is the model composed with the optional preprocessing
x -> (x - mean) / std, so radii are in the dataset's pixel space ([0, 1]). Inference runs
once per sample; everything else is vectorised over the batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TypeVar

import numpy as np

from lipcert.bounds.compose import Analysis
from lipcert.bounds.spec import CertificateSpec
from lipcert.certify.mcr_gap import McrTracker, mcr_gap, signed_reported
from lipcert.certify.metrics import Eps, Summary, summarise
from lipcert.certify.radii import Certificates, Method, Status, certify_logits
from lipcert.datasets import Dataset
from lipcert.errors import DatasetError, ModelLoadError, UsageError
from lipcert.evaluators import Evaluation, Evaluator, check_agreement, input_norms
from lipcert.model import LoadedModel

Key = TypeVar("Key")


@dataclass(frozen=True)
class Preprocessing:
    """x -> (x - mean) / std per channel, part of the certified function."""

    mean: np.ndarray
    std: np.ndarray

    def __post_init__(self) -> None:
        # lipschitz is max 1 / std: a negative std would be left out of that maximum.
        mean, std = np.asarray(self.mean), np.asarray(self.std)
        if mean.ndim != 1 or std.ndim != 1 or mean.shape != std.shape or std.size == 0:
            raise UsageError(
                f"expected mean and std as one value per channel, as many of each, but got "
                f"shapes {mean.shape!r} and {std.shape!r}"
            )
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std))):
            raise UsageError(f"expected finite mean and std but got {mean!r} and {std!r}")
        if np.any(std <= 0):
            raise UsageError(f"expected std > 0 but got {std!r}")

    @property
    def lipschitz(self) -> float:
        """Bound of the preprocessing map: max 1 / std (exact: it is diagonal)."""
        return float(np.nextafter(np.max(1.0 / self.std), np.inf))

    def apply(self, batch: np.ndarray) -> np.ndarray:
        """(x - mean) / std in float64: two correctly rounded operations per element."""
        shape = (1, -1) + (1,) * (batch.ndim - 2)
        return (batch.astype(np.float64) - self.mean.reshape(shape)) / self.std.reshape(shape)

    def input_allowance(self, inputs: np.ndarray, lipschitz: float) -> np.ndarray:
        """Per sample, a bound of how far the logits of the computed `inputs` (`apply`'s
        output) may be from those of the exact preprocessed sample, beyond the rounding
        the evaluators already cover; `lipschitz` bounds the certified function (pixels to
        logits, the preprocessing's 1/std included).

        The exact sample is x (uint8 / 255, say), the evaluator's input z^ = fl(fl(x^ - m)
        / s) with x^ = x (1 + d0) the pixels as float64 (|d0| <= u = 2^-53). Then z^ =
        z' (1 + d1)(1 + d2) with z' = (x^ - m) / s exactly: two relative roundings of the
        input, which every evaluator's input allowance covers (2 u ||z||, its own u at
        least u). What it does not cover is z' - z = (x^ - x) / s: an ABSOLUTE error, up
        to u |x| / s per element, however close x is to the mean (then z is about 0 and a
        bound relative to ||z|| is about 0 too). In pixel space it is ||x^ - x|| <= u ||x||,
        and ||f(z') - f(z)|| <= L ||x^ - x|| with L the certified function's bound. ||x||
        is bounded from z^ alone: |x| <= (1 + u)(|m| + |s z^| (1 + 3 u)), so the bound is
        L u (||m|| + ||s z^||) times a margin for these factors and for the float64 norms.
        """
        flat = np.asarray(inputs, dtype=np.float64).reshape(len(inputs), -1)
        shape = (1, -1) + (1,) * (np.ndim(inputs) - 2)
        ones = np.ones((1, *np.shape(inputs)[1:]))
        mean = (np.abs(self.mean).reshape(shape) * ones).reshape(-1)
        std = (self.std.reshape(shape) * ones).reshape(-1)
        mean_norm = float(np.linalg.norm(mean))
        scaled = np.linalg.norm(flat * std[None, :], axis=1)
        unit = 2.0**-53
        return lipschitz * unit * (mean_norm + scaled) * (1 + 1e-6)


def widened(evaluation: Evaluation, extra: np.ndarray) -> Evaluation:
    """`evaluation` with `extra` (N,) more error in its logits (L2): added to the allowance
    and to a head's `rest` (which enters each margin's bound as sqrt(2) rest, at least
    what an error of norm `extra` in the logits can change a margin by)."""
    allowance = np.nextafter(evaluation.allowance + extra, np.inf)
    head = evaluation.head
    if head is not None:
        head = replace(head, rest=np.nextafter(head.rest + extra, np.inf))
    return Evaluation(evaluation.logits, allowance, head)


def certified_spec(spec: CertificateSpec, preprocessing: Preprocessing | None) -> CertificateSpec:
    """The spec of the certified function: the model after `preprocessing` (when given)."""
    return spec if preprocessing is None else spec.scaled(preprocessing.lipschitz)


@dataclass(frozen=True)
class CertifyResult:
    certificates: Certificates
    labels: np.ndarray
    summary: Summary
    spec: CertificateSpec  # of the certified function (preprocessing included)
    allowance: np.ndarray  # per-sample error bound of the logits the radius was computed from
    seconds: float
    exact: np.ndarray | None = None  # per sample: recomputed by the exact evaluator
    # per sample: a bound of (exact function's signed radius - reported), see mcr_gap.py
    mcr_gap: np.ndarray | None = None

    @property
    def exact_samples(self) -> int:
        """How many samples needed the exact path (their certificate depended on rounding)."""
        return 0 if self.exact is None else int(np.sum(self.exact))

    @property
    def mcr_gap_bound(self) -> float | None:
        """A guaranteed bound of how far the MCR is below the exact function's (a radius)."""
        if self.mcr_gap is None or len(self.mcr_gap) == 0:
            return None
        return float(np.nextafter(np.sum(self.mcr_gap) * (1 + 1e-12) / len(self.mcr_gap), np.inf))


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
    exact: Evaluator | None = None,
    mcr_tolerance: float | None = None,
) -> CertifyResult:
    """Certified radius of every sample of `dataset`, and the summary metrics.

    `spec` is the model's (without preprocessing); the evaluator bounds its own error. Pixels
    are divided by 255 in the evaluator's input precision (correctly rounded); with
    preprocessing, in float64 and then rounded once by the evaluator. The allowances cover
    that one rounding of the input.

    With an `exact` evaluator, the samples whose certificate the allowance may change (at an
    eps of `eps_list`, or by flipping the decision) are evaluated again there, and both
    evaluations of those samples must agree within their allowances. With `mcr_tolerance`
    (a fraction), more samples are recomputed there, those of the largest allowance first,
    until the guaranteed bound of how far the MCR is below the exact function's is at most
    that fraction of the MCR (`lipcert.certify.mcr_gap`).
    """
    labels = model_labels(dataset, spec)
    tracker = McrTracker(mcr_tolerance)
    function_spec = certified_spec(spec, preprocessing)
    parts: list[Certificates] = []
    allowances: list[np.ndarray] = []
    recomputed: list[np.ndarray] = []
    eps_values = np.array([e.value for e in eps_list], dtype=np.float64)
    started = time.perf_counter()
    for certificates, allowance, selected, _ in certify_batches(
        evaluator,
        spec,
        method,
        dataset,
        eps_values,
        batch_size=batch_size,
        preprocessing=preprocessing,
        exact=exact,
        mcr=tracker,
    ):
        parts.append(certificates)
        allowances.append(allowance)
        recomputed.append(selected)
        if on_batch is not None:
            on_batch(len(allowance))
    seconds = time.perf_counter() - started
    certificates = _concatenate(parts, method)
    summary = summarise(certificates, labels, eps_list, dataset.class_names)
    return CertifyResult(
        certificates,
        labels,
        summary,
        function_spec,
        np.concatenate(allowances) if allowances else np.zeros(0),
        seconds,
        np.concatenate(recomputed) if exact is not None and recomputed else None,
        np.concatenate(tracker.gaps) if tracker.gaps else None,
    )


def certify_batches(
    evaluator: Evaluator,
    spec: CertificateSpec,
    method: Method,
    dataset: Dataset,
    eps_values: np.ndarray,
    *,
    batch_size: int,
    preprocessing: Preprocessing | None = None,
    exact: Evaluator | None = None,
    mcr: McrTracker | None = None,
) -> Iterator[tuple[Certificates, np.ndarray, np.ndarray, np.ndarray]]:
    """`certify_batch` on each batch of `dataset` in order, as `certify_dataset` runs them:
    pixels in the evaluator's input type (float64 with preprocessing), the preprocessing
    applied, the certified function's spec (`spec` is the model's). A Ray worker certifies
    its shards through this, so that its batches are a one-process run's, bit for bit.
    Each batch comes with its per-sample MCR gap bounds (`lipcert.certify.mcr_gap`; with no
    tolerance, a batch's bounds depend on that batch alone). `mcr`: one tracker for all the
    batches (`certify_dataset`'s, with its tolerance); else a fresh one per batch."""
    function_spec = certified_spec(spec, preprocessing)
    labels = model_labels(dataset, spec)
    for start, inputs in batches_ahead(evaluator, dataset, batch_size, preprocessing):
        tracker = McrTracker(None) if mcr is None else mcr
        certificates, allowance, selected = certify_batch(
            evaluator,
            function_spec,
            method,
            inputs,
            eps_values,
            exact=exact,
            preprocessing=preprocessing,
            labels=labels[start : start + len(inputs)],
            mcr=tracker,
        )
        yield certificates, allowance, selected, tracker.gaps[-1]


def batches_ahead(
    evaluator: Evaluator,
    dataset: Dataset,
    batch_size: int,
    preprocessing: Preprocessing | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """(start, inputs) of each batch of `dataset`: pixels in the evaluator's input type
    (float64 with preprocessing, then applied).

    An evaluator with a `prefetch` method (the default one: onnxruntime in a background
    thread) is handed each batch one batch ahead of its `evaluate`, so that onnxruntime
    computes batch k + 1 while batch k is certified (its float64 tail, allowance, radii and
    exact recomputation); the results are those of evaluating the batches in turn. Meanwhile
    torch runs on one thread: its work per batch is small, and more threads next to
    onnxruntime's oversubscribe the cores (measured several times slower on 2 cores)."""
    pixel_type = evaluator.input_dtype if preprocessing is None else np.float64
    batches = (
        (start, pixels if preprocessing is None else preprocessing.apply(pixels))
        for start, pixels, _ in dataset.batches(batch_size, dtype=pixel_type)
    )
    yield from evaluated_ahead(evaluator, batches)


def evaluated_ahead(
    evaluator: Evaluator, batches: Iterable[tuple[Key, np.ndarray]]
) -> Generator[tuple[Key, np.ndarray], None, None]:
    """The (key, inputs) pairs of `batches`, in order, each inputs handed to the
    evaluator's `prefetch` (if it has one) one pair ahead: the caller then evaluates them in
    that order (`batches_ahead`, the API's arrays and batches). The results are those of
    evaluating the batches in turn; torch runs on one thread until the generator ends or
    is closed (close it if the loop may stop early: `contextlib.closing`)."""
    prefetch = getattr(evaluator, "prefetch", None)
    if prefetch is None:
        yield from batches
        return
    with _torch_threads(1):
        previous = None
        for batch in batches:
            prefetch(batch[1])
            if previous is not None:
                yield previous
            previous = batch
        if previous is not None:
            yield previous


@contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    """torch's intra-op thread count set to `count` for the block, then restored."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def certify_batch(
    evaluator: Evaluator,
    spec: CertificateSpec,
    method: Method,
    inputs: np.ndarray,
    eps_values: np.ndarray,
    *,
    exact: Evaluator | None = None,
    preprocessing: Preprocessing | None = None,
    labels: np.ndarray | None = None,
    mcr: McrTracker | None = None,
) -> tuple[Certificates, np.ndarray, np.ndarray]:
    """Certificates of one batch of inputs of the certified function `spec` describes.

    Returns them with the allowance each radius was computed with and, per sample, whether
    the `exact` evaluator recomputed it (see `certify_dataset`). With `preprocessing`, the
    inputs are its float64 output and the allowances grow by its `input_allowance`.
    With the batch's `labels` and an `mcr` tracker, each sample's MCR gap bound is added to
    the tracker, after the samples its tolerance asks for are recomputed.
    """
    extra = None
    if preprocessing is not None:
        extra = preprocessing.input_allowance(inputs, spec.lipschitz_bound)
    evaluation = evaluator.evaluate(inputs)
    if extra is not None:
        evaluation = widened(evaluation, extra)
    if evaluation.logits.shape[1] != spec.num_logits:
        raise UsageError(
            f"the model gave {evaluation.logits.shape[1]} logits, its graph {spec.num_logits}"
        )
    certificates = certify_logits(
        evaluation.logits, spec, method, evaluation.allowance, evaluation.head
    )
    allowance = evaluation.allowance
    selected = np.zeros(len(inputs), dtype=bool)
    gap = None
    if labels is not None and mcr is not None:
        gap = mcr_gap(
            evaluation.logits,
            spec,
            method,
            evaluation.allowance,
            labels,
            certificates,
            evaluation.head,
        )
    if exact is not None:
        # the certificates of the computed logits with no allowance (the likely exact ones)
        unrounded = certify_logits(
            evaluation.logits, spec, method, np.zeros(len(evaluation.allowance))
        )
        selected = rounding_matters(evaluation, certificates, spec, eps_values, unrounded)
        selected = _within_budget(selected, unrounded.radius, certificates, eps_values)
        index = np.flatnonzero(selected)
        rounds = 0
        if not len(index) and gap is not None and labels is not None and mcr is not None:
            index = _more_for_mcr(mcr, gap, unrounded, certificates, labels, selected, 0)
        while len(index):
            subset = np.asarray(inputs)[index]
            precise = exact.evaluate(subset)
            if subset.dtype != np.float64:
                # The inputs may be the exact ones (pixels / 255) rounded once to float32: the
                # exact evaluator's allowance covers float64 rounding only, so the change of
                # the logits that rounding can make, L u ||x||, is added.
                unit = float(np.finfo(subset.dtype).eps) / 2
                shift = spec.lipschitz_bound * unit * input_norms(subset) * (1 + 1e-6)
                precise = Evaluation(precise.logits, precise.allowance + shift)
            if extra is not None:
                precise = widened(precise, extra[index])
            check_agreement(
                precise,
                evaluation.take(index),
                f"{exact.name} and {evaluator.name}",
            )
            fresh = certify_logits(precise.logits, spec, method, precise.allowance)
            certificates = _replace(certificates, index, fresh)
            allowance = allowance.copy()
            allowance[index] = precise.allowance
            selected[index] = True
            rounds += 1
            if gap is None or labels is None or mcr is None:
                break
            part = labels[index]
            gap[index] = mcr_gap(precise.logits, spec, method, precise.allowance, part, fresh)
            index = _more_for_mcr(mcr, gap, unrounded, certificates, labels, selected, rounds)
    if gap is not None and labels is not None and mcr is not None:
        mcr.add(gap, signed_reported(certificates, labels))
    return certificates, allowance, selected


def rounding_matters(
    evaluation: Evaluation,
    certificates: Certificates,
    spec: CertificateSpec,
    eps_values: np.ndarray,
    unrounded: Certificates | None = None,
) -> np.ndarray:
    """Samples whose exact certificate at a requested eps the allowance may hide.

    The radius with the allowance taken off is a sound lower bound whatever is recomputed;
    the exact radius lies between it and the radius with the allowance added. The float32
    error actually made is about 10^5 times below the allowance, so the exact radius is, in
    practice, the radius computed with no allowance. A sample is selected when that radius
    is above an eps its certificate does not reach: there the exact function most likely
    certifies what the allowance hides. (A sample whose radius with no allowance is below
    an eps is most likely not certified there by the exact function either, and the lower
    bound already says so.) Ties and non-finite logits are selected too. `unrounded`: the
    certificates of the logits with no allowance, if already computed.
    """
    if unrounded is None:
        zero = np.zeros(len(evaluation.allowance))
        unrounded = certify_logits(evaluation.logits, spec, certificates.method, zero)
    middle = unrounded.radius
    lower = certificates.radius
    hidden = np.any(
        (lower[:, None] <= eps_values[None, :]) & (eps_values[None, :] < middle[:, None]), axis=1
    )
    odd = (certificates.status == Status.TIE) | (certificates.status == Status.NON_FINITE)
    return hidden | odd


# At most this fraction of a batch is recomputed by the exact evaluator (5 to 10 times the
# cost of a float32 sample): on a model whose radii all sit near a requested eps, the samples
# most likely to gain are chosen, and the others keep their sound lower bound.
EXACT_BUDGET = 0.1


def _within_budget(
    selected: np.ndarray,
    middle: np.ndarray,
    certificates: Certificates,
    eps_values: np.ndarray,
) -> np.ndarray:
    """`selected`, cut to EXACT_BUDGET of the batch (ties and non-finite logits first, then
    the samples whose radius with no allowance, `middle`, passes an eps by the largest share
    of what the allowance takes off)."""
    limit = max(1, int(EXACT_BUDGET * len(selected)))
    if selected.sum() <= limit:
        return selected
    lower = certificates.radius
    width = np.maximum(middle - lower, 1e-300)
    passed = np.where(
        (lower[:, None] <= eps_values[None, :]) & (eps_values[None, :] < middle[:, None]),
        (middle[:, None] - eps_values[None, :]) / width[:, None],
        0.0,
    ).max(axis=1, initial=0.0)
    odd = (certificates.status == Status.TIE) | (certificates.status == Status.NON_FINITE)
    score = np.where(odd, np.inf, passed)
    score = np.where(selected, score, -np.inf)
    chosen = np.zeros(len(selected), dtype=bool)
    chosen[np.argsort(-score, kind="stable")[:limit]] = True
    return chosen & selected


# Rounds of MCR recomputation within one batch before every sample with a gap is taken.
_MCR_ROUNDS = 3


def _more_for_mcr(
    mcr: McrTracker,
    gap: np.ndarray,
    unrounded: Certificates,
    certificates: Certificates,
    labels: np.ndarray,
    selected: np.ndarray,
    rounds: int,
) -> np.ndarray:
    """The samples of the batch to recompute next for `mcr`'s tolerance (none without one):
    each expected to reach the signed radius of its computed logits with no allowance (the
    certificates `unrounded`)."""
    if mcr.tolerance is None:
        return np.zeros(0, dtype=np.int64)
    signed = signed_reported(certificates, labels)
    estimate = signed_reported(unrounded, labels)
    return mcr.choose(gap, signed, estimate, ~selected, everything=rounds >= _MCR_ROUNDS)


def _replace(base: Certificates, index: np.ndarray, new: Certificates) -> Certificates:
    """`base` with the samples `index` taken from `new` (of length len(index))."""
    fields = {}
    for name in ("prediction", "runner_up", "margin", "radius", "status"):
        values = getattr(base, name).copy()
        values[index] = getattr(new, name)
        fields[name] = values
    return Certificates(method=base.method, **fields)


@dataclass(frozen=True)
class Evaluators:
    """The evaluator certify runs, the exact one it recomputes samples with (or None), and
    the spec with the rounding allowance of the main evaluator's precision."""

    evaluator: Evaluator
    exact: Evaluator | None
    spec: CertificateSpec


def choose_evaluators(
    loaded: LoadedModel,
    analysis: Analysis,
    margins: str,
    threads: int | None,
    device: str | None = None,
) -> Evaluators:
    """float32 (default): onnxruntime with its rounding allowance, and the float64 graph for
    the samples whose certificate that allowance may change. float64: the float64 graph for
    every sample, each batch compared with onnxruntime. On a CUDA `device`: the float64 graph
    on the GPU for every sample (`lipcert.evaluators.torch_device`), its first batch compared
    with onnxruntime on the CPU."""
    from lipcert.bounds.compose import FLOAT64_UNIT_ROUNDOFF
    from lipcert.evaluators.exact import Float64Evaluator
    from lipcert.evaluators.onnx_runtime import OnnxRuntimeEvaluator
    from lipcert.evaluators.posterior import PosteriorEvaluator

    spec64 = analysis.spec_for_precision(FLOAT64_UNIT_ROUNDOFF)
    runtime = OnnxRuntimeEvaluator(loaded, threads=threads, spec=analysis.spec)
    if device is not None and device != "cpu":
        return device_evaluators(analysis, spec64, device, runtime, threads)
    if margins == "float64":
        exact = Float64Evaluator(analysis.graph, spec64, reference=runtime, threads=threads)
        return Evaluators(exact, None, spec64)
    exact = Float64Evaluator(analysis.graph, spec64, threads=threads)
    if PosteriorEvaluator.applies(loaded, runtime.session):
        try:
            posterior = PosteriorEvaluator(loaded, analysis, threads, plain=runtime, exact=exact)
        except ModelLoadError:  # onnxruntime cannot run the model with the extra outputs
            return Evaluators(runtime, exact, analysis.spec)
        return Evaluators(posterior, exact, analysis.spec)
    return Evaluators(runtime, exact, analysis.spec)


def device_evaluators(
    analysis: Analysis,
    spec64: CertificateSpec,
    device: str,
    reference: Evaluator | None,
    threads: int | None = None,
) -> Evaluators:
    """The float64 graph on a torch `device` for every sample (no exact pass: it is the
    exact path), its first batch checked against `reference`."""
    from lipcert.evaluators.torch_device import TorchDeviceEvaluator, resolve_device

    evaluator = TorchDeviceEvaluator(
        analysis.graph, spec64, resolve_device(device), reference=reference, threads=threads
    )
    return Evaluators(evaluator, None, evaluator.spec)


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
