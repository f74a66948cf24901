"""Pointwise activations and softmax."""

from __future__ import annotations

import math
from typing import Any

from pvt_np.backend import Array, get_array_module
from pvt_np.ops._validate import check_array

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


def gelu_forward(x: Array, approximate: str = "none") -> tuple[Array, Any]:
    """GELU, torch.nn.GELU's two forms.

    'none': y = x * Phi(x),  Phi(x) = (1 + erf(x / sqrt 2)) / 2  (the normal CDF)
    'tanh': y = x/2 * (1 + tanh(u)),  u = sqrt(2/pi) * (x + 0.044715 x^3)
    """
    check_array(x, "gelu")
    if approximate == "none":
        cdf = erf(x * _SQRT_HALF)
        cdf += 1.0
        cdf *= 0.5
        return x * cdf, (x, cdf, approximate)
    if approximate == "tanh":
        xp = get_array_module(x)
        t = xp.tanh(_SQRT_2_OVER_PI * (x + _TANH_COEF * x * x * x))
        return 0.5 * x * (1.0 + t), (x, t, approximate)
    raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")


def gelu_backward(dout: Array, cache: Any) -> Array:
    """dy/dx:

    'none': Phi(x) + x * phi(x),  phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
    'tanh': (1 + t)/2 + x/2 * (1 - t^2) * sqrt(2/pi) * (1 + 3 * 0.044715 x^2),  t = tanh(u)
    """
    x, aux, approximate = cache
    xp = get_array_module(x)
    if approximate == "none":
        local = xp.exp(-0.5 * x * x)
        local *= _INV_SQRT_2PI
        local *= x
        local += aux
    else:
        t = aux
        local = 0.5 * x * (1.0 - t * t) * (_SQRT_2_OVER_PI * (1.0 + 3.0 * _TANH_COEF * x * x))
        local += 0.5 * (1.0 + t)
    local *= dout
    return local


def relu_forward(x: Array) -> tuple[Array, Any]:
    """y = max(x, 0). The cache is the boolean mask x > 0 (1 byte per element)."""
    check_array(x, "relu")
    xp = get_array_module(x)
    mask = x > 0
    return xp.maximum(x, 0), mask


def relu_backward(dout: Array, cache: Any) -> Array:
    """dx = dout where x > 0, else 0 (torch's convention: the gradient at 0 is 0)."""
    return dout * cache


def softmax_forward(x: Array, axis: int = -1) -> tuple[Array, Any]:
    """y_i = exp(x_i - max x) / sum_j exp(x_j - max x); subtracting the max changes nothing but overflow."""
    check_array(x, "softmax")
    xp = get_array_module(x)
    y = x - x.max(axis=axis, keepdims=True)
    xp.exp(y, out=y)
    y /= y.sum(axis=axis, keepdims=True)
    return y, (y, axis)


def softmax_backward(dout: Array, cache: Any) -> Array:
    """dx_i = y_i * (g_i - sum_j g_j y_j): the Jacobian diag(y) - y y^T applied to g = dL/dy."""
    y, axis = cache
    dx = dout * y
    dx -= y * dx.sum(axis=axis, keepdims=True)
    return dx
