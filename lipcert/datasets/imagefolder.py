"""Images kept as users keep ImageNet: one folder per class, JPEG or PNG files in it.

The layout and the order are torchvision's ImageFolder's: classes are the sub-folders of the
root, sorted by name (class i is the i-th name); each class's files are found by walking its
folder (sub-folders included), sorted, keeping the image extensions below (any case).

Each image gets the standard evaluation preprocessing, computed as torchvision computes it
on a PIL image: converted to RGB, resized with bilinear interpolation so that its shorter side
is `resize` pixels (the longer side int(resize * long / short)), then the central `crop` x
`crop` square is cut out (offsets int(round((size - crop) / 2))). The result is kept as uint8:
pixels are divided by 255 when batched, and `--mean/--std` is part of the certified function,
so radii are in the space of these preprocessed pixels in [0, 1] (not of the original files).

Decoding runs in a pool of threads: Pillow releases the GIL while it decodes and resizes.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from lipcert.datasets.dataset import Dataset
from lipcert.errors import DatasetError, UsageError

PREFIX = "imagefolder:"
# torchvision's IMG_EXTENSIONS.
EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
DEFAULT_CROP = 224
DEFAULT_RESIZE = 256


def is_imagefolder(name: str) -> bool:
    """Whether a --dataset value names an image folder (imagefolder:PATH)."""
    return name.lower().startswith(PREFIX)


def find_images(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """(class names, [(file, class index)]) in torchvision ImageFolder's order."""
    if not root.is_dir():
        raise DatasetError(f"expected a folder of class folders but found no folder {str(root)!r}")
    try:
        classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    except OSError as exc:
        raise DatasetError(f"{root}: cannot list the folder: {exc.strerror or exc}") from exc
    if len(classes) < 2:
        raise DatasetError(
            f"{root}: expected one sub-folder per class (at least 2) but found {len(classes)}"
        )
    samples: list[tuple[Path, int]] = []
    for index, name in enumerate(classes):
        found = []
        for folder, files in _walk(root / name):
            for file in sorted(files):
                if file.lower().endswith(EXTENSIONS):
                    found.append((Path(folder) / file, index))
        if not found:
            raise DatasetError(
                f"{root}: class folder {name!r} holds no image file ({', '.join(EXTENSIONS)})"
            )
        samples.extend(found)
    return classes, samples


def _walk(top: Path) -> list[tuple[str, list[str]]]:
    """(folder, files) under `top`, links followed, sorted as `sorted(os.walk(...))` sorts;
    a link back to a folder already walked is refused (it would loop forever)."""
    seen: set[str] = set()
    walked: list[tuple[str, list[str]]] = []
    for folder, _, files in os.walk(top, followlinks=True):
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


def preprocess(path: Path, resize: int, crop: int) -> np.ndarray:
    """The (3, crop, crop) uint8 pixels of one file: RGB, shorter side resized, centre crop."""
    Image = pillow()
    try:
        with Image.open(path) as image:
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
    if crop > width or crop > height:
        raise UsageError(
            f"expected --crop <= --resize but got crop {crop} for an image resized to "
            f"{width}x{height} ({path})"
        )
    top = round((height - crop) / 2.0)
    left = round((width - crop) / 2.0)
    box = rgb.crop((left, top, left + crop, top + crop))
    return np.asarray(box, dtype=np.uint8).transpose(2, 0, 1)


def read_imagefolder(
    root: str | Path,
    *,
    limit: int | None = None,
    resize: int | None = None,
    crop: int | None = None,
    threads: int | None = None,
) -> Dataset:
    """A Dataset of the first `limit` images of an image folder, preprocessed (see the module).

    `resize` defaults to 256 and `crop` to 224 (torchvision's ImageNet evaluation); `threads`
    decode in parallel (default: the number of CPUs).
    """
    resize = DEFAULT_RESIZE if resize is None else resize
    crop = DEFAULT_CROP if crop is None else crop
    for name, value in (("--resize", resize), ("--crop", crop)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError(f"expected {name} >= 1 but got {value!r}")
    if crop > resize:
        raise UsageError(f"expected --crop <= --resize but got {crop} > {resize}")
    path = Path(root).expanduser()
    pillow()
    classes, samples = find_images(path)
    if limit is not None:
        samples = samples[:limit]
    images = np.empty((len(samples), 3, crop, crop), dtype=np.uint8)
    workers = max(1, threads or os.cpu_count() or 1)

    def decode(index: int) -> None:
        images[index] = preprocess(samples[index][0], resize, crop)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        # list() re-raises the first failure, in file order.
        list(pool.map(decode, range(len(samples))))
    labels = np.array([label for _, label in samples], dtype=np.int64)
    return Dataset(
        name=path.name or str(path),
        split="folder",
        images=images,
        labels=labels,
        num_classes=len(classes),
        class_names=tuple(classes),
        source=str(path),
    )
