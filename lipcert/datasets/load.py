"""load_dataset: one entry point for named datasets, .npz files and CSV files of features."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from lipcert.datasets.catalog import KNOWN_DATASETS, SPLITS, canonical_name
from lipcert.datasets.cifar import read_binary, read_python
from lipcert.datasets.dataset import Dataset
from lipcert.datasets.idx import read_idx_dataset
from lipcert.datasets.imagefolder import PREFIX, is_imagefolder, read_imagefolder
from lipcert.datasets.locate import find_dataset
from lipcert.datasets.npz import read_keras_mnist, read_npz
from lipcert.datasets.tabular import read_csv
from lipcert.errors import DatasetError, UsageError

# format -> reader(path, name, split, limit); one entry per format locate.py can report.
_READERS: dict[str, Callable[[Path, str, str, int | None], Dataset]] = {
    "cifar-python": read_python,
    "cifar-binary": read_binary,
    "idx": read_idx_dataset,
    "keras-npz": read_keras_mnist,
}


def load_dataset(
    name_or_path: str,
    *,
    split: str = "test",
    data_dir: str | Path | None = None,
    limit: int | None = None,
    label_column: str | None = None,
    resize: int | None = None,
    crop: int | None = None,
    model_shape: tuple[int, ...] | None = None,
) -> Dataset:
    """A named dataset's split (cifar10, cifar100, mnist, fashion-mnist), a .npz or a .csv file,
    or imagefolder:PATH (one folder per class, images resized to `resize` and cropped to
    `crop`, by default the input size of the model, `model_shape` (C, H, W), when given:
    `lipcert.datasets.imagefolder`). Other datasets ignore `model_shape`.

    A name ending in .npz or .csv, or an existing path that is not a known dataset name, is
    read as a file (split is then "file" and the split argument is ignored). A CSV file holds
    features and a label column (`label_column`, default "label"). limit keeps the first
    `limit` samples, reading no more than needed.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise UsageError(f"expected limit >= 1 (or None for all samples) but got {limit!r}")
    if is_imagefolder(name_or_path):
        if label_column is not None:
            raise UsageError("label_column (--label-column) is for CSV files, not an image folder")
        folder = name_or_path[len(PREFIX) :]
        return read_imagefolder(
            folder, limit=limit, resize=resize, crop=crop, model_shape=model_shape
        )
    if resize is not None or crop is not None:
        raise UsageError(
            f"resize and crop (--resize, --crop) are for imagefolder:PATH, not {name_or_path!r}"
        )
    name = canonical_name(name_or_path)
    path = Path(name_or_path).expanduser()
    is_csv = name_or_path.lower().endswith(".csv")
    if label_column is not None and not is_csv:
        raise UsageError(
            f"label_column (--label-column) is for CSV files, but the dataset {name_or_path!r} "
            "is not one"
        )
    if is_csv or name_or_path.lower().endswith(".npz") or (name is None and path.exists()):
        return _load_file(path, limit, label_column)
    if name is None:
        raise DatasetError(
            f"expected a dataset name ({', '.join(KNOWN_DATASETS)}), a .npz or a .csv file but "
            f"got {name_or_path!r}, which is neither a known name nor an existing file"
        )
    if split not in SPLITS:
        raise UsageError(f"expected split 'test' or 'train' but got {split!r}")
    path, data_format = find_dataset(name, split, data_dir)
    return _READERS[data_format](path, name, split, limit)


def _load_file(path: Path, limit: int | None, label_column: str | None) -> Dataset:
    if path.is_dir():
        raise DatasetError(
            f"expected a .npz or .csv file but {str(path)!r} is a folder; to read a dataset "
            f"folder give the dataset name and data_dir={str(path)!r} (--data-dir)"
        )
    if not path.is_file():
        raise DatasetError(f"expected a .npz or .csv file but found no file {str(path)!r}")
    if path.suffix.lower() == ".csv":
        return read_csv(path, limit=limit, label_column=label_column)
    return read_npz(path, limit=limit)
