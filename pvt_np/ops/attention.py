"""Multi-head scaled dot-product attention, N queries against M keys/values."""

from __future__ import annotations

from typing import Any, NamedTuple

from pvt_np.backend import Array, get_array_module, get_rng
from pvt_np.ops.activation import softmax
from pvt_np.ops.checks import check_attention
from pvt_np.ops.dropout import keep_mask


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
    *,
    who: str = "attention",
) -> tuple[Array, AttentionCache]:
    """out = dropout(softmax(q k^T * scale)) v, per batch and head.

    q: (B, heads, N, d), k and v: (B, heads, M, d) with M free (spatial reduction
    makes M < N); out: (B, heads, N, d). scale defaults to d**-0.5. With
    dropout_p > 0 the attention weights are zeroed with probability p and the
    rest scaled by 1/(1-p), as torch's scaled_dot_product_attention;
    the mask is drawn from ``rng`` (default: pvt_np's shared generator).
    """
    p = check_attention(q, k, v, dropout_p, who)
    xp = get_array_module(q, k, v)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    scores = q @ k.transpose(0, 1, 3, 2)
    scores *= scale
    probs = softmax(scores, axis=-1, in_place=True)  # (B, h, N, M); the scores are not needed again
    keep = None
    if p > 0.0:
        keep = keep_mask(get_rng(xp) if rng is None else rng, probs.shape, p, probs.dtype)
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
