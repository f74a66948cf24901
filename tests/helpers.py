"""Shared test helpers: NumPy <-> torch conversion, relative-to-max comparisons, tolerances."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from pvt_np.backend import to_numpy

# Tolerances -----------------------------------------------------------------
# Central differences in float64 with h = 1e-6 are accurate to ~1e-9 for smooth ops;
# 1e-6 leaves room for curvature while still catching any wrong term in a backward.
GRADCHECK_TOL = 1e-6
# Two float64 implementations of the same formula differ only by rounding (~1e-16
# per operation, amplified by at most a few hundred accumulated terms here; measured
# against torch: at most 1.0e-14, layer norm's weight gradient at a small variance).
F64_TOL = 1e-12
# float32 has a unit roundoff of ~6e-8; sums of up to a few hundred terms and a
# different summation order (torch's BLAS / oneDNN kernels) leave errors of ~1e-6
# relative to the tensor's largest entry, so 1e-5 is tight yet free of flakes.
F32_TOL = 1e-5
# Same as F32_TOL for quantities whose backward subtracts nearly equal terms
# (layer-norm / softmax / cross-entropy gradients), where float32 cancellation
# adds a few ulps of the larger operand.
F32_GRAD_TOL = 3e-5

TOLS = {np.dtype(np.float64): F64_TOL, np.dtype(np.float32): F32_TOL}
GRAD_TOLS = {np.dtype(np.float64): F64_TOL, np.dtype(np.float32): F32_GRAD_TOL}


def torch_module() -> Any:
    """Import torch (tests that need it only run where it is installed)."""
    import torch

    return torch


def to_torch(a: Any, requires_grad: bool = False, dtype: Any = None) -> Any:
    """A fresh contiguous torch tensor holding a copy of array ``a`` (optionally cast)."""
    torch = torch_module()
    arr = np.array(to_numpy(a), dtype=dtype, order="C", copy=True)  # keeps 0-d shapes (ascontiguousarray would not)
    t = torch.from_numpy(arr)
    if requires_grad:
        t.requires_grad_(True)
    return t


def as_numpy(a: Any) -> np.ndarray:
    """NumPy view of a NumPy/CuPy array, a NumPy scalar or a (detached) torch tensor."""
    if hasattr(a, "detach"):
        return a.detach().cpu().numpy()
    return np.asarray(to_numpy(a))


def max_rel_err(actual: Any, expected: Any) -> float:
    """max |actual - expected| / max |expected| (absolute error when expected is all zeros)."""
    a = as_numpy(actual).astype(np.float64)
    e = as_numpy(expected).astype(np.float64)
    if a.shape != e.shape:
        raise AssertionError(f"shapes differ: {a.shape} vs {e.shape}")
    if a.size == 0:
        return 0.0
    scale = float(np.abs(e).max())
    diff = float(np.abs(a - e).max())
    return diff / scale if scale > 0.0 else diff


def assert_close(actual: Any, expected: Any, tol: float, what: str) -> None:
    """Assert equal shapes and max_rel_err <= tol, reporting the measured error."""
    a, e = as_numpy(actual), as_numpy(expected)
    assert a.shape == e.shape, f"{what}: shape {a.shape}, expected {e.shape}"
    assert np.all(np.isfinite(a)), f"{what}: non-finite values"
    err = max_rel_err(a, e)
    assert err <= tol, f"{what}: max relative error {err:.3e} > {tol:.1e}"


def assert_dtype(actual: Any, dtype: Any, what: str) -> None:
    """Assert an output or gradient kept the working dtype (no silent promotion)."""
    assert np.dtype(actual.dtype) == np.dtype(dtype), f"{what}: dtype {actual.dtype}, expected {np.dtype(dtype)}"


def assert_gradcheck(errors: Mapping[str, float], expected_keys: list[str], tol: float = GRADCHECK_TOL) -> None:
    """Assert gradcheck covered exactly ``expected_keys`` and each max relative error is <= tol."""
    assert sorted(errors) == sorted(expected_keys), f"gradcheck checked {sorted(errors)}, expected {expected_keys}"
    for name, err in errors.items():
        assert np.isfinite(err), f"gradcheck {name}: error is {err}"
        assert err <= tol, f"gradcheck {name}: max relative error {err:.3e} > {tol:.1e}"


def contains_all(*parts: str) -> str:
    """A regex (for pytest.raises(match=...)) that matches when every literal part occurs, in any order."""
    return "(?s)" + "".join(f"(?=.*{re.escape(p)})" for p in parts)


def randn(rng: np.random.Generator, *shape: int, dtype: Any = np.float64) -> np.ndarray:
    """Standard-normal array of the given shape and dtype."""
    return rng.standard_normal(shape).astype(dtype)


def away_from_zero(rng: np.random.Generator, *shape: int, margin: float = 0.05) -> np.ndarray:
    """Normal samples pushed at least ``margin`` away from 0 (keeps ReLU's kink out of finite differences)."""
    x = rng.standard_normal(shape)
    return np.where(x >= 0, x + margin, x - margin)
