"""Softmax cross-entropy."""

from __future__ import annotations

from typing import Any

from pvt_np.backend import Array, get_array_module
from pvt_np.ops.checks import check_cross_entropy


def cross_entropy_forward(
    logits: Array, target: Array, label_smoothing: float = 0.0, *, layer: str = "cross_entropy"
) -> tuple[Array, Any]:
    """Mean over the batch of -sum_k t_k log softmax(z)_k, as torch.nn.functional.cross_entropy.

    target: class indices (N,) or probabilities (N, K) (e.g. from mixup/cutmix).
    Indices must lie in [0, K); a NumPy index target is checked (a negative index
    would otherwise wrap around silently), a CuPy one is not (that needs a host sync).
    Label smoothing eps mixes the target with the uniform distribution:
    t = (1 - eps) * t + eps / K. Returns a 0-d array (no host sync on the GPU).
    """
    eps = check_cross_entropy(logits, target, label_smoothing, layer)
    xp = get_array_module(logits)
    n, k = logits.shape
    target = xp.asarray(target)
    if target.ndim == 1:
        probs_t = xp.zeros((n, k), dtype=logits.dtype)
        probs_t[xp.arange(n), target] = 1.0
    else:
        probs_t = target.astype(logits.dtype, copy=True)
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
