"""Named PVT v2 variants (the official hyperparameters) and ``create_model``."""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np

from pvt_np import backend
from pvt_np.models.pvt_v2 import PyramidVisionTransformerV2

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

_ALLOWED_OVERRIDES = sorted(
    set(inspect.signature(PyramidVisionTransformerV2.__init__).parameters) - {"self", "num_classes", "dtype"}
)


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    return sorted(MODEL_CONFIGS)


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
    """
    if name not in MODEL_CONFIGS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    unknown = sorted(set(overrides) - set(_ALLOWED_OVERRIDES))
    if unknown:
        raise ValueError(f"create_model: unknown override(s) {unknown}; allowed: {', '.join(_ALLOWED_OVERRIDES)}")
    dtype = backend.check_float_dtype(dtype)
    backend.check_device(device)
    kwargs = {**MODEL_CONFIGS[name], **(CIFAR_OVERRIDES if cifar else {}), **overrides}
    model = PyramidVisionTransformerV2(
        num_classes=num_classes, drop_rate=drop_rate, drop_path_rate=drop_path_rate, dtype=dtype, **kwargs
    )
    model.init_weights(seed)
    model.model_name = name
    return model.to(device=device) if device != "cpu" else model
