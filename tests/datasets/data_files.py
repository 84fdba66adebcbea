"""Writers of small dataset files in the real formats, with known pixels and labels."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
from cifar_bytes import cifar10_batch, cifar100_batch, py2_dumps

CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))


def images(count: int, shape: tuple[int, ...] = (3, 32, 32), seed: int = 0) -> np.ndarray:
    """Random uint8 images (count, *shape), the same for the same seed."""
    return np.random.default_rng(seed).integers(0, 256, (count, *shape), dtype=np.uint8)


def labels(count: int, num_classes: int = 10, seed: int = 1) -> np.ndarray:
    """Random int64 labels that use the top class, so a range check has something to check."""
    values = np.random.default_rng(seed).integers(0, num_classes, count).astype(np.int64)
    values[-1] = num_classes - 1
    return values


def idx_bytes(array: np.ndarray) -> bytes:
    """An uint8 array as an IDX file: magic 0x0000 08 <ndim>, big-endian dims, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write an IDX file, gzipped when the name ends in .gz."""
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def write_mnist(
    folder: Path, split: str, pixels: np.ndarray, targets: np.ndarray, *, gz: bool
) -> Path:
    """The two IDX files of a split (pixels (N, 28, 28)) in `folder`, created if needed."""
    folder.mkdir(parents=True, exist_ok=True)
    prefix = "train" if split == "train" else "t10k"
    suffix = ".gz" if gz else ""
    write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", pixels)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", targets.astype(np.uint8))
    return folder


def write_cifar10_python(folder: Path, split: str, pixels: np.ndarray, targets: np.ndarray) -> Path:
    """CIFAR-10 python batches in the Python 2 byte layout; train is split over 5 files."""
    folder.mkdir(parents=True, exist_ok=True)
    if split == "test":
        (folder / "test_batch").write_bytes(py2_dumps(cifar10_batch(pixels, targets.tolist())))
    else:
        parts = zip(np.array_split(pixels, 5), np.array_split(targets, 5), strict=True)
        for i, (part_pixels, part_targets) in enumerate(parts, start=1):
            batch = cifar10_batch(part_pixels, part_targets.tolist(), f"training batch {i} of 5")
            (folder / f"data_batch_{i}").write_bytes(py2_dumps(batch))
    return folder


def write_cifar100_python(
    folder: Path,
    split: str,
    pixels: np.ndarray,
    fine: np.ndarray,
    fine_names: list[str] | None = None,
) -> Path:
    """A CIFAR-100 python file (train or test) and, with fine_names, its meta file."""
    folder.mkdir(parents=True, exist_ok=True)
    coarse = (fine // 5).tolist()
    (folder / split).write_bytes(py2_dumps(cifar100_batch(pixels, fine.tolist(), coarse)))
    if fine_names is not None:
        coarse_names = [f"superclass_{i}" for i in range(20)]
        meta = {"fine_label_names": fine_names, "coarse_label_names": coarse_names}
        (folder / "meta").write_bytes(py2_dumps(meta))
    return folder


def cifar_records(
    pixels: np.ndarray, targets: np.ndarray, coarse: np.ndarray | None = None
) -> bytes:
    """CIFAR binary records: [coarse byte,] label byte, 3072 pixel bytes, per image."""
    columns = [] if coarse is None else [coarse.astype(np.uint8)[:, None]]
    columns += [targets.astype(np.uint8)[:, None], pixels.reshape(len(pixels), -1)]
    return np.concatenate(columns, axis=1).tobytes()


def write_modern_cifar10(
    path: Path, pixels: np.ndarray, targets: np.ndarray, protocol: int
) -> Path:
    """A CIFAR-10 batch pickled by today's Python and numpy (numpy._core names)."""
    batch = {"batch_label": "testing batch 1 of 1", "labels": targets.tolist()}
    batch["data"] = pixels.reshape(len(pixels), -1)
    path.write_bytes(pickle.dumps(batch, protocol=protocol))
    return path
