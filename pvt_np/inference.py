"""Classify or segment images with a trained model: ``pvt_np.predict`` (the command ``pvt-np predict`` is
:mod:`pvt_np.cli.predict`).

Images are prepared as the run prepared its own (``model.meta``, filled by
:func:`pvt_np.load_model` from the checkpoint): converted to RGB, resized so they
cover the training size with the shorter side (bicubic) and centre-cropped to it,
then normalised with the run's mean and std through the same
:class:`~pvt_np.data.BatchLoader` that evaluation uses. An image already at the
training size is not resampled, so it gets exactly the logits ``pvt-np evaluate``
computes.

A segmentation model (a :class:`~pvt_np.models.SemanticSegmenter`) gives a mask per image at the
image's own size, so nothing may be cropped: the whole image is resized (bilinear, as the folder
loader resizes with ``--image-size``) to the run's training size, or, where the checkpoint does not
record one (a folder run at its images' own size), each side to its nearest multiple of 32 (at least
32), which every stem's strides divide; normalised through the evaluation's
:class:`~pvt_np.data.segmentation.SegmentationBatches`; the logits are resized back to the image's
size (bilinear, ``align_corners=False``: :func:`pvt_np.ops.interpolate_forward`) and their argmax
per pixel is the mask. An image already at the input size is not resampled either way.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from pvt_np import backend, ops
from pvt_np.data.loader import BatchLoader
from pvt_np.data.segmentation import IGNORE_INDEX, SegmentationBatches
from pvt_np.io.load import load_model
from pvt_np.models.pvt_v2 import PyramidVisionTransformerV2
from pvt_np.models.registry import ModelMeta, model_meta
from pvt_np.models.semantic_fpn import SemanticSegmenter
from pvt_np.nn import no_grad

__all__ = ["Prediction", "SegmentationPrediction", "predict", "prepare_images", "segmentation_input_size"]

_BATCH_SIZE = 64  # images per forward pass: bounds memory whatever the number of images
_SIDE_MULTIPLE = 32  # a segmentation input's sides without a recorded training size: the deepest map's stride


@dataclass(frozen=True)
class Prediction:
    """The top classes of one image, most probable first.

    source: the image's path, or '<image k>' for an in-memory image (k counts from 0).
    indices, probabilities: class indices and their softmax probabilities.
    labels: class names from the checkpoint (the indices as text when it has none).
    """

    source: str
    indices: tuple[int, ...]
    probabilities: tuple[float, ...]
    labels: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: {'image': ..., 'top_k': [{'label', 'index', 'probability'}, ...]}."""
        return {
            "image": self.source,
            "top_k": [
                {"label": label, "index": index, "probability": probability}
                for label, index, probability in zip(self.labels, self.indices, self.probabilities, strict=True)
            ],
        }


@dataclass(frozen=True, eq=False)
class SegmentationPrediction:
    """The class of every pixel of one image.

    source: the image's path, or '<image k>' for an in-memory image (k counts from 0).
    mask: uint8 (H, W) class ids at the image's own size (the layout of a segmentation folder's masks).
    labels: class names from the checkpoint, ``labels[k]`` for class k (the ids as text when it has none).
    """

    source: str
    mask: np.ndarray
    labels: tuple[str, ...]

    def fractions(self) -> list[tuple[int, float]]:
        """(class id, fraction of the pixels) of the classes present, the largest first (ties: lower id first)."""
        counts = np.bincount(self.mask.reshape(-1), minlength=len(self.labels))
        present = np.flatnonzero(counts)
        order = present[np.argsort(-counts[present], kind="stable")]
        return [(int(k), float(counts[k] / self.mask.size)) for k in order]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary, without the pixels: {'image', 'size': [H, W], 'classes': [{'label', 'index',
        'fraction'}, ...]} (the classes present, the largest first)."""
        return {
            "image": self.source,
            "size": [int(self.mask.shape[0]), int(self.mask.shape[1])],
            "classes": [
                {"label": self.labels[k], "index": k, "fraction": fraction} for k, fraction in self.fractions()
            ],
        }


def _as_images(images: Any) -> list[Any]:
    """One image or a sequence of them as a list (a 4-D uint8 array is a batch)."""
    if isinstance(images, (str, os.PathLike)) or _is_pil(images):
        return [images]
    if hasattr(images, "shape") and hasattr(images, "dtype"):
        return list(backend.to_numpy(images)) if np.ndim(images) == 4 else [images]
    if isinstance(images, Iterable):
        return list(images)
    raise TypeError(
        f"predict: images must be paths, PIL images or uint8 arrays (or a list of them), got {type(images).__name__}"
    )


def _is_pil(value: Any) -> bool:
    module = type(value).__module__ or ""
    return module.startswith("PIL.") and hasattr(value, "convert") and hasattr(value, "size")


def _open(image: Any, index: int) -> tuple[Any, str]:
    """(an RGB PIL image, its name) from a path, a PIL image or a uint8 array."""
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        try:
            with Image.open(path) as opened:
                return opened.convert("RGB"), str(path)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"predict: image {str(path)!r} does not exist") from err
        except (UnidentifiedImageError, OSError) as err:
            raise ValueError(f"predict: cannot read {str(path)!r} as an image ({err})") from err
    name = f"<image {index}>"
    if _is_pil(image):
        return image.convert("RGB"), name
    if hasattr(image, "shape") and hasattr(image, "dtype"):
        array = backend.to_numpy(image)
        if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
            raise ValueError(
                f"predict: {name}: an array image must be uint8 (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), "
                f"got {array.dtype} {array.shape}"
            )
        if array.ndim == 3 and array.shape[2] == 1:
            array = array[:, :, 0]
        return Image.fromarray(np.ascontiguousarray(array)).convert("RGB"), name
    raise TypeError(f"predict: {name}: expected a path, a PIL image or a uint8 array, got {type(image).__name__}")


def _fit(image: Any, size: tuple[int, int]) -> np.ndarray:
    """Resize so the image covers ``size`` (height, width), keeping its aspect, then centre-crop."""
    height, width = size
    scale = max(height / image.height, width / image.width)
    new_size = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    if new_size != image.size:
        image = image.resize(new_size, Image.Resampling.BICUBIC)
    left, top = (new_size[0] - width) // 2, (new_size[1] - height) // 2
    return np.asarray(image.crop((left, top, left + width, top + height)), dtype=np.uint8)


def prepare_images(images: Any, input_size: tuple[int, int], start: int = 0) -> tuple[np.ndarray, list[str]]:
    """uint8 (N, H, W, 3) images at ``input_size`` and their names, from paths, PIL images or arrays."""
    opened = [_open(image, start + k) for k, image in enumerate(_as_images(images))]
    return np.stack([_fit(image, input_size) for image, _ in opened]), [name for _, name in opened]


def _check_top_k(top_k: Any) -> int:
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise ValueError(f"predict: top_k must be an int >= 1, got {top_k!r}")
    return int(top_k)


def _check_normalisation(meta: ModelMeta) -> None:
    if meta.mean is None or meta.std is None:
        raise ValueError(
            "predict: the model does not record the normalisation its run used (model.meta.mean / std): "
            "set model.meta = pvt_np.models.ModelMeta(mean=..., std=..., ...) first"
        )


def segmentation_input_size(height: int, width: int) -> tuple[int, int]:
    """The size a segmentation model is fed an image of ``height`` x ``width`` at when the checkpoint records no
    training size: each side rounded to its nearest multiple of 32 (halves up), at least 32."""
    rounded_height, rounded_width = (
        max(_SIDE_MULTIPLE, int(side / _SIDE_MULTIPLE + 0.5) * _SIDE_MULTIPLE) for side in (height, width)
    )
    return rounded_height, rounded_width


def predict(
    model: PyramidVisionTransformerV2 | SemanticSegmenter | str | os.PathLike[str],
    images: Any,
    top_k: int | None = None,
    *,
    input_size: tuple[int, int] | None = None,
    batch_size: int = _BATCH_SIZE,
) -> list[Prediction] | list[SegmentationPrediction]:
    """The ``top_k`` (default 5) most probable classes of each image (at most the model's number of classes),
    or, for a segmentation model, the class of every pixel (:class:`SegmentationPrediction`).

    model: a model, or a checkpoint path :func:`pvt_np.load_model` reads.
    images: a path, PIL image or uint8 array (H, W[, C]), or a list of them (any size and mode
        Pillow opens: grey, RGBA, palette, ...), or a uint8 batch (N, H, W, C).
    top_k: classification only.
    input_size: (height, width) to feed the model; default ``model.meta.input_size``, the
        training images' size recorded in the checkpoint (a segmentation model without one: each
        image at :func:`segmentation_input_size`).

    Normalisation uses ``model.meta``'s mean and std. The model runs in eval mode, without
    keeping anything for a backward pass, on its own device and dtype; its mode is restored.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"predict: batch_size must be an int >= 1, got {batch_size!r}")
    if isinstance(model, (str, os.PathLike)):
        model = load_model(model)
    if isinstance(model, SemanticSegmenter):
        if top_k is not None:
            raise ValueError(
                f"predict: top_k is for a classification model, got top_k={top_k!r} for a segmentation model "
                "(it gives a mask per image)"
            )
        return _segment(model, images, input_size, batch_size)
    top_k = _check_top_k(5 if top_k is None else top_k)
    meta = model_meta(model)
    if model.num_classes < 1:
        raise ValueError("predict: the model has no classifier head (num_classes=0)")
    size = input_size if input_size is not None else meta.input_size
    if size is None:
        raise ValueError(
            "predict: the model does not record its input size (model.meta.input_size, from the checkpoint): "
            "pass input_size=(height, width) (pvt-np predict --input-size H W)"
        )
    _check_normalisation(meta)
    size = (int(size[0]), int(size[1]))
    model.feature_sizes(*size)  # a clear error now if this size does not fit the pyramid
    items = _as_images(images)
    k = min(top_k, model.num_classes)
    was_training = model.training
    model.eval()
    results: list[Prediction] = []
    try:
        for start in range(0, len(items), batch_size):
            pixels, names = prepare_images(items[start : start + batch_size], size, start)
            loader = BatchLoader(
                pixels, np.zeros(len(pixels), np.int64), len(pixels), shuffle=False, device=model.device,
                mean=meta.mean, std=meta.std, dtype=model.dtype, num_classes=model.num_classes,
            )  # fmt: skip
            with no_grad():
                logits = model(loader.batch(0, 0).x)
            xp = backend.get_array_module(logits)
            shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
            probs = xp.exp(shifted)
            probs /= probs.sum(axis=1, keepdims=True)
            order = xp.argsort(-probs, axis=1, kind="stable")[:, :k]
            top = backend.to_numpy(xp.take_along_axis(probs, order, axis=1))
            order = backend.to_numpy(order)
            for name, indices, values in zip(names, order, top, strict=True):
                labels = tuple(
                    meta.classes[i] if meta.classes is not None and i < len(meta.classes) else str(i) for i in indices
                )
                results.append(
                    Prediction(name, tuple(int(i) for i in indices), tuple(float(v) for v in values), labels)
                )
    finally:
        model.train(was_training)
    return results


def _segment(
    model: SemanticSegmenter, images: Any, input_size: tuple[int, int] | None, batch_size: int
) -> list[SegmentationPrediction]:
    """Masks of ``images`` (see the module's docstring for the preparation)."""
    meta = model_meta(model)
    _check_normalisation(meta)
    if model.num_classes >= IGNORE_INDEX:
        raise ValueError(
            f"predict: a mask holds class ids below {IGNORE_INDEX} (the ignore value) in a uint8, but the model has "
            f"{model.num_classes} classes"
        )
    fixed = input_size if input_size is not None else meta.input_size
    if fixed is not None:
        fixed = (int(fixed[0]), int(fixed[1]))
        model.feature_sizes(*fixed)  # a clear error now if this size does not fit the pyramid
    labels = tuple(
        meta.classes[k] if meta.classes is not None and k < len(meta.classes) else str(k)
        for k in range(model.num_classes)
    )
    items = _as_images(images)
    was_training = model.training
    model.eval()
    results: list[SegmentationPrediction] = []
    try:
        for start in range(0, len(items), batch_size):
            opened = [_open(image, start + k) for k, image in enumerate(items[start : start + batch_size])]
            groups: dict[tuple[int, int], list[int]] = {}
            for k, (image, _) in enumerate(opened):
                size = fixed or segmentation_input_size(image.height, image.width)
                groups.setdefault(size, []).append(k)
            masks: dict[int, np.ndarray] = {}
            for (height, width), members in groups.items():
                pixels = np.stack([
                    np.asarray(
                        image if image.size == (width, height) else image.resize((width, height), Image.BILINEAR),
                        dtype=np.uint8,
                    )
                    for image, _ in (opened[k] for k in members)
                ])  # fmt: skip
                x = SegmentationBatches(
                    pixels, np.zeros(pixels.shape[:3], np.uint8), len(pixels), shuffle=False, device=model.device,
                    mean=meta.mean, std=meta.std, dtype=model.dtype,
                ).batch(0, 0).x  # fmt: skip
                with no_grad():
                    logits = model(x).transpose(0, 2, 3, 1)  # channels-last: the head's own layout, no copy
                for j, k in enumerate(members):
                    image_size = (opened[k][0].height, opened[k][0].width)
                    scores = logits[j : j + 1]
                    if tuple(scores.shape[1:3]) != image_size:
                        scores, _ = ops.interpolate_forward(scores, image_size, None, "bilinear", True)
                    masks[k] = backend.to_numpy(scores[0].argmax(axis=-1)).astype(np.uint8)
            results += [SegmentationPrediction(name, masks[k], labels) for k, (_, name) in enumerate(opened)]
    finally:
        model.train(was_training)
    return results
