"""``pvt-np evaluate``: test-set loss, accuracy and confusion matrix of a training checkpoint."""

from __future__ import annotations

import argparse
import sys

import numpy as np

from pvt_np.data import DATASETS
from pvt_np.data.errors import DataError
from pvt_np.training.checkpoint import CheckpointError, load_checkpoint
from pvt_np.training.cli_train import positive_int
from pvt_np.training.trainer import TrainConfig, _subset, build_model, evaluate


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a training checkpoint (last.npz / best.npz of a run)")
    p.add_argument("--data-path", help="data location (none given: the one the run was trained with)")
    p.add_argument("--dataset", choices=DATASETS, help="none given: the run's dataset")
    p.add_argument("--cache-dir", help="decoded image-folder cache (none given: the run's, else ~/.cache/pvt_np)")
    p.add_argument("--batch-size", type=positive_int, default=500, help="images per forward pass")
    p.add_argument("--device", default="cpu", choices=("cpu", "gpu"), help="where to evaluate")
    p.add_argument("--confusion", metavar="PNG", help="also save the confusion matrix plot here")


def run(args: argparse.Namespace) -> int:
    from pvt_np.data import load_dataset
    from pvt_np.training.plots import plot_confusion

    try:
        ckpt = load_checkpoint(args.checkpoint)
        saved = ckpt["config"]
        known = {k: v for k, v in saved.items() if k in TrainConfig.__dataclass_fields__}
        config = TrainConfig(**{**known, "device": args.device, "dataset": args.dataset or saved["dataset"]})
        data_path = args.data_path or saved["data_path"]
        test = load_dataset(config.dataset, data_path, "test", cache_dir=args.cache_dir or config.cache_dir)
        # A run trained with --test-subset was scored on that subset: evaluate the same images
        # (when evaluating on the run's own data).
        own_data = (config.dataset, data_path) == (saved["dataset"], saved["data_path"])
        subset = _subset(test, config.test_subset, 0) if own_data else test
        note = " (the run's --test-subset)" if len(subset) < len(test) else ""
        test = subset
        if test.num_classes != ckpt["num_classes"]:
            raise CheckpointError(
                f"{args.checkpoint} has {ckpt['num_classes']} classes but {config.dataset} at {data_path} "
                f"has {test.num_classes}"
            )
        model = build_model(config, ckpt["num_classes"], test.image_size)
        model.load_state_dict(ckpt["model"])
        loader = test.loader(
            min(args.batch_size, len(test)), shuffle=False, device=args.device,
            mean=ckpt["normalize"]["mean"], std=ckpt["normalize"]["std"], dtype=config.dtype,
        )  # fmt: skip
        result = evaluate(model, loader, test.num_classes, progress=True)
    except (CheckpointError, DataError, ValueError, RuntimeError, OSError, KeyError) as err:
        print(f"pvt-np evaluate: error: {err}", file=sys.stderr)
        return 1
    confusion = result["confusion"]
    print(f"{args.checkpoint}: {config.dataset} test, {confusion.sum()} images{note}")
    print(f"loss {result['loss']:.4f}  accuracy {result['accuracy']:.4f}")
    per_class = np.diag(confusion) / np.maximum(confusion.sum(axis=1), 1)
    for name, acc in zip(test.classes, per_class, strict=True):
        print(f"  {name:<20} {acc:.4f}")
    if args.confusion:
        plot_confusion(confusion, list(test.classes), args.confusion)
        print(f"confusion matrix saved to {args.confusion}")
    return 0
