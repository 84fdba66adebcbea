"""Certifying a whole dataset through the API: `certify_dataset` and its report."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
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
from lipcert.certify.metrics import Eps, Summary, summarise
from lipcert.certify.pipeline import STATUS_NAMES
from lipcert.certify.radii import Certificates, Method
from lipcert.errors import UsageError

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_EPS = (36 / 255, 72 / 255, 108 / 255, 1.0)
_STATUS_CODES = {name: int(status) for status, name in STATUS_NAMES.items()}


def certify_dataset(
    model: Model,
    data: Any,
    eps: Sequence[float | Eps] = DEFAULT_EPS,
    *,
    precision: Precision = "float32",
    certificate: Certificate = "auto",
    batch_size: int = DEFAULT_BATCH_SIZE,
    class_names: Sequence[str] | None = None,
) -> DatasetReport:
    """Certify every sample of `data` and summarise: accuracy, certified accuracy, MCR.

    `data` is one of: a pair of arrays (x, y); an iterable of (x, y) batches, numpy or torch
    (a torch DataLoader is one); a `lipcert.datasets.Dataset`; or a dataset name or .npz path
    as `lipcert.datasets.load_dataset` reads it (pixels scaled to [0, 1], as the CLI does).
    `eps` are the radii of certified accuracy (floats > 0).
    """
    eps_list = eps_thresholds(eps)
    if isinstance(data, (str, Path)):
        from lipcert.datasets import load_dataset

        # An image folder is resized and cropped to the model's input size.
        data = load_dataset(str(data), model_shape=model.input_shape)
    names = tuple(class_names) if class_names is not None else None
    if _is_dataset(data):
        names = names or data.class_names
        batches: Iterable[tuple[Any, Any]] = (
            (pixels, labels)
            for _, pixels, labels in data.batches(batch_size, dtype=_pixel_type(precision))
        )
    elif isinstance(data, tuple) and len(data) == 2:
        batches = _slices(_as_array(data[0]), _as_array(data[1]), batch_size)
    elif isinstance(data, Iterable):
        batches = data
    else:
        raise UsageError(
            "expected data as (x, y) arrays, an iterable of (x, y) batches or a Dataset but "
            f"got {type(data).__name__}"
        )
    parts: list[CertifiedBatch] = []
    started = time.perf_counter()
    eps_values = [e.value for e in eps_list]
    for pair in batches:
        try:
            x, y = pair
        except (TypeError, ValueError):
            raise UsageError(
                f"expected each batch as a pair (x, y) but got {type(pair).__name__}"
            ) from None
        parts.append(
            model.certify(
                x,
                y,
                eps=eps_values,
                precision=precision,
                certificate=certificate,
                batch_size=batch_size,
            )
        )
    seconds = time.perf_counter() - started
    if not parts or sum(len(p) for p in parts) == 0:
        raise UsageError("expected at least one sample but the data is empty")
    samples = _concatenate(parts)
    return DatasetReport(model.name, samples, eps_list, names, precision, model, seconds)


def eps_thresholds(eps: Sequence[float | Eps] | float) -> list[Eps]:
    """Radii as Eps thresholds: floats > 0 (an Eps keeps its label), none repeated."""
    values = [eps] if isinstance(eps, (int, float, Eps)) else list(eps)
    thresholds: list[Eps] = []
    for value in values:
        if isinstance(value, Eps):
            threshold = value
        else:
            if isinstance(value, (bool, str)) or not isinstance(value, (int, float, np.number)):
                raise UsageError(f"expected eps as numbers > 0 but got {value!r}")
            threshold = Eps(f"{float(value):.6g}", float(value))
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


def _pixel_type(precision: Precision) -> type[np.floating]:
    # As the CLI: pixels / 255 rounded once to the evaluator's precision.
    return np.float32 if precision == "float32" else np.float64


def _slices(x: np.ndarray, y: np.ndarray, size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    if len(x) != len(y):
        raise UsageError(f"expected as many labels as inputs but got {len(y)} and {len(x)}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise UsageError(f"expected batch_size >= 1 but got {size!r}")
    for start in range(0, len(x), size):
        yield x[start : start + size], y[start : start + size]


def _concatenate(parts: list[CertifiedBatch]) -> CertifiedBatch:
    labels = [p.label for p in parts]
    return CertifiedBatch(
        prediction=np.concatenate([p.prediction for p in parts]),
        runner_up=np.concatenate([p.runner_up for p in parts]),
        margin=np.concatenate([p.margin for p in parts]),
        radius=np.concatenate([p.radius for p in parts]),
        status=np.concatenate([p.status for p in parts]),
        allowance=np.concatenate([p.allowance for p in parts]),
        method=parts[0].method,
        label=np.concatenate([lab for lab in labels if lab is not None]),
    )


@dataclass(frozen=True)
class DatasetReport:
    """Certificates of every sample of a dataset and their summary.

    `summary` holds accuracy, certified accuracy at each eps (correct and radius > eps), the
    MCR (mean signed radius), and a row per class; the per-sample table is `to_pandas()`.
    """

    model_name: str
    samples: CertifiedBatch
    eps: list[Eps]
    class_names: tuple[str, ...] | None
    precision: Precision
    model: Model
    seconds: float

    @cached_property
    def summary(self) -> Summary:
        """Accuracy, certified accuracy at each eps, MCR, radii and a row per class."""
        return summarise(self._certificates(), self.labels, self.eps, self.class_names)

    @property
    def labels(self) -> np.ndarray:
        assert self.samples.label is not None  # certify_dataset always has labels
        return self.samples.label

    @property
    def n(self) -> int:
        return len(self.samples)

    @property
    def accuracy(self) -> float:
        return self.summary.accuracy

    @property
    def mcr(self) -> float:
        """Mean certifiable robustness: the mean radius, counted negative where wrong."""
        return self.summary.mcr

    @property
    def certified_accuracy(self) -> dict[float, float]:
        """eps -> fraction of samples correct with a certified radius > eps."""
        return {e.value: v for e, v in self.summary.certified_accuracy}

    @property
    def lipschitz_bound(self) -> float:
        return self.model.lipschitz_bound

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
        from lipcert.reports.certify_report import samples_frame

        return samples_frame(self.labels, self._certificates())

    def to_csv(self, path: str | Path) -> None:
        """Write `to_pandas()` as CSV, atomically, with every digit of the radii."""
        from lipcert.reports.files import write_atomically

        frame = self.to_pandas()
        write_atomically(Path(path), lambda handle: frame.to_csv(handle, index=False))

    def to_dict(self) -> dict[str, Any]:
        """The summary as plain Python values (the keys of `lipcert certify --json`)."""
        from lipcert.reports.certify_report import breakdown_json

        summary = self.summary
        spec = self.model.spec_for(self.precision)
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
                "max": float(np.max(self.samples.allowance, initial=0.0)),
            },
            **breakdown_json(summary),
            "seconds": self.seconds,
        }

    def to_json(self, indent: int | None = 2) -> str:
        """`to_dict()` as a JSON string (no NaN: an empty class cannot occur)."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def curve(self) -> tuple[np.ndarray, np.ndarray]:
        """Certified accuracy against radius: (r, fraction correct with radius > r) at the
        corners of that step function (`lipcert.plots.certified_accuracy_curve`)."""
        from lipcert.plots import certified_accuracy_curve

        correct = self.samples.correct
        assert correct is not None  # certify_dataset always has labels
        return certified_accuracy_curve(self.samples.radius, correct)

    def _certificates(self) -> Certificates:
        samples = self.samples
        return Certificates(
            prediction=samples.prediction,
            runner_up=samples.runner_up,
            margin=samples.margin,
            radius=samples.radius,
            status=np.array([_STATUS_CODES[s] for s in samples.status], dtype=np.int64),
            method=Method(samples.method),
        )
