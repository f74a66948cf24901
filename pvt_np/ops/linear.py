"""Affine map over the last dimension."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from pvt_np.backend import Array, get_array_module
from pvt_np.ops import blas, cuda, parallel
from pvt_np.ops.checks import check_linear


def linear_forward(x: Array, weight: Array, bias: Array | None = None, *, layer: str = "linear") -> tuple[Array, Any]:
    """y = x W^T + b over any leading dimensions.

    x: (..., in), W: (out, in), b: (out,) -> y: (..., out).
    All leading dimensions are flattened into one, so the product is a GEMM of
    shape (M, in) x (in, out) with M = prod(leading dims), run as the blocks of
    :func:`gemm_blocks` on the worker threads (pvt_np.ops.parallel; one cuBLAS call on the GPU).
    """
    check_linear(x, weight, bias, layer)
    x2 = x.reshape(-1, x.shape[-1])
    forward = _forward_gpu if cuda.active(get_array_module(x, weight)) else _forward_cpu
    y = forward(x2, weight, bias)
    return y.reshape(*x.shape[:-1], weight.shape[0]), (x2, weight, bias is not None, x.shape)


def _forward_cpu(x2: np.ndarray, weight: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """y = x2 W^T + b as the blocks of :func:`gemm_blocks`, each one single-threaded GEMM, on the worker threads."""
    out_features = weight.shape[0]
    y = np.empty((x2.shape[0], out_features), dtype=np.result_type(x2, weight))

    def block(r0: int, r1: int, c0: int, c1: int) -> None:
        np.matmul(x2[r0:r1], weight[c0:c1].T, out=y[r0:r1, c0:c1])
        if bias is not None:
            y[r0:r1, c0:c1] += bias[c0:c1]

    blocks = gemm_blocks(x2.shape[0], x2.shape[1], out_features)
    parallel.run_tasks([functools.partial(block, *b) for b in blocks])
    return y


def _forward_gpu(x2: Array, weight: Array, bias: Array | None) -> Array:
    """y = x2 W^T + b: one cuBLAS call (:func:`pvt_np.ops.blas.matmul`), the bias added in place."""
    y = blas.matmul(x2, weight, trans_b=True)
    if bias is not None:
        y += bias
    return y


MIN_COLUMNS = 64  # output columns per block at the least: narrower GEMMs run far below their peak
MAX_BLOCKS = 8  # column blocks beyond this only add hand-offs at PVT v2's sizes


def gemm_blocks(m: int, k: int, n: int) -> list[tuple[int, int, int, int]]:
    """Blocks (r0, r1, c0, c1) of the output of an (m, k) x (k, n) GEMM, for the worker threads.

    Rows first, in equal chunks of about :func:`parallel.gemm_rows` rows. Where that leaves
    fewer chunks than the work is worth (one chunk per GEMM_CHUNK_MACS multiply-adds, at
    most MAX_BLOCKS), the columns are cut too, in blocks of at least MIN_COLUMNS: b2_li's
    last stage has M = 196 tokens, one row chunk, so its 512 -> 4096 layer ran on one thread.
    The cut follows the shapes alone, so the result is the same with any thread count.
    """
    row_chunks = max(1, -(-m // parallel.gemm_rows(k * n)))
    rows = max(1, -(-m // row_chunks))  # equal chunks: no short last one left for one thread alone
    wanted = min(MAX_BLOCKS, m * k * n // parallel.GEMM_CHUNK_MACS)
    col_blocks = max(1, min(-(-wanted // row_chunks), n // MIN_COLUMNS))
    cols = max(1, -(-n // col_blocks))
    return [(r0, min(m, r0 + rows), c0, min(n, c0 + cols)) for r0 in range(0, m, rows) for c0 in range(0, n, cols)]


def linear_backward(dout: Array, cache: Any) -> tuple[Array, Array, Array | None]:
    """Gradients of y = x W^T + b, with G = dL/dy flattened to (M, out):

    dx = G W            (M, in)
    dW = G^T x          (out, in)
    db = sum_m G[m]     (out,)
    Returns (dx, dW, db); db is None when there was no bias.
    On NumPy dx runs in row chunks of M and dW, db as :func:`weight_grad_tasks`,
    all taken from one shared counter (the weight-gradient tasks fill in where dx has
    few chunks, so dx keeps whole rows; column blocks as in the forward measured slower).
    On the GPU: three cuBLAS calls (:func:`pvt_np.ops.blas.matmul`, db by :func:`pvt_np.ops.blas.column_sums`).
    """
    x2, weight, has_bias, x_shape = cache
    g = dout.reshape(-1, weight.shape[0])
    backward = _backward_gpu if cuda.active(get_array_module(dout, weight)) else _backward_cpu
    dx, dw, db = backward(g, x2, weight, has_bias)
    return dx.reshape(x_shape), dw, db


def _backward_cpu(
    g: np.ndarray, x2: np.ndarray, weight: np.ndarray, has_bias: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(dx, dW, db): dx in row chunks, dW and db as :func:`weight_grad_tasks`, in one hand-off to the threads."""
    out_features, in_features = weight.shape
    m = g.shape[0]
    dx = np.empty((m, in_features), dtype=np.result_type(g, weight))

    def dx_task(start: int, stop: int) -> None:
        np.matmul(g[start:stop], weight, out=dx[start:stop])

    dw_tasks, finish = weight_grad_tasks(g, x2, has_bias)
    parallel.run_tasks(parallel.row_tasks(m, parallel.gemm_rows(out_features * in_features), dx_task) + dw_tasks)
    dw, db = finish()
    return dx, dw, db


def _backward_gpu(g: Array, x2: Array, weight: Array, has_bias: bool) -> tuple[Array, Array, Array | None]:
    """(dx, dW, db): two cuBLAS GEMMs and one GEMV."""
    return blas.matmul(g, weight), blas.matmul(g, x2, trans_a=True), blas.column_sums(g) if has_bias else None


PARTIAL_ELEMENTS = 1 << 21  # at most this many elements of weight-gradient partial sums (8 MB in float32)


def weight_grad_tasks(
    g: np.ndarray, x: np.ndarray, with_bias: bool
) -> tuple[list[Callable[[], None]], Callable[[], tuple[np.ndarray, np.ndarray | None]]]:
    """Tasks computing dW = G^T X (G: (M, out), X: (M, in)) and db = sum_m G[m], and a ``finish()`` returning them.

    The work is cut both ways: blocks of at least 32 output rows (a GEMM with fewer rows
    runs far below its peak), and where that leaves too few tasks, P blocks of the M rows
    whose partial products are added in block order at the end (P bounded so that the
    partials stay within PARTIAL_ELEMENTS). The cut follows the shapes alone, so the sum
    is the same with any thread count.
    """
    m, out_features = g.shape
    in_features = x.shape[1]
    dtype = np.result_type(g, x)
    wanted = max(1, min(16, m * out_features * in_features // parallel.GEMM_CHUNK_MACS))
    # Blocks of tokens first: each task then reads its rows of G and X once, contiguously. Output-row
    # blocks re-read all of X per block through a strided slice of G (at b2_li's 12,544 x 64 -> 512
    # the backward took 18 ms that way, against 13.6 ms for one two-thread BLAS call).
    by_tokens = min(wanted, PARTIAL_ELEMENTS // (out_features * in_features), m // 256)
    out_rows = out_features if by_tokens >= 2 else max(32, -(-out_features // wanted))
    col_blocks = -(-out_features // out_rows)
    blocks = max(1, min(wanted // col_blocks, PARTIAL_ELEMENTS // (out_features * in_features), m // 256))
    m_rows = -(-m // blocks)
    blocks = -(-m // m_rows)
    dw = np.empty((blocks, out_features, in_features), dtype=dtype)
    db = np.empty((blocks, out_features), dtype=dtype) if with_bias else None
    ones = np.ones(m_rows, dtype=g.dtype)

    def task(i: int, o0: int, o1: int) -> None:
        rows = slice(i * m_rows, min(m, (i + 1) * m_rows))
        gb = g[rows, o0:o1]
        np.matmul(gb.T, x[rows], out=dw[i, o0:o1])
        if db is not None:
            np.matmul(ones[: gb.shape[0]], gb, out=db[i, o0:o1])

    tasks: list[Callable[[], None]] = [
        functools.partial(task, i, o0, min(o0 + out_rows, out_features))
        for i in range(blocks)
        for o0 in range(0, out_features, out_rows)
    ]

    def finish() -> tuple[np.ndarray, np.ndarray | None]:
        if blocks == 1:
            return dw[0], None if db is None else db[0]
        return dw.sum(axis=0), None if db is None else db.sum(axis=0)

    return tasks, finish
