"""Writes minimal IDX files (the real byte layout) for command-line tests."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np


def write_fashion_mnist_test(folder: Path, n: int = 5) -> None:
    images = np.arange(n * 28 * 28, dtype=np.uint32).astype(np.uint8).reshape(n, 28, 28)
    labels = (np.arange(n) % 10).astype(np.uint8)
    with gzip.open(folder / "t10k-images-idx3-ubyte.gz", "wb") as handle:
        handle.write(struct.pack(">IIII", 0x803, n, 28, 28) + images.tobytes())
    with gzip.open(folder / "t10k-labels-idx1-ubyte.gz", "wb") as handle:
        handle.write(struct.pack(">II", 0x801, n) + labels.tobytes())
