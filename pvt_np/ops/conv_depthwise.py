"""The depthwise conv (groups == in_channels == out_channels), on the CPU and on the GPU.

Each channel has its own kh x kw kernel, held here as taps (kh, kw, C): one contiguous row of
C values per tap, as the NHWC input has one per pixel. With xpad the input zero-padded by
(ph, pw) and G = dL/dout:

    out[n,i,j,c] = b[c] + sum_pq xpad[n, i*sh+p, j*sw+q, c] * taps[p,q,c]
    dtaps[p,q,c] = sum_{n,i,j} G[n,i,j,c] * xpad[n, i*sh+p, j*sw+q, c]
    db[c]        = sum_{n,i,j} G[n,i,j,c]
    dxpad[n, i*sh+p, j*sw+q, c] += G[n,i,j,c] * taps[p,q,c]   (every i, j, p, q)

There is nothing to share across channels, so no GEMM: the CPU form (``*_cpu``) contracts a
strided view of the windows with one einsum per chunk of images, on the worker threads; the GPU
form (``*_gpu``) is three CUDA kernels (:mod:`pvt_np.ops.cuda`), since CuPy's einsum would first
copy the overlapping window view. :func:`pvt_np.ops.conv.conv2d_forward` chooses between them.
"""

from __future__ import annotations

import numpy as np

from pvt_np.backend import Array, get_array_module
from pvt_np.ops import blas, cuda, parallel
from pvt_np.ops.conv_windows import Geometry, pad_into_scratch, row_windows, tap, windows


def taps_of(weight: Array) -> Array:
    """Depthwise weight (C, 1, kh, kw) as taps (kh, kw, C): one contiguous channel row per tap."""
    return weight[:, 0].transpose(1, 2, 0).copy()


def _weight_of(dtaps: Array) -> Array:
    """Taps' gradient (kh, kw, C) back to torch's (C, 1, kh, kw)."""
    return get_array_module(dtaps).ascontiguousarray(dtaps.transpose(2, 0, 1)[:, None])


def _contract_cpu(x: np.ndarray, taps: np.ndarray, bias: np.ndarray | None, geo: Geometry) -> np.ndarray:
    """out[n,i,j,c] = bias[c] + sum_pq xpad[n, i*sh+p, j*sw+q, c] * taps[p,q,c], chunked over images,
    with xpad = x zero-padded by (ph, pw).

    Each chunk of images is padded into a per-thread buffer and contracted by one einsum
    over its window view, threaded; no padded copy of the whole input is made. With
    stride 1 along W the view is :func:`pvt_np.ops.conv_windows.row_windows` and the taps
    are repeated Wo times, taps_rows[p, q, j*C + c] = taps[p, q, c], so the einsum's inner
    loop runs over whole output rows.
    """
    n, c = x.shape[0], x.shape[3]
    kh, kw, ho, wo = geo.kh, geo.kw, geo.ho, geo.wo
    out = np.empty((n, ho, wo, c), dtype=x.dtype)
    taps_rows = None  # the taps repeated Wo times along a row, for the W-stride-1 row windows
    if geo.sw == 1:
        taps_rows = np.ascontiguousarray(np.broadcast_to(taps[:, :, None], (kh, kw, wo, c))).reshape(kh, kw, wo * c)

    def kernel(start: int, stop: int) -> None:
        xpad = pad_into_scratch(x[start:stop], geo.ph, geo.pw, "depthwise_pad")
        if geo.sw == 1:
            rows = out[start:stop].reshape(stop - start, ho, wo * c)
            np.einsum("nhpqk,pqk->nhk", row_windows(xpad, geo), taps_rows, out=rows)
        else:
            np.einsum("nhwpqc,pqc->nhwc", windows(xpad, geo), taps, out=out[start:stop])
        if bias is not None:
            out[start:stop] += bias

    parallel.for_each_chunk(n, ho * wo * c, kernel)
    return out


def forward_cpu(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, geo: Geometry) -> np.ndarray:
    """The depthwise conv of the unpadded NHWC ``x``: one einsum per chunk of images (:func:`_contract_cpu`)."""
    return _contract_cpu(x, taps_of(weight), bias, geo)


def forward_gpu(x: Array, weight: Array, bias: Array | None, geo: Geometry) -> Array:
    """The depthwise conv of the unpadded NHWC ``x``: one CUDA kernel, one thread per output element."""
    return cuda.depthwise_forward(x, taps_of(weight), bias, geo.ph, geo.pw, geo.sh, geo.sw, geo.ho, geo.wo)


def _taps_grad_cpu(g: np.ndarray, x: np.ndarray, geo: Geometry) -> np.ndarray:
    """dtaps[p,q,c] = sum_{n,i,j} g[n,i,j,c] * xpad[n, i*sh+p, j*sw+q, c]: per-chunk partial sums, added.

    Each chunk of images is padded into a per-thread buffer, then one einsum over its window view.
    """
    n, ho, wo, c = g.shape
    rows = parallel.chunk_rows(ho * wo * c)
    partial = np.empty((-(-n // rows), geo.kh, geo.kw, c), dtype=g.dtype)

    def kernel(start: int, stop: int) -> None:
        win = windows(pad_into_scratch(x[start:stop], geo.ph, geo.pw, "depthwise_pad"), geo)
        np.einsum("nhwc,nhwpqc->pqc", g[start:stop], win, out=partial[start // rows])

    parallel.for_each_chunk(n, ho * wo * c, kernel)
    return partial.sum(axis=0)


def backward_cpu(
    g: np.ndarray, x: np.ndarray, weight: np.ndarray, geo: Geometry, has_bias: bool, input_grad: bool
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    """(dx, dw, db) of the depthwise conv of x (unpadded NHWC), from G = dL/dout (NHWC).

    dw: one einsum per chunk of images over its window view (:func:`_taps_grad_cpu`).
    dx[y, x] = sum_pq G[y + ph - p, x + pw - q] w[p, q] (stride 1): with G zero-padded by
    (kh-1-ph, kw-1-pw) that is a stride-1 depthwise conv with the kernel flipped whose
    output is exactly x's size, so the border's gradient is never computed. Other strides,
    and padding beyond kernel - 1: each tap adds w[p, q] * G onto the padded input's pixels
    it read, and the border is cut off.
    """
    n, c = g.shape[0], g.shape[3]
    h, w = x.shape[1:3]
    kh, kw, ph, pw = geo.kh, geo.kw, geo.ph, geo.pw
    db = g.reshape(-1, c).sum(axis=0) if has_bias else None
    g = np.ascontiguousarray(g)
    dw = _weight_of(_taps_grad_cpu(g, x, geo))
    if not input_grad:
        return None, dw, db
    taps = taps_of(weight)
    if geo.sh == geo.sw == 1 and ph < kh and pw < kw:
        flipped = taps[::-1, ::-1].copy()
        return _contract_cpu(g, flipped, None, Geometry(kh, kw, 1, 1, kh - 1 - ph, kw - 1 - pw, h, w)), dw, db
    dxpad = np.zeros((n, h + 2 * ph, w + 2 * pw, c), dtype=g.dtype)
    for p in range(kh):
        for q in range(kw):
            tap(dxpad, p, q, geo)[...] += g * taps[p, q]
    return dxpad[:, ph : ph + h, pw : pw + w, :], dw, db


def backward_gpu(
    g: Array, x: Array, weight: Array, geo: Geometry, has_bias: bool, input_grad: bool
) -> tuple[Array | None, Array, Array | None]:
    """(dx, dw, db) of the depthwise conv of x (unpadded NHWC), from G = dL/dout (NHWC).

    dw: one CUDA kernel of partial sums, one thread per (image, output row, tap, channel), and
    their column sums in one cuBLAS GEMV; dx: one CUDA kernel in which each input element
    gathers the terms of the windows that read it (no atomics); db: one GEMV.
    """
    xp = get_array_module(g)
    c = g.shape[3]
    db = blas.column_sums(g.reshape(-1, c)) if has_bias else None
    g = xp.ascontiguousarray(g)
    partial = cuda.depthwise_weight_grad(g, x, geo.kh, geo.kw, geo.ph, geo.pw, geo.sh, geo.sw)
    dw = _weight_of(blas.column_sums(partial).reshape(geo.kh, geo.kw, c))
    if not input_grad:
        return None, dw, db
    return cuda.depthwise_input_grad(g, taps_of(weight), x.shape, geo.ph, geo.pw, geo.sh, geo.sw), dw, db
