"""The PVT v2 model family."""

from pvt_np.models.pvt_v2 import (
    Attention,
    Block,
    MlpWithDepthwiseConv,
    OverlapPatchEmbed,
    PyramidVisionTransformerStage,
    PyramidVisionTransformerV2,
    pyramid_sizes,
)
from pvt_np.models.registry import CIFAR_OVERRIDES, MODEL_CONFIGS, create_model, list_models

__all__ = [
    "CIFAR_OVERRIDES",
    "MODEL_CONFIGS",
    "Attention",
    "Block",
    "MlpWithDepthwiseConv",
    "OverlapPatchEmbed",
    "PyramidVisionTransformerStage",
    "PyramidVisionTransformerV2",
    "create_model",
    "list_models",
    "pyramid_sizes",
]
