"""2-D convolution (cross-correlation, as torch.nn.functional.conv2d): the public op, which picks the kind
of conv and the device; the math lives in :mod:`pvt_np.ops.conv_dense` (dense and grouped, im2col GEMM)
and :mod:`pvt_np.ops.conv_depthwise`.

Internally everything runs channels-last (N, H, W, C): PVT v2 keeps its
activations as tokens (N, H*W, C), which are NHWC maps without a copy, and
channels-last makes both the im2col rows and the depthwise taps contiguous.
The public functions also take and return NCHW (``channels_last=False``).
Weights always have torch's layout (out_channels, in_channels/groups, kh, kw).
"""

from __future__ import annotations

from typing import NamedTuple

from pvt_np.backend import Array, get_array_module
from pvt_np.ops import conv_dense, conv_depthwise, cuda
from pvt_np.ops.checks import check_conv2d
from pvt_np.ops.conv_windows import Geometry, pad_nhwc


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
) -> tuple[Array, ConvCache]:
    """out[n,o,i,j] = b[o] + sum_{c in group(o), p, q} w[o,c,p,q] * xpad[n, c, i*sh+p, j*sw+q].

    A strided view of the padded input gives every kernel window without a copy,
    win[n, i, j, p, q, c] = xpad[n, i*sh+p, j*sw+q, c]. Dense and grouped convs
    copy it into the im2col matrix X (rows: output pixels, columns: kh*kw*C/groups
    taps) and do one GEMM per group, out = X W^T (:mod:`pvt_np.ops.conv_dense`). Depthwise
    (groups == C == O) has nothing to share across channels, so it contracts the view directly:
    out[n,i,j,c] = sum_pq win[n,i,j,p,q,c] * w[c,p,q], one einsum pass per chunk of
    images on NumPy; on the GPU one CUDA kernel (:mod:`pvt_np.ops.conv_depthwise`).
    """
    (sh, sw), (ph, pw), (ho, wo) = check_conv2d(x, weight, bias, stride, padding, groups, channels_last, layer)
    x_nhwc = x if channels_last else x.transpose(0, 2, 3, 1)
    c = x_nhwc.shape[3]
    o, _, kh, kw = weight.shape
    geo = Geometry(kh, kw, sh, sw, ph, pw, ho, wo)
    gpu = cuda.active(get_array_module(x))  # the device is chosen here, for every kind
    if groups == c == o:
        kept = x_nhwc
        forward = conv_depthwise.forward_gpu if gpu else conv_depthwise.forward_cpu
        out = forward(x_nhwc, weight, bias, geo)
    elif groups == 1:
        kept = pad_nhwc(x_nhwc, ph, pw)
        forward = conv_dense.forward_gpu if gpu else conv_dense.forward_cpu
        out = forward(kept, weight, bias, geo)
    else:  # grouped: batched products, the same code on either device
        kept = pad_nhwc(x_nhwc, ph, pw)
        out = conv_dense.grouped_forward(kept, weight, bias, groups, geo)
    cache = ConvCache(kept, weight, bias is not None, (sh, sw), (ph, pw), groups, channels_last)
    return (out if channels_last else out.transpose(0, 3, 1, 2)), cache


def conv2d_backward(dout: Array, cache: ConvCache, input_grad: bool = True) -> tuple[Array | None, Array, Array | None]:
    """Gradients of the conv, with G = dL/dout:

    db[o]       = sum_{n,i,j} G[n,o,i,j]
    dW          = G^T X  per group (X the im2col matrix, rebuilt from the cached padded input)
    dX          = G W    per group, then col2im: each tap (p, q) slice-adds its column block
                  back onto the input pixels it read (kh*kw strided slice-adds, no scatter;
                  on the GPU one CUDA kernel gathers each pixel's terms)
    Depthwise:  dw[c,p,q] = sum_{n,i,j} G[n,i,j,c] * win[n,i,j,p,q,c]   (one einsum per chunk;
                on the GPU a CUDA kernel)
                (win from the cached unpadded input, each chunk padding its own images)
                dX: with stride 1 every output pixel's gradient flows back to the pixels it
                read, which is a stride-1 depthwise conv of G (padded by k-1-pad) with the
                kernel flipped, computed for the input's pixels only; other strides
                slice-add w[c,p,q] * G per tap; the GPU gathers each input pixel's terms
                in a CUDA kernel.
    Returns (dx, dW, db); db is None when there was no bias, dx is None with
    ``input_grad=False`` (an image fed to the stem needs no gradient: col2im skipped).
    """
    x, weight, has_bias, (sh, sw), (ph, pw), groups, channels_last = cache
    g = dout if channels_last else dout.transpose(0, 2, 3, 1)
    _n, ho, wo, o = g.shape
    c = x.shape[3]
    geo = Geometry(weight.shape[2], weight.shape[3], sh, sw, ph, pw, ho, wo)
    gpu = cuda.active(get_array_module(g))  # the device is chosen here, for every kind
    if groups == c == o:
        backward = conv_depthwise.backward_gpu if gpu else conv_depthwise.backward_cpu
        dx, dw, db = backward(g, x, weight, geo, has_bias, input_grad)
    elif groups == 1:
        backward = conv_dense.backward_gpu if gpu else conv_dense.backward_cpu
        dx, dw, db = backward(g, x, weight, geo, has_bias, input_grad)
    else:
        dx, dw, db = conv_dense.grouped_backward(g, x, weight, groups, geo, has_bias, input_grad)
    if dx is None:
        return None, dw, db
    return (dx if channels_last else dx.transpose(0, 3, 1, 2)), dw, db
