"""Affine map over the last dimension."""

from __future__ import annotations

from typing import Any

import numpy as np

from pvt_np.backend import Array, get_array_module
from pvt_np.ops import parallel
from pvt_np.ops.checks import check_linear


def linear_forward(x: Array, weight: Array, bias: Array | None = None, *, who: str = "linear") -> tuple[Array, Any]:
    """y = x W^T + b over any leading dimensions.

    x: (..., in), W: (out, in), b: (out,) -> y: (..., out).
    All leading dimensions are flattened into one, so the product is a GEMM of
    shape (M, in) x (in, out) with M = prod(leading dims), run in row chunks of M on
    the worker threads (pvt_np.ops.parallel; one call on CuPy).
    """
    check_linear(x, weight, bias, who)
    xp = get_array_module(x, weight)
    x2 = x.reshape(-1, x.shape[-1])
    out_features = weight.shape[0]
    y = xp.empty((x2.shape[0], out_features), dtype=xp.result_type(x2, weight))
    w_t = weight.T

    def kernel(start: int, stop: int) -> None:
        xp.matmul(x2[start:stop], w_t, out=y[start:stop])
        if bias is not None:
            y[start:stop] += bias

    rows = parallel.gemm_rows(x2.shape[1] * out_features)
    parallel.for_each_chunk(x2.shape[0], 1, kernel, xp, rows_per_chunk=rows)
    return y.reshape(*x.shape[:-1], out_features), (x2, weight, bias is not None, x.shape)


def linear_backward(dout: Array, cache: Any) -> tuple[Array, Array, Array | None]:
    """Gradients of y = x W^T + b, with G = dL/dy flattened to (M, out):

    dx = G W            (M, in)
    dW = G^T x          (out, in)
    db = sum_m G[m]     (out,)
    Returns (dx, dW, db); db is None when there was no bias.
    On NumPy dx runs in row chunks of M, and dW and db in chunks of output features
    (rows of dW, each a full sum over M: no partial sums to add, the same bits with
    any thread count), all taken from one shared counter.
    """
    x2, weight, has_bias, x_shape = cache
    xp = get_array_module(dout, weight)
    out_features, in_features = weight.shape
    g = dout.reshape(-1, out_features)
    if xp is not np:
        return (g @ weight).reshape(x_shape), g.T @ x2, g.sum(axis=0) if has_bias else None
    m = g.shape[0]
    dtype = np.result_type(g, weight)
    dx = np.empty((m, in_features), dtype=dtype)
    dw = np.empty((out_features, in_features), dtype=dtype)
    db = np.empty(out_features, dtype=dtype) if has_bias else None
    ones = np.ones(m, dtype=g.dtype)

    def dx_task(start: int, stop: int) -> None:
        np.matmul(g[start:stop], weight, out=dx[start:stop])

    def dw_task(start: int, stop: int) -> None:
        np.matmul(g[:, start:stop].T, x2, out=dw[start:stop])
        if db is not None:
            np.matmul(ones, g[:, start:stop], out=db[start:stop])

    tasks = parallel.row_tasks(m, parallel.gemm_rows(out_features * in_features), dx_task)
    tasks += parallel.row_tasks(out_features, parallel.gemm_rows(m * in_features), dw_task)
    parallel.run_tasks(tasks)
    return dx.reshape(x_shape), dw, db
