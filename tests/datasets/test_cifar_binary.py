"""CIFAR binary batches: record layout, limits, and malformed files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from data_files import cifar_records, images, labels

from lipcert.datasets import load_dataset
from lipcert.errors import DatasetError


def _write_cifar10(folder: Path, split: str, pixels: np.ndarray, targets: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if split == "test":
        (folder / "test_batch.bin").write_bytes(cifar_records(pixels, targets))
        return folder
    parts = zip(np.array_split(pixels, 5), np.array_split(targets, 5), strict=True)
    for i, (part_pixels, part_targets) in enumerate(parts, start=1):
        (folder / f"data_batch_{i}.bin").write_bytes(cifar_records(part_pixels, part_targets))
    return folder


def test_cifar10_records(tmp_path: Path) -> None:
    pixels, targets = images(7), labels(7)
    folder = _write_cifar10(tmp_path / "cifar-10-batches-bin", "test", pixels, targets)
    data = load_dataset("cifar10", data_dir=tmp_path)
    assert data.source == str(folder)
    assert data.images.shape == (7, 3, 32, 32)
    np.testing.assert_array_equal(data.images, pixels)
    np.testing.assert_array_equal(data.labels, targets)


def test_record_pixels_are_red_green_blue_planes(tmp_path: Path) -> None:
    record = bytes([3]) + bytes([10]) * 1024 + bytes([20]) * 1024 + bytes([30]) * 1024
    (tmp_path / "test_batch.bin").write_bytes(record)
    data = load_dataset("cifar10", data_dir=tmp_path)
    assert data.labels.tolist() == [3]
    assert data.images[0, :, 31, 31].tolist() == [10, 20, 30]


def test_cifar10_train_over_five_files(tmp_path: Path) -> None:
    pixels, targets = images(11), labels(11)
    _write_cifar10(tmp_path, "train", pixels, targets)
    data = load_dataset("cifar10", split="train", data_dir=tmp_path)
    np.testing.assert_array_equal(data.images, pixels)
    np.testing.assert_array_equal(data.labels, targets)


def test_limit_reads_only_the_records_needed(tmp_path: Path) -> None:
    pixels, targets = images(20), labels(20)  # 4 records per file
    _write_cifar10(tmp_path, "train", pixels, targets)
    # A bad label in the third record of data_batch_1 and a broken data_batch_2: the first
    # two records are all a limit of 2 reads.
    first = tmp_path / "data_batch_1.bin"
    content = bytearray(first.read_bytes())
    content[2 * 3073] = 200
    first.write_bytes(bytes(content))
    (tmp_path / "data_batch_2.bin").write_bytes(b"\x00")
    data = load_dataset("cifar10", split="train", data_dir=tmp_path, limit=2)
    np.testing.assert_array_equal(data.images, pixels[:2])
    with pytest.raises(DatasetError, match=r"expected labels in 0\.\.9 but found 200 at index 2"):
        load_dataset("cifar10", split="train", data_dir=tmp_path, limit=3)


def test_cifar100_keeps_the_fine_label(tmp_path: Path) -> None:
    pixels, fine = images(4), np.array([0, 55, 99, 12])
    coarse = np.array([19, 0, 7, 3])
    folder = tmp_path / "cifar-100-binary"
    folder.mkdir()
    (folder / "test.bin").write_bytes(cifar_records(pixels, fine, coarse))
    (folder / "fine_label_names.txt").write_text("\n".join(f"n{i}" for i in range(100)) + "\n\n")
    data = load_dataset("cifar100", data_dir=tmp_path)
    np.testing.assert_array_equal(data.labels, fine)
    np.testing.assert_array_equal(data.images, pixels)
    assert data.class_names is not None and data.class_names[99] == "n99"


def test_cifar100_without_names_file(tmp_path: Path) -> None:
    (tmp_path / "train.bin").write_bytes(cifar_records(images(1), np.array([1]), np.array([0])))
    assert load_dataset("cifar100", split="train", data_dir=tmp_path).class_names is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param(
            cifar_records(images(1), np.array([1])) + b"\x00",
            r"expected a whole number \(>= 1\) of 3073-byte records but found 3074 bytes: "
            r"1 records and 1 bytes left over$",
            id="one_byte_too_many",
        ),
        pytest.param(
            cifar_records(images(2), np.array([1, 2]))[:-1],
            r"expected a whole number \(>= 1\) of 3073-byte records but found 6145 bytes: "
            r"1 records and 3072 bytes left over$",
            id="truncated",
        ),
        pytest.param(
            b"",
            r"expected a whole number \(>= 1\) of 3073-byte records but found 0 bytes",
            id="empty",
        ),
        pytest.param(
            cifar_records(images(2), np.array([9, 10])),
            r"expected labels in 0\.\.9 but found 10 at index 1",
            id="label_too_large",
        ),
    ],
)
def test_malformed_cifar10_files(tmp_path: Path, content: bytes, message: str) -> None:
    (tmp_path / "test_batch.bin").write_bytes(content)
    with pytest.raises(DatasetError, match=rf"test_batch\.bin: {message}"):
        load_dataset("cifar10", data_dir=tmp_path)


def test_cifar100_coarse_label_range(tmp_path: Path) -> None:
    records = cifar_records(images(2), np.array([1, 2]), np.array([0, 20]))
    (tmp_path / "test.bin").write_bytes(records)
    with pytest.raises(
        DatasetError, match=r"test\.bin: expected coarse labels in 0\.\.19 but found 20"
    ):
        load_dataset("cifar100", data_dir=tmp_path)


def test_cifar100_record_size(tmp_path: Path) -> None:
    # A CIFAR-10 record (3073 bytes) is not a CIFAR-100 record (3074 bytes).
    (tmp_path / "test.bin").write_bytes(cifar_records(images(2), np.array([1, 2])))
    with pytest.raises(
        DatasetError, match=r"expected a whole number \(>= 1\) of 3074-byte records"
    ):
        load_dataset("cifar100", data_dir=tmp_path)
