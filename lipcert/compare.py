"""Comparing models on one dataset: one table, and the accuracy-robustness Pareto front.

A model is on the front when no other model is at least as good on both clean accuracy and
the robustness measure, and strictly better on one. The robustness measure is the MCR (mean
certifiable robustness) by default, or the certified accuracy at one eps.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lipcert.api.data import DEFAULT_EPS, DatasetReport, certify_dataset, eps_thresholds
from lipcert.api.model import Certificate, Model, Precision, load
from lipcert.certify.metrics import Eps
from lipcert.errors import UsageError

if TYPE_CHECKING:
    import pandas as pd


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """For each (a, b) point, whether no other point dominates it (maximising both).

    q dominates p when q >= p on both coordinates and q > p on one. Equal points do not
    dominate each other. A NaN coordinate is never on the front and never dominates.
    """
    array = np.asarray(points, dtype=np.float64).reshape(len(points), 2)
    valid = np.all(np.isfinite(array), axis=1)
    front = []
    for i, p in enumerate(array):
        if not valid[i]:
            front.append(False)
            continue
        others = array[valid]
        dominated = np.any(np.all(others >= p, axis=1) & np.any(others > p, axis=1))
        front.append(not bool(dominated))
    return front


@dataclass(frozen=True)
class Comparison:
    """Reports of several models on the same data, and which of them form the Pareto front."""

    names: tuple[str, ...]
    reports: tuple[DatasetReport, ...]
    eps: tuple[Eps, ...]
    robustness: str  # "mcr" or "certified_accuracy@<eps label>"
    on_front: tuple[bool, ...]
    load_seconds: tuple[float, ...]

    def robustness_values(self) -> list[float]:
        return [_robustness(r, self.robustness, self.eps) for r in self.reports]

    @property
    def front(self) -> list[str]:
        """Names of the models on the Pareto front, in the order given."""
        return [n for n, on in zip(self.names, self.on_front, strict=True) if on]

    def rows(self) -> list[dict[str, Any]]:
        """One dict per model: the table's columns."""
        rows = []
        for name, report, on, seconds in zip(
            self.names, self.reports, self.on_front, self.load_seconds, strict=True
        ):
            row: dict[str, Any] = {"model": name, "n": report.n, "accuracy": report.accuracy}
            row["mcr"] = report.mcr
            for e, value in report.summary.certified_accuracy:
                row[f"certified_accuracy@{e.label}"] = value
            row["lipschitz_bound"] = report.lipschitz_bound
            row["load_seconds"] = seconds
            row["certify_seconds"] = report.seconds
            row["pareto"] = on
            rows.append(row)
        return rows

    def to_pandas(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame(self.rows())

    def to_csv(self, path: str | Path) -> None:
        from lipcert.reports.files import write_atomically

        frame = self.to_pandas()
        write_atomically(Path(path), lambda handle: frame.to_csv(handle, index=False))

    def to_dict(self) -> dict[str, Any]:
        return {
            "robustness": self.robustness,
            "eps": [{"eps": e.value, "label": e.label} for e in self.eps],
            "models": self.rows(),
            "pareto_front": self.front,
        }

    def to_json(self, indent: int | None = 2) -> str:
        from lipcert.reports.format import json_numbers

        return json.dumps(json_numbers(self.to_dict()), indent=indent, allow_nan=False)


def compare_models(
    models: Sequence[Model | str | Path],
    data: Any,
    eps: Sequence[float | Eps] = DEFAULT_EPS,
    *,
    robustness: str | float | Eps = "mcr",
    names: Sequence[str] | None = None,
    precision: Precision = "float32",
    certificate: Certificate = "auto",
    batch_size: int = 256,
    input_shape: Sequence[int] | None = None,
    arch: str | None = None,
    trust: bool = False,
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
) -> Comparison:
    """Certify every model on the same `data` (as `certify_dataset` takes it) and find the
    Pareto front of clean accuracy against `robustness`: "mcr", or an eps (a float, added to
    `eps` when missing) for the certified accuracy at that radius.

    Paths are loaded with `lipcert.load` (`input_shape`, `arch` and `trust` as there);
    `mean` and `std` normalise the inputs of every model, as in `certify_dataset`.
    """
    if not models:
        raise UsageError("expected at least one model to compare")
    if names is not None and len(names) != len(models):
        raise UsageError(f"expected {len(models)} names but got {len(names)}")
    eps_list = eps_thresholds(eps)
    measure = _measure(robustness, eps_list)
    if not isinstance(data, (tuple, list)) and isinstance(data, (str, Path)):
        from lipcert.datasets import load_dataset

        data = load_dataset(str(data))
    elif not isinstance(data, tuple) and not _is_dataset(data):
        # An iterable of batches is read once per model: keep it.
        data = _materialise(data)
    # Import the exact evaluator's torch once before any clock starts: the first model's
    # time would otherwise include it.
    import torch  # noqa: F401

    reports: list[DatasetReport] = []
    loads: list[float] = []
    labels: list[str] = []
    for index, model in enumerate(models):
        started = time.perf_counter()
        if not isinstance(model, Model):
            model = load(model, input_shape=input_shape, arch=arch, trust=trust)
        loads.append(time.perf_counter() - started)
        labels.append(names[index] if names is not None else model.name)
        reports.append(
            certify_dataset(
                model,
                data,
                eps_list,
                precision=precision,
                certificate=certificate,
                batch_size=batch_size,
                mean=mean,
                std=std,
            )
        )
    if len(set(labels)) != len(labels):
        raise UsageError(f"expected distinct model names but got {labels!r}")
    points = [(r.accuracy, _robustness(r, measure, eps_list)) for r in reports]
    return Comparison(
        names=tuple(labels),
        reports=tuple(reports),
        eps=tuple(eps_list),
        robustness=measure,
        on_front=tuple(pareto_front(points)),
        load_seconds=tuple(loads),
    )


def _measure(robustness: str | float | Eps, eps_list: list[Eps]) -> str:
    if robustness == "mcr":
        return "mcr"
    if isinstance(robustness, str):
        raise UsageError(f"expected robustness 'mcr' or an eps but got {robustness!r}")
    (wanted,) = eps_thresholds([robustness])
    match = next((e for e in eps_list if e.value == wanted.value), None)
    if match is None:
        eps_list.append(wanted)
        match = wanted
    return f"certified_accuracy@{match.label}"


def _robustness(report: DatasetReport, measure: str, eps_list: Sequence[Eps]) -> float:
    if measure == "mcr":
        return report.mcr
    label = measure.split("@", 1)[1]
    return next(v for e, v in report.summary.certified_accuracy if e.label == label)


def _is_dataset(data: Any) -> bool:
    from lipcert.datasets import Dataset

    return isinstance(data, Dataset)


def _materialise(data: Any) -> list[tuple[Any, Any]]:
    try:
        return [(x, y) for x, y in data]
    except (TypeError, ValueError):
        raise UsageError(
            "expected data as (x, y) arrays, an iterable of (x, y) batches or a Dataset"
        ) from None
