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

pvt_np's own ``.npz`` also records the model's name and architecture, so
:func:`load_model` rebuilds the model without being told what it is.
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
from pvt_np.models.registry import MODEL_CONFIGS, create_model, list_models
from pvt_np.nn.module import state_dict_mismatches

if TYPE_CHECKING:  # torch is optional at runtime
    import torch

__all__ = [
    "FORMATS",
    "Checkpoint",
    "add_arguments",
    "detect_layout",
    "export_official_state_dict",
    "export_timm_state_dict",
    "load_model",
    "load_weights",
    "model_config",
    "official_key_to_timm",
    "official_to_timm",
    "read_checkpoint",
    "run",
    "save_npz",
    "save_official_checkpoint",
    "save_safetensors",
    "save_timm_checkpoint",
    "timm_key_to_official",
    "timm_to_official",
]

#: Output formats of ``pvt-np convert --to``.
FORMATS = ("npz", "timm", "official", "safetensors")

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
NPZ_SUFFIXES = (".npz",)
SAFETENSORS_SUFFIXES = (".safetensors",)

RECORD_KEY = "__pvt_np_record__"  # .npz entry / safetensors metadata key holding the JSON record
RECORD_FORMAT_VERSION = 1

# Keys under which training scripts nest the state_dict (timm: 'state_dict', DeiT/official PVT: 'model').
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module", "net")
# Prefixes that wrappers add to every key (DistributedDataParallel, torch.compile).
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")

_INSTALL_TORCH = "install the 'torch' extra: pip install 'pvt_np[torch]'"

# Architecture fields recorded in a .npz and passed back to create_model / the constructor.
_ARCH_FIELDS = (
    "in_chans",
    "depths",
    "embed_dims",
    "num_heads",
    "sr_ratios",
    "mlp_ratios",
    "qkv_bias",
    "linear",
    "patch_size",
    "stride",
    "pool_size",
)


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
def model_config(model: PyramidVisionTransformerV2) -> dict[str, Any]:
    """The architecture of ``model`` as JSON-ready values (what a .npz records).

    Holds num_classes and every field of :data:`_ARCH_FIELDS`; regularisation rates
    (dropout, drop-path) are training settings and are not part of it.
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


def _make_record(model: PyramidVisionTransformerV2) -> dict[str, Any]:
    return {
        "format": "pvt_np",
        "format_version": RECORD_FORMAT_VERSION,
        "model_name": _model_name(model),
        "config": model_config(model),
        "dtype": str(np.dtype(model.dtype)),
        "layout": "timm",
    }


def _parse_record(text: str, where: str) -> dict[str, Any]:
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where}: the pvt_np model record is not valid JSON ({err})") from err
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise ValueError(f"{where}: the pvt_np model record has no 'config' mapping")
    return record


def _infer_checkpoint_config(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """What the shapes of a timm-layout state_dict say about the architecture (best effort)."""
    shapes = {k: tuple(np.shape(v)) for k, v in state_dict.items()}
    info: dict[str, Any] = {}
    stage_blocks: dict[int, set[int]] = {}
    for k in shapes:
        m = re.match(r"^stages\.(\d+)\.blocks\.(\d+)\.", k)
        if m:
            stage_blocks.setdefault(int(m[1]), set()).add(int(m[2]))
    if stage_blocks:
        n = max(stage_blocks) + 1
        info["depths"] = [len(stage_blocks.get(i, ())) for i in range(n)]
        dims = []
        ratios = []
        for i in range(n):
            norm = shapes.get(f"stages.{i}.norm.weight")
            fc1 = shapes.get(f"stages.{i}.blocks.0.mlp.fc1.weight")
            dims.append(norm[0] if norm else None)
            ratios.append(fc1[0] / norm[0] if norm and fc1 and norm[0] else None)
        info["embed_dims"] = dims
        info["mlp_ratios"] = ratios
        sr = [s for k, s in shapes.items() if re.match(r"^stages\.\d+\.blocks\.\d+\.attn\.sr\.weight$", k)]
        info["linear"] = bool(sr) and all(len(s) == 4 and s[2:] == (1, 1) for s in sr)
    stem = shapes.get("patch_embed.proj.weight")
    if stem and len(stem) == 4:
        info["patch_size"] = stem[2]
    head = shapes.get("head.weight")
    info["num_classes"] = head[0] if head else 0
    return info


def _guess_model_name(info: Mapping[str, Any]) -> str | None:
    """The registered variant whose depths, widths, MLP ratios and attention kind match ``info``."""
    if "depths" not in info:
        return None
    for name in list_models():
        cfg = MODEL_CONFIGS[name]
        if (
            list(cfg["depths"]) == info["depths"]
            and list(cfg["embed_dims"]) == info["embed_dims"]
            and [float(r) for r in cfg["mlp_ratios"]] == [float(r) if r else -1.0 for r in info["mlp_ratios"]]
            and bool(cfg.get("linear", False)) == info["linear"]
        ):
            return name
    return None


def _describe(name: str | None, depths: Any, embed_dims: Any) -> str:
    arch = f"depths {tuple(depths)}, embed_dims {tuple(embed_dims)}"
    return f"{name} ({arch})" if name else arch


# ---------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------
class Checkpoint(NamedTuple):
    """What :func:`read_checkpoint` found: NumPy arrays keyed as in the file, and pvt_np's record if any."""

    state_dict: OrderedDict[str, np.ndarray]
    record: dict[str, Any] | None
    source: str


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
        raise ValueError(f"cannot read {path} as .npz ({err}); the file may be truncated or corrupt") from err
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
    """Read a checkpoint into NumPy arrays, keyed as in the file (timm or official layout).

    ``source`` is a path (``.npz``; ``.safetensors``; ``.pth``/``.pt``/``.bin``/``.ckpt``
    through PyTorch) or an in-memory mapping (a state_dict of torch tensors or arrays).
    Wrappers such as ``{'model': ...}`` / ``{'state_dict': ...}`` and ``module.`` prefixes are
    removed. ``.pth`` files are unpickled with ``weights_only=True`` unless ``trust_pickle``.

    Raises FileNotFoundError for a missing file, ImportError when a ``.pth`` needs the
    absent PyTorch, ValueError for an unknown extension or a corrupt/truncated file.
    """
    if isinstance(source, Mapping):
        return Checkpoint(_unwrap(source, "state_dict"), None, "state_dict")
    path = Path(source)
    suffix = path.suffix.lower()
    known = NPZ_SUFFIXES + SAFETENSORS_SUFFIXES + TORCH_SUFFIXES
    if suffix not in known:
        raise ValueError(f"{path}: unknown checkpoint extension {path.suffix or '(none)'!r}; expected one of {known}")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist" + (" (it is a directory)" if path.is_dir() else ""))
    record = None
    if suffix in NPZ_SUFFIXES:
        arrays, record = _read_npz(path)
        state = _unwrap(arrays, str(path))
    elif suffix in SAFETENSORS_SUFFIXES:
        arrays, metadata = _read_safetensors(path)
        if RECORD_KEY in metadata:
            record = _parse_record(metadata[RECORD_KEY], str(path))
        state = _unwrap(arrays, str(path))
    else:
        state = _unwrap(_read_torch(path, trust_pickle), str(path))
    return Checkpoint(state, record, str(path))


# ---------------------------------------------------------------------------
# loading into a model
# ---------------------------------------------------------------------------
def _mismatch_report(
    model: PyramidVisionTransformerV2,
    state: Mapping[str, np.ndarray],
    original_names: Mapping[str, str],
    layout: str,
    strict: bool,
) -> list[str]:
    """Missing / unexpected / mis-shaped keys, named as in the file (official names show pvt_np's too)."""
    params = dict(model.named_parameters())

    def file_name(timm_key: str) -> str:
        if layout != "official":
            return timm_key
        return f"{original_names.get(timm_key, timm_key_to_official(timm_key))} (pvt_np: {timm_key})"

    return state_dict_mismatches({k: p.shape for k, p in params.items()}, state, strict, file_name)


def _hints(
    model: PyramidVisionTransformerV2, state: Mapping[str, np.ndarray], record: dict[str, Any] | None
) -> list[str]:
    hints = []
    cfg = model_config(model)
    name = _model_name(model)
    info = _infer_checkpoint_config(state)
    guessed = _guess_model_name(info)
    if record is not None:
        rcfg = record["config"]
        rname = record.get("model_name")
        if (rname, rcfg.get("depths"), rcfg.get("embed_dims")) != (name, cfg["depths"], cfg["embed_dims"]):
            hints.append(
                f"the file was saved from {_describe(rname, rcfg.get('depths', ()), rcfg.get('embed_dims', ()))}, "
                f"the model is {_describe(name, cfg['depths'], cfg['embed_dims'])}; "
                "pvt_np.weights.load_model(path) rebuilds the saved model"
            )
    elif "depths" in info and (
        info["depths"] != cfg["depths"] or info["embed_dims"] != cfg["embed_dims"] or info["linear"] != cfg["linear"]
    ):
        theirs = _describe(guessed or "an unregistered variant", info["depths"], info["embed_dims"])
        ours = _describe(name, cfg["depths"], cfg["embed_dims"])
        hints.append(
            f"the checkpoint looks like {theirs}{' with linear SRA' if info['linear'] else ''}, "
            f"the model is {ours}{' with linear SRA' if cfg['linear'] else ''}"
        )
    elif "depths" not in info:
        hints.append(
            "no PVT v2 stage keys (timm stages.N.* or official blockN.M.*) found: is this a PVT v2 checkpoint?"
        )
    if info.get("num_classes", cfg["num_classes"]) != cfg["num_classes"]:
        hints.append(
            f"the checkpoint's head has {info['num_classes']} classes, the model's {cfg['num_classes']}: "
            f"build the model with num_classes={info['num_classes']} (pvt-np convert --num-classes)"
        )
    patch = info.get("patch_size")
    if patch is not None and patch != cfg["patch_size"]:
        hints.append(
            f"the checkpoint's stem conv is {patch}x{patch}, the model's {cfg['patch_size']}x{cfg['patch_size']}"
            + (" (a CIFAR config: create_model(..., cifar=True), pvt-np convert --cifar)" if patch == 3 else "")
        )
    return hints


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
    problems = _mismatch_report(model, state, original_names, layout, strict)
    if problems:
        name = _model_name(model)
        who = f"{type(model).__name__}" + (f" ({name})" if name else "")
        src = ckpt.source if ckpt.source != "state_dict" else "a state_dict"
        kind = "official whai362/PVT key layout" if layout == "official" else "timm/pvt_np key layout"
        lines = [f"load_weights into {who} from {src} ({kind}): " + " | ".join(problems)]
        lines += [f"hint: {h}" for h in _hints(model, state, ckpt.record)]
        raise ValueError("\n".join(lines))
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

    ``source``: a pvt_np ``.npz``, a ``.safetensors`` file, a PyTorch ``.pth``/``.pt``/``.bin``/
    ``.ckpt`` (needs the ``torch`` extra), or an in-memory state_dict (torch tensors or arrays).
    timm/pvt_np and official whai362/PVT key layouts are told apart automatically; common
    wrappers are removed (see :func:`read_checkpoint`).

    Missing, unexpected and mis-shaped keys are all named in one ValueError (official-layout
    keys by their name in the file, with the pvt_np name beside it), followed by hints such as
    which variant the checkpoint looks like. ``strict=False`` ignores missing and unexpected
    keys; shapes are always checked.
    """
    ckpt = source if isinstance(source, Checkpoint) else read_checkpoint(source, trust_pickle=trust_pickle)
    return _load_into(model, ckpt, strict)


def _build_from_record(record: dict[str, Any], where: str, **kwargs: Any) -> PyramidVisionTransformerV2:
    cfg = dict(record["config"])
    arch = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items() if k in _ARCH_FIELDS}
    unknown = sorted(set(cfg) - set(_ARCH_FIELDS) - {"num_classes"})
    if unknown:
        raise ValueError(f"{where}: the model record has unknown config fields {unknown} (newer pvt_np?)")
    num_classes = int(cfg.get("num_classes", 1000))
    dtype = kwargs.pop("dtype", None) or record.get("dtype", "float32")
    device = kwargs.pop("device", "cpu")
    name = record.get("model_name")
    if name is not None:
        if name not in MODEL_CONFIGS:
            raise ValueError(
                f"{where}: records model {name!r}, which this pvt_np does not know ({', '.join(list_models())})"
            )
        return create_model(name, num_classes=num_classes, dtype=dtype, device=device, **arch, **kwargs)
    model = PyramidVisionTransformerV2(
        num_classes=num_classes, dtype=backend.check_float_dtype(dtype), **arch, **kwargs
    )
    return model.to(device=device) if device != "cpu" else model


def load_model(
    path: str | Path, *, device: str = "cpu", dtype: Any = None, **kwargs: Any
) -> PyramidVisionTransformerV2:
    """Rebuild the model saved by :func:`save_npz` (or :func:`save_safetensors`) and load its weights.

    The architecture and dtype come from the file's record; ``dtype`` overrides the saved dtype and
    ``kwargs`` (drop_rate, drop_path_rate, ...) go to :func:`~pvt_np.models.create_model`.
    """
    ckpt = read_checkpoint(path)
    if ckpt.record is None:
        raise ValueError(
            f"{path} carries no pvt_np model record (only files written by pvt_np.weights.save_npz / "
            "save_safetensors do): build the model with create_model(name, num_classes=...) and call load_weights"
        )
    model = _build_from_record(ckpt.record, str(path), device=device, dtype=dtype, **kwargs)
    return _load_into(model, ckpt, strict=True)


# ---------------------------------------------------------------------------
# saving / exporting
# ---------------------------------------------------------------------------
def _numpy_state_dict(model: PyramidVisionTransformerV2) -> OrderedDict[str, np.ndarray]:
    return OrderedDict((k, np.ascontiguousarray(backend.to_numpy(v))) for k, v in model.state_dict().items())


def save_npz(model: PyramidVisionTransformerV2, path: str | Path) -> Path:
    """Write ``model``'s state_dict and its record (name, config, dtype) to ``path`` (.npz, atomically)."""
    path = Path(path)
    arrays = _numpy_state_dict(model)
    arrays[RECORD_KEY] = np.array(json.dumps(_make_record(model)))
    with atomic_write(path) as f:
        np.savez(f, **arrays)
    return path


def export_timm_state_dict(model: PyramidVisionTransformerV2) -> dict[str, torch.Tensor]:
    """``model``'s weights as a timm ``pvt_v2`` state_dict (CPU torch tensors, model dtype).

    ``timm.create_model(name, num_classes=...).load_state_dict(sd, strict=True)`` accepts it.
    """
    torch = _require_torch("export_timm_state_dict")
    return OrderedDict((k, torch.from_numpy(v.copy())) for k, v in _numpy_state_dict(model).items())


def export_official_state_dict(model: PyramidVisionTransformerV2) -> dict[str, torch.Tensor]:
    """``model``'s weights keyed as the official whai362/PVT ``PyramidVisionTransformerV2`` (torch tensors)."""
    return timm_to_official(export_timm_state_dict(model))


def _save_torch(state_dict: Mapping[str, Any], path: str | Path) -> Path:
    torch = _require_torch(f"writing {path}")
    path = Path(path)
    with atomic_write(path) as f:
        torch.save(dict(state_dict), f)
    return path


def save_timm_checkpoint(model: PyramidVisionTransformerV2, path: str | Path) -> Path:
    """Write a plain timm state_dict with ``torch.save`` (atomically); needs the ``torch`` extra."""
    return _save_torch(export_timm_state_dict(model), path)


def save_official_checkpoint(model: PyramidVisionTransformerV2, path: str | Path) -> Path:
    """Write a plain state_dict in the official whai362/PVT layout with ``torch.save`` (atomically)."""
    return _save_torch(export_official_state_dict(model), path)


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
    record = _make_record(model)
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
    parser.add_argument("src", metavar="SRC", help="checkpoint to read: .npz, .safetensors, .pth/.pt/.bin/.ckpt")
    parser.add_argument("dst", metavar="DST", help="file to write (not overwritten unless --force)")
    parser.add_argument(
        "--model",
        choices=list_models(),
        metavar="NAME",
        help="variant the checkpoint holds (" + ", ".join(list_models()) + "); "
        "optional when SRC is a pvt_np .npz/.safetensors, which records it",
    )
    parser.add_argument(
        "--num-classes",
        type=int,
        default=None,
        metavar="K",
        help="classifier size (default: read from the checkpoint's head; 0 when it has none)",
    )
    parser.add_argument("--cifar", action="store_true", help="the CIFAR config (3x3 stride-2 stem, sr_ratios 4,2,1,1)")
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
    if ckpt.record is not None:
        recorded = ckpt.record.get("model_name")
        if args.model is not None and recorded is not None and args.model != recorded:
            raise ValueError(f"{src} holds a {recorded} but --model is {args.model}")
        rec_classes = ckpt.record["config"].get("num_classes")
        if args.num_classes is not None and args.num_classes != rec_classes:
            raise ValueError(f"{src} holds a model with {rec_classes} classes but --num-classes is {args.num_classes}")
        model = _build_from_record(ckpt.record, str(src))
    else:
        if args.model is None:
            raise _UsageError(f"--model is required: {src} does not record which variant it holds")
        num_classes = args.num_classes
        if num_classes is None:
            head = ckpt.state_dict.get("head.weight")
            num_classes = int(head.shape[0]) if head is not None and head.ndim == 2 else 0
        model = create_model(args.model, num_classes=num_classes, cifar=args.cifar)
    _load_into(model, ckpt, strict=True)
    if fmt == "npz":
        save_npz(model, dst)
    elif fmt == "safetensors":
        save_safetensors(model, dst)
    elif fmt == "timm":
        save_timm_checkpoint(model, dst)
    else:
        save_official_checkpoint(model, dst)
    name = _model_name(model) or "PyramidVisionTransformerV2"
    return f"wrote {dst} ({fmt}, {len(ckpt.state_dict)} tensors, {name}, {model.num_classes} classes)"


def run(args: argparse.Namespace) -> int:
    """Run ``pvt-np convert``; returns the exit status (messages on stdout / stderr)."""
    try:
        message = _convert(args)
    except _UsageError as err:
        print(f"pvt-np convert: error: {err}", file=sys.stderr)
        return 2
    except (ValueError, ImportError, OSError) as err:
        print(f"pvt-np convert: error: {err}", file=sys.stderr)
        return 1
    print(message)
    return 0
