"""The PVT v2 model family and the Semantic FPN segmenter built on it."""

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
    create_segmenter,
    list_models,
    model_meta,
)
from pvt_np.models.semantic_fpn import ConvModule, SemanticFPNHead, SemanticSegmenter

__all__ = [
    "ARCH_FIELDS",
    "CIFAR_OVERRIDES",
    "MODEL_CONFIGS",
    "Attention",
    "Block",
    "ConvModule",
    "MlpWithDepthwiseConv",
    "ModelMeta",
    "OverlapPatchEmbed",
    "PyramidVisionTransformerStage",
    "PyramidVisionTransformerV2",
    "SemanticFPNHead",
    "SemanticSegmenter",
    "architecture",
    "create_model",
    "create_segmenter",
    "list_models",
    "model_meta",
    "pyramid_sizes",
]
