"""``pvt-np convert``: any checkpoint pvt_np reads to .npz, .safetensors, or a timm / official PyTorch file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pvt_np.io.load import UnknownArchitectureError, WeightsMismatchError, load_into, load_model
from pvt_np.io.npz import NPZ_SUFFIXES, save_npz
from pvt_np.io.read import read_checkpoint
from pvt_np.io.record import describe_model, is_cifar_stem, model_config, model_name
from pvt_np.io.safetensors import SAFETENSORS_SUFFIXES, save_safetensors
from pvt_np.io.torch import TORCH_SUFFIXES, save_official_checkpoint, save_timm_checkpoint, timm_constructor
from pvt_np.models.registry import create_model, list_models

#: Output formats of ``pvt-np convert --to``.
FORMATS = ("npz", "timm", "official", "safetensors")


class _UsageError(Exception):
    """A bad command line (exit status 2)."""


_FORMAT_SUFFIXES = {
    "npz": NPZ_SUFFIXES,
    "safetensors": SAFETENSORS_SUFFIXES,
    "timm": TORCH_SUFFIXES,
    "official": TORCH_SUFFIXES,
}


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


def _output_format(dst: Path, to: str | None) -> str:
    suffix = dst.suffix.lower()
    if to is None:
        for fmt in ("npz", "safetensors", "timm"):
            if suffix in _FORMAT_SUFFIXES[fmt]:
                return fmt
        raise _UsageError(
            f"cannot tell the output format from DST's extension {dst.suffix or '(none)'!r}: "
            f"use .npz, .safetensors or .pth, or pass --to {{{','.join(FORMATS)}}}"
        )
    if suffix not in _FORMAT_SUFFIXES[to]:
        raise _UsageError(f"--to {to} writes {'/'.join(_FORMAT_SUFFIXES[to])} files, but DST is {dst}")
    return to


def _convert(args: argparse.Namespace) -> str:
    src, dst = Path(args.src), Path(args.dst)
    fmt = _output_format(dst, args.to)
    if dst.exists() and not args.force:
        raise _UsageError(f"{dst} exists; pass --force to overwrite it")
    if dst.is_dir():
        raise _UsageError(f"{dst} is a directory")
    if args.num_classes is not None and args.num_classes < 0:
        raise _UsageError(f"--num-classes must be >= 0, got {args.num_classes}")
    ckpt = read_checkpoint(src, trust_pickle=args.trust_pickle)
    note = ""
    if ckpt.record is not None:
        recorded = ckpt.record.get("model_name")
        if args.model is not None and recorded is not None and args.model != recorded:
            raise ValueError(f"{src} holds a {recorded} but --model is {args.model}")
        rec_classes = ckpt.record["config"].get("num_classes")
        if args.num_classes is not None and args.num_classes != rec_classes:
            raise ValueError(f"{src} holds a model with {rec_classes} classes but --num-classes is {args.num_classes}")
        model = load_model(ckpt)
    elif args.model is None:
        try:
            model = load_model(ckpt)
        except UnknownArchitectureError as err:
            raise _UsageError(f"--model is required: {err}") from err
        if args.num_classes is not None and args.num_classes != model.num_classes:
            raise ValueError(
                f"{src} holds a model with {model.num_classes} classes but --num-classes is {args.num_classes}"
            )
        if args.cifar and not is_cifar_stem(model_config(model)):
            raise ValueError(
                f"{src} holds a model with a {model.patch_size}x{model.patch_size} stem, but --cifar was given"
            )
        note = ", recognised from its shapes"
    else:
        num_classes = args.num_classes
        if num_classes is None:
            head = ckpt.state_dict.get("head.weight")
            num_classes = int(head.shape[0]) if head is not None and head.ndim == 2 else 0
        model = load_into(create_model(args.model, num_classes=num_classes, cifar=args.cifar), ckpt, strict=True)
    if fmt == "npz":
        save_npz(model, dst)
    elif fmt == "safetensors":
        save_safetensors(model, dst)
    elif fmt == "timm":
        save_timm_checkpoint(model, dst)
        note += f"; in timm: {timm_constructor(model)}"
    else:
        save_official_checkpoint(model, dst)
    what = describe_model(model_name(model), model_config(model))
    return f"wrote {dst} ({fmt}, {len(ckpt.state_dict)} tensors, {what}{note})"


def run(args: argparse.Namespace) -> int:
    """Run ``pvt-np convert``; returns the exit status (messages on stdout / stderr)."""
    try:
        message = _convert(args)
    except _UsageError as err:
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
