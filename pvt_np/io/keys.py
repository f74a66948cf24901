"""Key layouts: timm's pvt_v2 names (= pvt_np's) and the official whai362/PVT names, both ways.

Parameter names of :class:`~pvt_np.models.PyramidVisionTransformerV2` equal
timm's ``pvt_v2`` state_dict keys, so a timm checkpoint loads as is. The
official code names the same tensors differently (timm's
``checkpoint_filter_fn`` does the official -> timm renaming):

==========================  ======================================
official whai362/PVT        timm / pvt_np
==========================  ======================================
``patch_embed1.*``          ``patch_embed.*``
``patch_embed{i+1}.*``      ``stages.{i}.downsample.*`` (i >= 1)
``block{i+1}.{j}.*``        ``stages.{i}.blocks.{j}.*``
``norm{i+1}.*``             ``stages.{i}.norm.*``
``*.mlp.dwconv.dwconv.*``   ``*.mlp.dwconv.*``
``head.*``                  ``head.*``
==========================  ======================================
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any


def _sub_first(rules: Iterable[tuple[re.Pattern[str], Callable[[re.Match[str]], str]]], key: str) -> str:
    for pattern, repl in rules:
        new, n = pattern.subn(repl, key, count=1)
        if n:
            return new
    return key


_OFFICIAL_TO_TIMM = (
    (re.compile(r"^patch_embed1\."), lambda m: "patch_embed."),
    (re.compile(r"^patch_embed(\d+)\."), lambda m: f"stages.{int(m[1]) - 1}.downsample."),
    (re.compile(r"^block(\d+)\.(\d+)\."), lambda m: f"stages.{int(m[1]) - 1}.blocks.{m[2]}."),
    (re.compile(r"^norm(\d+)\."), lambda m: f"stages.{int(m[1]) - 1}.norm."),
)
_TIMM_TO_OFFICIAL = (
    (re.compile(r"^patch_embed\."), lambda m: "patch_embed1."),
    (re.compile(r"^stages\.(\d+)\.downsample\."), lambda m: f"patch_embed{int(m[1]) + 1}."),
    (re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\."), lambda m: f"block{int(m[1]) + 1}.{m[2]}."),
    (re.compile(r"^stages\.(\d+)\.norm\."), lambda m: f"norm{int(m[1]) + 1}."),
)
_OFFICIAL_KEY = re.compile(r"^(patch_embed\d+|block\d+\.\d+|norm\d+)\.")
_TIMM_KEY = re.compile(r"^(patch_embed|stages\.\d+)\.")


def official_key_to_timm(key: str) -> str:
    """One official whai362/PVT parameter name in timm's (= pvt_np's) naming."""
    key = _sub_first(_OFFICIAL_TO_TIMM, key)
    return key.replace(".mlp.dwconv.dwconv.", ".mlp.dwconv.")


def timm_key_to_official(key: str) -> str:
    """One timm / pvt_np parameter name in the official whai362/PVT naming (inverse of the above)."""
    new = _sub_first(_TIMM_TO_OFFICIAL, key)
    if new.startswith("block"):
        new = new.replace(".mlp.dwconv.", ".mlp.dwconv.dwconv.")
    return new


def official_to_timm(state_dict: Mapping[str, Any]) -> OrderedDict[str, Any]:
    """Rename an official whai362/PVT state_dict to timm's keys (values untouched, order kept).

    Gives the same result as timm's ``checkpoint_filter_fn`` on official checkpoints.
    """
    return OrderedDict((official_key_to_timm(k), v) for k, v in state_dict.items())


def timm_to_official(state_dict: Mapping[str, Any]) -> OrderedDict[str, Any]:
    """Rename a timm / pvt_np state_dict to the official whai362/PVT keys (values untouched, order kept)."""
    return OrderedDict((timm_key_to_official(k), v) for k, v in state_dict.items())


def detect_layout(keys: Iterable[str]) -> str:
    """'official' for whai362/PVT names (patch_embed1, block1.0, norm1, ...), else 'timm'.

    As timm does, any timm-style key (``patch_embed.``, ``stages.N.``) means timm.
    """
    keys = list(keys)
    if any(_TIMM_KEY.match(k) for k in keys):
        return "timm"
    if any(_OFFICIAL_KEY.match(k) for k in keys):
        return "official"
    return "timm"
