"""Array backend: one code path for NumPy (CPU) and CuPy (GPU).

Every op asks :func:`get_array_module` for the module that owns its inputs
(the Chainer/CuPy idiom), so nothing in pvt_np names ``numpy`` or ``cupy``
on a hot path. CuPy is optional: importing pvt_np never requires it.
"""

from __future__ import annotations

import hashlib
from types import ModuleType
from typing import Any

import numpy as np

from pvt_np.counter_rng import CounterRng

try:  # CuPy is an optional extra; its absence is normal on CPU machines.
    import cupy as _cupy
except Exception:
    _cupy = None

Array = Any  # numpy.ndarray or cupy.ndarray

DEVICES = ("cpu", "gpu")
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def cupy_module() -> ModuleType | None:
    """Return the cupy module if it imported, else None."""
    return _cupy


def gpu_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    if _cupy is None:
        return False
    try:
        return _cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def get_array_module(*arrays: Any) -> ModuleType:
    """Return ``cupy`` if any argument is a CuPy array, else ``numpy``."""
    if _cupy is not None:
        for a in arrays:
            if isinstance(a, _cupy.ndarray):
                return _cupy
    return np


def device_of(x: Array) -> str:
    """'gpu' for a CuPy array, 'cpu' otherwise."""
    return "gpu" if get_array_module(x) is not np else "cpu"


def check_device(device: str) -> str:
    """Validate a device name and that the device can be used."""
    if device not in DEVICES:
        raise ValueError(f"device: expected one of {DEVICES}, got {device!r}")
    if device == "gpu" and not gpu_available():
        why = "CuPy is not installed" if _cupy is None else "CuPy finds no CUDA device"
        raise RuntimeError(
            f"device='gpu' requested but {why}; install the 'gpu' extra "
            "(pip install 'pvt_np[gpu]') on a machine with an NVIDIA GPU, or use device='cpu'"
        )
    return device


def to_device(x: Array, device: str) -> Array:
    """Move an array to 'cpu' (NumPy) or 'gpu' (CuPy); a no-op when already there."""
    check_device(device)
    if device == "cpu":
        return to_numpy(x)
    return _cupy.asarray(x)


def to_numpy(x: Array) -> np.ndarray:
    """Return a NumPy array (copying from the GPU if needed)."""
    if _cupy is not None and isinstance(x, _cupy.ndarray):
        return _cupy.asnumpy(x)
    return np.asarray(x)


def check_float_dtype(dtype: Any, name: str = "dtype") -> np.dtype:
    """Normalise a dtype and require float32 or float64."""
    try:
        dt = np.dtype(dtype)
    except TypeError as err:
        raise TypeError(f"{name}: expected float32 or float64, got {dtype!r}") from err
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected float32 or float64, got {dt}")
    return dt


# Random numbers ------------------------------------------------------------
# Dropout and drop-path draw from one generator per backend. Seeding it with
# manual_seed makes every mask reproducible; the trainer reseeds it from
# (seed, step) each step, so an interrupted run resumes with the same masks
# without saving generator state. NumPy's generator is rebuilt lazily after each
# manual_seed (a few microseconds on the host, and the stream resume tests pin).
# On a GPU a fresh CuPy generator would allocate and initialise a cuRAND state per
# device thread every step, so the device generator (pvt_np.counter_rng) is
# created once and manual_seed only re-keys it.
_RNGS: dict[str, Any] = {}
_SEED = 0
_BATCH_SHARD = (0, 1)  # (index, count): this process computes that slice of every batch


def derive_seed(*keys: int) -> int:
    """Mix integers into one 63-bit seed (stable across runs and machines)."""
    h = hashlib.blake2b(repr(tuple(int(k) for k in keys)).encode(), digest_size=8)
    return int.from_bytes(h.digest(), "little") >> 1


def manual_seed(seed: int) -> None:
    """Reset the dropout/drop-path generators of both backends to ``seed``."""
    global _SEED
    _SEED = int(seed)
    _RNGS.pop(np.__name__, None)
    for device_rng in _RNGS.values():  # the CounterRngs left: re-keyed, not rebuilt
        device_rng.seed(_SEED)


def use_device_key(xp: ModuleType, key: Array) -> None:
    """Draw ``xp``'s dropout/drop-path masks from the counter-based generator keyed by the device array ``key``.

    ``key``: 0-d uint64 on ``xp``'s device, the SplitMix64 key (``mix64(seed)``) of the stream, which
    each draw reads when it runs: the mask key of a step that makes no host transfer (see
    :mod:`pvt_np.training.capturable`). The stream restarts at each call; the next
    :func:`manual_seed` returns NumPy to its own generator and re-keys CuPy's from the host.
    """
    # `counter`, not `rng`: it is always pvt_np's CounterRng here (rekey is its own method, not a Generator's)
    counter = _RNGS.get(xp.__name__)
    if isinstance(counter, _BatchShardedGenerator):
        counter = counter.rng
    if not isinstance(counter, CounterRng):
        counter = CounterRng(xp, 0)
        _RNGS[xp.__name__] = counter if _BATCH_SHARD[1] == 1 else _BatchShardedGenerator(counter, *_BATCH_SHARD)
    counter.rekey(key)


def set_batch_shard(index: int, count: int) -> None:
    """Declare that this process computes slice ``index`` of ``count`` equal slices of every batch.

    Dropout and drop-path masks are then drawn for the whole batch (``count`` times the
    local batch, from the same generator) and this slice's rows kept, so the masks a
    data-parallel rank applies are the rows of the masks of the 1-process run.
    """
    global _BATCH_SHARD
    if not 0 <= int(index) < int(count):
        raise ValueError(f"set_batch_shard: expected 0 <= index < count, got index {index}, count {count}")
    _BATCH_SHARD = (int(index), int(count))
    _RNGS.clear()


class _BatchShardedGenerator:
    """A generator whose ``random(shape)`` draws for the whole batch and returns this slice's rows.

    Every mask in pvt_np has the batch as its leading (batch-major) dimension, so drawing
    ``(count * B, ...)`` and keeping rows [index * B, (index + 1) * B) is the 1-process draw's slice.
    """

    def __init__(self, rng: Any, index: int, count: int) -> None:
        self.rng, self.index, self.count = rng, index, count

    def random(self, size: tuple[int, ...], dtype: Any = np.float64) -> Array:
        size = tuple(int(s) for s in size)
        rows = size[0]
        whole = self.rng.random((rows * self.count, *size[1:]), dtype=dtype)
        return whole[self.index * rows : (self.index + 1) * rows]

    def __getattr__(self, name: str) -> Any:  # other draws (initialisation) are not per-batch
        return getattr(self.rng, name)


def get_rng(xp: ModuleType = np) -> Any:
    """The shared generator for array module ``xp``, drawing the stream of the last manual_seed.

    NumPy: ``numpy.random.default_rng(seed)``, a new object after each manual_seed.
    Other modules (CuPy): one :class:`pvt_np.counter_rng.CounterRng` per process,
    re-keyed in place by manual_seed.
    """
    key = xp.__name__
    if key not in _RNGS:
        if xp is np:
            rng = np.random.default_rng(_SEED)
        else:
            rng = CounterRng(xp, _SEED)
        _RNGS[key] = rng if _BATCH_SHARD[1] == 1 else _BatchShardedGenerator(rng, *_BATCH_SHARD)
    return _RNGS[key]
