"""imagefolder:PATH against an independent computation with Pillow, on files made here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lipcert.datasets import load_dataset
from lipcert.datasets.imagefolder import read_imagefolder
from lipcert.errors import DatasetError, UsageError

Image = pytest.importorskip("PIL.Image", reason="Pillow (the `images` extra) is not installed")


def _write(path: Path, size: tuple[int, int], seed: int, mode: str = "RGB") -> None:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
    pixels = rng.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
    image = Image.fromarray(pixels[..., 0] if mode == "L" else pixels, mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, quality=90) if path.suffix.lower() in (".jpg", ".jpeg") else image.save(path)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "val"
    # Class names sort as b_cat < n01 < zebra; files inside sort by name, sub-folders walked.
    _write(root / "zebra" / "b.png", (40, 30), 1)
    _write(root / "zebra" / "a.JPG", (30, 50), 2)
    _write(root / "n01" / "x.jpeg", (64, 64), 3, "L")
    _write(root / "b_cat" / "sub" / "c.png", (33, 70), 4, "RGBA")
    _write(root / "b_cat" / "a.png", (70, 33), 5)
    (root / "b_cat" / "notes.txt").write_text("not an image")
    (root / "empty_file_at_root.png").write_bytes(b"")  # not in a class folder: ignored
    return root


def _ten_classes(root: Path) -> None:
    """Seven more class folders (zz0 .. zz6, after the fixture's three): ten, as a 10-class
    model needs (labels are folder positions: lipcert refuses another count)."""
    for index in range(7):
        _write(root / f"zz{index}" / "a.png", (20 + index, 24), 20 + index)


def _by_hand(path: Path, resize: int, crop: int) -> np.ndarray:
    """torchvision's Resize(resize) + CenterCrop(crop) on a PIL image, written out."""
    image = Image.open(path).convert("RGB")
    w, h = image.size
    size = (resize, int(resize * h / w)) if w <= h else (int(resize * w / h), resize)
    image = image.resize(size, Image.BILINEAR)
    w, h = image.size
    top, left = round((h - crop) / 2.0), round((w - crop) / 2.0)
    array = np.array(image)[top : top + crop, left : left + crop]
    return array.transpose(2, 0, 1)


def test_labels_order_and_pixels(folder: Path) -> None:
    dataset = load_dataset(f"imagefolder:{folder}", resize=24, crop=20)
    assert dataset.class_names == ("b_cat", "n01", "zebra")
    assert dataset.labels.tolist() == [0, 0, 1, 2, 2]
    files = [
        folder / "b_cat" / "a.png",
        folder / "b_cat" / "sub" / "c.png",
        folder / "n01" / "x.jpeg",
        folder / "zebra" / "a.JPG",
        folder / "zebra" / "b.png",
    ]
    assert dataset.images.shape == (5, 3, 20, 20)
    assert dataset.images.dtype == np.uint8
    for index, file in enumerate(files):
        np.testing.assert_array_equal(dataset.images[index], _by_hand(file, 24, 20))
    _, pixels, _ = next(dataset.batches(8, dtype=np.float64))
    np.testing.assert_array_equal(pixels, dataset.images.astype(np.float64) / 255)


def test_defaults_are_imagenet_evaluation(folder: Path) -> None:
    dataset = read_imagefolder(folder, limit=2)
    assert dataset.images.shape == (2, 3, 224, 224)
    np.testing.assert_array_equal(
        dataset.images[1], _by_hand(folder / "b_cat" / "sub" / "c.png", 256, 224)
    )


def test_limit_and_threads_do_not_change_pixels(folder: Path) -> None:
    one = read_imagefolder(folder, resize=16, crop=16, threads=1)
    many = read_imagefolder(folder, resize=16, crop=16, threads=4, limit=3)
    np.testing.assert_array_equal(one.images[:3], many.images)
    assert many.num_classes == 3  # the classes are the folders, whatever the limit


def test_corrupt_file_is_one_line_naming_it(folder: Path) -> None:
    bad = folder / "n01" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(DatasetError, match=r"broken\.png: cannot decode the image") as info:
        read_imagefolder(folder, resize=16, crop=16)
    assert "\n" not in str(info.value)


def test_truncated_jpeg_is_refused(folder: Path) -> None:
    good = folder / "zebra" / "a.JPG"
    data = good.read_bytes()
    good.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=r"a\.JPG: cannot decode"):
        read_imagefolder(folder, resize=16, crop=16)


def test_layout_errors(tmp_path: Path, folder: Path) -> None:
    with pytest.raises(DatasetError, match="no folder"):
        read_imagefolder(tmp_path / "missing")
    (folder / "z_empty").mkdir()
    with pytest.raises(DatasetError, match="'z_empty' holds no image file"):
        read_imagefolder(folder)
    single = tmp_path / "single"
    _write(single / "only" / "a.png", (8, 8), 0)
    with pytest.raises(DatasetError, match="at least 2"):
        read_imagefolder(single)


def test_option_errors(folder: Path) -> None:
    with pytest.raises(UsageError, match="crop <= resize"):
        read_imagefolder(folder, resize=16, crop=20)
    with pytest.raises(UsageError, match="resize >= 1"):
        read_imagefolder(folder, resize=0)
    with pytest.raises(
        UsageError, match=r"resize and crop \(--resize, --crop\) are for imagefolder"
    ):
        load_dataset("mnist", crop=20)


def test_cli_certifies_a_folder_and_says_radii_are_in_preprocessed_pixels(folder: Path) -> None:
    import json

    from typer.testing import CliRunner

    from lipcert.cli import app

    model = Path(__file__).resolve().parents[2] / "sample_models" / "cifar10_shaped_ce_tau16.onnx"
    arguments = ["certify", str(model), "--dataset", f"imagefolder:{folder}"]
    _ten_classes(folder)  # one folder per class of the 10-class model
    result = CliRunner().invoke(
        app, [*arguments, "--resize", "36", "--crop", "32", "--json", "--quiet", "--no-config"]
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["n"] == 12
    assert document["input_space"].startswith("the preprocessed 32x32 pixels")
    assert not any("imagefolder: shorter side" in note for note in document["notes"])
    # Neither given: the model's 3x32x32 input sets them (resize 37, crop 32), and the
    # notes say so.
    result = CliRunner().invoke(app, [*arguments, "--json", "--quiet", "--no-config"])
    assert result.exit_code == 0, result.output
    notes = json.loads(result.stdout)["notes"]
    assert any("resized to 37 (round(32 / 0.875)) and centre crop 32x32" in n for n in notes)
    assert any("1 file without an image extension skipped" in n for n in notes)
    # A crop that does not fit the model: one line naming both, exit 2, before any decoding.
    result = CliRunner().invoke(app, [*arguments, "--crop", "24", "--quiet", "--no-config"])
    assert result.exit_code == 2
    line = result.output.strip()
    assert line.startswith("UsageError: crop 24 makes 24x24 images but the model takes 3x32x32")
    assert "\n" not in line
    # attack reads the same folder: its report shows the same notes (nothing skipped silently).
    attack = ["attack", str(model), "--dataset", f"imagefolder:{folder}", "--steps", "1"]
    result = CliRunner().invoke(app, [*attack, "--restarts", "1", "--no-distance"])
    assert result.exit_code == 0, result.output
    shown = " ".join(result.output.split())  # lines wrapped at the terminal's width
    assert "note: imagefolder: 1 file without an image extension skipped" in shown
    assert "resized to 37 (round(32 / 0.875)) and centre crop 32x32" in shown


def test_a_link_that_loops_back_is_refused(tmp_path: Path) -> None:
    """A class folder holding a link to itself would be walked forever: refused, naming it."""
    from lipcert.datasets.imagefolder import list_folder

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "x.png").write_bytes(b"not read here")
    (tmp_path / "a" / "loop").symlink_to(tmp_path / "a", target_is_directory=True)
    with pytest.raises(DatasetError, match="loops back"):
        list_folder(tmp_path)


def _by_hand_rect(path: Path, resize: int, height: int, width: int) -> np.ndarray:
    """Resize(resize) + CenterCrop((height, width)), with Pillow alone."""
    image = Image.open(path).convert("RGB")
    w, h = image.size
    size = (resize, int(resize * h / w)) if w <= h else (int(resize * w / h), resize)
    image = image.resize(size, Image.BILINEAR)
    w, h = image.size
    top, left = round((h - height) / 2.0), round((w - width) / 2.0)
    return np.array(image.crop((left, top, left + width, top + height))).transpose(2, 0, 1)


@pytest.mark.parametrize(
    ("resize", "crop", "shape", "expected"),
    [
        pytest.param(None, None, (3, 224, 224), (256, (224, 224)), id="imagenet"),
        pytest.param(None, None, (3, 32, 32), (37, (32, 32)), id="cifar_sized"),
        pytest.param(None, None, (3, 20, 28), (32, (20, 28)), id="rectangle"),
        pytest.param(300, None, (3, 224, 224), (300, (224, 224)), id="resize_given"),
        pytest.param(None, 224, (3, 224, 224), (256, (224, 224)), id="crop_given_matches"),
        pytest.param(None, None, None, (256, (224, 224)), id="no_model_shape"),
        pytest.param(None, 32, None, (37, (32, 32)), id="crop_alone"),
        pytest.param(None, None, (784,), (256, (224, 224)), id="vector_model"),
    ],
)
def test_sizes_follow_the_model(resize, crop, shape, expected) -> None:
    from lipcert.datasets.imagefolder import choose_sizes

    sizes = choose_sizes(resize, crop, shape)
    assert (sizes.resize, sizes.crop) == expected
    # The note is there exactly when a size was taken from the model.
    assert (sizes.note is not None) == (
        shape is not None and len(shape) == 3 and None in (resize, crop)
    )


def test_sizes_that_do_not_fit_the_model_are_one_line() -> None:
    from lipcert.datasets.imagefolder import choose_sizes

    expected = r"^crop 200 makes 200x200 images but the model takes 3x224x224: give crop 224"
    with pytest.raises(UsageError, match=expected):
        choose_sizes(None, 200, (3, 224, 224))
    with pytest.raises(UsageError, match="model takes 3x20x28"):
        choose_sizes(None, 20, (3, 20, 28))
    with pytest.raises(UsageError, match=r"resize >= 224 \(the model takes 3x224x224\)"):
        choose_sizes(200, None, (3, 224, 224))
    with pytest.raises(UsageError, match="crop <= resize but got 24 > 20"):
        choose_sizes(20, 24, None)
    with pytest.raises(
        DatasetError, match=r"read as RGB \(3 channels\) but the model takes 1x28x28"
    ):
        choose_sizes(None, None, (1, 28, 28))


def test_pixels_at_the_model_size_match_pillow(folder: Path) -> None:
    """A 3x20x28 model: shorter side 32 = round(28 / 0.875), centre crop 20 high, 28 wide."""
    dataset = load_dataset(f"imagefolder:{folder}", model_shape=(3, 20, 28))
    assert dataset.images.shape == (5, 3, 20, 28)
    files = [
        folder / "b_cat" / "a.png",
        folder / "b_cat" / "sub" / "c.png",
        folder / "n01" / "x.jpeg",
        folder / "zebra" / "a.JPG",
        folder / "zebra" / "b.png",
    ]
    for index, file in enumerate(files):
        np.testing.assert_array_equal(dataset.images[index], _by_hand_rect(file, 32, 20, 28))
    assert any("resized to 32" in note for note in dataset.notes)
    # Given sizes win over the model's (a matching crop, another resize).
    square = read_imagefolder(folder, resize=40, model_shape=(3, 24, 24))
    np.testing.assert_array_equal(
        square.images[2], _by_hand_rect(folder / "n01" / "x.jpeg", 40, 24, 24)
    )


def test_hidden_entries_are_not_read_and_skips_are_counted(folder: Path) -> None:
    """A hidden folder is no class (the labels would shift), hidden files are no samples
    (macOS's ._x.jpg forks do not decode); other non-images are skipped and counted."""
    plain = read_imagefolder(folder, resize=16, crop=16)
    _write(folder / ".ipynb_checkpoints" / "a.png", (20, 20), 7)
    _write(folder / "a_first" / ".hidden" / "q.png", (20, 20), 8)
    _write(folder / "a_first" / "ok.png", (20, 20), 9)
    (folder / "zebra" / "._a.JPG").write_bytes(b"\x00\x05\x16\x07 AppleDouble, not a JPEG")
    (folder / "n01" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (folder / "n01" / "README").write_text("no extension")
    dataset = read_imagefolder(folder, resize=16, crop=16)
    assert dataset.class_names == ("a_first", "b_cat", "n01", "zebra")
    assert dataset.labels.tolist() == [0, 1, 1, 2, 3, 3]
    np.testing.assert_array_equal(dataset.images[1:], plain.images)
    assert dataset.notes == (
        "imagefolder: 2 files without an image extension skipped (the first: 'b_cat/notes.txt')",
    )
    # A hidden folder alone does not make a second class.
    lone = folder.parent / "lone"
    _write(lone / "cls" / "a.png", (8, 8), 0)
    _write(lone / ".cache" / "b.png", (8, 8), 0)
    with pytest.raises(DatasetError, match=r"found 1 \(hidden folders"):
        read_imagefolder(lone)


def test_an_image_extension_on_another_file_is_an_error_naming_it(folder: Path) -> None:
    (folder / "n01" / "table.jpg").write_text("a,b\n1,2\n")
    with pytest.raises(DatasetError, match=r"n01/table\.jpg: cannot decode the image"):
        read_imagefolder(folder, resize=16, crop=16)


def test_declared_input_shape_reads_the_file_only(tmp_path: Path) -> None:
    """The shape an image folder is cropped to: what the file states, or None when open."""
    import onnx
    from onnx import TensorProto, helper

    from lipcert.frontends.declared import declared_input_shape

    models = Path(__file__).resolve().parents[2] / "sample_models"
    assert declared_input_shape(models / "cifar10_shaped_ce_tau16.onnx") == (3, 32, 32)
    assert declared_input_shape(models / "cifar10_shaped_ce_tau16.safetensors") == (3, 32, 32)
    given = (3, 24, 24)  # --input-shape, parsed by the command line
    assert declared_input_shape(models / "cifar10_shaped_ce_tau16.onnx", given) == given
    open_size = helper.make_model(
        helper.make_graph(
            [helper.make_node("Relu", ["x"], ["y"])],
            "open",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3, "h", "w"])],
        )
    )
    onnx.save(open_size, tmp_path / "open.onnx")
    assert declared_input_shape(tmp_path / "open.onnx") is None


def test_api_reads_a_folder_at_the_model_size(folder: Path) -> None:
    """lipcert.certify_dataset(model, "imagefolder:...") crops to the model's 3x32x32."""
    import lipcert

    models = Path(__file__).resolve().parents[2] / "sample_models"
    model = lipcert.load(models / "cifar10_shaped_ce_tau16.onnx")
    _ten_classes(folder)  # one folder per class of the 10-class model
    report = lipcert.certify_dataset(model, f"imagefolder:{folder}", eps=[36 / 255])
    assert report.n == 12
    files = ["b_cat/a.png", "b_cat/sub/c.png", "n01/x.jpeg", "zebra/a.JPG", "zebra/b.png"]
    files += [f"zz{index}/a.png" for index in range(7)]
    by_hand = np.stack([_by_hand(folder / name, 37, 32) for name in files]) / 255
    expected = model.certify(by_hand.astype(np.float32), eps=[36 / 255])
    # The same pixels (a resize of 36 or 38, or another crop, moves radii by far more).
    np.testing.assert_allclose(report.samples.radius, expected.radius, rtol=1e-9)
