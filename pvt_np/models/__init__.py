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
from pvt_np.models.registry import (
    ARCH_FIELDS,
    CIFAR_OVERRIDES,
    MODEL_CONFIGS,
    ModelMeta,
    architecture,
    create_model,
    list_models,
    model_meta,
)

__all__ = [
    "ARCH_FIELDS",
    "CIFAR_OVERRIDES",
    "MODEL_CONFIGS",
    "Attention",
    "Block",
    "MlpWithDepthwiseConv",
    "ModelMeta",
    "OverlapPatchEmbed",
    "PyramidVisionTransformerStage",
    "PyramidVisionTransformerV2",
    "architecture",
    "create_model",
    "list_models",
    "model_meta",
    "pyramid_sizes",
]
