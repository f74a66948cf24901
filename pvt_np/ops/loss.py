"""Softmax cross-entropy."""

from __future__ import annotations

from typing import Any

import numpy as np

from pvt_np.backend import Array, get_array_module
from pvt_np.ops._validate import check_ndim, check_probability


def cross_entropy_forward(logits: Array, target: Array, label_smoothing: float = 0.0) -> tuple[Array, Any]:
    """Mean over the batch of -sum_k t_k log softmax(z)_k, as torch.nn.functional.cross_entropy.

    target: class indices (N,) or probabilities (N, K) (e.g. from mixup/cutmix).
    Indices must lie in [0, K); a NumPy index target is checked (a negative index
    would otherwise wrap around silently), a CuPy one is not (that needs a host sync).
    Label smoothing eps mixes the target with the uniform distribution:
    t = (1 - eps) * t + eps / K. Returns a 0-d array (no host sync on the GPU).
    """
    who = "cross_entropy"
    check_ndim(logits, 2, who, "(N, num_classes)", name="logits")
    eps = check_probability(label_smoothing, who, "label_smoothing")
    xp = get_array_module(logits)
    n, k = logits.shape
    if get_array_module(target) is np:  # host labels are range-checked here, at no device sync
        host = np.asarray(target)
        if host.ndim == 1 and host.dtype.kind in "iu" and host.size and (host.min() < 0 or host.max() >= k):
            raise ValueError(
                f"{who}: class indices must be in [0, {k - 1}] for {k} classes, "
                f"got values from {host.min()} to {host.max()}"
            )
    target = xp.asarray(target)
    if target.ndim == 1:
        if target.shape[0] != n:
            raise ValueError(f"{who}: expected target of shape ({n},), got {tuple(target.shape)}")
        if target.dtype.kind not in "iu":
            raise TypeError(f"{who}: class-index target must be integers, got {target.dtype}")
        probs_t = xp.zeros((n, k), dtype=logits.dtype)
        probs_t[xp.arange(n), target] = 1.0
    elif target.ndim == 2:
        if target.shape != logits.shape:
            raise ValueError(f"{who}: expected soft target of shape {tuple(logits.shape)}, got {tuple(target.shape)}")
        probs_t = target.astype(logits.dtype, copy=True)
    else:
        raise ValueError(f"{who}: target must be (N,) indices or (N, K) probabilities, got {tuple(target.shape)}")
    if eps > 0.0:
        probs_t *= 1.0 - eps
        probs_t += eps / k
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_z = xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
    log_p = shifted - log_z
    loss = -(probs_t * log_p).sum() / n
    return loss, (log_p, probs_t)


def cross_entropy_backward(dout: float | Array, cache: Any) -> Array:
    """dL/dz = (softmax(z) * sum_k t_k - t) / N, times dout (the gradient reaching the loss, 1.0 at the top).

    softmax(z) = exp(log_p) reuses the forward's log-probabilities. For a
    probability target sum_k t_k = 1 and this is the familiar softmax(z) - t.
    """
    log_p, probs_t = cache
    xp = get_array_module(log_p)
    grad = xp.exp(log_p)
    grad *= probs_t.sum(axis=1, keepdims=True)
    grad -= probs_t
    grad *= dout / log_p.shape[0]
    return grad
