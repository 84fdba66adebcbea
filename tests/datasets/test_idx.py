"""IDX files (MNIST, Fashion-MNIST): raw and gzipped, limits, malformed headers and data."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from data_files import idx_bytes, images, labels, write_idx, write_mnist

from lipcert.datasets import load_dataset
from lipcert.datasets.idx import IMAGES_MAGIC, LABELS_MAGIC, read_idx_file
from lipcert.errors import DatasetError

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.parametrize("gz", [pytest.param(False, id="raw"), pytest.param(True, id="gzip")])
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_dataset(tmp_path: Path, name: str, gz: bool) -> None:
    pixels, targets = images(9, (28, 28)), labels(9)
    write_mnist(tmp_path, "test", pixels, targets, gz=gz)
    data = load_dataset(name, data_dir=tmp_path)
    assert (data.name, data.split, data.num_classes) == (name, "test", 10)
    assert data.images.shape == (9, 1, 28, 28)
    np.testing.assert_array_equal(data.images[:, 0], pixels)
    np.testing.assert_array_equal(data.labels, targets)
    assert data.labels.dtype == np.int64


def test_train_split_and_limit(tmp_path: Path) -> None:
    pixels, targets = images(30, (28, 28)), labels(30)
    write_mnist(tmp_path, "train", pixels, targets, gz=False)
    data = load_dataset("mnist", split="train", data_dir=tmp_path, limit=4)
    np.testing.assert_array_equal(data.images[:, 0], pixels[:4])
    np.testing.assert_array_equal(data.labels, targets[:4])
    assert len(load_dataset("mnist", split="train", data_dir=tmp_path, limit=1000)) == 30


def test_limit_reads_only_the_start_of_a_gzip_file(tmp_path: Path) -> None:
    pixels = images(2000, (28, 28))
    path = write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", pixels)
    compressed = path.read_bytes()
    path.write_bytes(compressed[: len(compressed) // 2])
    np.testing.assert_array_equal(read_idx_file(path, magic=IMAGES_MAGIC, limit=5).data, pixels[:5])
    with pytest.raises(
        DatasetError, match=r"expected gzip-compressed IDX data but Compressed file ended"
    ):
        read_idx_file(path, magic=IMAGES_MAGIC, limit=None)


def test_mixed_raw_and_gzip_files(tmp_path: Path) -> None:
    pixels, targets = images(3, (28, 28)), labels(3)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", pixels)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", targets.astype(np.uint8))
    np.testing.assert_array_equal(load_dataset("mnist", data_dir=tmp_path).labels, targets)


def _raw(tmp_path: Path, content: bytes) -> Path:
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(content)
    return path


_VALID = idx_bytes(images(5, (28, 28)))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param(
            idx_bytes(labels(5).astype(np.uint8)),
            r"expected IDX magic 0x00000803 \(uint8 images, 3 dims\) but found 0x00000801$",
            id="labels_magic",
        ),
        pytest.param(
            b"\x00\x00\x0d\x03" + _VALID[4:],
            r"expected IDX magic 0x00000803 \(uint8 images, 3 dims\) but found 0x00000d03$",
            id="float_type",
        ),
        pytest.param(
            gzip.compress(_VALID),
            r"expected IDX magic 0x00000803 \(uint8 images, 3 dims\) but found 0x1f8b08\w\w "
            r"\(the data looks gzip-compressed: name the file \.gz\)$",
            id="gzip_without_suffix",
        ),
        pytest.param(b"", r"expected a 4-byte IDX magic but the file holds 0 bytes$", id="empty"),
        pytest.param(
            _VALID[:6],
            r"expected 3 dims after the magic but the header ends after 2 of 12 bytes$",
            id="truncated_header",
        ),
        pytest.param(
            _VALID[:-1],
            r"header declares dims \(5, 28, 28\), 3920 data bytes, but the file holds 3919 data "
            r"bytes \(truncated\)$",
            id="truncated_data",
        ),
        pytest.param(
            _VALID + b"\x00" * 784,
            r"header declares dims \(5, 28, 28\), 3920 data bytes, but the file holds 4704 data "
            r"bytes$",
            id="more_data_than_declared",
        ),
        pytest.param(
            _VALID[:4] + (2**32 - 1).to_bytes(4, "big") + _VALID[8:],
            r"header declares dims \(4294967295, 28, 28\), 3367254359280 data bytes, but the file "
            r"holds 3920 data bytes \(truncated\)$",
            id="absurd_count",
        ),
        pytest.param(
            _VALID[:4] + bytes(4) + _VALID[8:16],
            r"expected at least one non-empty item but found dims \(0, 28, 28\)$",
            id="zero_items",
        ),
    ],
)
def test_malformed_raw_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = _raw(tmp_path, content)
    with pytest.raises(DatasetError, match=rf"^{path}: {message}"):
        read_idx_file(path, magic=IMAGES_MAGIC, limit=None)


def test_header_dims_disagree_even_with_a_limit(tmp_path: Path) -> None:
    # The size of an uncompressed file is checked against its header whatever the limit.
    path = _raw(tmp_path, _VALID[:-10])
    with pytest.raises(DatasetError, match=r"\(truncated\)$"):
        read_idx_file(path, magic=IMAGES_MAGIC, limit=1)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param(
            gzip.compress(_VALID[:-1]),
            r"header declares dims \(5, 28, 28\), 3920 data bytes, but the data ends after 3919 "
            r"bytes \(truncated\)$",
            id="truncated_data",
        ),
        pytest.param(
            gzip.compress(_VALID + b"\x00"),
            r"header declares dims \(5, 28, 28\), 3920 data bytes, but the file holds more data$",
            id="more_data_than_declared",
        ),
        pytest.param(
            gzip.compress(_VALID[:4] + (2**31).to_bytes(4, "big") + _VALID[8:]),
            r"header declares dims \(2147483648, 28, 28\), 1683627180032 data bytes, but the "
            r"compressed file can hold at most \d+ bytes$",
            id="absurd_count",
        ),
        pytest.param(
            b"\x1f\x8bnot really gzip",
            r"expected gzip-compressed IDX data but ",
            id="not_gzip",
        ),
    ],
)
def test_malformed_gzip_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(content)
    with pytest.raises(DatasetError, match=rf"^{path}: {message}"):
        read_idx_file(path, magic=IMAGES_MAGIC, limit=None)


def test_image_and_label_counts_must_agree(tmp_path: Path) -> None:
    write_idx(tmp_path / "t10k-images-idx3-ubyte", images(4, (28, 28)))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels(3).astype(np.uint8))
    with pytest.raises(
        DatasetError,
        match=r"expected as many labels as images but t10k-images-idx3-ubyte declares 4 images "
        r"and t10k-labels-idx1-ubyte 3 labels",
    ):
        load_dataset("mnist", data_dir=tmp_path, limit=2)


def test_label_range(tmp_path: Path) -> None:
    write_mnist(tmp_path, "test", images(3, (28, 28)), np.array([0, 10, 1]), gz=True)
    with pytest.raises(
        DatasetError,
        match=r"t10k-labels-idx1-ubyte\.gz: expected labels in 0\.\.9 but found 10 at index 1",
    ):
        load_dataset("fashion-mnist", data_dir=tmp_path)


def test_labels_file_with_images_magic(tmp_path: Path) -> None:
    path = tmp_path / "labels"
    path.write_bytes(_VALID)
    with pytest.raises(
        DatasetError, match=r"expected IDX magic 0x00000801 \(uint8 labels, 1 dim\)"
    ):
        read_idx_file(path, magic=LABELS_MAGIC, limit=None)


@pytest.mark.skipif(
    not FASHION_MNIST.is_dir(), reason="Debian's dataset-fashion-mnist is not installed"
)
def test_real_fashion_mnist() -> None:
    data = load_dataset("fashion-mnist", data_dir=FASHION_MNIST, limit=100)
    assert data.images.shape == (100, 1, 28, 28)
    assert data.images.dtype == np.uint8
    assert data.labels.min() >= 0 and data.labels.max() <= 9
    assert data.labels[0] == 9
    assert data.class_names is not None and data.class_names[9] == "Ankle boot"
    assert data.source == str(FASHION_MNIST)
