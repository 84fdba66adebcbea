"""MNIST and Fashion-MNIST from IDX files, gzipped or not.

An IDX file is a 4-byte magic (0x00000803: unsigned bytes, 3 dims for images; 0x00000801:
unsigned bytes, 1 dim for labels), one big-endian uint32 per dim, then the data in row-major
order. Every size is checked against the header and the file before anything is allocated.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Protocol

import numpy as np

from lipcert.datasets.catalog import CATALOG
from lipcert.datasets.checks import check_label_range
from lipcert.datasets.dataset import Dataset
from lipcert.datasets.files import file_size
from lipcert.errors import DatasetError

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
_MAGIC_NAMES = {IMAGES_MAGIC: "uint8 images, 3 dims", LABELS_MAGIC: "uint8 labels, 1 dim"}

# Deflate cannot expand data more than 1032-fold, so a gzip file of n bytes holds at most
# 1032 n bytes: a bound on a declared size that needs no decompression.
_DEFLATE_MAX_RATIO = 1032
_CHUNK_BYTES = 1 << 20


class _Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...


@dataclass(frozen=True)
class IdxArray:
    """The items read (the first `limit` or all) and the dims the header declares."""

    data: np.ndarray
    dims: tuple[int, ...]


def idx_file_names(split: str) -> tuple[str, str]:
    """(images, labels) file names of a split, without the optional .gz."""
    prefix = "train" if split == "train" else "t10k"
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


def find_idx_file(folder: Path, name: str) -> Path | None:
    """The file `name` in `folder`, or `name`.gz; None when neither exists."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_idx_stream(
    stream: _Readable,
    *,
    source: str,
    magic: int,
    limit: int | None,
    exact_length: int | None,
    max_length: int,
) -> IdxArray:
    """Parse an IDX stream, reading no more items than `limit`.

    exact_length is the stream's length when known (an uncompressed file): header and
    data must fill it exactly. max_length bounds the length otherwise (a gzip file).
    """
    head = _read(stream, 4, source)
    if len(head) < 4:
        raise DatasetError(
            f"{source}: expected a 4-byte IDX magic but the file holds {len(head)} bytes"
        )
    found = int.from_bytes(head, "big")
    if found != magic:
        hint = (
            " (the data looks gzip-compressed: name the file .gz)"
            if head[:2] == b"\x1f\x8b"
            else ""
        )
        raise DatasetError(
            f"{source}: expected IDX magic 0x{magic:08x} ({_MAGIC_NAMES[magic]}) but found "
            f"0x{found:08x}{hint}"
        )
    ndim = magic & 0xFF
    raw_dims = _read(stream, 4 * ndim, source)
    if len(raw_dims) < 4 * ndim:
        raise DatasetError(
            f"{source}: expected {ndim} dims after the magic but the header ends after "
            f"{len(raw_dims)} of {4 * ndim} bytes"
        )
    dims = tuple(int.from_bytes(raw_dims[i : i + 4], "big") for i in range(0, 4 * ndim, 4))
    header = 4 + 4 * ndim
    item = prod(dims[1:])
    declared = dims[0] * item
    if exact_length is not None and header + declared != exact_length:
        raise DatasetError(
            f"{source}: header declares dims {dims!r}, {declared} data bytes, but the file "
            f"holds {exact_length - header} data bytes"
            + (" (truncated)" if header + declared > exact_length else "")
        )
    if header + declared > max_length:
        raise DatasetError(
            f"{source}: header declares dims {dims!r}, {declared} data bytes, but the "
            f"compressed file can hold at most {max_length} bytes"
        )
    if declared == 0:
        raise DatasetError(
            f"{source}: expected at least one non-empty item but found dims {dims!r}"
        )
    count = dims[0] if limit is None else min(dims[0], limit)
    wanted = count * item
    data = _read(stream, wanted, source)
    if len(data) < wanted:
        raise DatasetError(
            f"{source}: header declares dims {dims!r}, {declared} data bytes, but the data "
            f"ends after {len(data)} bytes (truncated)"
        )
    if limit is None and exact_length is None and _read(stream, 1, source):
        raise DatasetError(
            f"{source}: header declares dims {dims!r}, {declared} data bytes, but the file "
            f"holds more data"
        )
    return IdxArray(np.frombuffer(data, dtype=np.uint8).reshape(count, *dims[1:]), dims)


def read_idx_file(path: Path, *, magic: int, limit: int | None) -> IdxArray:
    """Parse the IDX file at `path`, gunzipping it when its name ends in .gz."""
    size = file_size(path)
    source = str(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as stream:
                return read_idx_stream(
                    stream,
                    source=source,
                    magic=magic,
                    limit=limit,
                    exact_length=None,
                    max_length=size * _DEFLATE_MAX_RATIO,
                )
        with path.open("rb") as stream:
            return read_idx_stream(
                stream, source=source, magic=magic, limit=limit, exact_length=size, max_length=size
            )
    except OSError as exc:
        raise DatasetError(f"{source}: cannot read the file: {exc.strerror or exc}") from exc


def read_idx_dataset(folder: Path, name: str, split: str, limit: int | None) -> Dataset:
    """MNIST or Fashion-MNIST from the IDX files of a split in `folder`."""
    paths = []
    for file_name in idx_file_names(split):
        path = find_idx_file(folder, file_name)
        if path is None:
            raise DatasetError(
                f"{folder}: expected {file_name} or {file_name}.gz but found neither"
            )
        paths.append(path)
    images = read_idx_file(paths[0], magic=IMAGES_MAGIC, limit=limit)
    labels = read_idx_file(paths[1], magic=LABELS_MAGIC, limit=limit)
    if images.dims[0] != labels.dims[0]:
        raise DatasetError(
            f"{folder}: expected as many labels as images but {paths[0].name} declares "
            f"{images.dims[0]} images and {paths[1].name} {labels.dims[0]} labels"
        )
    info = CATALOG[name]
    label_array = labels.data.astype(np.int64)
    check_label_range(label_array, info.num_classes, source=str(paths[1]), what="labels")
    return Dataset(
        name=name,
        split=split,
        images=images.data[:, np.newaxis],
        labels=label_array,
        num_classes=info.num_classes,
        class_names=info.class_names,
        source=str(folder),
    )


def _read(stream: _Readable, size: int, source: str) -> bytearray:
    """Up to `size` bytes, read in chunks so that memory grows only with the data present."""
    chunks = bytearray()
    try:
        while len(chunks) < size:
            chunk = stream.read(min(_CHUNK_BYTES, size - len(chunks)))
            if not chunk:
                break
            chunks += chunk
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(f"{source}: expected gzip-compressed IDX data but {exc}") from exc
    return chunks
