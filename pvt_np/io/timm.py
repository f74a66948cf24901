"""The PyTorch twin of a pvt_np model: timm's pvt_v2 with the same config and weights.

Used by the benchmark's PyTorch side (``pvt-np bench``) and the
training-parity test to run the reference side by side. Needs torch and timm
(the ``test`` extra), imported only when a twin is made: the rest of pvt_np
runs without them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pvt_np import backend
from pvt_np.models.pvt_v2 import PyramidVisionTransformerV2


def require_timm() -> tuple[Any, Any]:
    """Import torch and timm, or explain which extra provides them."""
    try:
        import timm
        import torch
    except ImportError as err:
        raise ImportError(f"this needs torch and timm ({err.name} is missing): pip install 'pvt_np[test]'") from err
    return torch, timm


def timm_twin(model: PyramidVisionTransformerV2, copy_weights: bool = True) -> Any:
    """A timm PyramidVisionTransformerV2 with ``model``'s architecture (and weights).

    timm hard-codes the 7x7 stride-4 stem, so a different stem (the CIFAR
    config) is swapped in with timm's own OverlapPatchEmbed. The twin has
    ``model``'s dtype and is in ``model``'s train/eval mode.
    """
    torch, _ = require_timm()
    from timm.models import pvt_v2 as timm_pvt

    drop_rates = _drop_rates(model)
    twin = timm_pvt.PyramidVisionTransformerV2(
        in_chans=model.in_chans,
        num_classes=model.num_classes,
        depths=model.depths,
        embed_dims=model.embed_dims,
        num_heads=model.num_heads,
        sr_ratios=model.sr_ratios,
        mlp_ratios=model.mlp_ratios,
        qkv_bias=model.stages[0].blocks[0].attn.q.bias is not None,
        linear=model.linear,
        **drop_rates,
    )
    if model.linear and model.pool_size != 7:
        for stage in twin.stages:
            for blk in stage.blocks:
                blk.attn.pool = torch.nn.AdaptiveAvgPool2d(model.pool_size)
    if (model.patch_size, model.stride) != (7, 4):
        twin.patch_embed = timm_pvt.OverlapPatchEmbed(
            patch_size=model.patch_size, stride=model.stride, in_chans=model.in_chans, embed_dim=model.embed_dims[0]
        )
    twin = twin.to(torch.float64 if model.dtype == np.float64 else torch.float32)
    if copy_weights:
        state = {k: torch.from_numpy(backend.to_numpy(v)) for k, v in model.state_dict().items()}
        twin.load_state_dict(state, strict=True)
    return twin.train(model.training)


def _drop_rates(model: PyramidVisionTransformerV2) -> dict[str, float]:
    """The constructor's drop rates, read back from the built modules."""
    blocks = [blk for stage in model.stages for blk in stage.blocks]
    last = blocks[-1]
    return {
        "drop_rate": model.head_drop.p,
        "proj_drop_rate": last.attn.proj_drop.p,
        "attn_drop_rate": last.attn.attn_drop_p,
        "drop_path_rate": getattr(last.drop_path1, "p", 0.0),
    }
