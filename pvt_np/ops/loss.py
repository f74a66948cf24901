"""Softmax cross-entropy, per sample or per position (segmentation), with torch's ignore_index."""

from __future__ import annotations

from typing import Any

from pvt_np.backend import Array, get_array_module
from pvt_np.ops.checks import check_cross_entropy


def cross_entropy_forward(
    logits: Array,
    target: Array,
    label_smoothing: float = 0.0,
    ignore_index: int | None = None,
    *,
    layer: str = "cross_entropy",
) -> tuple[Array, Any]:
    """Mean over the counted rows of -sum_k t_k log softmax(z)_k, as torch.nn.functional.cross_entropy.

    logits (N, K), or (N, K, d1, ...) for one prediction per position: these are moved to rows (M, K),
    M = N * d1 * ..., the class axis last (one copy). target: class indices (N,) / (N, d1, ...) or
    probabilities of the logits' shape. A row whose index equals ``ignore_index`` gets t = 0 and is not
    counted (torch's reduction='mean'); with no such row the mean is over all M rows. Indices must lie in
    [0, K); a NumPy index target is checked (a negative index would otherwise wrap around silently), a
    CuPy one is not (that needs a host sync). Label smoothing eps mixes the target with the uniform
    distribution: t = (1 - eps) * t + eps / K. Returns a 0-d array (no host sync on the GPU): nan when
    every row is ignored, as torch.
    """
    eps = check_cross_entropy(logits, target, label_smoothing, ignore_index, layer)
    xp = get_array_module(logits)
    k = logits.shape[1]
    rows = logits if logits.ndim == 2 else xp.moveaxis(logits, 1, -1).reshape(-1, k)
    n = rows.shape[0]
    target = xp.asarray(target)
    count: Any = n
    if target.ndim == logits.ndim - 1:
        index = target.reshape(-1)
        kept = None if ignore_index is None else index != ignore_index
        probs_t = xp.zeros((n, k), dtype=logits.dtype)
        probs_t[xp.arange(n), index if kept is None else xp.where(kept, index, 0)] = 1.0
    else:
        kept = None
        probs_t = (target if logits.ndim == 2 else xp.moveaxis(target, 1, -1).reshape(-1, k)).astype(
            logits.dtype, copy=True
        )
    if eps > 0.0:
        probs_t *= 1.0 - eps
        probs_t += eps / k
    if kept is not None:
        probs_t *= kept[:, None]
        count = kept.sum().astype(logits.dtype)
    shifted = rows - rows.max(axis=1, keepdims=True)
    log_z = xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
    log_p = shifted - log_z
    total = -(probs_t * log_p).sum()
    # 0 / 0 -> nan written out: no warning, and no host sync to test count
    loss = total / n if kept is None else xp.where(count > 0, total / xp.maximum(count, 1), xp.nan)
    return loss.astype(logits.dtype, copy=False), (log_p, probs_t, count, logits.shape)


def cross_entropy_backward(dout: float | Array, cache: Any) -> Array:
    """dL/dz = (softmax(z) * sum_k t_k - t) / M', times dout (the gradient reaching the loss, 1.0 at the top),
    M' the number of counted rows; ignored rows have t = 0 and get 0 (every row, when all are ignored: torch's
    zero gradient under its nan loss).

    softmax(z) = exp(log_p) reuses the forward's log-probabilities. For a
    probability target sum_k t_k = 1 and this is the familiar softmax(z) - t.
    Rows go back to the logits' layout (N, K, d1, ...) as one contiguous array.
    """
    log_p, probs_t, count, shape = cache
    xp = get_array_module(log_p)
    grad = xp.exp(log_p)
    grad *= probs_t.sum(axis=1, keepdims=True)
    grad -= probs_t
    grad *= dout / (count if isinstance(count, int) else xp.maximum(count, 1))
    if len(shape) == 2:
        return grad
    return xp.ascontiguousarray(xp.moveaxis(grad.reshape(shape[0], *shape[2:], shape[1]), -1, 1))
