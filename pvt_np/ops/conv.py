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

from pvt_np import parallel
from pvt_np.backend import Array, get_array_module
from pvt_np.ops._validate import check_ndim, check_same_dtype, pair


class ConvCache(NamedTuple):
    """What conv2d_backward needs. ``x`` is the zero-padded NHWC input, except on the
    depthwise stride-1 path (``padded=False``), which reads the unpadded input directly."""

    x: Array
    weight: Array
    has_bias: bool
    stride: tuple[int, int]
    padding: tuple[int, int]
    groups: int
    channels_last: bool
    padded: bool


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


def _windows(xpad: Array, kh: int, kw: int, sh: int, sw: int, ho: int, wo: int) -> Array:
    """Strided view (N, Ho, Wo, kh, kw, C) of every kernel window: im2col without a copy."""
    xp = get_array_module(xpad)
    n, _, _, c = xpad.shape
    s_n, s_h, s_w, s_c = xpad.strides
    return xp.lib.stride_tricks.as_strided(
        xpad, shape=(n, ho, wo, kh, kw, c), strides=(s_n, s_h * sh, s_w * sw, s_h, s_w, s_c)
    )


def _tap(xpad: Array, p: int, q: int, sh: int, sw: int, ho: int, wo: int) -> Array:
    """The input pixels that kernel tap (p, q) meets at every output position."""
    return xpad[:, p : p + sh * (ho - 1) + 1 : sh, q : q + sw * (wo - 1) + 1 : sw, :]


def _check_conv(x: Array, weight: Array, bias: Array | None, groups: int, channels_last: bool, who: str) -> None:
    layout = "(N, H, W, C)" if channels_last else "(N, C, H, W)"
    check_ndim(x, 4, who, layout)
    check_ndim(weight, 4, who, "(out_channels, in_channels/groups, kh, kw)", name="weight")
    check_same_dtype(x, weight, who)
    c_in = x.shape[3] if channels_last else x.shape[1]
    o, cg = weight.shape[:2]
    if groups < 1 or c_in % groups or o % groups:
        raise ValueError(f"{who}: groups={groups} must divide in_channels={c_in} and out_channels={o}")
    if c_in != cg * groups:
        expect = f"(N, H, W, {cg * groups})" if channels_last else f"(N, {cg * groups}, H, W)"
        raise ValueError(f"{who}: expected input of shape {expect}, got {tuple(x.shape)}")
    if bias is not None and tuple(bias.shape) != (o,):
        raise ValueError(f"{who}: expected bias of shape ({o},), got {tuple(bias.shape)}")


def conv2d_forward(
    x: Array,
    weight: Array,
    bias: Array | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    groups: int = 1,
    channels_last: bool = False,
) -> tuple[Array, ConvCache]:
    """out[n,o,i,j] = b[o] + sum_{c in group(o), p, q} w[o,c,p,q] * xpad[n, c, i*sh+p, j*sw+q].

    Dense and grouped convs: im2col builds, through a strided view, the matrix X
    of all windows (rows: output pixels, columns: kh*kw*C/groups taps), so the
    conv is one GEMM per group, out = X W^T. Depthwise (groups == C == O) is
    kh*kw shifted multiply-adds: out += w[:, p, q] * xpad[shifted by (p, q)];
    with stride 1 the shifts read the unpadded input, each tap over the output
    region where its input pixel exists (the rest would multiply zero padding).
    """
    who = "conv2d"
    sh, sw = pair(stride, who, "stride")
    ph, pw = pair(padding, who, "padding")
    if sh < 1 or sw < 1 or ph < 0 or pw < 0:
        raise ValueError(f"{who}: stride must be >= 1 and padding >= 0, got stride {(sh, sw)}, padding {(ph, pw)}")
    _check_conv(x, weight, bias, groups, channels_last, who)
    xp = get_array_module(x)
    x_nhwc = x if channels_last else x.transpose(0, 2, 3, 1)
    _n, h, w, c = x_nhwc.shape
    o, _, kh, kw = weight.shape
    ho, wo = conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)
    if ho < 1 or wo < 1:
        raise ValueError(f"{who}: input {h}x{w} with padding ({ph}, {pw}) is smaller than the kernel {kh}x{kw}")
    depthwise = groups == c == o
    if depthwise and sh == sw == 1:
        x_nhwc = xp.ascontiguousarray(x_nhwc)
        out = _depthwise_s1(x_nhwc, _taps(weight), bias, (ho, wo), (ph, pw), transpose=False)
        cache = ConvCache(x_nhwc, weight, bias is not None, (1, 1), (ph, pw), groups, channels_last, False)
    else:
        xpad = _pad_nhwc(x_nhwc, ph, pw)
        if depthwise:
            out = _depthwise_forward(xpad, weight, sh, sw, ho, wo)
        else:
            out = _grouped_forward(xpad, weight, groups, sh, sw, ho, wo)
        if bias is not None:
            out += bias
        cache = ConvCache(xpad, weight, bias is not None, (sh, sw), (ph, pw), groups, channels_last, True)
    return (out if channels_last else out.transpose(0, 3, 1, 2)), cache


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


def _tap_regions(p: int, q: int, size_in: tuple[int, int], size_out: tuple[int, int], pad: tuple[int, int]):
    """For stride 1, tap (p, q): the output slice whose input pixel exists, and that input slice.

    Output (i, j) reads input (i + p - ph, j + q - pw); rows outside [0, H) are padding.
    Returns None when the tap only ever meets padding.
    """
    (h, w), (ho, wo), (ph, pw) = size_in, size_out, pad
    i0, i1 = max(0, ph - p), min(ho, h + ph - p)
    j0, j1 = max(0, pw - q), min(wo, w + pw - q)
    if i0 >= i1 or j0 >= j1:
        return None
    out_region = (slice(None), slice(i0, i1), slice(j0, j1))
    in_region = (slice(None), slice(i0 + p - ph, i1 + p - ph), slice(j0 + q - pw, j1 + q - pw))
    return out_region, in_region


def _depthwise_s1(
    src: Array, taps: Array, bias: Array | None, dst_size: tuple[int, int], pad: tuple[int, int], transpose: bool
) -> Array:
    """Stride-1 depthwise conv of an NHWC map, chunked over images (cache-sized, threaded).

    Forward (transpose=False): dst[i, j] = b + sum_pq taps[p, q] * src[i + p - ph, j + q - pw].
    Transposed (transpose=True), the input gradient: dst[y, x] = sum_pq taps[p, q] * src[y - p + ph, x - q + pw],
    i.e. every output gradient pushed back onto the input pixels it read.
    """
    xp = get_array_module(src)
    n, hs, ws, c = src.shape
    hd, wd = dst_size
    kh, kw, _ = taps.shape
    dst = xp.empty((n, hd, wd, c), dtype=src.dtype)

    def kernel(start: int, stop: int) -> None:
        s, d = src[start:stop], dst[start:stop]
        if bias is None:
            d[...] = 0
        else:
            d[...] = bias
        for p in range(kh):
            for q in range(kw):
                if transpose:
                    regions = _tap_regions(p, q, (hd, wd), (hs, ws), pad)
                    if regions is None:
                        continue
                    src_region, dst_region = regions
                else:
                    regions = _tap_regions(p, q, (hs, ws), (hd, wd), pad)
                    if regions is None:
                        continue
                    dst_region, src_region = regions
                piece = s[src_region]
                tmp = parallel.scratch("dw_tmp", piece.shape, src.dtype, xp)
                xp.multiply(piece, taps[p, q], out=tmp)
                d[dst_region] += tmp

    parallel.for_each_chunk(n, hd * wd * c, kernel, xp)
    return dst


def _depthwise_s1_weight_grad(g: Array, x: Array, kernel_size: tuple[int, int], pad: tuple[int, int]) -> Array:
    """dtaps[p, q, c] = sum over images and output pixels of g[i, j, c] * x[i + p - ph, j + q - pw, c]."""
    xp = get_array_module(g)
    n, ho, wo, c = g.shape
    _, h, w, _ = x.shape
    kh, kw = kernel_size
    rows = parallel.chunk_rows(ho * wo * c) if xp is np else n
    partial = xp.zeros((-(-n // rows), kh, kw, c), dtype=g.dtype)

    def kernel(start: int, stop: int) -> None:
        gc, xc, acc = g[start:stop], x[start:stop], partial[start // rows]
        for p in range(kh):
            for q in range(kw):
                regions = _tap_regions(p, q, (h, w), (ho, wo), pad)
                if regions is None:
                    continue
                out_region, in_region = regions
                piece = gc[out_region]
                tmp = parallel.scratch("dw_tmp", piece.shape, g.dtype, xp)
                xp.multiply(piece, xc[in_region], out=tmp)
                acc[p, q] = tmp.reshape(-1, c).sum(axis=0)

    parallel.for_each_chunk(n, ho * wo * c, kernel, xp)
    return partial.sum(axis=0)


def _depthwise_forward(xpad: Array, weight: Array, sh: int, sw: int, ho: int, wo: int) -> Array:
    """Strided depthwise conv over the padded input (PVT v2's depthwise convs all have stride 1)."""
    xp = get_array_module(xpad)
    taps = _taps(weight)
    kh, kw, _ = taps.shape
    out = _tap(xpad, 0, 0, sh, sw, ho, wo) * taps[0, 0]
    tmp = xp.empty_like(out)
    for p in range(kh):
        for q in range(kw):
            if p == q == 0:
                continue
            xp.multiply(_tap(xpad, p, q, sh, sw, ho, wo), taps[p, q], out=tmp)
            out += tmp
    return out


def conv2d_backward(dout: Array, cache: ConvCache) -> tuple[Array, Array, Array | None]:
    """Gradients of the conv, with G = dL/dout:

    db[o]       = sum_{n,i,j} G[n,o,i,j]
    dW          = G^T X  per group (X the im2col matrix, rebuilt from the cached padded input)
    dX          = G W    per group, then col2im: each tap (p, q) slice-adds its column block
                  back onto the input pixels it read (kh*kw strided slice-adds, no scatter)
    Depthwise:  dw[c,p,q] = sum_{n,i,j} G[n,i,j,c] * xpad[n, i*sh+p, j*sw+q, c],
                dxpad[shifted by (p, q)] += w[c,p,q] * G  (for stride 1: the same shifted
                multiply-adds as the forward, run in the opposite direction).
    Returns (dx, dW, db); db is None when there was no bias.
    """
    xp = get_array_module(dout)
    x, weight, has_bias, (sh, sw), (ph, pw), groups, channels_last, padded = cache
    g = dout if channels_last else dout.transpose(0, 2, 3, 1)
    o = g.shape[3]
    c = x.shape[3]
    if groups == c == o and not padded:
        g = xp.ascontiguousarray(g)
        kh, kw = weight.shape[2:]
        db = g.reshape(-1, o).sum(axis=0) if has_bias else None
        dx = _depthwise_s1(g, _taps(weight), None, x.shape[1:3], (ph, pw), transpose=True)
        dtaps = _depthwise_s1_weight_grad(g, x, (kh, kw), (ph, pw))
        dw = xp.ascontiguousarray(dtaps.transpose(2, 0, 1)[:, None])
        return (dx if channels_last else dx.transpose(0, 3, 1, 2)), dw, db
    db = g.sum(axis=(0, 1, 2)) if has_bias else None
    if groups == c == o:
        dxpad, dw = _depthwise_backward(g, x, weight, sh, sw)
    else:
        dxpad, dw = _grouped_backward(g, x, weight, groups, sh, sw)
    hp, wp = x.shape[1:3]
    dx = dxpad[:, ph : hp - ph, pw : wp - pw, :]
    return (dx if channels_last else dx.transpose(0, 3, 1, 2)), dw, db


def _grouped_backward(g: Array, xpad: Array, weight: Array, groups: int, sh: int, sw: int) -> tuple[Array, Array]:
    xp = get_array_module(g)
    n, ho, wo, o = g.shape
    _, cg, kh, kw = weight.shape
    m, og = n * ho * wo, o // groups
    g_mat = g.reshape(m, groups, og).transpose(1, 0, 2)  # (G, M, O/G)
    cols = _im2col(xpad, kh, kw, groups, sh, sw, ho, wo)
    dw_mat = g_mat.transpose(0, 2, 1) @ cols  # (G, O/G, K)
    dw = dw_mat.reshape(groups, og, kh, kw, cg).transpose(0, 1, 4, 2, 3).reshape(o, cg, kh, kw)
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


def _depthwise_backward(g: Array, xpad: Array, weight: Array, sh: int, sw: int) -> tuple[Array, Array]:
    xp = get_array_module(g)
    _, ho, wo, c = g.shape
    taps = _taps(weight)
    kh, kw, _ = taps.shape
    dtaps = xp.empty((kh, kw, c), dtype=g.dtype)
    dxpad = xp.zeros(xpad.shape, dtype=g.dtype)
    tmp = xp.empty_like(g)
    for p in range(kh):
        for q in range(kw):
            xp.multiply(g, _tap(xpad, p, q, sh, sw, ho, wo), out=tmp)
            dtaps[p, q] = tmp.reshape(-1, c).sum(axis=0)
            xp.multiply(g, taps[p, q], out=tmp)
            _tap(dxpad, p, q, sh, sw, ho, wo)[...] += tmp
    return dxpad, xp.ascontiguousarray(dtaps.transpose(2, 0, 1)[:, None])
