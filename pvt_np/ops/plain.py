"""The plain implementation of every op: each formula as it reads, the ground truth the fast ops are tested against.

Every function here has the signature and the ``forward(...) -> (out, cache)`` /
``backward(dout, cache) -> grads`` contract of its fast twin in
``pvt_np/ops/<family>.py``, and ``with pvt_np.ops.use_plain(): ...`` runs whole
models on them (see :mod:`pvt_np.ops.dispatch`). Plain means: the whole-array
expression of the formula (``x.mean(axis=-1)``, ``q @ k^T``), a Python loop only
where the formula is a sum over kernel taps or pooling windows, and each
backward written term by term from the derivation in its docstring. No strided
views, no threads, no scratch buffers, no in-place reuse of an input.

Both implementations share two things on purpose: the input checks
(:mod:`pvt_np.ops.checks`, so they refuse bad input with the same message) and
the dropout-mask draw (:func:`pvt_np.ops.dropout.keep_mask`, so the same
generator state gives the same mask and a model agrees in train mode).

Each cache is a NamedTuple of its own (``Plain...Cache``), so a backward handed
the fast implementation's cache (or the reverse) is refused by the dispatcher instead
of computing garbage.

Notation: G = dL/dout, the gradient arriving at the op's output.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from pvt_np.backend import Array, get_array_module, get_rng
from pvt_np.ops.activation import erf
from pvt_np.ops.checks import (
    check_adaptive_avg_pool2d,
    check_array,
    check_attention,
    check_conv2d,
    check_cross_entropy,
    check_drop_path,
    check_dropout,
    check_gelu,
    check_group_norm,
    check_interpolate,
    check_layer_norm,
    check_linear,
    check_softmax,
    check_token_mean,
)
from pvt_np.ops.dropout import keep_mask


# -- linear ------------------------------------------------------------------------------
class PlainLinearCache(NamedTuple):
    x: Array
    weight: Array
    has_bias: bool


def linear_forward(
    x: Array, weight: Array, bias: Array | None = None, *, layer: str = "linear"
) -> tuple[Array, PlainLinearCache]:
    """y = x W^T + b, over any leading dimensions of x (..., in); W (out, in), b (out,)."""
    check_linear(x, weight, bias, layer)
    y = x @ weight.T
    if bias is not None:
        y = y + bias
    return y, PlainLinearCache(x, weight, bias is not None)


def linear_backward(dout: Array, cache: PlainLinearCache) -> tuple[Array, Array, Array | None]:
    """y[m, o] = sum_i x[m, i] W[o, i] + b[o] (m runs over all leading positions), so

    dx[m, i] = sum_o G[m, o] W[o, i]        dx = G W
    dW[o, i] = sum_m G[m, o] x[m, i]        dW = G^T x   (leading dimensions flattened into m)
    db[o]    = sum_m G[m, o]
    Returns (dx, dW, db); db is None when there was no bias.
    """
    x, weight, has_bias = cache
    dx = dout @ weight
    g_rows = dout.reshape(-1, weight.shape[0])
    x_rows = x.reshape(-1, weight.shape[1])
    dweight = g_rows.T @ x_rows
    dbias = g_rows.sum(axis=0) if has_bias else None
    return dx, dweight, dbias


# -- conv2d ------------------------------------------------------------------------------
class PlainConv2dCache(NamedTuple):
    xpad: Array  # the zero-padded input, channels last (N, H + 2 ph, W + 2 pw, C)
    weight: Array
    has_bias: bool
    stride: tuple[int, int]
    padding: tuple[int, int]
    groups: int
    channels_last: bool


def _tap_slices(p: int, q: int, stride: tuple[int, int], out_size: tuple[int, int]) -> tuple[slice, slice]:
    """Rows and columns of the padded input that kernel tap (p, q) meets: i*sh + p for i < Ho, j*sw + q for j < Wo."""
    (sh, sw), (ho, wo) = stride, out_size
    return slice(p, p + sh * (ho - 1) + 1, sh), slice(q, q + sw * (wo - 1) + 1, sw)


def conv2d_forward(
    x: Array,
    weight: Array,
    bias: Array | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    groups: int = 1,
    channels_last: bool = False,
    *,
    layer: str = "conv2d",
) -> tuple[Array, PlainConv2dCache]:
    """Cross-correlation, as torch.nn.functional.conv2d, one kernel tap at a time:

    out[n, i, j, o] = b[o] + sum_{p, q} sum_{c in group(o)} xpad[n, i*sh + p, j*sw + q, c] * W[o, c, p, q]

    With the channels split into G groups (c = g*Cg + c', o = g*Og + o'), each tap
    (p, q) adds einsum('nhwgc,goc->nhwgo', xpad tap, W tap). Dense (G = 1), grouped
    and depthwise (G = C) convolutions are this one formula. Input NCHW, or NHWC
    with ``channels_last``; W is torch's (O, C/G, kh, kw).
    """
    stride, padding, out_size = check_conv2d(x, weight, bias, stride, padding, groups, channels_last, layer)
    xp = get_array_module(x)
    x_nhwc = x if channels_last else x.transpose(0, 2, 3, 1)
    (ph, pw), (ho, wo) = padding, out_size
    xpad = xp.pad(x_nhwc, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    n = x_nhwc.shape[0]
    o, cg, kh, kw = weight.shape
    w_groups = weight.reshape(groups, o // groups, cg, kh, kw)  # W[g*Og + o', c', p, q]
    out = xp.zeros((n, ho, wo, groups, o // groups), dtype=x.dtype)
    for p in range(kh):
        for q in range(kw):
            rows, cols = _tap_slices(p, q, stride, out_size)
            x_tap = xpad[:, rows, cols, :].reshape(n, ho, wo, groups, cg)
            out = out + xp.einsum("nhwgc,goc->nhwgo", x_tap, w_groups[:, :, :, p, q])
    out = out.reshape(n, ho, wo, o)
    if bias is not None:
        out = out + bias
    cache = PlainConv2dCache(xpad, weight, bias is not None, stride, padding, groups, channels_last)
    return (out if channels_last else out.transpose(0, 3, 1, 2)), cache


def conv2d_backward(
    dout: Array, cache: PlainConv2dCache, input_grad: bool = True
) -> tuple[Array | None, Array, Array | None]:
    """Differentiating the forward's sum term by term, per tap (p, q) and group g:

    db[o]          = sum_{n,i,j} G[n, i, j, o]
    dW[o, c, p, q] = sum_{n,i,j} G[n, i, j, o] * xpad[n, i*sh + p, j*sw + q, c]
    dxpad[n, i*sh + p, j*sw + q, c] += sum_{o in group(c)} G[n, i, j, o] * W[o, c, p, q]
    (every input pixel collects the gradient of each output that read it), and dx is
    dxpad without its padding border. Returns (dx, dW, db); db is None without a
    bias, dx is None with ``input_grad=False`` (nothing needs it, e.g. the images).
    """
    xpad, weight, has_bias, stride, (ph, pw), groups, channels_last = cache
    xp = get_array_module(dout)
    g_nhwc = dout if channels_last else dout.transpose(0, 2, 3, 1)
    n, ho, wo, o = g_nhwc.shape
    _, cg, kh, kw = weight.shape
    g_groups = g_nhwc.reshape(n, ho, wo, groups, o // groups)
    w_groups = weight.reshape(groups, o // groups, cg, kh, kw)
    dbias = g_nhwc.sum(axis=(0, 1, 2)) if has_bias else None
    dweight = xp.zeros((groups, o // groups, cg, kh, kw), dtype=dout.dtype)
    dxpad = xp.zeros(xpad.shape, dtype=dout.dtype) if input_grad else None
    for p in range(kh):
        for q in range(kw):
            rows, cols = _tap_slices(p, q, stride, (ho, wo))
            x_tap = xpad[:, rows, cols, :].reshape(n, ho, wo, groups, cg)
            dweight[:, :, :, p, q] = xp.einsum("nhwgo,nhwgc->goc", g_groups, x_tap)
            if dxpad is not None:
                dx_tap = xp.einsum("nhwgo,goc->nhwgc", g_groups, w_groups[:, :, :, p, q])
                dxpad[:, rows, cols, :] += dx_tap.reshape(n, ho, wo, groups * cg)
    dweight = dweight.reshape(weight.shape)
    if dxpad is None:
        return None, dweight, dbias
    dx = dxpad[:, ph : dxpad.shape[1] - ph, pw : dxpad.shape[2] - pw, :]
    return (dx if channels_last else dx.transpose(0, 3, 1, 2)), dweight, dbias


# -- layer norm --------------------------------------------------------------------------
class PlainLayerNormCache(NamedTuple):
    xhat: Array
    rstd: Array
    weight: Array


def layer_norm_forward(
    x: Array, weight: Array, bias: Array, eps: float = 1e-5, *, layer: str = "layer_norm"
) -> tuple[Array, PlainLayerNormCache]:
    """Over the last dimension (size C):

    mean = x.mean(-1),  var = ((x - mean)^2).mean(-1)  (biased, as torch),
    rstd = 1 / sqrt(var + eps),  xhat = (x - mean) * rstd,  y = xhat * weight + bias.
    """
    check_layer_norm(x, weight, bias, layer)
    xp = get_array_module(x)
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    rstd = 1.0 / xp.sqrt(var + eps)
    xhat = (x - mean) * rstd
    y = xhat * weight + bias
    return y, PlainLayerNormCache(xhat, rstd, weight)


def layer_norm_backward(dout: Array, cache: PlainLayerNormCache) -> tuple[Array, Array, Array]:
    """With g = G * weight (the gradient reaching xhat) and means over the last dimension:

    dbias   = sum over rows of G,   dweight = sum over rows of G * xhat
    xhat = (x - mean) * rstd depends on x directly, through mean and through var:
    dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
          direct   via mean     via var  (d var / dx_i = 2 (x_i - mean) / C)
    Returns (dx, dweight, dbias).
    """
    xhat, rstd, weight = cache
    rows = dout.reshape(-1, weight.shape[0])
    dbias = rows.sum(axis=0)
    dweight = (rows * xhat.reshape(rows.shape)).sum(axis=0)
    g = dout * weight
    through_mean = g.mean(axis=-1, keepdims=True)
    through_var = xhat * (g * xhat).mean(axis=-1, keepdims=True)
    dx = rstd * (g - through_mean - through_var)
    return dx, dweight, dbias


class PlainGroupNormCache(NamedTuple):
    xhat: Array  # (N, G, C/G, S): the channels-first map, one axis per group
    rstd: Array  # (N, G, 1, 1)
    weight: Array
    shape: tuple[int, ...]  # the input's
    channels_last: bool


def _channels_first(a: Array, channels_last: bool) -> Array:
    """(N, C, *) as (N, C, S); a channels-last (N, *, C) map is transposed to it first."""
    n, c = a.shape[0], a.shape[-1 if channels_last else 1]
    return a.reshape(n, -1, c).transpose(0, 2, 1) if channels_last else a.reshape(n, c, -1)


def _back_to_input_layout(a: Array, shape: tuple[int, ...], channels_last: bool) -> Array:
    """(N, C, S) -> the input's layout and shape."""
    return a.transpose(0, 2, 1).reshape(shape) if channels_last else a.reshape(shape)


def group_norm_forward(
    x: Array,
    weight: Array,
    bias: Array,
    num_groups: int,
    eps: float = 1e-5,
    channels_last: bool = False,
    *,
    layer: str = "group_norm",
) -> tuple[Array, PlainGroupNormCache]:
    """torch.nn.functional.group_norm on (N, C, *) maps, or (N, *, C) with ``channels_last``: the C channels
    fall into G = num_groups groups of C/G consecutive channels, and per sample n and group k, over the
    m = (C/G) * S elements of the group's channels at all S positions:

    mean = x.mean(),  var = ((x - mean)^2).mean()  (biased, as torch),
    rstd = 1 / sqrt(var + eps),  xhat = (x - mean) * rstd,  y[n, c, s] = xhat[n, c, s] * weight[c] + bias[c].
    """
    groups, c = check_group_norm(x, num_groups, weight, bias, channels_last, layer)
    xp = get_array_module(x)
    n = x.shape[0]
    xg = _channels_first(x, channels_last).reshape(n, groups, c // groups, -1)
    mean = xg.mean(axis=(2, 3), keepdims=True)
    var = ((xg - mean) ** 2).mean(axis=(2, 3), keepdims=True)
    rstd = 1.0 / xp.sqrt(var + eps)
    xhat = (xg - mean) * rstd
    y = xhat.reshape(n, c, -1) * weight[:, None] + bias[:, None]
    return _back_to_input_layout(y, x.shape, channels_last), PlainGroupNormCache(
        xhat, rstd, weight, tuple(x.shape), channels_last
    )


def group_norm_backward(dout: Array, cache: PlainGroupNormCache) -> tuple[Array, Array, Array]:
    """Layer norm's derivation with a group's m elements in place of a row's C. With g = G * weight[c] (the
    gradient reaching xhat) and means over each (sample, group):

    dbias[c] = sum over samples and positions of G[n, c, s],  dweight[c] = the same sum of G * xhat
    xhat = (x - mean) * rstd depends on x directly, through mean and through var:
    dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
          direct   via mean     via var  (d var / dx_i = 2 (x_i - mean) / m)
    Returns (dx, dweight, dbias).
    """
    xhat, rstd, weight, shape, channels_last = cache
    n, groups, per_group, _ = xhat.shape
    c = groups * per_group
    gc = _channels_first(dout, channels_last)  # (N, C, S)
    dbias = gc.sum(axis=(0, 2))
    dweight = (gc * xhat.reshape(n, c, -1)).sum(axis=(0, 2))
    g = (gc * weight[:, None]).reshape(xhat.shape)
    through_mean = g.mean(axis=(2, 3), keepdims=True)
    through_var = xhat * (g * xhat).mean(axis=(2, 3), keepdims=True)
    dx = rstd * (g - through_mean - through_var)
    return _back_to_input_layout(dx.reshape(n, c, -1), shape, channels_last), dweight, dbias


# -- pointwise ---------------------------------------------------------------------------
class PlainGeluCache(NamedTuple):
    x: Array | None  # None when the forward ran with need_grad=False
    approximate: str


_SQRT_2 = math.sqrt(2.0)
_SQRT_2PI = math.sqrt(2.0 * math.pi)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_TANH_COEF = 0.044715


def gelu_forward(
    x: Array, approximate: str = "none", need_grad: bool = True, *, layer: str = "gelu"
) -> tuple[Array, PlainGeluCache]:
    """torch.nn.GELU's two forms:

    'none': y = x * Phi(x),  Phi(x) = (1 + erf(x / sqrt 2)) / 2, the normal CDF
    'tanh': y = x/2 * (1 + tanh(u)),  u = sqrt(2/pi) * (x + 0.044715 x^3)
    The cache keeps x (None with ``need_grad=False``: inference keeps nothing).
    """
    check_gelu(x, approximate, layer)
    xp = get_array_module(x)
    if approximate == "none":
        y = x * 0.5 * (1.0 + erf(x / _SQRT_2))
    else:
        y = 0.5 * x * (1.0 + xp.tanh(_SQRT_2_OVER_PI * (x + _TANH_COEF * x**3)))
    return y, PlainGeluCache(x if need_grad else None, approximate)


def gelu_backward(dout: Array, cache: PlainGeluCache) -> Array:
    """dx = G * dy/dx, by the product and chain rules:

    'none': dy/dx = Phi(x) + x * phi(x),  phi(x) = exp(-x^2 / 2) / sqrt(2 pi) = Phi'(x)
    'tanh': dy/dx = (1 + t)/2 + x/2 * (1 - t^2) * du/dx,  t = tanh(u),
            du/dx = sqrt(2/pi) * (1 + 3 * 0.044715 x^2)
    """
    x, approximate = cache
    if x is None:
        raise RuntimeError("gelu_backward: the forward ran with need_grad=False and kept no input")
    xp = get_array_module(x)
    if approximate == "none":
        cdf = 0.5 * (1.0 + erf(x / _SQRT_2))
        pdf = xp.exp(-0.5 * x**2) / _SQRT_2PI
        return dout * (cdf + x * pdf)
    t = xp.tanh(_SQRT_2_OVER_PI * (x + _TANH_COEF * x**3))
    du_dx = _SQRT_2_OVER_PI * (1.0 + 3.0 * _TANH_COEF * x**2)
    return dout * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t**2) * du_dx)


class PlainReluCache(NamedTuple):
    x: Array


def relu_forward(x: Array, *, layer: str = "relu") -> tuple[Array, PlainReluCache]:
    """y = max(x, 0)."""
    check_array(x, layer)
    xp = get_array_module(x)
    return xp.maximum(x, 0), PlainReluCache(x)


def relu_backward(dout: Array, cache: PlainReluCache) -> Array:
    """dy/dx = 1 where x > 0, else 0 (torch's convention at x = 0), so dx = G * (x > 0)."""
    return dout * (cache.x > 0)


class PlainSoftmaxCache(NamedTuple):
    y: Array
    axis: int


def softmax_forward(x: Array, axis: int = -1, *, layer: str = "softmax") -> tuple[Array, PlainSoftmaxCache]:
    """y_i = exp(x_i - max x) / sum_j exp(x_j - max x) along ``axis`` (the max only prevents overflow)."""
    check_softmax(x, axis, layer)
    xp = get_array_module(x)
    e = xp.exp(x - x.max(axis=axis, keepdims=True))
    y = e / e.sum(axis=axis, keepdims=True)
    return y, PlainSoftmaxCache(y, axis)


def softmax_backward(dout: Array, cache: PlainSoftmaxCache) -> Array:
    """dy_j/dx_i = y_j (delta_ij - y_i), so dx_i = sum_j G_j y_j (delta_ij - y_i) = y_i (G_i - sum_j G_j y_j)."""
    y, axis = cache
    return y * (dout - (dout * y).sum(axis=axis, keepdims=True))


# -- attention ---------------------------------------------------------------------------
class PlainAttentionCache(NamedTuple):
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
    layer: str = "attention",
) -> tuple[Array, PlainAttentionCache]:
    """Per batch and head, with q (N, d), k and v (M, d):

    S = q k^T * scale  (N, M),   P = softmax(S) over the M keys,
    P' = P * m / (1 - p)  (attention dropout, m ~ Bernoulli(1 - p), drawn by keep_mask),
    out = P' v  (N, d).   scale defaults to d**-0.5.
    """
    p = check_attention(q, k, v, dropout_p, layer)
    xp = get_array_module(q, k, v)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    scores = (q @ k.transpose(0, 1, 3, 2)) * scale
    probs, _ = softmax_forward(scores, axis=-1)
    keep = None
    dropped = probs
    if p > 0.0:
        keep = keep_mask(get_rng(xp) if rng is None else rng, probs.shape, p, probs.dtype)
        dropped = probs * keep
    return dropped @ v, PlainAttentionCache(q, k, v, probs, keep, scale)


def attention_backward(dout: Array, cache: PlainAttentionCache) -> tuple[Array, Array, Array]:
    """Backwards through the forward's four steps:

    out = P' v         ->  dv = P'^T G,   dP' = G v^T
    P' = P * keep      ->  dP = dP' * keep
    P = softmax(S)     ->  dS = P * (dP - rowsum(dP * P))   (softmax_backward)
    S = q k^T * scale  ->  dq = dS k * scale,   dk = dS^T q * scale
    Returns (dq, dk, dv).
    """
    q, k, v, probs, keep, scale = cache
    dropped = probs if keep is None else probs * keep
    dv = dropped.transpose(0, 1, 3, 2) @ dout
    ddropped = dout @ v.transpose(0, 1, 3, 2)
    dprobs = ddropped if keep is None else ddropped * keep
    dscores = softmax_backward(dprobs, PlainSoftmaxCache(probs, -1))
    dq = (dscores @ k) * scale
    dk = (dscores.transpose(0, 1, 3, 2) @ q) * scale
    return dq, dk, dv


# -- pooling -----------------------------------------------------------------------------
class PlainAdaptiveAvgPool2dCache(NamedTuple):
    in_size: tuple[int, int]
    out_size: tuple[int, int]
    channels_last: bool


def _window(i: int, in_size: int, out_size: int) -> slice:
    """torch's adaptive window of output i: floor(i * H / P) <= h < ceil((i + 1) * H / P)."""
    return slice((i * in_size) // out_size, -((-(i + 1) * in_size) // out_size))


def adaptive_avg_pool2d_forward(
    x: Array, output_size: int | tuple[int, int], channels_last: bool = False, *, layer: str = "adaptive_avg_pool2d"
) -> tuple[Array, PlainAdaptiveAvgPool2dCache]:
    """out[n, i, j, c] = mean of x[n, h, w, c] over the window rows(i) x cols(j) (see _window);

    windows overlap when H is not a multiple of P. One mean per output window.
    """
    out_h, out_w = check_adaptive_avg_pool2d(x, output_size, channels_last, layer)
    xp = get_array_module(x)
    x_nhwc = x if channels_last else x.transpose(0, 2, 3, 1)
    n, h, w, c = x_nhwc.shape
    out = xp.zeros((n, out_h, out_w, c), dtype=x.dtype)
    for i in range(out_h):
        for j in range(out_w):
            out[:, i, j, :] = x_nhwc[:, _window(i, h, out_h), _window(j, w, out_w), :].mean(axis=(1, 2))
    cache = PlainAdaptiveAvgPool2dCache((h, w), (out_h, out_w), channels_last)
    return (out if channels_last else out.transpose(0, 3, 1, 2)), cache


def adaptive_avg_pool2d_backward(dout: Array, cache: PlainAdaptiveAvgPool2dCache) -> Array:
    """Each input pixel of window (i, j) contributed 1 / |window| to out[i, j], so

    dx[n, h, w, c] = sum over the windows (i, j) holding (h, w) of G[n, i, j, c] / |window(i, j)|
    (a sum where windows overlap).
    """
    (h, w), (out_h, out_w), channels_last = cache
    xp = get_array_module(dout)
    g = dout if channels_last else dout.transpose(0, 2, 3, 1)
    dx = xp.zeros((g.shape[0], h, w, g.shape[3]), dtype=dout.dtype)
    for i in range(out_h):
        for j in range(out_w):
            rows, cols = _window(i, h, out_h), _window(j, w, out_w)
            area = (rows.stop - rows.start) * (cols.stop - cols.start)
            dx[:, rows, cols, :] += g[:, i : i + 1, j : j + 1, :] / area
    return dx if channels_last else dx.transpose(0, 3, 1, 2)


class PlainInterpolateCache(NamedTuple):
    in_size: tuple[int, int]
    taps: tuple[list[list[tuple[int, float]]], list[list[tuple[int, float]]]]  # rows', columns' (source, weight)
    channels_last: bool


def _interpolation_taps(
    in_size: int, out_size: int, scale_factor: float | None, mode: str, real: type
) -> list[list[tuple[int, float]]]:
    """For each output index d of one axis, its (source index, weight) pairs, by torch's rules.

    The scale is s = 1 / scale_factor when a scale factor was given, else s = in / out, in the map's dtype
    ``real`` (torch computes a float32 map's coordinates in float32; nearest always in float32).
    An axis whose size does not change is copied, whatever its scale factor (torch's shortcut; the checks
    then pass scale_factor None, so s = 1).
    nearest (torch's legacy mode): src = min(floor(d * s), in - 1), weight 1; d // 2 when out == 2 * in
    (torch's shortcut, which can differ from the formula when a scale factor near 2 was given).
    bilinear, align_corners=False (half-pixel centres): x = max(s (d + 1/2) - 1/2, 0),
    i = min(floor(x), in - 1), l = min(max(x - i, 0), 1), taps (i, 1 - l) and (min(i + 1, in - 1), l).
    """
    taps = []
    for d in range(out_size):
        if mode == "nearest":
            if out_size == 2 * in_size:
                src = d // 2
            else:
                f32 = np.float32
                s = f32(1.0 / scale_factor) if scale_factor is not None else f32(in_size) / f32(out_size)
                src = min(math.floor(f32(d) * s), in_size - 1)
            taps.append([(src, 1.0)])
        else:
            s = real(1.0 / scale_factor) if scale_factor is not None else real(in_size) / real(out_size)
            x = max(s * (real(d) + real(0.5)) - real(0.5), real(0))
            i = min(math.floor(x), in_size - 1)
            lam = min(max(x - real(i), real(0)), real(1))
            taps.append([(i, real(1) - lam), (min(i + 1, in_size - 1), lam)])
    return taps


def interpolate_forward(
    x: Array,
    size: int | tuple[int, int] | None = None,
    scale_factor: float | tuple[float, float] | None = None,
    mode: str = "nearest",
    channels_last: bool = False,
    *,
    layer: str = "interpolate",
) -> tuple[Array, PlainInterpolateCache]:
    """torch.nn.functional.interpolate(x, size or scale_factor, mode) on (N, C, H, W) or (N, H, W, C) maps,
    'nearest' or 'bilinear' with align_corners=False; the output size is ``size``, or floor(in * scale_factor)
    per axis, whose scale factor then also sets the coordinate map (torch's recompute_scale_factor=None; for
    its recompute_scale_factor=True pass the output size instead).

    out[n, i, j, c] = sum over the row taps (p, a) of i and the column taps (q, b) of j of a * b * x[n, p, q, c],
    the taps of each axis as :func:`_interpolation_taps` states them: one tap of weight 1 for nearest, two
    for bilinear (so four terms, a weighted mean of the 2 x 2 pixels around the source point).
    """
    (out_h, out_w), (sh, sw) = check_interpolate(x, size, scale_factor, mode, channels_last, layer)
    xp = get_array_module(x)
    x_nhwc = x if channels_last else x.transpose(0, 2, 3, 1)
    n, h, w, c = x_nhwc.shape
    real = np.dtype(x.dtype).type
    rows = _interpolation_taps(h, out_h, sh, mode, real)
    cols = _interpolation_taps(w, out_w, sw, mode, real)
    out = xp.zeros((n, out_h, out_w, c), dtype=x.dtype)
    for i in range(out_h):
        for j in range(out_w):
            for p, a in rows[i]:
                for q, b in cols[j]:
                    out[:, i, j, :] += (a * b) * x_nhwc[:, p, q, :]
    cache = PlainInterpolateCache((h, w), (rows, cols), channels_last)
    return (out if channels_last else out.transpose(0, 3, 1, 2)), cache


def interpolate_backward(dout: Array, cache: PlainInterpolateCache) -> Array:
    """The forward is linear in x with d out[n, i, j, c] / d x[n, p, q, c] = a * b for each tap pair
    ((p, a), (q, b)) of (i, j), and 0 elsewhere, so

    dx[n, p, q, c] = sum over the outputs (i, j) with a tap pair at (p, q) of a * b * G[n, i, j, c]:
    the transpose of the interpolation, a scatter-add of G with the forward's weights (several outputs
    share a source when upsampling; pixels no output reads get 0 when downsampling).
    """
    (h, w), (rows, cols), channels_last = cache
    xp = get_array_module(dout)
    g = dout if channels_last else dout.transpose(0, 2, 3, 1)
    dx = xp.zeros((g.shape[0], h, w, g.shape[3]), dtype=dout.dtype)
    for i in range(len(rows)):
        for j in range(len(cols)):
            for p, a in rows[i]:
                for q, b in cols[j]:
                    dx[:, p, q, :] += (a * b) * g[:, i, j, :]
    return dx if channels_last else dx.transpose(0, 3, 1, 2)


class PlainTokenMeanCache(NamedTuple):
    num_tokens: int


def token_mean_forward(x: Array, *, layer: str = "token_mean") -> tuple[Array, PlainTokenMeanCache]:
    """y[b, c] = (1/N) sum_t x[b, t, c]: tokens (B, N, C) -> (B, C)."""
    check_token_mean(x, layer)
    return x.mean(axis=1), PlainTokenMeanCache(x.shape[1])


def token_mean_backward(dout: Array, cache: PlainTokenMeanCache) -> Array:
    """dy[b, c] / dx[b, t, c] = 1/N for every token t: dx[b, t, c] = G[b, c] / N."""
    xp = get_array_module(dout)
    return xp.repeat(dout[:, None, :] / cache.num_tokens, cache.num_tokens, axis=1)


# -- dropout, drop path ------------------------------------------------------------------
class PlainDropoutCache(NamedTuple):
    keep: Array | None  # the scaled mask m / (1 - p); None when the op was the identity


def dropout_forward(
    x: Array, p: float = 0.5, training: bool = True, rng: Any = None, *, layer: str = "dropout"
) -> tuple[Array, PlainDropoutCache]:
    """y = x * m / (1 - p), m ~ Bernoulli(1 - p) per element; y = x when p == 0 or not training."""
    p = check_dropout(x, p, layer)
    if not training or p == 0.0:
        return x, PlainDropoutCache(None)
    keep = keep_mask(get_rng(get_array_module(x)) if rng is None else rng, x.shape, p, x.dtype)
    return x * keep, PlainDropoutCache(keep)


def dropout_backward(dout: Array, cache: PlainDropoutCache) -> Array:
    """dy/dx = m / (1 - p) elementwise: dx = G * m / (1 - p) (dx = G when the op was the identity)."""
    return dout if cache.keep is None else dout * cache.keep


def drop_path_forward(
    x: Array, p: float = 0.0, training: bool = True, rng: Any = None, *, layer: str = "drop_path"
) -> tuple[Array, PlainDropoutCache]:
    """Stochastic depth: y[n] = x[n] * m[n] / (1 - p), one draw m[n] ~ Bernoulli(1 - p) per sample."""
    p = check_drop_path(x, p, layer)
    if not training or p == 0.0:
        return x, PlainDropoutCache(None)
    mask_shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    keep = keep_mask(get_rng(get_array_module(x)) if rng is None else rng, mask_shape, p, x.dtype)
    return x * keep, PlainDropoutCache(keep)


def drop_path_backward(dout: Array, cache: PlainDropoutCache) -> Array:
    """dx[n] = G[n] * m[n] / (1 - p)."""
    return dout if cache.keep is None else dout * cache.keep


# -- cross entropy -----------------------------------------------------------------------
class PlainCrossEntropyCache(NamedTuple):
    log_probs: Array  # the logits' shape, classes on axis 1
    target_probs: Array  # t, zero at ignored positions
    count: Any  # M', the number of counted predictions (an int, or a 0-d array with ignore_index)


def cross_entropy_forward(
    logits: Array,
    target: Array,
    label_smoothing: float = 0.0,
    ignore_index: int | None = None,
    *,
    layer: str = "cross_entropy",
) -> tuple[Array, PlainCrossEntropyCache]:
    """L = -(1/M') sum_p sum_k t[p, k] log softmax(z[p])_k, as torch.nn.functional.cross_entropy
    (reduction='mean'), over the predictions p: the N rows of logits (N, K), or the N * d1 * ... positions of
    logits (N, K, d1, ...) (classes on axis 1, one prediction per pixel for segmentation).

    t is the one-hot of class indices (N, d1, ...) or given probabilities (the logits' shape), mixed with
    the uniform distribution by label smoothing eps: t = (1 - eps) t + eps / K.
    A position whose index equals ``ignore_index`` (None: none) gets t = 0 and is not counted:
    M' = the number of other positions with an index target, every position otherwise (torch's rule).
    When every position is ignored L = 0 / 0 = nan, as torch.
    log softmax(z)_k = z_k - max z - log sum_j exp(z_j - max z).
    """
    eps = check_cross_entropy(logits, target, label_smoothing, ignore_index, layer)
    xp = get_array_module(logits)
    k = logits.shape[1]
    target = xp.asarray(target)
    counted = xp.ones(target.shape[:1] + target.shape[2:] if target.ndim == logits.ndim else target.shape, bool)
    if target.ndim == logits.ndim - 1:
        if ignore_index is not None:
            counted = target != ignore_index
        t = xp.moveaxis(xp.eye(k, dtype=logits.dtype)[xp.where(counted, target, 0)], -1, 1)
    else:
        t = target.astype(logits.dtype)
    t = ((1.0 - eps) * t + eps / k) * xp.expand_dims(counted, 1)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
    total = -(t * log_probs).sum()
    if ignore_index is None or target.ndim == logits.ndim:
        count: Any = counted.size
        loss = total / count
    else:
        count = counted.sum().astype(logits.dtype)
        loss = xp.where(count > 0, total / xp.maximum(count, 1), xp.nan).astype(logits.dtype)
    return loss, PlainCrossEntropyCache(log_probs, t, count)


def cross_entropy_backward(dout: float | Array, cache: PlainCrossEntropyCache) -> Array:
    """dL/dz[p, j] = -(1/M') (t[p, j] - softmax(z[p])_j * sum_k t[p, k]), times dout (1.0 at the top).

    (d log softmax(z)_k / dz_j = delta_kj - softmax(z)_j.) For a probability target
    sum_k t[p, k] = 1 and this is the familiar (softmax(z) - t) / M'. An ignored position has t = 0, so
    its gradient is 0; when all are ignored every gradient is 0 (torch's, under its nan loss).
    """
    log_probs, t, count = cache
    xp = get_array_module(log_probs)
    probs = xp.exp(log_probs)
    # in the logits' dtype: a float64 dout must not promote; max(M', 1): all ignored gives 0, not 0 / 0
    scale = xp.asarray(dout, dtype=log_probs.dtype) / (count if isinstance(count, int) else xp.maximum(count, 1))
    return (probs * t.sum(axis=1, keepdims=True) - t) * scale
