"""What the dense and the depthwise conv share: the window geometry, zero padding, and views of the windows.

Everything is channels-last (N, H, W, C): a window's C values are contiguous, and a strided view
of the padded input gives every window without a copy.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from pvt_np.backend import Array, get_array_module
from pvt_np.ops import parallel


class Geometry(NamedTuple):
    """Where a conv's windows lie: kernel (kh, kw), stride (sh, sw), zero padding (ph, pw), output size (ho, wo).

    Output pixel (i, j) reads, through tap (p, q), input pixel (i*sh + p - ph, j*sw + q - pw).
    """

    kh: int
    kw: int
    sh: int
    sw: int
    ph: int
    pw: int
    ho: int
    wo: int


def pad_nhwc(x: Array, ph: int, pw: int) -> Array:
    """Zero-pad H and W of an NHWC array into a new contiguous array."""
    xp = get_array_module(x)
    n, h, w, c = x.shape
    if ph == 0 and pw == 0:
        return xp.ascontiguousarray(x)
    out = xp.zeros((n, h + 2 * ph, w + 2 * pw, c), dtype=x.dtype)
    out[:, ph : ph + h, pw : pw + w, :] = x
    return out


def pad_into_scratch(x: np.ndarray, ph: int, pw: int, buffer: str) -> np.ndarray:
    """x (a chunk of NHWC images) zero-padded by (ph, pw) in the per-thread scratch buffer ``buffer`` (reused).

    The buffer is shared by every call with this name, so the border is zeroed each time.
    """
    n, h, w, c = x.shape
    out = parallel.scratch(buffer, (n, h + 2 * ph, w + 2 * pw, c), x.dtype)
    out[:, :ph] = 0
    out[:, ph + h :] = 0
    out[:, ph : ph + h, :pw] = 0
    out[:, ph : ph + h, pw + w :] = 0
    out[:, ph : ph + h, pw : pw + w] = x
    return out


def windows(xpad: Array, geo: Geometry) -> Array:
    """Strided view (N, Ho, Wo, kh, kw, C) of every kernel window of the padded input: im2col without a copy."""
    xp = get_array_module(xpad)
    n, _, _, c = xpad.shape
    s_n, s_h, s_w, s_c = xpad.strides
    return xp.lib.stride_tricks.as_strided(
        xpad,
        shape=(n, geo.ho, geo.wo, geo.kh, geo.kw, c),
        strides=(s_n, s_h * geo.sh, s_w * geo.sw, s_h, s_w, s_c),
    )


def row_windows(xpad: np.ndarray, geo: Geometry) -> np.ndarray:
    """Strided view (N, Ho, kh, kw, Wo*C) of a W-stride-1 conv's windows: rows[n, i, p, q] = xpad[n, i*sh+p, q:q+Wo, :].

    With stride 1 along W the Wo output pixels of row i meet, at tap (p, q), one contiguous
    run of Wo*C input elements, so a contraction over this view runs its innermost loop
    over Wo*C elements instead of C (stage 1 of the CIFAR model: 4,096 instead of 256).
    """
    n, _, _, c = xpad.shape
    s_n, s_h, s_w, s_c = xpad.strides
    return np.lib.stride_tricks.as_strided(
        xpad, shape=(n, geo.ho, geo.kh, geo.kw, geo.wo * c), strides=(s_n, s_h * geo.sh, s_h, s_w, s_c)
    )


def tap(xpad: Array, p: int, q: int, geo: Geometry) -> Array:
    """The padded input's pixels that kernel tap (p, q) meets at every output position."""
    sh, sw, ho, wo = geo.sh, geo.sw, geo.ho, geo.wo
    return xpad[:, p : p + sh * (ho - 1) + 1 : sh, q : q + sw * (wo - 1) + 1 : sw, :]
