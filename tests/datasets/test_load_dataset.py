"""load_dataset: how a name or a path is understood, and argument checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from data_files import images, labels, write_cifar10_python

from lipcert.datasets import KNOWN_DATASETS, load_dataset
from lipcert.errors import DatasetError, UsageError


def test_known_datasets() -> None:
    assert KNOWN_DATASETS == ("cifar10", "cifar100", "mnist", "fashion-mnist")


@pytest.mark.parametrize("spelling", ["cifar10", "CIFAR10", "cifar-10", "Cifar_10"])
def test_name_spellings(tmp_path: Path, spelling: str) -> None:
    write_cifar10_python(tmp_path, "test", images(2), labels(2))
    assert load_dataset(spelling, data_dir=tmp_path).name == "cifar10"


def test_known_name_wins_over_a_folder_of_that_name(tmp_path: Path) -> None:
    # cwd is tmp_path: a folder called cifar10 there must not turn the name into a path.
    write_cifar10_python(tmp_path / "cifar10", "test", images(2), labels(2))
    assert load_dataset("cifar10", data_dir=tmp_path / "cifar10").source == str(
        tmp_path / "cifar10"
    )


def test_unknown_name() -> None:
    with pytest.raises(
        DatasetError,
        match=r"^expected a dataset name \(cifar10, cifar100, mnist, fashion-mnist\), a \.npz or "
        r"a \.csv file but got 'imagenet', which is neither a known name nor an existing file$",
    ):
        load_dataset("imagenet")


def test_missing_npz_file(tmp_path: Path) -> None:
    with pytest.raises(
        DatasetError, match=r"^expected a \.npz or \.csv file but found no file '.*nope\.npz'$"
    ):
        load_dataset(str(tmp_path / "nope.npz"))


def test_folder_given_as_a_file(tmp_path: Path) -> None:
    folder = tmp_path / "stuff"
    folder.mkdir()
    with pytest.raises(
        DatasetError,
        match=r"is a folder; to read a dataset folder give the dataset name and data_dir=",
    ):
        load_dataset(str(folder))


@pytest.mark.parametrize("limit", [0, -3, 1.5, True])
def test_limit_must_be_a_positive_int(limit: object) -> None:
    with pytest.raises(
        UsageError, match=r"^expected limit >= 1 \(or None for all samples\) but got"
    ):
        load_dataset("cifar10", limit=limit)  # type: ignore[arg-type]


def test_split_must_be_test_or_train() -> None:
    with pytest.raises(UsageError, match=r"^expected split 'test' or 'train' but got 'val'$"):
        load_dataset("mnist", split="val")


def test_split_is_ignored_for_files(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, x=images(2, (3, 3)), y=np.array([0, 1]))
    assert load_dataset(str(path), split="train").split == "file"
