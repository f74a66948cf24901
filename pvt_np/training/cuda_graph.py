"""The training step as a CUDA graph: recorded once per batch shape, replayed every step (``--no-cuda-graph``: off).

On a GPU a step of pvt_np issues some 2,000 kernels from Python, and at CIFAR sizes the host's time to
issue them, not the GPU's to run them, sets the pace. :class:`StaticStep` runs the
:class:`~pvt_np.training.capturable.CapturableStep` (no host transfer, every per-step value on the device)
on static input buffers, one pair per batch shape:

1. the first batch of a shape is copied into new buffers and stepped eagerly (the warm-up: CuPy compiles
   and loads its kernels, AdamW makes its state, the gradients get their arrays);
2. the second is copied in and the step, which takes no arguments, is recorded with CuPy's stream
   capture into a ``cupy.cuda.Graph`` (nothing runs while it is recorded), then the graph is launched;
3. every later batch of that shape is copied into the buffers and the graph launched: one call.

A new shape gets its own buffers and graph the same way: the low-resolution epochs' batches, and the
last partial batch of an epoch, which is neither dropped nor padded (either would change the run): it
runs eagerly in the first epoch and as its own graph from the second on, so every step computes what
the eager step computes. Each graph allocates its temporaries from a memory pool of its own, kept for
the graph's life, so nothing outside it can take memory that its replays write.

Before any of that, :func:`capture_refusal` records one GEMM on a side stream: where CuPy refuses it (CuPy 14
refuses every cuBLAS call on a recording stream), the step runs eagerly from the start, with one warning.

On NumPy there is nothing to record: the no-argument step is called as it is, which is what the CPU tests
compare with the eager step.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from pvt_np import backend
from pvt_np.backend import Array
from pvt_np.ops import blas
from pvt_np.training.capturable import CapturableStep


class _Graph:
    """A recorded step and what it needs alive: the graph, the stream it was captured on, its memory pool."""

    def __init__(self, xp: Any, run: Callable[[], None]) -> None:
        self.pool = xp.cuda.MemoryPool()
        self.stream = xp.cuda.Stream(non_blocking=True)
        with xp.cuda.using_allocator(self.pool.malloc), self.stream:
            # thread-local: other threads (the loader's) may use CUDA while this thread records
            self.stream.begin_capture(mode=xp.cuda.runtime.streamCaptureModeThreadLocal)
            try:
                run()
            finally:
                self.graph = self.stream.end_capture()
        self.xp = xp

    def __call__(self) -> None:
        self.graph.launch(stream=self.xp.cuda.get_current_stream())


def capture_refusal(xp: Any) -> str | None:
    """Why ``xp`` (CuPy) cannot record the step's GEMMs in a CUDA graph, or None where it can: one small
    ``blas.matmul`` (what every matmul of the step calls) recorded on a side stream and thrown away.

    CuPy 14 refuses any cuBLAS call on a stream that is recording (its cuBLAS bindings raise
    NotImplementedError), so there the step runs eagerly until pvt_np's GEMMs reach cuBLAS another way."""
    a = xp.ones((4, 4), dtype=xp.float32)
    stream = xp.cuda.Stream(non_blocking=True)
    reason = None
    with stream:
        stream.begin_capture()
        try:
            blas.matmul(a, a)
        except Exception as err:  # what a library refuses while a stream records
            reason = f"{type(err).__name__}: {err}"
        try:
            stream.end_capture()
        except Exception as err:  # a capture the refusal invalidated
            reason = reason or f"{type(err).__name__}: {err}"
    return reason


class StaticStep:
    """``step(x, y)``: copy the batch into its shape's static buffers, then run the recorded step (module
    docstring). ``capture=False`` (or NumPy) calls the no-argument step instead of recording it."""

    def __init__(self, step: CapturableStep, capture: bool = True) -> None:
        self.step = step
        self.capture = bool(capture) and step.xp is not np
        if self.capture:  # probed first: a step refused halfway would leave its Python side half-run
            refusal = capture_refusal(step.xp)
            if refusal is not None:
                self.capture = False
                warnings.warn(
                    f"the training step cannot be recorded as a CUDA graph here: recording a GEMM fails ({refusal});"
                    " training without (as with --no-cuda-graph)",
                    RuntimeWarning,
                    stacklevel=2,
                )
        # (x's shape and dtype, y's) -> [x buffer, y buffer, the no-argument step once recorded, else None]
        self.entries: dict[tuple[Any, ...], list[Any]] = {}

    def __call__(self, x: Array, y: Array) -> None:
        key = (x.shape, x.dtype.str, y.shape, y.dtype.str)
        entry = self.entries.get(key)
        if entry is None:
            entry = self.entries[key] = [x.copy(), y.copy(), None]
            self.step(entry[0], entry[1])
            return
        entry[0][...] = x
        entry[1][...] = y
        if entry[2] is None:
            run = functools.partial(self.step, entry[0], entry[1])
            entry[2] = self._record(run) if self.capture else run
        entry[2]()

    def _record(self, run: Callable[[], None]) -> Callable[[], None]:
        """The recorded step, or, if recording fails, the eager one from now on, with a warning: nothing runs on
        the device while a step is recorded, so the step then run eagerly is the step that was due."""
        try:
            return _Graph(self.step.xp, run)
        except Exception as err:  # CuPy/CUDA versions differ in what a capture accepts; the run must go on
            self.capture = False
            warnings.warn(
                f"the training step could not be recorded as a CUDA graph ({type(err).__name__}: {err}); "
                "going on without (as with --no-cuda-graph)",
                RuntimeWarning,
                stacklevel=2,
            )
            return run

    def graphs(self) -> list[_Graph]:
        """The recorded steps so far: one per batch shape from its second batch on (none on NumPy, with
        ``capture=False`` or after a recording failed)."""
        return [entry[2] for entry in self.entries.values() if isinstance(entry[2], _Graph)]

    def shapes(self) -> list[tuple[Any, ...]]:
        """The batch shapes seen so far (each with its buffers and, from its second batch, its step)."""
        return list(self.entries)


def graph_mode(device: str, cuda_graph: bool, world_size: int) -> bool:
    """Whether the trainer records its step as a CUDA graph: on by default on the GPU, off with
    ``--no-cuda-graph``, on the CPU, and with several processes (their gradient all-reduce goes through the
    host)."""
    return cuda_graph and device == "gpu" and world_size == 1 and backend.cupy_module() is not None
