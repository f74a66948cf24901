"""2-D convolution (cross-correlation, as torch.nn.functional.conv2d).

Internally everything runs channels-last (N, H, W, C): PVT v2 keeps its
activations as tokens (N, H*W, C), which are NHWC maps without a copy, and
channels-last makes both the im2col rows and the depthwise taps contiguous.
The public functions also take and return NCHW (``channels_last=False``).
Weights always have torch's layout (out_channels, in_channels/groups, kh, kw).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from pvt_np.backend import Array, get_array_module
from pvt_np.ops import cuda, parallel
from pvt_np.ops.checks import check_conv2d
from pvt_np.ops.linear import weight_grad_tasks


class ConvCache(NamedTuple):
    """What conv2d_backward needs.

    ``x`` is the NHWC input: zero-padded for dense and grouped convs (their backward reads
    its windows), unpadded for depthwise ones (each chunk pads its own images, so the
    cache holds no padded copy: at the CIFAR config the padding border is 27-300% of a
    conv-FFN's hidden map, 2.3x at stage 3's 4x4 map).
    """

    x: Array
    weight: Array
    has_bias: bool
    stride: tuple[int, int]
    padding: tuple[int, int]
    groups: int
    channels_last: bool


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """floor((size + 2*padding - kernel) / stride) + 1, torch's formula."""
    return (size + 2 * padding - kernel) // stride + 1


def _pad_nhwc(x: Array, ph: int, pw: int) -> Array:
    """Zero-pad H and W of an NHWC array into a new contiguous array."""
    xp = get_array_module(x)
    n, h, w, c = x.shape
    if ph == 0 and pw == 0:
        return xp.ascontiguousarray(x)
    out = xp.zeros((n, h + 2 * ph, w + 2 * pw, c), dtype=x.dtype)
    out[:, ph : ph + h, pw : pw + w, :] = x
    return out


def _pad_into_scratch(x: np.ndarray, ph: int, pw: int, name: str) -> np.ndarray:
    """x (a chunk of NHWC images) zero-padded by (ph, pw) in a per-thread scratch buffer (cache-sized, reused).

    The buffer is shared by every call with this name, so the border is zeroed each time.
    """
    n, h, w, c = x.shape
    out = parallel.scratch(name, (n, h + 2 * ph, w + 2 * pw, c), x.dtype)
    out[:, :ph] = 0
    out[:, ph + h :] = 0
    out[:, ph : ph + h, :pw] = 0
    out[:, ph : ph + h, pw + w :] = 0
    out[:, ph : ph + h, pw : pw + w] = x
    return out


def _windows(xpad: Array, kh: int, kw: int, sh: int, sw: int, ho: int, wo: int) -> Array:
    """Strided view (N, Ho, Wo, kh, kw, C) of every kernel window: im2col without a copy."""
    xp = get_array_module(xpad)
    n, _, _, c = xpad.shape
    s_n, s_h, s_w, s_c = xpad.strides
    return xp.lib.stride_tricks.as_strided(
        xpad, shape=(n, ho, wo, kh, kw, c), strides=(s_n, s_h * sh, s_w * sw, s_h, s_w, s_c)
    )


def _row_windows(xpad: np.ndarray, kh: int, kw: int, sh: int, ho: int, wo: int) -> np.ndarray:
    """Strided view (N, Ho, kh, kw, Wo*C) of a W-stride-1 conv's windows: rows[n, i, p, q] = xpad[n, i*sh+p, q:q+Wo, :].

    With stride 1 along W the Wo output pixels of row i meet, at tap (p, q), one contiguous
    run of Wo*C input elements, so a contraction over this view runs its innermost loop
    over Wo*C elements instead of C (stage 1 of the CIFAR model: 4,096 instead of 256).
    """
    n, _, _, c = xpad.shape
    s_n, s_h, s_w, s_c = xpad.strides
    return np.lib.stride_tricks.as_strided(xpad, shape=(n, ho, kh, kw, wo * c), strides=(s_n, s_h * sh, s_h, s_w, s_c))


def _tap(xpad: Array, p: int, q: int, sh: int, sw: int, ho: int, wo: int) -> Array:
    """The input pixels that kernel tap (p, q) meets at every output position."""
    return xpad[:, p : p + sh * (ho - 1) + 1 : sh, q : q + sw * (wo - 1) + 1 : sw, :]


def conv2d_forward(
    x: Array,
    weight: Array,
    bias: Array | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    groups: int = 1,
    channels_last: bool = False,
    *,
    who: str = "conv2d",
) -> tuple[Array, ConvCache]:
    """out[n,o,i,j] = b[o] + sum_{c in group(o), p, q} w[o,c,p,q] * xpad[n, c, i*sh+p, j*sw+q].

    A strided view of the padded input gives every kernel window without a copy,
    win[n, i, j, p, q, c] = xpad[n, i*sh+p, j*sw+q, c]. Dense and grouped convs
    copy it into the im2col matrix X (rows: output pixels, columns: kh*kw*C/groups
    taps) and do one GEMM per group, out = X W^T. Depthwise (groups == C == O)
    has nothing to share across channels, so it contracts the view directly:
    out[n,i,j,c] = sum_pq win[n,i,j,p,q,c] * w[c,p,q], one einsum pass per chunk of
    images on NumPy; on CuPy one CUDA kernel (pvt_np.ops.cuda).
    """
    (sh, sw), (ph, pw), (ho, wo) = check_conv2d(x, weight, bias, stride, padding, groups, channels_last, who)
    x_nhwc = x if channels_last else x.transpose(0, 2, 3, 1)
    c = x_nhwc.shape[3]
    o = weight.shape[0]
    if groups == c == o:
        out = _depthwise(x_nhwc, _taps(weight), bias, ph, pw, sh, sw, ho, wo)
        kept = x_nhwc
    else:
        kept = _pad_nhwc(x_nhwc, ph, pw)
        if groups == 1:
            out = _dense_forward(kept, weight, bias, sh, sw, ho, wo)
        else:
            out = _grouped_forward(kept, weight, groups, sh, sw, ho, wo)
            if bias is not None:
                out += bias
    cache = ConvCache(kept, weight, bias is not None, (sh, sw), (ph, pw), groups, channels_last)
    return (out if channels_last else out.transpose(0, 3, 1, 2)), cache


def _dense_forward(xpad: Array, weight: Array, bias: Array | None, sh: int, sw: int, ho: int, wo: int) -> Array:
    """groups == 1: out = X W^T + b in chunks of output rows (an image's row of Wo output pixels is the unit).

    Each chunk copies its windows into a per-thread im2col buffer (cache-sized, reused)
    and runs one single-threaded GEMM into its rows of the output, on the worker threads.
    """
    xp = get_array_module(xpad)
    n, c = xpad.shape[0], xpad.shape[3]
    o, _, kh, kw = weight.shape
    k = kh * kw * c
    w_mat = _weight_matrix(weight, 1)[0]  # (O, K)
    out = xp.empty((n, ho, wo, o), dtype=xp.result_type(xpad, weight))
    out_rows = out.reshape(n * ho * wo, o)
    win = _windows(xpad, kh, kw, sh, sw, ho, wo)

    def kernel(start: int, stop: int) -> None:
        cols = _cols(win, start, stop, k)
        rows = out_rows[start * wo : stop * wo]
        cuda.matmul(cols, w_mat, trans_b=True, out=rows)  # rows = X W^T
        if bias is not None:
            rows += bias

    parallel.for_each_chunk(n * ho, 1, kernel, xp, rows_per_chunk=-(-parallel.gemm_rows(k * o) // wo))
    return out


def _cols(win: Array, start: int, stop: int, k: int, out: Array | None = None) -> Array:
    """im2col rows of output-row units [start, stop) (unit u: image u // Ho, output row u % Ho), as (rows, K).

    Written into ``out`` where given, else (NumPy) into a per-thread scratch buffer.
    """
    xp = get_array_module(win)
    n, ho, wo = win.shape[:3]
    if xp is not np and out is None and start == 0 and stop == n * ho:
        return win.reshape(n * ho * wo, k)
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


def _grouped_forward(xpad: Array, weight: Array, groups: int, sh: int, sw: int, ho: int, wo: int) -> Array:
    n = xpad.shape[0]
    o, _, kh, kw = weight.shape
    cols = _im2col(xpad, kh, kw, groups, sh, sw, ho, wo)  # (G, M, K)
    w_mat = _weight_matrix(weight, groups)  # (G, O/G, K)
    out = cols @ w_mat.transpose(0, 2, 1)  # (G, M, O/G)
    if groups == 1:
        return out.reshape(n, ho, wo, o)
    return out.transpose(1, 0, 2).reshape(n, ho, wo, o)


def _im2col(xpad: Array, kh: int, kw: int, groups: int, sh: int, sw: int, ho: int, wo: int) -> Array:
    """(G, M, K) matrix of windows, K ordered (kh, kw, C/G) to match _weight_matrix."""
    n, _, _, c = xpad.shape
    win = _windows(xpad, kh, kw, sh, sw, ho, wo)
    m = n * ho * wo
    if groups == 1:
        return win.reshape(1, m, kh * kw * c)
    cg = c // groups
    win = win.reshape(n, ho, wo, kh, kw, groups, cg).transpose(5, 0, 1, 2, 3, 4, 6)
    return win.reshape(groups, m, kh * kw * cg)


def _weight_matrix(weight: Array, groups: int) -> Array:
    """torch's (O, C/G, kh, kw) as (G, O/G, kh*kw*C/G), columns ordered like _im2col."""
    o, cg, kh, kw = weight.shape
    return weight.reshape(groups, o // groups, cg, kh, kw).transpose(0, 1, 3, 4, 2).reshape(groups, o // groups, -1)


def _taps(weight: Array) -> Array:
    """Depthwise weight (C, 1, kh, kw) as (kh, kw, C): one contiguous channel row per tap."""
    return weight[:, 0].transpose(1, 2, 0).copy()


def _depthwise(
    x: Array, taps: Array, bias: Array | None, ph: int, pw: int, sh: int, sw: int, ho: int, wo: int
) -> Array:
    """out[n,i,j,c] = bias[c] + sum_pq xpad[n, i*sh+p, j*sw+q, c] * taps[p,q,c], chunked over images,
    with xpad = x zero-padded by (ph, pw).

    NumPy: each chunk of images is padded into a per-thread buffer and contracted by one
    einsum over its window view, threaded; no padded copy of the whole input is made.
    With stride 1 along W the view is :func:`_row_windows` and the taps are repeated
    Wo times, taps_rows[p, q, j*C + c] = taps[p, q, c], so the einsum's inner loop runs
    over whole output rows. CuPy: one CUDA kernel, one thread per output element
    (pvt_np.ops.cuda).
    """
    xp = get_array_module(x)
    if cuda.active(xp):
        return cuda.depthwise_forward(x, taps, bias, ph, pw, sh, sw, ho, wo)
    n, c = x.shape[0], x.shape[3]
    kh, kw = taps.shape[:2]
    out = np.empty((n, ho, wo, c), dtype=x.dtype)
    taps_rows = None  # the taps repeated Wo times along a row, for the W-stride-1 row windows
    if sw == 1:
        taps_rows = np.ascontiguousarray(np.broadcast_to(taps[:, :, None], (kh, kw, wo, c))).reshape(kh, kw, wo * c)

    def kernel(start: int, stop: int) -> None:
        xpad = _pad_into_scratch(x[start:stop], ph, pw, "depthwise_pad")
        if sw == 1:
            rows = out[start:stop].reshape(stop - start, ho, wo * c)
            np.einsum("nhpqk,pqk->nhk", _row_windows(xpad, kh, kw, sh, ho, wo), taps_rows, out=rows)
        else:
            np.einsum("nhwpqc,pqc->nhwc", _windows(xpad, kh, kw, sh, sw, ho, wo), taps, out=out[start:stop])
        if bias is not None:
            out[start:stop] += bias

    parallel.for_each_chunk(n, ho * wo * c, kernel, xp)
    return out


def _depthwise_weight_grad(g: Array, x: Array, ph: int, pw: int, kh: int, kw: int, sh: int, sw: int) -> Array:
    """dtaps[p,q,c] = sum_{n,i,j} g[n,i,j,c] * xpad[n, i*sh+p, j*sw+q, c]: per-chunk partial sums, added
    (xpad: x zero-padded by (ph, pw)).

    NumPy: each chunk of images padded into a per-thread buffer, then one einsum over its
    window view. CuPy: one CUDA kernel of partial sums per output row of each image (pvt_np.ops.cuda), added.
    """
    xp = get_array_module(g)
    if cuda.active(xp):
        return cuda.depthwise_weight_grad(g, x, kh, kw, ph, pw, sh, sw)
    n, ho, wo, c = g.shape
    rows = parallel.chunk_rows(ho * wo * c)
    partial = np.empty((-(-n // rows), kh, kw, c), dtype=g.dtype)

    def kernel(start: int, stop: int) -> None:
        win = _windows(_pad_into_scratch(x[start:stop], ph, pw, "depthwise_pad"), kh, kw, sh, sw, ho, wo)
        np.einsum("nhwc,nhwpqc->pqc", g[start:stop], win, out=partial[start // rows])

    parallel.for_each_chunk(n, ho * wo * c, kernel, xp)
    return partial.sum(axis=0)


def conv2d_backward(dout: Array, cache: ConvCache, input_grad: bool = True) -> tuple[Array | None, Array, Array | None]:
    """Gradients of the conv, with G = dL/dout:

    db[o]       = sum_{n,i,j} G[n,o,i,j]
    dW          = G^T X  per group (X the im2col matrix, rebuilt from the cached padded input)
    dX          = G W    per group, then col2im: each tap (p, q) slice-adds its column block
                  back onto the input pixels it read (kh*kw strided slice-adds, no scatter)
    Depthwise:  dw[c,p,q] = sum_{n,i,j} G[n,i,j,c] * win[n,i,j,p,q,c]   (one einsum per chunk;
                on CuPy a CUDA kernel, pvt_np.ops.cuda)
                (win from the cached unpadded input, each chunk padding its own images)
                dX: with stride 1 every output pixel's gradient flows back to the pixels it
                read, which is a stride-1 depthwise conv of G (padded by k-1-pad) with the
                kernel flipped, computed for the input's pixels only; other strides
                slice-add w[c,p,q] * G per tap; CuPy gathers each input pixel's terms
                in a CUDA kernel.
    Returns (dx, dW, db); db is None when there was no bias, dx is None with
    ``input_grad=False`` (an image fed to the stem needs no gradient: col2im skipped).
    """
    x, weight, has_bias, (sh, sw), (ph, pw), groups, channels_last = cache
    g = dout if channels_last else dout.transpose(0, 2, 3, 1)
    _n, _ho, _wo, o = g.shape
    c = x.shape[3]
    depthwise, dense = groups == c == o, groups == 1 and not groups == c == o
    db = cuda.column_sums(g.reshape(-1, o)) if has_bias and not dense else None  # the dense path sums it in its tasks
    if depthwise:
        dx, dw = _depthwise_backward(g, x, weight, ph, pw, sh, sw, input_grad)
        return (dx if channels_last or dx is None else dx.transpose(0, 3, 1, 2)), dw, db
    xpad = x  # dense and grouped convs keep the padded input
    if dense:
        dxpad, dw, db = _dense_backward(g, xpad, weight, has_bias, sh, sw, input_grad)
    else:
        dxpad, dw = _grouped_backward(g, xpad, weight, groups, sh, sw, input_grad)
    if dxpad is None:
        return None, dw, db
    hp, wp = xpad.shape[1:3]
    dx = dxpad[:, ph : hp - ph, pw : wp - pw, :]
    return (dx if channels_last else dx.transpose(0, 3, 1, 2)), dw, db


def _dense_backward(
    g: Array, xpad: Array, weight: Array, has_bias: bool, sh: int, sw: int, input_grad: bool
) -> tuple[Array | None, Array, Array | None]:
    """groups == 1: (dxpad, dW, db), in two hand-offs to the worker threads.

    First the im2col matrix X is filled in chunks of output rows and, in chunks of whole
    images (their windows overlap only within an image), dX = G W and its col2im into
    that image's rows of dxpad. Then dW = G^T X and db as linear's weight gradient
    (pvt_np.ops.linear.weight_grad_tasks).
    """
    xp = get_array_module(g)
    n, ho, wo, o = g.shape
    c = xpad.shape[3]
    kh, kw = weight.shape[2:]
    k = kh * kw * c
    m = n * ho * wo
    dtype = xp.result_type(g, weight)
    g_mat = g.reshape(m, o)
    win = _windows(xpad, kh, kw, sh, sw, ho, wo)
    if cuda.active(xp):  # the GPU: the whole im2col matrix at once, cuBLAS (pvt_np.ops.cuda.matmul)
        cols = win.reshape(m, k)
        dw_mat, db = cuda.matmul(g_mat, cols, trans_a=True), (cuda.column_sums(g_mat) if has_bias else None)
        dxpad = None
        if input_grad:
            dxpad = xp.empty(xpad.shape, dtype=dtype)
            _col2im(cuda.matmul(g_mat, _weight_matrix(weight, 1)[0]), dxpad, kh, kw, sh, sw, ho, wo)
        return dxpad, _weight_from_matrix(dw_mat, weight.shape), db
    cols = np.empty((m, k), dtype=xpad.dtype)
    unit_rows = -(-parallel.gemm_rows(k) // wo)
    tasks = parallel.row_tasks(n * ho, unit_rows, lambda s, e: _cols(win, s, e, k, out=cols[s * wo : e * wo]))
    dxpad = np.empty(xpad.shape, dtype=dtype) if input_grad else None
    if dxpad is not None:
        w_mat = _weight_matrix(weight, 1)[0]  # (O, K)
        images = -(-parallel.gemm_rows(o * k) // (ho * wo))

        def dx_task(s: int, e: int) -> None:
            dcols = parallel.scratch("conv_dcols", ((e - s) * ho * wo, k), dtype)
            np.matmul(g_mat[s * ho * wo : e * ho * wo], w_mat, out=dcols)
            _col2im(dcols, dxpad[s:e], kh, kw, sh, sw, ho, wo)

        tasks += parallel.row_tasks(n, images, dx_task)
    parallel.run_tasks(tasks)
    dw_tasks, finish = weight_grad_tasks(g_mat, cols, has_bias)
    parallel.run_tasks(dw_tasks)
    dw_mat, db = finish()
    return dxpad, _weight_from_matrix(dw_mat, weight.shape), db


def _weight_from_matrix(dw_mat: Array, shape: tuple[int, ...]) -> Array:
    """(O, kh*kw*C) ordered like _im2col back to torch's (O, C, kh, kw)."""
    xp = get_array_module(dw_mat)
    o, c, kh, kw = shape
    return xp.ascontiguousarray(dw_mat.reshape(o, kh, kw, c).transpose(0, 3, 1, 2))


def _col2im(dcols: Array, dxpad: Array, kh: int, kw: int, sh: int, sw: int, ho: int, wo: int) -> None:
    """Fill ``dxpad`` (the padded input's gradient) from the im2col matrix's: each window adds its row back.

    On NumPy, windows that do not overlap (stride >= kernel, as the SR conv's kernel ==
    stride) are written through the window view in one strided copy; overlapping ones by
    kh*kw strided slice-adds, one per tap. On the GPU one CUDA kernel gathers each pixel's
    terms (:func:`pvt_np.ops.cuda.col2im`). Pixels no window reads get zero.
    """
    if cuda.active(get_array_module(dxpad)) and dxpad.flags.c_contiguous:  # the GPU: one gather kernel
        cuda.col2im(dcols, dxpad, kh, kw, sh, sw, ho, wo)
        return
    n, hp, wp, c = dxpad.shape
    windows = dcols.reshape(n, ho, wo, kh, kw, c)
    if sh >= kh and sw >= kw and get_array_module(dxpad) is np:  # (a strided CuPy dxpad: the slice-adds)
        if (sh, sw) != (kh, kw) or (hp, wp) != (ho * kh, wo * kw):  # some pixels lie in no window
            dxpad[...] = 0
        _windows(dxpad, kh, kw, sh, sw, ho, wo)[...] = windows
        return
    dxpad[...] = 0
    for p in range(kh):
        for q in range(kw):
            _tap(dxpad, p, q, sh, sw, ho, wo)[...] += windows[:, :, :, p, q, :]


def _grouped_backward(
    g: Array, xpad: Array, weight: Array, groups: int, sh: int, sw: int, input_grad: bool
) -> tuple[Array | None, Array]:
    xp = get_array_module(g)
    n, ho, wo, o = g.shape
    _, cg, kh, kw = weight.shape
    m, og = n * ho * wo, o // groups
    g_mat = g.reshape(m, groups, og).transpose(1, 0, 2)  # (G, M, O/G)
    cols = _im2col(xpad, kh, kw, groups, sh, sw, ho, wo)
    dw_mat = g_mat.transpose(0, 2, 1) @ cols  # (G, O/G, K)
    dw = dw_mat.reshape(groups, og, kh, kw, cg).transpose(0, 1, 4, 2, 3).reshape(o, cg, kh, kw)
    if not input_grad:
        return None, xp.ascontiguousarray(dw)
    dcols = g_mat @ _weight_matrix(weight, groups)  # (G, M, K)
    dcols = dcols.reshape(groups, n, ho, wo, kh, kw, cg)
    if kh == kw == 1 and sh == sw == 1:
        return dcols.transpose(1, 2, 3, 0, 4, 5, 6).reshape(xpad.shape), xp.ascontiguousarray(dw)
    dxpad = xp.zeros(xpad.shape, dtype=g.dtype)
    for p in range(kh):
        for q in range(kw):
            tap = dcols[:, :, :, :, p, q, :].transpose(1, 2, 3, 0, 4).reshape(n, ho, wo, groups * cg)
            _tap(dxpad, p, q, sh, sw, ho, wo)[...] += tap
    return dxpad, xp.ascontiguousarray(dw)


def _depthwise_backward(
    g: Array, x: Array, weight: Array, ph: int, pw: int, sh: int, sw: int, input_grad: bool
) -> tuple[Array | None, Array]:
    """(dx, dw) of a depthwise conv of x (unpadded NHWC) zero-padded by (ph, pw).

    dx[y, x] = sum_pq G[y + ph - p, x + pw - q] w[p, q] (stride 1): with G zero-padded by
    (kh-1-ph, kw-1-pw) that is a stride-1 depthwise conv with the kernel flipped whose
    output is exactly x's size, so the border's gradient is never computed. Other strides,
    and padding beyond kernel - 1: each tap adds w[p, q] * G onto the padded input's pixels
    it read, and the border is cut off. CuPy: one CUDA kernel gathers dx (pvt_np.ops.cuda).
    """
    xp = get_array_module(g)
    g = xp.ascontiguousarray(g)
    n, ho, wo, c = g.shape
    h, w = x.shape[1:3]
    kh, kw = weight.shape[2:]
    dtaps = _depthwise_weight_grad(g, x, ph, pw, kh, kw, sh, sw)
    dw = xp.ascontiguousarray(dtaps.transpose(2, 0, 1)[:, None])
    if not input_grad:
        return None, dw
    taps = _taps(weight)
    if cuda.active(xp):
        return cuda.depthwise_input_grad(g, taps, x.shape, ph, pw, sh, sw), dw
    if sh == sw == 1 and ph < kh and pw < kw:
        flipped = taps[::-1, ::-1].copy()
        return _depthwise(g, flipped, None, kh - 1 - ph, kw - 1 - pw, 1, 1, h, w), dw
    dxpad = xp.zeros((n, h + 2 * ph, w + 2 * pw, c), dtype=g.dtype)
    for p in range(kh):
        for q in range(kw):
            _tap(dxpad, p, q, sh, sw, ho, wo)[...] += g * taps[p, q]
    return dxpad[:, ph : ph + h, pw : pw + w, :], dw
