"""A run's settings: :class:`TrainConfig`, which of them a resumed run must keep, and the CIFAR config.

The checks of each setting live in :mod:`pvt_np.training.validation`; what depends on the
data (subset sizes, whether the overrides build a model) is checked once the data is loaded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from pvt_np.io.checkpoint import CheckpointError
from pvt_np.training.validation import check_train_config

# The CIFAR config of a training run: create_model's (the 3x3 stride-2 stem, sr_ratios (4, 2, 1, 1)) and MLPs of
# ratio 4 in every stage, pvt_v2_b5's ratios, where the other variants have 8 in stages 1 and 2 (a run's own
# model_overrides win). At CIFAR's 16x16 and 8x8 maps those two stages hold most of a step's activations and
# their wide hidden layers most of its work: ratio 4 makes pvt_v2_b0's step 1.3x cheaper (21% fewer FLOPs) for 3%
# fewer parameters, and trained better in the same time (README).
# Applied when a run starts, and recorded in its model_overrides, so a run started before it resumes as it was.
CIFAR_TRAIN_OVERRIDES: dict[str, Any] = {"mlp_ratios": (4, 4, 4, 4)}


@dataclass
class TrainConfig:
    """Everything that defines a run (saved in its checkpoints and checked on resume)."""

    model: str = "pvt_v2_b0"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    cifar_stem: bool | None = None  # the CIFAR config (CIFAR_TRAIN_OVERRIDES); None: for images of 64 px or less
    dataset: str = "cifar10"
    data_path: str = "data"
    download: bool = False
    cache_dir: str | None = None  # decoded image-folder cache; None: $XDG_CACHE_HOME/pvt_np or ~/.cache/pvt_np
    epochs: int = 48  # with time_budget: replaced by the number of epochs fitted to the budget
    batch_size: int = 64
    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup_epochs: float = 1.0
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    clip_grad: float | None = None
    drop_rate: float = 0.0
    drop_path_rate: float = 0.1
    crop_padding: int = 4
    hflip: bool = True
    mixup: float = 0.0
    cutmix: float = 0.0
    trivial_augment: bool = False  # TrivialAugment after the crop and flip (see pvt_np.data.trivial_augment)
    # Progressive resizing: the first low_res_epochs train on the augmented batches resized by low_res_scale
    # (antialiased bilinear, see pvt_np.data.resize_bilinear), cheaper steps; then full size. None: the first
    # half of the epochs (epochs // 2) where the model takes the reduced images, else none; 0: off.
    low_res_epochs: int | None = None
    low_res_scale: float = 0.75
    device: str = "cpu"
    dtype: str = "float32"
    seed: int = 0
    eval_batch_size: int = 500
    eval_every: int = 5  # evaluate on the test set every K epochs, and always after the last one
    # Test-time augmentation: "flip" scores each test image by the mean of its logits and its mirror image's
    # (the single-view accuracy is recorded beside it); "flip-shift" scores the last evaluation with those two
    # views each also shifted by 2 pixels four ways (ten views; the flip's accuracy recorded beside it) and the
    # earlier ones with the flip; "flip-grid" likewise with those two at every shift of up to 2 pixels each way
    # (fifty views; the flip's and the ten views' accuracies beside it); "none": the image alone. Evaluation
    # only: not a trajectory field.
    tta: str = "flip-grid"
    ema_decay: float | None = None  # an exponential moving average of the weights, updated every step; None: off
    # Minutes from the command's start to its last evaluation: the epochs (and so the cosine) are fitted to it
    # from a timed probe before training (see pvt_np.training.budget); None: train ``epochs``.
    time_budget: float | None = None
    # What the fit measured and chose (epochs, seconds per step, per evaluation, used before training): recorded
    # so that --resume continues the same schedule without measuring again. Set by the trainer.
    budget_fit: dict[str, float] | None = None
    train_subset: int | None = None  # a seeded random subset of N training images (quick runs, tests)
    test_subset: int | None = None  # a fixed random subset of N test images
    log_every: int = 20  # steps between progress updates (and, on the GPU, loss checks)
    # On the GPU: record the training step once per batch shape as a CUDA graph and replay it (see
    # pvt_np.training.cuda_graph); the same numbers as the eager step. Does nothing on the CPU.
    cuda_graph: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        check_train_config(self)

    def architecture(self) -> dict[str, Any]:
        """The fields that must match for a checkpoint to be resumed or evaluated."""
        return {
            "model": self.model,
            "model_overrides": jsonable(self.model_overrides),
            "cifar_stem": self.cifar_stem,
            "dtype": self.dtype,
        }


# Settings that shape the sequence of batches, masks and updates: resuming with any of them
# changed would not continue the same run (device, paths and logging may change freely).
TRAJECTORY_FIELDS = (
    "dataset", "epochs", "batch_size", "lr", "min_lr", "warmup_epochs", "weight_decay", "label_smoothing",
    "clip_grad", "drop_rate", "drop_path_rate", "crop_padding", "hflip", "mixup", "cutmix", "trivial_augment",
    "low_res_epochs", "low_res_scale",
    "ema_decay", "time_budget", "seed", "train_subset", "test_subset",
)  # fmt: skip

# A run from before a trajectory setting existed ran without it. Where the setting's default is not "without"
# (low_res_epochs: None halves the epochs at low resolution), this is the value such a run is resumed with.
ABSENT_FIELD_VALUES: dict[str, Any] = {"low_res_epochs": 0}


def jsonable(value: Any) -> Any:
    """Tuples to lists, recursively, so configs compare equal after a JSON round trip."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def check_resumable(
    checkpoint: dict[str, Any],
    config: Any,
    num_classes: int,
    path: Path,
    trajectory_fields: Sequence[str] = TRAJECTORY_FIELDS,
    absent_values: Mapping[str, Any] = ABSENT_FIELD_VALUES,
) -> None:
    """Raise :class:`CheckpointError` unless ``checkpoint`` (read from ``path``) continues the run ``config`` on
    data of ``num_classes`` classes: the same architecture, and every ``trajectory_fields`` setting the same.

    ``config``: a run's config dataclass with an ``architecture()``: a :class:`TrainConfig` (whose fields are the
    defaults here), or the segmentation task's config with its own trajectory fields and no absent values."""
    saved = checkpoint.get("config", {})
    mine = config.architecture()
    theirs = {k: saved.get(k) for k in mine}
    if theirs != mine or checkpoint.get("num_classes") != num_classes:
        raise CheckpointError(
            f"{path} is from another model: it has {theirs} with "
            f"{checkpoint.get('num_classes')} classes, this run asks for {mine} with {num_classes} classes"
        )
    current = jsonable(asdict(config))
    # A setting added after the run was started is absent from its checkpoint: the run had its default
    # (or, where the default is not "without it", the ABSENT_FIELD_VALUES value).
    defaults = {f.name: f.default for f in fields(config)} | dict(absent_values)
    recorded = {k: saved.get(k, defaults[k]) for k in trajectory_fields}
    changed = [f"{k} {recorded[k]!r} -> {current[k]!r}" for k in trajectory_fields if recorded[k] != current[k]]
    if changed:
        raise CheckpointError(
            f"--resume continues {path.parent} exactly, but these settings differ from its checkpoint: "
            f"{', '.join(changed)}. Repeat the run's own options, or start a new run with another --output."
        )


__all__ = [
    "ABSENT_FIELD_VALUES",
    "CIFAR_TRAIN_OVERRIDES",
    "TRAJECTORY_FIELDS",
    "TrainConfig",
    "check_resumable",
    "jsonable",
]
