"""Checkpoints: pvt_np's .npz, timm state_dicts, the official whai362/PVT layout, safetensors.

Parameter names of :class:`~pvt_np.models.PyramidVisionTransformerV2` equal
timm's ``pvt_v2`` state_dict keys, so a timm checkpoint loads as is. The
official code names the same tensors differently (timm's
``checkpoint_filter_fn`` does the official -> timm renaming):

==========================  ======================================
official whai362/PVT        timm / pvt_np
==========================  ======================================
``patch_embed1.*``          ``patch_embed.*``
``patch_embed{i+1}.*``      ``stages.{i}.downsample.*`` (i >= 1)
``block{i+1}.{j}.*``        ``stages.{i}.blocks.{j}.*``
``norm{i+1}.*``             ``stages.{i}.norm.*``
``*.mlp.dwconv.dwconv.*``   ``*.mlp.dwconv.*``
``head.*``                  ``head.*``
==========================  ======================================

:func:`load_weights` detects the layout itself and reads ``.npz`` and
``.safetensors`` files without PyTorch (safetensors through the
``safetensors`` package when it is installed, else a small reader of the
format written here); ``.pth`` / ``.pt`` / ``.bin`` / ``.ckpt`` files need
PyTorch (the ``torch`` extra). Every file is written atomically
(:func:`pvt_np.io_utils.atomic_write`), so a failed save leaves any previous
file untouched.

Two kinds of file hold a model. A *training checkpoint* (a run's ``last.npz`` /
``best.npz``, :mod:`pvt_np.training.checkpoint`) also holds the optimizer, schedule
and progress to resume the run; a *weights file* (``.npz``, ``.safetensors``,
``.pth``) holds the weights only. Every one pvt_np writes carries a record
(:func:`model_record`): the variant, every architecture field, the dtype, and the
class names, input size and normalisation of the run, so :func:`load_model` rebuilds
the model from any of them without being told what it is (and foreign timm/official
files are recognised from their shapes).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from pvt_np import backend
from pvt_np.io_utils import atomic_write
from pvt_np.models.pvt_v2 import PyramidVisionTransformerV2
from pvt_np.models.registry import (
    ARCH_FIELDS,
    CIFAR_OVERRIDES,
    MODEL_CONFIGS,
    RATE_ARGS,
    ModelMeta,
    architecture,
    build_model,
    create_model,
    list_models,
    model_meta,
)

if TYPE_CHECKING:  # torch is optional at runtime
    import torch

__all__ = [
    "FORMATS",
    "IMAGENET_META",
    "Checkpoint",
    "UnknownArchitectureError",
    "WeightsMismatchError",
    "add_arguments",
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
    "run",
    "save_npz",
    "save_official_checkpoint",
    "save_safetensors",
    "save_timm_checkpoint",
    "timm_constructor",
    "timm_inexpressible",
    "timm_key_to_official",
    "timm_to_official",
]

#: Output formats of ``pvt-np convert --to``.
FORMATS = ("npz", "timm", "official", "safetensors")

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
NPZ_SUFFIXES = (".npz",)
SAFETENSORS_SUFFIXES = (".safetensors",)

# .npz entry / safetensors metadata key / torch state_dict _metadata key holding the JSON record.
RECORD_KEY = "__pvt_np_record__"
# 1: name, config, dtype. 2: also overrides, classes, input_size, mean, std.
RECORD_FORMAT_VERSION = 2

# Keys under which training scripts nest the state_dict (timm: 'state_dict', DeiT/official PVT: 'model').
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module", "net")
# Prefixes that wrappers add to every key (DistributedDataParallel, torch.compile).
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")

_INSTALL_TORCH = "install the 'torch' extra: pip install 'pvt_np[torch]'"


# ---------------------------------------------------------------------------
# key layouts
# ---------------------------------------------------------------------------
def _sub_first(rules: Iterable[tuple[re.Pattern[str], Callable[[re.Match[str]], str]]], key: str) -> str:
    for pattern, repl in rules:
        new, n = pattern.subn(repl, key, count=1)
        if n:
            return new
    return key


_OFFICIAL_TO_TIMM = (
    (re.compile(r"^patch_embed1\."), lambda m: "patch_embed."),
    (re.compile(r"^patch_embed(\d+)\."), lambda m: f"stages.{int(m[1]) - 1}.downsample."),
    (re.compile(r"^block(\d+)\.(\d+)\."), lambda m: f"stages.{int(m[1]) - 1}.blocks.{m[2]}."),
    (re.compile(r"^norm(\d+)\."), lambda m: f"stages.{int(m[1]) - 1}.norm."),
)
_TIMM_TO_OFFICIAL = (
    (re.compile(r"^patch_embed\."), lambda m: "patch_embed1."),
    (re.compile(r"^stages\.(\d+)\.downsample\."), lambda m: f"patch_embed{int(m[1]) + 1}."),
    (re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\."), lambda m: f"block{int(m[1]) + 1}.{m[2]}."),
    (re.compile(r"^stages\.(\d+)\.norm\."), lambda m: f"norm{int(m[1]) + 1}."),
)
_OFFICIAL_KEY = re.compile(r"^(patch_embed\d+|block\d+\.\d+|norm\d+)\.")
_TIMM_KEY = re.compile(r"^(patch_embed|stages\.\d+)\.")


def official_key_to_timm(key: str) -> str:
    """One official whai362/PVT parameter name in timm's (= pvt_np's) naming."""
    key = _sub_first(_OFFICIAL_TO_TIMM, key)
    return key.replace(".mlp.dwconv.dwconv.", ".mlp.dwconv.")


def timm_key_to_official(key: str) -> str:
    """One timm / pvt_np parameter name in the official whai362/PVT naming (inverse of the above)."""
    new = _sub_first(_TIMM_TO_OFFICIAL, key)
    if new.startswith("block"):
        new = new.replace(".mlp.dwconv.", ".mlp.dwconv.dwconv.")
    return new


def official_to_timm(state_dict: Mapping[str, Any]) -> OrderedDict[str, Any]:
    """Rename an official whai362/PVT state_dict to timm's keys (values untouched, order kept).

    Gives the same result as timm's ``checkpoint_filter_fn`` on official checkpoints.
    """
    return OrderedDict((official_key_to_timm(k), v) for k, v in state_dict.items())


def timm_to_official(state_dict: Mapping[str, Any]) -> OrderedDict[str, Any]:
    """Rename a timm / pvt_np state_dict to the official whai362/PVT keys (values untouched, order kept)."""
    return OrderedDict((timm_key_to_official(k), v) for k, v in state_dict.items())


def detect_layout(keys: Iterable[str]) -> str:
    """'official' for whai362/PVT names (patch_embed1, block1.0, norm1, ...), else 'timm'.

    As timm does, any timm-style key (``patch_embed.``, ``stages.N.``) means timm.
    """
    keys = list(keys)
    if any(_TIMM_KEY.match(k) for k in keys):
        return "timm"
    if any(_OFFICIAL_KEY.match(k) for k in keys):
        return "official"
    return "timm"


# ---------------------------------------------------------------------------
# model description
# ---------------------------------------------------------------------------
# What timm's pvt_v2 (and the official whai362/PVT code) pretrained weights expect:
# 224x224 images normalised with ImageNet's statistics. Used for foreign files, which say nothing.
IMAGENET_META = ModelMeta(input_size=(224, 224), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def model_config(model: PyramidVisionTransformerV2) -> dict[str, Any]:
    """The architecture of ``model`` as JSON-ready values (what a file records).

    Holds num_classes and every field of :data:`~pvt_np.models.ARCH_FIELDS`; regularisation
    rates (dropout, drop-path) are training settings and are not part of it.
    """
    if not isinstance(model, PyramidVisionTransformerV2):
        raise TypeError(f"model_config: expected a PyramidVisionTransformerV2, got {type(model).__name__}")
    qkv_bias = next(
        (blk.attn.q.bias is not None for stage in model.stages for blk in stage.blocks),
        True,
    )
    return {
        "num_classes": int(model.num_classes),
        "in_chans": int(model.in_chans),
        "depths": [int(d) for d in model.depths],
        "embed_dims": [int(d) for d in model.embed_dims],
        "num_heads": [int(h) for h in model.num_heads],
        "sr_ratios": [int(r) for r in model.sr_ratios],
        "mlp_ratios": [r if isinstance(r, int) else float(r) for r in model.mlp_ratios],
        "qkv_bias": bool(qkv_bias),
        "linear": bool(model.linear),
        "patch_size": int(model.patch_size),
        "stride": int(model.stride),
        "pool_size": int(model.pool_size),
    }


def _model_name(model: Any) -> str | None:
    return getattr(model, "model_name", None)


def _same(a: Any, b: Any) -> bool:
    """Equality of config values across a JSON round trip (tuples vs lists, 8 vs 8.0)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def config_overrides(name: str | None, config: Mapping[str, Any]) -> dict[str, Any]:
    """The architecture fields of ``config`` that differ from variant ``name``'s defaults
    (what ``create_model(name, **overrides)`` would need; everything for an unregistered model)."""
    if name not in MODEL_CONFIGS:
        return {k: config[k] for k in ARCH_FIELDS if k in config}
    default = architecture(name)
    return {k: config[k] for k in ARCH_FIELDS if k in config and not _same(config[k], default[k])}


def _is_cifar_stem(config: Mapping[str, Any]) -> bool:
    return (config.get("patch_size"), config.get("stride")) == (
        CIFAR_OVERRIDES["patch_size"],
        CIFAR_OVERRIDES["stride"],
    )


def describe_model(name: str | None, config: Mapping[str, Any]) -> str:
    """A short phrase for a model: 'pvt_v2_b0 with the CIFAR stem, sr_ratios (4, 2, 1, 1), 10 classes'."""
    overrides = config_overrides(name, config)
    parts = []
    if "patch_size" in overrides or "stride" in overrides:
        stem = f"{config['patch_size']}x{config['patch_size']} stride {config['stride']}"
        parts.append(f"the CIFAR stem ({stem})" if _is_cifar_stem(config) else f"a {stem} stem")
    parts += [
        f"{k} {tuple(v) if isinstance(v, list) else v}"
        for k, v in overrides.items()
        if k not in ("patch_size", "stride")
    ]
    head = config.get("num_classes")
    what = name
    if name not in MODEL_CONFIGS:  # everything differs from a variant: name the shape of the pyramid
        pyramid = f"depths {_show(config.get('depths'))}, embed_dims {_show(config.get('embed_dims'))}"
        what = f"an unregistered PVT v2 ({pyramid})"
        parts = [p for p in parts if p.startswith(("the CIFAR stem", "a "))]
    return f"{what}{' with ' + ', '.join(parts) if parts else ''}" + (
        f", {head} classes" if head else ", no head" if head == 0 else ""
    )


def model_record(model: PyramidVisionTransformerV2) -> dict[str, Any]:
    """What every file pvt_np writes records about ``model``: name, full architecture, the
    overrides of the named variant, dtype and ``model.meta`` (classes, input size, normalisation)."""
    config = model_config(model)
    name = _model_name(model)
    return {
        "format": "pvt_np",
        "format_version": RECORD_FORMAT_VERSION,
        "model_name": name,
        "config": config,
        "overrides": config_overrides(name, config),
        "dtype": str(np.dtype(model.dtype)),
        "layout": "timm",
        **model_meta(model).to_json(),
    }


def _parse_record(record: Any, where: str) -> dict[str, Any]:
    if isinstance(record, (str, bytes)):
        try:
            record = json.loads(record)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: the pvt_np model record is not valid JSON ({err})") from err
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise ValueError(f"{where}: the pvt_np model record has no 'config' mapping")
    version = record.get("format_version", 1)
    if not isinstance(version, int) or version > RECORD_FORMAT_VERSION:
        raise ValueError(
            f"{where}: the model record has format version {version!r}; this pvt_np reads up to "
            f"{RECORD_FORMAT_VERSION} (the file was written by a newer pvt_np: upgrade it)"
        )
    unknown = sorted(set(record["config"]) - set(ARCH_FIELDS) - {"num_classes"})
    if unknown:
        raise ValueError(f"{where}: the model record has unknown config fields {unknown} (newer pvt_np?)")
    return record


def _stage_count(keys: Iterable[str]) -> int:
    stages = [int(m[1]) for k in keys if (m := re.match(r"^stages\.(\d+)\.", k))]
    return max(stages) + 1 if stages else 0


def infer_architecture(state_dict: Mapping[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """What the shapes of a timm-layout state_dict say: (the registered variant they match or None,
    the architecture fields they determine).

    Shapes fix depths, widths, MLP ratios, SRA kind and ratios, the stem, input channels, q/kv
    biases and the head; not the number of heads (q is dim x dim for any count), which comes from
    the variant when one matches.
    """
    shapes = {k: tuple(np.shape(v)) for k, v in state_dict.items()}
    info: dict[str, Any] = {}
    stem = shapes.get("patch_embed.proj.weight")
    if stem and len(stem) == 4:
        info["in_chans"], info["patch_size"] = stem[1], stem[2]
        info["stride"] = (stem[2] + 1) // 2  # PVT v2's overlapping stem: kernel 2S - 1
    head = shapes.get("head.weight")
    info["num_classes"] = head[0] if head and len(head) == 2 else 0
    n = _stage_count(shapes)
    if not n:
        return None, info
    depths, dims, ratios, srs = [], [], [], []
    for i in range(n):
        blocks = {int(m[1]) for k in shapes if (m := re.match(rf"^stages\.{i}\.blocks\.(\d+)\.", k))}
        depths.append(len(blocks))
        norm = shapes.get(f"stages.{i}.norm.weight")
        fc1 = shapes.get(f"stages.{i}.blocks.0.mlp.fc1.weight")
        dims.append(norm[0] if norm else None)
        ratio = fc1[0] / norm[0] if norm and fc1 and norm[0] else None
        ratios.append(int(ratio) if ratio is not None and ratio.is_integer() else ratio)
        sr = shapes.get(f"stages.{i}.blocks.0.attn.sr.weight")
        srs.append(sr[2] if sr and len(sr) == 4 else 1)
    info.update(depths=depths, embed_dims=dims, mlp_ratios=ratios)
    # Linear SRA has a 1x1 sr conv in every stage; spatial-reduction SRA has a kernel R >= 2 conv
    # where R > 1 and none where R = 1.
    info["linear"] = any(k.endswith(".attn.sr.weight") for k in shapes) and all(s == 1 for s in srs)
    if not info["linear"]:
        info["sr_ratios"] = srs
    info["qkv_bias"] = "stages.0.blocks.0.attn.q.bias" in shapes
    for name in list_models():
        cfg = architecture(name)
        if all(_same(cfg[k], info[k]) for k in ("depths", "embed_dims", "mlp_ratios", "linear")):
            return name, info
    return None, info


def _architecture_differences(theirs: Mapping[str, Any], ours: Mapping[str, Any]) -> list[str]:
    return [
        f"{k} {_show(theirs[k])} vs {_show(ours[k])}"
        for k in ("depths", "embed_dims", "mlp_ratios", "linear", "sr_ratios", "patch_size", "stride",
                  "in_chans", "qkv_bias", "num_classes")
        if k in theirs and k in ours and not _same(theirs[k], ours[k])
    ]  # fmt: skip


def _show(value: Any) -> str:
    return str(tuple(value)) if isinstance(value, list) else str(value)


# ---------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------
class Checkpoint(NamedTuple):
    """What :func:`read_checkpoint` found.

    state_dict: NumPy arrays keyed as in the file. record: pvt_np's model record (see
    :func:`model_record`), None for a foreign file. source: the path. kind: 'training'
    (a run's checkpoint), 'weights' (a weights file pvt_np wrote) or 'foreign'.
    training: a training checkpoint's run settings, progress and data description.
    """

    state_dict: OrderedDict[str, np.ndarray]
    record: dict[str, Any] | None
    source: str
    kind: str = "foreign"
    training: dict[str, Any] | None = None


class UnknownArchitectureError(ValueError):
    """A checkpoint that neither records its model nor matches a registered variant by its shapes."""


def _require_torch(purpose: str) -> Any:
    try:
        import torch
    except ImportError as err:
        raise ImportError(f"{purpose} needs PyTorch, which is not installed; {_INSTALL_TORCH}") from err
    return torch


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


def _unwrap(obj: Any, where: str) -> OrderedDict[str, np.ndarray]:
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
        for key in _WRAPPER_KEYS:
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
            f"(known wrapper keys: {', '.join(_WRAPPER_KEYS)})"
        )
    keys = [str(k) for k in obj]
    for prefix in _WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in keys):
            keys = [k[len(prefix) :] for k in keys]
    return OrderedDict((k, _to_numpy(v)) for k, v in zip(keys, obj.values(), strict=True))


def _read_torch(path: Path, trust_pickle: bool) -> Any:
    torch = _require_torch(f"reading {path.suffix} checkpoint {path}")
    try:
        if trust_pickle:
            return torch.load(path, map_location="cpu", weights_only=False)
        # Official PVT / DeiT training checkpoints carry their argparse.Namespace of options.
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # a corrupt pickle can fail in any way (IndexError, KeyError, ...)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        hint = ""
        if not trust_pickle and zipfile.is_zipfile(path) and "Weights only load failed" in str(err):
            hint = (
                "; the file holds Python objects besides tensors: if you trust its source, load it with "
                "trust_pickle=True (pvt-np convert --trust-pickle)"
            )
        raise ValueError(f"cannot read {path} as a PyTorch checkpoint ({first}){hint}") from err


def _read_npz(path: Path) -> tuple[OrderedDict[str, np.ndarray], dict[str, Any] | None]:
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
        record = _parse_record(str(arrays.pop(RECORD_KEY)), str(path))
    return arrays, record


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


def _read_safetensors(path: Path) -> tuple[OrderedDict[str, np.ndarray], dict[str, str]]:
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


def read_checkpoint(source: str | Path | Mapping[str, Any], *, trust_pickle: bool = False) -> Checkpoint:
    """Read any checkpoint into NumPy arrays, keyed as in the file (timm or official layout).

    ``source`` is a path or an in-memory mapping (a state_dict of torch tensors or arrays). Files are
    told apart by their content, not their name: a pvt_np training checkpoint (``last.npz`` /
    ``best.npz``), a weights ``.npz``, a ``.safetensors`` file, or a PyTorch file (``torch.save``,
    read through PyTorch). Wrappers such as ``{'model': ...}`` / ``{'state_dict': ...}`` and
    ``module.`` prefixes are removed. PyTorch files are unpickled with ``weights_only=True``
    unless ``trust_pickle``.

    Raises FileNotFoundError for a missing file, ImportError when a PyTorch file needs the
    absent PyTorch, ValueError for a file that is no checkpoint or is corrupt/truncated.
    """
    # Imported here: pvt_np.training imports this module (the trainer saves model_record).
    from pvt_np.training.checkpoint import file_kind, not_a_checkpoint

    if isinstance(source, Mapping):
        record = _torch_record(source, "state_dict")  # a state_dict torch.load returned keeps its _metadata
        return Checkpoint(_unwrap(source, "state_dict"), record, "state_dict", "weights" if record else "foreign")
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist" + (" (it is a directory)" if path.is_dir() else ""))
    kind = file_kind(path)
    suffix = path.suffix.lower()
    if kind == "binary":  # unrecognised bytes: a damaged file of the kind its name says, if it says one
        kind = {**dict.fromkeys(NPZ_SUFFIXES, "npz"), **dict.fromkeys(SAFETENSORS_SUFFIXES, "safetensors")}.get(
            suffix, "torch-pickle" if suffix in TORCH_SUFFIXES else kind
        )
    if kind == "npz":
        if _is_training_checkpoint(path):
            return _read_training(path)
        arrays, record = _read_npz(path)
        return Checkpoint(_unwrap(arrays, str(path)), record, str(path), "weights" if record else "foreign")
    if kind == "safetensors":
        arrays, metadata = _read_safetensors(path)
        record = _parse_record(metadata[RECORD_KEY], str(path)) if RECORD_KEY in metadata else None
        return Checkpoint(_unwrap(arrays, str(path)), record, str(path), "weights" if record else "foreign")
    if kind in ("torch-zip", "torch-pickle"):
        obj = _read_torch(path, trust_pickle)
        record = _torch_record(obj, str(path))
        return Checkpoint(_unwrap(obj, str(path)), record, str(path), "weights" if record else "foreign")
    raise ValueError(not_a_checkpoint(path, kind))


def _is_training_checkpoint(path: Path) -> bool:
    from pvt_np.training.checkpoint import META_KEY

    try:
        with zipfile.ZipFile(path) as archive:
            return f"{META_KEY}.npy" in archive.namelist()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return False  # the .npz reader explains what is wrong with the file


# What loading a model needs from a training checkpoint; the optimizer's moments are not read.
_TRAINING_KEYS = ("config", "num_classes", "classes", "normalize", "model_record", "model", "progress", "best_accuracy")


def _read_training(path: Path) -> Checkpoint:
    from pvt_np.training.checkpoint import load_checkpoint

    payload = load_checkpoint(path, keys=_TRAINING_KEYS)
    if not isinstance(payload.get("model"), Mapping):
        raise ValueError(f"{path}: the training checkpoint holds no model weights")
    state = _unwrap(payload.pop("model"), str(path))
    record = payload.get("model_record") or _record_from_run(payload, str(path))
    return Checkpoint(state, _parse_record(record, str(path)), str(path), "training", payload)


def _record_from_run(payload: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The model record of a training checkpoint written before checkpoints carried one."""
    run = payload.get("config") or {}
    name = run.get("model")
    if name not in MODEL_CONFIGS:
        raise ValueError(f"{where}: the training checkpoint names no model this pvt_np knows ({name!r})")
    overrides = {k: v for k, v in (run.get("model_overrides") or {}).items() if k in ARCH_FIELDS}
    config = architecture(name, int(payload["num_classes"]), bool(run.get("cifar_stem")), **overrides)
    normalize = payload.get("normalize") or {}
    cifar_data = run.get("dataset") in ("cifar10", "cifar100")  # always 32x32; an image folder's size went unsaved
    meta = ModelMeta(
        classes=payload.get("classes"),
        input_size=(32, 32) if cifar_data else None,
        mean=normalize.get("mean"),
        std=normalize.get("std"),
    )
    return {
        "format": "pvt_np",
        "format_version": RECORD_FORMAT_VERSION,
        "model_name": name,
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()},
        "dtype": run.get("dtype", "float32"),
        **meta.to_json(),
    }


def _torch_record(obj: Any, where: str) -> dict[str, Any] | None:
    """The record pvt_np keeps in a saved state_dict's ``_metadata`` (see :func:`_save_torch`)."""
    candidates = [obj] + [obj[k] for k in _WRAPPER_KEYS if isinstance(obj, Mapping) and isinstance(obj.get(k), Mapping)]
    for candidate in candidates:
        metadata = getattr(candidate, "_metadata", None)
        if isinstance(metadata, Mapping) and isinstance(metadata.get(RECORD_KEY), Mapping):
            return _parse_record(metadata[RECORD_KEY].get("record"), where)
    return None


# ---------------------------------------------------------------------------
# loading into a model
# ---------------------------------------------------------------------------
class WeightsMismatchError(ValueError):
    """A checkpoint that does not fit the model. The message is short (for another variant, one line
    naming what the file holds); ``details`` lists every missing, unexpected and mis-shaped key."""

    def __init__(self, message: str, details: list[str]) -> None:
        super().__init__(message)
        self.details = details


_LISTED_KEYS = 8  # keys named per kind in a message; the rest are in WeightsMismatchError.details


def _mismatches(
    model: PyramidVisionTransformerV2, state: Mapping[str, np.ndarray], display: Callable[[str], str], strict: bool
) -> dict[str, list[str]]:
    expected = {k: p.shape for k, p in model.named_parameters()}
    return {
        "missing": [display(k) for k in expected if k not in state] if strict else [],
        "unexpected": [display(k) for k in state if k not in expected] if strict else [],
        "mis-shaped": [
            f"{display(k)}: expected {expected[k]}, got {tuple(np.shape(v))}"
            for k, v in state.items()
            if k in expected and tuple(np.shape(v)) != tuple(expected[k])
        ],
    }


def _format_mismatches(found: Mapping[str, list[str]], limit: int | None) -> list[str]:
    lines = []
    for kind, keys in found.items():
        if keys:
            shown = keys if limit is None else keys[:limit]
            more = f"; ... and {len(keys) - len(shown)} more" if len(keys) > len(shown) else ""
            lines.append(f"{kind} keys ({len(keys)}): {(', ' if kind != 'mis-shaped' else '; ').join(shown)}{more}")
    return lines


def _mismatch_error(
    model: PyramidVisionTransformerV2,
    ckpt: Checkpoint,
    state: Mapping[str, np.ndarray],
    layout: str,
    found: Mapping[str, list[str]],
) -> WeightsMismatchError:
    details = _format_mismatches(found, None)
    src = repr(ckpt.source) if ckpt.source != "state_dict" else "the state_dict"
    ours_name, ours = _model_name(model), model_config(model)
    if ckpt.record is not None:
        theirs_name, theirs, verb = ckpt.record.get("model_name"), ckpt.record["config"], "holds"
    else:
        theirs_name, theirs = infer_architecture(state)
        verb = "looks like"
    # Only a recorded model or a registered variant recognised from the shapes is "another model";
    # shapes that match no variant are more likely a few damaged keys, which are listed instead.
    known = ckpt.record is not None or theirs_name is not None
    differences = _architecture_differences(theirs, ours) if known and "depths" in theirs else []
    count = sum(len(v) for v in found.values())
    if differences:
        build = f"pvt_np.load_model({src})" if ckpt.source != "state_dict" else "a model built to match"
        return WeightsMismatchError(
            f"load_weights: {src} {verb} {describe_model(theirs_name, theirs)}, but the model is "
            f"{describe_model(ours_name, ours)} ({'; '.join(differences)}): {build} builds the model it holds "
            f"[{count} keys do not fit: their list is in this error's .details, pvt-np convert --show-keys]",
            details,
        )
    if not _stage_count(state):
        first = ", ".join(list(state)[:5])
        return WeightsMismatchError(
            f"load_weights: {src} holds no PVT v2 weights: none of its {len(state)} keys is a PVT v2 stage "
            f"(timm stages.N.* or official blockN.M.*); its first keys: {first}",
            details,
        )
    who = type(model).__name__ + (f" ({ours_name})" if ours_name else "")
    kind = "official whai362/PVT key layout" if layout == "official" else "timm/pvt_np key layout"
    return WeightsMismatchError(
        f"load_weights into {who} from {src} ({kind}): " + " | ".join(_format_mismatches(found, _LISTED_KEYS)),
        details,
    )


def _load_into(model: PyramidVisionTransformerV2, ckpt: Checkpoint, strict: bool) -> PyramidVisionTransformerV2:
    state = ckpt.state_dict
    layout = detect_layout(state)
    original_names: dict[str, str] = {}
    if layout == "official":
        mapped: OrderedDict[str, np.ndarray] = OrderedDict()
        for k, v in state.items():
            new = official_key_to_timm(k)
            original_names[new] = k
            mapped[new] = v
        state = mapped

    def display(timm_key: str) -> str:
        if layout != "official":
            return timm_key
        return f"{original_names.get(timm_key, timm_key_to_official(timm_key))} (pvt_np: {timm_key})"

    found = _mismatches(model, state, display, strict)
    if any(found.values()):
        raise _mismatch_error(model, ckpt, state, layout, found)
    model.load_state_dict(state, strict=strict)
    return model


def load_weights(
    model: PyramidVisionTransformerV2,
    source: str | Path | Mapping[str, Any] | Checkpoint,
    strict: bool = True,
    *,
    trust_pickle: bool = False,
) -> PyramidVisionTransformerV2:
    """Copy a checkpoint's tensors into ``model`` (keeping its device and dtype); returns ``model``.

    ``source``: a training checkpoint (a run's ``last.npz`` / ``best.npz``), a weights ``.npz`` or
    ``.safetensors`` file, a PyTorch ``.pth``/``.pt``/``.bin``/``.ckpt`` (needs the ``torch``
    extra), or an in-memory state_dict (torch tensors or arrays). timm/pvt_np and official
    whai362/PVT key layouts are told apart automatically; common wrappers are removed (see
    :func:`read_checkpoint`).

    A checkpoint that does not fit raises :class:`WeightsMismatchError`: for another variant,
    head size, stem, ... one line saying what the file holds (from its record or its shapes);
    otherwise the missing, unexpected and mis-shaped keys (official-layout keys by their name in
    the file). ``.details`` lists every key. ``strict=False`` ignores missing and unexpected keys;
    shapes are always checked.
    """
    ckpt = source if isinstance(source, Checkpoint) else read_checkpoint(source, trust_pickle=trust_pickle)
    return _load_into(model, ckpt, strict)


def _model_spec(ckpt: Checkpoint) -> tuple[str | None, dict[str, Any], ModelMeta, str]:
    """(name, full architecture, meta, dtype) of the model a checkpoint holds."""
    where = ckpt.source
    if ckpt.record is not None:
        record = ckpt.record
        name = record.get("model_name")
        if name is not None and name not in MODEL_CONFIGS:
            raise ValueError(
                f"{where}: records model {name!r}, which this pvt_np does not know ({', '.join(list_models())})"
            )
        config = {k: tuple(v) if isinstance(v, list) else v for k, v in record["config"].items()}
        config.setdefault("num_classes", 1000)
        missing = [k for k in ARCH_FIELDS if k not in config]
        if missing:
            if name is None:
                raise ValueError(f"{where}: the model record lacks the architecture fields {missing}")
            config = {**architecture(name), **config}
        return name, config, ModelMeta.from_json(record), str(record.get("dtype", "float32"))
    state = ckpt.state_dict
    if detect_layout(state) == "official":
        state = official_to_timm(state)
    if not _stage_count(state):
        raise UnknownArchitectureError(
            f"{where} holds no PVT v2 weights: none of its {len(state)} keys is a PVT v2 stage "
            f"(timm stages.N.* or official blockN.M.*); its first keys: {', '.join(list(state)[:5])}"
        )
    name, info = infer_architecture(state)
    if name is None:
        raise UnknownArchitectureError(
            f"{where} does not record which model it holds, and its shapes (depths {_show(info['depths'])}, "
            f"embed_dims {_show(info['embed_dims'])}) match no registered variant: build the model with "
            "pvt_np.create_model(name, ...) and call pvt_np.weights.load_weights(model, path)"
        )
    config = architecture(name, **{k: info[k] for k in info if k in ARCH_FIELDS or k == "num_classes"})
    imagenet_stem = (config["patch_size"], config["stride"], config["in_chans"]) == (7, 4, 3)
    dtype = "float64" if any(v.dtype == np.float64 for v in state.values()) else "float32"
    return name, config, IMAGENET_META if imagenet_stem else ModelMeta(), dtype


def load_model(
    source: str | Path | Checkpoint,
    *,
    device: str = "cpu",
    dtype: Any = None,
    trust_pickle: bool = False,
    **rates: float,
) -> PyramidVisionTransformerV2:
    """Rebuild the model a checkpoint holds and load its weights, from any file pvt_np reads.

    pvt_np's files (training checkpoints, weights ``.npz`` / ``.safetensors``, and the ``.pth``
    files it writes) record the variant, every architecture field, the dtype and what ``predict``
    needs (class names, input size, normalisation): the model comes back as saved, with
    ``model.meta`` filled. A foreign timm or official ``.pth`` is recognised from its shapes;
    its ``meta`` is ImageNet's preprocessing (224x224, ImageNet mean/std) with no class names.

    ``dtype`` overrides the saved dtype; ``rates`` (drop_rate, drop_path_rate, proj_drop_rate,
    attn_drop_rate) set the regularisation for fine-tuning. The weights are not initialised
    before being overwritten.
    """
    unknown = sorted(set(rates) - set(RATE_ARGS))
    if unknown:
        raise TypeError(f"load_model: unknown argument(s) {unknown}; the rates it takes: {', '.join(RATE_ARGS)}")
    backend.check_device(device)
    ckpt = source if isinstance(source, Checkpoint) else read_checkpoint(source, trust_pickle=trust_pickle)
    name, config, meta, saved_dtype = _model_spec(ckpt)
    model = build_model(name, config, rates, dtype=dtype or saved_dtype, seed=None, meta=meta)
    _load_into(model, ckpt, strict=True)
    return model.to(device=device) if device != "cpu" else model


# ---------------------------------------------------------------------------
# saving / exporting
# ---------------------------------------------------------------------------
def _numpy_state_dict(model: PyramidVisionTransformerV2) -> OrderedDict[str, np.ndarray]:
    return OrderedDict((k, np.ascontiguousarray(backend.to_numpy(v))) for k, v in model.state_dict().items())


def save_npz(model: PyramidVisionTransformerV2, path: str | Path) -> Path:
    """Write ``model``'s state_dict and its record (see :func:`model_record`) to ``path`` (.npz, atomically)."""
    path = Path(path)
    arrays = _numpy_state_dict(model)
    arrays[RECORD_KEY] = np.array(json.dumps(model_record(model)))
    with atomic_write(path) as f:
        np.savez(f, **arrays)
    return path


def export_timm_state_dict(model: PyramidVisionTransformerV2) -> dict[str, torch.Tensor]:
    """``model``'s weights as a timm ``pvt_v2`` state_dict (CPU torch tensors, model dtype).

    ``timm.create_model(name, num_classes=..., **overrides).load_state_dict(sd, strict=True)``
    accepts it when timm can build the architecture (see :func:`timm_constructor`); a CIFAR-stem
    model's weights fit only a timm model whose stem was replaced (``pvt_np.timm_twin.timm_twin``).
    """
    torch = _require_torch("export_timm_state_dict")
    return OrderedDict((k, torch.from_numpy(v.copy())) for k, v in _numpy_state_dict(model).items())


def export_official_state_dict(model: PyramidVisionTransformerV2) -> dict[str, torch.Tensor]:
    """``model``'s weights keyed as the official whai362/PVT ``PyramidVisionTransformerV2`` (torch tensors)."""
    return timm_to_official(export_timm_state_dict(model))


def timm_inexpressible(model: PyramidVisionTransformerV2, target: str = "timm") -> str | None:
    """Why timm's pvt_v2 (and the official code) cannot build ``model``'s architecture, as a paragraph
    saying what to do instead; None when it can."""
    cfg = model_config(model)
    lacks = []  # (what the model has, what timm does instead)
    if (cfg["patch_size"], cfg["stride"]) != (7, 4):
        stem = "the CIFAR stem" if _is_cifar_stem(cfg) else "a stem"
        lacks.append(
            (
                f"{stem} ({cfg['patch_size']}x{cfg['patch_size']} conv, stride {cfg['stride']})",
                "always builds the ImageNet stem (7x7 conv, stride 4), with no argument to change it",
            )
        )
    if cfg["linear"] and cfg["pool_size"] != 7:
        lacks.append((f"linear SRA pooling to {cfg['pool_size']}x{cfg['pool_size']}", "always pools to 7x7"))
    if not lacks:
        return None
    return (
        f"cannot write a {target} checkpoint of {describe_model(_model_name(model), cfg)}: the model has "
        f"{' and '.join(ours for ours, _ in lacks)}, but timm's pvt_v2, like the official whai362/PVT code, "
        f"{' and '.join(theirs for _, theirs in lacks)}, so no model timm builds fits these weights. "
        "Save it as .npz or .safetensors instead (pvt-np convert SRC model.safetensors, or "
        "pvt_np.weights.save_safetensors), which pvt_np.load_model reads back with its architecture; "
        "in PyTorch, pvt_np.timm_twin.timm_twin(model) builds a timm model with the stem swapped in."
    )


def timm_constructor(model: PyramidVisionTransformerV2) -> str:
    """The ``timm.create_model(...)`` call that builds ``model``'s architecture (for messages)."""
    cfg = model_config(model)
    name = _model_name(model)
    extra = {k: v for k, v in config_overrides(name, cfg).items() if k not in ("patch_size", "stride", "pool_size")}
    args = [repr(name or "pvt_v2_b0"), f"num_classes={cfg['num_classes']}"]
    args += [f"{k}={tuple(v) if isinstance(v, list) else v!r}" for k, v in extra.items()]
    return f"timm.create_model({', '.join(args)})"


def _save_torch(model: PyramidVisionTransformerV2, path: str | Path, layout: str) -> Path:
    """``torch.save`` a plain state_dict (what timm and the official code load) carrying pvt_np's
    record in its ``_metadata``: the map torch keeps beside every state_dict, keyed by module
    path, which ``load_state_dict`` consults only for the modules' own paths."""
    problem = timm_inexpressible(model, "timm" if layout == "timm" else "official whai362/PVT")
    if problem:
        raise ValueError(problem)
    torch = _require_torch(f"writing {path}")
    state = export_timm_state_dict(model)
    state = OrderedDict(timm_to_official(state) if layout == "official" else state)
    record = model_record(model)
    record["layout"] = layout
    state._metadata = OrderedDict({RECORD_KEY: {"record": json.dumps(record)}})  # type: ignore[attr-defined]
    path = Path(path)
    with atomic_write(path) as f:
        torch.save(state, f)
    return path


def save_timm_checkpoint(model: PyramidVisionTransformerV2, path: str | Path) -> Path:
    """Write a plain timm state_dict with ``torch.save`` (atomically); needs the ``torch`` extra.

    The file carries pvt_np's record, so :func:`load_model` rebuilds the model; a model timm
    cannot build (the CIFAR stem) is refused with a message saying what to use instead.
    """
    return _save_torch(model, path, "timm")


def save_official_checkpoint(model: PyramidVisionTransformerV2, path: str | Path) -> Path:
    """Write a plain state_dict in the official whai362/PVT layout with ``torch.save`` (atomically)."""
    return _save_torch(model, path, "official")


def save_safetensors(model: PyramidVisionTransformerV2, path: str | Path, layout: str = "timm") -> Path:
    """Write ``model``'s weights as .safetensors (atomically), keys in the ``layout`` 'timm' or 'official'.

    Uses the ``safetensors`` package when installed, else the writer here; the file's metadata
    holds pvt_np's record, so :func:`load_model` can rebuild the model from it. No torch needed.
    """
    if layout not in ("timm", "official"):
        raise ValueError(f"save_safetensors: layout must be 'timm' or 'official', got {layout!r}")
    path = Path(path)
    arrays = _numpy_state_dict(model)
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


# ---------------------------------------------------------------------------
# pvt-np convert
# ---------------------------------------------------------------------------
class _UsageError(Exception):
    """A bad command line (exit status 2)."""


_FORMAT_SUFFIXES = {
    "npz": NPZ_SUFFIXES,
    "safetensors": SAFETENSORS_SUFFIXES,
    "timm": TORCH_SUFFIXES,
    "official": TORCH_SUFFIXES,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``pvt-np convert``."""
    parser.add_argument(
        "src",
        metavar="SRC",
        help="checkpoint to read: a run's last.npz / best.npz, a weights .npz / .safetensors, a PyTorch .pth",
    )
    parser.add_argument("dst", metavar="DST", help="file to write (not overwritten unless --force)")
    parser.add_argument(
        "--model",
        choices=list_models(),
        metavar="NAME",
        help="variant the checkpoint holds (" + ", ".join(list_models()) + "); only for a foreign file whose "
        "shapes match no variant: pvt_np's files record it, and timm/official files are recognised by their shapes",
    )
    parser.add_argument(
        "--num-classes",
        type=int,
        default=None,
        metavar="K",
        help="classifier size with --model (default: read from the checkpoint's head; 0 when it has none)",
    )
    parser.add_argument("--cifar", action="store_true", help="with --model: the CIFAR config (3x3 stride-2 stem, "
                        "sr_ratios 4,2,1,1)")  # fmt: skip
    parser.add_argument(
        "--to",
        choices=FORMATS,
        default=None,
        help="output format (default: from DST's extension: .npz -> npz, .safetensors -> safetensors, "
        ".pth/.pt -> timm); 'official' writes the whai362/PVT key layout as .pth",
    )
    parser.add_argument("--force", action="store_true", help="overwrite DST if it exists")
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="unpickle .pth files with weights_only=False (only for files from a trusted source)",
    )
    parser.add_argument(
        "--show-keys", action="store_true", help="when SRC does not fit the model, list every mismatched key"
    )
    parser.epilog = "exit status: 0 done, 1 unreadable/mismatched checkpoint or missing dependency, 2 bad usage"


def _output_format(dst: Path, to: str | None) -> str:
    suffix = dst.suffix.lower()
    if to is None:
        for fmt in ("npz", "safetensors", "timm"):
            if suffix in _FORMAT_SUFFIXES[fmt]:
                return fmt
        raise _UsageError(
            f"cannot tell the output format from DST's extension {dst.suffix or '(none)'!r}: "
            f"use .npz, .safetensors or .pth, or pass --to {{{','.join(FORMATS)}}}"
        )
    if suffix not in _FORMAT_SUFFIXES[to]:
        raise _UsageError(f"--to {to} writes {'/'.join(_FORMAT_SUFFIXES[to])} files, but DST is {dst}")
    return to


def _convert(args: argparse.Namespace) -> str:
    src, dst = Path(args.src), Path(args.dst)
    fmt = _output_format(dst, args.to)
    if dst.exists() and not args.force:
        raise _UsageError(f"{dst} exists; pass --force to overwrite it")
    if dst.is_dir():
        raise _UsageError(f"{dst} is a directory")
    if args.num_classes is not None and args.num_classes < 0:
        raise _UsageError(f"--num-classes must be >= 0, got {args.num_classes}")
    ckpt = read_checkpoint(src, trust_pickle=args.trust_pickle)
    note = ""
    if ckpt.record is not None:
        recorded = ckpt.record.get("model_name")
        if args.model is not None and recorded is not None and args.model != recorded:
            raise ValueError(f"{src} holds a {recorded} but --model is {args.model}")
        rec_classes = ckpt.record["config"].get("num_classes")
        if args.num_classes is not None and args.num_classes != rec_classes:
            raise ValueError(f"{src} holds a model with {rec_classes} classes but --num-classes is {args.num_classes}")
        model = load_model(ckpt)
    elif args.model is None:
        try:
            model = load_model(ckpt)
        except UnknownArchitectureError as err:
            raise _UsageError(f"--model is required: {err}") from err
        if args.num_classes is not None and args.num_classes != model.num_classes:
            raise ValueError(
                f"{src} holds a model with {model.num_classes} classes but --num-classes is {args.num_classes}"
            )
        if args.cifar and not _is_cifar_stem(model_config(model)):
            raise ValueError(
                f"{src} holds a model with a {model.patch_size}x{model.patch_size} stem, but --cifar was given"
            )
        note = ", recognised from its shapes"
    else:
        num_classes = args.num_classes
        if num_classes is None:
            head = ckpt.state_dict.get("head.weight")
            num_classes = int(head.shape[0]) if head is not None and head.ndim == 2 else 0
        model = _load_into(create_model(args.model, num_classes=num_classes, cifar=args.cifar), ckpt, strict=True)
    if fmt == "npz":
        save_npz(model, dst)
    elif fmt == "safetensors":
        save_safetensors(model, dst)
    elif fmt == "timm":
        save_timm_checkpoint(model, dst)
        note += f"; in timm: {timm_constructor(model)}"
    else:
        save_official_checkpoint(model, dst)
    what = describe_model(_model_name(model), model_config(model))
    return f"wrote {dst} ({fmt}, {len(ckpt.state_dict)} tensors, {what}{note})"


def run(args: argparse.Namespace) -> int:
    """Run ``pvt-np convert``; returns the exit status (messages on stdout / stderr)."""
    try:
        message = _convert(args)
    except _UsageError as err:
        print(f"pvt-np convert: error: {err}", file=sys.stderr)
        return 2
    except WeightsMismatchError as err:
        print(f"pvt-np convert: error: {err}", file=sys.stderr)
        if args.show_keys:
            print("\n".join(err.details), file=sys.stderr)
        return 1
    except (ValueError, ImportError, OSError) as err:
        print(f"pvt-np convert: error: {err}", file=sys.stderr)
        return 1
    print(message)
    return 0
