"""The gradient all-reduce of data-parallel training: every gradient in one flat buffer, summed over the ranks.

One buffer per step, summed in buckets of ``bucket_bytes`` (MPI on the host, NCCL between GPUs) and divided by
the world size: the average of the ranks' slice gradients is the gradient of the global batch's mean loss (see
:mod:`pvt_np.distributed`, which holds the world, re-exports :class:`GradientAllReduce` and launches the ranks).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from pvt_np import backend
from pvt_np.backend import Array

if TYPE_CHECKING:
    from pvt_np.distributed import World

__all__ = ["DEFAULT_BUCKET_BYTES", "GradientAllReduce"]

# Horovod's default fusion threshold: one message per 64 MiB keeps MPI's int counts far from
# overflow and the temporary buffers of large reductions bounded; b0's 3.0 M float32 is one bucket.
DEFAULT_BUCKET_BYTES = 64 << 20


class _MpiSum:
    """In-place sum over ranks of a host buffer, through MPI."""

    def __init__(self, world: World) -> None:
        from mpi4py import MPI

        self.comm, self.in_place, self.op = world.comm, MPI.IN_PLACE, MPI.SUM

    def __call__(self, chunk: Array) -> None:
        self.comm.Allreduce(self.in_place, chunk, op=self.op)


class _NcclSum:
    """In-place sum over ranks of a device buffer, through NCCL: no copy to the host.

    The NCCL unique id is made on rank 0 and broadcast over MPI, the usual bootstrap.
    """

    def __init__(self, world: World) -> None:
        from cupy.cuda import nccl

        unique_id = world.comm.bcast(nccl.get_unique_id() if world.is_root else None, root=0)
        self.comm = nccl.NcclCommunicator(world.size, unique_id, world.rank)
        self.types = {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64}
        self.op = nccl.NCCL_SUM

    def __call__(self, chunk: Array) -> None:
        xp = backend.get_array_module(chunk)
        stream = xp.cuda.get_current_stream().ptr
        ptr = chunk.data.ptr
        self.comm.allReduce(ptr, ptr, chunk.size, self.types[np.dtype(chunk.dtype)], self.op, stream)


class GradientAllReduce:
    """Averages the gradients of all ranks with one all-reduce of one flat buffer per step.

    ``reduce(parameters, *scalars)`` packs every ``.grad`` and the scalars (the step's loss)
    into a flat buffer, sums it over the ranks in buckets of ``bucket_bytes`` (MPI on the
    host; NCCL on the GPU), divides by the world size and points each ``.grad`` at its slice
    of the result. It returns the averaged scalars as copies (NumPy scalars on the CPU, 0-d
    arrays on the GPU). The buffer is reused from step to step; a step's gradients are valid
    until the next call.
    """

    def __init__(self, world: World, device: str = "cpu", bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> None:
        if world.size < 2:
            raise ValueError(f"GradientAllReduce: world: expected 2 or more ranks, got {world.size}")
        if int(bucket_bytes) < 8:
            raise ValueError(f"GradientAllReduce: bucket_bytes: expected at least 8, got {bucket_bytes!r}")
        backend.check_device(device)
        self.world = world
        self.bucket_bytes = int(bucket_bytes)
        self.sum = _NcclSum(world) if device == "gpu" else _MpiSum(world)
        self._buffer: Array | None = None

    def __call__(self, parameters: Iterable[Any], *scalars: Array) -> tuple[Array, ...]:
        params = [p for p in parameters if p.grad is not None]
        if not params:
            raise ValueError("GradientAllReduce: no parameter has a gradient (call backward first)")
        dtype = np.dtype(params[0].grad.dtype)
        if any(np.dtype(p.grad.dtype) != dtype for p in params):
            kinds = sorted({str(p.grad.dtype) for p in params})
            raise TypeError(f"GradientAllReduce: gradients of mixed dtypes {kinds}; one flat buffer needs one dtype")
        xp = backend.get_array_module(params[0].grad)
        total = sum(int(p.grad.size) for p in params) + len(scalars)
        buf = self._buffer
        if buf is None or buf.size != total or buf.dtype != dtype or backend.get_array_module(buf) is not xp:
            buf = self._buffer = xp.empty(total, dtype=dtype)
        offset = 0
        for p in params:
            n = int(p.grad.size)
            buf[offset : offset + n] = p.grad.reshape(-1)
            offset += n
        for i, s in enumerate(scalars):
            buf[offset + i] = s
        step = max(1, self.bucket_bytes // dtype.itemsize)
        for start in range(0, total, step):
            self.sum(buf[start : start + step])
        buf *= 1.0 / self.world.size
        offset = 0
        for p in params:
            n = int(p.grad.size)
            p.grad = buf[offset : offset + n].reshape(p.grad.shape)
            offset += n
        return tuple(buf[offset + i].copy() for i in range(len(scalars)))
