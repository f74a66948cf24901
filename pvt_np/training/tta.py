"""Test-time augmentation and the test-set evaluation: the views each mode averages, and :func:`evaluate`."""

from __future__ import annotations

from typing import Any

import numpy as np
from tqdm import tqdm

from pvt_np import backend, distributed
from pvt_np.data.augment import translate
from pvt_np.models.pvt_v2 import PyramidVisionTransformerV2
from pvt_np.nn import CrossEntropyLoss, no_grad
from pvt_np.training.validation import TTA_MODES

# The views each TTA mode averages: (mirrored, dy, dx), the image moved up by dy rows and left by dx columns,
# black coming in (as in the padding of the training crops, which move the image by up to 4 pixels). Every mode
# starts with the image, then its mirror, and flip-grid with flip-shift's ten views: evaluate reads the accuracies
# of the single view, the flip and the ten views off those first one, two and ten views of one pass.
TTA_SHIFT = 2
_FLIP_SHIFT_OFFSETS = ((0, 0), (TTA_SHIFT, 0), (-TTA_SHIFT, 0), (0, TTA_SHIFT), (0, -TTA_SHIFT))
_GRID_OFFSETS = _FLIP_SHIFT_OFFSETS + tuple(
    (dy, dx)
    for dy in range(-TTA_SHIFT, TTA_SHIFT + 1)
    for dx in range(-TTA_SHIFT, TTA_SHIFT + 1)
    if (dy, dx) not in _FLIP_SHIFT_OFFSETS
)
TTA_VIEWS: dict[str, tuple[tuple[bool, int, int], ...]] = {
    "none": ((False, 0, 0),),
    "flip": ((False, 0, 0), (True, 0, 0)),
    "flip-shift": tuple((mirrored, dy, dx) for dy, dx in _FLIP_SHIFT_OFFSETS for mirrored in (False, True)),
    "flip-grid": tuple((mirrored, dy, dx) for dy, dx in _GRID_OFFSETS for mirrored in (False, True)),
}
# The modes that score only a run's last evaluation with all their views (the ones before it: the flip).
LAST_ONLY_TTA = ("flip-shift", "flip-grid")
# The accuracies evaluate reads off the first views of a longer mode: name -> how many views (a prefix of it).
TTA_PREFIXES = {"single_view_accuracy": 1, "flip_accuracy": 2, "flip_shift_accuracy": len(TTA_VIEWS["flip-shift"])}


def scoring_tta(tta: str, last: bool) -> str:
    """The TTA mode of one of a run's evaluations: ``flip-shift`` and ``flip-grid`` score the run's last
    evaluation with their ten or fifty views and the ones before it with the image and its mirror (a fifth or
    a twenty-fifth of the cost); others: as given."""
    return "flip" if tta in LAST_ONLY_TTA and not last else tta


def evaluate(
    model: PyramidVisionTransformerV2,
    loader: Any,
    num_classes: int,
    progress: bool = False,
    world: distributed.World | None = None,
    tta: str = "none",
) -> dict[str, Any]:
    """Mean loss, accuracy and the confusion matrix (rows: true class, columns: predicted).

    Test-time augmentation scores each image by the mean of its views' logits,
    z = (1/V) sum_v f(view_v(x)), which the loss, accuracy and confusion use:
    ``tta="flip"``: the image and its mirror image (V = 2); ``"flip-shift"``: those two, each
    also shifted by TTA_SHIFT pixels up, down, left and right with black coming in (V = 10;
    ``loader.zero_pixel`` gives black's normalised value); ``"flip-grid"``: those two at every
    shift of up to TTA_SHIFT pixels down or up and right or left, a 5x5 grid (V = 50). A model
    trained with random flips and padded crops sees all of them as likely inputs, so their mean
    is an ensemble of the same weights, for V forward passes. The accuracy of f(x) alone is
    returned as ``single_view_accuracy`` (with any TTA), that of the image and its mirror as
    ``flip_accuracy`` (with ``flip-shift`` and ``flip-grid``), that of flip-shift's ten views
    as ``flip_shift_accuracy`` (with ``flip-grid``).
    With a data-parallel ``world`` each rank scores its own part of the test set and the
    sums are added over the ranks, so every rank returns the whole set's figures.
    """
    if tta not in TTA_MODES:
        raise ValueError(f"evaluate: tta must be one of {', '.join(TTA_MODES)}, got {tta!r}")
    views = TTA_VIEWS[tta]
    model.eval()
    criterion = CrossEntropyLoss()
    xp = backend.get_array_module(model.patch_embed.proj.weight.data)
    confusion = xp.zeros((num_classes, num_classes), dtype=np.int64)
    loss_sum = xp.zeros((), dtype=np.float64)
    count = 0
    # Correct answers of the first view alone (the image), of the first two (with its mirror) and of the first
    # ten (flip-shift's views), read off the running sum of the views' logits: those the mode has more views than.
    at_view = {n - 1: name for name, n in TTA_PREFIXES.items() if len(views) > n}
    correct = {name: xp.zeros((), dtype=np.int64) for name in at_view.values()}
    with no_grad():
        for x, y in tqdm(loader.epoch(0), total=len(loader), desc="evaluate", leave=False, disable=not progress):
            logits = None
            for k, (mirrored, dy, dx) in enumerate(views):
                view = xp.ascontiguousarray(x[..., ::-1]) if mirrored else x
                if dy or dx:
                    view = translate(view, dy, dx, loader.zero_pixel)
                out = model(view)
                logits = out if logits is None else logits + out
                if k in at_view:
                    correct[at_view[k]] += (logits.argmax(axis=1) == y).sum()
            if len(views) > 1:
                logits = logits * (1.0 / len(views))
            loss_sum += criterion(logits, y) * y.shape[0]
            pred = logits.argmax(axis=1)
            confusion += xp.bincount(y * num_classes + pred, minlength=num_classes**2).reshape(confusion.shape)
            count += int(y.shape[0])
    confusion = backend.to_numpy(confusion)
    correct_counts = {name: int(c) for name, c in correct.items()}
    if world is not None and world.size > 1:
        confusion = world.allreduce_sum(confusion)
        loss_sum, count = world.allreduce_sum(float(loss_sum)), world.allreduce_sum(count)
        correct_counts = {name: world.allreduce_sum(c) for name, c in correct_counts.items()}
    result = {
        "loss": float(loss_sum) / max(count, 1),
        "accuracy": float(np.trace(confusion)) / max(count, 1),
        "confusion": confusion,
    }
    result.update({name: c / max(count, 1) for name, c in correct_counts.items()})
    return result


__all__ = ["LAST_ONLY_TTA", "TTA_PREFIXES", "TTA_SHIFT", "TTA_VIEWS", "evaluate", "scoring_tta"]
