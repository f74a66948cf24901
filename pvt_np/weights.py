"""Weights in and out: pvt_np's .npz, safetensors, timm and official whai362/PVT PyTorch files.

The public face of :mod:`pvt_np.io`, where each format has its own module: this module only
re-exports. :func:`load_model` rebuilds the model any file pvt_np writes holds (its record names the
variant, every architecture field and the data) and recognises foreign timm / official files from
their shapes; :func:`load_weights` copies a checkpoint into a model you built; ``save_npz``,
``save_safetensors``, ``save_timm_checkpoint`` and ``save_official_checkpoint`` write them, atomically.
``.npz`` and ``.safetensors`` need no PyTorch; ``.pth`` / ``.pt`` / ``.bin`` / ``.ckpt`` files need the
``torch`` extra. ``pvt-np convert`` (:mod:`pvt_np.io.convert`) turns any of them into any other.
"""

from pvt_np.io.convert import FORMATS
from pvt_np.io.infer import infer_architecture
from pvt_np.io.keys import detect_layout, official_key_to_timm, official_to_timm, timm_key_to_official, timm_to_official
from pvt_np.io.load import UnknownArchitectureError, WeightsMismatchError, load_model, load_weights
from pvt_np.io.npz import save_npz
from pvt_np.io.read import Checkpoint, read_checkpoint
from pvt_np.io.record import IMAGENET_META, config_overrides, describe_model, model_config, model_record
from pvt_np.io.safetensors import save_safetensors
from pvt_np.io.torch import (
    export_official_state_dict,
    export_timm_state_dict,
    save_official_checkpoint,
    save_timm_checkpoint,
    timm_constructor,
    timm_inexpressible,
)

__all__ = [
    "FORMATS",
    "IMAGENET_META",
    "Checkpoint",
    "UnknownArchitectureError",
    "WeightsMismatchError",
    "config_overrides",
    "describe_model",
    "detect_layout",
    "export_official_state_dict",
    "export_timm_state_dict",
    "infer_architecture",
    "load_model",
    "load_weights",
    "model_config",
    "model_record",
    "official_key_to_timm",
    "official_to_timm",
    "read_checkpoint",
    "save_npz",
    "save_official_checkpoint",
    "save_safetensors",
    "save_timm_checkpoint",
    "timm_constructor",
    "timm_inexpressible",
    "timm_key_to_official",
    "timm_to_official",
]
