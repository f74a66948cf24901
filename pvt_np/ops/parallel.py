"""Threads: the one place pvt_np's CPU parallelism is configured, and the chunks its worker threads run.

Every multi-threaded fast op splits its work into chunks (row ranges of a GEMM's M
dimension, images, batch slices, cache-sized elementwise blocks) that pvt_np's worker
threads and the calling thread take from a shared counter. NumPy's ufuncs and BLAS
calls release the GIL, so the chunks run on every core. BLAS itself is limited to one
thread (threadpoolctl, at run time, when threads are first configured): a BLAS library
splits each GEMM statically among its own threads, so one descheduled thread stalls the
whole call, and its idle threads spin between calls, starving the elementwise workers.
Chunks from a shared counter instead let a thread the OS runs late simply do less.

* chunking: a fused kernel of a dozen passes over a chunk that fits in the
  L2 cache runs from cache, where the same passes over a whole 30 MB array
  would each stream through main memory;
* the chunking depends only on the shapes, never on the thread count, so the
  results are the same bits with 1 or 8 threads.

Memory is the other run-time setting made here (:func:`configure_memory`, called by
:func:`configure_threads`): glibc's malloc maps every block above its mmap threshold
(128 KiB, rising as mapped blocks are freed, to at most 32 MiB) afresh from the kernel
and unmaps it at free, so each training step faults in and zeroes its large activations
again. pvt_np raises that threshold and the heap's trim threshold, so freed arrays stay
in the heap for the next step.

:func:`configure_threads` sets the thread count (default: the cores this process may
run on, at most 8); the first chunked op calls it if nobody has. Only NumPy arrays
large enough to amortise the thread hand-off are split; the ops' GPU functions (the GPU is
parallel already) never come here.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

CHUNK_ELEMENTS = 131072  # elements per chunk: large enough to amortise Python's per-call cost, small enough for L2
PARALLEL_MIN_ELEMENTS = 1 << 17  # below this, the thread hand-off costs more than it saves
GEMM_CHUNK_MACS = 1 << 21  # multiply-adds per GEMM chunk: ~0.1 ms on one core, 10x Python's cost per chunk
# Every GEMM call packs the whole weight; a core does ~32 multiply-adds in the time it copies one element, so
# with R rows per call packing costs ~32/R of the arithmetic: R >= 256 keeps it near 10%.
GEMM_MIN_ROWS = 256
MAX_THREADS = 8  # beyond this the per-op hand-off outweighs the gain at PVT v2's sizes

# glibc's malloc serves blocks below this from its heap and keeps up to this much free heap memory for reuse
# (mallopt's int argument caps both at 2 GiB): every activation of PVT v2 at the configs trained here is smaller.
HEAP_KEEP_BYTES = 1 << 30
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers (malloc.h)
# glibc's own defaults, restored by configure_memory(reuse=False); the dynamic adjustment stays off once set
_GLIBC_DEFAULT_BYTES = 128 * 1024

_memory_configured = False  # set by configure_memory (explicitly, or by the first configure_threads)
_num_threads: int | None = None  # None until configure_threads runs (explicitly or on the first chunked op)
_pool: ThreadPoolExecutor | None = None
_local = threading.local()


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity: a container's or taskset's share), else all."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def configure_memory(reuse: bool = True) -> bool:
    """Make glibc's malloc keep freed arrays in its heap for reuse (``reuse=False``: glibc's default sizes).

    By default glibc maps each block above its mmap threshold (128 KiB, raised as mapped
    blocks are freed, to at most 32 MiB) straight from the kernel and unmaps it at free.
    Every large activation of a training step is then page-faulted and zeroed again on
    the next step: measured at the b0 CIFAR config (batch 128, 2 threads), 19,000 minor
    faults and 120 ms of system time per 660 ms step (torch with its defaults: 116,000
    faults and 272 ms). With both thresholds at HEAP_KEEP_BYTES: 170 faults, 37 ms.
    The setting is process-wide, like the BLAS limit. Returns whether it took effect
    (False where the C library is not glibc).
    """
    global _memory_configured
    _memory_configured = True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
    except (OSError, TypeError):  # no C library to load by name (Windows)
        return False
    if not hasattr(libc, "gnu_get_libc_version"):  # musl, macOS: the parameter numbers above are glibc's
        return False
    size = ctypes.c_int(HEAP_KEEP_BYTES if reuse else _GLIBC_DEFAULT_BYTES)
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, size)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, size))


def configure_threads(threads: int | None = None) -> int:
    """Set pvt_np's thread count (default ``min(available_cores(), 8)``), limit BLAS to one thread, and
    make freed memory stay in the heap (:func:`configure_memory`).

    The one place threading is configured: the trainer, ``pvt-np bench``, the CLI and
    the MPI ranks all call it, and the first chunked op calls it with the default.
    BLAS is limited through threadpoolctl for the whole process (NumPy's own ``@``
    outside pvt_np included), because pvt_np runs its GEMMs in chunks on its own
    threads. Returns the thread count.
    """
    global _num_threads, _pool
    if threads is None:
        threads = max(1, min(available_cores(), MAX_THREADS))
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ValueError(f"configure_threads: threads must be a positive integer, got {threads!r}")
    threadpool_limits(limits=1, user_api="blas")
    if not _memory_configured:  # once: a user's configure_memory(False) stays in force
        configure_memory()
    if _pool is not None:
        _pool.shutdown(wait=True)
        _pool = None
    _num_threads = int(threads)
    return _num_threads


def set_threads(threads: int) -> int:
    """Run pvt_np's CPU ops on ``threads`` threads, and hold BLAS at one thread; returns the count
    (``pvt_np.set_threads``, the public call).

    Set at run time (threadpoolctl), so it works whenever it is called: before or after
    NumPy has loaded its BLAS, no environment variable and no kernel restart needed.
    BLAS stays at one thread whatever ``threads`` is, because pvt_np splits its GEMMs into
    chunks on its own threads (:func:`configure_threads`). Without a call, the first op uses
    the cores this process may run on, at most 8.
    """
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ValueError(f"set_threads: threads must be a positive integer, got {threads!r}")
    return configure_threads(int(threads))


def get_num_threads() -> int:
    """pvt_np's thread count (configuring the default first if nothing has yet)."""
    return configure_threads() if _num_threads is None else _num_threads


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


def gemm_rows(row_macs: int) -> int:
    """Rows per chunk of a GEMM whose every row costs ``row_macs`` multiply-adds (a shape's property only)."""
    return max(GEMM_MIN_ROWS, -(-GEMM_CHUNK_MACS // max(1, row_macs)))


def row_tasks(num_rows: int, rows: int, task: Callable[[int, int], None]) -> list[Callable[[], None]]:
    """``task(start, stop)`` on consecutive ranges of ``rows`` rows covering [0, num_rows), as run_tasks closures."""
    return [lambda s=s: task(s, min(s + rows, num_rows)) for s in range(0, num_rows, rows)]


def for_each_chunk(
    num_rows: int,
    row_elements: int,
    kernel: Callable[[int, int], None],
    *,
    rows_per_chunk: int | None = None,
) -> None:
    """Call ``kernel(start, stop)`` on consecutive row ranges covering [0, num_rows).

    Each range holds about CHUNK_ELEMENTS elements (:func:`chunk_rows` rows), or
    ``rows_per_chunk`` rows where given (GEMMs: :func:`gemm_rows`). The calling thread
    and the workers take ranges from a shared counter, so a worker that the OS
    schedules late (a busy machine) simply finds less left to do and the caller never
    waits for a thread that has not started. Kernels must only write to their own
    rows. A kernel that itself calls for_each_chunk runs that call's chunks serially
    (its siblings already keep every thread busy). CPU only: the GPU functions run whole arrays.
    """
    rows = chunk_rows(row_elements) if rows_per_chunk is None else max(1, int(rows_per_chunk))
    starts = range(0, num_rows, rows)
    threads = min(get_num_threads(), len(starts))
    small = rows_per_chunk is None and num_rows * row_elements < PARALLEL_MIN_ELEMENTS
    if threads <= 1 or small or getattr(_local, "inside", False):
        for s in starts:
            kernel(s, min(s + rows, num_rows))
        return
    job = _Job(starts, rows, num_rows, kernel)
    global _pool
    if _pool is None:  # the calling thread works too: threads - 1 workers (each keeps its own scratch buffers)
        _pool = ThreadPoolExecutor(max_workers=max(1, get_num_threads() - 1), thread_name_prefix="pvt_np")
    for _ in range(threads - 1):
        _pool.submit(job.work)
    job.work()
    job.wait()


def run_tasks(tasks: list[Callable[[], None]]) -> None:
    """Run independent tasks (each writing only its own outputs) on the worker threads, in one hand-off."""
    for_each_chunk(len(tasks), 1, lambda start, stop: [tasks[i]() for i in range(start, stop)], rows_per_chunk=1)


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
            outer = getattr(_local, "inside", False)
            _local.inside = True
            try:
                self.kernel(start, min(start + self.rows, self.num_rows))
            except BaseException as err:  # re-raised in the calling thread by wait()
                with self.cond:
                    self.error = err
            finally:
                _local.inside = outer
                with self.cond:
                    self.running -= 1
                    self.cond.notify_all()

    def wait(self) -> None:
        with self.cond:
            while self.running:
                self.cond.wait()
        if self.error is not None:
            raise self.error
