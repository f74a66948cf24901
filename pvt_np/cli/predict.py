"""``pvt-np predict``: the top classes of image files under a trained model (:func:`pvt_np.predict`)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from pvt_np import backend
from pvt_np.cli.arguments import positive_int
from pvt_np.inference import Prediction, predict
from pvt_np.io.load import load_model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``pvt-np predict``."""
    parser.add_argument(
        "checkpoint",
        metavar="CHECKPOINT",
        help="a run's best.npz / last.npz, or a weights file (.npz, .safetensors, .pth)",
    )
    parser.add_argument("images", metavar="IMAGE", nargs="+", help="image files (any size and mode Pillow opens)")
    parser.add_argument(
        "--top-k", type=positive_int, default=5, metavar="K",
        help="classes shown per image (at most the model's number of classes)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print a JSON list, one entry per image")
    parser.add_argument("--device", choices=backend.DEVICES, default="cpu", help="where the model runs")
    parser.add_argument(
        "--input-size", type=positive_int, nargs=2, metavar=("H", "W"), default=None,
        help="feed images at H x W instead of the training size the checkpoint records",
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


def run(args: argparse.Namespace) -> int:
    """Run ``pvt-np predict``; returns the exit status."""
    try:
        model = load_model(args.checkpoint, device=args.device)
        input_size = tuple(args.input_size) if args.input_size else None
        predictions = predict(model, args.images, top_k=args.top_k, input_size=input_size)
    except (ValueError, OSError, ImportError, RuntimeError) as err:
        print(f"pvt-np predict: error: {err}", file=sys.stderr)
        return 1
    print(json.dumps([p.to_dict() for p in predictions], indent=2) if args.json else _format(predictions))
    return 0
