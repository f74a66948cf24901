"""Deterministic, resumable mini-batches on the CPU or the GPU.

A batch is a pure function of (seed, epoch, batch index):

* epoch ``e``'s sample order is ``default_rng(derive_seed(seed, e)).permutation(N)``
  (``arange(N)`` without shuffling);
* batch ``k``'s augmentation parameters (crop, flip, TrivialAugment, mixing, in this order) come from
  ``default_rng(derive_seed(seed, e, k))``, drawn on the host (they are a few
  hundred numbers) and applied on the device.

So a trainer that stopped after batch ``k - 1`` of epoch ``e`` resumes exactly
with ``loader.epoch(e, start_batch=k)``, without saving any generator state.

Data-parallel ranks each build only their slice of a batch (``shard=(rank, ranks)``),
from the draws of the whole batch, so the slices put together are the 1-process batch
bit for bit, however many ranks share it (see :mod:`pvt_np.distributed`).

The images are moved to the device once (uint8, 150 MB for CIFAR-10); each batch
is then one gather that also crops and flips, a cast/normalise to NCHW float,
and optionally mixup/cutmix, all on the device. On a GPU the only per-batch
transfer is the host-drawn integers (sample indices, crop offsets, flip bits):
one asynchronous copy from pinned memory (:mod:`pvt_np.staging`), so the
host never waits for the GPU to drain before queuing the next step.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np

from pvt_np import staging
from pvt_np.backend import Array, check_device, check_float_dtype, derive_seed, get_array_module, to_device
from pvt_np.data.augment import (
    Augment,
    crop_flip_gather,
    cutmix,
    mix_targets,
    mixup,
    sample_crop_flip,
    sample_mix,
    sample_trivial,
    to_float_nchw,
    trivial_augment,
)

__all__ = ["Batch", "BatchLoader"]


class Batch(NamedTuple):
    """One mini-batch: ``x`` (B, C, H, W) float on the loader's device; ``y`` int64 (B,) or soft (B, K)."""

    x: Array
    y: Array


class BatchLoader:
    """Mini-batches of a uint8 NHWC image array, shuffled, augmented and normalised on ``device``.

    images: uint8 (N, H, W, C) NumPy or CuPy array (a :class:`Dataset`'s ``images``).
    labels: int (N,) class indices.
    batch_size: samples per batch; the last partial batch is kept unless ``drop_last``.
    shuffle: a fresh permutation each epoch (else dataset order).
    seed: with the epoch and batch index, determines every batch.
    device: 'cpu' (NumPy) or 'gpu' (CuPy); the data is copied there once.
    augment: :class:`Augment` settings, or None for none (evaluation).
    mean, std: per-channel normalisation on the 0-1 scale (None: only scale to [0, 1]).
    dtype: float32 (default) or float64 for ``x`` and soft targets.
    num_classes: width of soft targets (default ``labels.max() + 1``; pass it when
        a split may lack the last class).
    shard: (index, count): yield only rows [index * B / count, (index + 1) * B / count) of
        every batch of B samples; ``batch_size`` (the global batch) must be divisible by count.
    """

    def __init__(
        self,
        images: Array,
        labels: Array,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        device: str = "cpu",
        augment: Augment | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        dtype: Any = np.float32,
        num_classes: int | None = None,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        check_device(device)
        if not hasattr(images, "dtype") or images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(
                f"BatchLoader: images must be a uint8 array (N, H, W, C), got "
                f"{getattr(images, 'dtype', type(images).__name__)} {tuple(getattr(images, 'shape', ()))}"
            )
        n, h, w, c = (int(s) for s in images.shape)
        if labels.ndim != 1 or labels.shape[0] != n or np.dtype(labels.dtype).kind not in "iu":
            raise ValueError(
                f"BatchLoader: labels must be integers of shape ({n},), got {labels.dtype} {tuple(labels.shape)}"
            )
        if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"BatchLoader: batch_size must be a positive int, got {batch_size!r}")
        batch_size = int(batch_size)
        if batch_size > n:
            raise ValueError(f"BatchLoader: batch_size {batch_size} is larger than the dataset ({n} samples)")
        shard_index, shard_count = (int(v) for v in shard)
        if not 0 <= shard_index < shard_count or batch_size % shard_count:
            raise ValueError(
                f"BatchLoader: shard must be (index, count) with 0 <= index < count and count dividing "
                f"batch_size {batch_size}, got {tuple(shard)}"
            )
        augment = augment if augment is not None else Augment()
        if augment.crop_padding > 0 and augment.crop_padding > min(h, w):
            raise ValueError(f"BatchLoader: crop_padding {augment.crop_padding} exceeds the image size {h}x{w}")
        if augment.trivial and c != 3:
            raise ValueError(f"BatchLoader: TrivialAugment needs RGB images (3 channels), got {c}")
        if num_classes is None:
            num_classes = int(labels.max()) + 1 if n else 0
        self.n = n
        self.batch_size = batch_size
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.device = device
        self.augment = augment
        self.dtype = check_float_dtype(dtype)
        self.num_classes = int(num_classes)
        self.shard = (shard_index, shard_count)
        self.image_shape = (h, w, c)
        self._images = to_device(images, device)
        self._labels = to_device(labels, device).astype(np.int64, copy=False)
        scale, shift = self._affine(mean, std, c)
        xp = get_array_module(self._images)
        self._scale = xp.asarray(scale.reshape(1, c, 1, 1), dtype=self.dtype)
        self._shift = xp.asarray(shift.reshape(1, c, 1, 1), dtype=self.dtype)
        self._order_cache: tuple[int, np.ndarray] | None = None
        self._stager = staging.HostStager(xp) if staging.use_staging(xp) else None

    @property
    def zero_pixel(self) -> Array:
        """A zero (black) pixel after normalisation, per channel, (1, C, 1, 1) on the loader's device: the
        value the crops' padding takes in the batches (and the shifted test views fill with)."""
        return self._shift

    @staticmethod
    def _affine(mean: Sequence[float] | None, std: Sequence[float] | None, c: int) -> tuple[np.ndarray, np.ndarray]:
        """(scale, shift) with x = u8 * scale + shift = (u8 / 255 - mean) / std."""
        m = np.zeros(c) if mean is None else np.asarray(mean, dtype=np.float64).reshape(-1)
        s = np.ones(c) if std is None else np.asarray(std, dtype=np.float64).reshape(-1)
        if m.shape != (c,) or s.shape != (c,):
            raise ValueError(f"BatchLoader: mean and std need {c} values (one per channel), got {m.size} and {s.size}")
        if not np.all(s > 0):
            raise ValueError(f"BatchLoader: std must be positive, got {s.tolist()}")
        return 1.0 / (255.0 * s), -m / s

    def __len__(self) -> int:
        """Batches per epoch."""
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def __repr__(self) -> str:
        return (
            f"BatchLoader(n={self.n}, batch_size={self.batch_size}, batches={len(self)}, shuffle={self.shuffle}, "
            f"seed={self.seed}, drop_last={self.drop_last}, device={self.device!r}, augment={self.augment})"
        )

    @property
    def soft_targets(self) -> bool:
        """True when batches carry (B, num_classes) mixed targets instead of int labels."""
        return self.augment.mixing

    def order(self, epoch: int) -> np.ndarray:
        """The sample indices of ``epoch`` in batch order (host int64 array; don't modify it)."""
        epoch = int(epoch)
        if self._order_cache is None or self._order_cache[0] != epoch:
            if self.shuffle:
                order = np.random.default_rng(derive_seed(self.seed, epoch)).permutation(self.n)
            else:
                order = np.arange(self.n)
            self._order_cache = (epoch, order)
        return self._order_cache[1]

    def batch(self, epoch: int, index: int) -> Batch:
        """Batch ``index`` of ``epoch``: the same arrays whenever it is asked for."""
        if not 0 <= index < len(self):
            raise IndexError(f"BatchLoader: batch index {index} out of range for {len(self)} batches per epoch")
        idx = self.order(epoch)[index * self.batch_size : (index + 1) * self.batch_size]
        b = idx.shape[0]
        h, w, _ = self.image_shape
        aug = self.augment
        rng = np.random.default_rng(derive_seed(self.seed, epoch, index))
        # Every draw is made for the whole batch, in the same order, then this shard's rows are taken.
        crop_flip = sample_crop_flip(rng, b, aug.crop_padding, aug.hflip) if aug.crop_padding or aug.hflip else None
        trivial = sample_trivial(rng, b) if aug.trivial else None
        rank, ranks = self.shard
        start, stop = b * rank // ranks, b * (rank + 1) // ranks
        x, labels = self._images_at(idx, crop_flip, trivial, start, stop)
        if not aug.mixing:
            return Batch(x, labels)
        mix = sample_mix(rng, aug, h, w)
        if ranks == 1:
            partner_x, partner_labels = None, None  # the reversed batch itself
        else:  # row i is mixed with row b - 1 - i of the whole batch, which may be another shard's: build it here
            partner_x, partner_labels = self._images_at(idx, crop_flip, trivial, b - stop, b - start)
            partner_x, partner_labels = partner_x[::-1], partner_labels[::-1]
        if mix.kind == "mixup":
            x = mixup(x, mix.lam, partner_x)
        elif mix.kind == "cutmix":
            x = cutmix(x, mix.bbox, partner_x)
        return Batch(x, mix_targets(labels, self.num_classes, mix.lam, self.dtype, partner_labels))

    def _images_at(
        self,
        idx: np.ndarray,
        crop_flip: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
        trivial: tuple[np.ndarray, np.ndarray] | None,
        start: int,
        stop: int,
    ) -> tuple[Array, Array]:
        """Rows [start, stop) of a batch: normalised images (cropped, flipped, TrivialAugment-ed) and their labels."""
        host = [idx, *(crop_flip or ()), *(trivial or ())]
        dev_idx, *params = self._to_device(*(a[start:stop] for a in host))
        if crop_flip is not None:
            dy, dx, flip = params[:3]
            u8 = crop_flip_gather(self._images, dev_idx, dy, dx, flip, self.augment.crop_padding)
        else:
            u8 = self._images[dev_idx]
        if trivial is not None:
            u8 = trivial_augment(u8, *params[-2:])
        return to_float_nchw(u8, self._scale, self._shift, self.dtype), self._labels[dev_idx]

    def _to_device(self, *host: np.ndarray) -> list[Array]:
        """The batch's host-drawn arrays on the loader's device (one staged copy on a GPU)."""
        if self._stager is None:
            xp = get_array_module(self._images)
            return [xp.asarray(a) for a in host]
        return self._stager.upload(host)

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[Batch]:
        """Yield the batches of ``epoch`` from ``start_batch`` on (resume mid-epoch with start_batch=k)."""
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"BatchLoader: start_batch {start_batch} out of range [0, {len(self)}]")
        for k in range(start_batch, len(self)):
            yield self.batch(epoch, k)
