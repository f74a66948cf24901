"""Every version of the lesson's kernels, checked against pvt_np.ops.plain and, on a GPU, timed.

    python docs/kernels/run.py            # a CUDA machine with CuPy: check and time every version
    python docs/kernels/run.py --host     # any machine with a C++ compiler: check every version
    python docs/kernels/run.py --small    # a CUDA machine: check every version at --host's small sizes

Versions 1, 2, ... of each kernel are in the .cu files next to this one; the last versions are the
kernels pvt_np ships, compiled from pvt_np/ops/cuda.py's SOURCE (the lesson runs them from there,
it holds no copy). Each version gets float32 inputs and is compared with the plain implementation
run in float64 on the same values: the error is max |kernel - plain| / max |plain|. A version marked
``same_bits`` sums in the order of the one before it (only the threads' route to the data changed),
so its output must equal that version's bit for bit, and is checked for it.

On the GPU each version's step is timed with CUDA events around it, ``--repeats`` times after one
warm-up run, and the median is printed (milliseconds). The sizes are those of PVT v2 b2_li's first
stage at 224 x 224, batch 32 (``GPU_SIZES``). ``--host`` runs every version on the host harness of
tests/cuda_harness.py (each thread in a loop, the 32 lanes of a warp as coroutines that meet at each
shuffle or ``__syncwarp``) at small, awkward sizes (``HOST_SIZES``); it checks, it does not time.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import importlib.util
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:  # run as a script from a checkout: the checkout's pvt_np
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from pvt_np import backend  # noqa: E402
from pvt_np.ops import blas, cuda, plain  # noqa: E402

F32, F64 = np.float32, np.float64
WARP = cuda.WARP_SIZE
BLOCK = cuda.THREADS_PER_BLOCK  # every version runs with the shipped launcher's 256 threads a block
EPS = 1e-6  # layer norm's eps (PVT v2's)
SCALE = 64**-0.5  # attention's scale, head dim ** -0.5 for PVT v2's 64-wide heads
# float32 against float64, relative to the largest expected value (as tests/helpers.py's max_rel_err). The
# longest float32 sum here, weight grad v1's one running sum of 100,352 products at GPU_SIZES, is off by 9.3e-6
# on the host harness (the shipped kernel's partial sums per output row: 1.7e-6); every version at HOST_SIZES
# is within 3e-7.
TOLERANCE = 3e-5


@dataclass(frozen=True)
class Version:
    """One version of one kernel."""

    kernel: str  # the shipped kernel it leads to (a key of pvt_np.ops.cuda.KERNELS)
    number: int
    function: str  # an extern "C" kernel of FILES[kernel], or an instantiation from cuda.SOURCE ("name<float>")
    change: str  # what it changes from the version before
    warp: bool = False  # the lanes of a warp work together: one warp (32 threads) per row
    same_bits: bool = False  # the sums of the version before, in its order: equal output bits
    extra_images: bool = False  # takes the number of images after `total` (weight grad v1)

    @property
    def shipped(self) -> bool:
        """Whether this is one of pvt_np's own kernels (from pvt_np/ops/cuda.py)."""
        return "<" in self.function

    @property
    def kinds(self) -> list[str]:
        """The kinds of its arguments, as pvt_np.ops.cuda.KERNELS gives them."""
        kinds = list(cuda.KERNELS[self.kernel])
        return [*kinds[:4], "i64", *kinds[4:]] if self.extra_images else kinds


def _versions(kernel: str, *specs: tuple[str, str, dict[str, bool]]) -> list[Version]:
    return [Version(kernel, i, function, change, **flags) for i, (function, change, flags) in enumerate(specs, 1)]


_ROW = {"warp": True}
_SAME = {"same_bits": True}
VERSIONS: dict[str, list[Version]] = {
    "layer_norm_forward": _versions(
        "layer_norm_forward",
        ("layer_norm_forward_v1", "one thread per row", {}),
        ("layer_norm_forward_v2", "a warp per row (coalesced loads); sums through shared memory", _ROW),
        ("layer_norm_forward<float>", "warp shuffles instead of shared memory", {**_ROW, "same_bits": True}),
    ),
    "layer_norm_backward": _versions(
        "layer_norm_backward",
        ("layer_norm_backward_v1", "one thread per row", {}),
        ("layer_norm_backward_v2", "a warp per row (coalesced loads); sums through shared memory", _ROW),
        ("layer_norm_backward<float>", "warp shuffles instead of shared memory", {**_ROW, "same_bits": True}),
    ),
    "softmax_rows": _versions(
        "softmax_rows",
        ("softmax_rows_v1", "one thread per row", {}),
        ("softmax_rows_v2", "a warp per row (coalesced loads); max and sum through shared memory", _ROW),
        ("softmax_rows<float>", "warp shuffles instead of shared memory", {**_ROW, "same_bits": True}),
    ),
    "softmax_rows_backward": _versions(
        "softmax_rows_backward",
        ("softmax_rows_backward_v1", "one thread per row", {}),
        ("softmax_rows_backward_v2", "a warp per row (coalesced loads); the dot through shared memory", _ROW),
        ("softmax_rows_backward<float>", "warp shuffles instead of shared memory", {**_ROW, "same_bits": True}),
    ),
    "depthwise_forward": _versions(
        "depthwise_forward",
        ("depthwise_forward_v1", "one thread per output, numbered n, c, i, j (uncoalesced)", {}),
        ("depthwise_forward<float, long long>", "numbered n, i, j, c: channel fastest (coalesced)", _SAME),
        ("depthwise_forward<float, int>", "32-bit index arithmetic", {"same_bits": True}),
    ),
    "depthwise_input_grad": _versions(
        "depthwise_input_grad",
        ("depthwise_input_grad_v1", "scatter: one thread per output, atomicAdd into zeroed dx", {}),
        ("depthwise_input_grad<float, long long>", "gather: one thread per input element, no atomics", {}),
        ("depthwise_input_grad<float, int>", "32-bit index arithmetic", {"same_bits": True}),
    ),
    "depthwise_weight_grad": _versions(
        "depthwise_weight_grad",
        ("depthwise_weight_grad_v1", "one thread per tap value, summing all images", {"extra_images": True}),
        ("depthwise_weight_grad_v2", "partial sums per image, then their column sums", {}),
        ("depthwise_weight_grad<float, long long>", "partial sums per output row of each image", {}),
        ("depthwise_weight_grad<float, int>", "32-bit index arithmetic", {"same_bits": True}),
    ),
}
FILES = {
    "layer_norm_forward": "layer_norm.cu",
    "layer_norm_backward": "layer_norm.cu",
    "softmax_rows": "softmax.cu",
    "softmax_rows_backward": "softmax.cu",
    "depthwise_forward": "depthwise_conv.cu",
    "depthwise_input_grad": "depthwise_conv.cu",
    "depthwise_weight_grad": "depthwise_conv.cu",
}

# Sizes: (rows, C) for layer norm, (rows, M) for the softmax, (N, H, W, C, kh, kw, sh, sw, ph, pw) for the conv.
GPU_SIZES: dict[str, tuple[int, ...]] = {  # b2_li's first stage at 224 x 224, batch 32: 56 x 56 tokens
    "layer_norm_forward": (32 * 56 * 56, 64),
    "layer_norm_backward": (32 * 56 * 56, 64),
    "softmax_rows": (32 * 56 * 56, 49),  # one head, 3,136 queries, 7 x 7 pooled keys
    "softmax_rows_backward": (32 * 56 * 56, 49),
    "depthwise_forward": (32, 56, 56, 512, 3, 3, 1, 1, 1, 1),  # the MLP's hidden width, 8 x 64
    "depthwise_input_grad": (32, 56, 56, 512, 3, 3, 1, 1, 1, 1),
    "depthwise_weight_grad": (32, 56, 56, 512, 3, 3, 1, 1, 1, 1),
}
_ROWS = [(37, 7), (11, 33), (9, 49), (5, 70)]  # rows of fewer and more values than a warp has lanes
_SOFTMAX_ROWS = [(5, 1), (37, 49), (9, 70)]  # one key (a softmax of one value), PVT v2's 49, over a warp
_CONVS = [
    (2, 7, 5, 5, 3, 3, 1, 1, 1, 1),
    (2, 9, 8, 3, 3, 3, 2, 2, 1, 1),  # stride 2
    (1, 9, 11, 4, 3, 2, 2, 3, 1, 0),  # unequal kernel sides, strides and paddings
    (2, 6, 5, 3, 3, 3, 1, 1, 3, 3),  # padding beyond kernel - 1: outputs that read only zeros
    (1, 9, 8, 7, 3, 3, 3, 3, 1, 1),  # stride 3: input pixels no window reads
]
HOST_SIZES: dict[str, list[tuple[int, ...]]] = {
    "layer_norm_forward": _ROWS,
    "layer_norm_backward": _ROWS,
    "softmax_rows": _SOFTMAX_ROWS,
    "softmax_rows_backward": _SOFTMAX_ROWS,
    "depthwise_forward": _CONVS,
    "depthwise_input_grad": _CONVS,
    "depthwise_weight_grad": _CONVS,
}

Launch = Callable[..., None]  # launch(version, threads, *args): BLOCK threads a block, enough blocks


@dataclass
class Run:
    """One version set up on one problem: ``reset(); step()`` runs it, ``outputs()`` reads its results."""

    step: Callable[[], None]  # what the version does, timed: its launch (and a fill or a sum it needs)
    outputs: Callable[[], dict[str, Any]]  # its results, comparable with the problem's expected ones
    reset: Callable[[], None] = lambda: None  # restores an input the step overwrites (not timed)


@dataclass
class Problem:
    """One kernel at one size: the plain implementation's results, and each version set up on its inputs."""

    expected: dict[str, np.ndarray]
    setup: Callable[[Version, Launch], Run]


def _normal(rng: np.random.Generator, *shape: int, scale: float = 1.0, shift: float = 0.0) -> np.ndarray:
    """float32 normal draws: the kernels' inputs (the plain reference takes the same values in float64)."""
    return (rng.standard_normal(shape) * scale + shift).astype(F32)


def _layer_norm(kernel: str, xp: Any, size: tuple[int, ...]) -> Problem:
    rows, c = size
    rng = np.random.default_rng(0)
    x = _normal(rng, rows, c, scale=3.0, shift=0.7)
    weight, bias = _normal(rng, c, scale=0.5, shift=1.0), _normal(rng, c)
    y, cache = plain.layer_norm_forward(x.astype(F64), weight.astype(F64), bias.astype(F64), EPS)
    w_d = xp.asarray(weight)
    threads = {True: rows * WARP, False: rows}
    if kernel == "layer_norm_forward":
        x_d, b_d = xp.asarray(x), xp.asarray(bias)

        def forward(v: Version, launch: Launch) -> Run:
            y_d, xhat_d, rstd_d = xp.empty((rows, c), F32), xp.empty((rows, c), F32), xp.empty((rows, 1), F32)
            return Run(
                lambda: launch(v, threads[v.warp], x_d, w_d, b_d, y_d, xhat_d, rstd_d, rows, c, EPS),
                lambda: {"y": y_d, "xhat": xhat_d, "rstd": rstd_d},
            )

        return Problem({"y": y, "xhat": cache.xhat, "rstd": cache.rstd}, forward)
    xhat, rstd, g = cache.xhat.astype(F32), cache.rstd.astype(F32), _normal(rng, rows, c)
    dx, dweight, dbias = plain.layer_norm_backward(
        g.astype(F64), cache._replace(xhat=xhat.astype(F64), rstd=rstd.astype(F64))
    )
    g_d, xhat_d, rstd_d = xp.asarray(g), xp.asarray(xhat), xp.asarray(rstd)

    def backward(v: Version, launch: Launch) -> Run:
        dx_d, sums_d = xp.empty((rows, c), F32), xp.empty((rows, 2 * c), F32)

        def outputs() -> dict[str, Any]:  # [dweight, dbias]: the column sums of the rows [G * xhat, G] the kernel
            sums = sums_d.astype(F64).sum(axis=0)  # wrote, in float64 (so the check sees the kernel's error alone)
            return {"dx": dx_d, "dweight": sums[:c], "dbias": sums[c:]}

        return Run(lambda: launch(v, threads[v.warp], g_d, xhat_d, rstd_d, w_d, dx_d, sums_d, rows, c), outputs)

    return Problem({"dx": dx, "dweight": dweight, "dbias": dbias}, backward)


def _softmax(kernel: str, xp: Any, size: tuple[int, ...]) -> Problem:
    rows, m = size
    rng = np.random.default_rng(1)
    x = _normal(rng, rows, m, scale=4.0)
    probs, cache = plain.softmax_forward(x.astype(F64) * F32(SCALE).astype(F64))
    threads = {True: rows * WARP, False: rows}
    if kernel == "softmax_rows":
        x_d = xp.asarray(x)

        def forward(v: Version, launch: Launch) -> Run:
            y_d = xp.empty((rows, m), F32)  # the kernel may also run in place (y = x); here x stays for the repeats
            return Run(lambda: launch(v, threads[v.warp], x_d, y_d, rows, m, SCALE), lambda: {"y": y_d})

        return Problem({"y": probs}, forward)
    p, d = probs.astype(F32), _normal(rng, rows, m)
    dx = plain.softmax_backward(d.astype(F64), cache._replace(y=p.astype(F64))) * F32(SCALE).astype(F64)
    p_d, d_start = xp.asarray(p), xp.asarray(d)

    def backward(v: Version, launch: Launch) -> Run:
        d_d = xp.empty((rows, m), F32)  # in place: dL/dP becomes dL/dx, so each run starts from a fresh copy
        return Run(
            lambda: launch(v, threads[v.warp], d_d, p_d, rows, m, SCALE),
            lambda: {"dx": d_d},
            reset=lambda: d_d.__setitem__(Ellipsis, d_start),
        )

    return Problem({"dx": dx}, backward)


@functools.lru_cache(maxsize=1)
def _depthwise_reference(size: tuple[int, ...]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The conv's float32 inputs (x, taps (kh, kw, C), bias, G) and the plain float64 results (out, dx, dtaps)."""
    n, h, w, c, kh, kw, sh, sw, ph, pw = size
    rng = np.random.default_rng(2)
    x, weight, bias = _normal(rng, n, h, w, c), _normal(rng, c, 1, kh, kw), _normal(rng, c)
    out, cache = plain.conv2d_forward(
        x.astype(F64), weight.astype(F64), bias.astype(F64), (sh, sw), (ph, pw), groups=c, channels_last=True
    )
    g = _normal(rng, *out.shape)
    dx, dweight, _ = plain.conv2d_backward(g.astype(F64), cache)
    taps = np.ascontiguousarray(weight[:, 0].transpose(1, 2, 0))  # taps[p, q, c] = weight[c, 0, p, q]
    inputs = {"x": x, "taps": taps, "bias": bias, "g": g}
    return inputs, {"out": out, "dx": dx, "dtaps": dweight[:, 0].transpose(1, 2, 0)}


def _depthwise(kernel: str, xp: Any, size: tuple[int, ...]) -> Problem:
    n, h, w, c, kh, kw, sh, sw, ph, pw = size
    inputs, expected = _depthwise_reference(size)
    ho, wo = expected["out"].shape[1:3]
    sizes = (h, w, c, ho, wo, kh, kw, sh, sw, ph, pw)
    x_d, taps_d, bias_d, g_d = (xp.asarray(inputs[k]) for k in ("x", "taps", "bias", "g"))
    if kernel == "depthwise_forward":

        def forward(v: Version, launch: Launch) -> Run:
            out_d = xp.empty((n, ho, wo, c), F32)
            return Run(lambda: launch(v, out_d.size, x_d, taps_d, bias_d, out_d, out_d.size, 1, *sizes),
                       lambda: {"out": out_d})  # fmt: skip

        return Problem({"out": expected["out"]}, forward)
    if kernel == "depthwise_input_grad":

        def input_grad(v: Version, launch: Launch) -> Run:
            dx_d = xp.empty((n, h, w, c), F32)
            if v.number == 1:  # the scatter: a thread per output element, adding into a zeroed dx

                def scatter() -> None:
                    dx_d.fill(0)
                    launch(v, g_d.size, g_d, taps_d, dx_d, g_d.size, *sizes)

                return Run(scatter, lambda: {"dx": dx_d})
            return Run(lambda: launch(v, dx_d.size, g_d, taps_d, dx_d, dx_d.size, *sizes), lambda: {"dx": dx_d})

        return Problem({"dx": expected["dx"]}, input_grad)

    def weight_grad(v: Version, launch: Launch) -> Run:
        if v.extra_images:  # v1: a thread per tap value, writing dtaps itself
            dtaps_d = xp.empty((kh, kw, c), F32)
            return Run(lambda: launch(v, dtaps_d.size, g_d, x_d, dtaps_d, dtaps_d.size, n, *sizes),
                       lambda: {"dtaps": dtaps_d})  # fmt: skip
        rows = n if v.number == 2 else n * ho  # partial sums per image, or per output row of each image
        partial_d = xp.empty((rows, kh, kw, c), F32)
        dtaps: list[Any] = []

        def partial_sums() -> None:
            launch(v, partial_d.size, g_d, x_d, partial_d, partial_d.size, *sizes)
            dtaps[:] = [blas.column_sums(partial_d.reshape(rows, -1)).reshape(kh, kw, c)]

        return Run(partial_sums, lambda: {"dtaps": dtaps[0]})

    return Problem({"dtaps": expected["dtaps"]}, weight_grad)


PROBLEMS: dict[str, Callable[[str, Any, tuple[int, ...]], Problem]] = {
    "layer_norm_forward": _layer_norm,
    "layer_norm_backward": _layer_norm,
    "softmax_rows": _softmax,
    "softmax_rows_backward": _softmax,
    "depthwise_forward": _depthwise,
    "depthwise_input_grad": _depthwise,
    "depthwise_weight_grad": _depthwise,
}


def problem(kernel: str, xp: Any, size: tuple[int, ...]) -> Problem:
    """``kernel`` at ``size`` on ``xp`` (NumPy for the host harness, CuPy for the GPU)."""
    return PROBLEMS[kernel](kernel, xp, size)


def _pack(version: Version, args: Sequence[Any]) -> tuple[Any, ...]:
    """The kernel's arguments as it takes them: arrays as they are, sizes as int64, floats as float32."""
    kinds = version.kinds
    if len(args) != len(kinds):
        raise TypeError(f"{version.function}: {len(kinds)} arguments expected, got {len(args)}")
    return tuple(a if k == "ptr" else np.int64(a) if k == "i64" else F32(a) for k, a in zip(kinds, args, strict=True))


class GpuKernels:
    """Every version compiled by CuPy for the current GPU, launched as pvt_np.ops.cuda's launcher does."""

    def __init__(self, cupy: Any) -> None:
        self.lesson = {
            name: cupy.RawModule(code=(HERE / name).read_text(), options=cuda.COMPILE_OPTIONS)
            for name in sorted(set(FILES.values()))
        }
        expressions = [v.function for versions in VERSIONS.values() for v in versions if v.shipped]
        self.shipped = cupy.RawModule(code=cuda.SOURCE, options=cuda.COMPILE_OPTIONS, name_expressions=expressions)
        self.functions: dict[str, Any] = {}  # looked up once: the host's time between the events counts too

    def __call__(self, version: Version, threads: int, *args: Any) -> None:
        if version.function not in self.functions:
            module = self.shipped if version.shipped else self.lesson[FILES[version.kernel]]
            self.functions[version.function] = module.get_function(version.function)
        if threads:
            self.functions[version.function]((-(-threads // BLOCK),), (BLOCK,), _pack(version, args))


# What the host needs beyond tests/cuda_harness.py's SHIM: shared memory (one static array: the harness
# runs one warp at a time and each warp keeps to its own 32 slots), __syncwarp (a turn given back, as each
# half of a shuffle: every lane reaches it before any goes on), and atomicAdd (the threads take turns).
HOST_SHIM = r"""
#define __shared__ static
inline void __syncwarp(unsigned int = 0xffffffffu) { ++pvt_warp::shuffles[pvt_warp::current]; pvt_warp::give_turn(); }
template <typename T> T atomicAdd(T* address, T value) { T old = *address; *address = old + value; return old; }
"""
_C_TYPES = {"ptr": "float*", "i64": "long long", "T": "float"}
_CTYPES = {"ptr": ctypes.c_void_p, "i64": ctypes.c_longlong, "T": ctypes.c_float}


def _symbol(version: Version) -> str:
    return f"launch_{version.kernel}_v{version.number}"


def _host_wrapper(version: Version) -> str:
    """An extern "C" launcher of ``version``: its grid block by block, thread by thread (or warp by warp)."""
    kinds, symbol, call = version.kinds, _symbol(version), version.function
    params = ", ".join(f"{_C_TYPES[k]} a{i}" for i, k in enumerate(kinds))
    values = ", ".join(f"a{i}" for i in range(len(kinds)))
    head = f'extern "C" void {symbol}(unsigned int blocks, unsigned int threads, {params}) {{\n'
    head += "    blockDim.x = threads;\n"
    if not version.warp:
        loop = "        for (unsigned int t = 0; t < threads; ++t) { blockIdx.x = b; threadIdx.x = t; "
        return f"{head}    for (unsigned int b = 0; b < blocks; ++b)\n{loop}{call}({values}); }}\n}}\n"
    fields = "; ".join(f"{_C_TYPES[k]} a{i}" for i, k in enumerate(kinds))
    from_struct = ", ".join(f"s->a{i}" for i in range(len(kinds)))
    return (
        f"struct args_{symbol} {{ {fields}; }};\n"
        f"static void body_{symbol}(void* p) {{ args_{symbol}* s = (args_{symbol}*)p; {call}({from_struct}); }}\n"
        f"{head}    args_{symbol} s = {{{values}}};\n"
        "    for (unsigned int b = 0; b < blocks; ++b)\n"
        "        for (unsigned int w = 0; w < threads; w += pvt_warp::LANES) {\n"
        f"            blockIdx.x = b; pvt_warp::run(w, body_{symbol}, &s);\n"
        "        }\n}\n"
    )


def _harness() -> ModuleType:
    """tests/cuda_harness.py (the test suite's host build of the kernels), imported by its path."""
    if "cuda_harness" in sys.modules:
        return sys.modules["cuda_harness"]
    spec = importlib.util.spec_from_file_location("cuda_harness", ROOT / "tests" / "cuda_harness.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["cuda_harness"] = module
    spec.loader.exec_module(module)
    return module


class HostKernels:
    """Every version compiled by the host's C++ compiler on the harness's shim, one library per .cu file
    (with cuda.SOURCE for the shipped versions); launched as GpuKernels, on NumPy arrays."""

    def __init__(self, build_dir: Path) -> None:
        harness = _harness()
        cxx = harness.compiler()
        if cxx is None:
            raise RuntimeError("no C++ compiler (g++, c++ or clang++) on PATH to build the kernels for the host")
        self.functions: dict[tuple[str, int], tuple[Any, Any]] = {}
        for name in sorted(set(FILES.values())):
            versions = [v for kernel, vs in VERSIONS.items() if FILES[kernel] == name for v in vs]
            wrappers = "\n".join(_host_wrapper(v) for v in versions)
            src = Path(build_dir) / f"{Path(name).stem}.cpp"
            src.write_text(harness.SHIM + HOST_SHIM + cuda.SOURCE + (HERE / name).read_text() + wrappers)
            lib_path = src.with_suffix(".so")
            cmd = [cxx, "-std=c++14", "-O2", "-ffp-contract=off", "-fPIC", "-shared", str(src), "-o", str(lib_path)]
            built = subprocess.run(cmd, capture_output=True, text=True)
            if built.returncode:
                raise RuntimeError(f"{name}: the host build failed:\n{built.stderr}")
            lib = ctypes.CDLL(str(lib_path))
            lib.pvt_warp_diverged.restype = ctypes.c_int
            for v in versions:
                fn = getattr(lib, _symbol(v))
                fn.argtypes = [ctypes.c_uint, ctypes.c_uint] + [_CTYPES[k] for k in v.kinds]
                fn.restype = None
                self.functions[(v.kernel, v.number)] = (lib, fn)

    def __call__(self, version: Version, threads: int, *args: Any) -> None:
        lib, fn = self.functions[(version.kernel, version.number)]
        values = [a.ctypes.data if isinstance(a, np.ndarray) else a.item() for a in _pack(version, args)]
        if threads:
            fn(-(-threads // BLOCK), BLOCK, *values)
        if lib.pvt_warp_diverged():
            raise RuntimeError(f"{version.function}: the lanes of a warp did not all make the same shuffles and syncs")


def max_rel_err(actual: np.ndarray, expected: np.ndarray) -> float:
    """max |actual - expected| / max |expected| (the absolute error where expected is all zeros)."""
    if actual.shape != expected.shape:
        raise ValueError(f"shapes differ: {actual.shape} vs {expected.shape}")
    if actual.size == 0:
        return 0.0
    diff, scale = float(np.abs(actual.astype(F64) - expected).max()), float(np.abs(expected).max())
    return diff / scale if scale > 0 else diff


@dataclass
class Result:
    version: Version
    size: tuple[int, ...]
    error: float  # the largest max_rel_err over the version's outputs
    same_bits: bool | None  # equal to the version before, bit for bit (None: not claimed)
    ms: float | None  # median time on the GPU (None: not timed)

    @property
    def ok(self) -> bool:
        return self.error <= TOLERANCE and self.same_bits is not False


def check(kernel: str, xp: Any, launch: Launch, size: tuple[int, ...], timer: Any = None) -> list[Result]:
    """Every version of ``kernel`` at ``size``: its error against plain, its equal bits where claimed, its time."""
    prob = problem(kernel, xp, size)
    to_host = np.asarray if xp is np else xp.asnumpy
    results, previous = [], None
    for v in VERSIONS[kernel]:
        run = prob.setup(v, launch)
        run.reset()
        run.step()
        outputs = {k: to_host(a) for k, a in run.outputs().items()}
        error = max(max_rel_err(outputs[k], e) for k, e in prob.expected.items())
        same = None
        if v.same_bits:
            same = all(np.array_equal(outputs[k], previous[k]) for k in outputs)
        results.append(Result(v, size, error, same, None if timer is None else timer(run)))
        previous = outputs
    return results


def gpu_timer(cupy: Any, repeats: int) -> Callable[[Run], float]:
    """The median of ``repeats`` CUDA-event times (ms) of a run's step, after one warm-up run."""

    def time(run: Run) -> float:
        run.reset()
        run.step()
        times = []
        for _ in range(repeats):
            run.reset()
            start, stop = cupy.cuda.Event(), cupy.cuda.Event()
            start.record()
            run.step()
            stop.record()
            stop.synchronize()
            times.append(cupy.cuda.get_elapsed_time(start, stop))
        return statistics.median(times)

    return time


def _table(results: list[Result], device: str) -> str:
    lines = [
        f"| kernel | size | v | what it changes | max rel. error | {device} |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        v = r.version
        bits = ""
        if r.same_bits is not None:
            bits = f", same bits as v{v.number - 1}" if r.same_bits else ", BITS DIFFER"
        shipped = " (shipped)" if v.shipped else ""
        time = "-" if r.ms is None else f"{r.ms:.3f}"
        size = "x".join(map(str, r.size))
        lines.append(f"| {v.kernel} | {size} | {v.number}{shipped} | {v.change} | {r.error:.1e}{bits} | {time} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--host", action="store_true", help="check every version on the host harness (no GPU, no times)"
    )
    parser.add_argument(
        "--small", action="store_true", help="on the GPU, the small sizes of --host (a quick check; times mean little)"
    )
    parser.add_argument("--kernel", action="append", choices=list(VERSIONS), help="only this kernel (repeatable)")
    parser.add_argument(
        "--repeats", type=int, default=20, help="timed runs per version on the GPU, their median shown (default 20)"
    )
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats: expected a positive count, got {args.repeats}")
    kernels = args.kernel or list(VERSIONS)
    results: list[Result] = []
    if args.host:
        with tempfile.TemporaryDirectory() as build_dir:
            launch = HostKernels(Path(build_dir))
            for kernel in kernels:
                for size in HOST_SIZES[kernel]:
                    results += check(kernel, np, launch, size)
        device = "time (host harness: not timed)"
    else:
        if not backend.gpu_available():
            why = "CuPy is not installed" if backend.cupy_module() is None else "CuPy finds no GPU"
            parser.error(f"no CUDA device ({why}): run on a CUDA machine with CuPy, or pass --host to check on the CPU")
        cupy = backend.cupy_module()
        launch, timer = GpuKernels(cupy), gpu_timer(cupy, args.repeats)
        for kernel in kernels:
            for size in HOST_SIZES[kernel] if args.small else [GPU_SIZES[kernel]]:
                results += check(kernel, cupy, launch, size, timer)
        name = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.runtime.getDevice())["name"]
        device = f"median ms, {args.repeats} runs ({name.decode() if isinstance(name, bytes) else name})"
    print(_table(results, device))
    failed = [r for r in results if not r.ok]
    for r in failed:
        print(f"FAILED: {r.version.function} at {r.size}: error {r.error:.1e} (tolerance {TOLERANCE:.0e})"
              + (", output bits differ from the version before" if r.same_bits is False else ""))  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
