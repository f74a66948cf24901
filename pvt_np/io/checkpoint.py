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
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from pvt_np import backend
from pvt_np.io.atomic import atomic_write
from pvt_np.io.filekind import file_kind, not_a_checkpoint

FORMAT = "pvt_np-checkpoint"
VERSION = 1
META_KEY = "__meta__"


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
        np.savez(f, **{META_KEY: np.array(json.dumps(meta))}, **arrays)


def load_checkpoint(path: str | os.PathLike[str], keys: Sequence[str] | None = None) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; a clear CheckpointError otherwise.

    ``keys``: read only these top-level entries (their arrays only: loading a model
    skips the optimizer's moments); None reads everything.
    """
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {os.fspath(path)!r} does not exist")
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint {os.fspath(path)!r} is a directory, not a file")
    kind = file_kind(path)
    if kind != "npz":
        raise CheckpointError(
            not_a_checkpoint(path, kind)
            if kind in ("empty", "text", "binary", "zip", "npy")
            else f"{os.fspath(path)!r} is not a pvt_np training checkpoint: it is a {kind} file"
        )
    try:
        with np.load(path, allow_pickle=False) as archive:
            if META_KEY not in archive.files:
                raise CheckpointError(f"{os.fspath(path)!r} is not a pvt_np training checkpoint (no metadata)")
            meta = json.loads(str(archive[META_KEY]))
            if meta.get("format") != FORMAT:
                raise CheckpointError(f"{os.fspath(path)!r} is not a pvt_np training checkpoint")
            if meta.get("version") != VERSION:
                raise CheckpointError(
                    f"{os.fspath(path)!r}: checkpoint version {meta.get('version')}, expected {VERSION}"
                )
            payload = meta["payload"]
            if keys is not None:
                wanted = set(keys)
                payload = {"__dict__": [kv for kv in payload["__dict__"] if kv[0] in wanted]}
            return _decode(payload, archive)
    except CheckpointError:
        raise
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError, zlib.error) as err:
        raise CheckpointError(f"checkpoint {os.fspath(path)!r} is corrupt or truncated: {err}") from err
