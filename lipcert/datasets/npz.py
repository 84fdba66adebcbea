"""Images and labels from .npz archives: a user's file with arrays x and y, or Keras' mnist.npz.

Archives are opened with allow_pickle=False, and each array's .npy header is checked against
the archive member's size before numpy allocates the array.
"""

from __future__ import annotations

import zipfile
import zlib
from math import prod
from pathlib import Path

import numpy as np

from lipcert.datasets.catalog import CATALOG
from lipcert.datasets.checks import check_label_range, check_same_count, check_unit_interval
from lipcert.datasets.dataset import Dataset
from lipcert.errors import DatasetError

_CHANNELS = (1, 3, 4)
# Labels above this are not class indices but a sign of a wrong array.
_MAX_LABEL = 2**31 - 1
# What zipfile and np.load raise on a damaged archive: NotImplementedError for unknown
# compression methods or versions, RuntimeError for an encrypted member.
_ARCHIVE_ERRORS = (
    OSError,
    ValueError,
    EOFError,
    KeyError,
    NotImplementedError,
    RuntimeError,
    zipfile.BadZipFile,
    zlib.error,
)


def read_npz(path: Path, *, limit: int | None) -> Dataset:
    """A dataset from a .npz file holding x (images) and y (labels).

    x is (N, H, W), (N, C, H, W) or (N, H, W, C) with C in {1, 3, 4} (taken as such only when
    the array is not plausible as NCHW); uint8 is kept, floats must lie in [0, 1]. y is (N,)
    integers (floats of integral value accepted) or (N, K) one-hot; labels that are all -1 or +1
    (the sign convention of binary classifiers) become classes 0 and 1. num_classes is K for
    one-hot labels, else max label + 1, and at least 2; it is taken over the whole file, so
    it does not change with `limit`.
    """
    source = str(path)
    arrays = _load_arrays(path, ("x", "y"))
    x, y = arrays["x"], arrays["y"]
    if x.ndim not in (3, 4):
        raise DatasetError(
            f"{source}: expected 'x' of shape (N, H, W), (N, C, H, W) or (N, H, W, C) but "
            f"found shape {x.shape!r}"
        )
    check_same_count(int(x.shape[0]), _count(y, source=source, key="y"), source=source)
    labels, width = _labels(y, source=source, key="y")
    num_classes = max(2, width or 0, int(labels.max()) + 1 if labels.size else 0)
    return Dataset(
        name=path.name,
        split="file",
        images=_images(x[:limit], source=source, key="x"),
        labels=labels[:limit],
        num_classes=num_classes,
        class_names=None,
        source=source,
    )


def read_keras_mnist(path: Path, name: str, split: str, limit: int | None) -> Dataset:
    """MNIST from Keras' mnist.npz (arrays x_train, y_train, x_test, y_test)."""
    source = str(path)
    x_key, y_key = f"x_{split}", f"y_{split}"
    arrays = _load_arrays(path, (x_key, y_key))
    x, y = arrays[x_key], arrays[y_key]
    if x.dtype != np.uint8 or x.ndim != 3:
        raise DatasetError(
            f"{source}: expected {x_key!r} of dtype uint8 and shape (N, 28, 28) but found dtype "
            f"{str(x.dtype)!r} and shape {x.shape!r}"
        )
    check_same_count(int(x.shape[0]), _count(y, source=source, key=y_key), source=source)
    labels, _ = _labels(y[:limit], source=source, key=y_key)
    info = CATALOG[name]
    check_label_range(labels, info.num_classes, source=source, what=repr(y_key))
    return Dataset(
        name=name,
        split=split,
        images=np.ascontiguousarray(x[:limit, np.newaxis]),
        labels=labels,
        num_classes=info.num_classes,
        class_names=info.class_names,
        source=source,
    )


def _load_arrays(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    source = str(path)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as members:
                for key in keys:
                    if key in _array_names(members):
                        _check_member(members, key, source)
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise DatasetError(
                f"{source}: expected a .npz archive with arrays {_names(keys)} but found a "
                "single .npy array"
            )
        with loaded as archive:
            missing = [key for key in keys if key not in archive.files]
            if missing:
                raise DatasetError(
                    f"{source}: expected arrays {_names(keys)} but {_names(missing)} missing "
                    f"(arrays found: {sorted(archive.files)!r})"
                )
            return {key: archive[key] for key in keys}
    except DatasetError:
        raise
    except _ARCHIVE_ERRORS as exc:
        raise DatasetError(
            f"{source}: expected a .npz archive (numpy.savez) but it cannot be read: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def _array_names(archive: zipfile.ZipFile) -> set[str]:
    return {name.removesuffix(".npy") for name in archive.namelist()}


def _check_member(archive: zipfile.ZipFile, key: str, source: str) -> None:
    """Refuse object arrays and headers whose declared size disagrees with the member."""
    member = f"{key}.npy" if f"{key}.npy" in archive.namelist() else key
    size = archive.getinfo(member).file_size
    with archive.open(member) as stream:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise DatasetError(
                f"{source}: expected .npy format 1.0 or 2.0 for array {key!r} but found {version!r}"
            )
        header = stream.tell()
    if dtype.hasobject:
        raise DatasetError(
            f"{source}: expected a numeric array {key!r} but found a pickled object array "
            f"(dtype {str(dtype)!r}); lipcert never unpickles data files"
        )
    declared = prod(shape) * dtype.itemsize
    if header + declared != size:
        raise DatasetError(
            f"{source}: array {key!r} declares shape {shape!r} of {str(dtype)!r}, "
            f"{declared} bytes, but the archive member holds {size - header}"
        )


def _count(y: np.ndarray, *, source: str, key: str) -> int:
    if y.ndim == 0:
        raise DatasetError(f"{source}: expected labels {key!r} of shape (N,) but found a scalar")
    return int(y.shape[0])


def _images(x: np.ndarray, *, source: str, key: str) -> np.ndarray:
    """x (N, H, W), (N, C, H, W) or (N, H, W, C) as contiguous NCHW uint8 or float32."""
    if x.ndim == 3:
        x = x[:, np.newaxis]
    elif x.shape[1] not in _CHANNELS and x.shape[3] in _CHANNELS:
        x = x.transpose(0, 3, 1, 2)
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if x.dtype.kind != "f":
        raise DatasetError(
            f"{source}: expected {key!r} of dtype uint8 (0..255) or float (0..1) but found "
            f"{str(x.dtype)!r}; convert it with x.astype(np.uint8) or scale it to [0, 1]"
        )
    check_unit_interval(x, source=source, what=repr(key))
    return np.ascontiguousarray(x, dtype=np.float32)


def _labels(y: np.ndarray, *, source: str, key: str) -> tuple[np.ndarray, int | None]:
    """Integer labels (N,) int64, and the one-hot width when y was one-hot (else None)."""
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.dtype.kind not in "biuf":
        raise DatasetError(
            f"{source}: expected integer labels in {key!r} but found dtype {str(y.dtype)!r}"
        )
    if y.ndim == 2:
        return _from_one_hot(y, source=source, key=key), int(y.shape[1])
    if y.ndim != 1:
        raise DatasetError(
            f"{source}: expected {key!r} of shape (N,) or one-hot (N, K) but found shape "
            f"{y.shape!r}"
        )
    if y.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(y) | (y != np.round(y)))
        if bad.size:
            index = int(bad[0])
            raise DatasetError(
                f"{source}: expected integer labels in {key!r} but found {y[index].item()!r} "
                f"at index {index}"
            )
    if y.size and np.any(y == -1) and np.all((y == -1) | (y == 1)):
        return (y > 0).astype(np.int64), None  # binary labels -1/+1: class 0 is the negative one
    bad = np.flatnonzero((y < 0) | (y > _MAX_LABEL))
    if bad.size:
        index = int(bad[0])
        raise DatasetError(
            f"{source}: expected labels >= 0 (class indices) in {key!r} but found "
            f"{y[index].item()!r} at index {index}"
        )
    return y.astype(np.int64), None


def _from_one_hot(y: np.ndarray, *, source: str, key: str) -> np.ndarray:
    is_binary = (y == 0) | (y == 1)
    rows_ok = is_binary.all(axis=1) & (np.count_nonzero(y, axis=1) == 1)
    bad = np.flatnonzero(~rows_ok)
    if bad.size:
        index = int(bad[0])
        raise DatasetError(
            f"{source}: expected one-hot rows in {key!r} (one 1, the rest 0) but row {index} is "
            f"{y[index].tolist()!r}"
        )
    return np.argmax(y, axis=1).astype(np.int64)


def _names(keys: tuple[str, ...] | list[str]) -> str:
    return " and ".join(repr(key) for key in keys)
