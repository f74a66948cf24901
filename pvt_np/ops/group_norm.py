"""Group normalisation (torch.nn.functional.group_norm) of (N, C, *) maps or channels-last (N, *, C) ones."""

from __future__ import annotations

from typing import Any

from pvt_np.backend import Array, get_array_module
from pvt_np.ops.checks import check_group_norm


def _per_channel(a: Array, channels_last: bool) -> Array:
    """(N, C) -> broadcastable against the (N, C, S) view, or the (N, S, C) one when channels last."""
    return a[:, None, :] if channels_last else a[:, :, None]


def _group_sum(a: Array, num_groups: int) -> Array:
    """(N, C) per-channel sums -> (N, G) per-group sums (a group is C / G consecutive channels)."""
    return a.reshape(a.shape[0], num_groups, -1).sum(axis=-1)


def group_norm_forward(
    x: Array,
    weight: Array,
    bias: Array,
    num_groups: int,
    eps: float = 1e-5,
    channels_last: bool = False,
    *,
    layer: str = "group_norm",
) -> tuple[Array, Any]:
    """y = (x - mean) / sqrt(var + eps) * weight[c] + bias[c], statistics per sample over each group's
    channels and all positions (see the plain implementation for the formulas).

    Every sum runs over the spatial positions of each channel first ((N, C) partial sums, einsum for the
    squares, no squared temporary), then over the channels of a group; a group's mean and rstd are spread
    back to its channels as (N, C) arrays that broadcast over the positions. Array expressions of the
    inputs' module: the same code on NumPy and CuPy.
    """
    groups, c = check_group_norm(x, num_groups, weight, bias, channels_last, layer)
    xp = get_array_module(x)
    n = x.shape[0]
    x3 = x.reshape(n, -1, c) if channels_last else x.reshape(n, c, -1)
    count = x3.size // (n * groups)  # elements per group
    spec = "nsc,nsc->nc" if channels_last else "ncs,ncs->nc"
    mean = xp.repeat(_group_sum(x3.sum(axis=1 if channels_last else 2), groups) / count, c // groups, axis=1)
    xhat = x3 - _per_channel(mean, channels_last)
    var = _group_sum(xp.einsum(spec, xhat, xhat), groups) / count
    rstd = xp.repeat(1.0 / xp.sqrt(var + eps), c // groups, axis=1)
    xhat *= _per_channel(rstd, channels_last)
    y = xhat * (weight if channels_last else weight[:, None])
    y += bias if channels_last else bias[:, None]
    return y.reshape(x.shape), (xhat, rstd, weight, groups, channels_last)


def group_norm_backward(dout: Array, cache: Any) -> tuple[Array, Array, Array]:
    """With P[n, c] = sum over positions of G * xhat and Q[n, c] = sum over positions of G:

    dweight = sum_n P,  dbias = sum_n Q, and the plain derivation's group means are
    mean(g) = sum over the group's channels of weight * Q / m, mean(g * xhat) = the same of weight * P / m
    (g = G * weight, m elements per group), so dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) needs one
    pass over G for P and Q and one for dx. Returns (dx, dweight, dbias).
    """
    xhat, rstd, weight, groups, channels_last = cache
    xp = get_array_module(xhat)
    n, c = rstd.shape
    g3 = dout.reshape(xhat.shape)
    count = xhat.size // (n * groups)
    p = xp.einsum("nsc,nsc->nc" if channels_last else "ncs,ncs->nc", g3, xhat)
    q = g3.sum(axis=1 if channels_last else 2)
    mean_g = xp.repeat(_group_sum(q * weight, groups) / count, c // groups, axis=1)
    mean_gx = xp.repeat(_group_sum(p * weight, groups) / count, c // groups, axis=1)
    dx = g3 * (weight if channels_last else weight[:, None])
    dx -= _per_channel(mean_g, channels_last)
    dx -= xhat * _per_channel(mean_gx, channels_last)
    dx *= _per_channel(rstd, channels_last)
    return dx.reshape(dout.shape), p.sum(axis=0), q.sum(axis=0)
