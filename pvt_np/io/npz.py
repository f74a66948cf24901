"""pvt_np's weights file: a NumPy ``.npz`` of the state_dict with the model record beside it."""

from __future__ import annotations

import json
import zipfile
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from pvt_np.io.atomic import atomic_write
from pvt_np.io.record import RECORD_KEY, model_record, parse_record
from pvt_np.io.state import numpy_state_dict
from pvt_np.models.pvt_v2 import PyramidVisionTransformerV2

NPZ_SUFFIXES = (".npz",)


def read_npz(path: Path) -> tuple[OrderedDict[str, np.ndarray], dict[str, Any] | None]:
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError("it holds a single .npy array, not an .npz archive")
        with loaded as z:
            arrays = OrderedDict((name, z[name]) for name in z.files)
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, zlib.error) as err:
        raise ValueError(f"cannot read {path} as .npz ({err}); the file is corrupt or truncated") from err
    record = None
    if RECORD_KEY in arrays:
        record = parse_record(str(arrays.pop(RECORD_KEY)), str(path))
    return arrays, record


def save_npz(model: PyramidVisionTransformerV2, path: str | Path) -> Path:
    """Write ``model``'s state_dict and its record (:func:`~pvt_np.io.record.model_record`) to ``path``
    (.npz, atomically)."""
    path = Path(path)
    arrays = numpy_state_dict(model)
    arrays[RECORD_KEY] = np.array(json.dumps(model_record(model)))
    with atomic_write(path) as f:
        np.savez(f, **arrays)
    return path
