"""User .npz files (arrays x and y) and Keras' mnist.npz."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from data_files import images, labels

from lipcert.datasets import load_dataset
from lipcert.errors import DatasetError


def _npz(folder: Path, **arrays: np.ndarray) -> Path:
    """arrays saved with np.savez as folder/data.npz."""
    return _save(folder / "data.npz", arrays)


def _save(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    with path.open("wb") as stream:
        # numpy's stub types **arrays against its allow_pickle: bool keyword.
        np.savez(stream, **arrays)  # type: ignore[arg-type]
    return path


@pytest.mark.parametrize(
    ("shape", "nchw"),
    [
        pytest.param((4, 28, 28), lambda x: x[:, np.newaxis], id="NHW"),
        pytest.param((4, 3, 32, 32), lambda x: x, id="NCHW"),
        pytest.param((4, 32, 32, 3), lambda x: x.transpose(0, 3, 1, 2), id="NHWC"),
        pytest.param((4, 8, 8, 1), lambda x: x.transpose(0, 3, 1, 2), id="NHWC_gray"),
        pytest.param((4, 3, 8, 3), lambda x: x, id="ambiguous_kept_as_NCHW"),
    ],
)
def test_image_layouts(tmp_path: Path, shape: tuple[int, ...], nchw: object) -> None:
    x = images(4, shape[1:])
    data = load_dataset(str(_npz(tmp_path, x=x, y=labels(4))))
    assert callable(nchw)
    np.testing.assert_array_equal(data.images, nchw(x))
    assert data.images.flags.c_contiguous
    assert (data.name, data.split, data.class_names) == ("data.npz", "file", None)


def test_float_pixels_are_kept_exactly(tmp_path: Path) -> None:
    x = np.linspace(0, 1, 2 * 16).reshape(2, 4, 4)
    data = load_dataset(str(_npz(tmp_path, x=x, y=np.array([0, 1]))))
    assert data.images.dtype == np.float64  # the stored pixels, not a float32 copy
    _, pixels, _ = next(data.batches(2))
    np.testing.assert_array_equal(pixels[:, 0], x.astype(np.float32))
    data = load_dataset(str(_npz(tmp_path, x=x.astype(np.float32), y=np.array([0, 1]))))
    assert data.images.dtype == np.float32


@pytest.mark.parametrize(
    ("y", "expected", "num_classes"),
    [
        pytest.param(np.array([0, 3, 1], np.uint8), [0, 3, 1], 4, id="uint8"),
        pytest.param(np.array([2.0, 0.0, 1.0]), [2, 0, 1], 3, id="integral_floats"),
        pytest.param(np.array([[0], [1], [0]]), [0, 1, 0], 2, id="column"),
        pytest.param(np.array([0, 0, 0]), [0, 0, 0], 2, id="at_least_two_classes"),
        pytest.param(np.eye(5)[[4, 0, 2]], [4, 0, 2], 5, id="one_hot_float"),
        pytest.param(np.eye(7, dtype=np.int32)[[1, 1, 2]], [1, 1, 2], 7, id="one_hot_width"),
        pytest.param(np.array([True, False, True]), [1, 0, 1], 2, id="bool"),
    ],
)
def test_labels(tmp_path: Path, y: np.ndarray, expected: list[int], num_classes: int) -> None:
    data = load_dataset(str(_npz(tmp_path, x=images(3, (2, 2)), y=y)))
    assert data.labels.tolist() == expected
    assert data.labels.dtype == np.int64
    assert data.num_classes == num_classes


def test_limit_keeps_the_first_samples(tmp_path: Path) -> None:
    x, y = images(10, (5, 5)), labels(10)
    data = load_dataset(str(_npz(tmp_path, x=x, y=y)), limit=3)
    np.testing.assert_array_equal(data.images[:, 0], x[:3])
    np.testing.assert_array_equal(data.labels, y[:3])
    assert data.num_classes == 10  # from the whole file, not the first three labels


def test_existing_path_without_npz_suffix(tmp_path: Path) -> None:
    path = _npz(tmp_path, x=images(2, (3, 3)), y=np.array([0, 1]))
    renamed = path.rename(tmp_path / "samples.bin")
    assert len(load_dataset(str(renamed))) == 2


_X = images(3, (4, 4))
_Y = np.array([0, 1, 2])


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        pytest.param(
            {"y": _Y},
            r"expected arrays 'x' and 'y' but 'x' missing \(arrays found: \['y'\]\)",
            id="missing_x",
        ),
        pytest.param(
            {"x": _X, "labels": _Y},
            r"expected arrays 'x' and 'y' but 'y' missing \(arrays found: \['labels', 'x'\]\)",
            id="missing_y",
        ),
        pytest.param(
            {"x": _X, "y": _Y[:2]},
            r"expected as many labels as images but found 3 images and 2 labels",
            id="count_mismatch",
        ),
        pytest.param(
            {"x": np.full((3, 4, 4), 1.5), "y": _Y},
            r"expected float pixels in \[0, 1\] in 'x' but found values in \[1\.5, 1\.5\]",
            id="float_above_one",
        ),
        pytest.param(
            {"x": np.full((3, 4, 4), -0.25, np.float32), "y": _Y},
            r"expected float pixels in \[0, 1\] in 'x' but found values in \[-0\.25, -0\.25\]",
            id="float_below_zero",
        ),
        pytest.param(
            {"x": np.where(np.arange(48).reshape(3, 4, 4) == 5, np.nan, 0.5), "y": _Y},
            r"expected finite pixel values in 'x' but found nan at flat index 5",
            id="nan",
        ),
        pytest.param(
            {"x": _X.astype(np.int64), "y": _Y},
            r"expected 'x' of dtype uint8 \(0\.\.255\) or float \(0\.\.1\) but found 'int64'",
            id="int64_pixels",
        ),
        pytest.param(
            {"x": _X[:, 0, 0], "y": _Y},
            r"expected 'x' of shape \(N, d\), \(N, H, W\), \(N, C, H, W\) or \(N, H, W, C\) but "
            r"found shape \(3,\)",
            id="1d_x",
        ),
        pytest.param(
            {"x": _X, "y": np.array([0, -1, 2])},
            r"expected labels >= 0 \(class indices\) in 'y' but found -1 at index 1",
            id="negative_label",
        ),
        pytest.param(
            {"x": _X, "y": np.array([0.0, 1.5, 2.0])},
            r"expected integer labels in 'y' but found 1\.5 at index 1",
            id="fractional_label",
        ),
        pytest.param(
            {"x": _X, "y": np.array([0.0, np.nan, 2.0])},
            r"expected integer labels in 'y' but found nan at index 1",
            id="nan_label",
        ),
        pytest.param(
            {"x": _X, "y": np.array([[1, 0], [1, 1], [0, 1]])},
            r"expected one-hot rows in 'y' \(one 1, the rest 0\) but row 1 is \[1, 1\]",
            id="two_hot",
        ),
        pytest.param(
            {"x": _X, "y": np.array([[0.9, 0.1], [0, 1], [0, 1]])},
            r"expected one-hot rows in 'y' \(one 1, the rest 0\) but row 0 is \[0\.9, 0\.1\]",
            id="smoothed",
        ),
        pytest.param(
            {"x": _X, "y": np.array(["a", "b", "c"])},
            r"expected integer labels in 'y' but found dtype '<U1'",
            id="string_labels",
        ),
        pytest.param(
            {"x": _X, "y": np.array([1, "a", None], dtype=object)},
            r"expected a numeric array 'y' but found a pickled object array \(dtype 'object'\); "
            r"lipcert never unpickles data files",
            id="object_labels",
        ),
        pytest.param(
            {"x": np.array([_X[0], "a", None], dtype=object), "y": _Y},
            r"expected a numeric array 'x' but found a pickled object array",
            id="object_pixels",
        ),
    ],
)
def test_refused_files(tmp_path: Path, arrays: dict[str, np.ndarray], message: str) -> None:
    path = _npz(tmp_path, **arrays)
    with pytest.raises(DatasetError, match=rf"^{path}: {message}"):
        load_dataset(str(path))


def test_single_npy_array(tmp_path: Path) -> None:
    path = tmp_path / "x.npz"
    with path.open("wb") as stream:
        np.save(stream, _X)
    with pytest.raises(
        DatasetError,
        match=r"expected a \.npz archive \(numpy\.savez\) with arrays 'x' and 'y' but the file is "
        "not a zip archive",
    ):
        load_dataset(str(path))


def test_not_an_archive(tmp_path: Path) -> None:
    path = tmp_path / "x.npz"
    path.write_text("hello")
    with pytest.raises(
        DatasetError, match=r"expected a \.npz archive \(numpy\.savez\) .* not a zip archive"
    ):
        load_dataset(str(path))


def test_declared_shape_larger_than_the_member(tmp_path: Path) -> None:
    npy = io.BytesIO()
    header = {"descr": "|u1", "fortran_order": False, "shape": (9999, 9999, 9)}
    np.lib.format.write_array_header_1_0(npy, header)
    npy.write(b"\x00")
    path = tmp_path / "forged.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", npy.getvalue())
        archive.writestr("y.npy", _y_npy())
    with pytest.raises(
        DatasetError,
        match=r"array 'x' declares shape \(9999, 9999, 9\) of 'uint8', 899820009 bytes, but the "
        r"archive member holds 1",
    ):
        load_dataset(str(path))


def _y_npy() -> bytes:
    stream = io.BytesIO()
    np.lib.format.write_array(stream, np.array([0]))
    return stream.getvalue()


def test_keras_mnist(tmp_path: Path) -> None:
    arrays = {
        "x_train": images(5, (28, 28)),
        "y_train": labels(5).astype(np.uint8),
        "x_test": images(3, (28, 28), seed=7),
        "y_test": labels(3, seed=8).astype(np.uint8),
    }
    path = _save(tmp_path / "mnist.npz", arrays)
    for split in ("train", "test"):
        data = load_dataset("mnist", split=split, data_dir=tmp_path, limit=4)
        assert data.source == str(path)
        np.testing.assert_array_equal(data.images[:, 0], arrays[f"x_{split}"][:4])
        np.testing.assert_array_equal(data.labels, arrays[f"y_{split}"][:4])
        assert data.class_names is not None and data.class_names[3] == "3"


def test_keras_mnist_label_range(tmp_path: Path) -> None:
    arrays = {"x_test": images(2, (28, 28)), "y_test": np.array([3, 12], np.uint8)}
    _save(tmp_path / "mnist.npz", arrays)
    with pytest.raises(DatasetError, match=r"expected 'y_test' in 0\.\.9 but found 12 at index 1"):
        load_dataset("mnist", data_dir=tmp_path)


def test_sign_labels_of_a_binary_task_become_classes(tmp_path) -> None:
    import numpy as np

    from lipcert.datasets import load_dataset

    path = tmp_path / "signs.npz"
    np.savez(path, x=np.zeros((4, 1, 2, 2), dtype=np.uint8), y=np.array([-1, 1, 1, -1]))
    dataset = load_dataset(str(path))
    assert dataset.labels.tolist() == [0, 1, 1, 0]
    assert dataset.num_classes == 2


def _compressed(path: Path, **arrays: np.ndarray) -> Path:
    np.savez_compressed(path, **arrays)
    return path


def test_zip_bomb_is_refused_before_decompressing(tmp_path: Path) -> None:
    # 100 MB of zeros in a file of about 100 KB
    x = np.zeros((100, 1000, 1000), dtype=np.uint8)
    path = _compressed(tmp_path / "bomb.npz", x=x, y=np.zeros(100, dtype=np.int64))
    del x
    assert path.stat().st_size < 1_000_000
    with pytest.raises(DatasetError, match=r"array 'x' inflates from \d+ to 100000\d+ bytes"):
        load_dataset(str(path))
    # --limit 1 needs one row (1 MB): read without inflating the rest
    one = load_dataset(str(path), limit=1)
    assert one.images.shape == (1, 1, 1000, 1000)


def test_limit_reads_only_the_rows_it_needs(tmp_path: Path, monkeypatch) -> None:
    import zipfile

    x = images(50, (4, 4))
    path = _compressed(tmp_path / "d.npz", x=x, y=np.arange(50) % 3)
    read: list[int] = []
    original = zipfile.ZipExtFile.read

    def counting(self, n=-1):  # type: ignore[no-untyped-def]
        data = original(self, n)
        read.append(len(data))
        return data

    monkeypatch.setattr(zipfile.ZipExtFile, "read", counting)
    data = load_dataset(str(path), limit=2)
    np.testing.assert_array_equal(data.images[:, 0], x[:2])
    assert sum(read) < x.nbytes  # the x member was not read whole


def test_fortran_order_arrays_are_read_right(tmp_path: Path) -> None:
    x = np.asfortranarray(images(5, (3, 4)))
    path = tmp_path / "f.npz"
    np.savez(path, x=x, y=np.arange(5) % 2)
    np.testing.assert_array_equal(load_dataset(str(path), limit=3).images[:, 0], x[:3])


def test_features_keep_their_values(tmp_path: Path) -> None:
    x = np.array([[-3.5, 250.0], [1e-3, 7.0]])
    path = tmp_path / "t.npz"
    np.savez(path, x=x, y=np.array([0, 1]))
    data = load_dataset(str(path))
    assert data.kind == "features" and data.images.dtype == np.float64
    np.testing.assert_array_equal(data.images, x)
    _, batch, _ = next(data.batches(8, dtype=np.float64))
    np.testing.assert_array_equal(batch, x)  # no scaling of features
