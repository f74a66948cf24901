"""Pointwise activations and softmax."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from pvt_np.backend import Array, get_array_module
from pvt_np.ops import cuda, parallel
from pvt_np.ops.checks import check_array, check_gelu, check_softmax

_SQRT_HALF = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_TANH_COEF = 0.044715


def erf(x: Array) -> Array:
    """The exact error function on either backend (scipy / cupyx.scipy)."""
    xp = get_array_module(x)
    if xp.__name__ == "cupy":
        import cupyx.scipy.special as special
    else:
        import scipy.special as special
    return special.erf(x)


def gelu_forward(
    x: Array, approximate: str = "none", need_grad: bool = True, *, layer: str = "gelu"
) -> tuple[Array, Any]:
    """GELU, torch.nn.GELU's two forms, and its local derivative for the backward.

    'none': y = x * Phi(x),  Phi(x) = (1 + erf(x / sqrt 2)) / 2  (the normal CDF)
            dy/dx = Phi(x) + x * phi(x),  phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
    'tanh': y = x/2 * (1 + t),  t = tanh(u),  u = sqrt(2/pi) * (x + 0.044715 x^3)
            dy/dx = (1 + t)/2 + x/2 * (1 - t^2) * sqrt(2/pi) * (1 + 3 * 0.044715 x^2)
    The cache is dy/dx itself (as large as x, which it replaces): the forward has
    Phi and exp(-x^2/2) at hand, and the backward is one multiply. With
    ``need_grad=False`` (inference) it is not computed and the cache is None.
    float32 on the CPU uses :func:`_gelu_erf_float32` (Phi from a rational
    approximation of erf, see :func:`normal_cdf_float32`) instead of scipy's erf,
    which costs ~10 ns per element. CuPy: the erf form in one CUDA kernel (pvt_np.ops.cuda).
    """
    check_gelu(x, approximate, layer)
    if approximate == "tanh":
        return _gelu_tanh(x, need_grad)
    if cuda.active(get_array_module(x)):
        return cuda.gelu_erf_forward(x, need_grad)
    return _gelu_erf_cpu(x, need_grad)


def _gelu_erf_cpu(x: np.ndarray, need_grad: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """The erf form on NumPy: float32 by :func:`_gelu_erf_float32`, float64 with scipy's erf."""
    if x.dtype == np.float32:
        return _gelu_erf_float32(x, need_grad)
    cdf = erf(x * _SQRT_HALF)
    cdf += 1.0
    cdf *= 0.5
    y = x * cdf
    if not need_grad:
        return y, None
    local = np.exp(-0.5 * x * x)
    local *= _INV_SQRT_2PI
    local *= x
    local += cdf
    return y, local


def _gelu_tanh(x: Array, need_grad: bool) -> tuple[Array, Array | None]:
    """The tanh form, as array expressions (either device)."""
    xp = get_array_module(x)
    x2 = x * x
    t = xp.tanh(_SQRT_2_OVER_PI * x * (1.0 + _TANH_COEF * x2))
    y = 0.5 * x * (1.0 + t)
    if not need_grad:
        return y, None
    local = 0.5 * x * (1.0 - t * t) * (_SQRT_2_OVER_PI * (1.0 + 3.0 * _TANH_COEF * x2))
    local += 0.5 * (1.0 + t)
    return y, local


def gelu_backward(dout: Array, cache: Any) -> Array:
    """dx = dout * dy/dx, with dy/dx cached by the forward (formulas in gelu_forward)."""
    if cache is None:
        raise RuntimeError("gelu_backward: the forward ran with need_grad=False and kept no derivative")
    return dout * cache


# Abramowitz & Stegun 7.1.26: for z >= 0, erfc(z) = t (a1 + t (a2 + t (a3 + t (a4 + t a5)))) exp(-z^2)
# with t = 1 / (1 + p z), absolute error <= 1.5e-7. With z = |x| / sqrt 2 this gives
# Phi(-|x|) = erfc(z) / 2, so the coefficients below are halved and p is divided by sqrt 2.
_AS_P = np.float32(0.3275911 * _SQRT_HALF)
_AS_HALF_A = [np.float32(0.5 * a) for a in (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)]
# Worst case of |normal_cdf_float32(x) - Phi(x)|, term by term (u = 2^-24): the formula's 1.5e-7 / 2 = 7.5e-8;
# the coefficients rounded to float32, 4.9e-8; the Horner steps, u times the sum of their largest magnitudes
# over t in [0, 1], 2.7e-7; t's three roundings (3u relative) through d(t poly(t))/dt, 3.1e-7; exp(-x^2/2)'s
# argument and result roundings, 6e-8; the last three operations, 1.2e-7. Sum: 8.8e-7. Measured over every
# float32 with 2^-30 <= |x| < 16 (exhaustively): 3.6e-7.
NORMAL_CDF_FLOAT32_ERROR = 8.8e-7
_SIGN_BIT = np.int32(-(2**31))  # a float32's sign bit, as an int32 mask
# The float32 GELU makes 25 NumPy calls per chunk, and each call takes the GIL from the other thread and gives
# it back: at parallel.CHUNK_ELEMENTS the hand-offs ate most of the second thread (6.4 M elements on 2 threads:
# 12.9-15.8 ms, 1 thread 20.8 ms); chunks twice that size (each pass still in L3) took 10.9-11.9 ms.
GELU_CHUNK_ELEMENTS = 2 * parallel.CHUNK_ELEMENTS


def _normal_cdf_into(xc: np.ndarray, cdf: np.ndarray, gauss: np.ndarray, t: np.ndarray) -> None:
    """cdf = Phi(xc) and gauss = exp(-xc^2 / 2), in float32, by A&S 7.1.26 (buffers given, nothing allocated).

    q = Phi(-|x|) = t * poly(t) * exp(-x^2/2) / 2 with t = 1 / (1 + p |x| / sqrt 2),
    then Phi(x) = 1/2 + sign(x) * (1/2 - q), the product by sign(x) done as an xor of x's
    sign bit (NumPy's copysign and sign measured 0.7-1.1 ns per element here, the two
    integer ops 0.1-0.18 ns each; np.reciprocal, 0.23 ns, likewise loses to 1 / t, 0.15 ns).
    """
    h1, h2, h3, h4, h5 = _AS_HALF_A
    np.abs(xc, out=gauss)
    np.multiply(gauss, _AS_P, out=t)
    t += 1.0
    np.divide(np.float32(1.0), t, out=t)
    np.multiply(t, h5, out=cdf)
    for h in (h4, h3, h2, h1):
        cdf += h
        cdf *= t
    np.multiply(xc, xc, out=gauss)
    gauss *= -0.5
    np.exp(gauss, out=gauss)  # exp(-x^2/2)
    cdf *= gauss  # Phi(-|x|)
    np.subtract(0.5, cdf, out=cdf)
    sign_bit = t.view(np.int32)
    np.bitwise_and(xc.view(np.int32), _SIGN_BIT, out=sign_bit)
    np.bitwise_xor(cdf.view(np.int32), sign_bit, out=cdf.view(np.int32))  # times sign(x)
    cdf += 0.5  # Phi(x)


def normal_cdf_float32(x: np.ndarray) -> np.ndarray:
    """Phi(x) = (1 + erf(x / sqrt 2)) / 2 in float32 from the rational erf of the float32 GELU.

    Absolute error at most NORMAL_CDF_FLOAT32_ERROR (8.8e-7, a worst-case sum of
    A&S 7.1.26's 7.5e-8 and float32's roundings; 3.6e-7 measured over every float32
    with 2^-30 <= |x| < 16). Phi(+-0) = 1/2,
    Phi(+inf) = 1, Phi(-inf) = 0, Phi(nan) = nan. Chunked and threaded like the GELU.
    """
    check_array(x, "normal_cdf_float32")
    if x.dtype != np.float32 or get_array_module(x) is not np:
        raise TypeError(f"normal_cdf_float32: expected a float32 NumPy array, got {type(x).__name__} of {x.dtype}")
    flat = x.reshape(-1)
    cdf = np.empty_like(flat)

    def kernel(start: int, stop: int) -> None:
        n = stop - start
        gauss = parallel.scratch("gelu_gauss", (n,), np.float32)
        t = parallel.scratch("gelu_t", (n,), np.float32)
        _normal_cdf_into(flat[start:stop], cdf[start:stop], gauss, t)

    parallel.for_each_chunk(flat.size, 1, kernel, rows_per_chunk=GELU_CHUNK_ELEMENTS)
    return cdf.reshape(x.shape)


def _gelu_erf_float32(x: np.ndarray, need_grad: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Chunked, threaded float32 GELU (see pvt_np.ops.parallel): 25 passes over each chunk, held in cache.

    Plain form of the same math (Phi as in :func:`normal_cdf_float32`):
        y = x * Phi(x),  dy/dx = Phi(x) + x * exp(-x^2/2) / sqrt(2 pi)
    """
    flat = x.reshape(-1)
    y = np.empty_like(flat)
    local = np.empty_like(flat) if need_grad else None

    def kernel(start: int, stop: int) -> None:
        xc = flat[start:stop]
        n = stop - start
        gauss = parallel.scratch("gelu_gauss", (n,), np.float32)
        t = parallel.scratch("gelu_t", (n,), np.float32)
        cdf = parallel.scratch("gelu_cdf", (n,), np.float32)
        _normal_cdf_into(xc, cdf, gauss, t)
        np.multiply(xc, cdf, out=y[start:stop])
        if local is not None:
            gauss *= xc
            gauss *= _INV_SQRT_2PI
            np.add(gauss, cdf, out=local[start:stop])

    parallel.for_each_chunk(flat.size, 1, kernel, rows_per_chunk=GELU_CHUNK_ELEMENTS)
    return y.reshape(x.shape), (None if local is None else local.reshape(x.shape))


def relu_forward(x: Array, *, layer: str = "relu") -> tuple[Array, Any]:
    """y = max(x, 0). The cache is y itself: y > 0 exactly where x > 0, and y is kept anyway by
    whatever reads it next (PVT v2's linear variant: the depthwise conv), so it costs no memory."""
    check_array(x, layer)
    xp = get_array_module(x)
    y = xp.maximum(x, 0) if cuda.active(xp) else _relu_cpu(x)  # the GPU: one elementwise kernel
    return y, y


def _relu_cpu(x: np.ndarray) -> np.ndarray:
    """max(x, 0) in one pass, in chunks on the worker threads."""
    flat = x.reshape(-1)
    y = np.empty_like(flat)
    zero = flat.dtype.type(0)

    def kernel(start: int, stop: int) -> None:
        np.maximum(flat[start:stop], zero, out=y[start:stop])

    parallel.for_each_chunk(flat.size, 1, kernel)
    return y.reshape(x.shape)


def relu_backward(dout: Array, cache: Any) -> Array:
    """dx = dout where x > 0 (read as y > 0), else 0 (torch's convention: the gradient at 0 is 0).

    NumPy: in chunks on the worker threads, the mask in a per-thread buffer; the GPU: one kernel.
    A gradient of another shape (broadcast) or dtype than y: one array expression, either device.
    """
    if dout.shape != cache.shape or dout.dtype != cache.dtype:
        return dout * (cache > 0)
    if cuda.active(get_array_module(dout, cache)):
        return _relu_backward_gpu(dout, cache)
    return _relu_backward_cpu(dout, cache)


def _relu_backward_cpu(dout: np.ndarray, y: np.ndarray) -> np.ndarray:
    """dout * (y > 0) in chunks on the worker threads, the mask in a per-thread buffer."""
    grad, y_flat = dout.reshape(-1), y.reshape(-1)
    dx = np.empty_like(grad)

    def kernel(start: int, stop: int) -> None:
        mask = parallel.scratch("relu_mask", (stop - start,), np.bool_)
        np.greater(y_flat[start:stop], 0, out=mask)
        np.multiply(grad[start:stop], mask, out=dx[start:stop])

    parallel.for_each_chunk(dx.size, 1, kernel)
    return dx.reshape(dout.shape)


def _relu_backward_gpu(dout: Array, y: Array) -> Array:
    """dout * (y > 0): one CUDA kernel (pvt_np.ops.cuda) for the float types it is built for."""
    if dout.dtype in cuda.C_TYPES:
        return cuda.relu_backward(dout, y)
    return dout * (y > 0)


def softmax(x: Array, axis: int = -1, in_place: bool = False) -> Array:
    """y_i = exp(x_i - max x) / sum_j exp(x_j - max x) along ``axis``.

    Subtracting the max changes nothing but overflow. ``in_place=True`` overwrites
    x with y (attention's scores, which nothing else needs); otherwise x is kept.
    """
    xp = get_array_module(x)
    shift = x.max(axis=axis, keepdims=True)
    if in_place:
        x -= shift
        y = x
    else:
        y = x - shift
    xp.exp(y, out=y)
    y /= y.sum(axis=axis, keepdims=True)
    return y


def softmax_forward(x: Array, axis: int = -1, *, layer: str = "softmax") -> tuple[Array, Any]:
    """y = softmax(x) along ``axis`` (see :func:`softmax`); the cache is (y, axis)."""
    check_softmax(x, axis, layer)
    y = softmax(x, axis)
    return y, (y, axis)


def softmax_backward(dout: Array, cache: Any) -> Array:
    """dx_i = y_i * (g_i - sum_j g_j y_j): the Jacobian diag(y) - y y^T applied to g = dL/dy."""
    y, axis = cache
    dx = dout * y
    dx -= y * dx.sum(axis=axis, keepdims=True)
    return dx
