"""``.safetensors`` files, read and written without PyTorch.

Through the ``safetensors`` package when it is installed, else the small reader and
writer of the format here: an 8-byte little-endian header size, a JSON header (each
tensor's dtype, shape and byte range, and a ``__metadata__`` map of strings, which
holds pvt_np's model record), then the raw little-endian buffers.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pvt_np.io.atomic import atomic_write
from pvt_np.io.keys import timm_to_official
from pvt_np.io.record import RECORD_KEY, model_record
from pvt_np.io.state import numpy_state_dict
from pvt_np.models.pvt_v2 import PyramidVisionTransformerV2

SAFETENSORS_SUFFIXES = (".safetensors",)


# safetensors dtype codes <-> little-endian NumPy dtypes (BF16 is read as uint16 then widened).
_ST_DTYPES = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "BF16": "<u2",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U64": "<u8",
    "U32": "<u4",
    "U16": "<u2",
    "U8": "u1",
    "BOOL": "?",
}
_NP_TO_ST = {np.dtype(v).str: k for k, v in _ST_DTYPES.items() if k != "BF16"}


def _read_safetensors_pure(path: Path) -> tuple[OrderedDict[str, np.ndarray], dict[str, str]]:
    """Read a .safetensors file: u64 little-endian header size, JSON header, raw little-endian buffers."""
    data = path.read_bytes()
    where = f"cannot read {path} as .safetensors"
    if len(data) < 8:
        raise ValueError(f"{where}: {len(data)} bytes is too short for the 8-byte header size")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        raise ValueError(f"{where}: header of {n} bytes is longer than the file; truncated or not safetensors")
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{where}: the header is not valid JSON ({err})") from err
    if not isinstance(header, dict):
        raise ValueError(f"{where}: the header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    buf = memoryview(data)[8 + n :]
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    for name, info in header.items():
        try:
            code, shape, (begin, end) = info["dtype"], tuple(int(s) for s in info["shape"]), info["data_offsets"]
        except (TypeError, KeyError, ValueError) as err:
            raise ValueError(f"{where}: malformed entry for {name!r}: {info!r}") from err
        if code not in _ST_DTYPES:
            raise ValueError(f"{where}: tensor {name!r} has unsupported dtype {code}")
        dtype = np.dtype(_ST_DTYPES[code])
        if not 0 <= begin <= end <= len(buf) or end - begin != math.prod(shape) * dtype.itemsize:
            raise ValueError(
                f"{where}: tensor {name!r} ({code} {shape}) has data offsets [{begin}, {end}] that do not fit "
                f"its size or the {len(buf)}-byte buffer; truncated or corrupt"
            )
        arr = np.frombuffer(buf[begin:end], dtype=dtype).reshape(shape)
        if code == "BF16":
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        out[name] = arr.astype(arr.dtype.newbyteorder("="), copy=True)
    return out, {str(k): str(v) for k, v in metadata.items()}


def read_safetensors(path: Path) -> tuple[OrderedDict[str, np.ndarray], dict[str, str]]:
    try:
        from safetensors import safe_open
    except ImportError:
        return _read_safetensors_pure(path)
    try:
        with safe_open(str(path), framework="np") as f:
            metadata = dict(f.metadata() or {})
            arrays = OrderedDict((k, f.get_tensor(k)) for k in f.keys())
        return arrays, metadata
    except Exception:
        # The package refuses files NumPy cannot represent (BF16) and reports corrupt files tersely:
        # the reader here handles the former and explains the latter.
        return _read_safetensors_pure(path)


def _safetensors_bytes(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> bytes:
    """Serialise to the safetensors format (header padded to 8 bytes, buffers contiguous in key order)."""
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    chunks, offset = [], 0
    for name, value in tensors.items():
        arr = np.ascontiguousarray(value)
        arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
        code = _NP_TO_ST.get(arr.dtype.str)
        if code is None:
            raise ValueError(f"safetensors: cannot store {name!r} of dtype {arr.dtype}")
        raw = arr.tobytes()
        header[name] = {"dtype": code, "shape": list(arr.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    head += b" " * (-len(head) % 8)
    return len(head).to_bytes(8, "little") + head + b"".join(chunks)


def save_safetensors(model: PyramidVisionTransformerV2, path: str | Path, layout: str = "timm") -> Path:
    """Write ``model``'s weights as .safetensors (atomically), keys in the ``layout`` 'timm' or 'official'.

    Uses the ``safetensors`` package when installed, else the writer here; the file's metadata
    holds pvt_np's record, so :func:`~pvt_np.io.load.load_model` can rebuild the model from it. No torch needed.
    """
    if layout not in ("timm", "official"):
        raise ValueError(f"save_safetensors: layout must be 'timm' or 'official', got {layout!r}")
    path = Path(path)
    arrays = numpy_state_dict(model)
    if layout == "official":
        arrays = timm_to_official(arrays)
    record = model_record(model)
    record["layout"] = layout
    metadata = {"format": "pt", RECORD_KEY: json.dumps(record)}
    try:
        from safetensors.numpy import save as st_save
    except ImportError:
        data = _safetensors_bytes(arrays, metadata)
    else:
        data = st_save(dict(arrays), metadata=metadata)
    with atomic_write(path) as f:
        f.write(data)
    return path
