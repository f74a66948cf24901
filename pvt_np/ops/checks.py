"""Input checks shared by both implementations of every op (fast and plain) and by the modules.

Each op family has ONE check function here, called by its fast and its plain
forward, so both implementations refuse bad input with the same message. Every message
names the ``layer`` (the op itself, or the module that called it: ops take ``layer=``), the
argument, what was expected and what came, before NumPy can fail with a
broadcasting error. The small helpers at the top are the building blocks the
modules also use for checks an op cannot make (a layer's own hyper-parameters,
a gradient's dtype).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pvt_np.backend import FLOAT_DTYPES, Array, get_array_module


def check_array(x: Any, layer: str, name: str = "input") -> None:
    """Require a float32/float64 NumPy or CuPy array."""
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"{layer}: {name} must be a NumPy or CuPy array, got {type(x).__name__}")
    if np.dtype(x.dtype) not in FLOAT_DTYPES:
        raise TypeError(f"{layer}: {name} must have dtype float32 or float64, got {x.dtype}")


def check_ndim(x: Array, ndim: int, layer: str, layout: str, name: str = "input") -> None:
    """Require a float array of rank ``ndim``; ``layout`` describes the expected axes, e.g. '(N, C, H, W)'."""
    check_array(x, layer, name)
    if x.ndim != ndim:
        raise ValueError(f"{layer}: expected {name} of rank {ndim} {layout}, got shape {tuple(x.shape)}")


def check_same_dtype(x: Array, ref: Array, layer: str, name: str = "input", ref_name: str = "weight") -> None:
    """Require x's dtype to equal ref's (a mix would silently promote float32 work to float64)."""
    if x.dtype != ref.dtype:
        raise TypeError(
            f"{layer}: {name} dtype {x.dtype} does not match {ref_name} dtype {ref.dtype} "
            "(cast the input, or the module with .to(dtype=...))"
        )


def check_last_dim(x: Array, size: int, layer: str, name: str = "input") -> None:
    """Require x of shape (..., size)."""
    if x.ndim < 1 or x.shape[-1] != size:
        raise ValueError(f"{layer}: expected {name} of shape (..., {size}), got {tuple(x.shape)}")


def pair(value: Any, layer: str, name: str) -> tuple[int, int]:
    """An int or a pair of ints, as torch's conv arguments."""
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, (int, np.integer)) for v in value):
        return int(value[0]), int(value[1])
    raise TypeError(f"{layer}: {name} must be an int or a pair of ints, got {value!r}")


def check_probability(p: Any, layer: str, name: str = "p") -> float:
    """A probability in [0, 1], as a float."""
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{layer}: {name} must be in [0, 1], got {p}")
    return p


# -- one check per op family ---------------------------------------------------------
def check_linear(x: Array, weight: Array, bias: Array | None, layer: str) -> None:
    """x (..., in) of weight's dtype, weight (out, in), bias (out,) or None."""
    check_array(x, layer)
    check_ndim(weight, 2, layer, "(out_features, in_features)", name="weight")
    check_last_dim(x, weight.shape[1], layer)
    check_same_dtype(x, weight, layer)
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"{layer}: expected bias of shape ({weight.shape[0]},), got {tuple(bias.shape)}")


def check_conv2d(
    x: Array,
    weight: Array,
    bias: Array | None,
    stride: Any,
    padding: Any,
    groups: int,
    channels_last: bool,
    layer: str,
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """Check a conv's arguments; returns (stride, padding, output size) as int pairs."""
    sh, sw = pair(stride, layer, "stride")
    ph, pw = pair(padding, layer, "padding")
    if sh < 1 or sw < 1 or ph < 0 or pw < 0:
        raise ValueError(f"{layer}: stride must be >= 1 and padding >= 0, got stride {(sh, sw)}, padding {(ph, pw)}")
    if not isinstance(groups, (int, np.integer)) or groups < 1:
        raise ValueError(f"{layer}: groups must be a positive int, got {groups!r}")
    check_ndim(weight, 4, layer, "(out_channels, in_channels/groups, kh, kw)", name="weight")
    o, cg, kh, kw = weight.shape
    expect = f"(N, H, W, {cg * groups})" if channels_last else f"(N, {cg * groups}, H, W)"
    check_ndim(x, 4, layer, expect)
    c_in = x.shape[3] if channels_last else x.shape[1]
    if c_in % groups or o % groups:
        raise ValueError(f"{layer}: groups={groups} must divide in_channels={c_in} and out_channels={o}")
    if c_in != cg * groups:
        raise ValueError(f"{layer}: expected input of shape {expect}, got {tuple(x.shape)}")
    check_same_dtype(x, weight, layer)
    if bias is not None and tuple(bias.shape) != (o,):
        raise ValueError(f"{layer}: expected bias of shape ({o},), got {tuple(bias.shape)}")
    h, w = (x.shape[1], x.shape[2]) if channels_last else (x.shape[2], x.shape[3])
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    if ho < 1 or wo < 1:
        raise ValueError(
            f"{layer}: input {h}x{w} is too small for kernel {(kh, kw)} with padding {(ph, pw)} "
            f"(output would be {ho}x{wo})"
        )
    return (sh, sw), (ph, pw), (ho, wo)


def check_layer_norm(x: Array, weight: Array, bias: Array, layer: str) -> None:
    """x (..., C) of weight's dtype, weight and bias (C,)."""
    check_array(x, layer)
    check_ndim(weight, 1, layer, "(C,)", name="weight")
    check_last_dim(x, weight.shape[0], layer)
    check_same_dtype(x, weight, layer)
    if tuple(bias.shape) != tuple(weight.shape):
        raise ValueError(f"{layer}: expected bias of shape {tuple(weight.shape)}, got {tuple(bias.shape)}")


def check_gelu(x: Array, approximate: str, layer: str) -> None:
    """A float array, and one of torch's two GELU forms."""
    check_array(x, layer)
    if approximate not in ("none", "tanh"):
        raise ValueError(f"{layer}: approximate must be 'none' or 'tanh', got {approximate!r}")


def check_softmax(x: Array, axis: int, layer: str) -> None:
    """A float array with an axis ``axis``."""
    check_array(x, layer)
    if not -x.ndim <= axis < x.ndim:
        rank = axis + 1 if axis >= 0 else -axis
        raise ValueError(f"{layer}: axis={axis} needs an input of rank >= {rank}, got shape {tuple(x.shape)}")


def check_attention(q: Array, k: Array, v: Array, dropout_p: Any, layer: str) -> float:
    """q (B, h, N, d), k and v (B, h, M, d), one dtype; returns dropout_p as a float in [0, 1]."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_ndim(t, 4, layer, "(B, heads, tokens, head_dim)", name=name)
    if k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(
            f"{layer}: expected q (B, h, N, d) and k, v (B, h, M, d), "
            f"got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"{layer}: q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    return check_probability(dropout_p, layer, "dropout_p")


def check_adaptive_avg_pool2d(x: Array, output_size: Any, channels_last: bool, layer: str) -> tuple[int, int]:
    """A rank-4 float map and a positive output size; returns the output size as a pair."""
    check_ndim(x, 4, layer, "(N, H, W, C)" if channels_last else "(N, C, H, W)")
    ph, pw = pair(output_size, layer, "output_size")
    if ph < 1 or pw < 1:
        raise ValueError(f"{layer}: output_size must be positive, got {output_size!r}")
    return ph, pw


def check_dropout(x: Array, p: Any, layer: str) -> float:
    """A float array and a probability; returns p as a float."""
    check_array(x, layer)
    return check_probability(p, layer)


def check_drop_path(x: Array, p: Any, layer: str) -> float:
    """A float array with a batch dimension and a probability; returns p as a float."""
    check_array(x, layer)
    if x.ndim < 1:
        raise ValueError(f"{layer}: expected input of shape (N, ...) with a batch dimension, got {tuple(x.shape)}")
    return check_probability(p, layer)


def check_cross_entropy(logits: Array, target: Any, label_smoothing: Any, ignore_index: Any, layer: str) -> float:
    """logits (N, K) or per position (N, K, d1, ...); target class indices (N,) / (N, d1, ...) in [0, K) or equal
    to ``ignore_index`` (an int, or None: no class ignored), or probabilities of the logits' shape; returns eps.

    A NumPy index target is range-checked (a negative index would otherwise wrap
    around silently); a CuPy one is not, as that needs a host sync.
    """
    check_array(logits, layer, "logits")
    if logits.ndim < 2:
        raise ValueError(
            f"{layer}: expected logits of rank >= 2 (N, num_classes, ...), got shape {tuple(logits.shape)}"
        )
    eps = check_probability(label_smoothing, layer, "label_smoothing")
    if ignore_index is not None and (not isinstance(ignore_index, (int, np.integer)) or isinstance(ignore_index, bool)):
        raise TypeError(f"{layer}: ignore_index must be an int or None, got {ignore_index!r}")
    k = logits.shape[1]
    index_shape = (logits.shape[0], *logits.shape[2:])
    if not hasattr(target, "shape") or not hasattr(target, "dtype"):
        target = np.asarray(target)
    if tuple(target.shape) == index_shape:
        if target.dtype.kind not in "iu":
            raise TypeError(f"{layer}: class-index target must be integers, got {target.dtype}")
        if get_array_module(target) is np and target.size:
            classes = target if ignore_index is None else target[target != ignore_index]
            if classes.size and (classes.min() < 0 or classes.max() >= k):
                ignored = "" if ignore_index is None else f" (or ignore_index={ignore_index})"
                raise ValueError(
                    f"{layer}: class indices must be in [0, {k - 1}]{ignored} for {k} classes, "
                    f"got values from {classes.min()} to {classes.max()}"
                )
    elif tuple(target.shape) != tuple(logits.shape):
        raise ValueError(
            f"{layer}: target must be {index_shape} indices or {tuple(logits.shape)} probabilities "
            f"(as (N,) / (N, K) for logits (N, K)), got {tuple(target.shape)}"
        )
    return eps


def check_token_mean(x: Array, layer: str) -> None:
    """Tokens (B, N, C)."""
    check_ndim(x, 3, layer, "(B, tokens, C)")


def check_interpolate(
    x: Array, size: Any, scale_factor: Any, mode: str, channels_last: bool, layer: str
) -> tuple[tuple[int, int], tuple[float | None, float | None]]:
    """A rank-4 float map and exactly one of size / scale_factor; returns the output size and the scale factor
    of each axis that sets its coordinate map (None for an axis resized by ``size`` or left its size).

    As torch.nn.functional.interpolate: the output size is floor(in * scale_factor) per axis, and must be >= 1.
    """
    check_ndim(x, 4, layer, "(N, H, W, C)" if channels_last else "(N, C, H, W)")
    if mode not in ("nearest", "bilinear"):
        raise ValueError(f"{layer}: mode must be 'nearest' or 'bilinear', got {mode!r}")
    if (size is None) == (scale_factor is None):
        raise ValueError(f"{layer}: give exactly one of size and scale_factor, got size={size!r}, "
                         f"scale_factor={scale_factor!r}")  # fmt: skip
    h, w = (x.shape[1], x.shape[2]) if channels_last else (x.shape[2], x.shape[3])
    if size is not None:
        out = pair(size, layer, "size")
        if min(out) < 1:
            raise ValueError(f"{layer}: size must be positive, got {size!r}")
        return out, (None, None)
    factors = scale_factor if isinstance(scale_factor, (tuple, list)) else (scale_factor, scale_factor)
    if len(factors) != 2 or not all(isinstance(f, (int, float, np.integer, np.floating)) for f in factors):
        raise TypeError(f"{layer}: scale_factor must be a number or a pair of numbers, got {scale_factor!r}")
    sh, sw = float(factors[0]), float(factors[1])
    if not (sh > 0.0 and sw > 0.0 and np.isfinite(sh) and np.isfinite(sw)):
        raise ValueError(f"{layer}: scale_factor must be positive and finite, got {scale_factor!r}")
    out = (int(np.floor(h * sh)), int(np.floor(w * sw)))
    if min(out) < 1:
        raise ValueError(f"{layer}: scale_factor {scale_factor!r} maps the {h}x{w} input to an empty {out[0]}x{out[1]}")
    # torch copies an axis whose size does not change, whatever its scale factor: its coordinate map is then
    # the one of size= (scale in / out = 1, the identity)
    return out, (None if out[0] == h else sh, None if out[1] == w else sw)


def check_group_norm(
    x: Array, num_groups: Any, weight: Array, bias: Array, channels_last: bool, layer: str
) -> tuple[int, int]:
    """x (N, C, *) or, channels last, (N, *, C) of weight's dtype; weight and bias (C,); num_groups divides C.
    Returns (num_groups, C)."""
    check_array(x, layer)
    check_ndim(weight, 1, layer, "(C,)", name="weight")
    c = weight.shape[0]
    expect = f"(N, ..., {c})" if channels_last else f"(N, {c}, ...)"
    if x.ndim < 2 or x.shape[-1 if channels_last else 1] != c:
        raise ValueError(f"{layer}: expected input of shape {expect}, got {tuple(x.shape)}")
    check_same_dtype(x, weight, layer)
    if tuple(bias.shape) != (c,):
        raise ValueError(f"{layer}: expected bias of shape ({c},), got {tuple(bias.shape)}")
    if not isinstance(num_groups, (int, np.integer)) or isinstance(num_groups, bool) or num_groups < 1:
        raise ValueError(f"{layer}: num_groups must be a positive int, got {num_groups!r}")
    if c % num_groups:
        raise ValueError(f"{layer}: num_groups={num_groups} must divide the {c} channels")
    return int(num_groups), c
