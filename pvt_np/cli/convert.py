"""``pvt-np convert``: any checkpoint pvt_np reads to .npz, .safetensors, or a timm / official PyTorch file."""

from __future__ import annotations

import argparse
import sys

from pvt_np.io.convert import FORMATS, UsageError, convert
from pvt_np.io.load import WeightsMismatchError
from pvt_np.models.registry import list_models


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``pvt-np convert``."""
    parser.add_argument(
        "src",
        metavar="SRC",
        help="checkpoint to read: a run's last.npz / best.npz, a weights .npz / .safetensors, a PyTorch .pth",
    )
    parser.add_argument("dst", metavar="DST", help="file to write (not overwritten unless --force)")
    parser.add_argument(
        "--model",
        choices=list_models(),
        metavar="NAME",
        help="variant the checkpoint holds (" + ", ".join(list_models()) + "); only for a foreign file whose "
        "shapes match no variant: pvt_np's files record it, and timm/official files are recognised by their shapes",
    )
    parser.add_argument(
        "--num-classes",
        type=int,
        default=None,
        metavar="K",
        help="classifier size with --model (default: read from the checkpoint's head; 0 when it has none)",
    )
    parser.add_argument("--cifar", action="store_true", help="with --model: the CIFAR config (3x3 stride-2 stem, "
                        "sr_ratios 4,2,1,1)")  # fmt: skip
    parser.add_argument(
        "--to",
        choices=FORMATS,
        default=None,
        help="output format (default: from DST's extension: .npz -> npz, .safetensors -> safetensors, "
        ".pth/.pt -> timm); 'official' writes the whai362/PVT key layout as .pth",
    )
    parser.add_argument("--force", action="store_true", help="overwrite DST if it exists")
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="unpickle .pth files with weights_only=False (only for files from a trusted source)",
    )
    parser.add_argument(
        "--show-keys", action="store_true", help="when SRC does not fit the model, list every mismatched key"
    )
    parser.epilog = "exit status: 0 done, 1 unreadable/mismatched checkpoint or missing dependency, 2 bad usage"


def run(args: argparse.Namespace) -> int:
    """Run ``pvt-np convert``; returns the exit status (messages on stdout / stderr)."""
    try:
        message = convert(
            args.src, args.dst, to=args.to, variant=args.model, num_classes=args.num_classes, cifar=args.cifar,
            force=args.force, trust_pickle=args.trust_pickle,
        )  # fmt: skip
    except UsageError as err:
        print(f"pvt-np convert: error: {err}", file=sys.stderr)
        return 2
    except WeightsMismatchError as err:
        print(f"pvt-np convert: error: {err}", file=sys.stderr)
        if args.show_keys:
            print("\n".join(err.details), file=sys.stderr)
        return 1
    except (ValueError, ImportError, OSError) as err:
        print(f"pvt-np convert: error: {err}", file=sys.stderr)
        return 1
    print(message)
    return 0
