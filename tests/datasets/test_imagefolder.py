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
    with pytest.raises(UsageError, match="--crop <= --resize"):
        read_imagefolder(folder, resize=16, crop=20)
    with pytest.raises(UsageError, match="--resize >= 1"):
        read_imagefolder(folder, resize=0)
    with pytest.raises(UsageError, match="--resize and --crop are for imagefolder"):
        load_dataset("mnist", crop=20)


def test_cli_certifies_a_folder_and_says_radii_are_in_preprocessed_pixels(folder: Path) -> None:
    import json

    from typer.testing import CliRunner

    from lipcert.cli import app

    model = Path(__file__).resolve().parents[2] / "sample_models" / "cifar10_shaped_ce_tau16.onnx"
    arguments = ["certify", str(model), "--dataset", f"imagefolder:{folder}"]
    result = CliRunner().invoke(
        app, [*arguments, "--resize", "36", "--crop", "32", "--json", "--quiet", "--no-config"]
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["n"] == 5
    assert document["input_space"].startswith("the preprocessed 32x32 pixels")
    # The default crop, 224, does not fit a 32x32 model: one line, exit 2.
    result = CliRunner().invoke(app, [*arguments, "--quiet", "--no-config"])
    assert result.exit_code == 2
    assert result.output.strip().startswith("DatasetError:")


def test_a_link_that_loops_back_is_refused(tmp_path: Path) -> None:
    """A class folder holding a link to itself would be walked forever: refused, naming it."""
    from lipcert.datasets.imagefolder import find_images

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "x.png").write_bytes(b"not read here")
    (tmp_path / "a" / "loop").symlink_to(tmp_path / "a", target_is_directory=True)
    with pytest.raises(DatasetError, match="loops back"):
        find_images(tmp_path)
