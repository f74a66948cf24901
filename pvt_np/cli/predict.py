"""``pvt-np predict``: the top classes of image files under a trained model, or, under a segmentation model, the
class of every pixel, written as PNG masks with ``--masks-dir`` (:func:`pvt_np.predict`)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from pvt_np import backend
from pvt_np.cli.arguments import positive_int
from pvt_np.inference import Prediction, SegmentationPrediction, predict
from pvt_np.io.atomic import atomic_write
from pvt_np.io.load import load_model
from pvt_np.models.semantic_fpn import SemanticSegmenter


class _TopK(argparse.Action):
    """Stores --top-k and records that it was typed: a segmentation model refuses it, not its default."""

    def __call__(self, parser: Any, namespace: argparse.Namespace, values: Any, option_string: Any = None) -> None:
        namespace.top_k = values
        namespace.top_k_given = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``pvt-np predict``."""
    parser.add_argument(
        "checkpoint",
        metavar="CHECKPOINT",
        help="a run's best.npz / last.npz (classification or segmentation), or a weights file (.npz, .safetensors, "
        ".pth)",
    )
    parser.add_argument("images", metavar="IMAGE", nargs="+", help="image files (any size and mode Pillow opens)")
    parser.add_argument(
        "--top-k", type=positive_int, default=5, action=_TopK, metavar="K",
        help="classification: classes shown per image (at most the model's number of classes)",
    )  # fmt: skip
    parser.set_defaults(top_k_given=False)
    parser.add_argument(
        "--masks-dir", metavar="DIR", default=None,
        help="segmentation: write each image's mask to DIR/<image name>.png (class ids as pixel values, the layout "
        "of a segmentation folder's masks)",
    )  # fmt: skip
    parser.add_argument("--force", action="store_true", help="with --masks-dir: overwrite masks already there")
    parser.add_argument("--json", action="store_true", help="print a JSON list, one entry per image")
    parser.add_argument("--device", choices=backend.DEVICES, default="cpu", help="where the model runs")
    parser.add_argument(
        "--input-size", type=positive_int, nargs=2, metavar=("H", "W"), default=None,
        help="feed images at H x W instead of the training size the checkpoint records (segmentation without a "
        "recorded size: each side at its nearest multiple of 32)",
    )  # fmt: skip
    parser.epilog = "exit status: 0 done, 1 unreadable checkpoint or image, 2 bad usage"


def _format(predictions: Sequence[Prediction]) -> str:
    lines = []
    for p in predictions:
        lines.append(p.source)
        width = max(len(label) for label in p.labels)
        lines += [f"  {prob:8.2%}  {label:<{width}}  (class {i})" for label, i, prob in
                  zip(p.labels, p.indices, p.probabilities, strict=True)]  # fmt: skip
    return "\n".join(lines)


def _format_masks(predictions: Sequence[SegmentationPrediction], written: Sequence[Path | None]) -> str:
    lines = []
    for p, path in zip(predictions, written, strict=True):
        height, width = p.mask.shape
        lines.append(f"{p.source} ({height}x{width})" + (f" -> {path}" if path is not None else ""))
        fractions = p.fractions()
        label_width = max(len(p.labels[k]) for k, _ in fractions)
        lines += [f"  {fraction:8.2%}  {p.labels[k]:<{label_width}}  (class {k})" for k, fraction in fractions]
    return "\n".join(lines)


class _UsageError(ValueError):
    """A flag that does not fit the model or the other flags (exit status 2)."""


def _mask_paths(images: Sequence[str], masks_dir: str, force: bool) -> list[Path]:
    """DIR/<image stem>.png per image; two images of one stem, or (without --force) a mask already there, refused."""
    paths = [Path(masks_dir) / f"{Path(image).stem}.png" for image in images]
    seen: dict[Path, str] = {}
    for image, path in zip(images, paths, strict=True):
        if path in seen:
            raise _UsageError(f"argument --masks-dir: {seen[path]!r} and {image!r} would both write {path}")
        seen[path] = image
    if Path(masks_dir).exists() and not Path(masks_dir).is_dir():
        raise _UsageError(f"argument --masks-dir: expected a directory, got the file {masks_dir!r}")
    if not force:
        there = [str(p) for p in paths if p.exists()]
        if there:
            raise _UsageError(f"argument --masks-dir: {there[0]} exists; pass --force to overwrite it")
    return paths


def _write_mask(path: Path, prediction: SegmentationPrediction) -> None:
    with atomic_write(path, "wb") as f:
        Image.fromarray(prediction.mask, mode="L").save(f, format="PNG")


def run(args: argparse.Namespace) -> int:
    """Run ``pvt-np predict``; returns the exit status."""
    try:
        if args.force and args.masks_dir is None:
            raise _UsageError("argument --force: only with --masks-dir")
        model = load_model(args.checkpoint, device=args.device)
        input_size = tuple(args.input_size) if args.input_size else None
        segmenter = isinstance(model, SemanticSegmenter)
        if segmenter and args.top_k_given:
            raise _UsageError(
                f"argument --top-k: only for a classification model; {args.checkpoint} holds a segmentation model "
                "(it gives a mask per image: --masks-dir)"
            )
        if not segmenter and args.masks_dir is not None:
            raise _UsageError(
                f"argument --masks-dir: only for a segmentation model; {args.checkpoint} holds a classification model"
            )
        if not segmenter:
            predictions = predict(model, args.images, top_k=args.top_k, input_size=input_size)
            print(json.dumps([p.to_dict() for p in predictions], indent=2) if args.json else _format(predictions))
            return 0
        paths = _mask_paths(args.images, args.masks_dir, args.force) if args.masks_dir is not None else None
        masks = predict(model, args.images, input_size=input_size)
        written: Sequence[Path | None] = paths if paths is not None else [None] * len(masks)
        for path, prediction in zip(written, masks, strict=True):
            if path is not None:
                _write_mask(path, prediction)
    except _UsageError as err:
        print(f"pvt-np predict: error: {err}", file=sys.stderr)
        return 2
    except (ValueError, OSError, ImportError, RuntimeError) as err:
        print(f"pvt-np predict: error: {err}", file=sys.stderr)
        return 1
    if args.json:
        report = [
            {**p.to_dict(), "mask": None if path is None else str(path)} for p, path in zip(masks, written, strict=True)
        ]
        print(json.dumps(report, indent=2))
    else:
        print(_format_masks(masks, written))
    return 0
