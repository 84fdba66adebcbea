"""CIFAR python batches: the exact Python 2 byte layout, modern pickles, and their checks."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from cifar_bytes import cifar10_batch, cifar100_batch, py2_dumps
from data_files import (
    images,
    labels,
    write_cifar10_python,
    write_cifar100_python,
    write_modern_cifar10,
)

from lipcert.datasets import load_dataset
from lipcert.datasets.cifar import parse_python_batch
from lipcert.errors import DatasetError


def _parse(blob: bytes, label_key: str = "labels", num_classes: int = 10) -> tuple[np.ndarray, ...]:
    return parse_python_batch(blob, source="batch", label_key=label_key, num_classes=num_classes)


def test_py2_bytes_are_a_real_pickle() -> None:
    pixels, targets = images(4), labels(4)
    blob = py2_dumps(cifar10_batch(pixels, targets.tolist()))
    loaded = pickle.loads(blob, encoding="bytes")
    assert list(loaded) == [b"batch_label", b"labels", b"data", b"filenames"]
    assert loaded[b"batch_label"] == b"testing batch 1 of 1"
    assert loaded[b"labels"] == targets.tolist()
    assert loaded[b"filenames"] == [f"image_{i:05d}.png".encode() for i in range(4)]
    assert loaded[b"data"].dtype == np.uint8
    np.testing.assert_array_equal(loaded[b"data"], pixels.reshape(4, 3072))


def test_py2_bytes_use_cpickle_opcodes() -> None:
    blob = py2_dumps(cifar10_batch(images(2), [0, 9]))
    # PROTO 2, EMPTY_DICT, BINPUT 1, MARK, SHORT_BINSTRING 'batch_label', BINPUT 2
    assert blob.startswith(b"\x80\x02}q\x01(U\x0bbatch_labelq\x02")
    assert b"cnumpy.core.multiarray\n_reconstruct\nq" in blob
    assert b"cnumpy\nndarray\nq" in blob
    assert b"K\x00\x85U\x01b\x87R" in blob  # (0,), 'b', TUPLE3, REDUCE
    assert b"cnumpy\ndtype\nq\nU\x02u1K\x00K\x01\x87R" in blob
    # BINSTRING of the 2 * 3072 raw pixel bytes, after NEWFALSE (C order)
    assert b"\x89T\x00\x18\x00\x00" in blob
    assert blob.endswith(b"u.")  # SETITEMS, STOP


def test_long_lists_are_batched_by_1000_as_cpickle_does() -> None:
    targets = labels(2500)
    blob = py2_dumps(cifar10_batch(images(2500, (1, 1, 1)).repeat(3072, axis=1), targets.tolist()))
    assert pickle.loads(blob, encoding="bytes")[b"labels"] == targets.tolist()


def test_reader_gives_what_the_standard_unpickler_gives() -> None:
    pixels, targets = images(5), labels(5)
    blob = py2_dumps(cifar10_batch(pixels, targets.tolist()))
    expected = pickle.loads(blob, encoding="bytes")
    got_images, got_labels = _parse(blob)
    np.testing.assert_array_equal(got_images.reshape(5, 3072), expected[b"data"])
    np.testing.assert_array_equal(got_labels, expected[b"labels"])
    assert got_images.shape == (5, 3, 32, 32)
    assert got_labels.dtype == np.int64


def test_planes_are_red_green_blue() -> None:
    pixels = np.zeros((1, 3, 32, 32), dtype=np.uint8)
    pixels[0, 0], pixels[0, 1], pixels[0, 2] = 10, 20, 30
    pixels[0, 0, 0, 1] = 99  # row 0, column 1 of the red plane
    got, _ = _parse(py2_dumps(cifar10_batch(pixels, [0])))
    assert got[0, :, 5, 5].tolist() == [10, 20, 30]
    assert got[0, 0, 0, 1] == 99


@pytest.mark.parametrize(
    "protocol", [pytest.param(2, id="protocol2"), pytest.param(4, id="protocol4")]
)
def test_modern_numpy_pickles(tmp_path: Path, protocol: int) -> None:
    pixels, targets = images(3), labels(3)
    blob = write_modern_cifar10(tmp_path / "test_batch", pixels, targets, protocol).read_bytes()
    if protocol == 2:
        assert b"cnumpy._core.multiarray\n_reconstruct\n" in blob
    got_images, got_labels = _parse(blob)
    np.testing.assert_array_equal(got_images, pixels)
    np.testing.assert_array_equal(got_labels, targets)


def test_load_cifar10_test(tmp_path: Path) -> None:
    pixels, targets = images(6), labels(6)
    folder = write_cifar10_python(tmp_path / "cifar-10-batches-py", "test", pixels, targets)
    data = load_dataset("cifar10", data_dir=tmp_path)
    assert (data.name, data.split, data.num_classes, data.source) == (
        "cifar10",
        "test",
        10,
        str(folder),
    )
    assert data.class_names is not None and data.class_names[0] == "airplane"
    np.testing.assert_array_equal(data.images, pixels)
    np.testing.assert_array_equal(data.labels, targets)


def test_load_cifar10_train_joins_five_batches(tmp_path: Path) -> None:
    pixels, targets = images(12), labels(12)
    write_cifar10_python(tmp_path, "train", pixels, targets)
    data = load_dataset("cifar10", split="train", data_dir=tmp_path)
    np.testing.assert_array_equal(data.images, pixels)
    np.testing.assert_array_equal(data.labels, targets)


def test_limit_stops_after_the_batch_that_fills_it(tmp_path: Path) -> None:
    pixels, targets = images(10), labels(10)
    write_cifar10_python(tmp_path, "train", pixels, targets)
    (tmp_path / "data_batch_2").write_bytes(b"not read")
    data = load_dataset("cifar10", split="train", data_dir=tmp_path, limit=2)
    np.testing.assert_array_equal(data.images, pixels[:2])
    with pytest.raises(DatasetError, match="data_batch_2: expected a CIFAR python batch"):
        load_dataset("cifar10", split="train", data_dir=tmp_path, limit=3)


def test_cifar100_uses_fine_labels_and_meta_names(tmp_path: Path) -> None:
    pixels, fine = images(4), np.array([0, 42, 99, 7])
    names = [f"class_{i}" for i in range(100)]
    write_cifar100_python(tmp_path / "cifar-100-python", "test", pixels, fine, names)
    data = load_dataset("cifar100", data_dir=tmp_path)
    np.testing.assert_array_equal(data.labels, fine)
    assert data.num_classes == 100
    assert data.class_names == tuple(names)


def test_cifar100_without_meta_has_no_class_names(tmp_path: Path) -> None:
    write_cifar100_python(tmp_path, "train", images(2), np.array([5, 6]))
    assert load_dataset("cifar100", split="train", data_dir=tmp_path).class_names is None


def test_cifar100_meta_with_wrong_name_count(tmp_path: Path) -> None:
    write_cifar100_python(tmp_path, "test", images(2), np.array([5, 6]), ["a", "b"])
    with pytest.raises(DatasetError, match=r"meta: expected 100 fine label names but found 2"):
        load_dataset("cifar100", data_dir=tmp_path)


def _batch(**changes: object) -> dict[str, object]:
    batch = cifar10_batch(images(3), [1, 2, 3])
    batch.update(changes)
    return {key: value for key, value in batch.items() if value is not None}


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        pytest.param(
            _batch(labels=None),
            r"expected keys 'data' and 'labels' in the batch but 'labels' missing",
            id="missing_labels",
        ),
        pytest.param(
            _batch(labels=[1, 2, 10]),
            r"expected 'labels' in 0\.\.9 but found 10 at index 2",
            id="label_too_large",
        ),
        pytest.param(
            _batch(labels=[1, 2]),
            r"expected as many labels as images but found 3 images and 2 labels",
            id="label_count",
        ),
        pytest.param(
            _batch(labels=[1, "2", 3]),
            r"expected 'labels' to hold non-negative integers but found b?'2' at index 1",
            id="label_string",
        ),
        pytest.param(
            _batch(data=images(3, (100,))),
            r"expected 'data' of dtype uint8 and shape \(N, 3072\) but found dtype 'uint8' and "
            r"shape \(3, 100\)",
            id="data_shape",
        ),
        pytest.param(
            _batch(data=images(0, (3072,))),
            r"expected at least one image but 'data' is empty",
            id="data_empty",
        ),
        pytest.param(_batch(data=[1, 2]), r"expected 'data' to be a numpy array", id="data_list"),
    ],
)
def test_batch_content_is_checked(batch: dict[str, object], message: str) -> None:
    with pytest.raises(DatasetError, match=rf"^batch: {message}"):
        _parse(py2_dumps(batch))


def test_data_of_another_dtype_is_refused() -> None:
    blob = pickle.dumps({"data": np.zeros((2, 3072), np.int16), "labels": [0, 1]}, protocol=2)
    with pytest.raises(
        DatasetError, match=r"expected 'data' of dtype uint8 .* found dtype 'int16'"
    ):
        _parse(blob)


def test_cifar100_fine_label_range() -> None:
    blob = py2_dumps(cifar100_batch(images(2), [3, 100], [0, 19]))
    with pytest.raises(DatasetError, match=r"expected 'fine_labels' in 0\.\.99 but found 100"):
        _parse(blob, label_key="fine_labels", num_classes=100)


def test_not_a_dict() -> None:
    with pytest.raises(DatasetError, match=r"expected the pickle to hold a dict but found list"):
        _parse(py2_dumps([1, 2]))


def test_truncated_pickle() -> None:
    blob = py2_dumps(cifar10_batch(images(2), [0, 1]))
    with pytest.raises(DatasetError, match=r"^batch: expected a CIFAR python batch \(a pickle\)"):
        _parse(blob[: len(blob) // 2])
