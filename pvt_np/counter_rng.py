"""A counter-based uniform generator for the GPU: re-keyed for free, one fused kernel per draw.

The trainer calls :func:`pvt_np.backend.manual_seed` before every step. CuPy's
``default_rng(seed)`` would allocate and initialise a fresh cuRAND state for every
thread of the device each time; this generator is created once per process and a
new seed only changes two Python integers.

The stream is SplitMix64 (Steele, Lea and Flood 2014; Vigna's reference
``splitmix64.c``), whose k-th output from state ``s`` is a function of ``s`` and
``k`` alone, so any slice of the stream is computed in parallel:

    z_k  = key + k * 0x9E3779B97F4A7C15                        (mod 2**64), k = 1, 2, ...
    z    = (z_k ^ (z_k >> 30)) * 0xBF58476D1CE4E5B9
    z    = (z ^ (z >> 27)) * 0x94D049BB133111EB
    u64  = z ^ (z >> 31)

with ``key = mix(seed)`` (the same three steps applied to the seed, so nearby seeds
give unrelated keys). A uniform in [0, 1) keeps the top bits exactly:
``(u64 >> 11) * 2**-53`` in float64 and ``(u64 >> 40) * 2**-24`` in float32. Each
draw of n numbers uses counters offset+1 .. offset+n and advances the offset by n.

:meth:`CounterRng.random` computes this with array operations on any array module
(the reference, run on NumPy by the CPU tests); on CuPy it runs one fused
``ElementwiseKernel`` with the same arithmetic, which the GPU tests check bit for bit
against the reference.
"""

from __future__ import annotations

import functools
from types import ModuleType
from typing import Any

import numpy as np

GOLDEN_GAMMA = 0x9E3779B97F4A7C15
MIX_1 = 0xBF58476D1CE4E5B9
MIX_2 = 0x94D049BB133111EB
MASK_64 = (1 << 64) - 1


def mix64(z: int) -> int:
    """SplitMix64's output function on one Python integer (mod 2**64)."""
    z &= MASK_64
    z = ((z ^ (z >> 30)) * MIX_1) & MASK_64
    z = ((z ^ (z >> 27)) * MIX_2) & MASK_64
    return z ^ (z >> 31)


class CounterRng:
    """Uniform draws ``random(size, dtype)`` on array module ``xp`` (the subset of numpy's Generator dropout uses).

    ``seed(s)`` re-keys in place: the next draw starts the stream of ``s`` from its
    beginning, exactly as a fresh ``CounterRng(xp, s)`` would. The fused kernel runs
    where ``xp`` compiles kernels (CuPy); ``fused=False`` makes CuPy use the
    array-operation reference instead (for tests).
    """

    def __init__(self, xp: ModuleType, seed: int, fused: bool = True) -> None:
        self.xp = xp
        self.fused = bool(fused) and hasattr(xp, "ElementwiseKernel")
        self.key = 0
        self.offset = 0
        self.seed(seed)

    def seed(self, seed: int) -> None:
        """Restart the stream of ``seed`` (any integer; taken mod 2**64)."""
        self.key = mix64(int(seed))
        self.offset = 0

    def rekey(self, key: Any) -> None:
        """Restart the stream of a key held on the device: a 0-d uint64 array, ``mix(seed)`` already applied.

        Every draw then reads the key from that array when it runs, so a step recorded once and
        replayed (a CUDA graph) draws each replay's masks from the key the array holds then.
        """
        self.key = key
        self.offset = 0

    def random(self, size: int | tuple[int, ...] | None = None, dtype: Any = np.float64) -> Any:
        """Uniform floats in [0, 1) of shape ``size``, float32 or float64, on this generator's device."""
        dt = np.dtype(dtype)
        if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise TypeError(f"CounterRng.random: dtype must be float32 or float64, got {dt}")
        shape = () if size is None else ((size,) if isinstance(size, (int, np.integer)) else tuple(size))
        n = int(np.prod(shape, dtype=np.int64))
        first = self.offset + 1
        self.offset += n
        if self.fused:
            xp = self.xp
            out = xp.empty(shape, dtype=dt)
            key = np.uint64(self.key) if isinstance(self.key, int) else self.key
            _fused_kernel(xp, dt.char)(key, np.uint64(first & MASK_64), out)
            return out
        return self._reference(first, n, dt).reshape(shape)

    def _reference(self, first: int, n: int, dtype: np.dtype) -> Any:
        """The stream with array operations (uint64 arithmetic wraps mod 2**64 in NumPy and CuPy alike)."""
        xp = self.xp
        k = xp.arange(n, dtype=xp.uint64) + xp.uint64(first & MASK_64)
        z = k * xp.uint64(GOLDEN_GAMMA) + (xp.uint64(self.key) if isinstance(self.key, int) else self.key)
        z = (z ^ (z >> xp.uint64(30))) * xp.uint64(MIX_1)
        z = (z ^ (z >> xp.uint64(27))) * xp.uint64(MIX_2)
        z = z ^ (z >> xp.uint64(31))
        if dtype == np.float64:
            return (z >> xp.uint64(11)).astype(xp.float64) * (2.0**-53)
        return (z >> xp.uint64(40)).astype(xp.float32) * xp.float32(2.0**-24)


@functools.cache
def _fused_kernel(xp: ModuleType, dtype_char: str) -> Any:
    """The stream as one CuPy kernel per float type; ``i`` is the output's flat index (C order)."""
    if dtype_char == "d":
        to_float = "y = (double)(z >> 11) * (1.0 / 9007199254740992.0);"  # 2**-53
    else:
        to_float = "y = (float)(z >> 40) * (1.0f / 16777216.0f);"  # 2**-24
    body = (
        f"unsigned long long z = key + (first + (unsigned long long)i) * {GOLDEN_GAMMA}ull;"
        f"z = (z ^ (z >> 30)) * {MIX_1}ull;"
        f"z = (z ^ (z >> 27)) * {MIX_2}ull;"
        "z = z ^ (z >> 31);" + to_float
    )
    out_type = "float64" if dtype_char == "d" else "float32"
    return xp.ElementwiseKernel("uint64 key, uint64 first", f"{out_type} y", body, f"pvt_np_splitmix64_{out_type}")
