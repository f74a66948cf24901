"""``pvt-np flops``: params and FLOPs of a PVT v2 per layer, per stage and in total, or the paper's table."""

from __future__ import annotations

import argparse
import sys

from pvt_np.cli.arguments import non_negative_int, positive_int
from pvt_np.complexity import DEPTHS, paper_table, print_complexity
from pvt_np.models import create_model, list_models


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``pvt-np flops MODEL [--input-size H W] [--num-classes K] [--cifar] [--depth D]`` or ``pvt-np flops --paper``."""
    parser.add_argument("model", nargs="?", help=f"model name ({', '.join(list_models())})")
    parser.add_argument(
        "--input-size",
        type=positive_int,
        nargs=2,
        metavar=("H", "W"),
        help="input image size (default 224 224, or 32 32 with --cifar)",
    )
    parser.add_argument("--num-classes", type=non_negative_int, default=1000, help="head size (default 1000)")
    parser.add_argument("--cifar", action="store_true", help="the CIFAR config (3x3 stride-2 stem, sr_ratios 4,2,1,1)")
    parser.add_argument("--depth", choices=DEPTHS, default="stage", help="table granularity (default stage)")
    parser.add_argument("--paper", action="store_true", help="all seven variants at 224x224 next to the paper's table")


def run(args: argparse.Namespace) -> int:
    """Print the table; a clear message on stderr and exit status 2 for a bad model name or input size."""
    if args.paper:
        if args.model is not None:
            print("pvt-np flops: error: --paper takes no MODEL", file=sys.stderr)
            return 2
        rows = paper_table()
        return 0 if all(r.matches for r in rows) else 1
    if args.model is None:
        print(f"pvt-np flops: error: give a MODEL ({', '.join(list_models())}) or --paper", file=sys.stderr)
        return 2
    size = tuple(args.input_size) if args.input_size else ((32, 32) if args.cifar else (224, 224))
    try:
        model = create_model(args.model, num_classes=args.num_classes, cifar=args.cifar)
        print_complexity(model, size, depth=args.depth)
    except ValueError as err:
        print(f"pvt-np flops: error: {err}", file=sys.stderr)
        return 2
    return 0
