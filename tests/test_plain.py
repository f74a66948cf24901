"""The plain implementation of every op (pvt_np.ops.plain) is the ground truth, and the fast one equals it.

* the plain ops pass the same float64 gradchecks and torch comparisons as the fast ones (test_ops' cases);
* fast == plain, forward and every gradient, float64, <= 1e-12 relative, on awkward small shapes and on
  sizes above the chunking threshold (several chunks) with 1, 2 and 4 threads;
* the float32 fast paths against the plain op in float64, with bounds derived from float32's unit roundoff;
* whole b0 and b2_li models in train mode (dropout, attention dropout, drop path) agree under both implementations;
* the float32 rational erf (normal_cdf_float32) against scipy's erf within its documented bound;
* use_plain's scope, the refusal of another implementation's cache, and identical signatures;
* each public op shows the plain implementation's docstring (the derivation) and names both implementations.
"""

from __future__ import annotations

import inspect
import math
import pickle
import pydoc
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import test_ops
from helpers import assert_close, max_rel_err, randn

import pvt_np
from pvt_np import manual_seed, ops
from pvt_np.ops import dispatch, parallel, plain
from pvt_np.ops.activation import NORMAL_CDF_FLOAT32_ERROR, normal_cdf_float32

scipy_special = pytest.importorskip("scipy.special")

EQUAL_TOL = 1e-12  # fast vs plain in float64: the same formula summed in another order
MODEL_TOL = 1e-12  # whole models: the same, through dozens of layers (measured: at most 3.9e-15)
U32 = 2.0**-24  # float32's unit roundoff
BIG = parallel.PARALLEL_MIN_ELEMENTS  # arrays of several times this many elements run as several chunks


@pytest.fixture(params=[1, 2, 4], ids=["1thread", "2threads", "4threads"])
def threads(request: pytest.FixtureRequest) -> Iterator[int]:
    before = parallel.get_num_threads()
    parallel.configure_threads(request.param)
    try:
        yield request.param
    finally:
        parallel.configure_threads(before)


# -- the plain ops are the ground truth: test_ops' gradchecks and torch comparisons, run on them --------
PLAIN_CASES = [c for c in test_ops.ALL_CASES if c not in test_ops.RESHAPE_CASES]  # reshapes have one implementation


@pytest.mark.parametrize("case", PLAIN_CASES, ids=lambda c: c.id)
def test_plain_gradcheck(case: test_ops.OpCase) -> None:
    with ops.use_plain():
        test_ops.test_gradcheck(case)


@pytest.mark.parametrize("dtype", test_ops.DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("case", PLAIN_CASES, ids=lambda c: c.id)
def test_plain_matches_torch(case: test_ops.OpCase, dtype: Any) -> None:
    with ops.use_plain():
        test_ops.test_matches_torch(case, dtype)


# -- fast == plain ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pair:
    """One op call to run under both implementations: ops.<op>_forward(*inputs, **kwargs), then its backward."""

    id: str
    op: str
    inputs: Callable[[np.random.Generator], list[Any]]
    kwargs: dict[str, Any] = field(default_factory=dict)
    backward_kwargs: dict[str, Any] = field(default_factory=dict)
    rng_seed: int | None = None  # random ops: a fresh explicit Generator(rng_seed) for each implementation
    shared_seed: int | None = None  # random ops on the shared generator: manual_seed(shared_seed) before each


def _arrays(*shapes: tuple[int, ...], scale: float = 1.0) -> Callable[[np.random.Generator], list[Any]]:
    return lambda rng: [randn(rng, *s) * scale for s in shapes]


def _conv(
    pid: str, x: tuple[int, ...], o: int, k: tuple[int, int], stride: Any, padding: Any, groups: int,
    channels_last: bool = True, bias: bool = True, input_grad: bool = True,
) -> Pair:  # fmt: skip
    c = x[3] if channels_last else x[1]
    shapes = [x, (o, c // groups, *k)] + ([(o,)] if bias else [])
    return Pair(
        f"conv2d-{pid}",
        "conv2d",
        _arrays(*shapes),
        {"stride": stride, "padding": padding, "groups": groups, "channels_last": channels_last},
        {"input_grad": input_grad},
    )


def _targets(kind: str, n: int, k: int) -> Callable[[np.random.Generator], list[Any]]:
    def make(rng: np.random.Generator) -> list[Any]:
        logits = randn(rng, n, k) * 2.0
        if kind == "index":
            return [logits, rng.integers(0, k, size=n)]
        if kind == "soft":
            return [logits, rng.dirichlet(np.ones(k), size=n)]
        return [logits, rng.uniform(0.0, 0.4, size=(n, k))]  # unnormalised weights

    return make


def _pixel_targets(shape: tuple[int, ...], ignore_index: int) -> Callable[[np.random.Generator], list[Any]]:
    """Per-pixel logits (N, K, H, W) and class indices (N, H, W), every third one ``ignore_index``."""

    def make(rng: np.random.Generator) -> list[Any]:
        target = rng.integers(0, shape[1], size=(shape[0], *shape[2:]))
        target.reshape(-1)[1::3] = ignore_index
        return [randn(rng, *shape) * 2.0, target]

    return make


SMALL_PAIRS = [
    Pair("linear-3d", "linear", _arrays((2, 13, 7), (5, 7), (5,))),
    Pair("linear-1d-nobias", "linear", _arrays((7,), (4, 7))),
    _conv("dense-13x7", (2, 13, 7, 3), 4, (3, 3), 1, 0, 1),
    _conv("strided-padded-nchw", (2, 3, 13, 7), 5, (3, 3), 2, 1, 1, channels_last=False),
    _conv("rect-mixed-stride", (1, 9, 11, 2), 3, (3, 2), (2, 3), (1, 0), 1),
    _conv("stride-gt-kernel-nobias", (2, 13, 7, 2), 3, (2, 2), 3, 0, 1, bias=False),
    _conv("patch-embed-7x7-s4", (1, 13, 11, 3), 4, (7, 7), 4, 3, 1),
    _conv("grouped", (2, 7, 5, 4), 6, (3, 3), 1, 1, 2),
    _conv("depthwise-s1", (2, 13, 7, 5), 5, (3, 3), 1, 1, 5),
    _conv("depthwise-s2-nchw", (1, 4, 13, 7), 4, (3, 3), 2, 1, 4, channels_last=False),
    _conv("depthwise-multiplier", (1, 13, 7, 3), 6, (3, 3), 1, 1, 3),
    _conv("depthwise-unpadded", (2, 9, 7, 4), 4, (3, 3), 1, 0, 4),
    _conv("depthwise-rect-padding-nchw", (2, 3, 9, 11), 3, (3, 5), 1, (1, 2), 3, channels_last=False),
    _conv("depthwise-padding-beyond-kernel", (2, 6, 5, 3), 3, (3, 3), 1, 3, 3),  # dx by the tap slice-adds
    _conv("depthwise-stride-2x1", (2, 9, 7, 5), 5, (3, 3), (2, 1), 1, 5),  # W stride 1: the row-window einsum
    _conv("depthwise-stride-1x2", (2, 7, 9, 5), 5, (3, 3), (1, 2), 1, 5),  # W stride 2: the pixel-window einsum
    _conv("sr-no-input-grad", (2, 8, 6, 4), 4, (2, 2), 2, 0, 1, bias=False, input_grad=False),
    _conv("depthwise-no-input-grad", (2, 13, 7, 5), 5, (3, 3), 2, 1, 5, input_grad=False),
    Pair("layer_norm", "layer_norm", lambda rng: [randn(rng, 2, 13, 7) + 0.3, 1 + randn(rng, 7), randn(rng, 7)]),
    Pair("layer_norm-small-var", "layer_norm", lambda rng: [randn(rng, 3, 6) * 0.01, randn(rng, 6), randn(rng, 6)],
         {"eps": 1e-6}),
    Pair("group_norm-nchw", "group_norm", lambda rng: [randn(rng, 2, 6, 13, 7) + 0.3, 1 + randn(rng, 6), randn(rng, 6)],
         {"num_groups": 3}),
    Pair("group_norm-nhwc-small-var", "group_norm",
         lambda rng: [randn(rng, 1, 5, 3, 8) * 0.01, randn(rng, 8), randn(rng, 8)],
         {"num_groups": 4, "eps": 1e-6, "channels_last": True}),
    Pair("gelu-none", "gelu", _arrays((2, 13, 7), scale=3.0)),
    Pair("gelu-tanh", "gelu", _arrays((2, 13, 7), scale=3.0), {"approximate": "tanh"}),
    Pair("relu", "relu", _arrays((2, 13, 7))),
    Pair("softmax-last", "softmax", _arrays((2, 5, 7), scale=3.0)),
    Pair("softmax-axis0", "softmax", _arrays((13, 3), scale=3.0), {"axis": 0}),
    Pair("attention-n13-m5", "attention", _arrays((2, 2, 13, 4), (2, 2, 5, 4), (2, 2, 5, 4))),
    Pair("attention-n5-m13-scale", "attention", _arrays((1, 3, 5, 4), (1, 3, 13, 4), (1, 3, 13, 4)), {"scale": 0.3}),
    Pair("attention-dropout-rng", "attention", _arrays((2, 2, 13, 4), (2, 2, 5, 4), (2, 2, 5, 4)),
         {"dropout_p": 0.3}, rng_seed=5),
    Pair("attention-dropout-shared", "attention", _arrays((1, 2, 7, 3), (1, 2, 2, 3), (1, 2, 2, 3)),
         {"dropout_p": 0.5, "scale": 0.7}, shared_seed=6),
    Pair("pool-15x11-to-7-nchw", "adaptive_avg_pool2d", _arrays((2, 3, 15, 11)), {"output_size": 7}),
    Pair("pool-13x7-to-3x5-nhwc", "adaptive_avg_pool2d", _arrays((1, 13, 7, 2)),
         {"output_size": (3, 5), "channels_last": True}),
    Pair("pool-5x3-to-7x4-upsample", "adaptive_avg_pool2d", _arrays((1, 2, 5, 3)), {"output_size": (7, 4)}),
    Pair("interp-bilinear-7x13-to-16x5", "interpolate", _arrays((2, 3, 7, 13)), {"size": (16, 5), "mode": "bilinear"}),
    Pair("interp-nearest-x2.5x0.5-nhwc", "interpolate", _arrays((1, 9, 7, 3)),
         {"scale_factor": (2.5, 0.5), "channels_last": True}),
    Pair("interp-bilinear-x1.7-nhwc", "interpolate", _arrays((2, 7, 5, 2)),
         {"scale_factor": 1.7, "mode": "bilinear", "channels_last": True}),
    Pair("interp-nearest-13x5-to-5x16", "interpolate", _arrays((1, 2, 13, 5)), {"size": (5, 16)}),
    Pair("dropout-rng", "dropout", _arrays((2, 13, 7)), {"p": 0.3}, rng_seed=1),
    Pair("dropout-shared", "dropout", _arrays((2, 13, 7)), {"p": 0.5}, shared_seed=2),
    Pair("dropout-p1", "dropout", _arrays((3, 4)), {"p": 1.0}, rng_seed=1),
    Pair("dropout-eval", "dropout", _arrays((3, 4)), {"p": 0.5, "training": False}),
    Pair("drop_path-rng", "drop_path", _arrays((8, 13, 7)), {"p": 0.4}, rng_seed=3),
    Pair("drop_path-shared-4d", "drop_path", _arrays((6, 3, 5, 2)), {"p": 0.5}, shared_seed=4),
    Pair("drop_path-eval", "drop_path", _arrays((4, 5)), {"p": 0.5, "training": False}),
    Pair("ce-index", "cross_entropy", _targets("index", 5, 7)),
    Pair("ce-index-smoothing", "cross_entropy", _targets("index", 5, 7), {"label_smoothing": 0.1}),
    Pair("ce-soft", "cross_entropy", _targets("soft", 5, 7)),
    Pair("ce-unnormalised-soft-smoothing", "cross_entropy", _targets("weights", 3, 5), {"label_smoothing": 0.15}),
    Pair("ce-pixels-ignore255-smoothing", "cross_entropy", _pixel_targets((2, 5, 3, 7), 255),
         {"label_smoothing": 0.1, "ignore_index": 255}),
    Pair("ce-pixels-soft", "cross_entropy", lambda rng: [randn(rng, 2, 4, 3, 5) * 2.0,
                                                         rng.dirichlet(np.ones(4), (2, 3, 5)).transpose(0, 3, 1, 2)]),
    Pair("token_mean", "token_mean", _arrays((2, 13, 7))),
    Pair("token_mean-one-token", "token_mean", _arrays((1, 1, 3))),
]  # fmt: skip

# Above the chunking threshold: the threaded, multi-chunk paths of the fast ops (depthwise conv forward, its
# weight gradient in per-chunk partial sums, its stride-1 input gradient as a flipped conv) run on several chunks.
LARGE_PAIRS = [
    _conv("depthwise-s1-large", (6, 40, 40, 48), 48, (3, 3), 1, 1, 48),  # 6 chunks of one image
    _conv("depthwise-s2-large", (24, 40, 40, 32), 32, (3, 3), 2, 1, 32),  # output 24x20x20x32: 3 chunks
    _conv("depthwise-cifar-stage1-large", (7, 16, 16, 256), 256, (3, 3), 1, 1, 256),  # 2 images a chunk, 1 last
    _conv("dense-s2-large", (2, 64, 64, 16), 32, (3, 3), 2, 1, 1),
    _conv("stem-c3-large", (16, 32, 32, 3), 32, (3, 3), 2, 1, 1),  # C = 3: the CIFAR stem
    _conv("sr-kernel-eq-stride-large", (32, 16, 16, 32), 32, (4, 4), 4, 0, 1),  # windows tile the map: col2im copy
    _conv("sr-stride-gt-kernel-large", (16, 23, 21, 32), 24, (2, 2), 3, 0, 1, bias=False),  # pixels in no window
    _conv("dense-large-no-input-grad", (8, 32, 32, 16), 32, (3, 3), 1, 1, 1, input_grad=False),
    Pair("linear-large", "linear", _arrays((4, 1024, 64), (128, 64), (128,))),
    Pair("linear-large-nobias", "linear", _arrays((3000, 96), (200, 96))),
    Pair("linear-few-rows-wide", "linear", _arrays((3, 40, 256), (520, 256), (520,))),  # 1 row chunk, 7 column blocks
    Pair("linear-uneven-rows", "linear", _arrays((601, 64), (96, 64), (96,))),  # 2 row chunks of 301 and 300 rows
    Pair("layer_norm-large", "layer_norm", lambda rng: [randn(rng, 8, 2048, 32), 1 + randn(rng, 32), randn(rng, 32)]),
    Pair("group_norm-large-nhwc", "group_norm",
         lambda rng: [randn(rng, 4, 32, 32, 64) + 0.3, 1 + randn(rng, 64), randn(rng, 64)],
         {"num_groups": 32, "channels_last": True}),
    Pair("group_norm-large-nchw", "group_norm",
         lambda rng: [randn(rng, 2, 128, 24, 40) - 0.2, 1 + randn(rng, 128), randn(rng, 128)], {"num_groups": 32}),
    Pair("gelu-none-large", "gelu", _arrays((4 * BIG + 7,), scale=3.0)),
    Pair("gelu-tanh-large", "gelu", _arrays((4 * BIG + 7,), scale=3.0), {"approximate": "tanh"}),
    Pair("relu-large", "relu", _arrays((4 * BIG + 7,))),
    Pair("softmax-large", "softmax", _arrays((4096, 160), scale=3.0)),
    Pair("attention-large-dropout", "attention", _arrays((2, 2, 1024, 32), (2, 2, 256, 32), (2, 2, 256, 32)),
         {"dropout_p": 0.1}, rng_seed=7),
    Pair("attention-large-batch", "attention", _arrays((64, 1, 256, 32), (64, 1, 16, 32), (64, 1, 16, 32)),
         {"scale": 0.4}),
    Pair("pool-large", "adaptive_avg_pool2d", _arrays((4, 64, 64, 40)), {"output_size": 7, "channels_last": True}),
    Pair("interp-bilinear-large-nhwc", "interpolate", _arrays((2, 32, 24, 48)),
         {"scale_factor": 2, "mode": "bilinear", "channels_last": True}),
    Pair("interp-nearest-large", "interpolate", _arrays((2, 48, 24, 17)), {"size": (37, 64)}),
    Pair("dropout-large", "dropout", _arrays((4 * BIG + 7,)), {"p": 0.2}, rng_seed=8),
    Pair("drop_path-large", "drop_path", _arrays((64, 128, 64)), {"p": 0.3}, rng_seed=9),
    Pair("ce-large-smoothing", "cross_entropy", _targets("index", 4096, 100), {"label_smoothing": 0.1}),
    Pair("ce-pixels-large-ignore255", "cross_entropy", _pixel_targets((4, 19, 64, 64), 255),
         {"ignore_index": 255}),
    Pair("token_mean-large", "token_mean", _arrays((8, 4096, 32))),
]  # fmt: skip


def _as_tuple(grads: Any) -> tuple[Any, ...]:
    return tuple(grads) if isinstance(grads, (tuple, list)) else (grads,)


def _run(pair: Pair, run_plain: bool, dtype: Any = np.float64) -> tuple[Any, tuple[Any, ...], list[Any]]:
    """(out, grads, inputs) of one forward + backward under one implementation, from the pair's fixed seed."""
    rng = np.random.default_rng(zlib.crc32(pair.id.encode()))
    inputs = [a.astype(dtype) if a.dtype.kind == "f" else a for a in pair.inputs(rng)]
    kwargs = dict(pair.kwargs)
    if pair.rng_seed is not None:
        kwargs["rng"] = np.random.default_rng(pair.rng_seed)
    if pair.shared_seed is not None:
        manual_seed(pair.shared_seed)
    forward = getattr(ops, f"{pair.op}_forward")
    backward = getattr(ops, f"{pair.op}_backward")
    originals = [a.copy() for a in inputs]
    with ops.use_plain(run_plain):
        out, cache = forward(*inputs, **kwargs)
        dout = rng.standard_normal(np.shape(out)).astype(dtype)
        grads = _as_tuple(backward(dout, cache, **pair.backward_kwargs))
    for before, after in zip(originals, inputs, strict=True):
        np.testing.assert_array_equal(after, before, err_msg=f"{pair.id}: an input was modified")
    return out, grads, inputs


def _assert_fast_equals_plain(pair: Pair) -> None:
    fast_out, fast_grads, _ = _run(pair, run_plain=False)
    plain_out, plain_grads, inputs = _run(pair, run_plain=True)
    assert_close(fast_out, plain_out, EQUAL_TOL, f"{pair.id} forward")
    assert len(fast_grads) == len(plain_grads)
    for i, (fast, ref) in enumerate(zip(fast_grads, plain_grads, strict=True)):
        assert (fast is None) == (ref is None), f"{pair.id} gradient {i}: one implementation returned None"
        if ref is not None:
            assert np.dtype(fast.dtype) == np.dtype(ref.dtype) == np.float64, f"{pair.id} gradient {i} dtype"
            assert_close(fast, ref, EQUAL_TOL, f"{pair.id} gradient {i}")
    differentiable = 1 if pair.op == "cross_entropy" else len(inputs)  # the target gets no gradient
    if pair.backward_kwargs.get("input_grad", True):
        assert sum(g is not None for g in plain_grads) >= differentiable, f"{pair.id}: a gradient is missing"


@pytest.mark.parametrize("pair", SMALL_PAIRS, ids=lambda p: p.id)
def test_fast_equals_plain(pair: Pair) -> None:
    _assert_fast_equals_plain(pair)


@pytest.mark.parametrize("pair", LARGE_PAIRS, ids=lambda p: p.id)
def test_fast_equals_plain_above_chunking_threshold(pair: Pair, threads: int) -> None:
    _assert_fast_equals_plain(pair)


def test_large_cases_are_chunked() -> None:
    """The threaded fast paths really run on several chunks at these sizes (not one call under the threshold)."""
    calls: list[tuple[int, int]] = []
    real = parallel.for_each_chunk

    def counting(num_rows: int, row_elements: int, kernel: Callable[[int, int], None]) -> None:
        calls.append((num_rows, row_elements))
        real(num_rows, row_elements, kernel)

    parallel.for_each_chunk = counting
    try:
        for pair in LARGE_PAIRS[:2]:
            _run(pair, run_plain=False)
    finally:
        parallel.for_each_chunk = real
    assert calls, "no chunked call"
    for num_rows, row_elements in calls:
        assert num_rows * row_elements >= parallel.PARALLEL_MIN_ELEMENTS
        assert math.ceil(num_rows / parallel.chunk_rows(row_elements)) >= 3, (num_rows, row_elements)


GEMM_PAIRS = [p for p in LARGE_PAIRS if p.op in ("linear", "attention", "layer_norm") or p.id.startswith(
    ("conv2d-dense", "conv2d-stem", "conv2d-sr"))]  # fmt: skip


@pytest.mark.parametrize("pair", GEMM_PAIRS, ids=lambda p: p.id)
def test_gemm_ops_run_in_several_chunks(pair: Pair) -> None:
    """The GEMM-heavy fast paths (BLAS on one thread, chunks on pvt_np's threads) really split at these sizes."""
    chunks: list[int] = []
    real = parallel.for_each_chunk

    def counting(
        num_rows: int, row_elements: int, kernel: Callable[[int, int], None], *, rows_per_chunk: int | None = None
    ) -> None:
        rows = parallel.chunk_rows(row_elements) if rows_per_chunk is None else rows_per_chunk
        chunks.append(math.ceil(num_rows / rows))
        real(num_rows, row_elements, kernel, rows_per_chunk=rows_per_chunk)

    parallel.for_each_chunk = counting
    try:
        _run(pair, run_plain=False)
    finally:
        parallel.for_each_chunk = real
    assert chunks and max(chunks) >= 2, (pair.id, chunks)


@pytest.mark.parametrize(("m", "k", "n"), [(120, 256, 520), (196, 4096, 512), (784, 320, 2560), (601, 64, 96),
                                           (12544, 64, 512), (5, 3, 2), (0, 4, 3), (4, 3, 0)])  # fmt: skip
def test_gemm_blocks_cover_the_output_once(m: int, k: int, n: int) -> None:
    """The linear forward's blocks tile the (m, n) output exactly, rows in near-equal chunks, columns cut only
    where the rows leave fewer blocks than the work is worth, never narrower than MIN_COLUMNS (but the last)."""
    from pvt_np.ops.linear import MAX_BLOCKS, MIN_COLUMNS, gemm_blocks

    blocks = gemm_blocks(m, k, n)
    seen = np.zeros((m, n), dtype=int)
    for r0, r1, c0, c1 in blocks:
        assert 0 <= r0 < r1 <= m and 0 <= c0 < c1 <= n
        seen[r0:r1, c0:c1] += 1
    assert (seen == 1).all()
    if m and n:
        heights = {r1 - r0 for r0, r1, _, _ in blocks}
        assert max(heights) - min(heights) <= max(heights) // 2 + 1
        widths = sorted({c1 - c0 for _, _, c0, c1 in blocks})
        assert len(blocks) <= max(MAX_BLOCKS, len({r0 for r0, _, _, _ in blocks}))
        assert len(widths) == 1 or widths[-1] >= MIN_COLUMNS
    if (m, k, n) == (120, 256, 520):
        assert len(blocks) == 7  # one row chunk; 15.9 M multiply-adds are worth 7 blocks
    if (m, k, n) == (196, 4096, 512):
        assert len(blocks) == MAX_BLOCKS


@pytest.mark.parametrize("pair", GEMM_PAIRS, ids=lambda p: p.id)
def test_fast_results_do_not_depend_on_the_thread_count(pair: Pair) -> None:
    """Chunks follow the shapes alone (weight gradients split by output rows or summed in chunk order),
    so 1 and 4 threads give the same bits, in float32 as in float64."""
    before = parallel.get_num_threads()
    try:
        runs = []
        for n in (1, 4):
            parallel.configure_threads(n)
            runs.append(_run(pair, run_plain=False, dtype=np.float32)[:2])
    finally:
        parallel.configure_threads(before)
    (out1, grads1), (out4, grads4) = runs
    np.testing.assert_array_equal(out1, out4)
    for g1, g4 in zip(grads1, grads4, strict=True):
        assert (g1 is None) == (g4 is None)
        if g1 is not None:
            np.testing.assert_array_equal(g1, g4)


def test_gelu_need_grad_false_keeps_nothing_in_both_implementations() -> None:
    x = randn(np.random.default_rng(0), 3, 5)
    for run_plain in (False, True):
        with ops.use_plain(run_plain):
            y, cache = ops.gelu_forward(x, need_grad=False)
            with pytest.raises(RuntimeError, match="need_grad=False"):
                ops.gelu_backward(np.ones_like(y), cache)
    with ops.use_plain():
        y_plain, _ = ops.gelu_forward(x, need_grad=False)
    assert_close(ops.gelu_forward(x, need_grad=False)[0], y_plain, EQUAL_TOL, "gelu inference")


# -- float32 fast paths vs the plain op in float64 ------------------------------------------------------
def test_float32_gelu_vs_plain_float64(threads: int) -> None:
    """The chunked float32 GELU (rational erf) against the plain float64 GELU, element by element.

    With E = NORMAL_CDF_FLOAT32_ERROR (the bound on Phi) and u = 2^-24:
    y32 = fl(x * Phi32), so |y32 - x Phi(x)| <= |x| E + u |x| (Phi <= 1).
    dy/dx32 = fl(fl(fl(g x) / sqrt(2 pi)) + Phi32) with g = exp32(-x^2/2) carrying the rounding of x^2 (u x^2/2
    absolute in the exponent) and exp's own (<= 2u): |error| <= E + u (1 + |x| phi(x)) (4 + x^2/2) covers it.
    """
    x32 = (randn(np.random.default_rng(1), 4 * BIG + 11) * 4.0).astype(np.float32)
    y32, local32 = ops.gelu_forward(x32)
    x = x32.astype(np.float64)
    with ops.use_plain():
        y, cache = ops.gelu_forward(x)
        dydx = ops.gelu_backward(np.ones_like(x), cache)
    phi = np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    y_bound = np.abs(x) * (NORMAL_CDF_FLOAT32_ERROR + U32)
    local_bound = NORMAL_CDF_FLOAT32_ERROR + U32 * (1 + np.abs(x) * phi) * (4 + x * x / 2)
    y_err = np.abs(y32 - y)
    local_err = np.abs(local32 - dydx)
    assert np.all(y_err <= y_bound), f"GELU float32: worst error / bound {np.max(y_err / y_bound):.3f}"
    assert np.all(local_err <= local_bound), f"GELU' float32: worst error / bound {np.max(local_err / local_bound):.3f}"
    assert np.max(local_err) > 1e-8, "the comparison is vacuous: float32 and float64 agree exactly"


@pytest.mark.parametrize("stride", [1, 2])
def test_float32_depthwise_conv_vs_plain_float64(stride: int, threads: int) -> None:
    """Depthwise conv in float32 (threaded chunks) against the plain float64 conv.

    A float32 sum of K products is within gamma_K = K u / (1 - K u) of the exact sum, relative to the sum of
    the terms' magnitudes (Higham, Accuracy and Stability, 3.1). The plain op run on |x|, |w|, |b| and |G| gives
    exactly those magnitude sums: out has K = 9 taps + bias, dx at most 9 terms, dw and db N*Ho*Wo terms.
    """
    rng = np.random.default_rng(2)
    n, h, w, c = (6, 40, 40, 48) if stride == 1 else (24, 40, 40, 32)
    x, wt, b = randn(rng, n, h, w, c), randn(rng, c, 1, 3, 3), randn(rng, c)
    args = {"stride": stride, "padding": 1, "groups": c, "channels_last": True}
    out32, cache32 = ops.conv2d_forward(x.astype(np.float32), wt.astype(np.float32), b.astype(np.float32), **args)
    g = randn(rng, *out32.shape)
    grads32 = ops.conv2d_backward(g.astype(np.float32), cache32)
    x, wt, b, g = (a.astype(np.float32).astype(np.float64) for a in (x, wt, b, g))  # the same inputs, exactly
    with ops.use_plain():
        out, cache = ops.conv2d_forward(x, wt, b, **args)
        grads = ops.conv2d_backward(g, cache)
        mag_out, mag_cache = ops.conv2d_forward(np.abs(x), np.abs(wt), np.abs(b), **args)
        mag_grads = ops.conv2d_backward(np.abs(g), mag_cache)

    def gamma(k: int) -> float:
        return k * U32 / (1 - k * U32)

    terms = n * out.shape[1] * out.shape[2]
    checks = [("out", out32, out, mag_out, gamma(10))]
    checks += [(name, g32, g64, mag, gamma(k)) for name, g32, g64, mag, k in
               zip(("dx", "dw", "db"), grads32, grads, mag_grads, (9, terms, terms), strict=True)]  # fmt: skip
    for name, got, ref, magnitude, gam in checks:
        err = np.abs(got.astype(np.float64) - ref)
        bound = gam * magnitude
        assert np.all(err <= bound), f"{name}: worst error / bound {np.max(err / np.maximum(bound, 1e-300)):.3f}"


# -- the float32 rational erf ----------------------------------------------------------------------------
def _cdf_reference(x: np.ndarray) -> np.ndarray:
    """Phi(x) = (1 + erf(x / sqrt 2)) / 2 in float64 from scipy's erf."""
    return 0.5 * (1.0 + scipy_special.erf(x.astype(np.float64) / math.sqrt(2.0)))


@pytest.mark.filterwarnings("ignore:overflow encountered in multiply:RuntimeWarning")  # x^2 = inf: exp(-inf) = 0
def test_normal_cdf_float32_within_its_bound_over_a_wide_range(threads: int) -> None:
    """|Phi32 - Phi| <= NORMAL_CDF_FLOAT32_ERROR for erf arguments |x / sqrt 2| up to 10 (and beyond)."""
    dense = np.linspace(-10 * math.sqrt(2), 10 * math.sqrt(2), 4 * BIG + 3, dtype=np.float32)
    tiny = np.float32(np.finfo(np.float32).smallest_subnormal)
    special = np.array([0.0, -0.0, tiny, -tiny, 1e-40, -1e-40, np.finfo(np.float32).tiny, 1e-30, -1e-30,
                        30.0, -30.0, 1e30, -1e30, np.finfo(np.float32).max, -np.finfo(np.float32).max],
                       dtype=np.float32)  # fmt: skip
    x = np.concatenate([dense, special])
    cdf = normal_cdf_float32(x)
    assert cdf.dtype == np.float32 and cdf.shape == x.shape
    err = np.abs(cdf.astype(np.float64) - _cdf_reference(x))
    worst = float(err.max())
    assert worst <= NORMAL_CDF_FLOAT32_ERROR, f"max |Phi32 - Phi| = {worst:.3e} > {NORMAL_CDF_FLOAT32_ERROR:.1e}"
    assert worst > NORMAL_CDF_FLOAT32_ERROR / 10, f"bound {NORMAL_CDF_FLOAT32_ERROR:.1e} is loose: worst {worst:.3e}"
    near_zero = np.abs(x) < 1e-20  # +-0 and denormals: Phi = 1/2 to float32 resolution
    np.testing.assert_allclose(cdf[near_zero], 0.5, rtol=0, atol=U32)


def test_normal_cdf_float32_special_values() -> None:
    x = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0], dtype=np.float32)
    cdf = normal_cdf_float32(x)
    assert cdf[0] == 1.0 and cdf[1] == 0.0 and np.isnan(cdf[2])
    assert abs(cdf[3] - 0.5) <= U32 and abs(cdf[4] - 0.5) <= U32


def test_normal_cdf_float32_is_the_gelus() -> None:
    """The GELU's float32 path computes y = x * normal_cdf_float32(x), bit for bit."""
    x = (randn(np.random.default_rng(3), 2 * BIG + 5) * 3).astype(np.float32)
    y, _ = ops.gelu_forward(x)
    np.testing.assert_array_equal(y, x * normal_cdf_float32(x))


def test_normal_cdf_float32_rejects_other_input() -> None:
    with pytest.raises(TypeError, match=r"float32 NumPy array.*float64"):
        normal_cdf_float32(np.zeros(3))


# -- whole models -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["pvt_v2_b0", "pvt_v2_b2_li"])
def test_model_fast_equals_plain_in_train_mode(name: str) -> None:
    """Logits, input gradient and every parameter gradient agree under both implementations (float64, 35x29, batch 2,
    dropout, projection and attention dropout and drop path all on, the same generator state)."""
    model = pvt_np.create_model(name, num_classes=7, drop_rate=0.2, drop_path_rate=0.3, dtype=np.float64,
                                attn_drop_rate=0.1, proj_drop_rate=0.1)  # fmt: skip
    model.train()
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 35, 29))
    dlogits = rng.standard_normal((2, 7))

    def run(run_plain: bool, seed: int) -> dict[str, np.ndarray]:
        model.zero_grad()
        manual_seed(seed)
        with ops.use_plain(run_plain):
            logits = model(x)
            dx = model.backward(dlogits)
        result = {"logits": logits, "input": dx}
        result.update({f"grad {k}": p.grad.copy() for k, p in model.named_parameters()})
        return result

    fast, plain_run = run(False, seed=9), run(True, seed=9)
    assert fast.keys() == plain_run.keys()
    errors = {k: max_rel_err(fast[k], plain_run[k]) for k in fast}
    worst = max(errors, key=errors.get)
    assert errors[worst] <= MODEL_TOL, f"{name}: {worst} differs by {errors[worst]:.3e}"
    # the random masks were live (another seed changes the logits), so the agreement above covers them
    assert max_rel_err(run(False, seed=10)["logits"], fast["logits"]) > 1e-3


# -- the switch -----------------------------------------------------------------------------------------------
def test_use_plain_restores_the_fast_reading_after_an_exception() -> None:
    assert not dispatch.is_plain()
    with pytest.raises(ZeroDivisionError), ops.use_plain():
        assert dispatch.is_plain()
        with ops.use_plain(False):
            assert not dispatch.is_plain()
        assert dispatch.is_plain()
        _ = 1 / 0
    assert not dispatch.is_plain()
    _, cache = ops.relu_forward(np.ones(3))
    assert not isinstance(cache, plain.PlainReluCache)


@pytest.mark.parametrize("op", sorted(ops.registered_ops()))
def test_another_implementations_cache_is_refused(op: str) -> None:
    """A backward given the other implementation's cache raises, naming the op and both implementations."""
    pair = next(p for p in SMALL_PAIRS if p.op == op)
    rng = np.random.default_rng(0)
    inputs = pair.inputs(rng)
    forward, backward = getattr(ops, f"{op}_forward"), getattr(ops, f"{op}_backward")
    for forward_plain in (False, True):
        with ops.use_plain(forward_plain):
            out, cache = forward(*inputs, **pair.kwargs)
        with ops.use_plain(not forward_plain), pytest.raises(TypeError) as err:
            backward(np.ones(np.shape(out)), cache)
        made, active = ("plain", "fast") if forward_plain else ("fast", "plain")
        message = str(err.value)
        assert f"{op}_backward" in message
        assert f"made by the {made} implementation" in message and f"the {active} one is active" in message


def test_every_op_has_a_plain_reading_with_the_same_signature() -> None:
    for name, op in ops.registered_ops().items():
        for phase in ("forward", "backward"):
            fast, plain_fn = getattr(op, f"fast_{phase}"), getattr(op, f"plain_{phase}")
            assert plain_fn is not None and plain_fn.__module__ == "pvt_np.ops.plain", f"{name} {phase}"

            def shape(fn: Callable[..., Any]) -> list[tuple[str, Any, Any]]:
                return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]

            assert shape(fast) == shape(plain_fn), f"{name}_{phase}: signatures differ"
        assert op.plain_cache is not None and op.plain_cache.__name__.startswith("Plain"), name


@pytest.mark.parametrize("phase", ["forward", "backward"])
def test_public_op_shows_the_plain_derivation_and_names_both_implementations(phase: str) -> None:
    """What help() shows for pvt_np.ops.<op>_<phase> is the plain implementation's docstring (the formula and its
    derivation), then where both implementations live; the public name is pvt_np.ops's (so it pickles as itself)."""
    for name, op in ops.registered_ops().items():
        public = getattr(ops, f"{name}_{phase}")
        fast, plain_fn = getattr(op, f"fast_{phase}"), getattr(op, f"plain_{phase}")
        derivation, doc = inspect.getdoc(plain_fn), inspect.getdoc(public)
        assert derivation and doc and doc.startswith(derivation), f"{name}_{phase}: not the plain docstring"
        assert inspect.getdoc(fast) not in doc, f"{name}_{phase}: the fast implementation's docstring is shown"
        for fn in (plain_fn, fast):
            assert f"{fn.__module__}.{fn.__qualname__}" in doc.removeprefix(derivation), f"{name}_{phase}"
        shown = pydoc.render_doc(public, renderer=pydoc.plaintext)  # help()'s text, indented
        assert " ".join(derivation.split()) in " ".join(shown.split()), f"{name}_{phase}: help()"
        assert public.__module__ == "pvt_np.ops" and pickle.loads(pickle.dumps(public)) is public


@pytest.mark.parametrize("run_plain", [False, True], ids=["fast", "plain"])
def test_both_implementations_refuse_bad_input_alike(run_plain: bool) -> None:
    """One check per op family, shared: the same message under both implementations, naming layer= when given."""
    with ops.use_plain(run_plain):
        with pytest.raises(ValueError, match=r"^my_layer: expected input of shape \(\.\.\., 4\), got \(2, 5\)$"):
            ops.linear_forward(np.ones((2, 5)), np.ones((3, 4)), layer="my_layer")
        with pytest.raises(ValueError, match=r"^conv2d: expected input of shape \(N, 3, H, W\), got \(1, 5, 7, 7\)$"):
            ops.conv2d_forward(np.ones((1, 5, 7, 7)), np.ones((4, 3, 3, 3)))
        with pytest.raises(TypeError, match=r"^attention: q, k, v dtypes differ"):
            ops.attention_forward(np.ones((1, 1, 2, 2), np.float32), np.ones((1, 1, 2, 2)), np.ones((1, 1, 2, 2)))


@pytest.mark.parametrize("run_plain", [False, True], ids=["fast", "plain"])
def test_who_is_still_taken_with_a_deprecation_warning(run_plain: bool) -> None:
    """who=, the former name of layer=, reaches the checks as layer= does, with a DeprecationWarning; both at once
    are refused."""
    x, weight = np.ones((2, 4)), np.ones((3, 4))
    with ops.use_plain(run_plain):
        with pytest.warns(DeprecationWarning, match=r"^linear_forward: who= is deprecated; use layer=$"):
            out, _ = ops.linear_forward(x, weight, who="my_layer")
        np.testing.assert_array_equal(out, ops.linear_forward(x, weight, layer="my_layer")[0])
        with (
            pytest.warns(DeprecationWarning),
            pytest.raises(ValueError, match=r"^my_layer: expected input of shape \(\.\.\., 4\), got \(2, 5\)$"),
        ):
            ops.linear_forward(np.ones((2, 5)), weight, who="my_layer")
        with pytest.raises(TypeError, match=r"^linear_forward: got layer= and who="):
            ops.linear_forward(x, weight, layer="a", who="b")
