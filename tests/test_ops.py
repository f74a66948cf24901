"""Functional ops: central-difference gradchecks, torch parity (float64 and float32), random-op statistics."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from helpers import (
    F32_GRAD_TOL,
    F64_TOL,
    TOLS,
    assert_close,
    assert_dtype,
    assert_gradcheck,
    away_from_zero,
    randn,
    to_torch,
)

from pvt_np import gradcheck, manual_seed, ops
from pvt_np.backend import get_rng

torch = pytest.importorskip("torch")
F = torch.nn.functional

DTYPES = [np.float64, np.float32]


def _tuple(grads: Any) -> tuple[Any, ...]:
    """Backward results as a tuple (single-input ops return one array)."""
    return tuple(grads) if isinstance(grads, (tuple, list)) else (grads,)


@dataclass(frozen=True)
class OpCase:
    """One op configuration: pvt_np forward/backward over ``inputs`` and the torch reference.

    forward(*inputs) -> (out, cache); backward(dout, cache) -> grads in the order of inputs;
    torch_ref(cache, *tensors) -> out, computed with torch autograd (cache gives random masks).
    """

    id: str
    forward: Callable[..., tuple[Any, Any]]
    backward: Callable[[Any, Any], Any]
    make_inputs: Callable[[np.random.Generator], list[np.ndarray]]
    torch_ref: Callable[..., Any]
    names: tuple[str, ...]
    f32_grad_tol: float = F32_GRAD_TOL


def _seed(case_id: str) -> int:
    return zlib.crc32(case_id.encode())


# -- conv --------------------------------------------------------------------
def _nchw(t: Any) -> Any:
    return t.permute(0, 3, 1, 2)


def _nhwc(t: Any) -> Any:
    return t.permute(0, 2, 3, 1)


def _conv_case(
    name: str,
    n: int,
    c: int,
    o: int,
    hw: tuple[int, int],
    kernel: tuple[int, int],
    stride: Any,
    padding: Any,
    groups: int,
    channels_last: bool,
    bias: bool = True,
) -> OpCase:
    h, w = hw
    kh, kw = kernel
    layout = "nhwc" if channels_last else "nchw"

    def make(rng: np.random.Generator) -> list[np.ndarray]:
        x = randn(rng, n, h, w, c) if channels_last else randn(rng, n, c, h, w)
        arrays = [x, randn(rng, o, c // groups, kh, kw) * 0.5]
        return [*arrays, randn(rng, o)] if bias else arrays

    def fwd(x: Any, wt: Any, b: Any = None) -> tuple[Any, Any]:
        return ops.conv2d_forward(x, wt, b, stride, padding, groups, channels_last)

    def bwd(g: Any, cache: Any) -> tuple[Any, ...]:
        dx, dw, db = ops.conv2d_backward(g, cache)
        assert (db is None) == (not bias)
        return (dx, dw, db) if bias else (dx, dw)

    def ref(_cache: Any, x: Any, wt: Any, b: Any = None) -> Any:
        xin = _nchw(x) if channels_last else x
        out = F.conv2d(xin, wt, b, stride=stride, padding=padding, groups=groups)
        return _nhwc(out) if channels_last else out

    names = ("x", "weight", "bias") if bias else ("x", "weight")
    return OpCase(f"conv2d-{name}-{layout}", fwd, bwd, make, ref, names)


CONV_SPECS: list[tuple[Any, ...]] = [
    # name, n, c, o, (h, w), (kh, kw), stride, padding, groups[, bias]
    ("dense-batch1-13x7", 1, 3, 4, (13, 7), (3, 3), 1, 0, 1),
    ("strided-padded", 2, 3, 5, (13, 7), (3, 3), 2, 1, 1),
    ("rect-kernel-mixed-stride", 1, 2, 3, (9, 11), (3, 2), (2, 3), (1, 0), 1),
    ("stride-gt-kernel", 2, 2, 3, (13, 7), (2, 2), 3, 0, 1),
    ("patch-embed-7x7-s4", 1, 3, 4, (13, 11), (7, 7), 4, 3, 1),
    ("grouped", 2, 4, 6, (7, 5), (3, 3), 1, 1, 2),
    ("depthwise", 2, 5, 5, (13, 7), (3, 3), 1, 1, 5),
    ("depthwise-strided", 1, 4, 4, (13, 7), (3, 3), 2, 1, 4),
    ("depthwise-multiplier", 1, 3, 6, (13, 7), (3, 3), 1, 1, 3),
    ("depthwise-unpadded", 2, 4, 4, (9, 7), (3, 3), 1, 0, 4),
    ("depthwise-rect-padding", 1, 3, 3, (9, 11), (3, 5), 1, (1, 2), 3),
    ("depthwise-padding-beyond-kernel", 2, 3, 3, (6, 5), (3, 3), 1, 3, 3),
    ("pointwise-grouped", 2, 6, 4, (5, 3), (1, 1), 1, 0, 2),
    ("pointwise-padded-nobias", 1, 4, 3, (5, 3), (1, 1), 1, 1, 1, False),
    ("sr-conv-nobias", 2, 4, 4, (8, 6), (2, 2), 2, 0, 1, False),
]

CONV_CASES = [_conv_case(*spec[:9], channels_last=cl, bias=spec[9] if len(spec) > 9 else True)
              for spec in CONV_SPECS for cl in (False, True)]  # fmt: skip


# -- linear, layer norm --------------------------------------------------------
def _linear_case(name: str, x_shape: tuple[int, ...], out_features: int, bias: bool = True) -> OpCase:
    in_features = x_shape[-1]

    def make(rng: np.random.Generator) -> list[np.ndarray]:
        arrays = [randn(rng, *x_shape), randn(rng, out_features, in_features)]
        return [*arrays, randn(rng, out_features)] if bias else arrays

    def bwd(g: Any, cache: Any) -> tuple[Any, ...]:
        dx, dw, db = ops.linear_backward(g, cache)
        assert (db is None) == (not bias)
        return (dx, dw, db) if bias else (dx, dw)

    names = ("x", "weight", "bias") if bias else ("x", "weight")
    return OpCase(
        f"linear-{name}",
        lambda x, w, b=None: ops.linear_forward(x, w, b),
        bwd,
        make,
        lambda _c, x, w, b=None: F.linear(x, w, b),
        names,
    )


def _layer_norm_case(name: str, x_shape: tuple[int, ...], eps: float, scale: float = 1.0) -> OpCase:
    c = x_shape[-1]

    def make(rng: np.random.Generator) -> list[np.ndarray]:
        return [randn(rng, *x_shape) * scale + 0.3, 1.0 + 0.5 * randn(rng, c), randn(rng, c)]

    return OpCase(
        f"layer_norm-{name}-eps{eps:g}",
        lambda x, w, b: ops.layer_norm_forward(x, w, b, eps),
        ops.layer_norm_backward,
        make,
        lambda _c, x, w, b: F.layer_norm(x, (c,), w, b, eps),
        ("x", "weight", "bias"),
    )


# -- pointwise, softmax ----------------------------------------------------------
def _unary_case(
    name: str,
    fwd: Callable[[Any], tuple[Any, Any]],
    bwd: Callable[[Any, Any], Any],
    ref: Callable[[Any], Any],
    shape: tuple[int, ...],
    make: Callable[[np.random.Generator, tuple[int, ...]], np.ndarray] | None = None,
) -> OpCase:
    def make_inputs(rng: np.random.Generator) -> list[np.ndarray]:
        return [make(rng, shape) if make else randn(rng, *shape) * 2.0]

    return OpCase(name, fwd, bwd, make_inputs, lambda _c, x: ref(x), ("x",))


def _relu_inputs(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return away_from_zero(rng, *shape)


UNARY_CASES = [
    _unary_case("gelu-none", lambda x: ops.gelu_forward(x, "none"), ops.gelu_backward, F.gelu, (2, 13, 7)),
    _unary_case(
        "gelu-tanh",
        lambda x: ops.gelu_forward(x, "tanh"),
        ops.gelu_backward,
        lambda x: F.gelu(x, approximate="tanh"),
        (2, 13, 7),
    ),
    _unary_case("gelu-none-batch1", lambda x: ops.gelu_forward(x), ops.gelu_backward, F.gelu, (1, 5)),
    _unary_case("relu", ops.relu_forward, ops.relu_backward, F.relu, (2, 13, 7), _relu_inputs),
    _unary_case("softmax-last", ops.softmax_forward, ops.softmax_backward, lambda x: F.softmax(x, dim=-1), (2, 5, 7)),
    _unary_case(
        "softmax-axis1",
        lambda x: ops.softmax_forward(x, axis=1),
        ops.softmax_backward,
        lambda x: F.softmax(x, dim=1),
        (2, 5, 3),
    ),
    _unary_case(
        "softmax-axis0-batch1",
        lambda x: ops.softmax_forward(x, axis=0),
        ops.softmax_backward,
        lambda x: F.softmax(x, dim=0),
        (13, 1),
    ),
    _unary_case("token_mean", ops.token_mean_forward, ops.token_mean_backward, lambda x: x.mean(dim=1), (2, 13, 7)),
    _unary_case(
        "token_mean-batch1-one-token", ops.token_mean_forward, ops.token_mean_backward, lambda x: x.mean(1), (1, 1, 3)
    ),
]


# -- reshapes (their backward is the inverse reshape) ----------------------------
def _reshape_case(
    name: str, fwd: Callable[[Any], Any], bwd: Callable[[Any], Any], ref: Callable[[Any], Any], shape: tuple[int, ...]
) -> OpCase:
    return OpCase(
        name,
        lambda x: (fwd(x), None),
        lambda g, _c: bwd(g),
        lambda rng: [randn(rng, *shape)],
        lambda _c, x: ref(x),
        ("x",),
    )


RESHAPE_CASES = [
    _reshape_case(
        "tokens_to_nhwc",
        lambda x: ops.tokens_to_nhwc(x, (13, 7)),
        ops.nhwc_to_tokens,
        lambda x: x.reshape(2, 13, 7, 5),
        (2, 91, 5),
    ),
    _reshape_case(
        "nhwc_to_tokens",
        ops.nhwc_to_tokens,
        lambda g: ops.tokens_to_nhwc(g, (13, 7)),
        lambda x: x.flatten(1, 2),
        (1, 13, 7, 5),
    ),
]


# -- attention -----------------------------------------------------------------
def _attention_case(name: str, b: int, h: int, n: int, m: int, d: int, scale: float | None, p: float) -> OpCase:
    def make(rng: np.random.Generator) -> list[np.ndarray]:
        return [randn(rng, b, h, n, d), randn(rng, b, h, m, d), randn(rng, b, h, m, d)]

    def ref(cache: Any, q: Any, k: Any, v: Any) -> Any:
        keep = cache[4]
        if keep is None:
            return F.scaled_dot_product_attention(q, k, v, scale=scale)
        s = d**-0.5 if scale is None else scale
        probs = torch.softmax(q @ k.transpose(-2, -1) * s, dim=-1)
        return (probs * to_torch(keep)) @ v

    return OpCase(
        f"attention-{name}",
        lambda q, k, v: ops.attention_forward(q, k, v, scale=scale, dropout_p=p),
        ops.attention_backward,
        make,
        ref,
        ("q", "k", "v"),
    )


ATTENTION_CASES = [
    _attention_case("n13-m5", 2, 2, 13, 5, 4, None, 0.0),
    _attention_case("batch1-n-eq-m", 1, 1, 6, 6, 3, None, 0.0),
    _attention_case("n5-m13-scale", 1, 3, 5, 13, 4, 0.3, 0.0),
    _attention_case("n13-m5-dropout", 2, 2, 13, 5, 4, None, 0.3),
    _attention_case("batch1-m2-dropout-scale", 1, 2, 7, 2, 3, 0.7, 0.5),
]


# -- adaptive pooling -----------------------------------------------------------
def _pool_case(name: str, shape_nchw: tuple[int, int, int, int], out: Any, channels_last: bool) -> OpCase:
    n, c, h, w = shape_nchw

    def make(rng: np.random.Generator) -> list[np.ndarray]:
        return [randn(rng, n, h, w, c) if channels_last else randn(rng, n, c, h, w)]

    def ref(_cache: Any, x: Any) -> Any:
        if channels_last:
            return _nhwc(F.adaptive_avg_pool2d(_nchw(x), out))
        return F.adaptive_avg_pool2d(x, out)

    return OpCase(
        f"adaptive_avg_pool2d-{name}-{'nhwc' if channels_last else 'nchw'}",
        lambda x: ops.adaptive_avg_pool2d_forward(x, out, channels_last),
        ops.adaptive_avg_pool2d_backward,
        make,
        ref,
        ("x",),
    )


POOL_SPECS = [
    ("15x11-to-7", (2, 3, 15, 11), 7),
    ("13x7-to-3x5", (1, 2, 13, 7), (3, 5)),
    ("8x8-to-4-divisible", (2, 2, 8, 8), 4),
    ("5x3-to-7x4-upsample", (1, 2, 5, 3), (7, 4)),
    ("13x7-to-1-global", (2, 3, 13, 7), 1),
]
POOL_CASES = [_pool_case(*spec, channels_last=cl) for spec in POOL_SPECS for cl in (False, True)]


# -- group norm -------------------------------------------------------------------
def _group_norm_case(
    name: str, shape_nchw: tuple[int, ...], groups: int, eps: float, scale: float = 1.0, *, channels_last: bool
) -> OpCase:
    c = shape_nchw[1]
    shape = (shape_nchw[0], *shape_nchw[2:], c) if channels_last else shape_nchw

    def make(rng: np.random.Generator) -> list[np.ndarray]:
        return [randn(rng, *shape) * scale + 0.3, 1.0 + 0.5 * randn(rng, c), randn(rng, c)]

    def ref(_cache: Any, x: Any, w: Any, b: Any) -> Any:
        if not channels_last:
            return F.group_norm(x, groups, w, b, eps)
        # contiguous: torch's kernel for a channels-last strided float32 map loses ~1e-4 at a small variance
        # beside a mean (measured 7.6e-5 to 1.2e-4 relative to float64 at var ~1e-4, mean 0.3; pvt_np's 1.7e-6)
        return F.group_norm(x.movedim(-1, 1).contiguous(), groups, w, b, eps).movedim(1, -1)

    return OpCase(
        f"group_norm-{name}-g{groups}-{'nhwc' if channels_last else 'nchw'}",
        lambda x, w, b: ops.group_norm_forward(x, w, b, groups, eps, channels_last),
        ops.group_norm_backward,
        make,
        ref,
        ("x", "weight", "bias"),
    )


GROUP_NORM_CASES = [
    _group_norm_case(*spec, channels_last=cl)
    for spec in [
        ("13x7", (2, 6, 13, 7), 3, 1e-5),
        ("batch1-5x3", (1, 8, 5, 3), 8, 1e-5),  # one channel a group (instance norm)
        ("one-group", (2, 4, 3, 5), 1, 1e-5),  # one group (layer norm over C, H, W)
        ("1d", (3, 4, 7), 2, 1e-6),  # (N, C, L)
        ("small-var", (2, 6, 3, 2), 2, 1e-5, 0.01),  # var ~1e-4: eps matters
    ]
    for cl in (False, True)
]


# -- interpolation ----------------------------------------------------------------
def _interp_case(name: str, shape_nchw: tuple[int, int, int, int], mode: str, channels_last: bool, **kw: Any) -> OpCase:
    n, c, h, w = shape_nchw

    def make(rng: np.random.Generator) -> list[np.ndarray]:
        return [randn(rng, n, h, w, c) if channels_last else randn(rng, n, c, h, w)]

    def ref(_cache: Any, x: Any) -> Any:
        if channels_last:
            return _nhwc(F.interpolate(_nchw(x), mode=mode, **kw))
        return F.interpolate(x, mode=mode, **kw)

    return OpCase(
        f"interpolate-{mode}-{name}-{'nhwc' if channels_last else 'nchw'}",
        lambda x: ops.interpolate_forward(x, mode=mode, channels_last=channels_last, **kw),
        ops.interpolate_backward,
        make,
        ref,
        ("x",),
    )


INTERP_SPECS: list[tuple[str, tuple[int, int, int, int], dict[str, Any]]] = [
    ("7x13-to-16x5", (2, 3, 7, 13), {"size": (16, 5)}),  # up on H by 16/7, down on W by 5/13
    ("13x5-to-5x16", (1, 2, 13, 5), {"size": (5, 16)}),
    ("x2-odd-7x5", (2, 2, 7, 5), {"scale_factor": 2}),  # torch's nearest shortcut for out == 2 * in
    ("x2.5x0.5-9x7", (1, 3, 9, 7), {"scale_factor": (2.5, 0.5)}),  # coordinates from 1 / scale_factor
    ("x1.7-to-11x8", (1, 2, 7, 5), {"scale_factor": 1.7}),
    ("x1.2-size-kept", (2, 2, 3, 4), {"scale_factor": 1.2}),  # 3x4 stays 3x4: torch copies, whatever the scale
    ("x0.3-down", (1, 2, 13, 11), {"scale_factor": 0.3}),
    ("1x1-to-4x3", (1, 3, 1, 1), {"size": (4, 3)}),
]
INTERP_CASES = [
    _interp_case(name, shape, mode, cl, **kw)
    for name, shape, kw in INTERP_SPECS
    for mode in ("nearest", "bilinear")
    for cl in (False, True)
]


# -- dropout, drop path ---------------------------------------------------------
def _mask_ref(cache: Any, x: Any) -> Any:
    """torch reference of a masked op: x * (pvt_np's scaled mask), or x when the op was the identity.

    The fast implementation's cache is the mask itself, the plain one's a PlainDropoutCache holding it.
    """
    keep = getattr(cache, "keep", cache)
    return x if keep is None else x * to_torch(keep)


def _random_case(name: str, fwd: Callable[..., tuple[Any, Any]], bwd: Callable[..., Any], shape: tuple[int, ...]):
    return OpCase(name, fwd, bwd, lambda rng: [randn(rng, *shape)], _mask_ref, ("x",))


RANDOM_CASES = [
    _random_case("dropout-p0.3", lambda x: ops.dropout_forward(x, 0.3), ops.dropout_backward, (2, 13, 7)),
    _random_case("dropout-p1", lambda x: ops.dropout_forward(x, 1.0), ops.dropout_backward, (1, 13, 7)),
    _random_case("dropout-p0", lambda x: ops.dropout_forward(x, 0.0), ops.dropout_backward, (2, 5)),
    _random_case("dropout-eval", lambda x: ops.dropout_forward(x, 0.5, False), ops.dropout_backward, (2, 5)),
    _random_case("drop_path-p0.4", lambda x: ops.drop_path_forward(x, 0.4), ops.drop_path_backward, (8, 13, 7)),
    _random_case("drop_path-4d", lambda x: ops.drop_path_forward(x, 0.5), ops.drop_path_backward, (6, 3, 5, 2)),
    _random_case("drop_path-eval", lambda x: ops.drop_path_forward(x, 0.5, False), ops.drop_path_backward, (2, 5)),
]


# -- cross entropy --------------------------------------------------------------
def _ce_case(name: str, n: int, k: int, smoothing: float, target_kind: str) -> OpCase:
    trng = np.random.default_rng(_seed(name))
    if target_kind == "index":
        target: np.ndarray = trng.integers(0, k, size=n)
    elif target_kind == "soft":
        target = trng.dirichlet(np.ones(k), size=n)
    else:  # unnormalised non-negative weights: exercises the sum_k t_k factor of the backward
        target = trng.uniform(0.0, 0.4, size=(n, k))

    def ref(_cache: Any, z: Any) -> Any:
        t = torch.from_numpy(target) if target_kind == "index" else to_torch(target).to(z.dtype)
        return F.cross_entropy(z, t, label_smoothing=smoothing)

    return OpCase(
        f"cross_entropy-{name}",
        lambda z: ops.cross_entropy_forward(z, target, smoothing),
        lambda g, c: ops.cross_entropy_backward(g, c),
        lambda rng: [randn(rng, n, k) * 2.0],
        ref,
        ("logits",),
    )


CE_CASES = [
    _ce_case("index", 5, 7, 0.0, "index"),
    _ce_case("index-smoothing", 5, 7, 0.1, "index"),
    _ce_case("index-batch1", 1, 4, 0.2, "index"),
    _ce_case("soft", 5, 7, 0.0, "soft"),
    _ce_case("soft-smoothing", 4, 6, 0.15, "soft"),
    _ce_case("unnormalised-soft-smoothing", 3, 5, 0.1, "weights"),
]


def _seg_ce_case(name: str, shape: tuple[int, ...], smoothing: float, ignore_index: int | None) -> OpCase:
    """Per-position cross-entropy: logits (N, K, d1, ...), index targets (N, d1, ...), every third one ignored."""
    trng = np.random.default_rng(_seed(name))
    target = trng.integers(0, shape[1], size=(shape[0], *shape[2:]))
    if ignore_index is not None:
        target.reshape(-1)[1::3] = ignore_index

    def ref(_cache: Any, z: Any) -> Any:
        ignored = -100 if ignore_index is None else ignore_index
        return F.cross_entropy(z, torch.from_numpy(target), ignore_index=ignored, label_smoothing=smoothing)

    return OpCase(
        f"cross_entropy-{name}",
        lambda z: ops.cross_entropy_forward(z, target, smoothing, ignore_index),
        lambda g, c: ops.cross_entropy_backward(g, c),
        lambda rng: [randn(rng, *shape) * 2.0],
        ref,
        ("logits",),
    )


SEG_CE_CASES = [
    _seg_ce_case("pixels-ignore255", (2, 5, 3, 7), 0.0, 255),
    _seg_ce_case("pixels-ignore255-smoothing", (1, 4, 5, 3), 0.1, 255),
    _seg_ce_case("pixels-ignore-a-class", (2, 3, 4, 5), 0.0, 1),  # an index inside [0, K) can be the ignored one
    _seg_ce_case("pixels-no-ignore", (2, 4, 3, 2), 0.2, None),
    _seg_ce_case("1d-positions-ignore-100", (3, 6, 5), 0.0, -100),
    _seg_ce_case("rows-ignore255", (7, 5), 0.1, 255),
]

DETERMINISTIC_CASES = [
    *CONV_CASES,
    _linear_case("batch1", (1, 7), 5),
    _linear_case("3d", (2, 13, 7), 3),
    _linear_case("1d-input", (7,), 4),
    _linear_case("nobias", (3, 5), 2, bias=False),
    _layer_norm_case("3d", (2, 13, 7), 1e-5),
    _layer_norm_case("batch1", (1, 5), 1e-6),
    # small variance (~1e-4): eps 1e-5 vs 1e-6 changes the output by several percent
    _layer_norm_case("small-var", (3, 6), 1e-5, scale=0.01),
    _layer_norm_case("small-var", (3, 6), 1e-6, scale=0.01),
    *UNARY_CASES,
    *RESHAPE_CASES,
    *ATTENTION_CASES,
    *POOL_CASES,
    *GROUP_NORM_CASES,
    *INTERP_CASES,
    *CE_CASES,
    *SEG_CE_CASES,
]
ALL_CASES = [*DETERMINISTIC_CASES, *RANDOM_CASES]


@pytest.mark.parametrize("case", ALL_CASES, ids=lambda c: c.id)
def test_gradcheck(case: OpCase) -> None:
    """Every analytic gradient (input and parameters) matches float64 central differences."""
    inputs = case.make_inputs(np.random.default_rng(_seed(case.id)))
    errors = gradcheck((case.forward, case.backward), inputs, names=case.names)
    assert_gradcheck(errors, list(case.names))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("case", ALL_CASES, ids=lambda c: c.id)
def test_matches_torch(case: OpCase, dtype: Any) -> None:
    """Forward output and every gradient equal torch's (relative to each tensor's max magnitude)."""
    rng = np.random.default_rng(_seed(case.id) + 1)
    inputs = [a.astype(dtype) for a in case.make_inputs(rng)]
    manual_seed(11)
    out, cache = case.forward(*inputs)
    assert_dtype(out, dtype, f"{case.id} output")
    dout = rng.standard_normal(np.shape(out)).astype(dtype)
    grads = _tuple(case.backward(dout, cache))
    assert len(grads) == len(inputs)

    tensors = [to_torch(a, requires_grad=True) for a in inputs]
    ref = case.torch_ref(cache, *tensors)
    ref.backward(to_torch(dout))

    tol = TOLS[np.dtype(dtype)]
    grad_tol = F64_TOL if dtype == np.float64 else case.f32_grad_tol
    assert_close(out, ref, tol, f"{case.id} forward")
    for name, grad, t in zip(case.names, grads, tensors, strict=True):
        assert_dtype(grad, dtype, f"{case.id} d{name}")
        assert_close(grad, t.grad, grad_tol, f"{case.id} d{name}")


# -- behaviour beyond the torch comparison --------------------------------------------
def test_relu_gradient_at_zero_is_zero_like_torch() -> None:
    """At x == 0 ReLU passes no gradient, torch's convention."""
    x = np.array([[-1.0, 0.0, 2.0, 0.0, -0.0]])
    out, cache = ops.relu_forward(x)
    dx = ops.relu_backward(np.ones_like(x), cache)
    t = to_torch(x, requires_grad=True)
    F.relu(t).backward(torch.ones_like(t))
    np.testing.assert_array_equal(out, F.relu(to_torch(x)).numpy())
    np.testing.assert_array_equal(dx, t.grad.numpy())


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_interpolate_matches_torch_at_many_ratios(mode: str) -> None:
    """torch computes nearest source indices in float32 (floor(d * s), s = in / out or 1 / scale_factor), bilinear
    coordinates in the map's dtype: an arange resized to many sizes and by many factors equals torch's result
    (nearest: bit for bit, the same pixels; bilinear: to float64 rounding)."""
    atol = 0.0 if mode == "nearest" else 1e-13
    for in_size in (1, 2, 3, 5, 7, 13, 16, 31):
        x = np.arange(in_size * 3, dtype=np.float64).reshape(1, 1, in_size, 3)
        for out_size in (1, 2, 5, 7, 13, 16, 29, 64):
            out, _ = ops.interpolate_forward(x, size=(out_size, 3), mode=mode)
            ref = F.interpolate(to_torch(x), size=(out_size, 3), mode=mode).numpy()
            np.testing.assert_allclose(out, ref, rtol=0, atol=atol * in_size * 3)
        for factor in (0.25, 0.3, 0.5, 0.9, 1.1, 1.5, 2.0, 2.09, 2.5, 3.0, 4.0, 7.3):
            if int(in_size * factor) < 1:
                continue
            out, _ = ops.interpolate_forward(x, scale_factor=(factor, 1.0), mode=mode)
            ref = F.interpolate(to_torch(x), scale_factor=(factor, 1.0), mode=mode).numpy()
            np.testing.assert_allclose(out, ref, rtol=0, atol=atol * in_size * 3)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_with_every_position_ignored_is_nan_with_zero_gradient_as_torch(smoothing: float) -> None:
    """No position counted: torch's mean is 0 / 0 = nan, and its gradient 0; pvt_np gives the same, without a
    warning."""
    z = randn(np.random.default_rng(4), 2, 3, 4, 5)
    target = np.full((2, 4, 5), 255)
    t = to_torch(z, requires_grad=True)
    ref = F.cross_entropy(t, torch.from_numpy(target), ignore_index=255, label_smoothing=smoothing)
    ref.backward()
    with np.errstate(all="raise"):
        loss, cache = ops.cross_entropy_forward(z, target, smoothing, 255)
        grad = ops.cross_entropy_backward(1.0, cache)
    assert np.isnan(loss) and np.isnan(ref.item())
    np.testing.assert_array_equal(grad, t.grad.numpy())
    assert not grad.any()


def test_softmax_is_overflow_safe() -> None:
    """Huge logits do not overflow (the max is subtracted first)."""
    x = np.array([[1000.0, 1001.0, 999.0]])
    y, _ = ops.softmax_forward(x)
    assert_close(y, F.softmax(to_torch(x), dim=-1), F64_TOL, "softmax of large logits")


def test_cross_entropy_is_overflow_safe() -> None:
    """Large logits give the same finite loss and gradient as torch."""
    z = np.array([[800.0, -800.0, 0.0], [0.0, 1000.0, 999.0]])
    target = np.array([1, 2])
    loss, cache = ops.cross_entropy_forward(z, target)
    t = to_torch(z, requires_grad=True)
    ref = F.cross_entropy(t, torch.from_numpy(target))
    ref.backward()
    assert_close(loss, ref, F64_TOL, "loss")
    assert_close(ops.cross_entropy_backward(1.0, cache), t.grad, F64_TOL, "dlogits")


def test_cross_entropy_returns_a_scalar_and_scales_with_dout() -> None:
    """The loss has shape (); the backward is linear in dout."""
    rng = np.random.default_rng(0)
    z = randn(rng, 4, 3)
    loss, cache = ops.cross_entropy_forward(z, np.array([0, 2, 1, 1]))
    assert np.shape(loss) == ()
    g1 = ops.cross_entropy_backward(1.0, cache)
    g3 = ops.cross_entropy_backward(np.float64(-3.0), cache)
    assert_close(g3, -3.0 * g1, F64_TOL, "dout scaling")


def test_conv_output_size_matches_torch() -> None:
    """conv_output_size agrees with the shapes torch produces."""
    for size, k, s, p in [(13, 3, 2, 1), (7, 7, 4, 3), (8, 2, 2, 0), (5, 1, 1, 1), (13, 2, 3, 0)]:
        x = torch.zeros(1, 1, size, size)
        expected = F.conv2d(x, torch.zeros(1, 1, k, k), stride=s, padding=p).shape[-1]
        assert ops.conv_output_size(size, k, s, p) == expected, (size, k, s, p)


def test_conv_accepts_non_contiguous_nhwc_input() -> None:
    """A channels-last conv of a transposed (non-contiguous) view equals the NCHW conv."""
    rng = np.random.default_rng(3)
    x = randn(rng, 2, 3, 9, 7)
    w, b = randn(rng, 4, 3, 3, 3), randn(rng, 4)
    ref, _ = ops.conv2d_forward(x, w, b, 2, 0)
    out, _ = ops.conv2d_forward(x.transpose(0, 2, 3, 1), w, b, 2, 0, channels_last=True)
    assert_close(out.transpose(0, 3, 1, 2), ref, F64_TOL, "nhwc view vs nchw")


def test_depthwise_conv_cache_keeps_the_input_unpadded() -> None:
    """A depthwise conv keeps its input itself for the backward, not a padded copy (the FFN's memory)."""
    rng = np.random.default_rng(5)
    x = randn(rng, 2, 6, 5, 4).astype(np.float32)
    _, cache = ops.conv2d_forward(x, randn(rng, 4, 1, 3, 3).astype(np.float32), None, 1, 1, groups=4,
                                  channels_last=True)  # fmt: skip
    assert cache.x is x


def test_adaptive_pool_matrix_rows_are_torch_windows() -> None:
    """Each row averages torch's window floor(iH/P) .. ceil((i+1)H/P) and sums to 1."""
    a = ops.adaptive_pool_matrix(np, 15, 7, np.float64)
    np.testing.assert_allclose(a.sum(axis=1), 1.0, rtol=0, atol=1e-15)
    eye = torch.eye(15, dtype=torch.float64).reshape(15, 1, 15)  # 15 one-hot signals of length 15
    ref = F.adaptive_avg_pool1d(eye, 7).reshape(15, 7).T  # column j = pooled one-hot j
    assert_close(a, ref, F64_TOL, "pooling matrix")


def test_reshapes_are_views_and_invert_each_other() -> None:
    """tokens <-> NHWC share memory and invert each other."""
    rng = np.random.default_rng(4)
    t = randn(rng, 2, 15, 4)
    nhwc = ops.tokens_to_nhwc(t, (5, 3))
    assert np.shares_memory(nhwc, t)
    np.testing.assert_array_equal(ops.nhwc_to_tokens(nhwc), t)


# -- random ops: statistics and seeding --------------------------------------------
@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_dropout_statistics(p: float, dtype: Any) -> None:
    """About 1 - p of the elements survive, each scaled by exactly 1/(1-p); the rest are 0."""
    n = 200_000
    x = np.full((n,), 2.0, dtype=dtype)
    manual_seed(0)
    y, keep = ops.dropout_forward(x, p)
    kept = y != 0
    rate = kept.mean()
    sigma = np.sqrt(p * (1 - p) / n)
    assert abs(rate - (1 - p)) < 5 * sigma, f"keep rate {rate:.4f}, expected {1 - p} +- {5 * sigma:.4f}"
    scale = np.asarray(1.0 / (1 - p), dtype=dtype)  # 1/(1-p) rounded once to the working dtype
    np.testing.assert_array_equal(y[kept], 2.0 * scale)
    np.testing.assert_array_equal(ops.dropout_backward(np.ones_like(x), keep), keep)
    assert set(np.unique(keep).tolist()) == {0.0, float(np.asarray(1 / (1 - p), dtype=dtype))}


@pytest.mark.parametrize("p", [0.2, 0.6])
def test_drop_path_statistics(p: float) -> None:
    """One draw per sample: each sample is wholly kept (scaled 1/(1-p)) or wholly zeroed, at rate 1 - p."""
    n = 20_000
    x = np.ones((n, 3, 2))
    manual_seed(1)
    y, keep = ops.drop_path_forward(x, p)
    assert keep.shape == (n, 1, 1)
    per_sample = y.reshape(n, -1)
    kept = per_sample[:, 0] != 0
    assert np.all(per_sample == per_sample[:, :1]), "a sample was partially dropped"
    np.testing.assert_allclose(per_sample[kept], 1.0 / (1 - p), rtol=0, atol=1e-15)
    sigma = np.sqrt(p * (1 - p) / n)
    assert abs(kept.mean() - (1 - p)) < 5 * sigma, f"keep rate {kept.mean():.4f}, expected {1 - p}"


@pytest.mark.parametrize(
    ("fwd", "bwd"),
    [(ops.dropout_forward, ops.dropout_backward), (ops.drop_path_forward, ops.drop_path_backward)],
    ids=["dropout", "drop_path"],
)
def test_random_ops_identity_when_off(fwd: Callable[..., tuple[Any, Any]], bwd: Callable[..., Any]) -> None:
    """Not training, or p == 0: output is the input, cache None, backward the identity."""
    x = np.random.default_rng(0).standard_normal((4, 3))
    for training, p in [(False, 0.5), (False, 1.0), (True, 0.0)]:
        y, cache = fwd(x, p, training)
        assert cache is None
        np.testing.assert_array_equal(y, x)
        g = np.full_like(x, 3.0)
        np.testing.assert_array_equal(bwd(g, cache), g)


def test_random_ops_p1_drops_everything() -> None:
    """p == 1 zeroes every element / sample (and its gradient) without dividing by zero."""
    x = np.ones((4, 3))
    for fwd in (ops.dropout_forward, ops.drop_path_forward):
        y, keep = fwd(x, 1.0)
        assert np.all(y == 0) and np.all(keep == 0) and np.all(np.isfinite(keep))


@pytest.mark.parametrize(
    "draw",
    [
        lambda: ops.dropout_forward(np.ones((6, 7)), 0.5)[1],
        lambda: ops.drop_path_forward(np.ones((64, 2)), 0.5)[1],
        lambda: ops.attention_forward(*[np.ones((1, 2, 5, 3))] * 3, dropout_p=0.5)[1][4],
    ],
    ids=["dropout", "drop_path", "attention"],
)
def test_same_seed_same_mask(draw: Callable[[], np.ndarray]) -> None:
    """manual_seed(s) makes the next mask reproducible; another seed gives another mask."""
    manual_seed(123)
    first = draw()
    manual_seed(123)
    again = draw()
    manual_seed(124)
    other = draw()
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert np.any(first == 0) and np.any(first != 0)


def test_attention_dropout_mask_statistics() -> None:
    """Attention dropout keeps ~1-p of the weights, scaled by 1/(1-p)."""
    p = 0.25
    manual_seed(5)
    q = k = v = np.zeros((2, 4, 50, 8))
    _out, cache = ops.attention_forward(q, k, v, dropout_p=p)
    keep = cache[4]
    assert keep.shape == (2, 4, 50, 50)
    rate = (keep != 0).mean()
    sigma = np.sqrt(p * (1 - p) / keep.size)
    assert abs(rate - (1 - p)) < 5 * sigma, f"keep rate {rate:.4f}"
    np.testing.assert_allclose(keep[keep != 0], 1 / (1 - p), rtol=0, atol=1e-15)


def test_explicit_generator_is_used_and_reproducible() -> None:
    """An explicit rng is drawn from instead of the shared generator."""
    x = np.ones((5, 6))
    a = ops.dropout_forward(x, 0.5, rng=np.random.default_rng(9))[1]
    b = ops.dropout_forward(x, 0.5, rng=np.random.default_rng(9))[1]
    np.testing.assert_array_equal(a, b)
    manual_seed(0)
    state = get_rng(np).bit_generator.state
    ops.dropout_forward(x, 0.5, rng=np.random.default_rng(9))
    assert get_rng(np).bit_generator.state == state, "the shared generator was advanced"


def test_gradcheck_detects_a_wrong_op_gradient() -> None:
    """gradcheck is not vacuous for ops: a backward off by 1e-4 in one gradient is reported for that input only."""

    def bad_backward(g: Any, cache: Any) -> tuple[Any, ...]:
        dx, dw, db = ops.linear_backward(g, cache)
        return dx, dw * (1 + 1e-4), db

    rng = np.random.default_rng(0)
    errors = gradcheck((ops.linear_forward, bad_backward), [randn(rng, 2, 3), randn(rng, 4, 3), randn(rng, 4)])
    assert errors["input1"] > 1e-5
    assert errors["input0"] < 1e-8 and errors["input2"] < 1e-8


def test_gradcheck_refuses_to_skip_an_input() -> None:
    """A backward returning fewer gradients than inputs, or None for one, is an error, not a silent pass."""
    rng = np.random.default_rng(0)
    inputs = [randn(rng, 2, 3), randn(rng, 4, 3), randn(rng, 4)]
    with pytest.raises(ValueError, match="2 gradients for 3 inputs"):
        gradcheck((ops.linear_forward, lambda g, c: ops.linear_backward(g, c)[:2]), inputs)
    with pytest.raises(ValueError, match="no gradient for 'bias'"):
        gradcheck((ops.linear_forward, lambda g, c: (*ops.linear_backward(g, c)[:2], None)), inputs,
                  names=["x", "weight", "bias"])  # fmt: skip
    with pytest.raises(ValueError, match="2 names for 3 inputs"):
        gradcheck((ops.linear_forward, ops.linear_backward), inputs, names=["x", "weight"])
    # extra trailing gradients are fine: check only a prefix (here: the bias is a fixed argument)
    errors = gradcheck((ops.linear_forward, ops.linear_backward), inputs[:2], args=(inputs[2],))
    assert_gradcheck(errors, ["input0", "input1"])
