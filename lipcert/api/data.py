"""Certifying a whole dataset through the API: `certify_dataset` and its report."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, replace
from fractions import Fraction
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lipcert.api.model import (
    DEFAULT_BATCH_SIZE,
    Certificate,
    CertifiedBatch,
    Model,
    Precision,
    _as_array,
)
from lipcert.certify.gates import FRACTION_GATES, Gate, check_threshold, evaluate_gates
from lipcert.certify.mcr_gap import McrTracker
from lipcert.certify.metrics import Eps, Summary, eps_from_fraction, summarise
from lipcert.certify.pipeline import (
    CertifyResult,
    Evaluators,
    Preprocessing,
    certified_spec,
    certify_batch,
    evaluated_ahead,
)
from lipcert.certify.pipeline import _concatenate as concatenate_certificates
from lipcert.certify.pipeline import certify_dataset as pipeline_certify_dataset
from lipcert.certify.radii import Certificates, Method
from lipcert.datasets import Dataset, DatasetLocation
from lipcert.datasets.classes import check_model_classes
from lipcert.errors import UsageError

if TYPE_CHECKING:
    import pandas as pd

    from lipcert.local.refine import RefineResult

DEFAULT_EPS = (36 / 255, 72 / 255, 108 / 255, 1.0)


def certify_dataset(
    model: Model,
    data: Any,
    eps: Sequence[float | Fraction | Eps] = DEFAULT_EPS,
    *,
    precision: Precision = "float32",
    certificate: Certificate = "auto",
    batch_size: int = DEFAULT_BATCH_SIZE,
    class_names: Sequence[str] | None = None,
    mean: float | Sequence[float] | np.ndarray | None = None,
    std: float | Sequence[float] | np.ndarray | None = None,
    threads: int | None = None,
    device: str | None = None,
    ray: str | None = None,
    on_batch: Callable[[int], None] | None = None,
    mcr_tolerance: float | None = None,
) -> DatasetReport:
    """Certify every sample of `data` and summarise: accuracy, certified accuracy, MCR.

    `data` is one of: a pair of arrays (x, y); an iterable of (x, y) batches, numpy or torch
    (a torch DataLoader is one); a `lipcert.datasets.Dataset`; or a dataset name or .npz path
    as `lipcert.load_dataset` reads it (pixels scaled to [0, 1], as the CLI does).
    `eps` are the radii of certified accuracy: numbers > 0, or exact fractions
    (`Fraction(36, 255)`: the smallest float >= 36/255, as `--eps 36/255`); see
    `eps_thresholds`.

    `mean` and `std` (one value, or one per channel or feature) make the certified function
    x -> model((x - mean) / std): radii are then in the space of `data`, as
    `lipcert certify --mean --std` computes them. `threads` caps onnxruntime's threads,
    `device` ("cuda", "cuda:N") runs the graph in float64 on that GPU (see `Model.certify`),
    and `ray` ("local", or a cluster's address) shards a Dataset over the workers of a Ray
    cluster (`pip install "lipcert[ray]"`), with the numbers of a one-process run.
    `on_batch(n)` is called after each batch of n samples (a progress bar, say). Every kind
    of `data` runs as `lipcert certify` runs it: onnxruntime computes the next batch in a
    background thread while one is certified, and torch runs on one thread meanwhile (its
    thread count is restored when the call returns or raises).
    `mcr_tolerance` (a fraction, e.g. 0.005): with float32 precision, also recompute in
    float64 the samples of largest allowance until the MCR is guaranteed within that fraction
    of the exact function's (`report.result.mcr_gap_bound` is the bound; not with `ray`).
    """
    eps_list = eps_thresholds(eps)
    if mcr_tolerance is not None and not (0 <= mcr_tolerance < 1):
        raise UsageError(f"expected mcr_tolerance in [0, 1) but got {mcr_tolerance!r}")
    method = model.method(certificate)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError(f"expected batch_size >= 1 but got {batch_size!r}")
    if isinstance(data, (str, Path)):
        data = load_dataset(str(data), model_shape=model.input_shape)
    names = tuple(class_names) if class_names is not None else None
    if _is_dataset(data):
        if tuple(data.images.shape[1:]) != model.input_shape:
            raise UsageError(
                f"expected samples of shape {model.input_shape!r} (the model's input) but "
                f"{data.name!r} holds {tuple(data.images.shape[1:])!r}"
            )
        check_model_classes(data, model.num_classes)
        preprocessing = preprocessing_of(mean, std, int(data.images.shape[1]))
        if ray is not None and mcr_tolerance is not None:
            raise UsageError("expected mcr_tolerance without ray (not supported on Ray)")
        if ray is not None:
            result, run_precision = _certify_on_ray(
                model,
                data,
                eps_list,
                method,
                precision,
                preprocessing,
                batch_size,
                threads,
                device,
                ray,
                on_batch,
            )
        else:
            evaluators = model._evaluators_for(precision, device, threads)
            result = pipeline_certify_dataset(
                evaluators.evaluator,
                evaluators.spec,
                method,
                data,
                eps_list,
                batch_size=batch_size,
                preprocessing=preprocessing,
                on_batch=on_batch,
                exact=evaluators.exact,
                mcr_tolerance=mcr_tolerance,
            )
            run_precision = evaluators.evaluator.precision
        if names is not None and names != data.class_names:
            summary = summarise(result.certificates, result.labels, eps_list, names)
            result = replace(result, summary=summary)
        return DatasetReport(model, result, eps_list, run_precision, data, preprocessing)
    if ray is not None:
        raise UsageError("expected a Dataset (or a dataset name or path) to shard over Ray")
    if isinstance(data, tuple) and len(data) == 2:
        batches: Iterable[tuple[Any, Any]] = _slices(
            _as_array(data[0]), _as_array(data[1]), batch_size
        )
    elif isinstance(data, Iterable):
        batches = data
    else:
        raise UsageError(
            "expected data as (x, y) arrays, an iterable of (x, y) batches or a Dataset but "
            f"got {type(data).__name__}"
        )
    preprocessing = preprocessing_of(mean, std, model.input_shape[0])
    evaluators = model._evaluators_for(precision, device, threads)
    result = _certify_batches(
        model,
        batches,
        evaluators,
        method,
        eps_list,
        preprocessing,
        batch_size,
        names,
        on_batch,
        McrTracker(mcr_tolerance),
    )
    return DatasetReport(
        model, result, eps_list, evaluators.evaluator.precision, None, preprocessing
    )


def load_dataset(
    name_or_path: str,
    *,
    split: str = "test",
    data_dir: str | Path | None = None,
    limit: int | None = None,
    label_column: str | None = None,
    resize: int | None = None,
    crop: int | None = None,
    model_shape: Sequence[int] | None = None,
) -> Dataset:
    """A named dataset's split (cifar10, cifar100, mnist, fashion-mnist), a .npz or a .csv
    file, or imagefolder:PATH, as `lipcert certify --dataset` reads it (see
    `lipcert.datasets.load_dataset`). `model_shape`, the input shape of the model the data
    is for, sets an image folder's default resize and crop."""
    from lipcert.datasets import load_dataset as read

    return read(
        name_or_path,
        split=split,
        data_dir=data_dir,
        limit=limit,
        label_column=label_column,
        resize=resize,
        crop=crop,
        model_shape=None if model_shape is None else tuple(int(d) for d in model_shape),
    )


def dataset_locations(data_dir: str | Path | None = None) -> list[DatasetLocation]:
    """Where each named dataset was found (or not), and every place searched, in order
    (`data_dir` first, then $LIPCERT_DATA, then download caches): `lipcert datasets`."""
    from lipcert.datasets import dataset_locations as locate

    return locate(data_dir)


def preprocessing_of(
    mean: float | Sequence[float] | np.ndarray | None,
    std: float | Sequence[float] | np.ndarray | None,
    channels: int,
) -> Preprocessing | None:
    """x -> (x - mean) / std with one value, or one per channel (or feature); None for none."""
    if mean is None and std is None:
        return None
    values = []
    for name, given, default in (("mean", mean, 0.0), ("std", std, 1.0)):
        raw = np.asarray(default if given is None else _as_array(given))
        if raw.dtype.kind not in "iuf":  # numpy reads the text "0_5" as 5.0, True as 1.0
            raise UsageError(f"expected {name} as numbers but got {given!r}")
        array = np.atleast_1d(raw.astype(np.float64))
        if array.ndim != 1 or array.size not in (1, channels):
            raise UsageError(
                f"expected {name} as one value or {channels} (one per channel) but got {given!r}"
            )
        if not np.all(np.isfinite(array)):
            raise UsageError(f"expected finite {name} values but got {given!r}")
        values.append(np.broadcast_to(array, (channels,)).copy())
    if np.any(values[1] <= 0):
        raise UsageError(f"expected std > 0 but got {std!r}")
    return Preprocessing(mean=values[0], std=values[1])


def _certify_batches(
    model: Model,
    batches: Iterable[Any],
    evaluators: Evaluators,
    method: Method,
    eps_list: list[Eps],
    preprocessing: Preprocessing | None,
    batch_size: int,
    class_names: tuple[str, ...] | None,
    on_batch: Callable[[int], None] | None,
    tracker: McrTracker | None = None,
) -> CertifyResult:
    """certify_batch on batches of arrays, as `pipeline.certify_dataset` on a Dataset:
    each chunk of at most `batch_size` samples handed to the evaluator one ahead
    (`pipeline.evaluated_ahead`), with the results of evaluating them in turn."""
    spec = certified_spec(evaluators.spec, preprocessing)
    eps_values = np.array([e.value for e in eps_list], dtype=np.float64)
    parts: list[tuple[Certificates, np.ndarray, np.ndarray]] = []
    labels: list[np.ndarray] = []

    def chunks() -> Iterator[tuple[tuple[np.ndarray, int | None], np.ndarray]]:
        """((the chunk's labels, the size of its batch if it ends one), chunk inputs)."""
        for pair in batches:
            try:
                x, y = pair
            except (TypeError, ValueError):
                raise UsageError(
                    f"expected each batch as a pair (x, y) but got {type(pair).__name__}"
                ) from None
            inputs = model._inputs(x)
            batch_labels = model.labels(y, len(inputs))
            labels.append(batch_labels)
            for begin in range(0, len(inputs), batch_size):
                chunk = inputs[begin : begin + batch_size]
                if preprocessing is not None:
                    chunk = preprocessing.apply(chunk)
                end = len(inputs) if begin + batch_size >= len(inputs) else None
                yield (batch_labels[begin : begin + batch_size], end), chunk

    started = time.perf_counter()
    with closing(evaluated_ahead(evaluators.evaluator, chunks())) as ahead:
        for (chunk_labels, batch_end), chunk in ahead:
            parts.append(
                certify_batch(
                    evaluators.evaluator,
                    spec,
                    method,
                    chunk,
                    eps_values,
                    exact=evaluators.exact,
                    preprocessing=preprocessing,
                    labels=chunk_labels,
                    mcr=tracker,
                )
            )
            if on_batch is not None and batch_end is not None:
                on_batch(batch_end)
    seconds = time.perf_counter() - started
    label_array = np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64)
    if len(label_array) == 0:
        raise UsageError("expected at least one sample but the data is empty")
    certificates = concatenate_certificates([p[0] for p in parts], method)
    return CertifyResult(
        certificates,
        label_array,
        summarise(certificates, label_array, eps_list, class_names),
        spec,
        np.concatenate([p[1] for p in parts]),
        seconds,
        np.concatenate([p[2] for p in parts]) if evaluators.exact is not None else None,
        np.concatenate(tracker.gaps) if tracker is not None and tracker.gaps else None,
    )


def _certify_on_ray(
    model: Model,
    data: Dataset,
    eps_list: list[Eps],
    method: Method,
    precision: Precision,
    preprocessing: Preprocessing | None,
    batch_size: int,
    threads: int | None,
    device: str | None,
    address: str,
    on_batch: Callable[[int], None] | None,
) -> tuple[CertifyResult, str]:
    """The result of a one-process run, computed by a Ray cluster's workers; the driver
    builds no evaluator (each worker builds its own)."""
    from lipcert.certify.distributed import ShardJob, certify_on_ray

    spec, has_exact = model._run_spec(precision, device)
    job = ShardJob(
        loaded=model.loaded,
        analysis=model.analysis,
        margins=precision,
        threads=threads,
        device=device,
        spec=spec,
        method=method,
        preprocessing=preprocessing,
        eps_values=np.array([e.value for e in eps_list], dtype=np.float64),
        batch_size=batch_size,
        has_exact=has_exact,
    )
    result = certify_on_ray(job, data, eps_list, address=address or "local", on_batch=on_batch)
    return result, "float32" if has_exact else "float64"


def eps_thresholds(eps: Sequence[float | Fraction | Eps] | float | Fraction) -> list[Eps]:
    """Radii as Eps thresholds, none repeated: numbers > 0 (floats taken as they are), an
    exact `fractions.Fraction` (36/255 as Fraction(36, 255): the smallest float >= it, as
    `lipcert certify --eps 36/255` takes it, labelled in lowest terms), or an Eps (kept).
    Strings are refused: the command line parses its own --eps."""
    values = [eps] if isinstance(eps, (int, float, Fraction, Eps)) else list(eps)
    thresholds: list[Eps] = []
    for value in values:
        if isinstance(value, Eps):
            threshold = value
        elif isinstance(value, Fraction):
            threshold = eps_from_fraction(value)
        else:
            if isinstance(value, (bool, str)) or not isinstance(value, (int, float, np.number)):
                raise UsageError(f"expected eps as numbers > 0 but got {value!r}")
            # every digit: a label rounded up (2/3 as "0.666667") would claim radii above
            # the value the radii were compared with
            threshold = Eps(repr(float(value)), float(value))
        if not math.isfinite(threshold.value) or threshold.value <= 0:
            raise UsageError(f"expected eps > 0 but got {threshold.value!r}")
        if any(t.value == threshold.value for t in thresholds):
            raise UsageError(f"expected distinct eps but {threshold.value!r} is repeated")
        thresholds.append(threshold)
    if not thresholds:
        raise UsageError("expected at least one eps")
    return thresholds


def _is_dataset(data: Any) -> bool:
    from lipcert.datasets import Dataset

    return isinstance(data, Dataset)


def _slices(x: np.ndarray, y: np.ndarray, size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    if len(x) != len(y):
        raise UsageError(f"expected as many labels as inputs but got {len(y)} and {len(x)}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise UsageError(f"expected batch_size >= 1 but got {size!r}")
    for start in range(0, len(x), size):
        yield x[start : start + size], y[start : start + size]


@dataclass(frozen=True)
class DatasetReport:
    """Certificates of every sample of a dataset and their summary.

    `summary` holds accuracy, certified accuracy at each eps (correct and radius > eps), the
    MCR (mean signed radius), and a row per class; the per-sample table is `to_pandas()`.
    `result` holds the arrays the summary comes from; `dataset` is the Dataset certified
    (None for arrays or batches), `precision` the arithmetic of the logits.
    """

    model: Model
    result: CertifyResult
    eps: list[Eps]
    precision: str
    dataset: Dataset | None = None
    preprocessing: Preprocessing | None = None
    refinement: RefineResult | None = None  # `refine()`: the local certificates it added

    @property
    def model_name(self) -> str:
        return self.model.name

    @cached_property
    def samples(self) -> CertifiedBatch:
        """Per-sample prediction, margin, radius, status and allowance, with the labels."""
        result = self.result
        return CertifiedBatch.from_certificates(
            result.certificates, result.allowance, result.labels
        )

    @property
    def summary(self) -> Summary:
        """Accuracy, certified accuracy at each eps, MCR, radii and a row per class."""
        return self.result.summary

    @property
    def labels(self) -> np.ndarray:
        return self.result.labels

    @property
    def seconds(self) -> float:
        """Time spent certifying (refinement not included)."""
        return self.result.seconds

    @property
    def exact_samples(self) -> int:
        """Samples recomputed in float64 because the rounding allowance could change them."""
        return self.result.exact_samples

    @property
    def n(self) -> int:
        return self.summary.n

    @property
    def accuracy(self) -> float:
        return self.summary.accuracy

    @property
    def mcr(self) -> float:
        """Mean certifiable robustness: the mean radius, counted negative where wrong."""
        return self.summary.mcr

    @property
    def mcr_lower_bound(self) -> float:
        """A guaranteed lower bound of the exact function's MCR (the `mcr` itself may lie
        above it where predictions are wrong: their radii are lower bounds); -inf when a
        logit is NaN or infinite. The `min_mcr` gate compares this."""
        from lipcert.certify.mcr_gap import mcr_lower_bound

        result = self.result
        return mcr_lower_bound(result.certificates, result.labels, result.spec, result.allowance)

    @property
    def certified_accuracy(self) -> dict[float, float]:
        """eps -> fraction of samples correct with a certified radius > eps."""
        return {e.value: v for e, v in self.summary.certified_accuracy}

    @property
    def lipschitz_bound(self) -> float:
        """Bound of the certified function: the model after the preprocessing, if any."""
        return float(self.result.spec.lipschitz_bound)

    @property
    def notes(self) -> tuple[str, ...]:
        """What the model's analysis and the dataset reader want the reader to know."""
        dataset_notes = () if self.dataset is None else tuple(self.dataset.notes)
        return self.model.notes + dataset_notes

    def gates(
        self,
        *,
        min_accuracy: float | None = None,
        min_certified_accuracy: float | None = None,
        gate_eps: float | Eps | None = None,
        min_mcr: float | None = None,
    ) -> list[Gate]:
        """CI gates on this report: each passes when its value is at least its threshold.

        The certified-accuracy gate is at `gate_eps`, one of the report's eps (default the
        first); accuracies are fractions in [0, 1], the MCR a radius.
        """
        for name, value in (
            ("min_accuracy", min_accuracy),
            ("min_certified_accuracy", min_certified_accuracy),
            ("min_mcr", min_mcr),
        ):
            if value is not None:
                check_threshold(value, fraction=name in FRACTION_GATES, origin=name)
        if gate_eps is not None and min_certified_accuracy is None:
            raise UsageError("expected min_certified_accuracy with gate_eps")
        chosen = None
        if min_certified_accuracy is not None:
            chosen = self.eps[0]
            if gate_eps is not None:
                wanted = gate_eps.value if isinstance(gate_eps, Eps) else gate_eps
                match = [e for e in self.eps if e.value == wanted]
                if not match:
                    raise UsageError(
                        f"expected gate_eps among the report's eps "
                        f"{[e.value for e in self.eps]!r} but got {gate_eps!r}"
                    )
                chosen = match[0]
        return evaluate_gates(
            self.summary,
            mcr_lower=None if min_mcr is None else self.mcr_lower_bound,
            gate_eps=chosen,
            min_certified_accuracy=min_certified_accuracy,
            min_accuracy=min_accuracy,
            min_mcr=min_mcr,
        )

    def refine(
        self,
        *,
        budget: float | None = None,
        radius: float | None = None,
        on_sample: Callable[[int, int], None] | None = None,
    ) -> DatasetReport:
        """A new report where local certificates (linear bounds over the L2 ball) prove more
        than the global radius: tried at each eps the radius is below, then bisected up to
        `radius` when given. `budget`: seconds for the whole refinement (samples not reached
        keep their radius). Never larger than proven. Needs the report of a Dataset.
        `on_sample(done, total)` reports progress."""
        from lipcert.local.refine import RefineOptions, refine_result

        if self.dataset is None:
            raise UsageError(
                "expected the report of a Dataset to refine (the samples are read again)"
            )
        for name, value in (("budget", budget), ("radius", radius)):
            if value is not None and not value > 0:
                raise UsageError(f"expected {name} > 0 but got {value!r}")
        options = RefineOptions(eps=tuple(e.value for e in self.eps), upper=radius, budget=budget)
        result, refinement = refine_result(
            self.result,
            self.model.analysis,
            self.dataset,
            self.preprocessing,
            self.eps,
            options,
            on_sample=on_sample,
        )
        return replace(self, result=result, refinement=refinement)

    def per_class(self) -> pd.DataFrame:
        """One row per class: n, accuracy, certified accuracy at each eps, MCR."""
        import pandas as pd

        rows = []
        for row in self.summary.per_class:
            entry: dict[str, Any] = {"label": row.label, "name": row.name, "n": row.n}
            entry["accuracy"] = row.accuracy
            for e, value in zip(self.eps, row.certified_accuracy, strict=True):
                entry[f"certified_accuracy@{e.label}"] = value
            entry["mean_radius"] = row.mean_radius
            entry["mcr"] = row.mcr
            rows.append(entry)
        return pd.DataFrame(rows)

    def to_pandas(self) -> pd.DataFrame:
        """One row per sample, the columns of `lipcert certify --csv`."""
        from lipcert.reports.certify_report import csv_frame

        return csv_frame(self.result, self._refined())

    def to_csv(self, path: str | Path) -> None:
        """Write `to_pandas()` as CSV, atomically, with every digit of the radii (the file
        `lipcert certify --csv` writes)."""
        from lipcert.reports import certify_report
        from lipcert.reports.files import write_atomically

        refined = self._refined()
        write_atomically(
            Path(path), lambda handle: certify_report.write_csv(handle, self.result, refined)
        )

    def to_dict(self) -> dict[str, Any]:
        """The summary as plain Python values (the keys of `lipcert certify --json`)."""
        from lipcert.reports.certify_report import breakdown_json

        summary = self.summary
        spec = self.result.spec
        return {
            "model": self.model_name,
            "n": summary.n,
            "accuracy": summary.accuracy,
            "mcr": summary.mcr,
            "mean_radius": summary.mean_radius,
            "median_radius": summary.median_radius,
            "certified_accuracy": [
                {"eps": e.value, "label": e.label, "value": v}
                for e, v in summary.certified_accuracy
            ],
            "lipschitz_bound": self.lipschitz_bound,
            "certificate": self.samples.method,
            "fp_allowance": {
                "precision": self.precision,
                "constant": spec.fp_error_constant,
                "slope": spec.fp_error_slope,
                "max": float(np.max(self.result.allowance, initial=0.0)),
                "exact_samples": self.exact_samples,
            },
            **breakdown_json(summary),
            "seconds": self.seconds,
        }

    def to_json(self, indent: int | None = 2) -> str:
        """`to_dict()` as a JSON string (no NaN: an empty class cannot occur)."""
        from lipcert.reports.format import json_numbers

        return json.dumps(json_numbers(self.to_dict()), indent=indent, allow_nan=False)

    def curve(self) -> tuple[np.ndarray, np.ndarray]:
        """Certified accuracy against radius: (r, fraction correct with radius > r) at the
        corners of that step function (`lipcert.plots.certified_accuracy_curve`)."""
        from lipcert.plots import certified_accuracy_curve

        correct = self.result.certificates.prediction == self.labels
        return certified_accuracy_curve(self.result.certificates.radius, correct)

    def _refined(self) -> np.ndarray | None:
        return None if self.refinement is None else self.refinement.refined
