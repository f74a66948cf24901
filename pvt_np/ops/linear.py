"""Affine map over the last dimension."""

from __future__ import annotations

from typing import Any

from pvt_np.backend import Array
from pvt_np.ops.checks import check_linear


def linear_forward(x: Array, weight: Array, bias: Array | None = None, *, who: str = "linear") -> tuple[Array, Any]:
    """y = x W^T + b over any leading dimensions.

    x: (..., in), W: (out, in), b: (out,) -> y: (..., out).
    All leading dimensions are flattened into one, so the product is a single
    GEMM of shape (M, in) x (in, out) with M = prod(leading dims).
    """
    check_linear(x, weight, bias, who)
    x2 = x.reshape(-1, x.shape[-1])
    y = x2 @ weight.T
    if bias is not None:
        y += bias
    return y.reshape(*x.shape[:-1], weight.shape[0]), (x2, weight, bias is not None, x.shape)


def linear_backward(dout: Array, cache: Any) -> tuple[Array, Array, Array | None]:
    """Gradients of y = x W^T + b, with G = dL/dy flattened to (M, out):

    dx = G W            (M, in)
    dW = G^T x          (out, in)
    db = sum_m G[m]     (out,)
    Returns (dx, dW, db); db is None when there was no bias.
    """
    x2, weight, has_bias, x_shape = cache
    g = dout.reshape(-1, weight.shape[0])
    dx = (g @ weight).reshape(x_shape)
    dw = g.T @ x2
    db = g.sum(axis=0) if has_bias else None
    return dx, dw, db
