"""Layer normalisation over the last dimension."""

from __future__ import annotations

from typing import Any

import numpy as np

from pvt_np.backend import Array, get_array_module
from pvt_np.ops import blas, cuda, parallel
from pvt_np.ops.checks import check_layer_norm


def layer_norm_forward(
    x: Array, weight: Array, bias: Array, eps: float = 1e-5, *, layer: str = "layer_norm"
) -> tuple[Array, Any]:
    """y = (x - mean) / sqrt(var + eps) * weight + bias, statistics over the last dim (size C).

    var is the biased variance (mean of squared deviations), as torch.
    The cache keeps xhat = (x - mean) * rstd and rstd = 1 / sqrt(var + eps).
    Row means are matrix-vector products with a 1/C vector (BLAS), which beat
    NumPy's per-row reductions when rows are short (C = 32 at PVT v2's first stage);
    on NumPy the rows run in cache-sized chunks on the worker threads. CuPy: one
    CUDA kernel, one warp of 32 threads per row (pvt_np.ops.cuda).
    """
    check_layer_norm(x, weight, bias, layer)
    forward = _forward_gpu if cuda.active(get_array_module(x)) else _forward_cpu
    y, xhat, rstd = forward(x.reshape(-1, weight.shape[0]), weight, bias, eps)
    return y.reshape(x.shape), (xhat, rstd, weight)


def _forward_cpu(
    x2: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(y, xhat, rstd) of the rows of x2 (M, C), in cache-sized chunks of rows on the worker threads."""
    c = weight.shape[0]
    inv_c = np.full(c, 1.0 / c, dtype=x2.dtype)
    xhat = np.empty_like(x2)
    y = np.empty_like(x2)
    rstd = np.empty((x2.shape[0], 1), dtype=x2.dtype)

    def kernel(start: int, stop: int) -> None:
        xh, yc = xhat[start:stop], y[start:stop]
        np.subtract(x2[start:stop], (x2[start:stop] @ inv_c)[:, None], out=xh)
        np.multiply(xh, xh, out=yc)
        r = rstd[start:stop]
        r[:, 0] = yc @ inv_c
        r += eps
        np.sqrt(r, out=r)
        np.divide(1.0, r, out=r)
        xh *= r
        np.multiply(xh, weight, out=yc)
        yc += bias

    parallel.for_each_chunk(x2.shape[0], c, kernel)
    return y, xhat, rstd


def _forward_gpu(x2: Array, weight: Array, bias: Array, eps: float) -> tuple[Array, Array, Array]:
    """(y, xhat, rstd) of the rows of x2 (M, C): one CUDA kernel, one warp per row."""
    return cuda.layer_norm_forward(x2, weight, bias, eps)


def layer_norm_backward(dout: Array, cache: Any) -> tuple[Array, Array, Array]:
    """With G = dL/dy and g = G * weight (the gradient reaching xhat):

    dweight = sum over rows of G * xhat,   dbias = sum over rows of G
    dx      = rstd * (g - mean(g) - xhat * mean(g * xhat))      (means over the last dim)
    The two mean terms are the gradient flowing through the mean and the variance.
    With P = G * xhat, mean(g) = G @ weight / C and mean(g * xhat) = P @ weight / C,
    so all four reductions are matrix-vector products on arrays already at hand.
    On NumPy the rows run in cache-sized chunks on the worker threads; dweight and
    dbias are per-chunk partial sums added in chunk order (the chunks follow the
    shape alone, so the sum is the same with any thread count). CuPy: one CUDA kernel
    for dx (one warp per row), and dweight, dbias in one product with a ones vector.
    Returns (dx, dweight, dbias).
    """
    xhat, rstd, weight = cache
    backward = _backward_gpu if cuda.active(get_array_module(xhat)) else _backward_cpu
    dx, dweight, dbias = backward(dout.reshape(-1, weight.shape[0]), xhat, rstd, weight)
    return dx.reshape(dout.shape), dweight, dbias


def _backward_cpu(
    g2: np.ndarray, xhat: np.ndarray, rstd: np.ndarray, weight: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dx, dweight, dbias) in cache-sized chunks of rows on the worker threads, the parameter
    gradients as per-chunk partial sums added in chunk order."""
    c = weight.shape[0]
    w_over_c = weight / c
    m = g2.shape[0]
    rows = parallel.chunk_rows(c)
    partial = np.empty((2, -(-m // rows), c), dtype=g2.dtype)  # [dweight, dbias] per chunk
    dx = np.empty_like(g2)

    def kernel(start: int, stop: int) -> None:
        gc, xh, dxc = g2[start:stop], xhat[start:stop], dx[start:stop]
        ones = np.ones(stop - start, dtype=g2.dtype)
        p = gc * xh
        partial[0, start // rows] = ones @ p
        partial[1, start // rows] = ones @ gc
        mean_g = (gc @ w_over_c)[:, None]
        mean_gx = (p @ w_over_c)[:, None]
        np.multiply(xh, mean_gx, out=p)
        p += mean_g
        np.multiply(gc, weight, out=dxc)
        dxc -= p
        dxc *= rstd[start:stop]

    parallel.for_each_chunk(m, c, kernel)  # chunks of chunk_rows(c) = rows rows
    dweight, dbias = partial.sum(axis=1)
    return dx, dweight, dbias


def _backward_gpu(g2: Array, xhat: Array, rstd: Array, weight: Array) -> tuple[Array, Array, Array]:
    """(dx, dweight, dbias): one CUDA kernel for dx and the rows [G * xhat, G], whose column sums
    (one cuBLAS GEMV) are [dweight, dbias]."""
    c = weight.shape[0]
    dx, sums = cuda.layer_norm_backward(g2, xhat, rstd, weight)
    dweight_dbias = blas.column_sums(sums)
    return dx, dweight_dbias[:c], dweight_dbias[c:]
