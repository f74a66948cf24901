"""One asynchronous host-to-device copy for a group of small host integer arrays.

It sits below both of its users: the data loader (each batch needs a few small host
arrays on the device: the sample indices, crop offsets and flip bits) and the fused
AdamW of :mod:`pvt_np.optim` (its table of parameter addresses).
``cupy.asarray(host_array)`` copies from pageable memory, which CUDA performs
synchronously: the host waits until every kernel queued before it has finished, so
the loader would stall the training loop once per array. The stager
packs the arrays into one int64 buffer in page-locked (pinned) host memory and
issues one ``cudaMemcpyAsync`` on the current stream, which returns at once and is
ordered before the kernels that use the data.

Buffers rotate through ``SLOTS`` slots; before a slot is refilled, the copy that
last read it is waited for (an event recorded after that copy), so the host never
overwrites data still in flight. On NumPy the same packing runs with ordinary
memory and a plain copy (``FORCE_STAGING`` makes the loader use it, for tests); by
default the NumPy loader skips staging and uses its host arrays directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType
from typing import Any

import numpy as np

from pvt_np.backend import Array

SLOTS = 2
FORCE_STAGING = False  # tests set it to run the GPU's packing path on NumPy


def use_staging(xp: ModuleType) -> bool:
    """Whether the loader stages its per-batch host arrays (always on CuPy; on NumPy only when forced)."""
    return xp is not np or FORCE_STAGING


class HostStager:
    """Copies groups of small host integer arrays to ``xp``'s device, one transfer per group."""

    def __init__(self, xp: ModuleType) -> None:
        self.xp = xp
        self._buffers: list[np.ndarray | None] = [None] * SLOTS
        self._copied: list[Any] = [None] * SLOTS  # the event after each slot's last copy (CuPy)
        self._next = 0

    def upload(self, arrays: Sequence[np.ndarray]) -> list[Array]:
        """Device arrays with the values, shapes and dtypes of ``arrays`` (integers or booleans)."""
        sizes = [int(a.size) for a in arrays]
        total = sum(sizes)
        slot = self._next
        self._next = (slot + 1) % SLOTS
        if self._copied[slot] is not None:
            self._copied[slot].synchronize()
        buffer = self._buffers[slot]
        if buffer is None or buffer.size < total:
            buffer = self._buffers[slot] = self._host_buffer(max(total, 2 * (0 if buffer is None else buffer.size)))
        host = buffer[:total]
        offset = 0
        for a, n in zip(arrays, sizes, strict=True):
            host[offset : offset + n] = a.reshape(-1)
            offset += n
        xp = self.xp
        device = xp.empty(total, dtype=np.int64)
        if xp is np:
            device[...] = host
        else:
            stream = xp.cuda.get_current_stream()
            device.set(host, stream=stream)  # asynchronous: the source is pinned
            self._copied[slot] = stream.record()
        views = []
        offset = 0
        for a, n in zip(arrays, sizes, strict=True):
            views.append(device[offset : offset + n].reshape(a.shape).astype(a.dtype, copy=False))
            offset += n
        return views

    def _host_buffer(self, size: int) -> np.ndarray:
        """An int64 host buffer of ``size`` entries: page-locked for CuPy, ordinary for NumPy."""
        xp = self.xp
        if xp is np:
            return np.empty(size, dtype=np.int64)
        memory = xp.cuda.alloc_pinned_memory(size * 8)
        return np.ndarray((size,), dtype=np.int64, buffer=memory)  # as cupyx.empty_pinned builds it
