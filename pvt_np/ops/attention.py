"""Multi-head scaled dot-product attention, N queries against M keys/values."""

from __future__ import annotations

from typing import Any, NamedTuple

from pvt_np.backend import Array, get_array_module, get_rng
from pvt_np.ops._validate import check_ndim, check_probability


class AttentionCache(NamedTuple):
    """What attention_backward needs: the inputs, the softmax probabilities, the dropout mask."""

    q: Array
    k: Array
    v: Array
    probs: Array
    keep: Array | None
    scale: float


def attention_forward(
    q: Array,
    k: Array,
    v: Array,
    scale: float | None = None,
    dropout_p: float = 0.0,
    rng: Any = None,
) -> tuple[Array, AttentionCache]:
    """out = dropout(softmax(q k^T * scale)) v, per batch and head.

    q: (B, heads, N, d), k and v: (B, heads, M, d) with M free (spatial reduction
    makes M < N); out: (B, heads, N, d). scale defaults to d**-0.5. With
    dropout_p > 0 the attention weights are zeroed with probability p and the
    rest scaled by 1/(1-p), as torch's scaled_dot_product_attention;
    the mask is drawn from ``rng`` (default: pvt_np's shared generator).
    """
    who = "attention"
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_ndim(t, 4, who, "(B, heads, tokens, head_dim)", name=name)
    if k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(
            f"{who}: expected q (B, h, N, d) and k, v (B, h, M, d), "
            f"got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"{who}: q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    p = check_probability(dropout_p, who, "dropout_p")
    xp = get_array_module(q, k, v)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    scores = q @ k.transpose(0, 1, 3, 2)
    scores *= scale
    scores -= scores.max(axis=-1, keepdims=True)
    xp.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)
    probs = scores  # softmax done in place: (B, h, N, M)
    keep = None
    if p > 0.0:
        rng = get_rng(xp) if rng is None else rng
        keep = (rng.random(probs.shape, dtype=probs.dtype) >= p).astype(probs.dtype)
        keep *= 1.0 / (1.0 - p) if p < 1.0 else 0.0
        dropped = probs * keep
    else:
        dropped = probs
    out = dropped @ v
    return out, AttentionCache(q, k, v, probs, keep, scale)


def attention_backward(dout: Array, cache: AttentionCache) -> tuple[Array, Array, Array]:
    """With P = softmax(S), S = q k^T * scale, P' = P * keep, out = P' v and G = dL/dout:

    dv = P'^T G
    dP = (G v^T) * keep                      (through the dropout mask)
    dS = P * (dP - rowsum(dP * P))           (softmax backward, fused in place)
    dq = dS k * scale,   dk = dS^T q * scale
    Returns (dq, dk, dv).
    """
    q, k, v, probs, keep, scale = cache
    dropped = probs if keep is None else probs * keep
    dv = dropped.transpose(0, 1, 3, 2) @ dout
    ds = dout @ v.transpose(0, 1, 3, 2)
    if keep is not None:
        ds *= keep
    row = (ds * probs).sum(axis=-1, keepdims=True)
    ds -= row
    ds *= probs
    ds *= scale
    dq = ds @ k
    dk = ds.transpose(0, 1, 3, 2) @ q
    return dq, dk, dv
