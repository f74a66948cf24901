"""The dataset object every loader returns: uint8 NHWC images, int64 labels, class names."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pvt_np.data.loader import BatchLoader

__all__ = ["SPLITS", "Dataset", "check_split"]

SPLITS = ("train", "test")


def check_split(split: str) -> str:
    """Validate a split name ('train' or 'test')."""
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    return split


def check_images(images: Any, owner: str) -> None:
    """A data set's images: a uint8 NumPy array (N, H, W, 3); else a ValueError naming ``owner`` and what came."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise ValueError(
            f"{owner}: images must be a uint8 NumPy array (N, H, W, 3), got "
            f"{type(images).__name__} {getattr(images, 'dtype', '')} {tuple(getattr(images, 'shape', ()))}"
        )


@dataclass(frozen=True, eq=False)
class Dataset:
    """An in-memory image classification split.

    images: uint8 (N, H, W, 3), channels last, as decoded (no normalisation).
    labels: int64 (N,), each in [0, len(classes)).
    classes: class names; label k is ``classes[k]``.
    name, split, source: where the data came from (for messages and logs).

    Kept on the host: a :class:`~pvt_np.data.BatchLoader` moves it to the device once.
    """

    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    name: str = "dataset"
    split: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        images, labels = self.images, self.labels
        check_images(images, "Dataset")
        labels = np.asarray(labels)
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise ValueError(f"Dataset: labels must be integers of shape (N,), got {labels.dtype} {labels.shape}")
        if labels.shape[0] != images.shape[0]:
            raise ValueError(f"Dataset: {images.shape[0]} images but {labels.shape[0]} labels")
        classes = tuple(str(c) for c in self.classes)
        if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
            raise ValueError(f"Dataset: labels must lie in [0, {len(classes)}), got [{labels.min()}, {labels.max()}]")
        object.__setattr__(self, "labels", labels.astype(np.int64, copy=False))
        object.__setattr__(self, "classes", classes)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        h, w = self.image_size
        where = f", source={self.source!r}" if self.source else ""
        return (
            f"Dataset(name={self.name!r}, split={self.split!r}, n={len(self)}, image_size=({h}, {w}), "
            f"num_classes={self.num_classes}{where})"
        )

    @property
    def num_classes(self) -> int:
        """Number of classes (the width of soft targets)."""
        return len(self.classes)

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of every image."""
        return int(self.images.shape[1]), int(self.images.shape[2])

    def mean_std(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel mean and std of the pixels on the 0-1 scale (float64, computed in chunks).

        Use the training split's statistics for ``BatchLoader(mean=..., std=...)``.
        """
        total = np.zeros(3)
        total_sq = np.zeros(3)
        for start in range(0, len(self), 4096):
            chunk = self.images[start : start + 4096].reshape(-1, 3).astype(np.float64)
            total += chunk.sum(axis=0)
            total_sq += np.square(chunk).sum(axis=0)
        count = max(1, len(self) * self.image_size[0] * self.image_size[1])
        mean = total / count
        var = np.maximum(total_sq / count - mean**2, 0.0)
        return mean / 255.0, np.sqrt(var) / 255.0

    def loader(self, batch_size: int, **kwargs: Any) -> BatchLoader:
        """A :class:`~pvt_np.data.BatchLoader` over this split (``num_classes`` filled in)."""
        kwargs.setdefault("num_classes", self.num_classes)
        return BatchLoader(self.images, self.labels, batch_size, **kwargs)
