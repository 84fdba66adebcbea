"""File access for the readers: every OSError becomes a DatasetError naming the file."""

from __future__ import annotations

from pathlib import Path

from lipcert.errors import DatasetError


def read_bytes(path: Path, size: int | None = None) -> bytes:
    """The whole file, or its first `size` bytes."""
    try:
        with path.open("rb") as stream:
            return stream.read() if size is None else stream.read(size)
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read the file: {exc.strerror or exc}") from exc


def file_size(path: Path) -> int:
    """The size of the file in bytes."""
    try:
        return path.stat().st_size
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read the file: {exc.strerror or exc}") from exc
