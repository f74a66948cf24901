"""What the shapes of a foreign state_dict say about the architecture that made it."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from pvt_np.io.record import same, show
from pvt_np.models.registry import architecture, list_models


def stage_count(keys: Iterable[str]) -> int:
    stages = [int(m[1]) for k in keys if (m := re.match(r"^stages\.(\d+)\.", k))]
    return max(stages) + 1 if stages else 0


def infer_architecture(state_dict: Mapping[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """What the shapes of a timm-layout state_dict say: (the registered variant they match or None,
    the architecture fields they determine).

    Shapes fix depths, widths, MLP ratios, SRA kind and ratios, the stem, input channels, q/kv
    biases and the head; not the number of heads (q is dim x dim for any count), which comes from
    the variant when one matches.
    """
    shapes = {k: tuple(np.shape(v)) for k, v in state_dict.items()}
    info: dict[str, Any] = {}
    stem = shapes.get("patch_embed.proj.weight")
    if stem and len(stem) == 4:
        info["in_chans"], info["patch_size"] = stem[1], stem[2]
        info["stride"] = (stem[2] + 1) // 2  # PVT v2's overlapping stem: kernel 2S - 1
    head = shapes.get("head.weight")
    info["num_classes"] = head[0] if head and len(head) == 2 else 0
    n = stage_count(shapes)
    if not n:
        return None, info
    depths, dims, ratios, srs = [], [], [], []
    for i in range(n):
        blocks = {int(m[1]) for k in shapes if (m := re.match(rf"^stages\.{i}\.blocks\.(\d+)\.", k))}
        depths.append(len(blocks))
        norm = shapes.get(f"stages.{i}.norm.weight")
        fc1 = shapes.get(f"stages.{i}.blocks.0.mlp.fc1.weight")
        dims.append(norm[0] if norm else None)
        ratio = fc1[0] / norm[0] if norm and fc1 and norm[0] else None
        ratios.append(int(ratio) if ratio is not None and ratio.is_integer() else ratio)
        sr = shapes.get(f"stages.{i}.blocks.0.attn.sr.weight")
        srs.append(sr[2] if sr and len(sr) == 4 else 1)
    info.update(depths=depths, embed_dims=dims, mlp_ratios=ratios)
    # Linear SRA has a 1x1 sr conv in every stage; spatial-reduction SRA has a kernel R >= 2 conv
    # where R > 1 and none where R = 1.
    info["linear"] = any(k.endswith(".attn.sr.weight") for k in shapes) and all(s == 1 for s in srs)
    if not info["linear"]:
        info["sr_ratios"] = srs
    info["qkv_bias"] = "stages.0.blocks.0.attn.q.bias" in shapes
    for name in list_models():
        cfg = architecture(name)
        if all(same(cfg[k], info[k]) for k in ("depths", "embed_dims", "mlp_ratios", "linear")):
            return name, info
    return None, info


def architecture_differences(theirs: Mapping[str, Any], ours: Mapping[str, Any]) -> list[str]:
    return [
        f"{k} {show(theirs[k])} vs {show(ours[k])}"
        for k in ("depths", "embed_dims", "mlp_ratios", "linear", "sr_ratios", "patch_size", "stride",
                  "in_chans", "qkv_bias", "num_classes")
        if k in theirs and k in ours and not same(theirs[k], ours[k])
    ]  # fmt: skip
