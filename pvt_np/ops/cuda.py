"""CUDA kernels of the CuPy path: the ops whose array-at-a-time form costs the GPU most.

On the GPU a training step is bound by kernel launches and by passes over memory, not by
arithmetic. Written as array expressions, a layer norm is ten launches each way, an AdamW
update fourteen per parameter, and a depthwise conv kh*kw shifted multiply-adds (CuPy's
einsum would first copy the overlapping window view, kh*kw times the output). Each kernel
here does one op in one launch, one thread per output element (or one warp of 32 threads
per row), with the formula in its comment; the plain implementation of every op stays in
:mod:`pvt_np.ops.plain`. The products go to cuBLAS through :mod:`pvt_np.ops.blas`.

The source (:data:`SOURCE`, from :mod:`pvt_np.ops.cuda_source`) is plain C++ that CUDA
compiles (``cupy.RawModule``, one instantiation per float type, and per index type where
:data:`INDEXED`): a thread finds its element from
``blockIdx.x * blockDim.x + threadIdx.x`` and nothing else, and the lanes of a warp meet
only through ``__shfl_xor_sync``. So ``tests/cuda_harness.py`` compiles the same text
with the host's C++ compiler and runs every "thread" in a loop (the 32 lanes of a warp
taking turns between shuffles), which checks these kernels against the NumPy ops on any
machine, with or without a GPU.

Arrays are C-contiguous; size arguments are 64-bit (``long long``); float arguments have
the arrays' type. ``KERNELS`` lists each kernel's arguments, for the launcher and the harness.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from pvt_np.backend import Array, get_array_module
from pvt_np.ops.cuda_source import SOURCE

# Each kernel's arguments in order: "ptr" (an array of the kernel's float type), "iptr" (an int64 array),
# "i64", "T" (a float of that type).
_CONV = ["i64"] * 11  # h, w, c, ho, wo, kh, kw, sh, sw, ph, pw
KERNELS: dict[str, list[str]] = {
    "depthwise_forward": ["ptr"] * 4 + ["i64", "i64", *_CONV],
    "depthwise_input_grad": ["ptr"] * 3 + ["i64", *_CONV],
    "depthwise_weight_grad": ["ptr"] * 3 + ["i64", *_CONV],
    "col2im": ["ptr"] * 2 + ["i64"] * 10,  # total, hp, wp, c, ho, wo, kh, kw, sh, sw
    "layer_norm_forward": ["ptr"] * 6 + ["i64", "i64", "T"],
    "layer_norm_backward": ["ptr"] * 6 + ["i64", "i64"],
    "softmax_rows": ["ptr"] * 2 + ["i64", "i64", "T"],
    "softmax_rows_backward": ["ptr"] * 2 + ["i64", "i64", "T"],
    "relu_backward": ["ptr"] * 3 + ["i64"],
    "gelu_erf_forward": ["ptr"] * 3 + ["i64", "i64"],
    "adamw_multi": ["iptr", "i64", "i64", "T", "i64", *["T"] * 7],
    "adamw_capturable": ["ptr"] * 7 + ["i64", "i64", *["T"] * 5],
}
# Kernels with a second template argument, the index type (see depthwise_forward).
INDEXED = frozenset({"depthwise_forward", "depthwise_input_grad", "depthwise_weight_grad", "col2im"})
I_TYPES = ("int", "long long")
INT_INDEX_LIMIT = 2**31  # INDEXED kernels use int where every array and the thread count are below this
# Kernels whose 32 lanes of a warp work together (warp shuffles): one warp per row, 32 threads a row.
WARP_KERNELS = frozenset({"layer_norm_forward", "layer_norm_backward", "softmax_rows", "softmax_rows_backward"})
WARP_SIZE = 32
# The threads of one block: a multiple of the warp (32) that keeps every SM busy at these sizes.
THREADS_PER_BLOCK = 256
C_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
_INT64 = np.dtype(np.int64)
# --fmad=false: no fused multiply-adds, so each kernel rounds as its comment reads (and as the host harness).
COMPILE_OPTIONS = ("--std=c++14", "--fmad=false")
# Set by the tests (tests/cuda_harness.py) to SOURCE compiled for the CPU, with RawModule's get_function:
# the ops then take these kernels on NumPy arrays too, which checks them and their wiring without a GPU.
HOST_KERNELS: Any = None


def active(xp: Any) -> bool:
    """Whether the ops take their GPU functions (these kernels, cuBLAS): on CuPy, and on NumPy while the tests'
    host build of the kernels (:data:`HOST_KERNELS`) is installed. Each op asks this in one place."""
    return xp is not np or HOST_KERNELS is not None


def expressions(name: str) -> list[str]:
    """The instantiations of kernel ``name``: ``name<float>``, ... (and each index type for INDEXED)."""
    if name in INDEXED:
        return [f"{name}<{ctype}, {itype}>" for ctype in C_TYPES.values() for itype in I_TYPES]
    return [f"{name}<{ctype}>" for ctype in C_TYPES.values()]


@functools.cache
def _module(xp: Any) -> Any:
    """The compiled kernels (float and double), built once per process on first use."""
    names = [expression for name in KERNELS for expression in expressions(name)]
    return xp.RawModule(code=SOURCE, options=COMPILE_OPTIONS, name_expressions=names)


# (id(module), expression) -> (module, kernel): each kernel looked up once (a lookup per launch costs
# host time, and a step is bound by the host's launches); the module is kept so that its id stays its own.
_FUNCTIONS: dict[tuple[int, str], tuple[Any, Any]] = {}


def _function(module: Any, expression: str) -> Any:
    """Kernel ``expression`` of ``module``."""
    key = (id(module), expression)
    if key not in _FUNCTIONS:
        _FUNCTIONS[key] = (module, module.get_function(expression))
    return _FUNCTIONS[key][1]


def _launch(name: str, dtype: Any, threads: int, *args: Any) -> None:
    """Run kernel ``name`` for ``dtype`` on ``threads`` threads; ints become i64, floats ``dtype``.

    INDEXED kernels index with 32-bit ints when every array argument has fewer than
    INT_INDEX_LIMIT (2^31) elements, else with 64-bit ones.
    """
    if threads == 0:
        return
    kinds = KERNELS[name]
    if len(args) != len(kinds):
        raise TypeError(f"{name}: {len(kinds)} arguments expected, got {len(args)}")
    dtype = np.dtype(dtype)
    ftype = dtype.type
    packed = []
    largest = 0
    for position, (kind, value) in enumerate(zip(kinds, args, strict=True)):
        if kind in ("ptr", "iptr"):
            want = dtype if kind == "ptr" else _INT64
            if value.dtype != want or not value.flags.c_contiguous:
                layout = "C-contiguous" if value.flags.c_contiguous else "non-contiguous"
                raise ValueError(
                    f"{name}: argument {position}: expected a C-contiguous {want.name} array, "
                    f"got a {layout} {value.dtype} array"
                )
            largest = max(largest, value.size)
            packed.append(value)
        else:
            packed.append(np.int64(value) if kind == "i64" else ftype(value))
    module = HOST_KERNELS if isinstance(args[0], np.ndarray) else _module(get_array_module(args[0]))
    expression = f"{name}<{C_TYPES[dtype]}>"
    if name in INDEXED:
        itype = I_TYPES[0] if max(largest, threads) < INT_INDEX_LIMIT else I_TYPES[1]
        expression = f"{name}<{C_TYPES[dtype]}, {itype}>"
    kernel = _function(module, expression)
    kernel((-(-threads // THREADS_PER_BLOCK),), (THREADS_PER_BLOCK,), tuple(packed))


def address(a: Array) -> int:
    """The address of ``a``'s first element (device or host)."""
    return int(a.ctypes.data) if isinstance(a, np.ndarray) else int(a.data.ptr)


def _conv_sizes(x_shape: tuple[int, ...], out_shape: tuple[int, ...], taps_shape: tuple[int, ...]) -> list[int]:
    (_, h, w, c), (_, ho, wo, _), (kh, kw, _) = x_shape, out_shape, taps_shape
    return [h, w, c, ho, wo, kh, kw]


def depthwise_forward(
    x: Array, taps: Array, bias: Array | None, ph: int, pw: int, sh: int, sw: int, ho: int, wo: int
) -> Array:
    """Depthwise conv of NHWC ``x`` with ``taps`` (kh, kw, C), zero padding (ph, pw), stride (sh, sw)."""
    xp = get_array_module(x)
    x = xp.ascontiguousarray(x)
    n, c = x.shape[0], x.shape[3]
    out = xp.empty((n, ho, wo, c), dtype=x.dtype)
    sizes = _conv_sizes(x.shape, out.shape, taps.shape)
    has_bias = bias is not None
    _launch(
        "depthwise_forward", x.dtype, out.size, x, taps, bias if has_bias else taps, out, out.size, int(has_bias),
        *sizes, sh, sw, ph, pw,
    )  # fmt: skip
    return out


def depthwise_input_grad(g: Array, taps: Array, x_shape: tuple[int, ...], ph: int, pw: int, sh: int, sw: int) -> Array:
    """dL/dx (shape ``x_shape``, NHWC) of the depthwise conv, from G = dL/dout (contiguous NHWC)."""
    xp = get_array_module(g)
    dx = xp.empty(x_shape, dtype=g.dtype)
    sizes = _conv_sizes(x_shape, g.shape, taps.shape)
    _launch("depthwise_input_grad", g.dtype, dx.size, g, taps, dx, dx.size, *sizes, sh, sw, ph, pw)
    return dx


def depthwise_weight_grad(g: Array, x: Array, kh: int, kw: int, ph: int, pw: int, sh: int, sw: int) -> Array:
    """dL/dtaps's partial sums, (N*Ho, kh*kw*C): one row per output row of each image (one thread per entry).

    dL/dtaps (kh, kw, C) is their column sum (:func:`pvt_np.ops.blas.column_sums`).
    """
    xp = get_array_module(g)
    x = xp.ascontiguousarray(x)
    n, ho, c = g.shape[0], g.shape[1], x.shape[3]
    partial = xp.empty((n * ho, kh, kw, c), dtype=g.dtype)
    sizes = _conv_sizes(x.shape, g.shape, (kh, kw, c))
    _launch("depthwise_weight_grad", g.dtype, partial.size, g, x, partial, partial.size, *sizes, sh, sw, ph, pw)
    return partial.reshape(n * ho, -1)


def col2im(dcols: Array, dxpad: Array, kh: int, kw: int, sh: int, sw: int, ho: int, wo: int) -> None:
    """Fill ``dxpad`` (N, Hp, Wp, C), C-contiguous, from the im2col gradient ``dcols`` (N*Ho*Wo, kh*kw*C)."""
    xp = get_array_module(dcols)
    dcols = xp.ascontiguousarray(dcols)
    _, hp, wp, c = dxpad.shape
    _launch("col2im", dxpad.dtype, dxpad.size, dcols, dxpad, dxpad.size, hp, wp, c, ho, wo, kh, kw, sh, sw)


def layer_norm_forward(x2: Array, weight: Array, bias: Array, eps: float) -> tuple[Array, Array, Array]:
    """(y, xhat, rstd) of the rows of ``x2`` (M, C); rstd has shape (M, 1). One warp per row."""
    xp = get_array_module(x2)
    x2 = xp.ascontiguousarray(x2)
    rows, c = x2.shape
    y, xhat = xp.empty_like(x2), xp.empty_like(x2)
    rstd = xp.empty((rows, 1), dtype=x2.dtype)
    _launch("layer_norm_forward", x2.dtype, rows * WARP_SIZE, x2, weight, bias, y, xhat, rstd, rows, c, eps)
    return y, xhat, rstd


def layer_norm_backward(g2: Array, xhat: Array, rstd: Array, weight: Array) -> tuple[Array, Array]:
    """(dx, sums) from G (M, C), one warp per row; the column sums of ``sums`` (M, 2C) are [dweight, dbias]."""
    xp = get_array_module(g2)
    g2 = xp.ascontiguousarray(g2)
    rows, c = g2.shape
    dx, sums = xp.empty_like(g2), xp.empty((rows, 2 * c), dtype=g2.dtype)
    _launch("layer_norm_backward", g2.dtype, rows * WARP_SIZE, g2, xhat, rstd, weight, dx, sums, rows, c)
    return dx, sums


def softmax_rows(x: Array, scale: float) -> None:
    """x <- softmax(x * scale) along the last axis, in place (attention's scores), one warp per row."""
    m = x.shape[-1]
    rows = x.size // m if m else 0
    _launch("softmax_rows", x.dtype, rows * WARP_SIZE, x, x, rows, m, scale)


def softmax_rows_backward(d: Array, probs: Array, scale: float) -> None:
    """d <- (d - rowsum(d * probs)) * probs * scale, in place: dL/dx from d = dL/dprobs, probs = softmax(x * scale)."""
    m = d.shape[-1]
    rows = d.size // m if m else 0
    _launch("softmax_rows_backward", d.dtype, rows * WARP_SIZE, d, probs, rows, m, scale)


def relu_backward(g: Array, y: Array) -> Array:
    """dL/dx = G * (y > 0) of ReLU, from G and its output y (both contiguous, one shape), one pass."""
    xp = get_array_module(g)
    g, y = xp.ascontiguousarray(g), xp.ascontiguousarray(y)
    dx = xp.empty_like(g)
    _launch("relu_backward", g.dtype, g.size, g, y, dx, g.size)
    return dx


def gelu_erf_forward(x: Array, need_grad: bool) -> tuple[Array, Array | None]:
    """(y, dy/dx or None) of GELU's erf form, one pass."""
    xp = get_array_module(x)
    x = xp.ascontiguousarray(x)
    y = xp.empty_like(x)
    local = xp.empty_like(x) if need_grad else y  # a placeholder the kernel never writes
    _launch("gelu_erf_forward", x.dtype, x.size, x, y, local, x.size, int(need_grad))
    return y, (local if need_grad else None)


def adamw_multi(
    table: Array, tensors: int, total: int, dtype: Any, *, decay: float, w: float, beta2: float, step_size: float,
    bc2_sqrt: float, eps: float,
) -> None:  # fmt: skip
    """One fused AdamW step of ``tensors`` parameters of ``dtype`` with the same options, in place, in one launch.

    ``table`` (int64, on the parameters' device): the starts of the tensors in the global
    index (``tensors + 1`` entries, the last = ``total``), then each tensor's four
    :func:`address` es: param, grad, exp_avg, exp_avg_sq, all C-contiguous and of ``dtype``.
    """
    _launch(
        "adamw_multi", dtype, total, table, tensors, total, decay, int(abs(w) < 0.5), w, 1 - w, beta2, 1 - beta2,
        step_size, bc2_sqrt, eps,
    )  # fmt: skip


def adamw_capturable(
    param: Array, grad: Array, exp_avg: Array, exp_avg_sq: Array, step_size: Array, bc2_sqrt: Array, decay: Array,
    *, w: float, beta2: float, eps: float,
) -> None:  # fmt: skip
    """One AdamW step of one parameter in place, in one launch, its per-step scalars read from device memory.

    ``step_size``, ``bc2_sqrt`` and ``decay`` are 0-d arrays of the parameter's dtype on its device
    (:class:`pvt_np.optim.AdamW`'s capturable buffers): the kernel reads them when it runs, so a
    recorded launch (a CUDA graph) sees each step's values. All arrays C-contiguous, of one dtype.
    """
    _launch(
        "adamw_capturable", param.dtype, param.size, param, grad, exp_avg, exp_avg_sq, step_size, bc2_sqrt, decay,
        param.size, int(abs(w) < 0.5), w, 1 - w, beta2, 1 - beta2, eps,
    )  # fmt: skip
