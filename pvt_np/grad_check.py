"""Central-difference gradient checks for functional ops and modules (float64).

The scalar probed is L = sum(out * G) for a fixed random G, so dL/dinput is
exactly what ``backward(G)`` must return. Each entry's numerical derivative is
(L(x + h) - L(x - h)) / 2h. The reported error of a tensor is

    max |analytic - numeric| / max(max |analytic|, max |numeric|)

(relative to the tensor's scale, so entries that happen to be ~0 do not blow
it up); about 1e-9 or less is expected in float64 with h = 1e-6.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from pvt_np import backend
from pvt_np.backend import Array
from pvt_np.nn.module import Module


def relative_error(analytic: Array, numeric: Array) -> float:
    """max |a - n| / max(max |a|, max |n|); 0.0 when both are exactly zero."""
    a = backend.to_numpy(analytic).astype(np.float64)
    n = backend.to_numpy(numeric).astype(np.float64)
    if a.shape != n.shape:
        raise ValueError(f"relative_error: shapes differ, {a.shape} vs {n.shape}")
    scale = max(float(np.abs(a).max(initial=0.0)), float(np.abs(n).max(initial=0.0)))
    return 0.0 if scale == 0.0 else float(np.abs(a - n).max()) / scale


def _coords(shape: tuple[int, ...], num_checks: int | None, rng: np.random.Generator) -> np.ndarray:
    size = int(np.prod(shape))
    if num_checks is None or num_checks >= size:
        return np.arange(size)
    return np.sort(rng.choice(size, size=num_checks, replace=False))


def _numeric(objective: Callable[[], float], arr: Array, coords: np.ndarray, eps: float) -> np.ndarray:
    """Central differences of objective() w.r.t. arr's flat entries at coords (arr is perturbed in place)."""
    if not arr.flags.c_contiguous:  # reshape would copy, and perturbing the copy would change nothing
        raise ValueError("gradcheck: inputs and parameters must be C-contiguous arrays")
    flat = arr.reshape(-1)
    out = np.zeros(len(coords))
    for i, c in enumerate(coords):
        c = int(c)
        orig = float(flat[c])
        flat[c] = orig + eps
        plus = objective()
        flat[c] = orig - eps
        minus = objective()
        flat[c] = orig
        out[i] = (plus - minus) / (2.0 * eps)
    return out


def _as_tuple(grads: Any) -> tuple[Any, ...]:
    return tuple(grads) if isinstance(grads, (tuple, list)) else (grads,)


def gradcheck(
    target: Module | tuple[Callable[..., Any], Callable[..., Any]],
    inputs: Array | Sequence[Array],
    *,
    args: Sequence[Any] = (),
    names: Sequence[str] | None = None,
    seed: int = 0,
    eps: float = 1e-6,
    num_checks: int | None = None,
) -> dict[str, float]:
    """Max relative error of every analytic gradient against central differences.

    target: a Module (checks its input and every parameter; it is cast to
    float64 for the check and cast back afterwards), or a pair
    ``(forward, backward)`` of functional ops, ``forward(*inputs, *args) -> (out, cache)``
    and ``backward(dout, cache) -> grads`` in the order of ``inputs`` (one gradient per
    input, none of them None; further trailing gradients, e.g. of ``args``, are ignored).
    inputs: the differentiable array(s), cast to float64 copies.
    args: further non-differentiable arguments (feat_size, targets, flags).
    num_checks: check only this many random entries per tensor (all by default).
    Random layers (dropout, drop-path) are reseeded with ``seed`` before every
    forward, so each evaluation draws the same masks.
    Returns {'input': err, <param name>: err, ...} for a module,
    {names[i] or 'input{i}': err} for ops.
    """
    arrays = [inputs] if hasattr(inputs, "shape") else list(inputs)
    arrays = [backend.get_array_module(a).array(a, dtype=np.float64, copy=True) for a in arrays]
    xp = backend.get_array_module(*arrays)
    # A seed of its own, so G never equals an input drawn by the caller from the same integer seed.
    rng = np.random.default_rng([seed, 0x6A0C])
    if isinstance(target, Module):
        return _check_module(target, arrays, tuple(args), seed, eps, num_checks, rng, xp)
    forward, backward_fn = target
    labels = list(names) if names is not None else [f"input{i}" for i in range(len(arrays))]
    if len(labels) != len(arrays):
        raise ValueError(f"gradcheck: {len(labels)} names for {len(arrays)} inputs")

    def run() -> tuple[Any, Any]:
        backend.manual_seed(seed)
        return forward(*arrays, *args)

    out, cache = run()
    dout = xp.asarray(rng.standard_normal(np.shape(out)))
    grads = _as_tuple(backward_fn(dout, cache))
    if len(grads) < len(arrays):  # extra trailing gradients (of fixed args) are allowed, missing ones are not
        raise ValueError(f"gradcheck: backward returned {len(grads)} gradients for {len(arrays)} inputs")

    def objective() -> float:
        return float((run()[0] * dout).sum())

    result = {}
    for label, arr, grad in zip(labels, arrays, grads[: len(arrays)], strict=True):
        if grad is None:
            raise ValueError(f"gradcheck: backward returned no gradient for {label!r}")
        coords = _coords(arr.shape, num_checks, rng)
        numeric = _numeric(objective, arr, coords, eps)
        result[label] = relative_error(backend.to_numpy(grad).reshape(-1)[coords], numeric)
    return result


def _check_module(
    module: Module,
    arrays: list[Array],
    args: tuple[Any, ...],
    seed: int,
    eps: float,
    num_checks: int | None,
    rng: np.random.Generator,
    xp: Any,
) -> dict[str, float]:
    original_dtype = module.dtype
    module.to(dtype=np.float64)
    try:

        def run() -> Any:
            backend.manual_seed(seed)
            return module(*arrays, *args)

        module.zero_grad()
        out = run()
        dout = xp.asarray(rng.standard_normal(np.shape(out)))
        dx = module.backward(dout)

        def objective() -> float:
            return float((run() * dout).sum())

        result = {}
        coords = _coords(arrays[0].shape, num_checks, rng)
        result["input"] = relative_error(
            backend.to_numpy(dx).reshape(-1)[coords], _numeric(objective, arrays[0], coords, eps)
        )
        for name, p in module.named_parameters():
            if p.grad is None:
                raise RuntimeError(f"gradcheck: backward left no gradient in parameter {name!r}")
            coords = _coords(p.shape, num_checks, rng)
            numeric = _numeric(objective, p.data, coords, eps)
            result[name] = relative_error(backend.to_numpy(p.grad).reshape(-1)[coords], numeric)
        module.zero_grad()
        return result
    finally:
        module.to(dtype=original_dtype)
