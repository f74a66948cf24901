"""Segmentation metrics from one confusion matrix accumulated over batches: pixel accuracy, per-class IoU, mIoU and
IoU by object size.

Each :meth:`SegmentationMetrics.update` adds one ``bincount`` of (size bucket, target, prediction) triples to a count
array that stays on the inputs' device (NumPy or CuPy); only :meth:`SegmentationMetrics.compute` reads it back.

Conventions (those of mmseg's ``mean_iou``): pixels whose target is ``IGNORE_INDEX`` (255) count nowhere; for class
``c``, ``IoU_c = TP_c / (TP_c + FP_c + FN_c)``, nan when the class is absent from both target and prediction; mIoU is
the mean over the classes that are not nan (nanmean); pixel accuracy is ``sum_c TP_c / counted pixels``.

IoU by size (``size_buckets``: 0 background, 1 small < 1 %, 2 medium 1-10 %, 3 large > 10 % of the image, as
:mod:`pvt_np.data.scenes` records them), classes pooled. For bucket ``b``, over the pixels of bucket-``b`` objects
and the background pixels (bucket 0), the object classes' counts are summed (a micro-averaged IoU of the classes
other than ``background``)::

    TP_b = bucket-b pixels predicted as their target class
    FN_b = bucket-b pixels predicted as anything else
    FP_b = bucket-b or background pixels predicted as an object class other than their target
    IoU_b = TP_b / (TP_b + FN_b + FP_b)      (nan when no pixel of the data lies in bucket b)

Why: without matching instances a false positive on the background has no object size, so, as in Cityscapes' iIoU
(size-weighted TP and FN, FP counted in full), it counts against every bucket; pixels of the other buckets are left
out, so one bucket's errors never reach another's score. A bucket-``b`` pixel given another object class is both a
miss (FN) and a false alarm (FP), as in the per-class IoU summed over the object classes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from pvt_np.backend import get_array_module, to_numpy
from pvt_np.data import IGNORE_INDEX, SIZE_BUCKET_NAMES

__all__ = ["SegmentationMetrics"]

Array = Any  # numpy.ndarray or cupy.ndarray

_SIZES = len(SIZE_BUCKET_NAMES)  # 0 background, then the object sizes
_UNBUCKETED = _SIZES  # slot of the pixels of updates given no size_buckets
_BAD_BUCKET = _SIZES + 1  # slot of size-bucket values outside [0, _SIZES)
_SLOTS = _SIZES + 2


class SegmentationMetrics:
    """Accumulates a (size bucket, target, prediction) pixel count over batches; see the module docstring.

    ``num_classes``: classes including the background, 1..255 (255 is the ignore index).
    ``background``: the background's class id (the one prediction that is no false positive on the background).
    """

    def __init__(self, num_classes: int, background: int = 0) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
            raise TypeError(f"SegmentationMetrics: num_classes must be an int, got {type(num_classes).__name__}")
        if not 1 <= num_classes <= IGNORE_INDEX:
            raise ValueError(
                f"SegmentationMetrics: num_classes must lie in [1, {IGNORE_INDEX}] ({IGNORE_INDEX} is the ignore "
                f"index), got {num_classes}"
            )
        if isinstance(background, bool) or not isinstance(background, (int, np.integer)):
            raise TypeError(f"SegmentationMetrics: background must be an int, got {type(background).__name__}")
        if not 0 <= background < num_classes:
            raise ValueError(f"SegmentationMetrics: background must lie in [0, {num_classes}), got {background}")
        self.num_classes = int(num_classes)
        self.background = int(background)
        self._counts: Array | None = None

    @property
    def _shape(self) -> tuple[int, int, int]:
        # targets: the classes, then "out of range", then "ignored"; predictions: the classes, then "out of range"
        return _SLOTS, self.num_classes + 2, self.num_classes + 1

    def reset(self) -> None:
        """Forget every counted pixel."""
        self._counts = None

    def update(self, pred: Array, target: Array, size_buckets: Array | None = None) -> None:
        """Count one batch: integer class ids ``pred`` and ``target`` (N, H, W), optional ``size_buckets`` (N, H, W).

        On NumPy arrays a class id outside [0, num_classes) (for ``target``: other than 255) or a size bucket outside
        [0, 4) raises ValueError here; on CuPy arrays, where checking would wait for the device, :meth:`compute` does.
        """
        arrays = {"pred": pred, "target": target}
        if size_buckets is not None:
            arrays["size_buckets"] = size_buckets
        for name, a in arrays.items():
            if not hasattr(a, "shape") or not hasattr(a, "dtype"):
                raise TypeError(f"SegmentationMetrics.update: {name} must be an array, got {type(a).__name__}")
            if a.ndim != 3:
                raise ValueError(f"SegmentationMetrics.update: {name} must be (N, H, W), got shape {tuple(a.shape)}")
            if not np.issubdtype(a.dtype, np.integer):
                raise TypeError(f"SegmentationMetrics.update: {name} must hold integers, got dtype {a.dtype}")
            if tuple(a.shape) != tuple(target.shape):
                raise ValueError(
                    f"SegmentationMetrics.update: {name} has shape {tuple(a.shape)}, target {tuple(target.shape)}"
                )
        xp = get_array_module(*arrays.values())
        k = self.num_classes
        t = xp.asarray(target).astype(xp.int64)
        p = xp.asarray(pred).astype(xp.int64)
        t_idx = xp.where((t >= 0) & (t < k), t, xp.where(t == IGNORE_INDEX, k + 1, k))
        p_idx = xp.where((p >= 0) & (p < k), p, k)
        if size_buckets is None:
            s_idx = _UNBUCKETED
        else:
            s = xp.asarray(size_buckets).astype(xp.int64)
            s_idx = xp.where((s >= 0) & (s < _SIZES), s, _BAD_BUCKET)
        _, n_t, n_p = self._shape
        index = (s_idx * n_t + t_idx) * n_p + p_idx
        counts = xp.bincount(index.ravel(), minlength=_SLOTS * n_t * n_p)
        if xp is np:
            self._check_counts(counts.reshape(self._shape), "update")
        self._counts = counts if self._counts is None else self._counts + counts

    def sum_counts(self, allreduce_sum: Callable[[np.ndarray], np.ndarray]) -> None:
        """Replace the counts by ``allreduce_sum`` of them (a flat host int64 array), after the last update:
        data-parallel ranks that each counted their part of the test set then all hold the whole set's counts,
        and score it as one process would (``allreduce_sum``: :meth:`pvt_np.distributed.World.allreduce_sum`)."""
        counts = np.zeros(self._shape, np.int64).reshape(-1) if self._counts is None else to_numpy(self._counts)
        self._counts = np.asarray(allreduce_sum(counts.astype(np.int64, copy=False)))

    def _check_counts(self, counts: np.ndarray, where: str) -> None:
        k = self.num_classes
        bad = {
            "target": (int(counts[:, k, :].sum()), f"outside [0, {k}) and not {IGNORE_INDEX} (ignore)"),
            "pred": (int(counts[:, :, k].sum()), f"outside [0, {k})"),
            "size_buckets": (int(counts[_BAD_BUCKET].sum()), f"outside [0, {_SIZES})"),
        }
        for name, (n, expected) in bad.items():
            if n:
                raise ValueError(f"SegmentationMetrics.{where}: {name} holds {n} pixel(s) with values {expected}")

    def compute(self) -> dict[str, Any]:
        """The scores of every pixel counted so far (nan where nothing was counted).

        Returns ``pixel_accuracy`` (float), ``iou`` (float64 array (num_classes,), nan for a class absent from target
        and prediction), ``miou`` (nanmean of ``iou``) and ``iou_by_size`` ({"small", "medium", "large"}: float, nan
        for a bucket with no pixel; only the updates given ``size_buckets`` count there).
        """
        k = self.num_classes
        counts = np.zeros(self._shape, np.int64) if self._counts is None else to_numpy(self._counts)
        counts = counts.reshape(self._shape)
        self._check_counts(counts, "compute")
        by_slot = counts[:, :k, :k].astype(np.float64)  # (slot, target, prediction), valid pixels only
        matrix = by_slot[: _UNBUCKETED + 1].sum(axis=0)
        tp = np.diag(matrix)
        union = matrix.sum(axis=0) + matrix.sum(axis=1) - tp
        iou = np.full(k, np.nan)
        np.divide(tp, union, out=iou, where=union > 0)
        total = matrix.sum()
        present = iou[~np.isnan(iou)]
        by_size = {}
        background_pixels = by_slot[0]
        bg = self.background
        for b in range(1, _SIZES):
            objects = by_slot[b]
            region = objects + background_pixels
            tp_b = np.trace(objects)
            fn_b = objects.sum() - tp_b
            wrong = region.sum() - np.trace(region)
            fp_b = wrong - (region[:, bg].sum() - region[bg, bg])  # wrong, and predicted as an object class
            by_size[SIZE_BUCKET_NAMES[b]] = float(tp_b / (tp_b + fn_b + fp_b)) if objects.sum() else float("nan")
        return {
            "pixel_accuracy": float(tp.sum() / total) if total else float("nan"),
            "iou": iou,
            "miou": float(present.mean()) if present.size else float("nan"),
            "iou_by_size": by_size,
        }
