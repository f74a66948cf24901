"""Layer normalisation over the last dimension."""

from __future__ import annotations

from typing import Any

from pvt_np.backend import Array, get_array_module
from pvt_np.ops._validate import check_array, check_last_dim, check_same_dtype


def layer_norm_forward(x: Array, weight: Array, bias: Array, eps: float = 1e-5) -> tuple[Array, Any]:
    """y = (x - mean) / sqrt(var + eps) * weight + bias, statistics over the last dim (size C).

    var is the biased variance (mean of squared deviations), as torch.
    The cache keeps xhat = (x - mean) * rstd and rstd = 1 / sqrt(var + eps).
    """
    who = "layer_norm"
    check_array(x, who)
    check_last_dim(x, weight.shape[0], who)
    check_same_dtype(x, weight, who)
    xp = get_array_module(x)
    mean = x.mean(axis=-1, keepdims=True)
    xhat = x - mean
    var = xp.mean(xhat * xhat, axis=-1, keepdims=True)
    rstd = 1.0 / xp.sqrt(var + eps)
    xhat *= rstd
    y = xhat * weight
    y += bias
    return y, (xhat, rstd, weight)


def layer_norm_backward(dout: Array, cache: Any) -> tuple[Array, Array, Array]:
    """With G = dL/dy and g = G * weight (the gradient reaching xhat):

    dweight = sum over rows of G * xhat,   dbias = sum over rows of G
    dx      = rstd * (g - mean(g) - xhat * mean(g * xhat))      (means over the last dim)
    The two mean terms are the gradient flowing through the mean and the variance.
    Returns (dx, dweight, dbias).
    """
    xhat, rstd, weight = cache
    c = weight.shape[0]
    g2 = dout.reshape(-1, c)
    dweight = (g2 * xhat.reshape(-1, c)).sum(axis=0)
    dbias = g2.sum(axis=0)
    g = dout * weight
    mean_g = g.mean(axis=-1, keepdims=True)
    mean_gx = (g * xhat).mean(axis=-1, keepdims=True)
    g -= mean_g
    g -= xhat * mean_gx
    g *= rstd
    return g, dweight, dbias
