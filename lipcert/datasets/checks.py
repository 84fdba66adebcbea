"""Checks shared by the dataset readers. Each raises DatasetError naming the source."""

from __future__ import annotations

import numpy as np

from lipcert.errors import DatasetError


def check_label_range(labels: np.ndarray, num_classes: int, *, source: str, what: str) -> None:
    """Refuse any label outside 0..num_classes-1; `what` names the labels in the message."""
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        index = int(bad[0])
        raise DatasetError(
            f"{source}: expected {what} in 0..{num_classes - 1} but found "
            f"{labels[index].item()!r} at index {index}"
        )


def check_unit_interval(pixels: np.ndarray, *, source: str, what: str) -> None:
    """Refuse float pixels that are not finite or lie outside [0, 1]."""
    not_finite = ~np.isfinite(pixels)
    if not_finite.any():
        index = int(np.flatnonzero(not_finite.reshape(-1))[0])
        value = pixels.reshape(-1)[index].item()
        raise DatasetError(
            f"{source}: expected finite pixel values in {what} but found {value!r} "
            f"at flat index {index}"
        )
    low, high = float(pixels.min()), float(pixels.max())
    if low < 0.0 or high > 1.0:
        raise DatasetError(
            f"{source}: expected float pixels in [0, 1] in {what} but found values in "
            f"[{low!r}, {high!r}]; scale them to [0, 1] or store uint8 0..255"
        )


def check_same_count(images: int, labels: int, *, source: str) -> None:
    """Refuse a dataset whose image and label counts differ."""
    if images != labels:
        raise DatasetError(
            f"{source}: expected as many labels as images but found {images} images "
            f"and {labels} labels"
        )


def pixel_like_note(features: np.ndarray) -> tuple[str, ...]:
    """A note when (N, d) features look like pixels 0..255 (integers, some above 1, none
    outside 0..255): they are used unscaled, so radii, and every --eps, are in those units,
    255 times those of pixels in [0, 1]. Empty otherwise: any integer features can look so,
    so this is said, not refused."""
    if features.size == 0 or not np.all(np.isfinite(features)):
        return ()
    low, high = float(features.min()), float(features.max())
    if low < 0 or high > 255 or high <= 1 or not np.all(features == np.round(features)):
        return ()
    return (
        "features: every value is an integer in 0..255, as pixels are; features are not "
        "scaled (radii and eps are in these units), so if they are pixels, store x / 255",
    )
