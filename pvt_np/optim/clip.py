"""Gradient clipping by the joint L2 norm of every gradient, as ``torch.nn.utils.clip_grad_norm_``."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from pvt_np import backend
from pvt_np.backend import Array
from pvt_np.nn.module import Parameter
from pvt_np.optim.base import _is_real


def clip_grad_norm_(parameters: Parameter | Iterable[Parameter], max_norm: float) -> Array:
    """Scale all gradients together so that their joint L2 norm is at most ``max_norm``; torch's semantics.

    ``total = sqrt(sum_i ||g_i||_2 ** 2)`` over every parameter whose grad is not None (in the
    gradients' dtype, on their device), then every gradient is multiplied in place by
    ``min(max_norm / (total + 1e-6), 1)``. The norm and the coefficient stay 0-d device
    arrays (no host/GPU synchronisation, no branch on the value), so gradients are always
    multiplied, by exactly 1 when no clipping is needed. Returns ``total`` (before
    clipping) as a 0-d array; with no gradients, a float32 zero.
    """
    if isinstance(parameters, Parameter):
        parameters = [parameters]
    if not _is_real(max_norm) or math.isnan(max_norm) or max_norm < 0:
        raise ValueError(f"clip_grad_norm_: max_norm: expected a number >= 0 (inf allowed), got {max_norm!r}")
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return np.zeros((), dtype=np.float32)
    xp = backend.get_array_module(grads[0])
    if xp is np:
        norms = [xp.linalg.norm(g.reshape(-1)) for g in grads]
        total = xp.asarray(xp.linalg.norm(xp.stack(norms)))
    else:  # one cuBLAS dot per gradient instead of norm's several launches
        total = xp.sqrt(xp.stack([xp.vdot(g.reshape(-1), g.reshape(-1)) for g in grads]).sum())
    coef = xp.minimum(float(max_norm) / (total + 1e-6), 1.0)
    for g in grads:
        g *= coef
    return total
