"""Feature vectors and labels from a CSV file: one row per sample, a header naming the columns.

Every column but the label column is a feature, read as the float64 number nearest to what is
written (no scaling: certified radii are in the units of the features; the float32 evaluators
round it to float32, which their allowance covers). Labels are class indices
(integers, or floats of integral value), or -1/+1 for a binary task (then classes 0 and 1).
Only the rows a limit needs are read.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from lipcert.datasets.checks import pixel_like_note
from lipcert.datasets.dataset import Dataset
from lipcert.errors import DatasetError

DEFAULT_LABEL_COLUMN = "label"
# A field longer than this is not a number: refuse it rather than parse megabytes.
_MAX_FIELD = 64
_MAX_COLUMNS = 1 << 16


def read_csv(path: Path, *, limit: int | None, label_column: str | None = None) -> Dataset:
    """A features dataset from a CSV file with a header row and a label column."""
    source = str(path)
    label_name = DEFAULT_LABEL_COLUMN if label_column is None else label_column
    features: list[list[float]] = []
    labels: list[float] = []
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise DatasetError(f"{source}: expected a header row but the file is empty")
            header = [name.strip() for name in header]
            if len(header) > _MAX_COLUMNS:
                raise DatasetError(f"{source}: expected at most {_MAX_COLUMNS} columns")
            if label_name not in header:
                raise DatasetError(
                    f"{source}: expected a label column {label_name!r} (set it with "
                    f"label_column=, --label-column) but the header has {header[:20]!r}"
                )
            if header.count(label_name) > 1:
                raise DatasetError(f"{source}: the header names {label_name!r} more than once")
            if len(header) < 2:
                raise DatasetError(f"{source}: expected feature columns beside {label_name!r}")
            label_index = header.index(label_name)
            for row in reader:
                if limit is not None and len(labels) >= limit:
                    break
                if not row or all(not field.strip() for field in row):
                    continue
                line = reader.line_num
                if len(row) != len(header):
                    raise DatasetError(
                        f"{source}: line {line} has {len(row)} fields, the header {len(header)}"
                    )
                values = [_number(field, source, line, header[i]) for i, field in enumerate(row)]
                labels.append(values.pop(label_index))
                features.append(values)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{source}: cannot read the CSV file: {exc}") from exc
    if not labels:
        raise DatasetError(f"{source}: expected at least one data row after the header")
    return _dataset(path, features, labels, label_name)


def _dataset(path: Path, features: list[list[float]], labels: list[float], column: str) -> Dataset:
    source = str(path)
    classes = _class_indices(labels, source, column)
    values = np.array(features, dtype=np.float64)
    return Dataset(
        name=path.name,
        split="file",
        images=values,
        labels=classes,
        num_classes=max(2, int(classes.max()) + 1),
        class_names=None,
        source=source,
        kind="features",
        notes=pixel_like_note(values),
    )


def _number(field: str, source: str, line: int, column: str) -> float:
    text = field.strip()
    if len(text) > _MAX_FIELD:
        raise DatasetError(f"{source}: line {line}, column {column!r}: expected a number")
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if "_" in text or not math.isfinite(value):
        raise DatasetError(
            f"{source}: line {line}, column {column!r}: expected a finite number but found {text!r}"
        )
    return value


def _class_indices(labels: list[float], source: str, column: str) -> np.ndarray:
    values = np.array(labels, dtype=np.float64)
    if np.any(values == -1) and np.all((values == -1) | (values == 1)):
        return (values > 0).astype(np.int64)
    bad = np.flatnonzero((values != np.round(values)) | (values < 0) | (values > 2**31 - 1))
    if bad.size:
        raise DatasetError(
            f"{source}: expected class indices 0, 1, ... (or -1/+1) in column {column!r} but "
            f"data row {int(bad[0]) + 1} holds {labels[int(bad[0])]!r}"
        )
    return values.astype(np.int64)
