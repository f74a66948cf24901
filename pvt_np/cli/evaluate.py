"""``pvt-np evaluate``: test-set loss, accuracy and confusion matrix of a training checkpoint; for a segmentation
run's checkpoint, its test pixel accuracy, mIoU, per-class IoU and (generated scenes) IoU by object size."""

from __future__ import annotations

import argparse
import sys

import numpy as np

from pvt_np.cli.arguments import positive_int
from pvt_np.data import DATASETS, load_dataset
from pvt_np.data.errors import DataError
from pvt_np.data.segmentation import SegmentationBatches
from pvt_np.io.checkpoint import CheckpointError
from pvt_np.io.load import load_model
from pvt_np.io.read import Checkpoint, read_checkpoint
from pvt_np.models.semantic_fpn import SemanticSegmenter
from pvt_np.training.config import TrainConfig
from pvt_np.training.datasets import random_subset
from pvt_np.training.segmentation import MEAN, STD, SegmentationConfig, load_splits, score_masks
from pvt_np.training.tta import evaluate, scoring_tta
from pvt_np.training.validation import TTA_MODES


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "checkpoint", help="a training checkpoint (last.npz / best.npz of a run) or a weights file (with --dataset)"
    )
    p.add_argument("--data-path", help="data location (none given: the one the run was trained with)")
    p.add_argument("--dataset", choices=DATASETS, help="none given: the run's dataset")
    p.add_argument("--cache-dir", help="decoded image-folder cache (none given: the run's, else ~/.cache/pvt_np)")
    p.add_argument("--test-subset", type=positive_int, metavar="N",
                   help="score a fixed random subset of N test images, the same as pvt-np train --test-subset N "
                   "draws (none given: the run's own --test-subset on its own data, else all)")  # fmt: skip
    p.add_argument("--batch-size", type=positive_int, default=500, help="images per forward pass")
    p.add_argument("--device", default="cpu", choices=("cpu", "gpu"), help="where to evaluate")
    p.add_argument("--tta", choices=TTA_MODES,
                   help="test-time augmentation (see pvt-np train --tta; flip-shift and flip-grid here score every "
                   "image by their ten or fifty views); none given: as the run scored the checkpoint (a flip-grid "
                   "run: fifty views after its last epoch, the flip before; runs from before the option: none), "
                   "flip-grid for a weights file")  # fmt: skip
    p.add_argument("--confusion", metavar="PNG", help="also save the confusion matrix plot here")


def run(args: argparse.Namespace) -> int:
    from pvt_np.training.plots import plot_confusion  # matplotlib

    try:
        # Any file load_model reads: a training checkpoint also says which data the run used.
        ckpt = read_checkpoint(args.checkpoint)
        model = load_model(ckpt, device=args.device)
        if isinstance(model, SemanticSegmenter):
            return _segmentation(args, ckpt, model)
        saved = (ckpt.training or {}).get("config", {})
        dataset, data_path = args.dataset or saved.get("dataset"), args.data_path or saved.get("data_path")
        if dataset is None or data_path is None:
            raise CheckpointError(
                f"{args.checkpoint} is a weights file, which does not record the data it was trained on: "
                "pass --dataset and --data-path"
            )
        test = load_dataset(dataset, data_path, "test", cache_dir=args.cache_dir or saved.get("cache_dir"))
        # A run trained with --test-subset was scored on that subset: evaluate the same images
        # (when evaluating on the run's own data), unless --test-subset asks for another.
        own_data = (dataset, data_path) == (saved.get("dataset"), saved.get("data_path"))
        size = args.test_subset or (saved.get("test_subset") if own_data else None)
        if size is not None and size > len(test):
            raise ValueError(f"--test-subset: expected at most {len(test)} (the test images), got {size}")
        subset = random_subset(test, size, 0)
        whose = "--test-subset" if args.test_subset else "the run's --test-subset"
        note = f" ({whose})" if len(subset) < len(test) else ""
        test = subset
        if test.num_classes != model.num_classes:
            raise CheckpointError(
                f"{args.checkpoint} has {model.num_classes} classes but {dataset} at {data_path} has {test.num_classes}"
            )
        model.feature_sizes(*test.image_size)
        if model.meta.mean is None or model.meta.std is None:
            raise CheckpointError(f"{args.checkpoint} does not record the normalisation (mean, std) its run used")
        loader = test.loader(
            min(args.batch_size, len(test)), shuffle=False, device=args.device,
            mean=model.meta.mean, std=model.meta.std, dtype=model.dtype,
        )  # fmt: skip
        # A run records its --tta (runs from before the option scored the image alone) and its checkpoint is
        # scored as the run scored it (flip-shift, flip-grid: ten or fifty views after the last epoch, the flip
        # before); a weights file records no run, and is scored as pvt-np train scores its last evaluation by
        # default.
        tta = args.tta or TrainConfig().tta
        if ckpt.training and args.tta is None:
            epoch = (ckpt.training.get("progress") or {}).get("epoch")
            tta = scoring_tta(saved.get("tta", "none"), last=epoch == saved.get("epochs"))
        result = evaluate(model, loader, test.num_classes, progress=True, tta=tta)
    except (CheckpointError, DataError, ValueError, RuntimeError, OSError, KeyError, ImportError) as err:
        print(f"pvt-np evaluate: error: {err}", file=sys.stderr)
        return 1
    confusion = result["confusion"]
    print(f"{args.checkpoint}: {dataset} test, {confusion.sum()} images{note}")
    flip = f"flip {result['flip_accuracy']:.4f}, " if "flip_accuracy" in result else ""
    if "flip_shift_accuracy" in result:
        flip = f"ten views {result['flip_shift_accuracy']:.4f}, {flip}"
    scored = f" ({tta} TTA; {flip}single view {result['single_view_accuracy']:.4f})" if tta != "none" else ""
    print(f"loss {result['loss']:.4f}  accuracy {result['accuracy']:.4f}{scored}")
    per_class = np.diag(confusion) / np.maximum(confusion.sum(axis=1), 1)
    for name, acc in zip(test.classes, per_class, strict=True):
        print(f"  {name:<20} {acc:.4f}")
    if args.confusion:
        plot_confusion(confusion, list(test.classes), args.confusion)
        print(f"confusion matrix saved to {args.confusion}")
    return 0


def _segmentation(args: argparse.Namespace, ckpt: Checkpoint, model: SemanticSegmenter) -> int:
    """A segmentation run's checkpoint on its own test split (the scenes of its seed, or its folder's test
    images; --data-path and --test-subset may change them), scored as the run scored each epoch."""
    for flag, value in (("--dataset", args.dataset), ("--tta", args.tta), ("--confusion", args.confusion)):
        if value is not None:
            print(f"pvt-np evaluate: error: argument {flag}: not for a segmentation checkpoint", file=sys.stderr)
            return 2
    saved = (ckpt.training or {}).get("config")
    if not saved:
        print(f"pvt-np evaluate: error: {args.checkpoint} records no run to take its test data from", file=sys.stderr)
        return 1
    changes = {"device": args.device, "progress": False, "eval_batch_size": args.batch_size}
    changes.update({k: v for k, v in (("data_path", args.data_path), ("test_subset", args.test_subset)) if v})
    try:
        config = SegmentationConfig.from_saved(saved, **changes)
        _, test = load_splits(config)
        if len(test.classes) != model.num_classes:
            raise CheckpointError(
                f"{args.checkpoint} has {model.num_classes} classes but its test data {len(test.classes)}"
            )
        loader = SegmentationBatches(
            test.images, test.masks, min(args.batch_size, len(test.images)), shuffle=False, device=args.device,
            mean=MEAN, std=STD, dtype=model.dtype,
        )  # fmt: skip
        scores = score_masks(model, loader, test.buckets, model.num_classes)
    except (CheckpointError, DataError, ValueError, RuntimeError, OSError) as err:
        print(f"pvt-np evaluate: error: {err}", file=sys.stderr)
        return 1
    print(f"{args.checkpoint}: {config.dataset} test, {len(test.images)} images")
    print(f"pixel accuracy {scores['test_pixel_accuracy']:.4f}  mIoU {scores['test_miou']:.4f}")
    for name, iou in zip(test.classes, scores["test_iou"], strict=True):
        print(f"  {name:<20} {'absent' if iou is None else f'{iou:.4f}'}")
    sizes = {k[len("test_iou_") :]: v for k, v in scores.items() if k.startswith("test_iou_")}
    if sizes:
        print("IoU by object size: " + ", ".join(f"{k} {'-' if v is None else f'{v:.4f}'}" for k, v in sizes.items()))
    return 0
