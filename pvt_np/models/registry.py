"""Named PVT v2 variants (the official hyperparameters), ``create_model`` and what a model knows of its data."""

from __future__ import annotations

import contextlib
import inspect
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pvt_np import backend
from pvt_np.models.pvt_v2 import PyramidVisionTransformerV2
from pvt_np.models.semantic_fpn import DEFAULT_GN_GROUPS, SemanticFPNHead, SemanticSegmenter
from pvt_np.nn import skip_init

_COMMON = {"num_heads": (1, 2, 5, 8), "sr_ratios": (8, 4, 2, 1), "mlp_ratios": (8, 8, 4, 4)}
_WIDE = (64, 128, 320, 512)

MODEL_CONFIGS: dict[str, dict[str, Any]] = {
    "pvt_v2_b0": {**_COMMON, "depths": (2, 2, 2, 2), "embed_dims": (32, 64, 160, 256)},
    "pvt_v2_b1": {**_COMMON, "depths": (2, 2, 2, 2), "embed_dims": _WIDE},
    "pvt_v2_b2": {**_COMMON, "depths": (3, 4, 6, 3), "embed_dims": _WIDE},
    "pvt_v2_b2_li": {**_COMMON, "depths": (3, 4, 6, 3), "embed_dims": _WIDE, "linear": True},
    "pvt_v2_b3": {**_COMMON, "depths": (3, 4, 18, 3), "embed_dims": _WIDE},
    "pvt_v2_b4": {**_COMMON, "depths": (3, 8, 27, 3), "embed_dims": _WIDE},
    "pvt_v2_b5": {**_COMMON, "depths": (3, 6, 40, 3), "embed_dims": _WIDE, "mlp_ratios": (4, 4, 4, 4)},
}

# Recommended for 32x32 CIFAR images (see README, "CIFAR config"): a 3x3 stride-2 stem
# keeps a 16x16 / 8x8 / 4x4 / 2x2 pyramid, where the default 7x7 stride-4 stem would
# leave 8x8 / 4x4 / 2x2 / 1x1; the SR ratios shrink with it so keys/values stay 4x4 maps.
CIFAR_OVERRIDES: dict[str, Any] = {"patch_size": 3, "stride": 2, "sr_ratios": (4, 2, 1, 1)}

_CONSTRUCTOR = inspect.signature(PyramidVisionTransformerV2.__init__).parameters
_ALLOWED_OVERRIDES = sorted(set(_CONSTRUCTOR) - {"self", "num_classes", "dtype"})
#: The regularisation rates (training settings, not architecture).
RATE_ARGS = ("drop_rate", "proj_drop_rate", "attn_drop_rate", "drop_path_rate")

#: The architecture fields: with num_classes they rebuild a model exactly (what files record).
ARCH_FIELDS = (
    "in_chans",
    "depths",
    "embed_dims",
    "num_heads",
    "sr_ratios",
    "mlp_ratios",
    "qkv_bias",
    "linear",
    "patch_size",
    "stride",
    "pool_size",
)


@dataclass(frozen=True)
class ModelMeta:
    """What a model knows about the data it was trained on; ``pvt_np.predict`` prepares images with it.

    classes: class names, ``classes[k]`` for logit k (None: unknown, shown as indices).
    input_size: (height, width) of the training images (None: unknown).
    mean, std: per-channel normalisation on the 0-1 scale that the run used (None: unknown).
    """

    classes: tuple[str, ...] | None = None
    input_size: tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        if self.input_size is not None:
            size = tuple(self.input_size)
            if len(size) != 2 or not all(_is_int(s) and s >= 1 for s in size):
                raise ValueError(f"ModelMeta: input_size must be (height, width) of positive ints, got {size}")
            object.__setattr__(self, "input_size", (int(size[0]), int(size[1])))
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is None:
                continue
            values = tuple(float(v) for v in value)
            if name == "std" and not all(v > 0 for v in values):
                raise ValueError(f"ModelMeta: std must be positive, got {values}")
            object.__setattr__(self, name, values)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready values (what files record)."""
        return {
            "classes": None if self.classes is None else list(self.classes),
            "input_size": None if self.input_size is None else list(self.input_size),
            "mean": None if self.mean is None else list(self.mean),
            "std": None if self.std is None else list(self.std),
        }

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> ModelMeta:
        """The inverse of :meth:`to_json` (missing fields are unknown)."""
        return cls(**{k: values.get(k) for k in ("classes", "input_size", "mean", "std")})


def model_meta(model: Any) -> ModelMeta:
    """``model.meta``, or an empty :class:`ModelMeta` for a model built without create_model."""
    meta = getattr(model, "meta", None)
    return meta if isinstance(meta, ModelMeta) else ModelMeta()


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    return sorted(MODEL_CONFIGS)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _per_stage(cfg: dict[str, Any], name: str, caller: str, check: Any, expected: str) -> None:
    values = cfg[name]
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise ValueError(f"{caller}: {name} must be a non-empty sequence (one value per stage), got {values!r}")
    if len(values) != len(cfg["depths"]):
        raise ValueError(
            f"{caller}: {name} needs {len(cfg['depths'])} values (one per stage, like depths), got {tuple(values)}"
        )
    bad = [v for v in values if not check(v)]
    if bad:
        raise ValueError(f"{caller}: {name} must hold {expected}, got {tuple(values)}")


def check_architecture(cfg: dict[str, Any], caller: str = "create_model") -> None:
    """Reject a configuration that makes no model (num_classes -1, an empty stage, heads that do not
    divide the width, a stem that does not overlap, ...), naming the argument, what it takes and what came."""
    num_classes = cfg["num_classes"]
    if not _is_int(num_classes) or num_classes < 0:
        raise ValueError(f"{caller}: num_classes must be an int >= 0 (0: no head), got {num_classes!r}")
    for name in ("in_chans", "patch_size", "stride", "pool_size"):
        if not _is_int(cfg[name]) or cfg[name] < 1:
            raise ValueError(f"{caller}: {name} must be an int >= 1, got {cfg[name]!r}")
    if cfg["patch_size"] <= cfg["stride"]:
        raise ValueError(
            f"{caller}: patch_size ({cfg['patch_size']}) must be larger than stride ({cfg['stride']}) "
            "for overlapping patches (PVT v2 uses 2*stride - 1)"
        )
    for name in ("qkv_bias", "linear"):
        if not isinstance(cfg[name], (bool, np.bool_)):
            raise ValueError(f"{caller}: {name} must be True or False, got {cfg[name]!r}")
    positive_int = "ints >= 1"
    _per_stage(cfg, "depths", caller, lambda v: _is_int(v) and v >= 1, positive_int)
    _per_stage(cfg, "embed_dims", caller, lambda v: _is_int(v) and v >= 1, positive_int)
    _per_stage(cfg, "num_heads", caller, lambda v: _is_int(v) and v >= 1, positive_int)
    _per_stage(cfg, "sr_ratios", caller, lambda v: _is_int(v) and v >= 1, positive_int)
    _per_stage(
        cfg,
        "mlp_ratios",
        caller,
        lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool) and v > 0,
        "positive numbers",
    )
    for i, (dim, heads, ratio) in enumerate(zip(cfg["embed_dims"], cfg["num_heads"], cfg["mlp_ratios"], strict=True)):
        if dim % heads:
            raise ValueError(
                f"{caller}: stage {i}: embed_dims[{i}] = {dim} is not divisible by num_heads[{i}] = {heads}"
            )
        if int(dim * ratio) < 1:
            raise ValueError(f"{caller}: stage {i}: mlp_ratios[{i}] = {ratio} leaves no hidden unit at width {dim}")


def _check_rates(rates: dict[str, Any], caller: str) -> None:
    for name, value in rates.items():
        if not isinstance(value, numbers.Real) or isinstance(value, bool) or not 0.0 <= value < 1.0:
            raise ValueError(f"{caller}: {name} must be a probability in [0, 1), got {value!r}")


def architecture(name: str, num_classes: int = 1000, cifar: bool = False, **overrides: Any) -> dict[str, Any]:
    """The full architecture (num_classes and every field of :data:`ARCH_FIELDS`) that
    ``create_model(name, num_classes, cifar=cifar, **overrides)`` builds, without building it."""
    if name not in MODEL_CONFIGS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    unknown = sorted(set(overrides) - set(ARCH_FIELDS))
    if unknown:
        raise ValueError(f"create_model: unknown override(s) {unknown}; allowed: {', '.join(_ALLOWED_OVERRIDES)}")
    cfg = {k: _CONSTRUCTOR[k].default for k in ARCH_FIELDS}
    cfg.update(MODEL_CONFIGS[name])
    if cifar:
        cfg.update(CIFAR_OVERRIDES)
    cfg.update(overrides)
    cfg["num_classes"] = num_classes
    check_architecture(cfg)
    return cfg


def build_model(
    name: str | None,
    cfg: dict[str, Any],
    rates: dict[str, Any] | None = None,
    *,
    dtype: Any = np.float32,
    device: str = "cpu",
    seed: int | None = 0,
    meta: ModelMeta | None = None,
) -> PyramidVisionTransformerV2:
    """A model from a full architecture (see :func:`architecture`); ``seed=None`` skips the
    official initialisation, for a caller that overwrites every weight next (a loader)."""
    rates = dict(rates or {})
    check_architecture(cfg)
    _check_rates(rates, "create_model")
    dtype = backend.check_float_dtype(dtype)
    backend.check_device(device)
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items() if k in ARCH_FIELDS}
    # A loader overwrites every weight: skip the layers' default draws (``seed=None``).
    with skip_init() if seed is None else contextlib.nullcontext():
        model = PyramidVisionTransformerV2(num_classes=cfg["num_classes"], dtype=dtype, **kwargs, **rates)
    if seed is not None:
        model.init_weights(seed)
    model.model_name = name
    model.meta = meta if meta is not None else ModelMeta()
    return model.to(device=device) if device != "cpu" else model


def create_model(
    name: str,
    num_classes: int = 1000,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
    *,
    seed: int = 0,
    dtype: Any = np.float32,
    device: str = "cpu",
    cifar: bool = False,
    **overrides: Any,
) -> PyramidVisionTransformerV2:
    """Build a PVT v2 variant with the official hyperparameters, initialised from ``seed``.

    ``cifar=True`` applies :data:`CIFAR_OVERRIDES` (stem patch 3 / stride 2, sr_ratios (4, 2, 1, 1))
    before ``overrides``; any constructor argument of PyramidVisionTransformerV2
    (patch_size, stride, sr_ratios, depths, embed_dims, attn_drop_rate, ...) can be overridden.
    Arguments that make no model (``num_classes=-1``, a rate outside [0, 1), heads that do not
    divide a stage's width, ...) raise a ValueError naming the argument. The model's ``meta``
    (a :class:`ModelMeta`) starts empty; the trainer and :func:`pvt_np.load_model` fill it.
    """
    rates = {k: overrides.pop(k) for k in RATE_ARGS if k in overrides}
    rates.update(drop_rate=drop_rate, drop_path_rate=drop_path_rate)
    cfg = architecture(name, num_classes, cifar, **overrides)
    return build_model(name, cfg, rates, dtype=dtype, device=device, seed=seed)


def create_segmenter(
    name: str,
    num_classes: int,
    *,
    fpn_channels: int = 256,
    head_channels: int = 128,
    num_groups: int = DEFAULT_GN_GROUPS,
    levels: Sequence[int] = (0, 1, 2, 3),
    drop_path_rate: float = 0.0,
    seed: int = 0,
    dtype: Any = np.float32,
    device: str = "cpu",
    **overrides: Any,
) -> SemanticSegmenter:
    """A PVT v2 variant (no classification head) with a :class:`SemanticFPNHead` of ``num_classes`` classes.

    The backbone is ``create_model(name, num_classes=0, drop_path_rate=..., seed=seed, **overrides)``
    (``cifar=True`` and any architecture override pass through); the head gets mmseg's initialisation
    (:meth:`SemanticFPNHead.init_weights`) from ``seed``. The widths (FPN 256, head 128) are those of the
    PVT v2 Semantic FPN configs; the 32 GroupNorm groups are Panoptic FPN's. ``levels`` are the pyramid maps the
    head uses (all four by default; ``(3,)`` is the stride-32 map alone, as a plain ViT would give).
    """
    backbone = create_model(name, 0, drop_path_rate=drop_path_rate, seed=seed, dtype=dtype, **overrides)
    # init_weights draws every head weight next: skip the layers' default draws from the shared generator.
    with skip_init():
        head = SemanticFPNHead(
            backbone.embed_dims, fpn_channels, head_channels, num_classes, num_groups, dtype=dtype, levels=levels
        )
    model = SemanticSegmenter(backbone, head.init_weights(seed))
    model.model_name = name
    return model.to(device=device) if device != "cpu" else model
