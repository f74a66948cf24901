"""Reading any checkpoint into NumPy arrays: its content, not its name, says which format it is."""

from __future__ import annotations

import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from pvt_np.io.checkpoint import META_KEY, load_checkpoint
from pvt_np.io.filekind import file_kind, not_a_checkpoint
from pvt_np.io.npz import NPZ_SUFFIXES, read_npz
from pvt_np.io.record import RECORD_FORMAT_VERSION, RECORD_KEY, parse_record
from pvt_np.io.safetensors import SAFETENSORS_SUFFIXES, read_safetensors
from pvt_np.io.state import unwrap
from pvt_np.io.torch import TORCH_SUFFIXES, read_torch, torch_record
from pvt_np.models.registry import ARCH_FIELDS, MODEL_CONFIGS, ModelMeta, architecture


class Checkpoint(NamedTuple):
    """What :func:`read_checkpoint` found.

    state_dict: NumPy arrays keyed as in the file. record: pvt_np's model record (see
    :func:`~pvt_np.io.record.model_record`), None for a foreign file and for a segmentation run's checkpoint
    (``training['task'] == 'segmentation'``: its run settings, classes and normalisation describe the model).
    source: the path. kind: 'training' (a run's checkpoint), 'weights' (a weights file pvt_np wrote) or 'foreign'.
    training: a training checkpoint's task, run settings, progress and data description.
    """

    state_dict: OrderedDict[str, np.ndarray]
    record: dict[str, Any] | None
    source: str
    kind: str = "foreign"
    training: dict[str, Any] | None = None


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
    if isinstance(source, Mapping):
        record = torch_record(source, "state_dict")  # a state_dict torch.load returned keeps its _metadata
        return Checkpoint(unwrap(source, "state_dict"), record, "state_dict", "weights" if record else "foreign")
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
        arrays, record = read_npz(path)
        return Checkpoint(unwrap(arrays, str(path)), record, str(path), "weights" if record else "foreign")
    if kind == "safetensors":
        arrays, metadata = read_safetensors(path)
        record = parse_record(metadata[RECORD_KEY], str(path)) if RECORD_KEY in metadata else None
        return Checkpoint(unwrap(arrays, str(path)), record, str(path), "weights" if record else "foreign")
    if kind in ("torch-zip", "torch-pickle"):
        obj = read_torch(path, trust_pickle)
        record = torch_record(obj, str(path))
        return Checkpoint(unwrap(obj, str(path)), record, str(path), "weights" if record else "foreign")
    raise ValueError(not_a_checkpoint(path, kind))


def _is_training_checkpoint(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return f"{META_KEY}.npy" in archive.namelist()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return False  # the .npz reader explains what is wrong with the file


# What loading a model needs from a training checkpoint; the optimizer's moments are not read.
_TRAINING_KEYS = (
    "task", "config", "num_classes", "classes", "normalize", "model_record", "model", "progress", "best_accuracy",
)  # fmt: skip


def _read_training(path: Path) -> Checkpoint:
    payload = load_checkpoint(path, keys=_TRAINING_KEYS)
    if not isinstance(payload.get("model"), Mapping):
        raise ValueError(f"{path}: the training checkpoint holds no model weights")
    state = unwrap(payload.pop("model"), str(path))
    if payload.get("task") == "segmentation":  # a backbone and a Semantic FPN head: no classification record
        return Checkpoint(state, None, str(path), "training", payload)
    record = payload.get("model_record") or _record_from_run(payload, str(path))
    return Checkpoint(state, parse_record(record, str(path)), str(path), "training", payload)


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
