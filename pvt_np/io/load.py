"""Loading a checkpoint into a model (:func:`load_weights`) or rebuilding the model it holds (:func:`load_model`)."""

from __future__ import annotations

import inspect
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
    create_segmenter,
    list_models,
)
from pvt_np.models.semantic_fpn import SemanticFPNHead, SemanticSegmenter
from pvt_np.nn import skip_init
from pvt_np.nn.module import describe_mismatches, state_dict_mismatches

# create_segmenter's arguments that shape the head; the rest of a segmentation run's model_overrides shape the
# backbone. Their defaults are create_segmenter's, for a run that did not override them.
_HEAD_ARGS = ("fpn_channels", "head_channels", "num_groups", "levels")
_HEAD_DEFAULTS = {k: inspect.signature(create_segmenter).parameters[k].default for k in _HEAD_ARGS}
# The side of the generated scenes a segmentation run without image_size trained on (SegmentationTrainer's).
_SCENES_DEFAULT_SIZE = 64


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


def is_segmentation(ckpt: Checkpoint) -> bool:
    """Whether ``ckpt`` is a segmentation run's checkpoint (a backbone and a Semantic FPN head)."""
    return ckpt.kind == "training" and (ckpt.training or {}).get("task") == "segmentation"


def _load_segmenter_state(model: SemanticSegmenter, ckpt: Checkpoint, strict: bool) -> SemanticSegmenter:
    """A segmenter's weights: its own keys (``backbone.*``, ``head.*``), in pvt_np's layout only."""
    src = repr(ckpt.source) if ckpt.source != "state_dict" else "the state_dict"
    expected = {k: p.shape for k, p in model.named_parameters()}
    found = state_dict_mismatches(expected, ckpt.state_dict, strict)
    if any(found.values()):
        raise WeightsMismatchError(
            f"load_weights into SemanticSegmenter from {src}: " + " | ".join(describe_mismatches(found, _LISTED_KEYS)),
            describe_mismatches(found),
        )
    model.load_state_dict(ckpt.state_dict, strict=strict)
    return model


def load_into(model: Any, ckpt: Checkpoint, strict: bool) -> Any:
    """Copy what :func:`read_checkpoint` found into ``model``, either key layout (see :func:`load_weights`)."""
    if isinstance(model, SemanticSegmenter):
        return _load_segmenter_state(model, ckpt, strict)
    if is_segmentation(ckpt):
        raise WeightsMismatchError(
            f"load_weights: {ckpt.source!r} is a segmentation run's checkpoint (a PVT v2 backbone and a Semantic FPN "
            f"head), but the model is a {type(model).__name__}: pvt_np.load_model({ckpt.source!r}) rebuilds the "
            "segmenter it holds (its backbone is the segmenter's .backbone)",
            [],
        )
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
    model: PyramidVisionTransformerV2 | SemanticSegmenter,
    source: str | Path | Mapping[str, Any] | Checkpoint,
    strict: bool = True,
    *,
    trust_pickle: bool = False,
) -> PyramidVisionTransformerV2 | SemanticSegmenter:
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
    shapes are always checked. A :class:`~pvt_np.models.SemanticSegmenter` takes its own keys
    (``backbone.*``, ``head.*``, as a segmentation run saves them); a segmentation run's checkpoint
    goes into a segmenter only.
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


def _segmentation_spec(ckpt: Checkpoint) -> tuple[str, dict[str, Any], dict[str, Any], int, ModelMeta, str]:
    """(name, backbone architecture, head arguments, num_classes, meta, dtype) of a segmentation run's model."""
    where = ckpt.source
    run = ckpt.training or {}
    config = run.get("config") or {}
    name = config.get("model")
    if name not in MODEL_CONFIGS:
        raise ValueError(
            f"{where}: the segmentation checkpoint names no model this pvt_np knows ({name!r}; known: "
            f"{', '.join(list_models())})"
        )
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in (config.get("model_overrides") or {}).items()}
    head = {**_HEAD_DEFAULTS, **{k: overrides.pop(k) for k in _HEAD_ARGS if k in overrides}}
    for rate in RATE_ARGS:  # training settings, not architecture: load_model's own rates set them
        overrides.pop(rate, None)
    cifar = overrides.pop("cifar", False)
    try:
        backbone = architecture(name, 0, bool(cifar), **overrides)
    except ValueError as err:
        raise ValueError(f"{where}: the run's model_overrides do not build a {name} backbone: {err}") from err
    num_classes, classes = run.get("num_classes"), run.get("classes")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"{where}: the segmentation checkpoint records no number of classes >= 1 ({num_classes!r})")
    if classes is not None and len(classes) != num_classes:
        raise ValueError(f"{where}: the checkpoint names {len(classes)} classes for a head of {num_classes}")
    normalize = run.get("normalize") or {}
    side = config.get("image_size") or (_SCENES_DEFAULT_SIZE if config.get("dataset") == "scenes" else None)
    meta = ModelMeta(
        classes=classes,
        input_size=None if side is None else (side, side),
        mean=normalize.get("mean"),
        std=normalize.get("std"),
    )
    return name, backbone, head, num_classes, meta, str(config.get("dtype", "float32"))


def _build_segmenter(ckpt: Checkpoint, dtype: Any, rates: dict[str, float]) -> SemanticSegmenter:
    """The segmenter a segmentation run's checkpoint holds, its weights not yet loaded (nor initialised)."""
    name, arch, head_args, num_classes, meta, saved_dtype = _segmentation_spec(ckpt)
    backbone = build_model(name, arch, rates, dtype=dtype or saved_dtype, seed=None)
    try:
        with skip_init():
            head = SemanticFPNHead(
                backbone.embed_dims, head_args["fpn_channels"], head_args["head_channels"], num_classes,
                head_args["num_groups"], dtype=backbone.dtype, levels=head_args["levels"],
            )  # fmt: skip
    except (ValueError, TypeError) as err:
        raise ValueError(
            f"{ckpt.source}: the run's head settings {head_args} build no Semantic FPN head: {err}"
        ) from err
    model = SemanticSegmenter(backbone, head)
    model.model_name = name
    model.meta = meta
    return model


def load_model(
    source: str | Path | Checkpoint,
    *,
    device: str = "cpu",
    dtype: Any = None,
    trust_pickle: bool = False,
    **rates: float,
) -> PyramidVisionTransformerV2 | SemanticSegmenter:
    """Rebuild the model a checkpoint holds and load its weights, from any file pvt_np reads.

    pvt_np's files (training checkpoints, weights ``.npz`` / ``.safetensors``, and the ``.pth``
    files it writes) record the variant, every architecture field, the dtype and what ``predict``
    needs (class names, input size, normalisation): the model comes back as saved, with
    ``model.meta`` filled. A foreign timm or official ``.pth`` is recognised from its shapes;
    its ``meta`` is ImageNet's preprocessing (224x224, ImageNet mean/std) with no class names.

    A segmentation run's checkpoint (``pvt-np train --task segmentation``: last.npz / best.npz) gives
    its :class:`~pvt_np.models.SemanticSegmenter`: the backbone and head its ``model_overrides`` built
    (``levels``, ``fpn_channels``, ``head_channels``, ``num_groups`` and the architecture fields), its
    number of classes and weights (strict), and ``model.meta`` with its class names, normalisation and
    training image size (the run's ``image_size``; 64 for scenes without one; None for a folder at its
    images' own size, which the checkpoint does not record).

    ``dtype`` overrides the saved dtype; ``rates`` (drop_rate, drop_path_rate, proj_drop_rate,
    attn_drop_rate) set the regularisation for fine-tuning. The weights are not initialised
    before being overwritten.
    """
    unknown = sorted(set(rates) - set(RATE_ARGS))
    if unknown:
        raise TypeError(f"load_model: unknown argument(s) {unknown}; the rates it takes: {', '.join(RATE_ARGS)}")
    backend.check_device(device)
    ckpt = source if isinstance(source, Checkpoint) else read_checkpoint(source, trust_pickle=trust_pickle)
    if is_segmentation(ckpt):
        model: PyramidVisionTransformerV2 | SemanticSegmenter = _build_segmenter(ckpt, dtype, rates)
    else:
        name, config, meta, saved_dtype = _model_spec(ckpt)
        model = build_model(name, config, rates, dtype=dtype or saved_dtype, seed=None, meta=meta)
    load_into(model, ckpt, strict=True)
    return model.to(device=device) if device != "cpu" else model
