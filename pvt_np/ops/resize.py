"""Resizing a map: torch's nearest and bilinear (align_corners=False) interpolation."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from pvt_np.backend import Array, get_array_module
from pvt_np.ops import blas
from pvt_np.ops.checks import check_interpolate


def interpolation_matrix(
    xp: Any, in_size: int, out_size: int, scale_factor: float | None, mode: str, dtype: Any
) -> Array:
    """(out_size, in_size) matrix A of one axis' interpolation, out = A @ in, on ``xp``'s device.

    The rows follow torch's rules (see :func:`pvt_np.ops.plain.interpolate_forward` for the formulas): one 1 per
    row for 'nearest', two weights summing to 1 for 'bilinear'. Built once per (sizes, scale factor, mode,
    dtype) on the host and, on a GPU, copied once per device: the result is shared, never write to it (the
    NumPy one is read-only).
    """
    factor = None if scale_factor is None else float(scale_factor)
    key = (int(in_size), int(out_size), factor, mode, np.dtype(dtype).str)
    if xp is np:
        return _host_matrix(*key)
    return _device_matrix(xp, *key, xp.cuda.Device().id)


@functools.lru_cache(maxsize=128)
def _host_matrix(in_size: int, out_size: int, scale_factor: float | None, mode: str, dtype: str) -> np.ndarray:
    rows = np.arange(out_size)
    a = np.zeros((out_size, in_size), dtype=dtype)
    if mode == "nearest":
        a[rows, _nearest_source(in_size, out_size, scale_factor)] = 1.0
    else:
        low, high, frac = _bilinear_taps(in_size, out_size, scale_factor, np.dtype(dtype).type)
        np.add.at(a, (rows, low), 1 - frac)  # add: at the last row both taps are the same pixel
        np.add.at(a, (rows, high), frac)
    a.setflags(write=False)
    return a


@functools.lru_cache(maxsize=128)
def _device_matrix(
    xp: Any, in_size: int, out_size: int, scale_factor: float | None, mode: str, dtype: str, device_id: int
) -> Array:
    """One host-to-device copy per (matrix, device); ``device_id`` keys the cache (arrays live on one GPU)."""
    return xp.asarray(_host_matrix(in_size, out_size, scale_factor, mode, dtype))


def _nearest_source(in_size: int, out_size: int, scale_factor: float | None) -> np.ndarray:
    """torch's legacy nearest source index of every output index, computed as torch computes it (in float32)."""
    dst = np.arange(out_size)
    if out_size == 2 * in_size:
        return dst >> 1
    f32 = np.float32
    scale = f32(1.0 / scale_factor) if scale_factor is not None else f32(in_size) / f32(out_size)
    return np.minimum(np.floor(dst.astype(f32) * scale).astype(np.int64), in_size - 1)


def _bilinear_taps(
    in_size: int, out_size: int, scale_factor: float | None, real: type
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(low, high, frac) of every output index: out = (1 - frac) in[low] + frac in[high], in the dtype ``real``
    (torch computes a float32 map's coordinates in float32)."""
    scale = real(1.0 / scale_factor) if scale_factor is not None else real(in_size) / real(out_size)
    src = np.maximum(scale * (np.arange(out_size, dtype=real) + real(0.5)) - real(0.5), real(0))
    low = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    frac = np.clip(src - low.astype(real), real(0), real(1))
    return low, low + (low < in_size - 1), frac


def interpolate_forward(
    x: Array,
    size: int | tuple[int, int] | None = None,
    scale_factor: float | tuple[float, float] | None = None,
    mode: str = "nearest",
    channels_last: bool = False,
    *,
    layer: str = "interpolate",
) -> tuple[Array, Any]:
    """out = A_h x A_w^T per sample and channel, A the one-axis matrices of :func:`interpolation_matrix`.

    Both modes are separable (a bilinear weight is a product of a row weight and a column weight; a nearest
    source is a row source and a column source), so the resize is two small GEMM-shaped contractions, as
    adaptive pooling: on the GPU each one strided-batched cuBLAS call with the matrix shared
    (:func:`pvt_np.ops.blas.matmul`). A nearest matrix holds one 1 per row, so its product copies each source
    exactly (1 * v plus zeros) for finite inputs.
    """
    (out_h, out_w), (sh, sw) = check_interpolate(x, size, scale_factor, mode, channels_last, layer)
    xp = get_array_module(x)
    h, w = (x.shape[1], x.shape[2]) if channels_last else (x.shape[2], x.shape[3])
    a_h = interpolation_matrix(xp, h, out_h, sh, mode, x.dtype)
    a_w = interpolation_matrix(xp, w, out_w, sw, mode, x.dtype)
    if channels_last:  # W first, then H over rows of out_w * C (adaptive pooling's order, for its reasons)
        n, _, _, c = x.shape
        cols = blas.matmul(a_w, x.reshape(n * h, w, c))
        out = blas.matmul(a_h, cols.reshape(n, h, out_w * c)).reshape(n, out_h, out_w, c)
    else:
        out = blas.matmul(blas.matmul(a_h, x), a_w, trans_b=True)
    return out, (a_h, a_w, channels_last)


def interpolate_backward(dout: Array, cache: Any) -> Array:
    """dx = A_h^T G A_w: the transpose of the forward's linear map, each output's gradient sent back to its
    sources with the forward's weights (and summed where sources are shared)."""
    a_h, a_w, channels_last = cache
    (out_h, h), (out_w, w) = a_h.shape, a_w.shape
    if channels_last:
        n, _, _, c = dout.shape
        rows = blas.matmul(a_h, dout.reshape(n, out_h, out_w * c), trans_a=True)
        return blas.matmul(a_w, rows.reshape(n * h, out_w, c), trans_a=True).reshape(n, h, w, c)
    return blas.matmul(blas.matmul(a_h, dout, trans_a=True), a_w)
