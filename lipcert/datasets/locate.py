"""Where the named datasets' files are looked for, and in which layouts.

Loading with --data-dir D searches D only: a dataset missing there is an error naming D, never
a silent fall-back to another copy. Without it: the folders in $LIPCERT_DATA (separated by the
OS path separator), then the usual download caches (cache_roots). `lipcert datasets` lists
every place, --data-dir first. In every folder the
layouts torchvision and Keras write are tried (cifar-10-batches-py, MNIST/raw, mnist.npz ...);
the files lying directly in the folder are accepted for the folders the user gave only,
since MNIST and Fashion-MNIST share file names. IDX files that are the other dataset's
official ones (told by their labels: lipcert.datasets.official) are passed over, and the
error or listing says so: Fashion-MNIST is never read as MNIST, nor the reverse.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from lipcert.datasets.catalog import CATALOG, KNOWN_DATASETS, SPLITS
from lipcert.datasets.cifar import binary_files, python_files
from lipcert.datasets.idx import find_idx_file, idx_file_names
from lipcert.datasets.official import official_idx_files
from lipcert.errors import DatasetError

ENV_VAR = "LIPCERT_DATA"
KERAS_MNIST_FILE = "mnist.npz"


@dataclass(frozen=True)
class DatasetLocation:
    """Where one split of a named dataset was found (path None: nowhere) and what was searched.

    path is the folder holding the files, or the file itself for a one-file format; searched
    lists every folder or file checked, in order, up to and including the one found.
    """

    name: str
    split: str
    path: Path | None
    format: str | None
    searched: tuple[Path, ...]


@dataclass(frozen=True)
class _Layout:
    format: str
    subdirs: tuple[str, ...]  # "" is the root itself


_LAYOUTS: dict[str, tuple[_Layout, ...]] = {
    "cifar10": (
        _Layout("cifar-python", ("cifar-10-batches-py",)),
        _Layout("cifar-binary", ("cifar-10-batches-bin",)),
    ),
    "cifar100": (
        _Layout("cifar-python", ("cifar-100-python",)),
        _Layout("cifar-binary", ("cifar-100-binary",)),
    ),
    "mnist": (_Layout("idx", ("MNIST/raw", "mnist")), _Layout("keras-npz", ("",))),
    "fashion-mnist": (_Layout("idx", ("FashionMNIST/raw", "fashion-mnist")),),
}


def user_dirs(data_dir: str | Path | None) -> list[Path]:
    """The folders the user named: data_dir, then those in $LIPCERT_DATA."""
    dirs: list[Path] = []
    if data_dir is not None:
        folder = Path(data_dir).expanduser()
        if not folder.is_dir():
            raise DatasetError(
                f"expected data_dir (--data-dir) to be a folder but found no folder {str(folder)!r}"
            )
        dirs.append(folder)
    dirs.extend(
        Path(entry).expanduser() for entry in os.environ.get(ENV_VAR, "").split(os.pathsep) if entry
    )
    return dirs


def cache_roots() -> list[Path]:
    """The folders where torchvision, Keras and Debian keep downloaded datasets."""
    home = Path.home()
    return [
        home / ".torch" / "datasets",
        home / "data",
        Path.cwd() / "data",
        home / ".keras" / "datasets",
        Path("/usr/share/datasets"),
    ]


def find_dataset(name: str, split: str, data_dir: str | Path | None = None) -> tuple[Path, str]:
    """(path, format) of the first place holding every file of the split.

    When there is none, a DatasetError lists every place searched and how to get the files.
    """
    location, incomplete = _search(name, split, data_dir, only_given=data_dir is not None)
    if location.path is None or location.format is None:
        notes = "".join(f"; incomplete: {note}" for note in incomplete)
        where = "" if data_dir is None else f" the given data_dir {str(data_dir)!r} only:"
        raise DatasetError(
            f"{name} {split} split not found: looked in{where} "
            f"{', '.join(str(place) for place in location.searched)}{notes}; "
            f"to get it, {CATALOG[name].how_to_get}"
        )
    return location.path, location.format


def dataset_locations(data_dir: str | Path | None = None) -> list[DatasetLocation]:
    """For each known dataset and split, where it was found (or not) and in which format."""
    return [_search(name, split, data_dir)[0] for name in KNOWN_DATASETS for split in SPLITS]


def _search(
    name: str, split: str, data_dir: str | Path | None, *, only_given: bool = False
) -> tuple[DatasetLocation, list[str]]:
    searched: list[Path] = []
    tried: set[tuple[Path, str]] = set()
    incomplete: list[str] = []
    if only_given and data_dir is not None:
        roots = [(root, True) for root in user_dirs(data_dir)[:1]]
    else:
        roots = [(root, True) for root in user_dirs(data_dir)]
        roots += [(root, False) for root in cache_roots()]
    for root, given in roots:
        for layout in _LAYOUTS[name]:
            subdirs = (
                ("", *layout.subdirs) if given and "" not in layout.subdirs else layout.subdirs
            )
            for subdir in subdirs:
                folder = root / subdir if subdir else root
                place = folder / KERAS_MNIST_FILE if layout.format == "keras-npz" else folder
                if (place, layout.format) in tried:
                    continue
                tried.add((place, layout.format))
                if place not in searched:
                    searched.append(place)
                missing, present = _missing_files(layout.format, name, split, folder)
                other = None
                if not missing and layout.format == "idx":
                    other = _other_idx(folder, name, split)
                if other is not None:
                    incomplete.append(f"{folder} holds {other}'s {split} files, not {name}'s")
                    continue
                if not missing:
                    location = DatasetLocation(name, split, place, layout.format, tuple(searched))
                    return location, incomplete
                if present:
                    incomplete.append(f"{folder} lacks {', '.join(missing)}")
    return DatasetLocation(name, split, None, None, tuple(searched)), incomplete


def _other_idx(folder: Path, name: str, split: str) -> str | None:
    """The other dataset whose official files `folder` holds (MNIST and Fashion-MNIST share
    file names: lipcert.datasets.official), or None."""
    found = official_idx_files(folder, split)
    return None if found is None or found[0] == name else found[0]


def _missing_files(fmt: str, name: str, split: str, folder: Path) -> tuple[list[str], int]:
    """The files of the split that `folder` lacks, and how many it has."""
    if fmt == "keras-npz":
        names: tuple[str, ...] = (KERAS_MNIST_FILE,)
    elif fmt == "idx":
        names = idx_file_names(split)
        missing = [f"{n}[.gz]" for n in names if find_idx_file(folder, n) is None]
        return missing, len(names) - len(missing)
    elif fmt == "cifar-python":
        names = python_files(name, split)
    else:
        names = binary_files(name, split)
    missing = [n for n in names if not (folder / n).is_file()]
    return missing, len(names) - len(missing)
