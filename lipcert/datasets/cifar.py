"""CIFAR-10 and CIFAR-100, from the python (pickled) batches or the binary batches.

Both versions store an image as 3072 bytes: 1024 red, then 1024 green, then 1024 blue,
each a 32x32 row-major plane, which is (3, 32, 32) in NCHW order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lipcert.datasets.catalog import CATALOG
from lipcert.datasets.checks import check_label_range, check_same_count
from lipcert.datasets.dataset import Dataset
from lipcert.datasets.files import file_size, read_bytes
from lipcert.datasets.safe_pickle import restricted_loads
from lipcert.errors import DatasetError

IMAGE_BYTES = 3 * 32 * 32
_TRAIN_BATCHES = 5


def python_files(name: str, split: str) -> tuple[str, ...]:
    """File names of the python version for a split, in reading order."""
    if name == "cifar10":
        if split == "test":
            return ("test_batch",)
        return tuple(f"data_batch_{i}" for i in range(1, _TRAIN_BATCHES + 1))
    return (split,)


def binary_files(name: str, split: str) -> tuple[str, ...]:
    """File names of the binary version for a split, in reading order."""
    return tuple(f"{stem}.bin" for stem in python_files(name, split))


def parse_python_batch(
    data: bytes, *, source: str, label_key: str, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64 of one pickled batch.

    label_key is "labels" for CIFAR-10 and "fine_labels" for CIFAR-100. The pickle is read
    with the restricted unpickler and its content checked: keys, dtype, shape, label range.
    """
    batch = _str_keys(restricted_loads(data, source=source), source=source)
    missing = sorted({"data", label_key} - batch.keys())
    if missing:
        raise DatasetError(
            f"{source}: expected keys 'data' and {label_key!r} in the batch but "
            f"{', '.join(map(repr, missing))} missing (keys found: {sorted(batch)!r})"
        )
    pixels = batch["data"]
    if not isinstance(pixels, np.ndarray):
        raise DatasetError(
            f"{source}: expected 'data' to be a numpy array but found {type(pixels).__name__}"
        )
    if pixels.dtype != np.uint8 or pixels.ndim != 2 or pixels.shape[1] != IMAGE_BYTES:
        raise DatasetError(
            f"{source}: expected 'data' of dtype uint8 and shape (N, {IMAGE_BYTES}) but found "
            f"dtype {str(pixels.dtype)!r} and shape {pixels.shape!r}"
        )
    if pixels.shape[0] == 0:
        raise DatasetError(f"{source}: expected at least one image but 'data' is empty")
    labels = _int_labels(batch[label_key], source=source, key=label_key)
    check_same_count(len(pixels), len(labels), source=source)
    check_label_range(labels, num_classes, source=source, what=repr(label_key))
    return pixels.reshape(-1, 3, 32, 32), labels


def record_layout(name: str) -> tuple[int, int]:
    """(label bytes, record bytes) of a binary record.

    A CIFAR-10 record is 1 label byte + 3072 pixel bytes; a CIFAR-100 record is 1 coarse
    label byte, 1 fine label byte, 3072 pixel bytes, and the fine label is the one kept.
    """
    label_bytes = 1 if name == "cifar10" else 2
    return label_bytes, label_bytes + IMAGE_BYTES


def parse_binary_records(data: bytes, *, source: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64 of whole binary records."""
    label_bytes, record = record_layout(name)
    _check_record_count(len(data), record, source)
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, record)
    if label_bytes == 2:
        check_label_range(records[:, 0], 20, source=source, what="coarse labels")
    labels = records[:, label_bytes - 1].astype(np.int64)
    check_label_range(labels, CATALOG[name].num_classes, source=source, what="labels")
    images = np.ascontiguousarray(records[:, label_bytes:]).reshape(-1, 3, 32, 32)
    return images, labels


def read_python(folder: Path, name: str, split: str, limit: int | None) -> Dataset:
    """CIFAR-10 or CIFAR-100 from the python version's pickled batches in `folder`."""
    info = CATALOG[name]
    label_key = "labels" if name == "cifar10" else "fine_labels"
    parts: list[tuple[np.ndarray, np.ndarray]] = []
    for file_name in python_files(name, split):
        path = folder / file_name
        parts.append(
            parse_python_batch(
                read_bytes(path),
                source=str(path),
                label_key=label_key,
                num_classes=info.num_classes,
            )
        )
        if limit is not None and sum(len(labels) for _, labels in parts) >= limit:
            break
    class_names = info.class_names if name == "cifar10" else _python_fine_names(folder)
    return _dataset(name, split, parts, limit, class_names, folder)


def read_binary(folder: Path, name: str, split: str, limit: int | None) -> Dataset:
    """CIFAR-10 or CIFAR-100 from the binary version's .bin batches in `folder`.

    With a limit, only the records needed are read.
    """
    _, record = record_layout(name)
    parts: list[tuple[np.ndarray, np.ndarray]] = []
    remaining = limit
    for file_name in binary_files(name, split):
        path = folder / file_name
        size = file_size(path)
        _check_record_count(size, record, str(path))
        wanted = size if remaining is None else min(size, remaining * record)
        images, labels = parse_binary_records(read_bytes(path, wanted), source=str(path), name=name)
        parts.append((images, labels))
        if remaining is not None:
            remaining -= len(labels)
            if remaining <= 0:
                break
    class_names = CATALOG[name].class_names if name == "cifar10" else _binary_fine_names(folder)
    return _dataset(name, split, parts, limit, class_names, folder)


def _check_record_count(size: int, record: int, source: str) -> None:
    if size == 0 or size % record:
        raise DatasetError(
            f"{source}: expected a whole number (>= 1) of {record}-byte records but found "
            f"{size} bytes: {size // record} records and {size % record} bytes left over"
        )


def _dataset(
    name: str,
    split: str,
    parts: list[tuple[np.ndarray, np.ndarray]],
    limit: int | None,
    class_names: tuple[str, ...] | None,
    folder: Path,
) -> Dataset:
    images = parts[0][0] if len(parts) == 1 else np.concatenate([p[0] for p in parts])
    labels = parts[0][1] if len(parts) == 1 else np.concatenate([p[1] for p in parts])
    return Dataset(
        name=name,
        split=split,
        images=images[:limit],
        labels=labels[:limit],
        num_classes=CATALOG[name].num_classes,
        class_names=class_names,
        source=str(folder),
    )


def _python_fine_names(folder: Path) -> tuple[str, ...] | None:
    path = folder / "meta"
    if not path.is_file():
        return None
    meta = _str_keys(restricted_loads(read_bytes(path), source=str(path)), source=str(path))
    names = meta.get("fine_label_names")
    if not isinstance(names, list) or not all(isinstance(n, (bytes, str)) for n in names):
        raise DatasetError(
            f"{path}: expected 'fine_label_names' to be a list of strings but found "
            f"{type(names).__name__}"
        )
    return _checked_names([_text(n) for n in names], source=str(path))


def _binary_fine_names(folder: Path) -> tuple[str, ...] | None:
    path = folder / "fine_label_names.txt"
    if not path.is_file():
        return None
    text = read_bytes(path).decode("latin-1")
    return _checked_names([line.strip() for line in text.splitlines() if line.strip()], str(path))


def _checked_names(names: list[str], source: str) -> tuple[str, ...]:
    if len(names) != CATALOG["cifar100"].num_classes:
        raise DatasetError(
            f"{source}: expected {CATALOG['cifar100'].num_classes} fine label names but found "
            f"{len(names)}"
        )
    return tuple(names)


def _str_keys(obj: object, *, source: str) -> dict[str, object]:
    # Python 2 wrote keys as str, which come back as bytes; Python 3 pickles have str keys.
    if not isinstance(obj, dict):
        raise DatasetError(
            f"{source}: expected the pickle to hold a dict but found {type(obj).__name__}"
        )
    if not all(isinstance(key, (bytes, str)) for key in obj):
        raise DatasetError(
            f"{source}: expected string keys in the batch but found {sorted(map(repr, obj))!r}"
        )
    return {_text(key): value for key, value in obj.items()}


def _text(value: bytes | str) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value


def _int_labels(value: object, *, source: str, key: str) -> np.ndarray:
    if isinstance(value, np.ndarray):
        if value.ndim != 1 or value.dtype.kind not in "iu":
            raise DatasetError(
                f"{source}: expected {key!r} to be integers of shape (N,) but found dtype "
                f"{str(value.dtype)!r} and shape {value.shape!r}"
            )
        return value.astype(np.int64)
    if not isinstance(value, list):
        raise DatasetError(
            f"{source}: expected {key!r} to be a list of integers but found {type(value).__name__}"
        )
    for index, item in enumerate(value):
        # Range-checked here, not after conversion, so that a huge int cannot overflow int64.
        if type(item) is not int or not 0 <= item < 2**31:
            raise DatasetError(
                f"{source}: expected {key!r} to hold non-negative integers but found "
                f"{item!r} at index {index}"
            )
    return np.array(value, dtype=np.int64)
