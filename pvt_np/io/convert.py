"""Any checkpoint pvt_np reads to .npz, .safetensors, or a timm / official PyTorch file (the command
``pvt-np convert`` is :mod:`pvt_np.cli.convert`)."""

from __future__ import annotations

import os
from pathlib import Path

from pvt_np.io.load import UnknownArchitectureError, is_segmentation, load_into, load_model
from pvt_np.io.npz import NPZ_SUFFIXES, save_npz
from pvt_np.io.read import read_checkpoint
from pvt_np.io.record import describe_model, is_cifar_stem, model_config, model_name
from pvt_np.io.safetensors import SAFETENSORS_SUFFIXES, save_safetensors
from pvt_np.io.torch import TORCH_SUFFIXES, save_official_checkpoint, save_timm_checkpoint, timm_constructor
from pvt_np.models.registry import create_model

#: Output formats of ``pvt-np convert --to``.
FORMATS = ("npz", "timm", "official", "safetensors")


class UsageError(Exception):
    """A request that cannot be met as asked (``pvt-np convert`` exits with status 2)."""


_FORMAT_SUFFIXES = {
    "npz": NPZ_SUFFIXES,
    "safetensors": SAFETENSORS_SUFFIXES,
    "timm": TORCH_SUFFIXES,
    "official": TORCH_SUFFIXES,
}


def _output_format(dst: Path, to: str | None) -> str:
    suffix = dst.suffix.lower()
    if to is None:
        for fmt in ("npz", "safetensors", "timm"):
            if suffix in _FORMAT_SUFFIXES[fmt]:
                return fmt
        raise UsageError(
            f"cannot tell the output format from DST's extension {dst.suffix or '(none)'!r}: "
            f"use .npz, .safetensors or .pth, or pass --to {{{','.join(FORMATS)}}}"
        )
    if suffix not in _FORMAT_SUFFIXES[to]:
        raise UsageError(f"--to {to} writes {'/'.join(_FORMAT_SUFFIXES[to])} files, but DST is {dst}")
    return to


def convert(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    to: str | None = None,
    variant: str | None = None,
    num_classes: int | None = None,
    cifar: bool = False,
    force: bool = False,
    trust_pickle: bool = False,
) -> str:
    """Write the model in ``src`` to ``dst`` in format ``to`` (default: from ``dst``'s extension); returns a
    one-line account of what was written.

    ``variant`` (a model name), ``num_classes`` and ``cifar`` say what a foreign file holds whose shapes match no
    variant; a file that records its model must agree with them. Raises :class:`UsageError` for a request that
    cannot be met as asked, ValueError / OSError / ImportError for a file that cannot be read, fitted or written.
    """
    src, dst = Path(src), Path(dst)
    fmt = _output_format(dst, to)
    if dst.exists() and not force:
        raise UsageError(f"{dst} exists; pass --force to overwrite it")
    if dst.is_dir():
        raise UsageError(f"{dst} is a directory")
    if num_classes is not None and num_classes < 0:
        raise UsageError(f"--num-classes must be >= 0, got {num_classes}")
    ckpt = read_checkpoint(src, trust_pickle=trust_pickle)
    if is_segmentation(ckpt):
        raise ValueError(
            f"{src} is a segmentation run's checkpoint (a PVT v2 backbone and a Semantic FPN head): the formats "
            f"pvt-np convert writes hold classification models only; pvt_np.load_model reads {src} as it is"
        )
    note = ""
    if ckpt.record is not None:
        recorded = ckpt.record.get("model_name")
        if variant is not None and recorded is not None and variant != recorded:
            raise ValueError(f"{src} holds a {recorded} but --model is {variant}")
        rec_classes = ckpt.record["config"].get("num_classes")
        if num_classes is not None and num_classes != rec_classes:
            raise ValueError(f"{src} holds a model with {rec_classes} classes but --num-classes is {num_classes}")
        model = load_model(ckpt)
    elif variant is None:
        try:
            model = load_model(ckpt)
        except UnknownArchitectureError as err:
            raise UsageError(f"--model is required: {err}") from err
        if num_classes is not None and num_classes != model.num_classes:
            raise ValueError(f"{src} holds a model with {model.num_classes} classes but --num-classes is {num_classes}")
        if cifar and not is_cifar_stem(model_config(model)):
            raise ValueError(
                f"{src} holds a model with a {model.patch_size}x{model.patch_size} stem, but --cifar was given"
            )
        note = ", recognised from its shapes"
    else:
        if num_classes is None:
            head = ckpt.state_dict.get("head.weight")
            num_classes = int(head.shape[0]) if head is not None and head.ndim == 2 else 0
        model = load_into(create_model(variant, num_classes=num_classes, cifar=cifar), ckpt, strict=True)
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
