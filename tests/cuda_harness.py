"""pvt_np's CUDA kernels (pvt_np.ops.cuda.SOURCE) compiled for the CPU and run on NumPy arrays.

A shim defines CUDA's ``__global__`` and the thread coordinates; each kernel gets an
``extern "C"`` wrapper that runs its launch, block by block and thread by thread, as
``RawModule.get_function(name)((blocks,), (threads,), args)`` would on a GPU (the same
grid, the surplus threads of the last block included). Installed as
``pvt_np.ops.cuda.HOST_STAND_IN``, it makes the ops take the kernels on NumPy arrays.
The host compiler rounds as CUDA does with --fmad=false (no contraction, IEEE float and
double); ``sqrt``, ``exp`` and ``erf`` come from the C++ library instead of CUDA's.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pvt_np.ops import cuda

SHIM = r"""
#include <cmath>
struct pvt_dim3 { unsigned int x, y, z; };
static pvt_dim3 blockIdx = {0, 0, 0}, threadIdx = {0, 0, 0}, blockDim = {1, 1, 1};
#define __global__
using std::sqrt;
using std::exp;
using std::erf;
"""
_C_ARG = {"ptr": "void*", "i64": "long long"}
_CTYPES_ARG = {"ptr": ctypes.c_void_p, "i64": ctypes.c_longlong}


def compiler() -> str | None:
    """The host C++ compiler, if there is one."""
    return shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")


def _wrapper(name: str, ctype: str, kinds: list[str]) -> str:
    params = ", ".join(f"{ctype if k == 'T' else _C_ARG[k]} a{i}" for i, k in enumerate(kinds))
    args = ", ".join(f"({ctype}*)a{i}" if k == "ptr" else f"a{i}" for i, k in enumerate(kinds))
    return (
        f'extern "C" void {name}_{ctype}(unsigned int blocks, unsigned int threads, {params}) {{\n'
        "    blockDim.x = threads;\n"
        "    for (unsigned int b = 0; b < blocks; ++b)\n"
        "        for (unsigned int t = 0; t < threads; ++t) {\n"
        f"            blockIdx.x = b; threadIdx.x = t; {name}<{ctype}>({args});\n"
        "        }\n}\n"
    )


class HostModule:
    """RawModule's get_function over the host build of SOURCE."""

    def __init__(self, build_dir: Path) -> None:
        cxx = compiler()
        if cxx is None:
            raise RuntimeError("no C++ compiler (g++, c++ or clang++) on PATH")
        wrappers = [_wrapper(n, t, kinds) for n, kinds in cuda.KERNELS.items() for t in cuda.C_TYPES.values()]
        src = build_dir / "pvt_np_kernels.cpp"
        src.write_text(SHIM + cuda.SOURCE + "\n".join(wrappers))
        lib = build_dir / "pvt_np_kernels.so"
        cmd = [cxx, "-std=c++14", "-O2", "-ffp-contract=off", "-fPIC", "-shared", str(src), "-o", str(lib)]
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        self.lib = ctypes.CDLL(str(lib))
        self.calls: dict[str, int] = {}

    def get_function(self, name_expression: str) -> Callable[..., None]:
        name, ctype = name_expression.rstrip(">").split("<")
        kinds = cuda.KERNELS[name]
        fn = getattr(self.lib, f"{name}_{ctype}")
        float_type = ctypes.c_float if ctype == "float" else ctypes.c_double
        fn.argtypes = [ctypes.c_uint, ctypes.c_uint] + [float_type if k == "T" else _CTYPES_ARG[k] for k in kinds]
        fn.restype = None

        def launch(grid: tuple[int], block: tuple[int], args: tuple[Any, ...]) -> None:
            self.calls[name] = self.calls.get(name, 0) + 1
            values = [a.ctypes.data if isinstance(a, np.ndarray) else a.item() for a in args]
            fn(grid[0], block[0], *values)

        return launch
