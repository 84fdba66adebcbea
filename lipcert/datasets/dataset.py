"""The Dataset every reader returns, and the invariants it guarantees."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from lipcert.datasets.checks import check_label_range, check_same_count, check_unit_interval
from lipcert.errors import DatasetError, UsageError


@dataclass(frozen=True)
class Dataset:
    """Labelled images or feature vectors, checked on construction.

    kind "images": images is (N, C, H, W), either uint8 in 0..255 or float32 or float64 in
    [0, 1], and batches() yields pixels in [0, 1] (uint8 / 255; float pixels as they are,
    rounded to the batch's dtype). kind "features": images is (N, d)
    float64, any finite values, yielded as they are (no scaling: radii are in the units of
    the features). labels is (N,) int64 in 0..num_classes-1; N >= 1.
    """

    name: str
    split: str
    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    class_names: tuple[str, ...] | None
    source: str
    kind: str = "images"
    # What the reader chose or skipped that the report should say (imagefolder: sizes
    # taken from the model, files skipped).
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        source = self.source
        if self.kind == "features":
            self._check_features()
        elif self.kind != "images":
            raise DatasetError(f"{source}: expected kind 'images' or 'features', not {self.kind!r}")
        elif self.images.ndim != 4:
            raise DatasetError(
                f"{source}: expected images of shape (N, C, H, W) but found shape "
                f"{self.images.shape!r}"
            )
        if self.kind == "images" and self.images.dtype not in (np.uint8, np.float32, np.float64):
            raise DatasetError(
                f"{source}: expected uint8, float32 or float64 images but found dtype "
                f"{str(self.images.dtype)!r}"
            )
        if self.labels.ndim != 1 or self.labels.dtype != np.int64:
            raise DatasetError(
                f"{source}: expected labels of shape (N,) and dtype int64 but found shape "
                f"{self.labels.shape!r} and dtype {str(self.labels.dtype)!r}"
            )
        check_same_count(len(self.images), len(self.labels), source=source)
        if self.images.size == 0:
            raise DatasetError(
                f"{source}: expected at least one non-empty image but found images of shape "
                f"{self.images.shape!r}"
            )
        if self.num_classes < 2:
            raise DatasetError(
                f"{source}: expected at least 2 classes but found num_classes={self.num_classes!r}"
            )
        check_label_range(self.labels, self.num_classes, source=source, what="labels")
        if self.kind == "images" and self.images.dtype != np.uint8:
            check_unit_interval(self.images, source=source, what="images")
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise DatasetError(
                f"{source}: expected {self.num_classes} class names but found "
                f"{len(self.class_names)}"
            )

    def _check_features(self) -> None:
        source = self.source
        if self.images.ndim != 2 or self.images.dtype != np.float64:
            raise DatasetError(
                f"{source}: expected features of shape (N, d) and dtype float64 but found shape "
                f"{self.images.shape!r} and dtype {str(self.images.dtype)!r}"
            )
        bad = np.flatnonzero(~np.isfinite(self.images).all(axis=1))
        if bad.size:
            raise DatasetError(
                f"{source}: expected finite feature values but row {int(bad[0])} holds "
                f"{self.images[int(bad[0])].tolist()!r}"
            )

    @property
    def is_features(self) -> bool:
        return self.kind == "features"

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def batches(
        self, batch_size: int, dtype: type[np.floating] = np.float32
    ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(start index, inputs of `dtype`, int64 labels) for consecutive batches.

        Features are yielded as they are (rounded to `dtype`). uint8 pixels are divided by
        255 in `dtype` (float32 or float64, correctly rounded),
        one batch at a time, so the dataset is never held as float all at once. Every
        yielded array is a fresh copy the caller may modify.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise UsageError(f"expected a batch size >= 1 but got {batch_size!r}")
        for start in range(0, len(self), batch_size):
            stop = start + batch_size
            pixels = self.images[start:stop].astype(dtype)
            if self.kind == "images" and self.images.dtype == np.uint8:
                pixels /= dtype(255)
            yield start, pixels, self.labels[start:stop].copy()
