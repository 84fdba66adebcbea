"""Images or features and labels from .npz archives: a user's file with arrays x and y, or
Keras' mnist.npz.

Arrays are read by lipcert itself, never unpickled: each member's .npy header (shape, dtype)
is checked against the sizes the zip directory declares before anything is decompressed;
absurd sizes and expansion ratios (a zip bomb) are refused, and only the rows a limit needs
are decompressed.
"""

from __future__ import annotations

import zipfile
import zlib
from math import prod
from pathlib import Path

import numpy as np

from lipcert.datasets.catalog import CATALOG
from lipcert.datasets.checks import (
    check_label_range,
    check_same_count,
    check_unit_interval,
    pixel_like_note,
)
from lipcert.datasets.dataset import Dataset
from lipcert.errors import DatasetError

_CHANNELS = (1, 3, 4)
# Labels above this are not class indices but a sign of a wrong array.
_MAX_LABEL = 2**31 - 1
# What zipfile and np.load raise on a damaged archive: NotImplementedError for unknown
# compression methods or versions, RuntimeError for an encrypted member.
# An array larger than this (uncompressed) is refused, whatever its compression.
MAX_ARRAY_BYTES = 1 << 32
# A member that inflates more than this many times and to more than _RATIO_FLOOR bytes is
# refused as a zip bomb (real image data compresses 2x to 20x; an all-zero array 1000x).
MAX_EXPANSION = 200
_RATIO_FLOOR = 1 << 26
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
    """A dataset from a .npz file holding x (images or feature vectors) and y (labels).

    x is (N, H, W), (N, C, H, W) or (N, H, W, C) with C in {1, 3, 4} (taken as such only when
    the array is not plausible as NCHW): uint8 is kept, floats must lie in [0, 1] and are kept
    exactly (float64 as float64: the certificate is about the stored pixels). x of shape
    (N, d) is a table of features: any finite numbers, used as they are (radii are then in the
    units of the features), of any numeric dtype but uint8, which is refused as ambiguous
    (flattened pixels, which would be scaled by 1/255, or features, which are not). y is
    (N,) integers (floats of integral value accepted) or (N, K) one-hot; labels that are all
    -1 or +1 (the sign convention of binary classifiers) become classes 0 and 1. num_classes
    is K for one-hot labels, else max label + 1, and at least 2; it is taken over the whole
    file, so it does not change with `limit`.
    """
    source = str(path)
    arrays, counts = _load_arrays(path, ("x", "y"), {"x": limit})
    x, y = arrays["x"], arrays["y"]
    if x.ndim not in (2, 3, 4):
        raise DatasetError(
            f"{source}: expected 'x' of shape (N, d), (N, H, W), (N, C, H, W) or (N, H, W, C) "
            f"but found shape {counts['x']!r}"
        )
    check_same_count(counts["x"][0], _count(y, source=source, key="y"), source=source)
    labels, width = _labels(y, source=source, key="y")
    num_classes = max(2, width or 0, int(labels.max()) + 1 if labels.size else 0)
    if x.ndim == 2:
        features = _features(x, source=source, key="x")
        return Dataset(
            name=path.name,
            split="file",
            images=features,
            labels=labels[:limit],
            num_classes=num_classes,
            class_names=None,
            source=source,
            kind="features",
            notes=pixel_like_note(features),
        )
    return Dataset(
        name=path.name,
        split="file",
        images=_images(x, source=source, key="x"),
        labels=labels[:limit],
        num_classes=num_classes,
        class_names=None,
        source=source,
    )


def read_keras_mnist(path: Path, name: str, split: str, limit: int | None) -> Dataset:
    """MNIST from Keras' mnist.npz (arrays x_train, y_train, x_test, y_test)."""
    source = str(path)
    x_key, y_key = f"x_{split}", f"y_{split}"
    arrays, counts = _load_arrays(path, (x_key, y_key), {x_key: limit, y_key: limit})
    x, y = arrays[x_key], arrays[y_key]
    if x.dtype != np.uint8 or x.ndim != 3:
        raise DatasetError(
            f"{source}: expected {x_key!r} of dtype uint8 and shape (N, 28, 28) but found dtype "
            f"{str(x.dtype)!r} and shape {x.shape!r}"
        )
    check_same_count(counts[x_key][0], counts[y_key][0], source=source)
    labels, _ = _labels(y, source=source, key=y_key)
    info = CATALOG[name]
    check_label_range(labels, info.num_classes, source=source, what=repr(y_key))
    return Dataset(
        name=name,
        split=split,
        images=np.ascontiguousarray(x[:, np.newaxis]),
        labels=labels,
        num_classes=info.num_classes,
        class_names=info.class_names,
        source=source,
    )


def _load_arrays(
    path: Path, keys: tuple[str, ...], limits: dict[str, int | None]
) -> tuple[dict[str, np.ndarray], dict[str, tuple[int, ...]]]:
    """The arrays `keys` (the first limits[key] rows of each), and their full shapes."""
    source = str(path)
    try:
        if not zipfile.is_zipfile(path):
            raise DatasetError(
                f"{source}: expected a .npz archive (numpy.savez) with arrays {_names(keys)} but "
                "the file is not a zip archive"
            )
        with zipfile.ZipFile(path) as archive:
            members = {name.removesuffix(".npy"): name for name in archive.namelist()}
            missing = [key for key in keys if key not in members]
            # np.load(path)[key] takes a member named `key` before `key`.npy: with both, what
            # a user inspects with numpy and what would be certified differ.
            both = [key for key in keys if {key, f"{key}.npy"} <= set(archive.namelist())]
            if both:
                raise DatasetError(
                    f"{source}: the archive holds both {both[0]!r} and {both[0] + '.npy'!r}: "
                    "expected one array of each name (numpy would read the first, lipcert "
                    "the second); save it again with numpy.savez"
                )
            if missing:
                raise DatasetError(
                    f"{source}: expected arrays {_names(keys)} but {_names(missing)} missing "
                    f"(arrays found: {sorted(members)!r})"
                )
            arrays, shapes = {}, {}
            for key in keys:
                arrays[key], shapes[key] = _read_member(
                    archive, members[key], key, source, limits.get(key)
                )
            return arrays, shapes
    except DatasetError:
        raise
    except _ARCHIVE_ERRORS as exc:
        raise DatasetError(
            f"{source}: expected a .npz archive (numpy.savez) but it cannot be read: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def _read_member(
    archive: zipfile.ZipFile, member: str, key: str, source: str, limit: int | None
) -> tuple[np.ndarray, tuple[int, ...]]:
    """One array, its header and sizes checked before decompressing; only `limit` rows read."""
    info = archive.getinfo(member)
    with archive.open(member) as stream:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
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
        if header + declared != info.file_size:
            raise DatasetError(
                f"{source}: array {key!r} declares shape {shape!r} of {str(dtype)!r}, "
                f"{declared} bytes, but the archive member holds {info.file_size - header}"
            )
        if declared > MAX_ARRAY_BYTES:
            raise DatasetError(
                f"{source}: array {key!r} declares {declared} bytes (shape {shape!r}), more than "
                f"lipcert reads ({MAX_ARRAY_BYTES})"
            )
        rows = shape[0] if shape else 1
        wanted = min(rows, limit) if limit is not None and shape and not fortran else rows
        row_bytes = declared // rows if rows else 0
        to_read = wanted * row_bytes
        compressed = max(info.compress_size, 1)
        if to_read > _RATIO_FLOOR and info.file_size > MAX_EXPANSION * compressed:
            raise DatasetError(
                f"{source}: array {key!r} inflates from {info.compress_size} to "
                f"{info.file_size} bytes ({info.file_size // compressed}x), more than "
                f"{MAX_EXPANSION}x: refused as a zip bomb; store it uncompressed (numpy.savez)"
            )
        data = stream.read(to_read)
    if len(data) != to_read:
        raise DatasetError(
            f"{source}: array {key!r} is truncated: expected {to_read} bytes, found {len(data)}"
        )
    read_shape = (wanted, *shape[1:]) if shape else ()
    if fortran:  # column-major: the rows are not contiguous, so all of it was read
        array = np.frombuffer(data, dtype=dtype).reshape(read_shape[::-1]).T[:limit]
    else:
        array = np.frombuffer(data, dtype=dtype).reshape(read_shape)
    return array, tuple(int(d) for d in shape)


def _count(y: np.ndarray, *, source: str, key: str) -> int:
    if y.ndim == 0:
        raise DatasetError(f"{source}: expected labels {key!r} of shape (N,) but found a scalar")
    return int(y.shape[0])


def _images(x: np.ndarray, *, source: str, key: str) -> np.ndarray:
    """x (N, H, W), (N, C, H, W) or (N, H, W, C) as contiguous NCHW uint8, float32 (from
    float16 or float32) or float64, each pixel exactly as stored."""
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
    if x.dtype.itemsize > 8:
        raise DatasetError(
            f"{source}: expected {key!r} of dtype uint8 or float16/32/64 but found "
            f"{str(x.dtype)!r}; convert it with x.astype(np.float64)"
        )
    check_unit_interval(x, source=source, what=repr(key))
    # float64 pixels are the samples the radii are about: kept as they are, since a float32
    # copy is up to 2^-24 |x| away from them, which no allowance counts where the inputs
    # reach a float64 evaluator or the --mean/--std normalisation (computed in float64).
    # By size, not dtype equality: a big-endian '>f8' array is not np.float64 but is as exact.
    kept = np.float64 if x.dtype.itemsize == 8 else np.float32  # float16 -> float32: exact
    return np.ascontiguousarray(x, dtype=kept)


def _features(x: np.ndarray, *, source: str, key: str) -> np.ndarray:
    """x (N, d) of numbers as float64 feature vectors (exact for every integer and float32)."""
    if x.dtype.kind not in "biuf" or x.dtype.itemsize > 8:
        raise DatasetError(
            f"{source}: expected {key!r} of a numeric dtype (features) but found {str(x.dtype)!r}"
        )
    if x.dtype == np.uint8:
        # uint8 images are scaled by 1/255 and features are not: a flattened uint8 image
        # read as features lies 255 times farther than pixels in [0, 1], and so does every
        # --eps written for them. Which one is meant, the file must say.
        raise DatasetError(
            f"{source}: expected {key!r} of shape (N, d) to hold features but found uint8, "
            "the dtype of pixels (which are scaled by 1/255, features are not): store flattened "
            "pixels as x / 255 (floats in [0, 1]), or integer features as x.astype(np.int64)"
        )
    features = np.array(x, dtype=np.float64)
    if x.dtype.kind in "iu" and np.any(np.abs(features) > 2.0**53):
        raise DatasetError(
            f"{source}: integer features in {key!r} above 2^53 lose digits as float64"
        )
    return features


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
