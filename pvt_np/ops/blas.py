"""Products for the ops: cuBLAS on the GPU, NumPy's matmul (its BLAS) on the CPU.

:func:`matmul` and :func:`column_sums` run on either device and choose it themselves, in one
place each: where the CUDA kernels run (:func:`pvt_np.ops.cuda.active`: CuPy arrays, or NumPy
arrays while the tests' host build of the kernels is installed) they call cuBLAS directly, and
elsewhere ``xp.matmul`` / ``sum``. So an op whose CPU and GPU forms differ only in where the
product runs calls these and needs no device branch of its own.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from pvt_np.backend import Array, get_array_module
from pvt_np.ops import cuda
from pvt_np.ops.cuda import address

# cuBLAS through CuPy's bindings of the C API, without cupy.matmul's Python-level work (broadcasting,
# dtype and layout decisions, the output's allocation through several layers): on an H200 a training
# step of b2_li ran 5,472 kernels and was bound by the host's time to issue them, and a matmul call
# there cost several times what the GEMM's own launch costs.
_OP_N, _OP_T = 0, 1  # cublasOperation_t
_POINTER_MODE_HOST = 0  # alpha and beta are read from host memory when the call is made
_ONE_ZERO = {dtype: np.array([1.0, 0.0], dtype=dtype) for dtype in cuda.C_TYPES}  # alpha = 1, beta = 0


def _blas(xp: Any) -> tuple[Any, int]:
    """(bindings, handle): CuPy's cuBLAS with the current device's handle (on the current stream), or the
    tests' host build (``cuda.HOST_KERNELS.blas``, the same functions over host addresses)."""
    if xp is np:
        blas, handle = cuda.HOST_KERNELS.blas, 0
    else:
        from cupy_backends.cuda.libs import cublas as blas  # imported here: it loads libcublas

        handle = xp.cuda.device.get_cublas_handle()
    blas.setPointerMode(handle, _POINTER_MODE_HOST)
    return blas, handle


def _blas_dtype(*arrays: Array) -> np.dtype | None:
    """The arrays' dtype where cuBLAS's s/d routines take them all (float32 or float64, one dtype), else None."""
    dtype = arrays[0].dtype
    return dtype if dtype in cuda.C_TYPES and all(a.dtype == dtype for a in arrays) else None


def matmul(a: Array, b: Array, *, trans_a: bool = False, trans_b: bool = False, out: Array | None = None) -> Array:
    """op(a) @ op(b) (op: the transpose of the last two dims where asked), one cuBLAS call where the kernels run.

    2-D operands: one GEMM. Stacks (..., r, c) with the same leading dims on both, or a
    stack and one 2-D matrix used for every entry: one strided-batched GEMM (batch stride 0
    for the shared matrix), with no copy of the shared matrix, no pointer table and, given
    ``out`` (C-contiguous, the result's shape and dtype), no copy of the result either
    (cupy.matmul makes each of these). The operands are made C-contiguous if they are not.
    cuBLAS is column-major, where a row-major (r, c) matrix reads as its (c, r) transpose,
    so each row-major C = op(a) op(b) is computed as the column-major C^T = op(b)^T op(a)^T:
    b first, each operand transposed by cuBLAS exactly when it is not by the caller.
    Elsewhere, and for operands cuBLAS's s/d GEMMs do not take (mixed or non-float dtypes):
    ``xp.matmul`` of the transposed views.
    """
    xp = get_array_module(a, b)
    dtype = _blas_dtype(a, b)
    if not cuda.active(xp) or dtype is None:  # (mixed or other dtypes: xp.matmul's promotion, as the CPU path)
        return xp.matmul(a.swapaxes(-1, -2) if trans_a else a, b.swapaxes(-1, -2) if trans_b else b, out=out)
    a, b = xp.ascontiguousarray(a), xp.ascontiguousarray(b)
    m, k = a.shape[-1:-3:-1] if trans_a else a.shape[-2:]
    k_b, n = b.shape[-1:-3:-1] if trans_b else b.shape[-2:]
    if k != k_b:
        raise ValueError(f"matmul: inner sizes differ: op(a) is {m}x{k}, op(b) is {k_b}x{n}")
    if a.ndim > 2 and b.ndim > 2 and a.shape[:-2] != b.shape[:-2]:
        raise ValueError(f"matmul: the stacks differ: {a.shape[:-2]} and {b.shape[:-2]}")
    batch = a.shape[:-2] if a.ndim > 2 else b.shape[:-2]
    shape = (*batch, m, n)
    if out is None:
        out = xp.empty(shape, dtype=dtype)
    elif out.shape != shape or out.dtype != dtype or not out.flags.c_contiguous:
        raise ValueError(
            f"matmul: out: expected a C-contiguous {dtype.name} array of shape {shape}, got {out.dtype} {out.shape}"
        )
    if out.size == 0 or k == 0:
        out.fill(0)
        return out
    blas, handle = _blas(xp)
    alpha = _ONE_ZERO[dtype].ctypes.data
    beta = alpha + dtype.itemsize
    op_a, op_b = (_OP_T if trans_a else _OP_N), (_OP_T if trans_b else _OP_N)
    lda, ldb = a.shape[-1], b.shape[-1]
    if not batch:
        gemm = blas.sgemm if dtype == np.float32 else blas.dgemm
        gemm(handle, op_b, op_a, n, m, k, alpha, address(b), ldb, address(a), lda, beta, address(out), n)
        return out
    gemm = blas.sgemmStridedBatched if dtype == np.float32 else blas.dgemmStridedBatched
    stride_a = m * k if a.ndim > 2 else 0
    stride_b = k * n if b.ndim > 2 else 0
    gemm(
        handle, op_b, op_a, n, m, k, alpha, address(b), ldb, stride_b, address(a), lda, stride_a, beta,
        address(out), n, m * n, out.size // (m * n),
    )  # fmt: skip
    return out


@functools.lru_cache(maxsize=64)
def _ones(xp: Any, n: int, dtype: str, device_id: int) -> Array:
    """A vector of n ones, made once per (length, dtype, device) and only ever read."""
    ones = xp.ones(n, dtype=dtype)
    if xp is np:
        ones.flags.writeable = False
    return ones


def column_sums(m: Array) -> Array:
    """sum over the rows of the 2-D ``m`` (a bias gradient, partial sums), as ``ones @ m`` where the kernels run.

    There it is one cuBLAS matrix-vector product: the row-major (rows, C) array read
    column-major is its (C, rows) transpose, times a cached ones vector. CuPy's
    ``m.sum(axis=0)``, a reduction along the strided axis, took 47% of b0's training
    step at 224x224, batch 32, on an H200 (25.8 of 55.4 ms of kernel time). On NumPy, and
    for dtypes cuBLAS does not take: ``m.sum(axis=0)``.
    """
    xp = get_array_module(m)
    dtype = _blas_dtype(m)
    if not cuda.active(xp) or dtype is None:
        return m.sum(axis=0)
    m = xp.ascontiguousarray(m)
    rows, c = m.shape
    out = xp.empty(c, dtype=dtype)
    if c == 0 or rows == 0:
        out.fill(0)
        return out
    ones = _ones(xp, rows, dtype.str, -1 if xp is np else xp.cuda.runtime.getDevice())
    blas, handle = _blas(xp)
    gemv = blas.sgemv if dtype == np.float32 else blas.dgemv
    alpha = _ONE_ZERO[dtype].ctypes.data
    gemv(handle, _OP_N, c, rows, alpha, address(m), c, address(ones), 1, alpha + dtype.itemsize, address(out), 1)
    return out
