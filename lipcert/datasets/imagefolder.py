"""Images kept as users keep ImageNet: one folder per class, JPEG or PNG files in it.

The layout and the order are torchvision's ImageFolder's: classes are the sub-folders of the
root, sorted by name (class i is the i-th name); each class's files are found by walking its
folder (sub-folders included), sorted, keeping the image extensions below (any case). Unlike
torchvision, hidden entries (a name starting with ".") are never read: a hidden folder
(.ipynb_checkpoints, .git) is not a class, which would shift every label after it, and a
hidden file (.DS_Store, macOS's ._x.jpg resource forks) is not a sample. Files without an
image extension are skipped, as torchvision skips them; the dataset's notes count them. A
file with an image extension that does not decode is an error naming it.

Each image gets the standard evaluation preprocessing, computed as torchvision computes it
on a PIL image: converted to RGB (as torchvision's loader converts it: the EXIF orientation
is not applied, so the stored pixels are read, not the picture a viewer shows rotated; an
alpha channel is dropped, not composited; palette and grayscale images are expanded; 16-bit
RGB keeps each sample's high byte; 16-bit or 32-bit grayscale and float images are refused,
since the conversion would clip them to 0..255), resized with bilinear interpolation so that
its shorter side is `resize` pixels (the longer side int(resize * long / short)), then the
central crop of the model's size is cut out (offsets int(round((size - crop) / 2)), Python's
round half to even). The sizes follow the model when it fixes its input (`choose_sizes`):
crop to its H x W, resize to round(max(H, W) / 0.875), ImageNet's 256 for 224. The result is
kept as uint8: pixels are divided by 255 when batched, and `--mean/--std` is part of the
certified function, so radii are in the space of these preprocessed pixels in [0, 1] (not of
the original files).

Decoding runs in a pool of threads: Pillow releases the GIL while it decodes and resizes.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lipcert.datasets.dataset import Dataset
from lipcert.errors import DatasetError, UsageError

PREFIX = "imagefolder:"
# torchvision's IMG_EXTENSIONS.
EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
DEFAULT_CROP = 224
# crop / resize of the standard ImageNet evaluation (224 / 256): the resize a crop gets.
CROP_FRACTION = 0.875
# Pillow's modes of 8-bit samples (16-bit RGB and RGBA PNGs open as RGB and RGBA, their high
# bytes): convert("RGB") maps these faithfully. Grayscale of 16 or 32 bits (I;16, I) and
# float (F) it clips to 0..255 without scaling: a 16-bit gradient reads nearly all white.
EIGHT_BIT_MODES = frozenset(
    {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "HSV"}
)


@dataclass(frozen=True)
class Sizes:
    """The preprocessing of every image: shorter side resized to `resize`, then the central
    `crop` = (height, width) cut out; `note` says where the sizes came from (None: given)."""

    resize: int
    crop: tuple[int, int]
    note: str | None = None


def resize_for(crop: int) -> int:
    """The resize the standard evaluation gives a crop: round(crop / 0.875), 256 for 224."""
    return max(crop, round(crop / CROP_FRACTION))


def choose_sizes(
    resize: int | None, crop: int | None, model_shape: tuple[int, ...] | None = None
) -> Sizes:
    """--resize/--crop, each taken from the model's input when not given.

    With a model that fixes a (C, H, W) input: the crop is H x W (a given --crop must equal
    it, one line otherwise) and the resize round(max(H, W) / 0.875). Without one: crop 224,
    resize round(crop / 0.875) (256). A given --resize is always used as given.
    """
    for name, value in (("resize", resize), ("crop", crop)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise UsageError(f"expected {name} >= 1 but got {value!r}")
    if model_shape is None or len(model_shape) != 3:
        side = DEFAULT_CROP if crop is None else crop
        sizes = Sizes(resize_for(side) if resize is None else resize, (side, side))
    else:
        sizes = _sizes_from_model(resize, crop, tuple(int(d) for d in model_shape))
    if max(sizes.crop) > sizes.resize:
        crop_text = "x".join(str(d) for d in dict.fromkeys(sizes.crop))
        raise UsageError(f"expected crop <= resize but got {crop_text} > {sizes.resize}")
    return sizes


def _sizes_from_model(resize: int | None, crop: int | None, shape: tuple[int, ...]) -> Sizes:
    channels, height, width = shape
    text = f"{channels}x{height}x{width}"
    if channels != 3:
        raise DatasetError(
            f"imagefolder: images are read as RGB (3 channels) but the model takes {text}"
        )
    if crop is not None and (crop, crop) != (height, width):
        hint = f"give crop {height} or" if height == width else "for it,"
        raise UsageError(
            f"crop {crop} makes {crop}x{crop} images but the model takes {text}: "
            f"{hint} leave crop out (it follows the model)"
        )
    chosen = resize_for(max(height, width)) if resize is None else resize
    if chosen < max(height, width):
        raise UsageError(
            f"expected resize >= {max(height, width)} (the model takes {text}) but got {chosen}"
        )
    taken = []
    if resize is None:
        taken.append(f"shorter side resized to {chosen} (round({max(height, width)} / 0.875))")
    if crop is None:
        taken.append(f"centre crop {height}x{width}")
    note = None
    if taken:
        note = (
            f"imagefolder: {' and '.join(taken)}, from the model's input size (the standard "
            "ImageNet evaluation; resize and crop override)"
        )
    return Sizes(chosen, (height, width), note)


def is_imagefolder(name: str) -> bool:
    """Whether a --dataset value names an image folder (imagefolder:PATH)."""
    return name.lower().startswith(PREFIX)


@dataclass(frozen=True)
class Listing:
    """What an image folder holds: class names, (file, class index) samples in order, and
    the files skipped for lacking an image extension (hidden entries are not listed)."""

    classes: list[str]
    samples: list[tuple[Path, int]]
    skipped: list[Path]


def list_folder(root: Path) -> Listing:
    """The classes and samples of an image folder (see the module), hidden entries left out."""
    if not root.is_dir():
        raise DatasetError(f"expected a folder of class folders but found no folder {str(root)!r}")
    try:
        classes = sorted(
            entry.name for entry in os.scandir(root) if entry.is_dir() and not _hidden(entry.name)
        )
    except OSError as exc:
        raise DatasetError(f"{root}: cannot list the folder: {exc.strerror or exc}") from exc
    if len(classes) < 2:
        raise DatasetError(
            f"{root}: expected one sub-folder per class (at least 2) but found {len(classes)}"
            " (hidden folders, named '.*', are not classes)"
        )
    samples: list[tuple[Path, int]] = []
    skipped: list[Path] = []
    for index, name in enumerate(classes):
        found = []
        for folder, files in _walk(root / name):
            for file in sorted(files):
                if _hidden(file):
                    continue
                if file.lower().endswith(EXTENSIONS):
                    found.append((Path(folder) / file, index))
                else:
                    skipped.append(Path(folder) / file)
        if not found:
            raise DatasetError(
                f"{root}: class folder {name!r} holds no image file ({', '.join(EXTENSIONS)})"
            )
        samples.extend(found)
    return Listing(classes, samples, skipped)


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _walk(top: Path) -> list[tuple[str, list[str]]]:
    """(folder, files) under `top`, links followed, hidden sub-folders left out, sorted as
    `sorted(os.walk(...))` sorts; a link back to a folder already walked is refused (it
    would loop forever)."""
    seen: set[str] = set()
    walked: list[tuple[str, list[str]]] = []
    for folder, folders, files in os.walk(top, followlinks=True):
        folders[:] = [name for name in folders if not _hidden(name)]  # os.walk then skips them
        real = os.path.realpath(folder)
        if real in seen:
            raise DatasetError(f"{folder}: a link loops back to a folder already read")
        seen.add(real)
        walked.append((folder, files))
    return sorted(walked)


def pillow() -> Any:
    """PIL.Image, or a usage error saying how to install it."""
    try:
        from PIL import Image
    except ImportError:
        raise UsageError(
            "imagefolder: needs Pillow, which is not installed: pip install 'lipcert[images]'"
        ) from None
    return Image


def preprocess(path: Path, resize: int, crop: int | tuple[int, int]) -> np.ndarray:
    """The (3, height, width) uint8 pixels of one file: RGB, shorter side resized to
    `resize`, centre crop `crop` (a side, or (height, width))."""
    Image = pillow()
    crop_height, crop_width = (crop, crop) if isinstance(crop, int) else crop
    try:
        with Image.open(path) as image:
            if image.mode not in EIGHT_BIT_MODES:  # DatasetError is none of those caught
                raise DatasetError(
                    f"{path}: a {image.mode!r} image, not of 8-bit samples: converting it to "
                    "8-bit RGB, as torchvision's loader does, clips 16-bit, 32-bit and float "
                    "values to 0..255 without scaling them; save it as 8-bit grayscale or RGB"
                )
            rgb = image.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise DatasetError(f"{path}: cannot decode the image: {reason}") from exc
    width, height = rgb.size
    short, long = min(width, height), max(width, height)
    if short == 0:
        raise DatasetError(f"{path}: the image is empty ({width}x{height})")
    new_long = int(resize * long / short)
    size = (resize, new_long) if width <= height else (new_long, resize)
    if (width, height) != size:
        rgb = rgb.resize(size, Image.Resampling.BILINEAR)
    width, height = rgb.size
    if crop_width > width or crop_height > height:
        raise UsageError(
            f"expected crop <= resize but got crop {crop_height}x{crop_width} for an image "
            f"resized to {width}x{height} ({path})"
        )
    top = round((height - crop_height) / 2.0)
    left = round((width - crop_width) / 2.0)
    box = rgb.crop((left, top, left + crop_width, top + crop_height))
    return np.asarray(box, dtype=np.uint8).transpose(2, 0, 1)


def read_imagefolder(
    root: str | Path,
    *,
    limit: int | None = None,
    resize: int | None = None,
    crop: int | None = None,
    threads: int | None = None,
    model_shape: tuple[int, ...] | None = None,
) -> Dataset:
    """A Dataset of the first `limit` images of an image folder, preprocessed (see the module).

    `resize` and `crop` default to the model's input size when `model_shape` (C, H, W) is
    given (`choose_sizes`), else to 256 and 224 (torchvision's ImageNet evaluation); the
    dataset's notes say which were taken from the model and how many files were skipped.
    `threads` decode in parallel (default: the number of CPUs).
    """
    sizes = choose_sizes(resize, crop, model_shape)
    path = Path(root).expanduser()
    pillow()
    listing = list_folder(path)
    samples = listing.samples if limit is None else listing.samples[:limit]
    images = np.empty((len(samples), 3, *sizes.crop), dtype=np.uint8)
    workers = max(1, threads or os.cpu_count() or 1)

    def decode(index: int) -> None:
        images[index] = preprocess(samples[index][0], sizes.resize, sizes.crop)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        # list() re-raises the first failure, in file order.
        list(pool.map(decode, range(len(samples))))
    labels = np.array([label for _, label in samples], dtype=np.int64)
    notes = [] if sizes.note is None else [sizes.note]
    if listing.skipped:
        first = listing.skipped[0].relative_to(path)
        count = len(listing.skipped)
        notes.append(
            f"imagefolder: {count} file{'s' if count > 1 else ''} without an image extension "
            f"skipped (the first: {str(first)!r})"
        )
    return Dataset(
        name=path.name or str(path),
        split="folder",
        images=images,
        labels=labels,
        num_classes=len(listing.classes),
        class_names=tuple(listing.classes),
        source=str(path),
        notes=tuple(notes),
    )
