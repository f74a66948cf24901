"""Parameter groups by timm's weight-decay rule: no decay on biases, norm weights and named parameters."""

from __future__ import annotations

import fnmatch
from collections.abc import Collection
from typing import Any

from pvt_np.nn.module import Module, Parameter
from pvt_np.optim.base import _nonneg


def param_groups_weight_decay(
    model: Module, weight_decay: float = 1e-5, no_weight_decay: Collection[str] = ()
) -> list[dict[str, Any]]:
    """Split ``model``'s parameters by timm's rule into ``[no-decay group, decay group]``.

    A parameter goes to the first group (``weight_decay=0.0``) when it has at most one
    dimension (biases, LayerNorm weights), its name ends in ``.bias``, or its name matches
    one of ``no_weight_decay`` (exact names or fnmatch patterns such as ``'*.pos_embed'``);
    all others go to the second group (``weight_decay=weight_decay``). Both groups are
    always returned (either may be empty), in timm's order, keeping ``named_parameters``
    order within each group.
    """
    if not isinstance(model, Module):
        raise TypeError(f"param_groups_weight_decay: model: expected a pvt_np Module, got {type(model).__name__}")
    weight_decay = _nonneg(weight_decay, "weight_decay", "param_groups_weight_decay")
    if isinstance(no_weight_decay, str):
        no_weight_decay = (no_weight_decay,)
    patterns = tuple(no_weight_decay)
    decay: list[Parameter] = []
    no_decay: list[Parameter] = []
    for name, p in model.named_parameters():
        if p.data.ndim <= 1 or name.endswith(".bias") or any(fnmatch.fnmatchcase(name, pat) for pat in patterns):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]
