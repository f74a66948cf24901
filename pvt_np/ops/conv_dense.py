"""The dense conv (groups == 1) as an im2col GEMM, on the CPU and on the GPU, and the grouped conv.

The padded NHWC input's windows (:func:`pvt_np.ops.conv_windows.windows`, a strided view) are
the rows of the im2col matrix X, one per output pixel, its columns the kh*kw*C taps ordered
(p, q, c); the weight, torch's (O, C, kh, kw), is the matrix W (O, kh*kw*C) with its columns in
the same order. Then

    out = X W^T + b,    dW = G^T X,    db = sum_rows G,    dX = G W,

and col2im adds each row of dX back onto the input pixels its window read. The CPU form
(``*_cpu``) fills X in chunks of output rows on the worker threads; the GPU form (``*_gpu``)
takes the whole X at once, its products one cuBLAS call each, col2im one CUDA kernel.
:func:`pvt_np.ops.conv.conv2d_forward` chooses between them.
"""

from __future__ import annotations

import numpy as np

from pvt_np.backend import Array, get_array_module
from pvt_np.ops import blas, cuda, parallel
from pvt_np.ops.conv_windows import Geometry, tap, windows
from pvt_np.ops.linear import weight_grad_tasks


def weight_matrix(weight: Array, groups: int) -> Array:
    """torch's (O, C/G, kh, kw) as (G, O/G, kh*kw*C/G), columns ordered (p, q, c) like the im2col rows."""
    o, cg, kh, kw = weight.shape
    return weight.reshape(groups, o // groups, cg, kh, kw).transpose(0, 1, 3, 4, 2).reshape(groups, o // groups, -1)


def _weight_from_matrix(dw_mat: Array, shape: tuple[int, ...]) -> Array:
    """(O, kh*kw*C) with columns ordered (p, q, c) back to torch's (O, C, kh, kw)."""
    xp = get_array_module(dw_mat)
    o, c, kh, kw = shape
    return xp.ascontiguousarray(dw_mat.reshape(o, kh, kw, c).transpose(0, 3, 1, 2))


def _crop(dxpad: Array, geo: Geometry) -> Array:
    """The padded input's gradient without its border: the input's own."""
    hp, wp = dxpad.shape[1:3]
    return dxpad[:, geo.ph : hp - geo.ph, geo.pw : wp - geo.pw, :]


def _im2col_rows(win: np.ndarray, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
    """im2col rows of output-row units [start, stop) (unit u: image u // Ho, output row u % Ho), as (rows, K).

    Written into ``out`` where given, else into a per-thread scratch buffer.
    """
    ho, wo = win.shape[1:3]
    k = int(np.prod(win.shape[3:]))
    if out is None:
        out = parallel.scratch("conv_cols", ((stop - start) * wo, k), win.dtype)
    units = out.reshape(stop - start, wo, *win.shape[3:])
    u = start
    while u < stop:  # one strided copy per image the range touches
        image, row = divmod(u, ho)
        end = min(stop, (image + 1) * ho)
        units[u - start : end - start] = win[image, row : row + end - u]
        u = end
    return out


def forward_cpu(xpad: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, geo: Geometry) -> np.ndarray:
    """out = X W^T + b in chunks of output rows (an image's row of Wo output pixels is the unit).

    Each chunk copies its windows into a per-thread im2col buffer (cache-sized, reused)
    and runs one single-threaded GEMM into its rows of the output, on the worker threads.
    """
    n, c = xpad.shape[0], xpad.shape[3]
    o = weight.shape[0]
    ho, wo = geo.ho, geo.wo
    k = geo.kh * geo.kw * c
    w_mat = weight_matrix(weight, 1)[0]  # (O, K)
    out = np.empty((n, ho, wo, o), dtype=np.result_type(xpad, weight))
    out_rows = out.reshape(n * ho * wo, o)
    win = windows(xpad, geo)

    def kernel(start: int, stop: int) -> None:
        rows = out_rows[start * wo : stop * wo]
        np.matmul(_im2col_rows(win, start, stop), w_mat.T, out=rows)  # rows = X W^T
        if bias is not None:
            rows += bias

    parallel.for_each_chunk(n * ho, 1, kernel, rows_per_chunk=-(-parallel.gemm_rows(k * o) // wo))
    return out


def forward_gpu(xpad: Array, weight: Array, bias: Array | None, geo: Geometry) -> Array:
    """out = X W^T + b: the whole im2col matrix at once, one cuBLAS GEMM into the output."""
    xp = get_array_module(xpad)
    n, c = xpad.shape[0], xpad.shape[3]
    o = weight.shape[0]
    m = n * geo.ho * geo.wo
    out = xp.empty((n, geo.ho, geo.wo, o), dtype=xp.result_type(xpad, weight))
    cols = windows(xpad, geo).reshape(m, geo.kh * geo.kw * c)
    blas.matmul(cols, weight_matrix(weight, 1)[0], trans_b=True, out=out.reshape(m, o))
    if bias is not None:
        out += bias
    return out


def backward_cpu(
    g: np.ndarray, xpad: np.ndarray, weight: np.ndarray, geo: Geometry, has_bias: bool, input_grad: bool
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    """(dx, dW, db) in two hand-offs to the worker threads.

    First the im2col matrix X is filled in chunks of output rows and, in chunks of whole
    images (their windows overlap only within an image), dX = G W and its col2im into
    that image's rows of dxpad. Then dW = G^T X and db as linear's weight gradient
    (pvt_np.ops.linear.weight_grad_tasks).
    """
    n, ho, wo, o = g.shape
    c = xpad.shape[3]
    k = geo.kh * geo.kw * c
    m = n * ho * wo
    dtype = np.result_type(g, weight)
    g_mat = g.reshape(m, o)
    win = windows(xpad, geo)
    cols = np.empty((m, k), dtype=xpad.dtype)
    unit_rows = -(-parallel.gemm_rows(k) // wo)
    tasks = parallel.row_tasks(n * ho, unit_rows, lambda s, e: _im2col_rows(win, s, e, out=cols[s * wo : e * wo]))
    dxpad = np.empty(xpad.shape, dtype=dtype) if input_grad else None
    if dxpad is not None:
        w_mat = weight_matrix(weight, 1)[0]  # (O, K)
        images = -(-parallel.gemm_rows(o * k) // (ho * wo))

        def dx_task(s: int, e: int) -> None:
            dcols = parallel.scratch("conv_dcols", ((e - s) * ho * wo, k), dtype)
            np.matmul(g_mat[s * ho * wo : e * ho * wo], w_mat, out=dcols)
            _col2im_cpu(dcols, dxpad[s:e], geo)

        tasks += parallel.row_tasks(n, images, dx_task)
    parallel.run_tasks(tasks)
    dw_tasks, finish = weight_grad_tasks(g_mat, cols, has_bias)
    parallel.run_tasks(dw_tasks)
    dw_mat, db = finish()
    dw = _weight_from_matrix(dw_mat, weight.shape)
    return (None if dxpad is None else _crop(dxpad, geo)), dw, db


def _col2im_cpu(dcols: np.ndarray, dxpad: np.ndarray, geo: Geometry) -> None:
    """Fill ``dxpad`` (the padded input's gradient) from the im2col matrix's: each window adds its row back.

    Windows that do not overlap (stride >= kernel, as the SR conv's kernel == stride) are
    written through the window view in one strided copy; overlapping ones by kh*kw strided
    slice-adds, one per tap. Pixels no window reads get zero.
    """
    n, hp, wp, c = dxpad.shape
    kh, kw, sh, sw, ho, wo = geo.kh, geo.kw, geo.sh, geo.sw, geo.ho, geo.wo
    rows = dcols.reshape(n, ho, wo, kh, kw, c)
    if sh >= kh and sw >= kw:
        if (sh, sw) != (kh, kw) or (hp, wp) != (ho * kh, wo * kw):  # some pixels lie in no window
            dxpad[...] = 0
        windows(dxpad, geo)[...] = rows
        return
    dxpad[...] = 0
    for p in range(kh):
        for q in range(kw):
            tap(dxpad, p, q, geo)[...] += rows[:, :, :, p, q, :]


def backward_gpu(
    g: Array, xpad: Array, weight: Array, geo: Geometry, has_bias: bool, input_grad: bool
) -> tuple[Array | None, Array, Array | None]:
    """(dx, dW, db): the whole im2col matrix at once; dW = G^T X and dX = G W one cuBLAS GEMM each, db one GEMV
    (:func:`pvt_np.ops.blas.column_sums`), and col2im one CUDA kernel gathering each pixel's terms
    (:func:`pvt_np.ops.cuda.col2im`)."""
    xp = get_array_module(g)
    n, ho, wo, o = g.shape
    c = xpad.shape[3]
    m = n * ho * wo
    g_mat = g.reshape(m, o)
    cols = windows(xpad, geo).reshape(m, geo.kh * geo.kw * c)
    dw_mat, db = blas.matmul(g_mat, cols, trans_a=True), (blas.column_sums(g_mat) if has_bias else None)
    dx = None
    if input_grad:
        dxpad = xp.empty(xpad.shape, dtype=xp.result_type(g, weight))
        dcols = blas.matmul(g_mat, weight_matrix(weight, 1)[0])
        cuda.col2im(dcols, dxpad, geo.kh, geo.kw, geo.sh, geo.sw, ho, wo)
        dx = _crop(dxpad, geo)
    return dx, _weight_from_matrix(dw_mat, weight.shape), db


def _im2col_grouped(xpad: Array, groups: int, geo: Geometry) -> Array:
    """(G, M, K) matrix of windows, K ordered (kh, kw, C/G) to match :func:`weight_matrix`."""
    n, _, _, c = xpad.shape
    cg = c // groups
    win = windows(xpad, geo).reshape(n, geo.ho, geo.wo, geo.kh, geo.kw, groups, cg).transpose(5, 0, 1, 2, 3, 4, 6)
    return win.reshape(groups, n * geo.ho * geo.wo, geo.kh * geo.kw * cg)


def grouped_forward(xpad: Array, weight: Array, bias: Array | None, groups: int, geo: Geometry) -> Array:
    """1 < groups, not depthwise: out = X_g W_g^T per group g, one batched product (either device)."""
    n = xpad.shape[0]
    o = weight.shape[0]
    cols = _im2col_grouped(xpad, groups, geo)  # (G, M, K)
    out = cols @ weight_matrix(weight, groups).transpose(0, 2, 1)  # (G, M, O/G)
    out = out.transpose(1, 0, 2).reshape(n, geo.ho, geo.wo, o)
    if bias is not None:
        out += bias
    return out


def grouped_backward(
    g: Array, xpad: Array, weight: Array, groups: int, geo: Geometry, has_bias: bool, input_grad: bool
) -> tuple[Array | None, Array, Array | None]:
    """(dx, dW, db): dW_g = G_g^T X_g and dX_g = G_g W_g per group, then col2im by slice-adds (either device)."""
    xp = get_array_module(g)
    n, ho, wo, o = g.shape
    _, cg, kh, kw = weight.shape
    m, og = n * ho * wo, o // groups
    db = blas.column_sums(g.reshape(-1, o)) if has_bias else None
    g_mat = g.reshape(m, groups, og).transpose(1, 0, 2)  # (G, M, O/G)
    cols = _im2col_grouped(xpad, groups, geo)
    dw_mat = g_mat.transpose(0, 2, 1) @ cols  # (G, O/G, K)
    dw = xp.ascontiguousarray(dw_mat.reshape(groups, og, kh, kw, cg).transpose(0, 1, 4, 2, 3).reshape(o, cg, kh, kw))
    if not input_grad:
        return None, dw, db
    dcols = g_mat @ weight_matrix(weight, groups)  # (G, M, K)
    dcols = dcols.reshape(groups, n, ho, wo, kh, kw, cg)
    if kh == kw == 1 and geo.sh == geo.sw == 1:
        return _crop(dcols.transpose(1, 2, 3, 0, 4, 5, 6).reshape(xpad.shape), geo), dw, db
    dxpad = xp.zeros(xpad.shape, dtype=g.dtype)
    for p in range(kh):
        for q in range(kw):
            rows = dcols[:, :, :, :, p, q, :].transpose(1, 2, 3, 0, 4).reshape(n, ho, wo, groups * cg)
            tap(dxpad, p, q, geo)[...] += rows
    return _crop(dxpad, geo), dw, db
