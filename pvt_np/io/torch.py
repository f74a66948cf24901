"""PyTorch files (``torch.save``): timm and official whai362/PVT state_dicts, read and written.

Needs PyTorch (the ``torch`` extra), imported only when a file is read or written.
A file pvt_np writes is a plain state_dict, which timm and the official code load as
is, carrying pvt_np's model record in its ``_metadata``.
"""

from __future__ import annotations

import argparse
import json
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pvt_np.io.atomic import atomic_write
from pvt_np.io.keys import timm_to_official
from pvt_np.io.record import (
    RECORD_KEY,
    config_overrides,
    describe_model,
    is_cifar_stem,
    model_config,
    model_name,
    model_record,
    parse_record,
)
from pvt_np.io.state import WRAPPER_KEYS, numpy_state_dict
from pvt_np.models.pvt_v2 import PyramidVisionTransformerV2

if TYPE_CHECKING:  # torch is optional at runtime
    import torch

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")

_INSTALL_TORCH = "install the 'torch' extra: pip install 'pvt_np[torch]'"


def require_torch(purpose: str) -> Any:
    try:
        import torch
    except ImportError as err:
        raise ImportError(f"{purpose} needs PyTorch, which is not installed; {_INSTALL_TORCH}") from err
    return torch


def read_torch(path: Path, trust_pickle: bool) -> Any:
    torch = require_torch(f"reading {path.suffix} checkpoint {path}")
    try:
        if trust_pickle:
            return torch.load(path, map_location="cpu", weights_only=False)
        # Official PVT / DeiT training checkpoints carry their argparse.Namespace of options.
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # a corrupt pickle can fail in any way (IndexError, KeyError, ...)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        hint = ""
        if not trust_pickle and zipfile.is_zipfile(path) and "Weights only load failed" in str(err):
            hint = (
                "; the file holds Python objects besides tensors: if you trust its source, load it with "
                "trust_pickle=True (pvt-np convert --trust-pickle)"
            )
        raise ValueError(f"cannot read {path} as a PyTorch checkpoint ({first}){hint}") from err


def torch_record(obj: Any, where: str) -> dict[str, Any] | None:
    """The record pvt_np keeps in a saved state_dict's ``_metadata`` (see :func:`_save_torch`)."""
    candidates = [obj] + [obj[k] for k in WRAPPER_KEYS if isinstance(obj, Mapping) and isinstance(obj.get(k), Mapping)]
    for candidate in candidates:
        metadata = getattr(candidate, "_metadata", None)
        if isinstance(metadata, Mapping) and isinstance(metadata.get(RECORD_KEY), Mapping):
            return parse_record(metadata[RECORD_KEY].get("record"), where)
    return None


def export_timm_state_dict(model: PyramidVisionTransformerV2) -> dict[str, torch.Tensor]:
    """``model``'s weights as a timm ``pvt_v2`` state_dict (CPU torch tensors, model dtype).

    ``timm.create_model(name, num_classes=..., **overrides).load_state_dict(sd, strict=True)``
    accepts it when timm can build the architecture (see :func:`timm_constructor`); a CIFAR-stem
    model's weights fit only a timm model whose stem was replaced (``pvt_np.io.timm.timm_twin``).
    """
    torch = require_torch("export_timm_state_dict")
    return OrderedDict((k, torch.from_numpy(v.copy())) for k, v in numpy_state_dict(model).items())


def export_official_state_dict(model: PyramidVisionTransformerV2) -> dict[str, torch.Tensor]:
    """``model``'s weights keyed as the official whai362/PVT ``PyramidVisionTransformerV2`` (torch tensors)."""
    return timm_to_official(export_timm_state_dict(model))


def timm_inexpressible(model: PyramidVisionTransformerV2, target: str = "timm") -> str | None:
    """Why timm's pvt_v2 (and the official code) cannot build ``model``'s architecture, as a paragraph
    saying what to do instead; None when it can."""
    cfg = model_config(model)
    lacks = []  # (what the model has, what timm does instead)
    if (cfg["patch_size"], cfg["stride"]) != (7, 4):
        stem = "the CIFAR stem" if is_cifar_stem(cfg) else "a stem"
        lacks.append(
            (
                f"{stem} ({cfg['patch_size']}x{cfg['patch_size']} conv, stride {cfg['stride']})",
                "always builds the ImageNet stem (7x7 conv, stride 4), with no argument to change it",
            )
        )
    if cfg["linear"] and cfg["pool_size"] != 7:
        lacks.append((f"linear SRA pooling to {cfg['pool_size']}x{cfg['pool_size']}", "always pools to 7x7"))
    if not lacks:
        return None
    return (
        f"cannot write a {target} checkpoint of {describe_model(model_name(model), cfg)}: the model has "
        f"{' and '.join(ours for ours, _ in lacks)}, but timm's pvt_v2, like the official whai362/PVT code, "
        f"{' and '.join(theirs for _, theirs in lacks)}, so no model timm builds fits these weights. "
        "Save it as .npz or .safetensors instead (pvt-np convert SRC model.safetensors, or "
        "pvt_np.weights.save_safetensors), which pvt_np.load_model reads back with its architecture; "
        "in PyTorch, pvt_np.io.timm.timm_twin(model) builds a timm model with the stem swapped in."
    )


def timm_constructor(model: PyramidVisionTransformerV2) -> str:
    """The ``timm.create_model(...)`` call that builds ``model``'s architecture (for messages)."""
    cfg = model_config(model)
    name = model_name(model)
    extra = {k: v for k, v in config_overrides(name, cfg).items() if k not in ("patch_size", "stride", "pool_size")}
    args = [repr(name or "pvt_v2_b0"), f"num_classes={cfg['num_classes']}"]
    args += [f"{k}={tuple(v) if isinstance(v, list) else v!r}" for k, v in extra.items()]
    return f"timm.create_model({', '.join(args)})"


def _save_torch(model: PyramidVisionTransformerV2, path: str | Path, layout: str) -> Path:
    """``torch.save`` a plain state_dict (what timm and the official code load) carrying pvt_np's
    record in its ``_metadata``: the map torch keeps beside every state_dict, keyed by module
    path, which ``load_state_dict`` consults only for the modules' own paths."""
    problem = timm_inexpressible(model, "timm" if layout == "timm" else "official whai362/PVT")
    if problem:
        raise ValueError(problem)
    torch = require_torch(f"writing {path}")
    state = export_timm_state_dict(model)
    state = OrderedDict(timm_to_official(state) if layout == "official" else state)
    record = model_record(model)
    record["layout"] = layout
    state._metadata = OrderedDict({RECORD_KEY: {"record": json.dumps(record)}})  # type: ignore[attr-defined]
    path = Path(path)
    with atomic_write(path) as f:
        torch.save(state, f)
    return path


def save_timm_checkpoint(model: PyramidVisionTransformerV2, path: str | Path) -> Path:
    """Write a plain timm state_dict with ``torch.save`` (atomically); needs the ``torch`` extra.

    The file carries pvt_np's record, so :func:`~pvt_np.io.load.load_model` rebuilds the model; a model timm
    cannot build (the CIFAR stem) is refused with a message saying what to use instead.
    """
    return _save_torch(model, path, "timm")


def save_official_checkpoint(model: PyramidVisionTransformerV2, path: str | Path) -> Path:
    """Write a plain state_dict in the official whai362/PVT layout with ``torch.save`` (atomically)."""
    return _save_torch(model, path, "official")
