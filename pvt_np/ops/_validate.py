"""Input checks shared by the functional ops and the modules.

Each raises ValueError/TypeError naming ``who`` (an op or a layer), what was
expected and what came, before NumPy can fail with a broadcasting error.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pvt_np.backend import FLOAT_DTYPES, Array


def check_array(x: Any, who: str, name: str = "input") -> None:
    """Require a float32/float64 NumPy or CuPy array."""
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"{who}: {name} must be a NumPy or CuPy array, got {type(x).__name__}")
    if np.dtype(x.dtype) not in FLOAT_DTYPES:
        raise TypeError(f"{who}: {name} must have dtype float32 or float64, got {x.dtype}")


def check_ndim(x: Array, ndim: int, who: str, layout: str, name: str = "input") -> None:
    check_array(x, who, name)
    if x.ndim != ndim:
        raise ValueError(f"{who}: expected {name} of rank {ndim} {layout}, got shape {tuple(x.shape)}")


def check_same_dtype(x: Array, ref: Array, who: str, name: str = "input", ref_name: str = "weight") -> None:
    if x.dtype != ref.dtype:
        raise TypeError(
            f"{who}: {name} dtype {x.dtype} does not match {ref_name} dtype {ref.dtype} "
            "(cast the input, or the module with .to(dtype=...))"
        )


def check_last_dim(x: Array, size: int, who: str, name: str = "input") -> None:
    if x.ndim < 1 or x.shape[-1] != size:
        raise ValueError(f"{who}: expected {name} of shape (..., {size}), got {tuple(x.shape)}")


def pair(value: Any, who: str, name: str) -> tuple[int, int]:
    """An int or a pair of ints, as torch's conv arguments."""
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, (int, np.integer)) for v in value):
        return int(value[0]), int(value[1])
    raise TypeError(f"{who}: {name} must be an int or a pair of ints, got {value!r}")


def check_probability(p: Any, who: str, name: str = "p") -> float:
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{who}: {name} must be in [0, 1], got {p}")
    return p
