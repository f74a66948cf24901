"""Layer normalisation over the last dimension."""

from __future__ import annotations

from typing import Any

from pvt_np.backend import Array, get_array_module
from pvt_np.ops.checks import check_layer_norm


def layer_norm_forward(
    x: Array, weight: Array, bias: Array, eps: float = 1e-5, *, who: str = "layer_norm"
) -> tuple[Array, Any]:
    """y = (x - mean) / sqrt(var + eps) * weight + bias, statistics over the last dim (size C).

    var is the biased variance (mean of squared deviations), as torch.
    The cache keeps xhat = (x - mean) * rstd and rstd = 1 / sqrt(var + eps).
    Row means are matrix-vector products with a 1/C vector (BLAS), which beat
    NumPy's per-row reductions when rows are short (C = 32 at PVT v2's first stage).
    """
    check_layer_norm(x, weight, bias, who)
    xp = get_array_module(x)
    c = weight.shape[0]
    x2 = x.reshape(-1, c)
    inv_c = xp.full(c, 1.0 / c, dtype=x.dtype)
    xhat = x2 - (x2 @ inv_c)[:, None]
    sq = xhat * xhat
    var = sq @ inv_c
    rstd = (1.0 / xp.sqrt(var + eps))[:, None]
    xhat *= rstd
    y = xp.multiply(xhat, weight, out=sq)
    y += bias
    return y.reshape(x.shape), (xhat, rstd, weight)


def layer_norm_backward(dout: Array, cache: Any) -> tuple[Array, Array, Array]:
    """With G = dL/dy and g = G * weight (the gradient reaching xhat):

    dweight = sum over rows of G * xhat,   dbias = sum over rows of G
    dx      = rstd * (g - mean(g) - xhat * mean(g * xhat))      (means over the last dim)
    The two mean terms are the gradient flowing through the mean and the variance.
    With P = G * xhat, mean(g) = G @ weight / C and mean(g * xhat) = P @ weight / C,
    so all four reductions are matrix-vector products on arrays already at hand.
    Returns (dx, dweight, dbias).
    """
    xhat, rstd, weight = cache
    xp = get_array_module(xhat)
    c = weight.shape[0]
    g2 = dout.reshape(-1, c)
    ones = xp.ones(g2.shape[0], dtype=g2.dtype)
    p = g2 * xhat
    dweight = ones @ p
    dbias = ones @ g2
    w_over_c = weight / c
    mean_g = (g2 @ w_over_c)[:, None]
    mean_gx = (p @ w_over_c)[:, None]
    dx = xp.multiply(xhat, mean_gx, out=p)
    dx += mean_g
    xp.subtract(g2 * weight, dx, out=dx)
    dx *= rstd
    return dx.reshape(dout.shape), dweight, dbias
