"""Multi-head scaled dot-product attention, N queries against M keys/values."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from pvt_np.backend import Array, get_array_module, get_rng
from pvt_np.ops import blas, cuda, parallel
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


def _batch_rows(q: Array, m: int) -> int:
    """Batch entries per chunk: each costs heads * N * M * d multiply-adds in each of the two products."""
    _, h, n, d = q.shape
    return max(1, -(-parallel.GEMM_CHUNK_MACS // max(1, 2 * h * n * m * d)))


def attention_forward(
    q: Array,
    k: Array,
    v: Array,
    scale: float | None = None,
    dropout_p: float = 0.0,
    rng: Any = None,
    *,
    layer: str = "attention",
) -> tuple[Array, AttentionCache]:
    """out = dropout(softmax(q k^T * scale)) v, per batch and head.

    q: (B, heads, N, d), k and v: (B, heads, M, d) with M free (spatial reduction
    makes M < N); out: (B, heads, N, d). scale defaults to d**-0.5. With
    dropout_p > 0 the attention weights are zeroed with probability p and the
    rest scaled by 1/(1-p), as torch's scaled_dot_product_attention;
    the mask is drawn from ``rng`` (default: pvt_np's shared generator), whole,
    before the work is split. On NumPy the batch is split into chunks run on the
    worker threads, each chunk's two products, softmax and dropout in one go; on the
    GPU the scale and softmax are one kernel (:func:`pvt_np.ops.cuda.softmax_rows`), and
    each product is one strided-batched cuBLAS call into its output
    (:func:`pvt_np.ops.blas.matmul`).
    """
    p = check_attention(q, k, v, dropout_p, layer)
    xp = get_array_module(q, k, v)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    b, h, n, _ = q.shape
    m = k.shape[2]
    dtype = xp.result_type(q, k, v)
    keep = keep_mask(get_rng(xp) if rng is None else rng, (b, h, n, m), p, dtype) if p > 0.0 else None
    forward = _forward_gpu if cuda.active(xp) else _forward_cpu
    return forward(q, k, v, scale, keep, dtype)


def _forward_cpu(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float, keep: np.ndarray | None, dtype: Any
) -> tuple[np.ndarray, AttentionCache]:
    """Chunks of the batch on the worker threads; the softmax in place on each chunk's scores."""
    b, h, n, _ = q.shape
    m = k.shape[2]
    probs = np.empty((b, h, n, m), dtype=dtype)
    out = np.empty((b, h, n, v.shape[3]), dtype=dtype)

    def kernel(start: int, stop: int) -> None:
        scores = probs[start:stop]
        np.matmul(q[start:stop], k[start:stop].swapaxes(-1, -2), out=scores)
        scores *= scale
        softmax(scores, axis=-1, in_place=True)  # the scores are not needed again
        dropped = scores if keep is None else scores * keep[start:stop]
        np.matmul(dropped, v[start:stop], out=out[start:stop])

    parallel.for_each_chunk(b, 1, kernel, rows_per_chunk=_batch_rows(q, m))
    return out, AttentionCache(q, k, v, probs, keep, scale)


def _forward_gpu(
    q: Array, k: Array, v: Array, scale: float, keep: Array | None, dtype: Any
) -> tuple[Array, AttentionCache]:
    """The whole batch: two strided-batched cuBLAS calls and one softmax kernel."""
    xp = get_array_module(q, k, v)
    # Head-major copies made once and kept for the backward. The heads come in as strided views of
    # the (B, N, heads * d) projections, and each batched product would copy its operands again
    # (five products read q, k or v, each a launch and a pass over memory).
    q, k, v = xp.ascontiguousarray(q), xp.ascontiguousarray(k), xp.ascontiguousarray(v)
    b, h, n, _ = q.shape
    probs = xp.empty((b, h, n, k.shape[2]), dtype=dtype)
    out = xp.empty((b, h, n, v.shape[3]), dtype=dtype)
    blas.matmul(q, k, trans_b=True, out=probs)
    cuda.softmax_rows(probs, scale)  # scale and softmax in one kernel, in place
    blas.matmul(probs if keep is None else probs * keep, v, out=out)
    return out, AttentionCache(q, k, v, probs, keep, scale)


def attention_backward(dout: Array, cache: AttentionCache) -> tuple[Array, Array, Array]:
    """With P = softmax(S), S = q k^T * scale, P' = P * keep, out = P' v and G = dL/dout:

    dv = P'^T G
    dP = (G v^T) * keep                      (through the dropout mask)
    dS = P * (dP - rowsum(dP * P))           (softmax backward, fused in place)
    dq = dS k * scale,   dk = dS^T q * scale
    Returns (dq, dk, dv). On NumPy the batch runs in chunks on the worker threads; on the GPU
    dS is one kernel (:func:`pvt_np.ops.cuda.softmax_rows_backward`).
    """
    backward = _backward_gpu if cuda.active(get_array_module(dout, cache.probs)) else _backward_cpu
    return backward(dout, cache)


def _backward_cpu(dout: np.ndarray, cache: AttentionCache) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Chunks of the batch on the worker threads; dS computed in place on each chunk's dP."""
    q, k, v, probs, keep, scale = cache
    dq, dk, dv = np.empty(q.shape, probs.dtype), np.empty(k.shape, probs.dtype), np.empty(v.shape, probs.dtype)

    def kernel(start: int, stop: int) -> None:
        pc, g = probs[start:stop], dout[start:stop]
        kc = None if keep is None else keep[start:stop]
        dropped = pc if kc is None else pc * kc
        np.matmul(dropped.swapaxes(-1, -2), g, out=dv[start:stop])
        ds = np.matmul(g, v[start:stop].swapaxes(-1, -2))
        if kc is not None:
            ds *= kc
        row = (ds * pc).sum(axis=-1, keepdims=True)
        ds -= row
        ds *= pc
        ds *= scale
        np.matmul(ds, k[start:stop], out=dq[start:stop])
        np.matmul(ds.swapaxes(-1, -2), q[start:stop], out=dk[start:stop])

    parallel.for_each_chunk(q.shape[0], 1, kernel, rows_per_chunk=_batch_rows(q, k.shape[2]))
    return dq, dk, dv


def _backward_gpu(dout: Array, cache: AttentionCache) -> tuple[Array, Array, Array]:
    """The whole batch: four strided-batched cuBLAS calls into their outputs, one more for dP, one dS kernel."""
    q, k, v, probs, keep, scale = cache
    xp = get_array_module(dout, probs)
    dout = xp.ascontiguousarray(dout)  # read by two batched products: copied once here, not once by each
    dq, dk, dv = xp.empty(q.shape, probs.dtype), xp.empty(k.shape, probs.dtype), xp.empty(v.shape, probs.dtype)
    blas.matmul(probs if keep is None else probs * keep, dout, trans_a=True, out=dv)
    ds = blas.matmul(dout, v, trans_b=True)
    if keep is not None:
        ds *= keep
    cuda.softmax_rows_backward(ds, probs, scale)  # dS = P * (dP - rowsum(dP * P)) * scale, in place
    blas.matmul(ds, k, out=dq)
    blas.matmul(ds, q, trans_a=True, out=dk)
    return dq, dk, dv
