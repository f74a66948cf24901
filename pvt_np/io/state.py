"""A state_dict as NumPy arrays: out of the wrappers training scripts put around it, or out of a model."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np

from pvt_np import backend
from pvt_np.models.pvt_v2 import PyramidVisionTransformerV2

# Keys under which training scripts nest the state_dict (timm: 'state_dict', DeiT/official PVT: 'model').
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module", "net")
# Prefixes that wrappers add to every key (DistributedDataParallel, torch.compile).
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def _is_array(value: Any) -> bool:
    return isinstance(value, np.ndarray) or (
        hasattr(value, "shape") and hasattr(value, "dtype") and (hasattr(value, "detach") or hasattr(value, "get"))
    )


def _to_numpy(value: Any) -> np.ndarray:
    """A NumPy array from a NumPy/CuPy array or a torch tensor (bfloat16 becomes float32)."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # torch.Tensor, without importing torch
        t = value.detach().cpu()
        if str(t.dtype) == "torch.bfloat16":
            t = t.float()
        return t.numpy()
    return backend.to_numpy(value) if not isinstance(value, np.ndarray) else value


def unwrap(obj: Any, where: str) -> OrderedDict[str, np.ndarray]:
    """The state_dict inside common training-checkpoint wrappers, as NumPy arrays."""
    path = []
    while True:
        if not isinstance(obj, Mapping):
            inside = f" (under {'/'.join(path)})" if path else ""
            raise ValueError(
                f"{where}: expected a mapping of parameter names to tensors{inside}, got {type(obj).__name__}"
            )
        if obj and all(_is_array(v) for v in obj.values()):
            break
        for key in WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                path.append(key)
                obj = obj[key]
                break
        else:
            break
    if not obj:
        raise ValueError(f"{where}: the checkpoint holds no tensors")
    not_arrays = [str(k) for k, v in obj.items() if not _is_array(v)]
    if not_arrays:
        raise ValueError(
            f"{where}: no state_dict found: entries that are not tensors: {', '.join(not_arrays)} "
            f"(known wrapper keys: {', '.join(WRAPPER_KEYS)})"
        )
    keys = [str(k) for k in obj]
    for prefix in _WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in keys):
            keys = [k[len(prefix) :] for k in keys]
    return OrderedDict((k, _to_numpy(v)) for k, v in zip(keys, obj.values(), strict=True))


def numpy_state_dict(model: PyramidVisionTransformerV2) -> OrderedDict[str, np.ndarray]:
    """``model``'s state_dict as contiguous host NumPy arrays (what every writer stores)."""
    return OrderedDict((k, np.ascontiguousarray(backend.to_numpy(v))) for k, v in model.state_dict().items())
