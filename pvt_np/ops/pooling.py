"""Adaptive average pooling (torch's windows) and global average pooling."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from pvt_np.backend import Array, get_array_module
from pvt_np.ops import blas
from pvt_np.ops.checks import check_adaptive_avg_pool2d, check_array, check_token_mean


def adaptive_pool_matrix(xp: Any, in_size: int, out_size: int, dtype: Any) -> Array:
    """(out_size, in_size) averaging matrix of torch's adaptive windows, on ``xp``'s device.

    Row i averages inputs start_i <= h < end_i with start_i = floor(i*H/P) and
    end_i = ceil((i+1)*H/P); windows overlap when H is not divisible by P.
    Built once per (in_size, out_size, dtype) on the host and, on a GPU, copied
    once per device: the result is shared, never write to it (the NumPy one is
    read-only).
    """
    host = _host_pool_matrix(int(in_size), int(out_size), np.dtype(dtype).str)
    if xp is np:
        return host
    return _device_pool_matrix(xp, int(in_size), int(out_size), np.dtype(dtype).str, xp.cuda.Device().id)


@functools.lru_cache(maxsize=128)
def _host_pool_matrix(in_size: int, out_size: int, dtype: str) -> np.ndarray:
    i = np.arange(out_size)
    start = (i * in_size) // out_size
    end = -((-(i + 1) * in_size) // out_size)
    h = np.arange(in_size)
    inside = (h >= start[:, None]) & (h < end[:, None])
    a = np.where(inside, 1.0 / (end - start)[:, None], 0.0).astype(dtype)
    a.setflags(write=False)
    return a


@functools.lru_cache(maxsize=128)
def _device_pool_matrix(xp: Any, in_size: int, out_size: int, dtype: str, device_id: int) -> Array:
    """One host-to-device copy per (shape, dtype, device); ``device_id`` keys the cache (arrays live on one GPU)."""
    return xp.asarray(_host_pool_matrix(in_size, out_size, dtype))


def adaptive_avg_pool2d_forward(
    x: Array, output_size: int | tuple[int, int], channels_last: bool = False, *, layer: str = "adaptive_avg_pool2d"
) -> tuple[Array, Any]:
    """out[i, j] = mean of x over the window rows(i) x cols(j), per sample and channel.

    A rectangle's mean is the product of a row mean and a column mean, so the
    pooling is separable: out = A_h x A_w^T with the averaging matrices A of
    :func:`adaptive_pool_matrix` -- two small GEMM-shaped contractions (on the GPU each
    one strided-batched cuBLAS call with the averaging matrix shared, :func:`pvt_np.ops.blas.matmul`).
    """
    ph, pw = check_adaptive_avg_pool2d(x, output_size, channels_last, layer)
    xp = get_array_module(x)
    h, w = (x.shape[1], x.shape[2]) if channels_last else (x.shape[2], x.shape[3])
    a_h = adaptive_pool_matrix(xp, h, ph, x.dtype)
    a_w = adaptive_pool_matrix(xp, w, pw, x.dtype)
    # Two matmuls, each broadcasting a small averaging matrix over a stack of small GEMMs; W first,
    # so the second one's rows are only Pw*C long. einsum(optimize=True) over the three operands
    # was 3-6x slower at b2_li's sizes, and H first 60x slower there (NumPy's stacked matmul with
    # 3,584-long rows took a slow path).
    if channels_last:
        n, _, _, c = x.shape
        cols = blas.matmul(a_w, x.reshape(n * h, w, c))  # pool over W: (N*H, Pw, C)
        out = blas.matmul(a_h, cols.reshape(n, h, pw * c)).reshape(n, ph, pw, c)  # then over H
    else:
        out = blas.matmul(blas.matmul(a_h, x), a_w, trans_b=True)  # (Ph, H) @ (N, C, H, W) @ (W, Pw)
    return out, (a_h, a_w, channels_last)


def adaptive_avg_pool2d_backward(dout: Array, cache: Any) -> Array:
    """dx = A_h^T G A_w: each output's gradient is spread evenly over its window
    (and summed where windows overlap)."""
    a_h, a_w, channels_last = cache
    (ph, h), (pw, w) = a_h.shape, a_w.shape
    if channels_last:
        n, _, _, c = dout.shape
        rows = blas.matmul(a_h, dout.reshape(n, ph, pw * c), trans_a=True)  # spread over H first (short rows)
        return blas.matmul(a_w, rows.reshape(n * h, pw, c), trans_a=True).reshape(n, h, w, c)  # then over W
    return blas.matmul(blas.matmul(a_h, dout, trans_a=True), a_w)


def token_mean_forward(x: Array, *, layer: str = "token_mean") -> tuple[Array, Any]:
    """Global average pool of tokens: (B, N, C) -> (B, C), y = mean over the N tokens."""
    check_token_mean(x, layer)
    return x.mean(axis=1), x.shape


def token_mean_backward(dout: Array, cache: Any) -> Array:
    """dx[b, t, c] = dout[b, c] / N for every token t."""
    xp = get_array_module(dout)
    b, n, c = cache
    return xp.broadcast_to((dout / n)[:, None, :], (b, n, c)).copy()


def tokens_to_nhwc(x: Array, feat_size: tuple[int, int]) -> Array:
    """(B, H*W, C) tokens as an (B, H, W, C) map: a reshape, no copy."""
    check_array(x, "tokens_to_nhwc")
    b, n, c = x.shape
    h, w = feat_size
    if n != h * w:
        raise ValueError(f"tokens_to_nhwc: {n} tokens do not form a {h}x{w} map")
    return x.reshape(b, h, w, c)


def nhwc_to_tokens(x: Array) -> Array:
    """(B, H, W, C) -> (B, H*W, C), row-major tokens as timm's flatten(2).transpose(1, 2)."""
    b, h, w, c = x.shape
    return x.reshape(b, h * w, c)
