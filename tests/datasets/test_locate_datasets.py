"""Where named datasets are looked for: search order, layouts, and the not-found message."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from data_files import cifar_records, images, labels, write_cifar10_python, write_mnist

from lipcert.datasets import DatasetLocation, dataset_locations, load_dataset
from lipcert.datasets.locate import ENV_VAR
from lipcert.datasets.locate import cache_roots as real_cache_roots
from lipcert.errors import DatasetError

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def _mnist(folder: Path, first_label: int) -> Path:
    """An MNIST test split whose first label tells which copy was read."""
    targets = labels(3)
    targets[0] = first_label
    return write_mnist(folder, "test", images(3, (28, 28)), targets, gz=True)


def test_search_order(
    tmp_path: Path, cache_dirs: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    given = _mnist(tmp_path / "given", 1)
    env_dir = _mnist(tmp_path / "env", 2)
    _mnist(cache_dirs[0] / "MNIST" / "raw", 3)
    _mnist(cache_dirs[1] / "MNIST" / "raw", 4)
    monkeypatch.setenv(ENV_VAR, str(env_dir))
    assert load_dataset("mnist", data_dir=given).labels[0] == 1
    assert load_dataset("mnist").labels[0] == 2
    monkeypatch.delenv(ENV_VAR)
    assert load_dataset("mnist").labels[0] == 3


def test_env_var_holds_several_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    second = _mnist(tmp_path / "second", 5)
    monkeypatch.setenv(ENV_VAR, os.pathsep.join([str(tmp_path / "first"), str(second)]))
    assert load_dataset("mnist").labels[0] == 5


@pytest.mark.parametrize(
    ("name", "subdir"),
    [
        pytest.param("mnist", "MNIST/raw", id="torchvision_mnist"),
        pytest.param("fashion-mnist", "FashionMNIST/raw", id="torchvision_fashion"),
        pytest.param("fashion-mnist", "fashion-mnist", id="keras_and_debian_fashion"),
        pytest.param("cifar10", "cifar-10-batches-py", id="torchvision_and_keras_cifar10"),
        pytest.param("cifar10", "cifar-10-batches-bin", id="cifar10_binary"),
    ],
)
def test_cache_layouts(cache_dirs: list[Path], name: str, subdir: str) -> None:
    folder = cache_dirs[1] / subdir
    if name == "cifar10" and subdir.endswith("bin"):
        folder.mkdir(parents=True)
        (folder / "test_batch.bin").write_bytes(cifar_records(images(2), np.array([3, 4])))
    elif name == "cifar10":
        write_cifar10_python(folder, "test", images(2), np.array([3, 4]))
    else:
        _mnist(folder, 3)
    data = load_dataset(name)
    assert data.source == str(folder)
    assert data.labels[0] == 3


def test_keras_mnist_npz_in_a_cache(cache_dirs: list[Path]) -> None:
    cache_dirs[0].mkdir()
    path = cache_dirs[0] / "mnist.npz"
    np.savez(path, x_test=images(2, (28, 28)), y_test=np.array([7, 1], np.uint8))
    assert load_dataset("mnist").source == str(path)


def test_files_directly_in_the_given_folder_only(tmp_path: Path, cache_dirs: list[Path]) -> None:
    # IDX names are shared by MNIST and Fashion-MNIST: loose files in a cache are not taken
    # for either, while the user's own folder is trusted to hold what was asked for.
    _mnist(cache_dirs[0], 6)
    with pytest.raises(DatasetError, match=r"^mnist test split not found"):
        load_dataset("mnist")
    assert load_dataset("fashion-mnist", data_dir=cache_dirs[0]).labels[0] == 6


def test_python_batches_are_preferred_to_binary(tmp_path: Path) -> None:
    write_cifar10_python(tmp_path / "cifar-10-batches-py", "test", images(2), np.array([1, 1]))
    binary = tmp_path / "cifar-10-batches-bin"
    binary.mkdir()
    (binary / "test_batch.bin").write_bytes(cifar_records(images(2), np.array([2, 2])))
    assert load_dataset("cifar10", data_dir=tmp_path).labels[0] == 1


def test_not_found_lists_every_place_and_how_to_get_it(
    tmp_path: Path, cache_dirs: list[Path]
) -> None:
    given = tmp_path / "given"
    given.mkdir()
    _ = cache_dirs  # caches exist but are not searched when --data-dir is given
    places = [given, given / "cifar-10-batches-py", given / "cifar-10-batches-bin"]
    expected = (
        f"cifar10 test split not found: looked in the given data_dir {str(given)!r} only: "
        f"{', '.join(map(str, places))}; to get it, "
        "download cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html and "
        "extract it into a folder given as data_dir= (--data-dir) or in $LIPCERT_DATA"
    )
    with pytest.raises(DatasetError) as caught:
        load_dataset("cifar10", data_dir=given)
    assert str(caught.value) == expected
    assert "\n" not in expected


def test_not_found_fashion_mnist_suggests_the_debian_package(cache_dirs: list[Path]) -> None:
    places = [cache_dirs[0] / "FashionMNIST" / "raw", cache_dirs[0] / "fashion-mnist"]
    with pytest.raises(
        DatasetError,
        match=rf"^fashion-mnist train split not found: looked in {places[0]}, {places[1]}, .*; "
        r"to get it, run `apt-get install dataset-fashion-mnist`",
    ):
        load_dataset("fashion-mnist", split="train")


def test_incomplete_folder_is_reported(tmp_path: Path) -> None:
    folder = write_cifar10_python(tmp_path / "cifar-10-batches-py", "train", images(5), labels(5))
    (folder / "data_batch_4").unlink()
    (folder / "data_batch_5").unlink()
    with pytest.raises(
        DatasetError, match=rf"; incomplete: {folder} lacks data_batch_4, data_batch_5; to get it"
    ):
        load_dataset("cifar10", split="train", data_dir=tmp_path)


def test_missing_data_dir(tmp_path: Path) -> None:
    with pytest.raises(
        DatasetError,
        match=r"^expected data_dir \(--data-dir\) to be a folder but found no folder '.*nowhere'$",
    ):
        load_dataset("cifar10", data_dir=tmp_path / "nowhere")


def test_dataset_locations(tmp_path: Path, cache_dirs: list[Path]) -> None:
    write_cifar10_python(tmp_path / "cifar-10-batches-py", "test", images(2), labels(2))
    _mnist(cache_dirs[1] / "fashion-mnist", 0)
    locations = dataset_locations(tmp_path)
    assert [(loc.name, loc.split) for loc in locations] == [
        (name, split)
        for name in ("cifar10", "cifar100", "mnist", "fashion-mnist")
        for split in ("test", "train")
    ]
    found = {(loc.name, loc.split): loc for loc in locations if loc.path is not None}
    assert set(found) == {("cifar10", "test"), ("fashion-mnist", "test")}
    cifar = found["cifar10", "test"]
    assert cifar == DatasetLocation(
        "cifar10",
        "test",
        tmp_path / "cifar-10-batches-py",
        "cifar-python",
        (tmp_path, tmp_path / "cifar-10-batches-py"),
    )
    assert found["fashion-mnist", "test"].format == "idx"
    missing = next(loc for loc in locations if loc.name == "cifar100" and loc.split == "train")
    assert (missing.path, missing.format) == (None, None)
    assert missing.searched[0] == tmp_path
    assert missing.searched[-1] == cache_dirs[1] / "cifar-100-binary"


def test_real_cache_roots(tmp_path: Path) -> None:
    home = Path.home()  # tmp_path / "home", set by the conftest fixture
    assert home == tmp_path / "home"
    assert real_cache_roots() == [
        home / ".torch" / "datasets",
        home / "data",
        tmp_path / "data",
        home / ".keras" / "datasets",
        Path("/usr/share/datasets"),
    ]


@pytest.mark.skipif(
    not FASHION_MNIST.is_dir(), reason="Debian's dataset-fashion-mnist is not installed"
)
def test_real_fashion_mnist_found_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    from lipcert.datasets import locate

    monkeypatch.setattr(locate, "cache_roots", real_cache_roots)
    data = load_dataset("fashion-mnist", limit=3)
    assert data.source == str(FASHION_MNIST)
    assert data.labels[0] == 9


def test_data_dir_never_falls_back_to_another_copy(
    tmp_path: Path, cache_dirs: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _mnist(cache_dirs[0] / "MNIST" / "raw", 3)
    monkeypatch.setenv(ENV_VAR, str(_mnist(tmp_path / "env", 2)))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert load_dataset("mnist").labels[0] == 2  # without --data-dir: $LIPCERT_DATA
    with pytest.raises(
        DatasetError,
        match=rf"^mnist test split not found: looked in the given data_dir "
        rf"'{empty}' only: {empty}, ",
    ):
        load_dataset("mnist", data_dir=empty)
