"""torch.nn-shaped modules with hand-written backward passes."""

from pvt_np.nn.layers import (
    GELU,
    AdaptiveAvgPool2d,
    Conv2d,
    CrossEntropyLoss,
    Dropout,
    DropPath,
    GroupNorm,
    Identity,
    LayerNorm,
    Linear,
    ReLU,
    Softmax,
    Upsample,
    skip_init,
)
from pvt_np.nn.module import Module, ModuleList, Parameter, Sequential, is_grad_enabled, no_grad

__all__ = [
    "GELU",
    "AdaptiveAvgPool2d",
    "Conv2d",
    "CrossEntropyLoss",
    "DropPath",
    "Dropout",
    "GroupNorm",
    "Identity",
    "LayerNorm",
    "Linear",
    "Module",
    "ModuleList",
    "Parameter",
    "ReLU",
    "Sequential",
    "Softmax",
    "Upsample",
    "is_grad_enabled",
    "no_grad",
    "skip_init",
]
