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
from pvt_np.io_utils import atomic_write

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


def file_kind(path: str | os.PathLike[str]) -> str:
    """What a file holds, from its first bytes (never its name), so a wrong file gets the right message.

    'npz' (a zip of .npy arrays), 'torch-zip' (torch.save's zip), 'zip' (another zip archive),
    'torch-pickle' (torch.save's legacy pickle), 'npy', 'safetensors', 'empty', 'text' or 'binary'.
    A zip archive whose directory cannot be read (a truncated .npz) counts as 'npz'.
    """
    with open(path, "rb") as f:
        head = f.read(4096)
    if not head:
        return "empty"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError, EOFError, ValueError):
            return "npz"
        if any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
            return "torch-zip"
        return "npz" if all(n.endswith(".npy") for n in names) else "zip"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "torch-pickle"
    header_size = int.from_bytes(head[:8], "little")
    if len(head) > 8 and head[8:9] == b"{" and 1 < header_size <= os.path.getsize(path) - 8:
        return "safetensors"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as err:
        text = head[: err.start].decode("utf-8") if len(head) - err.start < 4 else None
    if text is not None and all(c.isprintable() or c in "\t\r\n" for c in text):
        return "text"
    return "binary"


def not_a_checkpoint(path: str | os.PathLike[str], kind: str) -> str:
    """A one-line 'PATH is not a checkpoint' naming what the file is instead."""
    what = {
        "empty": "it is empty",
        "text": "it is a text file",
        "zip": "it is a zip archive of something else",
        "npy": "it holds a single .npy array, not an .npz archive",
        "binary": "its content is none of the checkpoint formats",
    }.get(kind, f"it is a {kind} file")
    if kind == "text":
        with open(path, "rb") as f:
            first = f.read(200).decode("utf-8", "replace").strip().splitlines()
        if first:
            what += f" starting {first[0][:60]!r}"
    return (
        f"{os.fspath(path)!r} is not a checkpoint: {what}. pvt_np reads training checkpoints "
        "(last.npz / best.npz of a run), weights files (.npz, .safetensors) and PyTorch .pth files"
    )


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
