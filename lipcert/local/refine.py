"""Refinement: local certificates for the samples whose global radius falls short.

The global certificate r = margin / K holds everywhere at once and costs a few microseconds.
For a sample whose r is below a radius the user asked about, a local certificate
(`lipcert.local.crown`: linear bound propagation over the L2 ball around that sample) may
prove more: if f_p - f_j > 0 over the whole ball of radius eps for every j != p, no input
within eps changes the decision. A refined sample's radius is the largest eps proven this way
(slightly above the eps asked, so that "radius > eps" counts it); it is never lowered, and
a model with an op the local bounds cannot relax keeps its global certificates.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from lipcert.bounds.compose import Analysis
from lipcert.certify.metrics import Eps, summarise
from lipcert.certify.pipeline import CertifyResult, Preprocessing
from lipcert.certify.radii import Certificates, Status
from lipcert.datasets import Dataset
from lipcert.local.crown import (
    LocalBounds,
    LocalTimeout,
    ModelCache,
    center_bounds,
    prepare_model,
)
from lipcert.local.network import LocalUnsupported, build_network

# A ball slightly larger than each eps asked: the metrics count radius > eps.
_OVERSHOOT = 1.0 + 1e-9


@dataclass(frozen=True)
class RefineOptions:
    """Which radii to try, and how much time to spend.

    `eps`: the radii to prove, each tried for the samples whose radius is below it (in
    increasing order, stopping at the first that fails). `upper`: when given, a bisection
    between the best radius proven and `upper`, `bisection_steps` times. `budget`: seconds for
    the whole refinement; samples not reached keep their global certificate.
    """

    eps: tuple[float, ...] = ()
    upper: float | None = None
    bisection_steps: int = 6
    budget: float | None = None
    sample_budget: float | None = None


@dataclass
class RefineResult:
    """New radii and statuses; `refined[i]` is True when sample i's radius is local."""

    radius: np.ndarray
    status: np.ndarray
    refined: np.ndarray
    attempted: int = 0
    skipped_for_time: int = 0
    seconds: float = 0.0
    unsupported: str | None = None
    crown_rows: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return int(np.sum(self.refined))


class LocalCertifier:
    """The local certificate of one model: build once, certify many balls."""

    def __init__(
        self,
        analysis: Analysis,
        input_scale: np.ndarray | None = None,
        max_rows: int | None = None,
        input_offset: np.ndarray | None = None,
    ) -> None:
        self.max_rows = max_rows
        network = build_network(analysis.graph, analysis.tensor_bounds)
        self.cache: ModelCache = prepare_model(network, input_scale, input_offset=input_offset)

    def certify(
        self,
        center: np.ndarray,
        prediction: int,
        eps: float,
        *,
        center_bounds: tuple[dict, dict] | None = None,
        deadline: float | None = None,
    ) -> tuple[bool, np.ndarray, int]:
        """(proven, lower bounds of the margins, CROWN rows used) for the ball of radius eps.

        Raises LocalTimeout when `deadline` (a time.perf_counter value) passes first.
        """
        bounds = LocalBounds(
            self.cache,
            center,
            eps,
            center_bounds=center_bounds,
            max_rows=self.max_rows,
            deadline=deadline,
        )
        lows = bounds.margins(prediction)
        return bool(np.all(lows > 0)), lows, bounds.bounds.crown_rows

    def center_bounds(self, center: np.ndarray) -> tuple[dict, dict]:
        """Bounds of every tensor at the exact center: shared by every radius tried."""
        return center_bounds(self.cache, center)


def refine_certificates(
    analysis: Analysis,
    certificates: Certificates,
    inputs: Callable[[int], np.ndarray],
    options: RefineOptions,
    *,
    input_scale: np.ndarray | None = None,
    on_sample: Callable[[int, int], None] | None = None,
    max_rows: int | None = None,
    input_offset: np.ndarray | None = None,
) -> RefineResult:
    """Try local certificates where the global radius is below a radius of `options`.

    `inputs(i)` gives sample i as the model reads it (after any --mean/--std), float64;
    `input_scale` is d(model input)/d(pixel) elementwise (1/std), so that radii stay in pixel
    space; `input_offset` the pixel value the model input 0 stands for (the mean, broadcast).
    `on_sample(done, total)` reports progress. The certificates given are not changed.
    """
    radius = certificates.radius.astype(np.float64).copy()
    status = certificates.status.copy()
    refined = np.zeros(len(radius), dtype=bool)
    result = RefineResult(radius=radius, status=status, refined=refined)
    goals = sorted({float(e) for e in options.eps if e > 0})
    candidates = [
        i
        for i in range(len(radius))
        if status[i] in (Status.CERTIFIED, Status.WITHIN_ALLOWANCE)
        and certificates.prediction[i] >= 0
        and radius[i] >= 0  # a negative or NaN radius breaks the Certificates contract
        and (
            any(radius[i] <= e for e in goals)
            or (options.upper is not None and radius[i] < options.upper)
        )
    ]
    if not candidates:
        return result
    started = time.perf_counter()
    try:
        certifier = LocalCertifier(analysis, input_scale, max_rows, input_offset)
    except LocalUnsupported as exc:
        result.unsupported = str(exc)
        result.skipped_for_time = 0
        return result
    total = len(candidates)
    deadline = None if options.budget is None else started + options.budget
    for done, i in enumerate(candidates):
        if deadline is not None and time.perf_counter() > deadline:
            result.skipped_for_time = total - done
            break
        result.attempted += 1
        best = _refine_one(
            certifier,
            inputs(i),
            int(certificates.prediction[i]),
            radius[i],
            goals,
            options,
            result,
            deadline,
        )
        if best > radius[i]:
            radius[i] = best
            status[i] = Status.CERTIFIED
            refined[i] = True
        if on_sample is not None:
            on_sample(done + 1, total)
    result.seconds = time.perf_counter() - started
    return result


def _refine_one(
    certifier: LocalCertifier,
    center: np.ndarray,
    prediction: int,
    start: float,
    goals: list[float],
    options: RefineOptions,
    result: RefineResult,
    deadline: float | None,
) -> float:
    """The largest radius proven locally for one sample (`start` when none)."""
    began = time.perf_counter()
    if options.sample_budget is not None:
        own = began + options.sample_budget
        deadline = own if deadline is None else min(deadline, own)
    center_bounds = certifier.center_bounds(center)
    best = float(start)

    def out_of_time() -> bool:
        return deadline is not None and time.perf_counter() > deadline

    def proves(eps: float) -> bool:
        try:
            proven, _, rows = certifier.certify(
                center, prediction, eps, center_bounds=center_bounds, deadline=deadline
            )
        except LocalTimeout:
            return False
        result.crown_rows += rows
        return proven

    for eps in goals:
        if best > eps:
            continue
        if out_of_time():
            return best
        target = eps * _OVERSHOOT
        if not proves(target):
            break
        best = target
    if options.upper is not None and options.upper > best:
        low, high = best, float(options.upper)
        for _ in range(options.bisection_steps):
            if out_of_time():
                break
            middle = 0.5 * (low + high)
            if proves(middle):
                low = middle
            else:
                high = middle
        best = low
    return best


def refine_result(
    result: CertifyResult,
    analysis: Analysis,
    dataset: Dataset,
    preprocessing: Preprocessing | None,
    eps_list: list[Eps],
    options: RefineOptions,
    *,
    on_sample: Callable[[int, int], None] | None = None,
) -> tuple[CertifyResult, RefineResult]:
    """A certify result with local certificates where they prove more; the summary recomputed.

    Samples are read again from `dataset` in float64 (pixels / 255), through the
    preprocessing when there is one: the ball is in the dataset's space, as for the global
    radius.
    """
    scale = offset = None
    if preprocessing is not None:
        shape = analysis.graph.input_shape
        # in float64 whatever the arrays' type: 1 / std in float32 was up to 3.6e-8 below the
        # exact scale, and the local bounds proved a ball that much larger than asked
        per_channel = 1.0 / np.asarray(preprocessing.std, dtype=np.float64)
        scale = np.broadcast_to(per_channel.reshape(-1, *([1] * (len(shape) - 1))), shape).astype(
            np.float64
        )
        means = np.asarray(preprocessing.mean, dtype=np.float64).reshape(
            -1, *([1] * (len(shape) - 1))
        )
        offset = np.broadcast_to(means, shape).astype(np.float64)

    def sample(i: int) -> np.ndarray:
        raw = dataset.images[i : i + 1]
        pixels = raw.astype(np.float64)
        if dataset.kind == "images" and raw.dtype == np.uint8:
            pixels /= 255.0
        if preprocessing is not None:
            pixels = preprocessing.apply(pixels)
        return pixels[0]

    refinement = refine_certificates(
        analysis,
        result.certificates,
        sample,
        options,
        input_scale=scale,
        on_sample=on_sample,
        input_offset=offset,
    )
    certificates = replace(result.certificates, radius=refinement.radius, status=refinement.status)
    summary = summarise(certificates, result.labels, eps_list, dataset.class_names)
    return replace(result, certificates=certificates, summary=summary), refinement


__all__ = [
    "LocalCertifier",
    "RefineOptions",
    "RefineResult",
    "refine_certificates",
    "refine_result",
]
