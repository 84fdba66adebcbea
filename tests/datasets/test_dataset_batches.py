"""The Dataset class: invariants checked on construction, and batches()."""

from __future__ import annotations

import numpy as np
import pytest
from data_files import images, labels

from lipcert.datasets import Dataset
from lipcert.errors import DatasetError, UsageError


def _dataset(**changes: object) -> Dataset:
    fields: dict[str, object] = {
        "name": "toy",
        "split": "test",
        "images": images(5, (1, 2, 2)),
        "labels": labels(5, num_classes=3),
        "num_classes": 3,
        "class_names": ("a", "b", "c"),
        "source": "toy.npz",
    }
    fields.update(changes)
    return Dataset(**fields)  # type: ignore[arg-type]


def test_uint8_batches_are_divided_by_255_in_float32() -> None:
    data = _dataset(images=np.arange(5 * 4, dtype=np.uint8).reshape(5, 1, 2, 2) * 12)
    got = list(data.batches(2))
    assert [start for start, _, _ in got] == [0, 2, 4]
    assert [len(batch) for _, batch, _ in got] == [2, 2, 1]
    pixels = np.concatenate([batch for _, batch, _ in got])
    assert pixels.dtype == np.float32
    # The correctly rounded float32 of x / 255, computed in float64 then rounded once.
    np.testing.assert_array_equal(pixels, (data.images / 255.0).astype(np.float32))
    assert pixels.max() == np.float32(228 / 255)
    np.testing.assert_array_equal(np.concatenate([y for _, _, y in got]), data.labels)


def test_extreme_uint8_values_map_to_zero_and_one() -> None:
    pixels = np.array([0, 255, 0, 255], np.uint8).reshape(1, 1, 2, 2)
    data = _dataset(images=pixels, labels=np.array([0]))
    _, batch, _ = next(data.batches(8))
    assert batch.ravel().tolist() == [0.0, 1.0, 0.0, 1.0]


def test_batches_are_copies() -> None:
    data = _dataset(images=np.full((5, 1, 2, 2), 0.5, np.float32))
    for _, pixels, targets in data.batches(3):
        pixels[...] = 0.0
        targets[...] = 0
    assert float(data.images.min()) == 0.5
    assert data.labels[-1] == 2


@pytest.mark.parametrize("batch_size", [0, -1, 2.0, True])
def test_batch_size_must_be_a_positive_int(batch_size: object) -> None:
    with pytest.raises(UsageError, match=r"expected a batch size >= 1 but got"):
        next(_dataset().batches(batch_size))  # type: ignore[arg-type]


def test_len() -> None:
    assert len(_dataset()) == 5


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        pytest.param(
            {"images": images(5, (2, 2))},
            r"expected images of shape \(N, C, H, W\) but found shape \(5, 2, 2\)",
            id="3d_images",
        ),
        pytest.param(
            {"images": images(5, (1, 2, 2)).astype(np.float16)},
            r"expected uint8, float32 or float64 images but found dtype 'float16'",
            id="float16_images",
        ),
        pytest.param(
            {"labels": labels(5, 3).astype(np.int32)},
            r"expected labels of shape \(N,\) and dtype int64 but found shape \(5,\) and dtype "
            r"'int32'",
            id="int32_labels",
        ),
        pytest.param(
            {"labels": labels(4, 3)},
            r"expected as many labels as images but found 5 images and 4 labels",
            id="count_mismatch",
        ),
        pytest.param(
            {"images": images(0, (1, 2, 2)), "labels": np.zeros(0, np.int64)},
            r"expected at least one non-empty image but found images of shape \(0, 1, 2, 2\)",
            id="empty",
        ),
        pytest.param(
            {"labels": np.array([0, 1, 2, 3, 0])},
            r"expected labels in 0\.\.2 but found 3 at index 3",
            id="label_out_of_range",
        ),
        pytest.param(
            {"images": np.full((5, 1, 2, 2), np.inf, np.float32)},
            r"expected finite pixel values in images but found inf at flat index 0",
            id="inf_pixels",
        ),
        pytest.param(
            {"images": np.full((5, 1, 2, 2), 2.0, np.float32)},
            r"expected float pixels in \[0, 1\] in images but found values in \[2\.0, 2\.0\]; "
            r"scale them to \[0, 1\] or store uint8 0\.\.255",
            id="pixels_above_one",
        ),
        pytest.param(
            {"class_names": ("a", "b")},
            r"expected 3 class names but found 2",
            id="class_names",
        ),
        pytest.param(
            {"num_classes": 1, "class_names": None, "labels": np.zeros(5, np.int64)},
            r"expected at least 2 classes but found num_classes=1",
            id="one_class",
        ),
    ],
)
def test_invariants(changes: dict[str, object], message: str) -> None:
    with pytest.raises(DatasetError, match=rf"^toy\.npz: {message}$"):
        _dataset(**changes)
