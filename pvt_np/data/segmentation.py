"""Semantic segmentation data: the folder layout reader and mini-batches whose masks move with their images.

Folder layout (what Oxford-IIIT Pet trimaps or Pascal VOC's SegmentationClass become once split)::

    <root>/<split>/images/<name>.jpg|jpeg|png
    <root>/<split>/masks/<name>.png
    <root>/classes.txt          (optional: one class name per line, class id = line number from 0)

A mask is a single-channel PNG (mode L, or P whose palette indices are taken as they are, as
VOC's are): its pixel values are the class ids, 255 = ignore. Images and masks pair by file
stem. Every image of a split must have one size (a batch is one array) unless ``size`` is
given, which resizes images bilinearly and masks by nearest neighbour; a mask must have its
image's size before any resizing. Every problem raises a :mod:`pvt_np.data.errors` exception
naming the file: an image without a mask, a mask without an image, a mis-sized mask, a class
id beyond the classes, an unreadable file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from pvt_np.backend import Array, check_device, check_float_dtype, derive_seed, get_array_module, to_device
from pvt_np.data.augment import crop_flip_gather, sample_crop_flip, to_float_nchw
from pvt_np.data.dataset import check_images, check_split
from pvt_np.data.errors import CorruptDatasetError, DatasetNotFoundError

__all__ = [
    "IGNORE_INDEX",
    "SegmentationBatch",
    "SegmentationBatches",
    "SegmentationDataset",
    "load_segmentation_folder",
]

IGNORE_INDEX = 255
_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
_LAYOUT = "<root>/<split>/images/<name>.jpg|png and <root>/<split>/masks/<name>.png"


@dataclass(frozen=True, eq=False)
class SegmentationDataset:
    """An in-memory segmentation split.

    images: uint8 (N, H, W, 3); masks: uint8 (N, H, W) class ids in [0, num_classes) or 255 (ignored);
    classes: the class names (``num_classes`` of them; ``str(k)`` where no names were given);
    names: each sample's file stem; name, split, source: where it came from (for messages).
    """

    images: np.ndarray
    masks: np.ndarray
    classes: tuple[str, ...]
    names: tuple[str, ...] = ()
    name: str = "segmentation"
    split: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        images, masks = self.images, self.masks
        check_images(images, "SegmentationDataset")
        if not isinstance(masks, np.ndarray) or masks.dtype != np.uint8 or masks.shape != images.shape[:3]:
            raise ValueError(
                f"SegmentationDataset: masks must be a uint8 NumPy array {images.shape[:3]}, got "
                f"{getattr(masks, 'dtype', type(masks).__name__)} {tuple(getattr(masks, 'shape', ()))}"
            )
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        bad = (masks >= len(self.classes)) & (masks != IGNORE_INDEX)
        if bad.any():
            raise ValueError(
                f"SegmentationDataset: mask values must lie in [0, {len(self.classes)}) or be {IGNORE_INDEX}, "
                f"got {sorted(set(np.unique(masks[bad]).tolist()))}"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        """Number of classes (the width of the segmentation head)."""
        return len(self.classes)

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of every image."""
        return int(self.images.shape[1]), int(self.images.shape[2])

    def batches(self, batch_size: int, **kwargs: Any) -> SegmentationBatches:
        """:class:`SegmentationBatches` over this split."""
        return SegmentationBatches(self.images, self.masks, batch_size, **kwargs)


def _size_arg(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if len(hw) != 2 or any(isinstance(v, bool) or int(v) != v or v < 1 for v in hw):
        raise ValueError(f"load_segmentation_folder: size must be a positive int or (height, width), got {size!r}")
    return int(hw[0]), int(hw[1])


def _read_classes(root: Path) -> tuple[str, ...] | None:
    path = root / "classes.txt"
    if not path.is_file():
        return None
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not names:
        raise CorruptDatasetError(f"{path}: the class names file is empty")
    return tuple(names)


def _stems(folder: Path, extensions: tuple[str, ...], what: str) -> dict[str, Path]:
    """stem -> file for the visible files of ``folder`` with one of ``extensions`` (a stem twice is an error)."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in extensions or not path.is_file():
            continue
        if path.stem in found:
            raise CorruptDatasetError(f"{path}: two {what} named {path.stem!r} ({found[path.stem].name}, {path.name})")
        found[path.stem] = path
    return found


def _open(path: Path, what: str) -> Image.Image:
    try:
        im = Image.open(path)
        im.load()
    except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError, ... for bad files
        raise CorruptDatasetError(f"cannot read {what} {path} ({type(err).__name__}: {err})") from None
    return im


def load_segmentation_folder(
    root: str | os.PathLike[str],
    split: str,
    *,
    num_classes: int | None = None,
    size: int | Sequence[int] | None = None,
) -> SegmentationDataset:
    """Read ``<root>/<split>/images`` and ``<root>/<split>/masks`` (see the module's docstring).

    num_classes: the classes of the head; a mask value >= num_classes other than 255 is an error.
        Default: the number of names in ``<root>/classes.txt`` when it exists, else the largest
        class id found (255 aside) + 1 (pass it when a split may lack the last class).
    size: resize every image (bilinear) and mask (nearest) to ``size`` (int or (height, width));
        without it all images of the split must share one size.
    """
    check_split(split)
    size_hw = _size_arg(size)
    root = Path(root).expanduser()
    base = root / split
    folders = {"images": base / "images", "masks": base / "masks"}
    for folder in folders.values():
        if not folder.is_dir():
            raise DatasetNotFoundError(f"{folder}: no such folder (expected {_LAYOUT})")
    names = _read_classes(root)
    if num_classes is not None:
        if isinstance(num_classes, bool) or int(num_classes) != num_classes or not 1 <= num_classes <= IGNORE_INDEX:
            raise ValueError(f"load_segmentation_folder: num_classes must be an int in [1, 255], got {num_classes!r}")
        if names is not None and len(names) != num_classes:
            raise CorruptDatasetError(
                f"{root / 'classes.txt'}: names {len(names)} classes but num_classes is {num_classes}"
            )
    images = _stems(folders["images"], _IMAGE_EXTENSIONS, "images")
    masks = _stems(folders["masks"], (".png",), "masks")
    for stem, path in images.items():
        if stem not in masks:
            raise CorruptDatasetError(f"{path}: image without a mask (expected {folders['masks'] / (stem + '.png')})")
    for stem, path in masks.items():
        if stem not in images:
            raise CorruptDatasetError(f"{path}: mask without an image (expected {folders['images'] / stem}.jpg|png)")
    if not images:
        raise CorruptDatasetError(f"{folders['images']}: no .png/.jpg/.jpeg images (expected {_LAYOUT})")
    limit = num_classes if num_classes is not None else (len(names) if names is not None else None)
    stems = tuple(sorted(images))
    image_arrays, mask_arrays = [], []
    first: tuple[Path, tuple[int, int]] | None = None
    for stem in stems:
        image, mask = _open(images[stem], "image"), _open(masks[stem], "mask")
        if mask.mode not in ("L", "P"):
            raise CorruptDatasetError(
                f"{masks[stem]}: a mask must be a single-channel PNG (mode L or P) of class ids, got mode {mask.mode}"
            )
        if mask.size != image.size:
            raise CorruptDatasetError(
                f"{masks[stem]}: mask is {mask.height}x{mask.width} but its image {images[stem].name} is "
                f"{image.height}x{image.width} (height x width)"
            )
        ids = np.asarray(mask, dtype=np.uint8)
        if limit is not None:
            bad = (ids >= limit) & (ids != IGNORE_INDEX)
            if bad.any():
                raise CorruptDatasetError(
                    f"{masks[stem]}: class ids {np.unique(ids[bad]).tolist()} are not in [0, {limit}) "
                    f"(nor {IGNORE_INDEX} = ignore)"
                )
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        if size_hw is not None:
            rgb = rgb.resize((size_hw[1], size_hw[0]), Image.BILINEAR)
            ids = np.asarray(mask.resize((size_hw[1], size_hw[0]), Image.NEAREST), dtype=np.uint8)
        elif first is None:
            first = (images[stem], (image.height, image.width))
        elif (image.height, image.width) != first[1]:
            raise CorruptDatasetError(
                f"{images[stem]}: image is {image.height}x{image.width} but {first[0].name} is "
                f"{first[1][0]}x{first[1][1]}; all images of a split need one size (or pass size=)"
            )
        image_arrays.append(np.asarray(rgb, dtype=np.uint8))
        mask_arrays.append(ids)
    mask_stack = np.stack(mask_arrays)
    if limit is None:
        valid = mask_stack[mask_stack != IGNORE_INDEX]
        limit = int(valid.max()) + 1 if valid.size else 1
    classes = names if names is not None else tuple(str(k) for k in range(limit))
    return SegmentationDataset(
        np.stack(image_arrays), mask_stack, classes, stems, name=root.name, split=split, source=str(root)
    )


class SegmentationBatch(NamedTuple):
    """One mini-batch: ``x`` (B, C, H, W) float; ``y`` int64 (B, H, W) class ids, 255 = ignore."""

    x: Array
    y: Array


class SegmentationBatches:
    """Mini-batches of images and masks, shuffled, cropped and flipped together, normalised on ``device``.

    A batch is a pure function of (seed, epoch, batch index), drawn as :class:`~pvt_np.data.BatchLoader`'s:
    the order is ``default_rng(derive_seed(seed, epoch)).permutation(N)`` and the crop offsets and flip
    bits come from ``default_rng(derive_seed(seed, epoch, index))`` (:func:`sample_crop_flip`). The crop
    has the input's size, taken from the image padded by ``crop_padding`` pixels on every side: zeros
    in the image, 255 (ignored) in the mask; the flip follows the crop. The masks' padding being
    ignored, the loss never learns a class for the black border.

    images: uint8 (N, H, W, 3) and masks uint8 (N, H, W), NumPy or CuPy; moved to ``device`` once.
    mean, std: per-channel normalisation on the 0-1 scale (None: only scale to [0, 1]).
    shard: (index, count): yield only rows [index * B / count, (index + 1) * B / count) of every batch of B
        samples, cut from the draws of the whole batch (a data-parallel rank's slice, as BatchLoader's);
        ``batch_size`` (the global batch) must be divisible by count.
    """

    def __init__(
        self,
        images: Array,
        masks: Array,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        device: str = "cpu",
        crop_padding: int = 0,
        hflip: bool = False,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        dtype: Any = np.float32,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        check_device(device)
        if getattr(images, "dtype", None) != np.uint8 or images.ndim != 4:
            raise ValueError(
                f"SegmentationBatches: images must be uint8 (N, H, W, C), got "
                f"{getattr(images, 'dtype', type(images).__name__)} {tuple(getattr(images, 'shape', ()))}"
            )
        if getattr(masks, "dtype", None) != np.uint8 or tuple(masks.shape) != tuple(images.shape[:3]):
            raise ValueError(
                f"SegmentationBatches: masks must be uint8 {tuple(images.shape[:3])}, got "
                f"{getattr(masks, 'dtype', type(masks).__name__)} {tuple(getattr(masks, 'shape', ()))}"
            )
        n, h, w, c = (int(s) for s in images.shape)
        if isinstance(batch_size, bool) or int(batch_size) != batch_size or not 1 <= batch_size <= n:
            raise ValueError(f"SegmentationBatches: batch_size must be an int in [1, {n}], got {batch_size!r}")
        if isinstance(crop_padding, bool) or int(crop_padding) != crop_padding or not 0 <= crop_padding <= min(h, w):
            raise ValueError(
                f"SegmentationBatches: crop_padding must be an int in [0, {min(h, w)}], got {crop_padding!r}"
            )
        shard_index, shard_count = (int(v) for v in shard)
        if not 0 <= shard_index < shard_count or batch_size % shard_count:
            raise ValueError(
                f"SegmentationBatches: shard must be (index, count) with 0 <= index < count and count dividing "
                f"batch_size {batch_size}, got {tuple(shard)}"
            )
        m = np.zeros(c) if mean is None else np.asarray(mean, dtype=np.float64).reshape(-1)
        s = np.ones(c) if std is None else np.asarray(std, dtype=np.float64).reshape(-1)
        if m.shape != (c,) or s.shape != (c,) or not np.all(s > 0):
            raise ValueError(f"SegmentationBatches: mean and std need {c} values each (std > 0), got {mean}, {std}")
        self.n = n
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.device = device
        self.crop_padding = int(crop_padding)
        self.hflip = bool(hflip)
        self.dtype = check_float_dtype(dtype)
        self.shard = (shard_index, shard_count)
        self._images = to_device(images, device)
        self._masks = to_device(masks, device)
        xp = get_array_module(self._images)
        self._scale = xp.asarray((1.0 / (255.0 * s)).reshape(1, c, 1, 1), dtype=self.dtype)
        self._shift = xp.asarray((-m / s).reshape(1, c, 1, 1), dtype=self.dtype)

    def __len__(self) -> int:
        """Batches per epoch."""
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        """The sample indices of ``epoch`` in batch order (host int64)."""
        if not self.shuffle:
            return np.arange(self.n)
        return np.random.default_rng(derive_seed(self.seed, int(epoch))).permutation(self.n)

    def batch(self, epoch: int, index: int) -> SegmentationBatch:
        """Batch ``index`` of ``epoch``: the same arrays whenever it is asked for."""
        if not 0 <= index < len(self):
            raise IndexError(f"SegmentationBatches: batch index {index} out of range for {len(self)} batches")
        idx = self.order(epoch)[index * self.batch_size : (index + 1) * self.batch_size]
        rank, ranks = self.shard
        start, stop = idx.shape[0] * rank // ranks, idx.shape[0] * (rank + 1) // ranks
        xp = get_array_module(self._images)
        dev_idx = xp.asarray(idx[start:stop])
        if self.crop_padding or self.hflip:
            # Drawn for the whole batch, then this shard's rows taken: the shards together are the whole batch.
            rng = np.random.default_rng(derive_seed(self.seed, epoch, index))
            drawn = sample_crop_flip(rng, idx.shape[0], self.crop_padding, self.hflip)
            dy, dx, flip = (xp.asarray(a[start:stop]) for a in drawn)
            u8 = crop_flip_gather(self._images, dev_idx, dy, dx, flip, self.crop_padding)
            masks = crop_flip_gather(self._masks[..., None], dev_idx, dy, dx, flip, self.crop_padding, IGNORE_INDEX)
            masks = masks[..., 0]
        else:
            u8, masks = self._images[dev_idx], self._masks[dev_idx]
        return SegmentationBatch(to_float_nchw(u8, self._scale, self._shift, self.dtype), masks.astype(np.int64))

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[SegmentationBatch]:
        """Yield the batches of ``epoch`` from ``start_batch`` on."""
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"SegmentationBatches: start_batch {start_batch} out of range [0, {len(self)}]")
        for k in range(start_batch, len(self)):
            yield self.batch(epoch, k)
