"""Dropout and drop-path (stochastic depth), from an explicit generator."""

from __future__ import annotations

from typing import Any

from pvt_np.backend import Array, get_array_module, get_rng
from pvt_np.ops.checks import check_drop_path, check_dropout


def keep_mask(rng: Any, shape: tuple[int, ...], p: float, dtype: Any) -> Array:
    """Bernoulli(1 - p) mask already scaled by 1/(1 - p) (all zeros when p == 1).

    m = (u >= p) / (1 - p) with u ~ U[0, 1) drawn from ``rng`` in ``dtype``. Every
    dropout-like op of both implementations (dropout, drop_path, attention dropout)
    draws its mask here, so the same generator state gives the same mask in both.
    """
    keep = (rng.random(shape, dtype=dtype) >= p).astype(dtype)
    keep *= 1.0 / (1.0 - p) if p < 1.0 else 0.0
    return keep


def dropout_forward(
    x: Array, p: float = 0.5, training: bool = True, rng: Any = None, *, layer: str = "dropout"
) -> tuple[Array, Any]:
    """y = x * m / (1 - p), m ~ Bernoulli(1 - p) per element; the identity when p == 0 or not training.

    ``rng`` is a NumPy/CuPy Generator (default: pvt_np's shared one, see manual_seed).
    """
    p = check_dropout(x, p, layer)
    if not training or p == 0.0:
        return x, None
    rng = get_rng(get_array_module(x)) if rng is None else rng
    keep = keep_mask(rng, x.shape, p, x.dtype)
    return x * keep, keep


def dropout_backward(dout: Array, cache: Any) -> Array:
    """dx = dout * m / (1 - p): the same scaled mask (the identity when it was off)."""
    return dout if cache is None else dout * cache


def drop_path_forward(
    x: Array, p: float = 0.0, training: bool = True, rng: Any = None, *, layer: str = "drop_path"
) -> tuple[Array, Any]:
    """Stochastic depth: each sample's whole residual branch is kept with probability 1 - p
    and scaled by 1/(1 - p), y[n] = x[n] * m[n] / (1 - p), one draw per sample (timm's drop_path)."""
    p = check_drop_path(x, p, layer)
    if not training or p == 0.0:
        return x, None
    rng = get_rng(get_array_module(x)) if rng is None else rng
    keep = keep_mask(rng, (x.shape[0],) + (1,) * (x.ndim - 1), p, x.dtype)
    return x * keep, keep


def drop_path_backward(dout: Array, cache: Any) -> Array:
    """dx[n] = dout[n] * m[n] / (1 - p)."""
    return dout if cache is None else dout * cache
