"""Cache-sized, multi-threaded chunks for NumPy's elementwise work.

At CIFAR sizes PVT v2 is dominated by elementwise passes (GELU, depthwise
conv, LayerNorm), not by GEMMs. Two things make such passes fast in NumPy:

* chunking: a fused kernel of a dozen passes over a chunk that fits in the
  L2 cache runs from cache, where the same passes over a whole 30 MB array
  would each stream through main memory;
* threads: NumPy's ufuncs release the GIL, so worker threads running the
  kernel on disjoint chunks use every core.

Only NumPy arrays large enough to amortise the thread hand-off are split;
small arrays and CuPy arrays (the GPU is parallel already) run in one call.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

CHUNK_ELEMENTS = 131072  # elements per chunk: large enough to amortise Python's per-call cost, small enough for L2
PARALLEL_MIN_ELEMENTS = 1 << 17  # below this, the thread hand-off costs more than it saves

_num_threads = max(1, min(os.cpu_count() or 1, 8))
_pool: ThreadPoolExecutor | None = None
_local = threading.local()


def set_num_threads(n: int) -> None:
    """Threads used for chunked elementwise work (BLAS has its own setting, OMP_NUM_THREADS)."""
    global _num_threads, _pool
    if int(n) < 1:
        raise ValueError(f"set_num_threads: expected a positive thread count, got {n}")
    _num_threads = int(n)
    if _pool is not None:
        _pool.shutdown(wait=True)
        _pool = None


def get_num_threads() -> int:
    return _num_threads


def scratch(name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """A per-thread reusable NumPy buffer (fresh arrays would page-fault on every chunk)."""
    buffers = getattr(_local, "buffers", None)
    if buffers is None:
        buffers = _local.buffers = {}
    size = int(np.prod(shape))
    key = (name, np.dtype(dtype).str)
    buf = buffers.get(key)
    if buf is None or buf.size < size:
        buf = buffers[key] = np.empty(max(size, CHUNK_ELEMENTS), dtype=dtype)
    return buf[:size].reshape(shape)


def chunk_rows(row_elements: int) -> int:
    """Rows per chunk for rows of ``row_elements`` elements (at least one row)."""
    return max(1, CHUNK_ELEMENTS // max(1, row_elements))


def for_each_chunk(num_rows: int, row_elements: int, kernel: Callable[[int, int], None], xp: Any = np) -> None:
    """Call ``kernel(start, stop)`` on consecutive row ranges covering [0, num_rows).

    Each range holds about CHUNK_ELEMENTS elements (:func:`chunk_rows` rows). The
    calling thread and the workers take ranges from a shared counter, so a worker
    that the OS schedules late (a busy machine) simply finds less left to do and the
    caller never waits for a thread that has not started. Kernels must only write
    to their own rows. For CuPy, one call covers all rows.
    """
    if xp is not np:
        kernel(0, num_rows)
        return
    rows_per_chunk = chunk_rows(row_elements)
    starts = range(0, num_rows, rows_per_chunk)
    threads = min(_num_threads, len(starts))
    if threads <= 1 or num_rows * row_elements < PARALLEL_MIN_ELEMENTS:
        for s in starts:
            kernel(s, min(s + rows_per_chunk, num_rows))
        return
    job = _Job(starts, rows_per_chunk, num_rows, kernel)
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=_num_threads, thread_name_prefix="pvt_np")
    for _ in range(threads - 1):
        _pool.submit(job.work)
    job.work()
    job.wait()


class _Job:
    """Chunks handed out one at a time; wait() returns when every handed-out chunk is done."""

    def __init__(self, starts: range, rows_per_chunk: int, num_rows: int, kernel: Callable[[int, int], None]) -> None:
        self.starts, self.rows, self.num_rows, self.kernel = starts, rows_per_chunk, num_rows, kernel
        self.next = 0
        self.running = 0
        self.error: BaseException | None = None
        self.cond = threading.Condition()

    def work(self) -> None:
        while True:
            with self.cond:
                if self.error is not None or self.next >= len(self.starts):
                    return
                start = self.starts[self.next]
                self.next += 1
                self.running += 1
            try:
                self.kernel(start, min(start + self.rows, self.num_rows))
            except BaseException as err:  # re-raised in the calling thread by wait()
                with self.cond:
                    self.error = err
            finally:
                with self.cond:
                    self.running -= 1
                    self.cond.notify_all()

    def wait(self) -> None:
        with self.cond:
            while self.running:
                self.cond.wait()
        if self.error is not None:
            raise self.error
