"""The GPU's code paths, run on NumPy: what can be checked of them without a device.

* the CUDA kernels of pvt_np.ops.cuda, compiled for the host (tests/cuda_harness.py; the lanes of a warp
  as coroutines that meet at each shuffle), against the NumPy path: the depthwise conv (int and 64-bit
  indices), the dense conv's col2im, layer norm, attention's softmax and its backward, ReLU's backward,
  GELU, the fused multi-tensor AdamW and the capturable one (its scalars read from device memory), and a
  whole b0 and b2_li forward and backward;
* the cuBLAS calls (GEMM, strided-batched GEMM with a shared matrix, GEMV), made on host addresses by a
  column-major stand-in: the row-major to column-major mapping of every product;
* where the device is chosen: by each fast op once (cuda.active), never inside its _cpu and _gpu functions;
* the counter-based device generator against an independent scalar SplitMix64, and its re-keying;
* manual_seed re-keys the device generator instead of rebuilding it (with a stand-in CuPy module);
* the cached adaptive-pooling matrices;
* the loader's staged (packed, one-copy) uploads give the same batches as direct ones (TrivialAugment's too).
"""

from __future__ import annotations

import ast
import types
from pathlib import Path
from typing import Any

import cuda_harness
import numpy as np
import pytest
from helpers import assert_close, randn

import pvt_np
from pvt_np import backend, manual_seed, ops, staging
from pvt_np.counter_rng import MASK_64, CounterRng, mix64
from pvt_np.data import Augment, BatchLoader
from pvt_np.nn import CrossEntropyLoss
from pvt_np.nn.module import Parameter
from pvt_np.ops import blas, conv, cuda, parallel, pooling
from pvt_np.optim import AdamW, CosineWarmupSchedule

KERNEL_F64_TOL = 1e-12  # float64, the same products summed in another order
KERNEL_F32_TOL = 1e-5  # float32: the NumPy path's BLAS sums in another order (helpers.F32_TOL)

# n, c, (h, w), (kh, kw), stride, padding, bias
DEPTHWISE_SPECS = [
    (2, 5, (13, 7), (3, 3), 1, 1, True),
    (2, 5, (13, 7), (3, 3), 2, 1, True),
    (1, 4, (9, 11), (3, 2), (2, 3), (1, 0), False),
    (3, 3, (8, 6), (3, 3), 1, 0, False),
    (1, 6, (5, 5), (5, 5), 1, 2, True),
    (2, 3, (6, 5), (3, 3), 1, 3, True),  # padding beyond kernel - 1: output pixels that read only zeros
    (1, 7, (9, 8), (3, 3), 3, 1, False),  # stride 3: input pixels no window reads
    # above the chunking threshold: several chunks of images on the NumPy side (the last one partial), threaded
    (20, 64, (16, 16), (3, 3), 1, 1, True),
    (20, 64, (32, 32), (3, 3), 2, 1, True),
]


@pytest.fixture(scope="module")
def host_kernels(tmp_path_factory: pytest.TempPathFactory) -> cuda_harness.HostModule:
    """pvt_np.ops.cuda's kernels compiled for this CPU (see tests/cuda_harness.py)."""
    if cuda_harness.compiler() is None:
        pytest.skip("no C++ compiler to build the CUDA kernels for the host")
    return cuda_harness.HostModule(tmp_path_factory.mktemp("cuda_kernels"))


def _run_both(fn: Any, host: cuda_harness.HostModule, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    """fn() on NumPy's own path, then with the CUDA kernels (host build) standing in."""
    expected = fn()
    assert not cuda.active(np)
    with monkeypatch.context() as patch:
        patch.setattr(cuda, "HOST_KERNELS", host)
        assert cuda.active(np)
        actual = fn()
    return actual, expected


def _assert_all_close(actual: list[Any], expected: list[Any], names: list[str], dtype: Any) -> None:
    assert len(actual) == len(expected) == len(names)
    tol = KERNEL_F64_TOL if np.dtype(dtype) == np.float64 else KERNEL_F32_TOL
    for name, a, e in zip(names, actual, expected, strict=True):
        assert a.shape == e.shape and a.dtype == e.dtype, f"{name}: {a.shape} {a.dtype} vs {e.shape} {e.dtype}"
        assert_close(a, e, tol, name)


def _depthwise_run(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride: Any, padding: Any) -> list[Any]:
    c = x.shape[3]
    out, cache = ops.conv2d_forward(x, w, b, stride, padding, groups=c, channels_last=True)
    g = np.random.default_rng(5).standard_normal(out.shape).astype(out.dtype)
    return [out, *(a for a in ops.conv2d_backward(g, cache) if a is not None)]


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("spec", DEPTHWISE_SPECS, ids=lambda s: f"n{s[0]}c{s[1]}-{s[2]}-k{s[3]}-s{s[4]}-p{s[5]}")
def test_depthwise_cuda_kernels_match_numpy(
    spec: tuple[Any, ...], dtype: Any, host_kernels: cuda_harness.HostModule, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The depthwise conv's three CUDA kernels (run on the host) give the NumPy path's output, dx, dw (and db)."""
    n, c, (h, w), kernel, stride, padding, bias = spec
    rng = np.random.default_rng(0)
    x = randn(rng, n, h, w, c, dtype=dtype)
    weight = randn(rng, c, 1, *kernel, dtype=dtype)
    b = randn(rng, c, dtype=dtype) if bias else None
    before = dict(host_kernels.calls)
    actual, expected = _run_both(lambda: _depthwise_run(x, weight, b, stride, padding), host_kernels, monkeypatch)
    for name in ("depthwise_forward", "depthwise_input_grad", "depthwise_weight_grad"):
        assert host_kernels.calls.get(name, 0) == before.get(name, 0) + 1, f"{name} did not run"
    _assert_all_close(actual, expected, ["out", "dx", "dw", "db"][: len(expected)], dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_depthwise_cuda_kernels_64_bit_indices(
    dtype: Any, host_kernels: cuda_harness.HostModule, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The long long instantiations (arrays of 2^31 elements or more) give what the int ones give."""
    rng = np.random.default_rng(6)
    x = randn(rng, 3, 9, 8, 5, dtype=dtype)
    weight = randn(rng, 5, 1, 3, 3, dtype=dtype)
    b = randn(rng, 5, dtype=dtype)
    runs = []
    for limit in (cuda.INT_INDEX_LIMIT, 0):  # 0: every launch takes the 64-bit indices
        before = dict(host_kernels.expressions)
        with monkeypatch.context() as patch:
            patch.setattr(cuda, "HOST_KERNELS", host_kernels)
            patch.setattr(cuda, "INT_INDEX_LIMIT", limit)
            runs.append(_depthwise_run(x, weight, b, 2, 1))
        itype = "int" if limit else "long long"
        ctype = cuda.C_TYPES[np.dtype(dtype)]
        for name in ("depthwise_forward", "depthwise_input_grad", "depthwise_weight_grad"):
            key = f"{name}<{ctype}, {itype}>"
            assert host_kernels.expressions.get(key, 0) == before.get(key, 0) + 1, f"{key} did not run"
    for a, e in zip(*runs, strict=True):
        np.testing.assert_array_equal(a, e)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_column_sums_match_numpy(
    dtype: Any, host_kernels: cuda_harness.HostModule, monkeypatch: pytest.MonkeyPatch
) -> None:
    """column_sums (ones @ m where the kernels run, a cached ones vector) equals m.sum(axis=0)."""
    m = randn(np.random.default_rng(7), 1001, 7, dtype=dtype)
    actual, expected = _run_both(lambda: [blas.column_sums(m), blas.column_sums(m[::2])], host_kernels, monkeypatch)
    assert blas._ones(np, 1001, m.dtype.str, -1).flags.writeable is False
    _assert_all_close(actual, expected, ["rows", "every other row"], dtype)
    np.testing.assert_array_equal(expected[0], m.sum(axis=0))


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("trans_a", [False, True], ids=["a", "aT"])
@pytest.mark.parametrize("trans_b", [False, True], ids=["b", "bT"])
def test_cublas_matmul_matches_numpy(
    trans_a: bool, trans_b: bool, dtype: Any, host_kernels: cuda_harness.HostModule, monkeypatch: pytest.MonkeyPatch
) -> None:
    """blas.matmul's mapping of row-major products onto column-major cuBLAS (HostBlas, on the host): op(a) @ op(b),
    on contiguous and strided operands, m, n, k all different; inner size 0 gives zeros."""
    rng = np.random.default_rng(8)
    m, k, n = 5, 7, 3
    a = randn(rng, *((k, m) if trans_a else (m, k)), dtype=dtype)
    b_wide = randn(rng, *((n, 2 * k) if trans_b else (k, 2 * n)), dtype=dtype)
    b = b_wide[:, ::2]  # a strided operand: made contiguous first

    def run() -> list[Any]:
        empty = blas.matmul(np.ones((m, 0), dtype), np.ones((0, n), dtype))
        return [blas.matmul(a, b, trans_a=trans_a, trans_b=trans_b), empty]

    before = dict(host_kernels.blas.calls)
    actual, expected = _run_both(run, host_kernels, monkeypatch)
    name = "sgemm" if dtype == np.float32 else "dgemm"
    assert host_kernels.blas.calls.get(name, 0) == before.get(name, 0) + 1
    assert actual[0].flags.c_contiguous and actual[0].shape == (m, n)
    np.testing.assert_array_equal(actual[1], np.zeros((m, n), dtype))
    _assert_all_close(actual, expected, ["op(a) @ op(b)", "inner size 0"], dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("trans", [(False, False), (True, False), (False, True), (True, True)], ids=str)
@pytest.mark.parametrize("stacks", ["both", "shared-a", "shared-b"])
def test_cublas_batched_matmul_matches_numpy(
    stacks: str, trans: tuple[bool, bool], dtype: Any, host_kernels: cuda_harness.HostModule,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """blas.matmul on stacks (2, 3, r, c), one strided-batched GEMM: both operands stacked, or one 2-D
    matrix shared by every entry (batch stride 0); into a new array and into ``out``."""
    trans_a, trans_b = trans
    rng = np.random.default_rng(11)
    m, k, n = 4, 6, 5
    a = randn(rng, *(() if stacks == "shared-a" else (2, 3)), *((k, m) if trans_a else (m, k)), dtype=dtype)
    b = randn(rng, *(() if stacks == "shared-b" else (2, 3)), *((n, k) if trans_b else (k, n)), dtype=dtype)

    def run() -> list[Any]:
        into = np.full((2, 3, m, n), np.nan, dtype=dtype)
        result = blas.matmul(a, b, trans_a=trans_a, trans_b=trans_b, out=into)
        assert result is into
        return [blas.matmul(a, b, trans_a=trans_a, trans_b=trans_b), into]

    before = dict(host_kernels.blas.calls)
    actual, expected = _run_both(run, host_kernels, monkeypatch)
    name = ("s" if dtype == np.float32 else "d") + "gemmStridedBatched"
    assert host_kernels.blas.calls.get(name, 0) == before.get(name, 0) + 2
    _assert_all_close(actual, expected, ["new", "into out"], dtype)


def test_cublas_matmul_refuses_what_it_cannot_multiply(
    host_kernels: cuda_harness.HostModule, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mismatched inner sizes, stacks and outputs are named before any cuBLAS call; mixed or integer dtypes,
    which cuBLAS's s/d routines do not take, go to xp.matmul / sum (NumPy's promotion) instead."""
    monkeypatch.setattr(cuda, "HOST_KERNELS", host_kernels)
    f32, f64 = np.ones((2, 3), np.float32), np.ones((3, 2), np.float64)
    before = dict(host_kernels.blas.calls)
    mixed = blas.matmul(f32, f64)
    assert mixed.dtype == np.float64
    np.testing.assert_array_equal(mixed, f32 @ f64)
    np.testing.assert_array_equal(blas.column_sums(np.arange(6).reshape(2, 3)), [3, 5, 7])
    assert host_kernels.blas.calls == before
    with pytest.raises(ValueError, match=r"matmul: inner sizes differ: op\(a\) is 2x3, op\(b\) is 2x3"):
        blas.matmul(f32, f32)
    with pytest.raises(ValueError, match=r"matmul: the stacks differ: \(4,\) and \(5,\)"):
        blas.matmul(np.ones((4, 2, 3), np.float32), np.ones((5, 3, 2), np.float32))
    with pytest.raises(ValueError, match=r"matmul: out: expected a C-contiguous float32 array of shape \(2, 2\), "
                       r"got float32 \(2, 3\)"):  # fmt: skip
        blas.matmul(f32, f32, trans_b=True, out=np.empty((2, 3), np.float32))


DENSE_SPECS = [  # (n, c, o, (h, w), kernel, stride, padding, bias)
    (2, 3, 5, (13, 11), (7, 7), 4, 3, True),  # PVT v2's stem: overlapping windows
    (2, 4, 6, (8, 8), (4, 4), 4, 0, True),  # the SR conv: kernel == stride, windows tile the map
    (1, 3, 4, (9, 10), (2, 3), (3, 2), (1, 2), False),  # stride > kernel rows: pixels no window reads
    (3, 2, 3, (6, 7), (3, 3), 1, 3, True),  # padding beyond kernel - 1
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("spec", DENSE_SPECS, ids=lambda s: f"k{s[4]}-s{s[5]}-p{s[6]}")
def test_dense_conv_gpu_path_matches_numpy(
    spec: tuple[Any, ...], dtype: Any, host_kernels: cuda_harness.HostModule, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dense conv's GPU path (cuBLAS products, the col2im gather kernel) gives the NumPy path's out, dx, dw, db."""
    n, c, o, (h, w), kernel, stride, padding, bias = spec
    rng = np.random.default_rng(12)
    x = randn(rng, n, h, w, c, dtype=dtype)
    weight = randn(rng, o, c, *kernel, dtype=dtype)
    b = randn(rng, o, dtype=dtype) if bias else None

    def run() -> list[Any]:
        out, cache = ops.conv2d_forward(x, weight, b, stride, padding, channels_last=True)
        g = np.random.default_rng(13).standard_normal(out.shape).astype(out.dtype)
        return [out, *(a for a in ops.conv2d_backward(g, cache) if a is not None)]

    before = host_kernels.calls.get("col2im", 0)
    actual, expected = _run_both(run, host_kernels, monkeypatch)
    assert host_kernels.calls.get("col2im", 0) == before + 1
    _assert_all_close(actual, expected, ["out", "dx", "dw", "db"][: len(expected)], dtype)


def _asks_for_the_device(node: ast.AST) -> int:
    """How many calls of ``cuda.active(...)`` (or ``active(...)``) the code under ``node`` makes."""
    return sum(
        isinstance(n, ast.Call)
        and (
            (isinstance(n.func, ast.Attribute) and n.func.attr == "active")
            or (isinstance(n.func, ast.Name) and n.func.id == "active")
        )
        for n in ast.walk(node)
    )


def test_each_op_chooses_its_device_in_one_place() -> None:
    """In pvt_np/ops only the registered fast ops ask cuda.active, once each, and blas's two products (which
    run on either device); the _cpu and _gpu functions that hold the math never do."""
    fast = [getattr(op, f"fast_{phase}") for op in ops.registered_ops().values() for phase in ("forward", "backward")]
    allowed = {(fn.__module__, fn.__name__) for fn in fast} | {
        ("pvt_np.ops.blas", "matmul"),
        ("pvt_np.ops.blas", "column_sums"),
    }
    asking = {}
    for path in sorted(Path(ops.__file__).parent.glob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and _asks_for_the_device(node):
                asking[(f"pvt_np.ops.{path.stem}", node.name)] = _asks_for_the_device(node)
    assert set(asking) <= allowed, f"device branches outside the ops' dispatch: {sorted(set(asking) - allowed)}"
    assert all(count == 1 for count in asking.values()), asking
    assert ("pvt_np.ops.conv", "conv2d_forward") in asking and ("pvt_np.ops.norm", "layer_norm_backward") in asking


def test_cuda_launch_names_the_argument_it_refuses() -> None:
    """A kernel argument of another dtype or layout is refused before the launch, naming position, want and got."""
    x = np.zeros((2, 3), dtype=np.float32)
    with pytest.raises(ValueError, match=r"gelu_erf_forward: argument 1: expected a C-contiguous float32 array, "
                       r"got a C-contiguous float64 array"):  # fmt: skip
        cuda._launch("gelu_erf_forward", np.float32, x.size, x, np.zeros(6), x, x.size, 1)
    with pytest.raises(ValueError, match=r"adamw_multi: argument 0: expected a C-contiguous int64 array, "
                       r"got a C-contiguous float32 array"):  # fmt: skip
        cuda._launch("adamw_multi", np.float32, 6, x, 1, 6, *[0.5] * 3, 0, *[0.5] * 5)
    with pytest.raises(ValueError, match=r"argument 0: .* got a non-contiguous float32 array"):
        cuda._launch("gelu_erf_forward", np.float32, x.size, x.T, x, x, x.size, 1)


def test_depthwise_chunked_specs_really_chunk() -> None:
    """The large specs above span several chunks on NumPy (else they would not test the chunk boundaries)."""
    for n, c, (h, _w), _, stride, padding, _ in DEPTHWISE_SPECS[-2:]:
        s = stride if isinstance(stride, int) else stride[0]
        p = padding if isinstance(padding, int) else padding[0]
        ho = conv.conv_output_size(h, 3, s, p)
        rows = parallel.chunk_rows(ho * ho * c)
        assert n > 2 * rows and n % rows, f"n={n} with {rows} rows per chunk"
        assert n * ho * ho * c >= parallel.PARALLEL_MIN_ELEMENTS


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(
    "shape", [(2, 5, 7), (3, 37, 64), (11, 33), (300, 512), (4, 1037)], ids=["c7", "c64", "c33", "c512", "c1037"]
)
def test_layer_norm_cuda_kernels_match_numpy(
    shape: tuple[int, ...], dtype: Any, host_kernels: cuda_harness.HostModule, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Layer norm's forward and backward kernels (one warp per row; rows that leave the last block part-filled,
    rows shorter and longer than a warp, not whole warps): y, dx, dweight, dbias."""
    rng = np.random.default_rng(1)
    c = shape[-1]
    x = (randn(rng, *shape) * 3.0 + 0.7).astype(dtype)
    weight, bias = (1.0 + 0.5 * randn(rng, c)).astype(dtype), randn(rng, c, dtype=dtype)
    g = randn(rng, *shape, dtype=dtype)

    def run() -> list[Any]:
        y, cache = ops.layer_norm_forward(x, weight, bias, 1e-6)
        return [y, *ops.layer_norm_backward(g, cache)]

    before = dict(host_kernels.calls)
    actual, expected = _run_both(run, host_kernels, monkeypatch)
    for name in ("layer_norm_forward", "layer_norm_backward"):
        assert host_kernels.calls.get(name, 0) == before.get(name, 0) + 1, f"{name} did not run"
    _assert_all_close(actual, expected, ["y", "dx", "dweight", "dbias"], dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(("n", "m"), [(5, 1), (7, 49), (3, 70)], ids=["m1", "m49", "m70"])
def test_attention_softmax_cuda_kernels_match_numpy(
    n: int, m: int, dtype: Any, host_kernels: cuda_harness.HostModule, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attention with the softmax kernels (scale and softmax; its backward): out, dq, dk, dv. One key
    (a softmax of one value), 49 (PVT v2's 7x7 pooled keys) and 70 (more keys than a warp has lanes)."""
    rng = np.random.default_rng(9)
    q = (2.0 * randn(rng, 2, 3, n, 8)).astype(dtype)
    k, v = (2.0 * randn(rng, 2, 3, m, 8)).astype(dtype), randn(rng, 2, 3, m, 8, dtype=dtype)
    g = randn(rng, 2, 3, n, 8, dtype=dtype)

    def run() -> list[Any]:
        out, cache = ops.attention_forward(q, k, v)
        return [out, *ops.attention_backward(g, cache)]

    before = dict(host_kernels.calls)
    actual, expected = _run_both(run, host_kernels, monkeypatch)
    for name in ("softmax_rows", "softmax_rows_backward"):
        assert host_kernels.calls.get(name, 0) > before.get(name, 0), f"{name} did not run"
    _assert_all_close(actual, expected, ["out", "dq", "dk", "dv"], dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_relu_backward_cuda_kernel_equals_numpy_bit_for_bit(
    dtype: Any, host_kernels: cuda_harness.HostModule, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ReLU's backward kernel: the same bits as the NumPy path, -0 where a negative gradient is masked and NaN kept."""
    rng = np.random.default_rng(10)
    x = randn(rng, 4, 301, dtype=dtype)
    x[0, :3] = 0.0
    g = randn(rng, 4, 301, dtype=dtype)
    g[1, :5] = np.nan

    def run() -> list[Any]:
        y, cache = ops.relu_forward(x)
        return [y, ops.relu_backward(g, cache)]

    before = host_kernels.calls.get("relu_backward", 0)
    actual, expected = _run_both(run, host_kernels, monkeypatch)
    assert host_kernels.calls["relu_backward"] == before + 1
    assert np.signbit(expected[1][g < 0][x[g < 0] <= 0]).all()  # the -0s are there to be matched
    for a, e in zip(actual, expected, strict=True):
        np.testing.assert_array_equal(a, e)
        np.testing.assert_array_equal(np.signbit(a), np.signbit(e))


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_gelu_cuda_kernel_matches_numpy(
    dtype: Any, host_kernels: cuda_harness.HostModule, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GELU's kernel: y and dx; without need_grad it keeps no derivative."""
    rng = np.random.default_rng(2)
    x = (3.0 * randn(rng, 5, 301)).astype(dtype)
    g = randn(rng, 5, 301, dtype=dtype)

    def run() -> list[Any]:
        y, cache = ops.gelu_forward(x, "none")
        y_inference, none = ops.gelu_forward(x, "none", need_grad=False)
        assert none is None
        np.testing.assert_array_equal(y_inference, y)
        return [y, ops.gelu_backward(g, cache)]

    actual, expected = _run_both(run, host_kernels, monkeypatch)
    assert host_kernels.calls.get("gelu_erf_forward", 0) >= 2
    _assert_all_close(actual, expected, ["y", "dx"], dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.3, 0.9)], ids=["lerp-from-m", "lerp-from-g"])
def test_adamw_cuda_kernel_equals_numpy_bit_for_bit(
    dtype: Any, betas: tuple[float, float], host_kernels: cuda_harness.HostModule, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three AdamW steps through the fused kernel: the same operations in the same order, so the same bits.

    One launch updates every parameter of a group that is at the same step: group 0 holds three
    parameters (one with a single element), and the second misses its gradient at step 2, so at
    step 3 it is a step behind the others and gets a launch of its own.
    """

    def run() -> list[Any]:
        rng = np.random.default_rng(3)
        shapes = [(7, 5), (300,), (1,), (3, 3)]
        params = [Parameter(randn(rng, *shape, dtype=dtype)) for shape in shapes]
        opt = AdamW([{"params": params[:3], "weight_decay": 0.05}, {"params": params[3:], "weight_decay": 0.0}],
                    lr=3e-3, betas=betas)  # fmt: skip
        for step in range(3):
            for i, p in enumerate(params):
                p.grad = None if (step, i) == (1, 1) else randn(rng, *p.data.shape, dtype=dtype) * 1e-3
            opt.step()
        states = [opt.state[p] for p in params]
        assert [s["step"] for s in states] == [3, 2, 3, 3]
        return [p.data for p in params] + [s["exp_avg"] for s in states] + [s["exp_avg_sq"] for s in states]

    before = host_kernels.calls.get("adamw_multi", 0)
    actual, expected = _run_both(run, host_kernels, monkeypatch)
    assert host_kernels.calls["adamw_multi"] == before + 2 + 2 + 3  # per step: the groups, then the laggard
    for a, e in zip(actual, expected, strict=True):
        np.testing.assert_array_equal(a, e)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.3, 0.9)], ids=["lerp-from-m", "lerp-from-g"])
def test_adamw_capturable_cuda_kernel_equals_numpy_bit_for_bit(
    dtype: Any, betas: tuple[float, float], host_kernels: cuda_harness.HostModule, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Five capturable AdamW steps through the kernel that reads its scalars from device memory: the bits of the
    capturable array expressions, and so of the eager step.

    The lr moves every step (warm-up, then cosine, kept on the device by the schedule), so each step size, bias
    correction and decay differs from the step before's; the groups decay differently (0.05 and 0), and the second
    parameter misses its gradient at step 2, so from step 3 on its step size and bias correction are not its
    group's others'. A kernel that read a stale scalar, another parameter's or another group's would not match.
    """

    def run(capturable: bool) -> list[Any]:
        rng = np.random.default_rng(3)
        shapes = [(7, 5), (300,), (1,), (3, 3)]
        params = [Parameter(randn(rng, *shape, dtype=dtype)) for shape in shapes]
        opt = AdamW([{"params": params[:3], "weight_decay": 0.05}, {"params": params[3:], "weight_decay": 0.0}],
                    lr=3e-3, betas=betas, capturable=capturable)  # fmt: skip
        sched = CosineWarmupSchedule(opt, total_steps=5, warmup_steps=2, warmup_lr_init=1e-4, min_lr=1e-5)
        if capturable:
            sched.to_device(np)
        lrs = []
        for step in range(5):
            for i, p in enumerate(params):
                p.grad = None if (step, i) == (1, 1) else randn(rng, *p.data.shape, dtype=dtype) * 1e-3
            lrs.append(float(opt.param_groups[0]["lr"]))
            opt.step()
            sched.step()
        assert len(set(lrs)) == len(lrs)
        states = [opt.state[p] for p in params]
        assert [int(s["step"]) for s in states] == [5, 4, 5, 5]
        return [p.data for p in params] + [s["exp_avg"] for s in states] + [s["exp_avg_sq"] for s in states]

    before = dict(host_kernels.calls)
    actual, expected = _run_both(lambda: run(capturable=True), host_kernels, monkeypatch)
    assert host_kernels.calls["adamw_capturable"] == before.get("adamw_capturable", 0) + 4 * 5 - 1
    assert host_kernels.calls.get("adamw_multi", 0) == before.get("adamw_multi", 0)  # not the eager kernel
    eager = run(capturable=False)
    for a, e, f in zip(actual, expected, eager, strict=True):
        np.testing.assert_array_equal(a, e)
        np.testing.assert_array_equal(e, f)


@pytest.mark.parametrize(
    ("name", "size", "cifar"), [("pvt_v2_b0", 32, True), ("pvt_v2_b2_li", 61, False)], ids=["b0-cifar", "b2_li-61"]
)
def test_whole_model_with_cuda_kernels_matches_numpy(
    name: str, size: int, cifar: bool, host_kernels: cuda_harness.HostModule, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A whole model (float64) with every CUDA kernel standing in: the logits and every gradient."""
    rng = np.random.default_rng(4)
    x = randn(rng, 2, 3, size, size)
    y = np.array([3, 7])
    names = ["logits"]  # then the parameters', in the order run() returns their gradients

    def run() -> list[Any]:
        model = pvt_np.create_model(name, num_classes=10, cifar=cifar, dtype=np.float64, seed=5)
        logits = model(x)
        loss = CrossEntropyLoss()
        loss(logits, y)
        model.backward(loss.backward())
        del names[1:]
        names.extend(param_name for param_name, _ in model.named_parameters())
        return [logits] + [p.grad for _, p in model.named_parameters()]

    actual, expected = _run_both(run, host_kernels, monkeypatch)
    for kernel in ("depthwise_forward", "depthwise_input_grad", "layer_norm_forward", "gelu_erf_forward"):
        assert host_kernels.calls.get(kernel, 0) > 0, f"{kernel} did not run"
    for call in ("dgemm", "dgemv"):  # the linear layers' products, the bias gradients
        assert host_kernels.blas.calls.get(call, 0) > 0, f"{call} did not run"
    _assert_all_close(actual, expected, names, np.float64)


# -- the device generator --------------------------------------------------------------
def _splitmix64(state: int, count: int) -> list[int]:
    """Vigna's splitmix64.c next(), with Python integers (independent of the array code)."""
    out = []
    for _ in range(count):
        state = (state + 0x9E3779B97F4A7C15) & MASK_64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK_64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK_64
        out.append(z ^ (z >> 31))
    return out


def test_counter_rng_is_splitmix64() -> None:
    """random() returns SplitMix64 from state mix64(seed), top 53 (float64) or 24 (float32) bits, in order."""
    assert _splitmix64(1234567, 3) == [6457827717110365317, 3203168211198807973, 9817491932198370423]
    rng = CounterRng(np, 42)
    first = rng.random(5)
    second = rng.random((2, 3), dtype=np.float32)
    words = _splitmix64(mix64(42), 11)
    np.testing.assert_array_equal(first, np.array([w >> 11 for w in words[:5]], dtype=np.float64) * 2.0**-53)
    expected32 = (np.array([w >> 40 for w in words[5:]], dtype=np.float32) * np.float32(2.0**-24)).reshape(2, 3)
    np.testing.assert_array_equal(second, expected32)
    assert first.dtype == np.float64 and second.dtype == np.float32
    assert rng.random().shape == ()


def test_counter_rng_reseed_restarts_the_stream() -> None:
    """seed(s) gives exactly a fresh generator's stream; other seeds give other numbers; values in [0, 1)."""
    rng = CounterRng(np, 7)
    a = rng.random(1000)
    rng.random(10)
    rng.seed(7)
    np.testing.assert_array_equal(rng.random(1000), a)
    np.testing.assert_array_equal(CounterRng(np, 7).random(1000), a)
    assert not np.array_equal(CounterRng(np, 8).random(1000), a)
    big = CounterRng(np, 3).random(200_000, dtype=np.float32)
    assert big.min() >= 0.0 and big.max() < 1.0
    assert abs(big.mean() - 0.5) < 5 * np.sqrt(1 / 12 / big.size)
    keep = (big >= 0.3).mean()
    assert abs(keep - 0.7) < 5 * np.sqrt(0.21 / big.size)
    with pytest.raises(TypeError, match="dtype must be float32 or float64, got int64"):
        rng.random(3, dtype=np.int64)


class _FakeCupy(types.SimpleNamespace):
    """A stand-in array module for backend.get_rng: NumPy's functions under another name."""


def test_manual_seed_rekeys_the_device_generator(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every manual_seed re-keys the one device generator in place (no new object); NumPy's is rebuilt."""
    fake = _FakeCupy(__name__="fake_cupy", **{k: getattr(np, k) for k in ("arange", "uint64", "float32", "float64")})
    monkeypatch.setattr(backend, "_RNGS", {})
    manual_seed(11)
    device_rng = backend.get_rng(fake)
    assert isinstance(device_rng, CounterRng) and not device_rng.fused  # a non-NumPy module without a GPU kernel
    first = device_rng.random(50)
    host_rng = backend.get_rng(np)
    for step in range(5):
        manual_seed(1000 + step)
    manual_seed(11)
    assert backend.get_rng(fake) is device_rng
    np.testing.assert_array_equal(device_rng.random(50), first)
    assert backend.get_rng(np) is not host_rng
    np.testing.assert_array_equal(backend.get_rng(np).random(3), np.random.default_rng(11).random(3))


# -- the pooling matrix ------------------------------------------------------------------
def test_adaptive_pool_matrix_is_cached_and_read_only() -> None:
    """One matrix per (sizes, dtype): the same object again, read-only, equal to the row-by-row construction."""
    a = ops.adaptive_pool_matrix(np, 15, 7, np.float32)
    assert ops.adaptive_pool_matrix(np, 15, 7, "float32") is a
    assert ops.adaptive_pool_matrix(np, 15, 7, np.float64) is not a
    assert a.dtype == np.float32 and not a.flags.writeable
    expected = np.zeros((7, 15), dtype=np.float32)
    for i in range(7):
        start, end = (i * 15) // 7, -((-(i + 1) * 15) // 7)
        expected[i, start:end] = 1.0 / (end - start)
    np.testing.assert_array_equal(a, expected)
    with pytest.raises(ValueError, match="read-only"):
        a[0, 0] = 2.0
    assert pooling._host_pool_matrix.cache_info().currsize >= 2


# -- the loader's staged uploads ----------------------------------------------------------
def _batches(images: np.ndarray, labels: np.ndarray, augment: Augment | None) -> list[Any]:
    loader = BatchLoader(images, labels, 7, seed=3, augment=augment, num_classes=5)
    return [(b.x, b.y) for e in (0, 1) for b in loader.epoch(e)]


# Each augmentation and the number of host arrays uploaded per batch (indices, crop and flip, TrivialAugment's two).
AUGMENTS = [
    (None, 1),
    (Augment.cifar(), 4),
    (Augment.cifar(mixup_alpha=0.4, cutmix_alpha=1.0), 4),
    (Augment.cifar(cutmix_alpha=1.0, trivial=True), 6),
]


@pytest.mark.parametrize(("augment", "arrays"), AUGMENTS, ids=["none", "crop-flip", "mix", "trivial-mix"])
def test_staged_loader_batches_equal_direct_ones(
    augment: Augment | None, arrays: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The GPU's packed one-copy upload, forced on NumPy, gives bit-identical batches over two epochs."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 12, 10, 3), dtype=np.uint8)
    labels = rng.integers(0, 5, 40)
    direct = _batches(images, labels, augment)
    uploads: list[int] = []
    upload = staging.HostStager.upload

    def counted(self: staging.HostStager, arrays: Any) -> Any:
        uploads.append(len(arrays))
        return upload(self, arrays)

    monkeypatch.setattr(staging, "FORCE_STAGING", True)
    monkeypatch.setattr(staging.HostStager, "upload", counted)
    staged = _batches(images, labels, augment)
    assert len(uploads) == len(direct), "one upload per batch"
    assert set(uploads) == {arrays}
    for k, ((x, y), (sx, sy)) in enumerate(zip(direct, staged, strict=True)):
        assert x.dtype == sx.dtype and y.dtype == sy.dtype, f"batch {k}"
        np.testing.assert_array_equal(sx, x, err_msg=f"batch {k} images")
        np.testing.assert_array_equal(sy, y, err_msg=f"batch {k} targets")


def test_stager_rotates_and_grows_its_buffers() -> None:
    """Consecutive uploads use alternate buffers (in-flight data is never overwritten); a larger group grows one."""
    stager = staging.HostStager(np)
    a = stager.upload([np.arange(4), np.array([True, False])])
    b = stager.upload([np.arange(10, 13)])
    np.testing.assert_array_equal(a[0], np.arange(4))
    np.testing.assert_array_equal(a[1], [True, False])
    assert a[0].dtype == np.int64 and a[1].dtype == np.bool_
    np.testing.assert_array_equal(b[0], [10, 11, 12])
    first, second = stager._buffers
    assert first is not None and second is not None and not np.shares_memory(first, second)
    stager.upload([np.arange(100).reshape(10, 10)])
    assert stager._buffers[0].size >= 100
    assert not staging.FORCE_STAGING and not staging.use_staging(np)
    assert staging.use_staging(types.SimpleNamespace(__name__="cupy"))


# -- the benchmark's GPU configs and failure handling ------------------------------------------
def _bench_args(*argv: str) -> Any:
    import argparse

    from pvt_np.cli import bench as bench_cli

    parser = argparse.ArgumentParser()
    bench_cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def _fake_result(framework: str, config: str) -> dict[str, Any]:
    """What a bench worker reports, with made-up numbers."""
    times = {"forward_ms": 1.0, "forward_backward_ms": 2.0, "train_step_ms": 3.0}
    return {"framework": framework, "config": config, "batch": 8, "size": 32, **times, "peak_memory_mb": 4.0,
            "img_per_s": 5.0}  # fmt: skip


def _fake_machine(device: str, threads: int) -> dict[str, Any]:
    return {"cpu": "x", "cores": 1, "threads": threads, "python": "3", "numpy": "2", "torch": "2", "device": device}


def test_bench_default_configs_follow_the_device(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """CPU: the CPU table's configs; GPU: those plus b0 224 batch 32 and b2_li 224 batch 16 (the issue's)."""
    from pvt_np import bench

    spawned: list[tuple[str, str]] = []

    def fake_spawn(framework: str, config: str, args: Any) -> dict[str, Any]:
        spawned.append((config, framework))
        return _fake_result(framework, config)

    monkeypatch.setattr(bench, "_spawn", fake_spawn)
    monkeypatch.setattr(bench, "machine_info", _fake_machine)
    assert bench.run(_bench_args("--json", str(tmp_path / "cpu.json"))) == 0
    assert [c for c, f in spawned if f == "torch"] == list(bench.CPU_CONFIGS)
    spawned.clear()
    monkeypatch.setattr(backend, "check_device", lambda device: device)
    assert bench.run(_bench_args("--device", "gpu")) == 0
    assert [c for c, f in spawned if f == "pvt_np"] == list(bench.GPU_CONFIGS)
    assert bench.CONFIGS["b0-224-bs32"] == ("pvt_v2_b0", {"num_classes": 1000}, 224, 32)
    assert bench.CONFIGS["b2_li-224-bs16"] == ("pvt_v2_b2_li", {"num_classes": 1000}, 224, 16)
    assert set(bench.CPU_CONFIGS) <= set(bench.GPU_CONFIGS) <= set(bench.CONFIGS)


def test_bench_keeps_going_after_a_failed_worker(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """A failing (config, framework) pair is reported, the others still run, the JSON holds every result so far."""
    import json

    from pvt_np import bench

    out = tmp_path / "bench.json"
    seen_in_json: list[int] = []

    def fake_spawn(framework: str, config: str, args: Any) -> dict[str, Any]:
        if out.exists():
            seen_in_json.append(len(json.loads(out.read_text())["results"]))
        if framework == "torch" and config == "b0-224":
            raise RuntimeError("bench worker torch/b0-224 failed (exit 1):\nCUDA out of memory")
        return _fake_result(framework, config)

    monkeypatch.setattr(bench, "_spawn", fake_spawn)
    monkeypatch.setattr(bench, "machine_info", _fake_machine)
    code = bench.run(_bench_args("--configs", "b0-cifar", "b0-224", "b2_li-224", "--json", str(out)))
    assert code == 1
    assert seen_in_json == [1, 2, 3, 4, 5]
    report = json.loads(out.read_text())
    assert len(report["results"]) == 6
    failed = [r for r in report["results"] if "error" in r]
    assert [(r["config"], r["framework"]) for r in failed] == [("b0-224", "torch")]
    text = bench.format_report(report)
    assert "b0-224         torch   failed: CUDA out of memory" in text
    assert "b2_li-224" in text and "step ratio" in text


def test_bench_rounds_interleave_and_report_medians_and_ratio_ranges(monkeypatch: pytest.MonkeyPatch) -> None:
    """--rounds 3: the pairs run pvt_np, torch, pvt_np, torch, ...; the table holds each pair's median and the
    median of the rounds' own pvt_np / torch ratios with their range (a drifting machine cancels within a round)."""
    from pvt_np import bench

    order: list[tuple[str, str]] = []
    drift = {1: 1.0, 2: 1.5, 3: 0.8}  # the whole machine slower or faster in each round
    pvt_step, torch_step = {1: 100.0, 2: 100.0, 3: 90.0}, {1: 100.0, 2: 80.0, 3: 100.0}

    def fake_spawn(framework: str, config: str, args: Any) -> dict[str, Any]:
        order.append((framework, config))
        r = 1 + (len(order) - 1) // 4  # 2 configs x 2 frameworks per round
        step = (pvt_step if framework == "pvt_np" else torch_step)[r] * drift[r]
        return {**_fake_result(framework, config), "train_step_ms": step, "peak_memory_mb": 10.0 * r}

    monkeypatch.setattr(bench, "_spawn", fake_spawn)
    monkeypatch.setattr(bench, "machine_info", _fake_machine)
    reports: list[str] = []
    monkeypatch.setattr(bench, "format_report", lambda report: reports.append(report) or "")
    assert bench.run(_bench_args("--configs", "b0-cifar", "b0-224", "--rounds", "3")) == 0
    assert order == [("pvt_np", "b0-cifar"), ("torch", "b0-cifar"), ("pvt_np", "b0-224"), ("torch", "b0-224")] * 3
    report = reports[0]
    assert [r["round"] for r in report["results"]] == [1] * 4 + [2] * 4 + [3] * 4
    monkeypatch.undo()
    text = bench.format_report(report)
    assert "medians of 3 interleaved rounds" in text
    # pvt_np's steps 100, 150, 72 -> median 100; torch's 100, 120, 80 -> 100; the rounds' ratios 1.00, 1.25, 0.90.
    row = next(line for line in text.splitlines() if line.startswith("b0-cifar       pvt_np"))
    assert row.split()[4] == "100.0" and "1.00 (0.90-1.25)" in row and "1.00 (1.00-1.00)" in row, row
    with pytest.raises(SystemExit):
        _bench_args("--rounds", "0")


def test_cpu_memory_meter_counts_what_the_first_step_keeps() -> None:
    """The CPU meter's baseline is taken when it is made (before the first step), so memory that step
    allocates and keeps (optimizer state, here 64 MiB touched and held) counts in the peak; start(),
    which the worker calls after that step, does not move the baseline. A fresh process, so that its
    lifetime peak resident set is its current one."""
    import subprocess
    import sys

    code = (
        "import numpy as np\n"
        "from pvt_np import bench_worker\n"
        "_, mem = bench_worker._cpu_meters()\n"
        "kept = np.ones(64 * 2**20 // 8)\n"
        "mem['start']()\n"
        "print(mem['peak']() / 2**20)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert 60.0 <= float(proc.stdout) < 200.0, proc.stdout


# -- the GPU extras and the one-run device script ---------------------------------------------------
REPO = Path(__file__).resolve().parent.parent


def test_gpu_extras_name_the_matching_cupy() -> None:
    """gpu-cuda12 / gpu-cuda13 install the matching CuPy wheel, and gpu is gpu-cuda12."""
    tomllib = pytest.importorskip("tomllib")
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert [r.split(">=")[0] for r in extras["gpu-cuda12"]] == ["cupy-cuda12x"]
    assert [r.split(">=")[0] for r in extras["gpu-cuda13"]] == ["cupy-cuda13x"]
    assert extras["gpu"] == extras["gpu-cuda12"]


def test_gpu_check_script_runs_every_check_within_its_limits() -> None:
    """The GPU script exists, is executable, runs each check under a limit totalling <= 9 minutes and
    writes a small, fixed set of result files."""
    import os
    import re

    script = REPO / ".ci" / "gpu-check"
    assert os.access(script, os.X_OK)
    text = script.read_text()
    limits = [int(v) for v in re.findall(r'_S="\$\{GPU_CHECK_[A-Z]+_S:-(\d+)\}"', text)]
    assert len(limits) == 4 and sum(limits) <= 9 * 60, limits
    for needed in ("pip install --quiet --no-deps", "-m pytest -m gpu", "bench --device gpu", "train --device gpu"):
        assert needed in text, needed
    outputs = set(re.findall(r'\$OUT/([A-Za-z0-9_.-]+)"', text)) | {"summary.txt"}
    assert 0 < len(outputs) <= 8, outputs
