"""Red team of the dataset readers: files in the real formats that a reader could read as
other pixels or labels than the format (or torchvision's / Keras' reader) means, silently.

Ground truth is written here with numpy and Pillow directly, on files built byte by byte
where the layout matters (PNG chunks, .npy headers); never lipcert's own readers.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from data_files import images, labels, write_cifar10_python, write_idx

from lipcert.datasets import load_dataset
from lipcert.datasets.imagefolder import read_imagefolder
from lipcert.datasets.locate import ENV_VAR
from lipcert.errors import DatasetError

Image = pytest.importorskip("PIL.Image", reason="Pillow (the `images` extra) is not installed")


def _png(path: Path, samples: np.ndarray, color_type: int, bit_depth: int) -> Path:
    """A PNG written chunk by chunk (no Pillow): samples (H, W[, channels]) big-endian at
    16 bits, filter 0 on every row, as the PNG specification lays them out."""
    height, width = samples.shape[:2]

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    dtype = ">u2" if bit_depth == 16 else "u1"
    rows = b"".join(b"\x00" + samples[r].astype(dtype).tobytes() for r in range(height))
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
    return path


def _rgb(path: Path, pixels: np.ndarray) -> Path:
    """An 8-bit RGB PNG of pixels (H, W, 3), written without Pillow."""
    return _png(path, pixels, color_type=2, bit_depth=8)


def _random(shape: tuple[int, ...], seed: int, high: int = 256) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, high, shape)


# ---------------------------------------------------------------- imagefolder: pixel formats


def test_sixteen_bit_grayscale_png_is_refused_not_clipped(tmp_path: Path) -> None:
    """A 16-bit grayscale PNG opens in Pillow as mode I;16, and convert("RGB") (torchvision's
    loader) clips every sample above 255: a gradient 0..65535 read as 99.6 % white. lipcert
    must not certify those pixels; it refuses with one line naming the file and the mode."""
    root = tmp_path / "val"
    gradient = (np.arange(32 * 32).reshape(32, 32) * 64).astype(np.int64)  # 0 .. 65472
    _png(root / "a" / "g16.png", gradient, color_type=0, bit_depth=16)
    _rgb(root / "b" / "ok.png", _random((32, 32, 3), 1).astype(np.uint8))
    with pytest.raises(DatasetError, match=r"g16\.png: .*'I;16'.*8-bit") as info:
        read_imagefolder(root, resize=32, crop=32)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("array", "mode"),
    [
        pytest.param(np.linspace(0, 1, 256, dtype=np.float32).reshape(16, 16), "F", id="float"),
        pytest.param(np.arange(256, dtype=np.int32).reshape(16, 16) * 1000, "I", id="int32"),
    ],
)
def test_float_and_32_bit_tiffs_are_refused(tmp_path: Path, array: np.ndarray, mode: str) -> None:
    """convert("RGB") of a float TIFF in [0, 1] gives pixels 0 and 1 (black), of a 32-bit
    one values clipped at 255: neither is the image."""
    root = tmp_path / "val"
    (root / "a").mkdir(parents=True)
    Image.fromarray(array).save(root / "a" / "x.tif")
    _rgb(root / "b" / "ok.png", _random((16, 16, 3), 2).astype(np.uint8))
    with Image.open(root / "a" / "x.tif") as image:
        assert image.mode == mode  # the file is what the test means
    with pytest.raises(DatasetError, match=rf"x\.tif: .*{mode!r}"):
        read_imagefolder(root, resize=16, crop=16)


def test_eight_bit_look_alikes_still_read(tmp_path: Path) -> None:
    """16-bit RGB PNG (Pillow keeps each sample's high byte, as torchvision gets it), 8-bit
    grayscale, 16-bit grayscale with alpha (LA: high bytes), palette: read, pixels by hand."""
    root = tmp_path / "val"
    rgb16 = _random((8, 8, 3), 3, high=65536)
    gray = _random((8, 8), 4)
    gray_alpha16 = _random((8, 8, 2), 5, high=65536)
    palette = _random((8, 8), 6, high=4)
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [7, 8, 9]])
    _png(root / "a" / "rgb16.png", rgb16, color_type=2, bit_depth=16)
    _png(root / "b" / "gray.png", gray, color_type=0, bit_depth=8)
    _png(root / "c" / "la16.png", gray_alpha16, color_type=4, bit_depth=16)
    indexed = Image.fromarray(palette.astype(np.uint8), "P")
    indexed.putpalette(colours.astype(np.uint8).reshape(-1).tolist())
    (root / "d").mkdir()
    indexed.save(root / "d" / "p.png")
    data = read_imagefolder(root, resize=8, crop=8)
    expected = [
        rgb16 >> 8,
        np.repeat(gray[..., None], 3, axis=2),
        np.repeat((gray_alpha16[..., :1] >> 8), 3, axis=2),
        colours[palette],
    ]
    for index, pixels in enumerate(expected):
        np.testing.assert_array_equal(data.images[index], pixels.transpose(2, 0, 1))


def test_alpha_is_dropped_not_composited(tmp_path: Path) -> None:
    """RGBA: the colour samples are kept and the alpha dropped, as convert("RGB") does in
    torchvision's loader (a fully transparent pixel keeps its stored colour)."""
    root = tmp_path / "val"
    rgba = _random((6, 6, 4), 7)
    rgba[..., 3] = 0
    _png(root / "a" / "rgba.png", rgba, color_type=6, bit_depth=8)
    _rgb(root / "b" / "ok.png", _random((6, 6, 3), 8).astype(np.uint8))
    data = read_imagefolder(root, resize=6, crop=6)
    np.testing.assert_array_equal(data.images[0], rgba[..., :3].transpose(2, 0, 1))


def test_exif_orientation_is_not_applied(tmp_path: Path) -> None:
    """torchvision's loader ignores EXIF orientation, and so does lipcert: the stored pixels
    are read, not the picture a viewer shows rotated (the module docstring says so)."""
    root = tmp_path / "val"
    pixels = _random((8, 8, 3), 9).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    (root / "a").mkdir(parents=True)
    Image.fromarray(pixels).save(root / "a" / "r.png", exif=exif.tobytes())
    _rgb(root / "b" / "ok.png", _random((8, 8, 3), 10).astype(np.uint8))
    with Image.open(root / "a" / "r.png") as image:
        assert image.getexif().get(0x0112) == 6  # the file carries the tag
    data = read_imagefolder(root, resize=8, crop=8)
    np.testing.assert_array_equal(data.images[0], pixels.transpose(2, 0, 1))
    assert not np.array_equal(np.rot90(pixels, -1), pixels)  # rotating would show


# ------------------------------------------------------- imagefolder: geometry and order


@pytest.mark.parametrize(
    ("width", "left"),
    [
        # torchvision's CenterCrop: int(round((w - crop) / 2)), Python's round half to even.
        pytest.param(21, 0, id="half_0.5_to_0"),
        pytest.param(23, 2, id="half_1.5_to_2"),
        pytest.param(25, 2, id="half_2.5_to_2"),
        pytest.param(27, 4, id="half_3.5_to_4"),
        pytest.param(30, 5, id="whole_5"),
    ],
)
def test_centre_crop_offsets_are_torchvisions(tmp_path: Path, width: int, left: int) -> None:
    """Images whose shorter side already is the resize (no resampling): the crop is a
    window of the stored pixels at the offset torchvision's formula gives, written out."""
    root = tmp_path / "val"
    pixels = _random((20, width, 3), width).astype(np.uint8)
    _rgb(root / "a" / "x.png", pixels)
    _rgb(root / "b" / "x.png", pixels.transpose(1, 0, 2).copy())  # tall: the top offset
    data = read_imagefolder(root, resize=20, crop=20)
    np.testing.assert_array_equal(data.images[0], pixels[:, left : left + 20].transpose(2, 0, 1))
    np.testing.assert_array_equal(
        data.images[1], pixels.transpose(1, 0, 2)[left : left + 20].transpose(2, 0, 1)
    )


def test_class_order_is_code_point_order(tmp_path: Path) -> None:
    """torchvision sorts class folder names as Python sorts strings: '10' before '2',
    upper case before lower case, accented letters last; each class gets its own image."""
    root = tmp_path / "val"
    names = ["2", "10", "a", "B", "\u00e9t\u00e9", "_x"]
    expected_order = ["10", "2", "B", "_x", "a", "\u00e9t\u00e9"]  # written out, not sorted()
    for seed, name in enumerate(names):
        _rgb(root / name / "img.png", np.full((4, 4, 3), seed * 10, dtype=np.uint8))
    data = read_imagefolder(root, resize=4, crop=4)
    assert data.class_names == tuple(expected_order)
    for label, name in enumerate(expected_order):
        seed = names.index(name)
        assert data.labels[label] == label
        assert np.all(data.images[label] == seed * 10), name


# ------------------------------------------------------------------------------ npz


@pytest.mark.parametrize(
    ("stored", "kept"),
    [
        pytest.param(">f8", np.float64, id="big_endian_float64"),
        pytest.param("<f8", np.float64, id="little_endian_float64"),
        pytest.param(">f4", np.float32, id="big_endian_float32"),
    ],
)
def test_float_pixels_of_either_byte_order_are_kept_exactly(
    tmp_path: Path, stored: str, kept: type
) -> None:
    """float64 pixels are the samples the certificate is about (kept as float64, not a
    float32 copy 2^-24 away); a big-endian float64 array (numpy writes '>f8' as it finds it)
    must not be rounded to float32 because its dtype is not the native np.float64."""
    x = np.random.default_rng(11).random((3, 1, 5, 5))
    path = tmp_path / "be.npz"
    np.savez(path, x=x.astype(stored), y=np.array([0, 1, 0]))
    data = load_dataset(str(path))
    assert data.images.dtype == kept
    np.testing.assert_array_equal(data.images, x.astype(stored).astype(kept))
    if kept == np.float64:
        assert np.array_equal(data.images, x)  # bit for bit the stored values


# ------------------------------------------------------- MNIST and Fashion-MNIST files

FASHION = Path("/usr/share/datasets/fashion-mnist")


def _official_like(folder: Path, first: list[int], split: str = "test") -> Path:
    """IDX files of a split with 10,000 (test) or 60,000 (train) samples whose labels begin
    with `first`: the shape of an official file, blank images (they compress to nothing)."""
    count = 10000 if split == "test" else 60000
    prefix = "t10k" if split == "test" else "train"
    labels = np.random.default_rng(12).integers(0, 10, count).astype(np.uint8)
    labels[: len(first)] = first
    folder.mkdir(parents=True)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", np.zeros((count, 28, 28), np.uint8))
    return folder


@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not here")
def test_real_fashion_mnist_in_lipcert_data_is_not_read_as_mnist(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The README points at /usr/share/datasets/fashion-mnist; put in $LIPCERT_DATA (or given
    as --data-dir), its files lie directly in the folder, where MNIST's are looked for too:
    `--dataset mnist` read Fashion-MNIST's clothes as digits, named mnist, without a word."""
    monkeypatch.setenv(ENV_VAR, str(FASHION))
    for given in (None, FASHION):
        with pytest.raises(DatasetError, match=r"holds fashion-mnist's test files, not mnist's"):
            load_dataset("mnist", data_dir=given, limit=5)
    with gzip.open(FASHION / "t10k-labels-idx1-ubyte.gz") as stream:
        truth = np.frombuffer(stream.read(8 + 50)[8:], dtype=np.uint8)
    fashion = load_dataset("fashion-mnist", limit=50)
    np.testing.assert_array_equal(fashion.labels, truth)


def test_official_label_files_find_their_own_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MNIST's official labels (test: 7 2 1 0 4 1 4 9 5 9) are not read as Fashion-MNIST,
    and a search path that holds the wrong dataset first goes on to the right one."""
    mnist_like = _official_like(tmp_path / "digits", [7, 2, 1, 0, 4, 1, 4, 9, 5, 9])
    with pytest.raises(DatasetError, match=r"holds mnist's test files, not fashion-mnist's"):
        load_dataset("fashion-mnist", data_dir=mnist_like, limit=3)
    assert load_dataset("mnist", data_dir=mnist_like, limit=3).labels.tolist() == [7, 2, 1]
    fashion_like = _official_like(tmp_path / "clothes", [9, 0, 0, 3, 0, 2, 7, 2, 5, 5], "train")
    _official_like(tmp_path / "store" / "mnist", [5, 0, 4, 1, 9, 2, 1, 3, 1, 4], "train")
    monkeypatch.setenv(ENV_VAR, os.pathsep.join([str(fashion_like), str(tmp_path / "store")]))
    data = load_dataset("mnist", split="train", limit=4)
    assert (data.source, data.labels.tolist()) == (str(tmp_path / "store" / "mnist"), [5, 0, 4, 1])


@pytest.mark.parametrize(
    ("first", "split"),
    [
        pytest.param([9, 2, 1, 1, 6, 1, 4, 6, 5, 8], "test", id="last_label_differs"),
        pytest.param([0, 9, 2, 1, 1, 6, 1, 4, 6, 5], "test", id="shifted"),
    ],
)
def test_look_alike_label_files_still_read(tmp_path: Path, first: list[int], split: str) -> None:
    """A labels file that is not exactly an official one (another order, another subset)
    is the user's data: read under the name asked for."""
    folder = _official_like(tmp_path / "mine", first, split)
    data = load_dataset("mnist", data_dir=folder, limit=10)
    assert data.labels.tolist() == first


def test_npz_with_a_member_named_x_and_one_named_x_npy_is_refused(tmp_path: Path) -> None:
    """np.load(path)["x"] reads the member named x before x.npy; lipcert read x.npy: a user
    who looks at the file with numpy saw other pixels than the ones certified."""

    def npy(array: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        np.save(buffer, array)
        return buffer.getvalue()

    shown, hidden = np.zeros((2, 1, 4, 4), np.uint8), np.full((2, 1, 4, 4), 200, np.uint8)
    path = tmp_path / "two.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x", npy(shown))
        archive.writestr("x.npy", npy(hidden))
        archive.writestr("y.npy", npy(np.array([0, 1])))
    assert np.load(path)["x"].max() == 0  # what numpy shows
    with pytest.raises(DatasetError, match=r"two\.npz: the archive holds both 'x' and 'x\.npy'"):
        load_dataset(str(path))
    # A member named plainly "x" (no .npy) alone is still read, as numpy reads it.
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x", npy(hidden))
        archive.writestr("y", npy(np.array([0, 1])))
    np.testing.assert_array_equal(load_dataset(str(path)).images, hidden)


def test_animated_webp_reads_its_first_frame(tmp_path: Path) -> None:
    """Pillow opens an animated WebP at frame 0, as torchvision's loader reads it."""
    from PIL import features

    if not features.check("webp"):
        pytest.skip("Pillow was built without WebP")
    root = tmp_path / "val"
    (root / "a").mkdir(parents=True)
    first = _random((8, 8, 3), 13).astype(np.uint8)
    second = _random((8, 8, 3), 14).astype(np.uint8)
    frames = [Image.fromarray(first), Image.fromarray(second)]
    frames[0].save(root / "a" / "m.webp", save_all=True, append_images=frames[1:], lossless=True)
    _rgb(root / "b" / "ok.png", second)
    with Image.open(root / "a" / "m.webp") as image:
        assert getattr(image, "n_frames", 1) == 2
    data = read_imagefolder(root, resize=8, crop=8)
    np.testing.assert_array_equal(data.images[0], first.transpose(2, 0, 1))


def test_flattened_uint8_pixels_are_not_read_as_unscaled_features(tmp_path: Path) -> None:
    """x (N, 784) uint8 is how flattened MNIST is kept: read as features it was not scaled
    by 1/255 as the same pixels as (N, 28, 28) are, so every radius and --eps was 255 times
    off. Refused with what to store; the same values as int64 or float still read as is."""
    pixels = _random((3, 28, 28), 15).astype(np.uint8)
    y = np.array([0, 1, 2])
    path = tmp_path / "flat.npz"
    np.savez(path, x=pixels.reshape(3, -1), y=y)
    with pytest.raises(DatasetError, match=r"flat\.npz: .*\(N, d\).*uint8.*x / 255"):
        load_dataset(str(path))
    images = tmp_path / "images.npz"
    np.savez(images, x=pixels, y=y)
    _, batch, _ = next(load_dataset(str(images)).batches(3, dtype=np.float64))
    np.testing.assert_array_equal(batch[:, 0], pixels / 255.0)
    for stored in (pixels.reshape(3, -1).astype(np.int64), pixels.reshape(3, -1) / 255.0):
        np.savez(path, x=stored, y=y)
        data = load_dataset(str(path))
        assert data.kind == "features"
        np.testing.assert_array_equal(data.images, stored)


def test_image_folder_with_another_class_count_than_the_model_is_refused(tmp_path: Path) -> None:
    """Labels of an image folder are folder positions. A validation folder that lacks one
    class (or a 3-class subset) under a 10-class model gave every later image the label of
    the next class: certified accuracy of wrong labels. certify, attack and compare meet
    the model in certify_dataset, which refuses; ten folders still certify."""
    import lipcert

    model = lipcert.load(
        Path(__file__).resolve().parents[2] / "sample_models" / "cifar10_shaped_ce_tau16.onnx"
    )
    root = tmp_path / "val"
    for index in range(10):
        if index != 4:  # class 4 has no validation images: 5..9 would shift to 4..8
            _rgb(root / f"c{index}" / "a.png", _random((32, 32, 3), index).astype(np.uint8))
    with pytest.raises(DatasetError, match=r"val: 9 class folders but the model predicts 10"):
        lipcert.certify_dataset(model, f"imagefolder:{root}", eps=[0.1])
    _rgb(root / "c4" / "a.png", _random((32, 32, 3), 4).astype(np.uint8))
    report = lipcert.certify_dataset(model, f"imagefolder:{root}", eps=[0.1])
    assert report.n == 10


def _gemm_model(path: Path, classes: int) -> Path:
    """A 3x32x32 -> `classes` ONNX model: Flatten then a Gemm of orthonormal rows (1-Lipschitz)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rows = np.linalg.qr(np.random.default_rng(16).standard_normal((3072, classes)))[0].T
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["x"], ["flat"]),
            helper.make_node("Gemm", ["flat", "w", "b"], ["logits"], transB=1),
        ],
        "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        [
            numpy_helper.from_array(rows.astype(np.float32), "w"),
            numpy_helper.from_array(np.zeros(classes, np.float32), "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)
    return path


def test_named_dataset_under_a_model_of_another_class_count_is_refused(tmp_path: Path) -> None:
    """CIFAR-10's labels 0..9 all lie in a 100-class model's range, so nothing stopped
    `--dataset cifar10` with a CIFAR-100 model: 'airplane' scored as 'apple'. Refused; the
    same files with a 10-class model, and a .npz of the same images, still certify."""
    import lipcert

    folder = write_cifar10_python(tmp_path / "c10", "test", images(6), labels(6))
    wide = lipcert.load(_gemm_model(tmp_path / "c100.onnx", 100))
    data = lipcert.load_dataset("cifar10", data_dir=folder)
    with pytest.raises(DatasetError, match=r"cifar10: 10 classes but the model predicts 100"):
        lipcert.certify_dataset(wide, data, eps=[0.1])
    narrow = lipcert.load(_gemm_model(tmp_path / "c10.onnx", 10))
    assert lipcert.certify_dataset(narrow, data, eps=[0.1]).n == 6
    path = tmp_path / "same.npz"
    np.savez(path, x=images(6), y=labels(6))
    assert lipcert.certify_dataset(wide, str(path), eps=[0.1]).n == 6


def test_one_based_labels_sorted_by_class_are_refused_under_a_limit(tmp_path: Path) -> None:
    """Labels 1..10 (MATLAB, R) in a file sorted by class, with a limit: the first rows hold
    label 1 only, which a 10-class model accepts, as class 1 where class 0 was meant. The
    .npz's labels are all read, so its 11 classes are refused; 0-based labels still run."""
    import lipcert

    model = lipcert.load(_gemm_model(tmp_path / "m.onnx", 10))
    one_based = np.repeat(np.arange(1, 11), 3)
    path = tmp_path / "sorted.npz"
    np.savez(path, x=images(30), y=one_based)
    with pytest.raises(DatasetError, match=r"sorted\.npz: its labels name 11 classes.*1-based"):
        lipcert.certify_dataset(model, lipcert.load_dataset(str(path), limit=5), eps=[0.1])
    np.savez(path, x=images(30), y=one_based - 1)
    report = lipcert.certify_dataset(model, lipcert.load_dataset(str(path), limit=5), eps=[0.1])
    assert report.n == 5


def test_pixel_valued_csv_features_are_read_unscaled_and_said_so(tmp_path: Path) -> None:
    """A CSV of MNIST as Kaggle keeps it (label, then 784 pixel columns 0..255) is features:
    used unscaled (a table cannot say it holds pixels), so the report must say that radii
    are 255 times those of pixels in [0, 1]. Real-valued or 0/1 features get no such note."""
    pixels = _random((4, 16), 17)
    pixels[0, 0] = 255
    header = "label," + ",".join(f"{r}x{c}" for r in range(1, 5) for c in range(1, 5))
    rows = [f"{i % 2}," + ",".join(str(v) for v in row) for i, row in enumerate(pixels)]
    path = tmp_path / "mnist_test.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    data = load_dataset(str(path))
    np.testing.assert_array_equal(data.images, pixels)  # as written, not divided by 255
    assert any("integer in 0..255, as pixels are" in note for note in data.notes)
    for values in (pixels / 255.0, (pixels > 127).astype(np.int64)):
        rows = [f"{i % 2}," + ",".join(repr(float(v)) for v in row) for i, row in enumerate(values)]
        path.write_text("\n".join([header, *rows]) + "\n")
        assert load_dataset(str(path)).notes == ()
    npz = tmp_path / "ints.npz"
    np.savez(npz, x=pixels.astype(np.int64), y=np.arange(4) % 2)
    assert any("as pixels are" in note for note in load_dataset(str(npz)).notes)
