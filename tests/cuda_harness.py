"""pvt_np's CUDA kernels (pvt_np.ops.cuda.SOURCE) compiled for the CPU and run on NumPy arrays.

A shim defines CUDA's ``__global__``, ``__device__``, the thread coordinates and
``__shfl_xor_sync``; each kernel instantiation gets an ``extern "C"`` wrapper that runs
its launch, block by block and thread by thread, as
``RawModule.get_function(name)((blocks,), (threads,), args)`` would on a GPU (the same
grid, the surplus threads of the last block included). The kernels of
``cuda.WARP_KERNELS``, whose lanes exchange values, run one warp at a time with its 32
lanes as coroutines (``ucontext``) that take turns: every lane runs to its next shuffle
and leaves its value, then every lane reads its partner's, as the hardware's lock-step
gives. A warp whose lanes do not all make the same shuffles (a kernel bug: on a GPU the
result is undefined) is reported by :meth:`HostModule.get_function`'s launcher as an error.
Installed as ``pvt_np.ops.cuda.HOST_KERNELS``, the module makes the ops take the kernels
on NumPy arrays, and its ``blas`` (:class:`HostBlas`) stands in for the cuBLAS calls. The
host compiler rounds as CUDA does with --fmad=false (no contraction, IEEE float and double);
``sqrt``, ``exp`` and ``erf`` come from the C++ library instead of CUDA's.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pvt_np.ops import cuda

SHIM = r"""
#include <cmath>
#include <ucontext.h>
struct pvt_dim3 { unsigned int x, y, z; };
static pvt_dim3 blockIdx = {0, 0, 0}, threadIdx = {0, 0, 0}, blockDim = {1, 1, 1};
#define __global__
#define __device__
using std::sqrt;
using std::exp;
using std::erf;

// One warp's 32 lanes as coroutines: the scheduler resumes each unfinished lane in turn; a lane
// gives the turn back at every half of a shuffle (after leaving its value, after reading its partner's).
namespace pvt_warp {
const int LANES = 32;
static ucontext_t scheduler, lane_context[LANES];
static char stacks[LANES][1 << 16];
static int current, shuffles[LANES], finished[LANES], diverged;
static double slots[LANES];
static void (*body)(void*);
static void* body_args;

static void lane_main() { body(body_args); finished[current] = 1; }  // then uc_link: the scheduler
static void give_turn() { swapcontext(&lane_context[current], &scheduler); }

// Threads first_thread .. first_thread + 31 of the current block, running body(args).
static void run(unsigned int first_thread, void (*fn)(void*), void* args) {
    body = fn;
    body_args = args;
    for (int i = 0; i < LANES; ++i) {
        getcontext(&lane_context[i]);
        lane_context[i].uc_stack.ss_sp = stacks[i];
        lane_context[i].uc_stack.ss_size = sizeof stacks[i];
        lane_context[i].uc_link = &scheduler;
        makecontext(&lane_context[i], lane_main, 0);
        shuffles[i] = finished[i] = 0;
    }
    for (;;) {
        int ran = 0;
        for (int i = 0; i < LANES; ++i) {
            if (finished[i]) continue;
            current = i;
            threadIdx.x = first_thread + i;
            swapcontext(&scheduler, &lane_context[i]);
            ++ran;
        }
        if (ran == 0) break;
        int done = 0;  // after a turn every lane has finished, or none has and all made as many shuffles
        for (int i = 0; i < LANES; ++i) done += finished[i];
        for (int i = 1; i < LANES; ++i)
            if (shuffles[i] != shuffles[0]) diverged = 1;
        if (done != 0 && done != LANES) diverged = 1;
        if (diverged) {  // no lane can be trusted to finish: leave the warp (its output is not used)
            for (int i = 0; i < LANES; ++i) finished[i] = 1;
            break;
        }
    }
}
}  // namespace pvt_warp

template <typename T>
T __shfl_xor_sync(unsigned int, T value, int lane_mask) {
    int me = pvt_warp::current;
    pvt_warp::slots[me] = (double)value;  // exact for float and double
    ++pvt_warp::shuffles[me];
    pvt_warp::give_turn();  // every lane leaves its value ...
    T partner = (T)pvt_warp::slots[me ^ lane_mask];
    pvt_warp::give_turn();  // ... and reads its partner's before any lane leaves the next one
    return partner;
}

extern "C" int pvt_warp_diverged() { int d = pvt_warp::diverged; pvt_warp::diverged = 0; return d; }
"""
_C_ARG = {"ptr": "void*", "iptr": "void*", "i64": "long long"}
_CTYPES_ARG = {"ptr": ctypes.c_void_p, "iptr": ctypes.c_void_p, "i64": ctypes.c_longlong}
_CAST = {"ptr": "({ctype}*)", "iptr": "(const long long*)", "i64": "", "T": ""}


def compiler() -> str | None:
    """The host C++ compiler, if there is one."""
    return shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")


def _symbol(expression: str) -> str:
    """The wrapper's C name of a kernel instantiation: ``name<float, int>`` -> ``name__float__int``."""
    name, targs = expression.rstrip(">").split("<")
    return "__".join([name, *(t.strip().replace(" ", "_") for t in targs.split(","))])


def _wrapper(name: str, expression: str, kinds: list[str]) -> str:
    ctype = expression.split("<")[1].split(",")[0].rstrip(">").strip()
    symbol = _symbol(expression)
    params = ", ".join(f"{ctype if k == 'T' else _C_ARG[k]} a{i}" for i, k in enumerate(kinds))
    args = ", ".join(f"{_CAST[k].format(ctype=ctype)}a{i}" for i, k in enumerate(kinds))
    if name not in cuda.WARP_KERNELS:
        return (
            f'extern "C" void {symbol}(unsigned int blocks, unsigned int threads, {params}) {{\n'
            "    blockDim.x = threads;\n"
            "    for (unsigned int b = 0; b < blocks; ++b)\n"
            "        for (unsigned int t = 0; t < threads; ++t) {\n"
            f"            blockIdx.x = b; threadIdx.x = t; {expression}({args});\n"
            "        }\n}\n"
        )
    fields = "; ".join(f"{ctype if k == 'T' else _C_ARG[k]} a{i}" for i, k in enumerate(kinds))
    from_struct = ", ".join(f"{_CAST[k].format(ctype=ctype)}s->a{i}" for i, k in enumerate(kinds))
    values = ", ".join(f"a{i}" for i in range(len(kinds)))
    return (
        f"struct args_{symbol} {{ {fields}; }};\n"
        f"static void body_{symbol}(void* p) {{ args_{symbol}* s = (args_{symbol}*)p; {expression}({from_struct}); }}\n"
        f'extern "C" void {symbol}(unsigned int blocks, unsigned int threads, {params}) {{\n'
        f"    args_{symbol} s = {{{values}}};\n"
        "    blockDim.x = threads;\n"
        "    for (unsigned int b = 0; b < blocks; ++b)\n"
        "        for (unsigned int w = 0; w < threads; w += pvt_warp::LANES) {\n"
        f"            blockIdx.x = b; pvt_warp::run(w, body_{symbol}, &s);\n"
        "        }\n}\n"
    )


def _host_matrix(address: int, rows: int, cols: int, ld: int, dtype: Any) -> np.ndarray:
    """The column-major (rows, cols) matrix with leading dimension ``ld`` at host ``address``, as a NumPy view."""
    item = np.dtype(dtype).itemsize
    nbytes = ((cols - 1) * ld + rows) * item
    buffer = (ctypes.c_char * nbytes).from_address(address)
    return np.ndarray((rows, cols), dtype=dtype, buffer=buffer, strides=(item, ld * item))


def _host_scalar(address: int, dtype: Any) -> Any:
    return np.ndarray((), dtype=dtype, buffer=(ctypes.c_char * np.dtype(dtype).itemsize).from_address(address))[()]


class HostBlas:
    """The cuBLAS functions pvt_np.ops.cuda calls, with their C signatures, over host addresses.

    Column-major as cuBLAS: a matrix argument is an address and a leading dimension, so a
    mistake in the row-major to column-major mapping (the operands' order, a transpose flag,
    a leading dimension) gives a wrong product here as on the GPU. alpha and beta are read
    from host memory (cuBLAS's host pointer mode, which the caller must set: ``setPointerMode``
    records it, and a call in another mode is refused).
    """

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.pointer_mode: int | None = None
        self._lock = threading.Lock()  # the ops call it from the worker threads

    def setPointerMode(self, handle: int, mode: int) -> None:
        self.pointer_mode = mode

    def _count(self, name: str) -> None:
        if self.pointer_mode != 0:
            raise RuntimeError(f"{name}: called in pointer mode {self.pointer_mode}, not host (0)")
        with self._lock:
            self.calls[name] = self.calls.get(name, 0) + 1

    def _gemm(self, dtype, name, handle, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
        self._count(name)
        self._product(dtype, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)

    @staticmethod
    def _product(dtype, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
        op_a = _host_matrix(a, *((m, k) if transa == 0 else (k, m)), lda, dtype)
        op_b = _host_matrix(b, *((k, n) if transb == 0 else (n, k)), ldb, dtype)
        out = _host_matrix(c, m, n, ldc, dtype)
        product = _host_scalar(alpha, dtype) * ((op_a if transa == 0 else op_a.T) @ (op_b if transb == 0 else op_b.T))
        b_value = _host_scalar(beta, dtype)
        out[...] = product if b_value == 0 else product + b_value * out  # beta = 0: C is not read (cuBLAS)

    def _gemm_batched(self, dtype, name, handle, transa, transb, m, n, k, alpha, a, lda, stride_a, b, ldb, stride_b,
                      beta, c, ldc, stride_c, batch):  # fmt: skip
        self._count(name)
        item = np.dtype(dtype).itemsize
        for i in range(batch):  # the entries one by one, each at its stride (0: one matrix for all)
            self._product(dtype, transa, transb, m, n, k, alpha, a + i * stride_a * item, lda,
                          b + i * stride_b * item, ldb, beta, c + i * stride_c * item, ldc)  # fmt: skip

    def _gemv(self, dtype, name, handle, trans, m, n, alpha, a, lda, x, incx, beta, y, incy):
        self._count(name)
        matrix = _host_matrix(a, m, n, lda, dtype)
        op = matrix if trans == 0 else matrix.T
        vec_in = _host_matrix(x, 1, op.shape[1], incx, dtype)[0]
        vec_out = _host_matrix(y, 1, op.shape[0], incy, dtype)[0]
        product = _host_scalar(alpha, dtype) * (op @ vec_in)
        b_value = _host_scalar(beta, dtype)
        vec_out[...] = product if b_value == 0 else product + b_value * vec_out

    def sgemm(self, *args: Any) -> None:
        self._gemm(np.float32, "sgemm", *args)

    def dgemm(self, *args: Any) -> None:
        self._gemm(np.float64, "dgemm", *args)

    def sgemmStridedBatched(self, *args: Any) -> None:
        self._gemm_batched(np.float32, "sgemmStridedBatched", *args)

    def dgemmStridedBatched(self, *args: Any) -> None:
        self._gemm_batched(np.float64, "dgemmStridedBatched", *args)

    def sgemv(self, *args: Any) -> None:
        self._gemv(np.float32, "sgemv", *args)

    def dgemv(self, *args: Any) -> None:
        self._gemv(np.float64, "dgemv", *args)


class HostModule:
    """RawModule's get_function over the host build of SOURCE (and ``blas``, the cuBLAS calls, on the host)."""

    def __init__(self, build_dir: Path) -> None:
        cxx = compiler()
        if cxx is None:
            raise RuntimeError("no C++ compiler (g++, c++ or clang++) on PATH")
        wrappers = [_wrapper(n, e, kinds) for n, kinds in cuda.KERNELS.items() for e in cuda.expressions(n)]
        src = build_dir / "pvt_np_kernels.cpp"
        src.write_text(SHIM + cuda.SOURCE + "\n".join(wrappers))
        lib = build_dir / "pvt_np_kernels.so"
        cmd = [cxx, "-std=c++14", "-O2", "-ffp-contract=off", "-fPIC", "-shared", str(src), "-o", str(lib)]
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        self.lib = ctypes.CDLL(str(lib))
        self.lib.pvt_warp_diverged.restype = ctypes.c_int
        self.calls: dict[str, int] = {}
        self._lock = threading.Lock()
        self.blas = HostBlas()
        self.expressions: dict[str, int] = {}  # launches per instantiation (which index type ran)

    def get_function(self, name_expression: str) -> Callable[..., None]:
        name, targs = name_expression.rstrip(">").split("<")
        ctype = targs.split(",")[0].strip()
        kinds = cuda.KERNELS[name]
        fn = getattr(self.lib, _symbol(name_expression))
        float_type = ctypes.c_float if ctype == "float" else ctypes.c_double
        fn.argtypes = [ctypes.c_uint, ctypes.c_uint] + [float_type if k == "T" else _CTYPES_ARG[k] for k in kinds]
        fn.restype = None

        def launch(grid: tuple[int], block: tuple[int], args: tuple[Any, ...]) -> None:
            if name in cuda.WARP_KERNELS and block[0] % cuda.WARP_SIZE:
                raise ValueError(f"{name}: {block[0]} threads a block, not whole warps of {cuda.WARP_SIZE}")
            values = [a.ctypes.data if isinstance(a, np.ndarray) else a.item() for a in args]
            with self._lock:  # the warp scheduler's state is global, and ctypes calls let other threads run
                self.calls[name] = self.calls.get(name, 0) + 1
                self.expressions[name_expression] = self.expressions.get(name_expression, 0) + 1
                fn(grid[0], block[0], *values)
                diverged = self.lib.pvt_warp_diverged()
            if diverged:
                raise RuntimeError(f"{name}: the lanes of a warp did not all make the same shuffles")

        return launch
