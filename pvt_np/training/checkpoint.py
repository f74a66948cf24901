"""Training checkpoints as one .npz: arrays stored natively, everything else as JSON.

A checkpoint is a nested structure (model arrays, optimizer state with
integer keys, schedule state, progress, history). Arrays go into the archive
under generated keys; the rest is encoded to JSON with explicit markers for
dicts (any key type), tuples and arrays, so it loads back exactly and
without pickle (``np.load(allow_pickle=False)``). Writes are atomic.
"""

from __future__ import annotations

import json
import os
import zipfile
from typing import Any

import numpy as np

from pvt_np import backend
from pvt_np.io_utils import atomic_write

FORMAT = "pvt_np-checkpoint"
VERSION = 1
_META_KEY = "__meta__"


class CheckpointError(ValueError):
    """An unreadable, foreign or mismatched checkpoint."""


def _encode(obj: Any, arrays: dict[str, np.ndarray]) -> Any:
    if hasattr(obj, "shape") and hasattr(obj, "dtype") and not isinstance(obj, np.generic):
        key = f"a{len(arrays)}"
        arrays[key] = backend.to_numpy(obj)
        return {"__ndarray__": key}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {"__dict__": [[_encode(k, arrays), _encode(v, arrays)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, arrays) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, arrays) for v in obj]
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    raise TypeError(f"checkpoint: cannot store a {type(obj).__name__}")


def _decode(obj: Any, arrays: Any) -> Any:
    if isinstance(obj, list):
        return [_decode(v, arrays) for v in obj]
    if isinstance(obj, dict):
        if "__ndarray__" in obj:
            return arrays[obj["__ndarray__"]]
        if "__dict__" in obj:
            return {_decode(k, arrays): _decode(v, arrays) for k, v in obj["__dict__"]}
        if "__tuple__" in obj:
            return tuple(_decode(v, arrays) for v in obj["__tuple__"])
    return obj


def save_checkpoint(path: str | os.PathLike[str], payload: dict[str, Any]) -> None:
    """Write ``payload`` (nested dicts/lists/tuples of arrays and plain values) atomically."""
    arrays: dict[str, np.ndarray] = {}
    meta = {"format": FORMAT, "version": VERSION, "payload": _encode(payload, arrays)}
    with atomic_write(path, "wb") as f:
        np.savez(f, **{_META_KEY: np.array(json.dumps(meta))}, **arrays)


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; a clear CheckpointError otherwise."""
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {os.fspath(path)!r} does not exist")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if _META_KEY not in archive.files:
                raise CheckpointError(f"{os.fspath(path)!r} is not a pvt_np training checkpoint (no metadata)")
            meta = json.loads(str(archive[_META_KEY]))
            arrays = {k: archive[k] for k in archive.files if k != _META_KEY}
    except CheckpointError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, json.JSONDecodeError) as err:
        raise CheckpointError(f"checkpoint {os.fspath(path)!r} is corrupt or truncated: {err}") from err
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{os.fspath(path)!r} is not a pvt_np training checkpoint")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{os.fspath(path)!r}: checkpoint version {meta.get('version')}, expected {VERSION}")
    return _decode(meta["payload"], arrays)
