"""Loading a checkpoint into a model (:func:`load_weights`) or rebuilding the model it holds (:func:`load_model`)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pvt_np import backend
from pvt_np.io.infer import architecture_differences, infer_architecture, stage_count
from pvt_np.io.keys import detect_layout, official_key_to_timm, official_to_timm, timm_key_to_official
from pvt_np.io.read import Checkpoint, read_checkpoint
from pvt_np.io.record import IMAGENET_META, describe_model, model_config, model_name, show
from pvt_np.models.pvt_v2 import PyramidVisionTransformerV2
from pvt_np.models.registry import (
    ARCH_FIELDS,
    MODEL_CONFIGS,
    RATE_ARGS,
    ModelMeta,
    architecture,
    build_model,
    list_models,
)
from pvt_np.nn.module import describe_mismatches, state_dict_mismatches


class UnknownArchitectureError(ValueError):
    """A checkpoint that neither records its model nor matches a registered variant by its shapes."""


class WeightsMismatchError(ValueError):
    """A checkpoint that does not fit the model. The message is short (for another variant, one line
    naming what the file holds); ``details`` lists every missing, unexpected and mis-shaped key."""

    def __init__(self, message: str, details: list[str]) -> None:
        super().__init__(message)
        self.details = details


_LISTED_KEYS = 8  # keys named per kind in a message; the rest are in WeightsMismatchError.details


def _mismatch_error(
    model: PyramidVisionTransformerV2,
    ckpt: Checkpoint,
    state: Mapping[str, np.ndarray],
    layout: str,
    found: Mapping[str, list[str]],
) -> WeightsMismatchError:
    details = describe_mismatches(found)
    src = repr(ckpt.source) if ckpt.source != "state_dict" else "the state_dict"
    ours_name, ours = model_name(model), model_config(model)
    if ckpt.record is not None:
        theirs_name, theirs, verb = ckpt.record.get("model_name"), ckpt.record["config"], "holds"
    else:
        theirs_name, theirs = infer_architecture(state)
        verb = "looks like"
    # Only a recorded model or a registered variant recognised from the shapes is "another model";
    # shapes that match no variant are more likely a few damaged keys, which are listed instead.
    known = ckpt.record is not None or theirs_name is not None
    differences = architecture_differences(theirs, ours) if known and "depths" in theirs else []
    count = sum(len(v) for v in found.values())
    if differences:
        build = f"pvt_np.load_model({src})" if ckpt.source != "state_dict" else "a model built to match"
        return WeightsMismatchError(
            f"load_weights: {src} {verb} {describe_model(theirs_name, theirs)}, but the model is "
            f"{describe_model(ours_name, ours)} ({'; '.join(differences)}): {build} builds the model it holds "
            f"[{count} keys do not fit: their list is in this error's .details, pvt-np convert --show-keys]",
            details,
        )
    if not stage_count(state):
        first = ", ".join(list(state)[:5])
        return WeightsMismatchError(
            f"load_weights: {src} holds no PVT v2 weights: none of its {len(state)} keys is a PVT v2 stage "
            f"(timm stages.N.* or official blockN.M.*); its first keys: {first}",
            details,
        )
    who = type(model).__name__ + (f" ({ours_name})" if ours_name else "")
    kind = "official whai362/PVT key layout" if layout == "official" else "timm/pvt_np key layout"
    return WeightsMismatchError(
        f"load_weights into {who} from {src} ({kind}): " + " | ".join(describe_mismatches(found, _LISTED_KEYS)),
        details,
    )


def load_into(model: PyramidVisionTransformerV2, ckpt: Checkpoint, strict: bool) -> PyramidVisionTransformerV2:
    """Copy what :func:`read_checkpoint` found into ``model``, either key layout (see :func:`load_weights`)."""
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

    expected = {k: p.shape for k, p in model.named_parameters()}
    found = state_dict_mismatches(expected, state, strict, display)
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
    return load_into(model, ckpt, strict)


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
    if not stage_count(state):
        raise UnknownArchitectureError(
            f"{where} holds no PVT v2 weights: none of its {len(state)} keys is a PVT v2 stage "
            f"(timm stages.N.* or official blockN.M.*); its first keys: {', '.join(list(state)[:5])}"
        )
    name, info = infer_architecture(state)
    if name is None:
        raise UnknownArchitectureError(
            f"{where} does not record which model it holds, and its shapes (depths {show(info['depths'])}, "
            f"embed_dims {show(info['embed_dims'])}) match no registered variant: build the model with "
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
    load_into(model, ckpt, strict=True)
    return model.to(device=device) if device != "cpu" else model
