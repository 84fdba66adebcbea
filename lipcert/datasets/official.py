"""Which official MNIST-format dataset a labels file is, told by its first labels.

MNIST and Fashion-MNIST have the same file names, sizes and IDX headers, so a folder of one
is found as the other (a folder in $LIPCERT_DATA or --data-dir holding the files directly)
and read without a complaint: Fashion-MNIST's images certified as MNIST digits. The files
differ in their labels: the official files begin with the ten labels below (Fashion-MNIST's
read from Debian's dataset-fashion-mnist files, MNIST's the well-known first digits that
torchvision's and Keras' users print), and a labels file of 60,000 or 10,000 labels that
begins so is that dataset's. Any other file
(a subset, a shuffled copy, the user's own data) is not recognised and stays readable.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lipcert.datasets.idx import LABELS_MAGIC, find_idx_file, idx_file_names, read_idx_file
from lipcert.errors import DatasetError

# (name, split) -> (count, first ten labels) of the official labels files.
OFFICIAL_LABELS: dict[tuple[str, str], tuple[int, tuple[int, ...]]] = {
    ("mnist", "train"): (60000, (5, 0, 4, 1, 9, 2, 1, 3, 1, 4)),
    ("mnist", "test"): (10000, (7, 2, 1, 0, 4, 1, 4, 9, 5, 9)),
    ("fashion-mnist", "train"): (60000, (9, 0, 0, 3, 0, 2, 7, 2, 5, 5)),
    ("fashion-mnist", "test"): (10000, (9, 2, 1, 1, 6, 1, 4, 6, 5, 7)),
}
PREFIX_LENGTH = 10


def official_dataset(count: int, first_labels: np.ndarray) -> tuple[str, str] | None:
    """(name, split) of the official labels file with `count` labels beginning with
    `first_labels` (at least PREFIX_LENGTH of them), or None when it is none of them."""
    prefix = tuple(int(label) for label in first_labels[:PREFIX_LENGTH])
    for key, (official_count, official_prefix) in OFFICIAL_LABELS.items():
        if count == official_count and prefix == official_prefix:
            return key
    return None


def official_idx_files(folder: Path, split: str) -> tuple[str, str] | None:
    """(name, split) of the official dataset whose labels file for `split` lies in `folder`,
    or None (not an official file, absent or unreadable: the reader reports the latter)."""
    path = find_idx_file(folder, idx_file_names(split)[1])
    if path is None:
        return None
    try:
        labels = read_idx_file(path, magic=LABELS_MAGIC, limit=PREFIX_LENGTH)
    except DatasetError:
        return None
    return official_dataset(labels.dims[0], labels.data)
