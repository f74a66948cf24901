"""The record every file pvt_np writes carries: which model, its whole architecture, its data.

Two kinds of file hold a model. A *training checkpoint* (a run's ``last.npz`` /
``best.npz``, :mod:`pvt_np.io.checkpoint`) also holds the optimizer, schedule and
progress to resume the run; a *weights file* (``.npz``, ``.safetensors``, ``.pth``)
holds the weights only. Every one pvt_np writes carries a record (:func:`model_record`):
the variant, every architecture field, the dtype, and the class names, input size and
normalisation of the run, so :func:`pvt_np.io.load.load_model` rebuilds the model from
any of them without being told what it is.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from pvt_np.models.pvt_v2 import PyramidVisionTransformerV2
from pvt_np.models.registry import ARCH_FIELDS, CIFAR_OVERRIDES, MODEL_CONFIGS, ModelMeta, architecture, model_meta

# .npz entry / safetensors metadata key / torch state_dict _metadata key holding the JSON record.
RECORD_KEY = "__pvt_np_record__"
# 1: name, config, dtype. 2: also overrides, classes, input_size, mean, std.
RECORD_FORMAT_VERSION = 2


# What timm's pvt_v2 (and the official whai362/PVT code) pretrained weights expect:
# 224x224 images normalised with ImageNet's statistics. Used for foreign files, which say nothing.
IMAGENET_META = ModelMeta(input_size=(224, 224), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def model_config(model: PyramidVisionTransformerV2) -> dict[str, Any]:
    """The architecture of ``model`` as JSON-ready values (what a file records).

    Holds num_classes and every field of :data:`~pvt_np.models.ARCH_FIELDS`; regularisation
    rates (dropout, drop-path) are training settings and are not part of it.
    """
    if not isinstance(model, PyramidVisionTransformerV2):
        raise TypeError(f"model_config: expected a PyramidVisionTransformerV2, got {type(model).__name__}")
    qkv_bias = next(
        (blk.attn.q.bias is not None for stage in model.stages for blk in stage.blocks),
        True,
    )
    return {
        "num_classes": int(model.num_classes),
        "in_chans": int(model.in_chans),
        "depths": [int(d) for d in model.depths],
        "embed_dims": [int(d) for d in model.embed_dims],
        "num_heads": [int(h) for h in model.num_heads],
        "sr_ratios": [int(r) for r in model.sr_ratios],
        "mlp_ratios": [r if isinstance(r, int) else float(r) for r in model.mlp_ratios],
        "qkv_bias": bool(qkv_bias),
        "linear": bool(model.linear),
        "patch_size": int(model.patch_size),
        "stride": int(model.stride),
        "pool_size": int(model.pool_size),
    }


def model_name(model: Any) -> str | None:
    return getattr(model, "model_name", None)


def same(a: Any, b: Any) -> bool:
    """Equality of config values across a JSON round trip (tuples vs lists, 8 vs 8.0)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def config_overrides(name: str | None, config: Mapping[str, Any]) -> dict[str, Any]:
    """The architecture fields of ``config`` that differ from variant ``name``'s defaults
    (what ``create_model(name, **overrides)`` would need; everything for an unregistered model)."""
    if name not in MODEL_CONFIGS:
        return {k: config[k] for k in ARCH_FIELDS if k in config}
    default = architecture(name)
    return {k: config[k] for k in ARCH_FIELDS if k in config and not same(config[k], default[k])}


def is_cifar_stem(config: Mapping[str, Any]) -> bool:
    return (config.get("patch_size"), config.get("stride")) == (
        CIFAR_OVERRIDES["patch_size"],
        CIFAR_OVERRIDES["stride"],
    )


def describe_model(name: str | None, config: Mapping[str, Any]) -> str:
    """A short phrase for a model: 'pvt_v2_b0 with the CIFAR stem, sr_ratios (4, 2, 1, 1), 10 classes'."""
    overrides = config_overrides(name, config)
    parts = []
    if "patch_size" in overrides or "stride" in overrides:
        stem = f"{config['patch_size']}x{config['patch_size']} stride {config['stride']}"
        parts.append(f"the CIFAR stem ({stem})" if is_cifar_stem(config) else f"a {stem} stem")
    parts += [
        f"{k} {tuple(v) if isinstance(v, list) else v}"
        for k, v in overrides.items()
        if k not in ("patch_size", "stride")
    ]
    head = config.get("num_classes")
    what = name
    if name not in MODEL_CONFIGS:  # everything differs from a variant: name the shape of the pyramid
        pyramid = f"depths {show(config.get('depths'))}, embed_dims {show(config.get('embed_dims'))}"
        what = f"an unregistered PVT v2 ({pyramid})"
        parts = [p for p in parts if p.startswith(("the CIFAR stem", "a "))]
    return f"{what}{' with ' + ', '.join(parts) if parts else ''}" + (
        f", {head} classes" if head else ", no head" if head == 0 else ""
    )


def model_record(model: PyramidVisionTransformerV2) -> dict[str, Any]:
    """What every file pvt_np writes records about ``model``: name, full architecture, the
    overrides of the named variant, dtype and ``model.meta`` (classes, input size, normalisation)."""
    config = model_config(model)
    name = model_name(model)
    return {
        "format": "pvt_np",
        "format_version": RECORD_FORMAT_VERSION,
        "model_name": name,
        "config": config,
        "overrides": config_overrides(name, config),
        "dtype": str(np.dtype(model.dtype)),
        "layout": "timm",
        **model_meta(model).to_json(),
    }


def parse_record(record: Any, where: str) -> dict[str, Any]:
    if isinstance(record, (str, bytes)):
        try:
            record = json.loads(record)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: the pvt_np model record is not valid JSON ({err})") from err
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise ValueError(f"{where}: the pvt_np model record has no 'config' mapping")
    version = record.get("format_version", 1)
    if not isinstance(version, int) or version > RECORD_FORMAT_VERSION:
        raise ValueError(
            f"{where}: the model record has format version {version!r}; this pvt_np reads up to "
            f"{RECORD_FORMAT_VERSION} (the file was written by a newer pvt_np: upgrade it)"
        )
    unknown = sorted(set(record["config"]) - set(ARCH_FIELDS) - {"num_classes"})
    if unknown:
        raise ValueError(f"{where}: the model record has unknown config fields {unknown} (newer pvt_np?)")
    return record


def show(value: Any) -> str:
    return str(tuple(value)) if isinstance(value, list) else str(value)
