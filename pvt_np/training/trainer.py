"""The training loop: deterministic, resumable, with progress bars, logs, plots and checkpoints.

Everything random is a pure function of (seed, epoch, batch): the sample order
and augmentation (see :class:`pvt_np.data.BatchLoader`) and the dropout /
drop-path masks (``manual_seed(derive_seed(seed, epoch, batch))`` before each
step). A checkpoint therefore needs no generator state: resuming from
(epoch, batch) replays exactly the batches and masks an uninterrupted run
would have seen, and ends with the same weights.

Checkpoints (``last.npz`` every epoch and on Ctrl-C, ``best.npz`` on a new best
test accuracy, of the raw weights or of their EMA when the run keeps one) are
written to a temporary file and renamed, so a run killed at any moment keeps its
previous checkpoint intact; the next start in that directory removes the temporary
files such a kill leaves behind.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from pvt_np import backend, distributed
from pvt_np.backend import Array
from pvt_np.data.augment import resize_bilinear, translate
from pvt_np.io.atomic import atomic_write
from pvt_np.io.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from pvt_np.io.record import model_record
from pvt_np.models import ModelMeta, create_model
from pvt_np.models.pvt_v2 import PyramidVisionTransformerV2
from pvt_np.nn import CrossEntropyLoss, no_grad
from pvt_np.optim import AdamW, CosineWarmupSchedule, clip_grad_norm_, param_groups_weight_decay
from pvt_np.training.steplog import read_step_log, write_step_log
from pvt_np.training.validation import TTA_MODES, ConfigError, check_subset, check_train_config

# The CIFAR config of a training run: create_model's (the 3x3 stride-2 stem, sr_ratios (4, 2, 1, 1)) and MLPs of
# ratio 4 in every stage, pvt_v2_b5's ratios, where the other variants have 8 in stages 1 and 2 (a run's own
# model_overrides win). At CIFAR's 16x16 and 8x8 maps those two stages hold most of a step's activations and
# their wide hidden layers most of its work: ratio 4 makes pvt_v2_b0's step 1.3x cheaper (21% fewer FLOPs) for 3%
# fewer parameters, and trained better in the same time (README).
# Applied when a run starts, and recorded in its model_overrides, so a run started before it resumes as it was.
CIFAR_TRAIN_OVERRIDES: dict[str, Any] = {"mlp_ratios": (4, 4, 4, 4)}


class TrainingError(RuntimeError):
    """Training stopped (non-finite loss, mismatched checkpoint, ...); the message says why."""


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
    # from a timed probe before training (see Trainer._fit_budget); None: train ``epochs``.
    time_budget: float | None = None
    # What the fit measured and chose (epochs, seconds per step, per evaluation, used before training): recorded
    # so that --resume continues the same schedule without measuring again. Set by the trainer.
    budget_fit: dict[str, float] | None = None
    train_subset: int | None = None  # a seeded random subset of N training images (quick runs, tests)
    test_subset: int | None = None  # a fixed random subset of N test images
    log_every: int = 20  # steps between progress updates (and, on the GPU, loss checks)
    progress: bool = True

    def __post_init__(self) -> None:
        check_train_config(self)

    def architecture(self) -> dict[str, Any]:
        """The fields that must match for a checkpoint to be resumed or evaluated."""
        return {
            "model": self.model,
            "model_overrides": _jsonable(self.model_overrides),
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

# The time-budget probe: PROBE_STEPS training steps of a throw-away copy of the model (the first, which
# allocates, untimed) and PROBE_EVAL_BATCHES test batches; BUDGET_MARGIN of the budget is kept back for
# what the probe does not time (checkpoints, plots, the EMA update) and for the machine's jitter.
PROBE_STEPS = 12
PROBE_EVAL_BATCHES = 2
BUDGET_MARGIN = 0.03
# With progressive resizing, also PROBE_LOW_RES_STEPS steps on the reduced images (the first untimed: new shapes).
PROBE_LOW_RES_STEPS = 6

# A run from before a trajectory setting existed ran without it. Where the setting's default is not "without"
# (low_res_epochs: None halves the epochs at low resolution), this is the value such a run is resumed with.
ABSENT_FIELD_VALUES: dict[str, Any] = {"low_res_epochs": 0}


def fit_epochs(
    available: float,
    epoch_seconds: float,
    eval_seconds: float,
    eval_every: int,
    low_res_epoch_seconds: float | None = None,
    last_eval_seconds: float | None = None,
) -> int:
    """The most epochs E whose cost, E * epoch_seconds plus eval_seconds for each evaluation (after every
    eval_every-th epoch and after the last), is at most ``available`` seconds (0 if not even one fits).

    With ``low_res_epoch_seconds`` the first E // 2 epochs (progressive resizing's default) cost that instead;
    with ``last_eval_seconds`` the last evaluation costs that instead (``--tta flip-grid``'s fifty views).
    """
    last = eval_seconds if last_eval_seconds is None else last_eval_seconds

    def cost(epochs: int) -> float:
        evaluations = epochs // eval_every + (epochs % eval_every != 0)
        low = epochs // 2 if low_res_epoch_seconds is not None else 0
        trained = low * (low_res_epoch_seconds or 0.0) + (epochs - low) * epoch_seconds
        return trained + (evaluations - 1) * eval_seconds + last

    # Every epoch costs at least the cheaper of the two, plus its share of the evaluations: a bound to count down from.
    cheapest = epoch_seconds if low_res_epoch_seconds is None else min(epoch_seconds, low_res_epoch_seconds)
    epochs = max(int(available / max(cheapest + eval_seconds / eval_every, 1e-9)), 0)
    while epochs > 0 and cost(epochs) > available:
        epochs -= 1
    return epochs


def _jsonable(value: Any) -> Any:
    """Tuples to lists, recursively, so configs compare equal after a JSON round trip."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def build_model(config: TrainConfig, num_classes: int, image_size: tuple[int, int]) -> PyramidVisionTransformerV2:
    """The run's model, initialised from the run's seed."""
    cifar = config.cifar_stem if config.cifar_stem is not None else max(image_size) <= 64
    try:
        model = create_model(
            config.model,
            num_classes=num_classes,
            drop_rate=config.drop_rate,
            drop_path_rate=config.drop_path_rate,
            seed=config.seed,
            dtype=config.dtype,
            cifar=cifar,
            **config.model_overrides,
        )
    except (ValueError, TypeError) as err:
        if not config.model_overrides:
            raise
        raise ConfigError(
            "model_overrides", f"create_model arguments that build a {config.model} ({_reason(err)})",
            config.model_overrides,
        ) from err  # fmt: skip
    try:
        model.feature_sizes(*image_size)  # a clear error now if the images are too small for this pyramid
    except ValueError as err:
        raise TrainingError(
            f"the {image_size[0]}x{image_size[1]} images of {config.dataset} at {config.data_path} are too small "
            f"for {config.model}{' with the CIFAR stem' if cifar else ''}: {_reason(err)}"
        ) from err
    return model.to(device=config.device)


def _reason(err: Exception) -> str:
    """An error's message without its leading 'ClassName: ': the layer that raised it is not what the user set."""
    return re.sub(r"^[A-Za-z_]\w*: ", "", str(err))


def train_step(
    model: PyramidVisionTransformerV2,
    criterion: CrossEntropyLoss,
    optimizer: AdamW,
    x: Array,
    y: Array,
    clip_grad: float | None = None,
    allreduce: distributed.GradientAllReduce | None = None,
) -> tuple[Array, Array]:
    """One optimisation step; returns (loss, logits) as device arrays (no host sync).

    zero_grad -> forward -> loss -> backward (dL/dlogits, then the model's chain
    of hand-written backward passes) -> [data-parallel: average the gradients and the
    loss over the ranks] -> optional gradient-norm clipping -> update.
    """
    optimizer.zero_grad()
    logits = model(x)
    loss = criterion(logits, y)
    model.backward(criterion.backward(), input_grad=False)
    if allreduce is not None:
        (loss,) = allreduce(model.parameters(), loss)
    if clip_grad is not None:
        clip_grad_norm_(model.parameters(), clip_grad)
    optimizer.step()
    return loss, logits


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
    from tqdm import tqdm

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


class Trainer:
    """Runs a :class:`TrainConfig` into ``output_dir`` (created; an existing run needs ``resume``)."""

    def __init__(
        self, config: TrainConfig, output_dir: str | Path, resume: bool = False, started: float | None = None
    ) -> None:
        """``started``: the ``time.monotonic()`` at which the command started (the time budget counts from
        it); None: now."""
        self.started = time.monotonic() if started is None else started
        self.config = config
        self.out = Path(output_dir)
        self.resume = resume
        backend.check_device(config.device)
        backend.check_float_dtype(config.dtype)
        last = self.out / "last.npz"
        if last.exists() and not resume:
            raise TrainingError(
                f"{self.out} already holds a run ({last.name}); pass --resume to continue it "
                "or choose another --output (nothing was overwritten)"
            )
        if resume and not last.exists():
            raise TrainingError(f"--resume: no checkpoint at {last}")
        self._stop_requested = False
        # Data-parallel ranks (mpiexec): each takes a slice of every batch, rank 0 alone writes.
        self.world = distributed.get_world()
        if self.world.size > 1:
            backend.set_batch_shard(self.world.rank, self.world.size)
            if config.device == "gpu":
                distributed.use_local_gpu(self.world)
            if not self.world.is_root:
                self.config = replace(config, progress=False)

    # -- set-up ---------------------------------------------------------------
    def _fetch(self) -> None:
        """Download what --download would (both splits come from one archive): before the ranks load it."""
        from pvt_np.data import load_dataset

        cfg = self.config
        load_dataset(cfg.dataset, cfg.data_path, "test", True, cache_dir=cfg.cache_dir)

    def _setup(self) -> None:
        from pvt_np.data import Augment, load_dataset

        cfg = self.config
        train = load_dataset(cfg.dataset, cfg.data_path, "train", cfg.download, cache_dir=cfg.cache_dir)
        check_subset("train_subset", cfg.train_subset, len(train), "training images")
        test = load_dataset(cfg.dataset, cfg.data_path, "test", cfg.download, cache_dir=cfg.cache_dir)
        check_subset("test_subset", cfg.test_subset, len(test), "test images")
        self.train_set = _subset(train, cfg.train_subset, cfg.seed)
        self.test_set = _subset(test, cfg.test_subset, 0)
        # Checked here, in the run's terms, rather than by the loader deep inside.
        check_subset("batch_size", cfg.batch_size, len(self.train_set), "training images used")
        self.num_classes = self.train_set.num_classes
        if cfg.cifar_stem is None:  # resolve 'auto' so the checkpoint records the model actually built
            cfg = self.config = replace(cfg, cifar_stem=max(self.train_set.image_size) <= 64)
        recipe = {k: v for k, v in CIFAR_TRAIN_OVERRIDES.items() if k not in cfg.model_overrides}
        if cfg.cifar_stem and recipe and not self.resume:
            cfg = self.config = replace(cfg, model_overrides={**cfg.model_overrides, **recipe})
        mean, std = self.train_set.mean_std()
        self.normalize = {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}
        augment = Augment(
            crop_padding=cfg.crop_padding, hflip=cfg.hflip, mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix,
            trivial=cfg.trivial_augment,
        )  # fmt: skip
        distributed.local_batch_size(cfg.batch_size, self.world)  # a clear error if the ranks cannot share it
        self.train_loader = self.train_set.loader(
            cfg.batch_size, shuffle=True, seed=cfg.seed, drop_last=True, device=cfg.device,
            augment=augment, mean=mean, std=std, dtype=cfg.dtype, shard=(self.world.rank, self.world.size),
        )  # fmt: skip
        test_part = distributed.shard_dataset(self.test_set, self.world)
        self.test_loader = test_part.loader(
            min(cfg.eval_batch_size, len(test_part)), shuffle=False, device=cfg.device,
            mean=mean, std=std, dtype=cfg.dtype,
        )  # fmt: skip
        self.model = build_model(cfg, self.num_classes, self.train_set.image_size)
        # Whether the default (None) trains the first half of the epochs at low resolution: only where the
        # reduced images differ from the images and the model takes them. Typed epochs must be possible.
        self.low_res_default = False
        if cfg.low_res_epochs != 0:
            low = self._low_res_size()
            try:
                self.model.feature_sizes(*low)
                self.low_res_default = low != tuple(self.train_set.image_size)
            except ValueError as err:
                if cfg.low_res_epochs is not None:
                    raise ConfigError(
                        "low_res_scale",
                        f"a scale whose {low[0]}x{low[1]} images {cfg.model} can take ({_reason(err)})",
                        cfg.low_res_scale,
                    ) from err
        # What predict needs to prepare an image as this run's were; saved with the weights.
        self.model.meta = ModelMeta(
            classes=self.train_set.classes, input_size=self.train_set.image_size, mean=mean, std=std
        )
        self.criterion = CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.optimizer = AdamW(param_groups_weight_decay(self.model, cfg.weight_decay), lr=cfg.lr)
        self._build_schedule()
        # The EMA of the weights (config.ema_decay): device arrays beside the parameters, the same on every
        # rank because the weights are; evaluated beside the raw weights and saved in the checkpoints.
        self.ema = self.model.state_dict() if cfg.ema_decay is not None else None
        self.history: list[dict[str, Any]] = []
        # Training loss, accuracy and lr as they were read (every step on the CPU, every
        # log_every steps on the GPU), for plots; saved as steps.csv with each last.npz.
        self.step_log: list[dict[str, Any]] = []
        self.best_accuracy = -1.0
        self.epoch, self.batch = 0, 0
        self.partial = {"loss_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}
        if self.resume:
            self._restore(load_checkpoint(self.out / "last.npz"))

    def _build_schedule(self) -> None:
        cfg = self.config
        steps_per_epoch = len(self.train_loader)
        self.total_steps = cfg.epochs * steps_per_epoch
        self.schedule = CosineWarmupSchedule(
            self.optimizer,
            total_steps=self.total_steps,
            warmup_steps=round(cfg.warmup_epochs * steps_per_epoch),
            min_lr=cfg.min_lr,
        )

    def _fit_budget(self) -> None:
        """Choose the number of epochs that ends the run within config.time_budget minutes.

        Times PROBE_STEPS steps (loading and augmenting the batches included) of a fresh copy of
        the model with its own optimizer, and PROBE_EVAL_BATCHES test batches, then takes the most
        epochs E whose training and evaluations (every eval_every epochs and the last, twice with an
        EMA) fit in what is left of the budget less BUDGET_MARGIN. The probe leaves the run's model,
        optimizer and random draws untouched (every step reseeds), so the run is the plain run of E
        epochs: the cosine ends at min_lr. On several ranks rank 0's timings decide, for all.
        """
        cfg = self.config
        steps_per_epoch = len(self.train_loader)
        model = build_model(cfg, self.num_classes, self.train_set.image_size)
        optimizer = AdamW(param_groups_weight_decay(model, cfg.weight_decay), lr=cfg.lr)
        model.train()

        def seconds_per_step(steps: int, size: tuple[int, int] | None) -> float:
            done = [time.monotonic()]  # the probe's start, then the end of each step
            for k in range(min(steps, steps_per_epoch)):
                x, y = self.train_loader.batch(0, k)
                if size is not None:
                    x = resize_bilinear(x, size)
                backend.manual_seed(backend.derive_seed(cfg.seed, 0, k, 1))
                loss, _ = train_step(model, self.criterion, optimizer, x, y, cfg.clip_grad, self.allreduce)
                float(loss)  # wait for the device
                done.append(time.monotonic())
            # The first step allocates and warms caches: time from the second on (when there is one).
            timed = done[1:] if len(done) > 2 else done
            return (timed[-1] - timed[0]) / (len(timed) - 1)

        step_seconds = seconds_per_step(PROBE_STEPS, None)
        low_res = cfg.low_res_epochs is None and self.low_res_default  # (typed epochs are refused with a budget)
        low_step_seconds = seconds_per_step(PROBE_LOW_RES_STEPS, self._low_res_size()) if low_res else 0.0
        now = time.monotonic()
        model.eval()
        eval_batches = min(PROBE_EVAL_BATCHES, len(self.test_loader))
        with no_grad():
            for k, (x, _) in enumerate(self.test_loader.epoch(0)):
                if k == eval_batches:
                    break
                float(model(x).sum())
        view_seconds = (time.monotonic() - now) / eval_batches * len(self.test_loader)
        view_seconds *= 2 if cfg.ema_decay is not None else 1
        # One forward pass over the test set per view; the last evaluation may have more views than the others.
        eval_seconds = view_seconds * len(TTA_VIEWS[scoring_tta(cfg.tta, last=False)])
        last_eval_seconds = view_seconds * len(TTA_VIEWS[cfg.tta])
        write_seconds = 0.0
        if self.world.is_root:  # what rank 0 writes after each epoch, into a scratch folder: timed the second time
            with tempfile.TemporaryDirectory() as scratch:  # (the first imports matplotlib)
                self._write_epoch_files(Path(scratch))
                now = time.monotonic()
                self._write_epoch_files(Path(scratch))
                write_seconds = time.monotonic() - now
        elapsed = time.monotonic() - self.started
        if self.world.size > 1:  # rank 0's measurements, on every rank
            root = self.world.is_root
            step_seconds, low_step_seconds, eval_seconds, last_eval_seconds, write_seconds, elapsed = (
                self.world.allreduce_sum(v if root else 0.0)
                for v in (step_seconds, low_step_seconds, eval_seconds, last_eval_seconds, write_seconds, elapsed)
            )
        available = cfg.time_budget * 60.0 * (1.0 - BUDGET_MARGIN) - elapsed
        epoch_seconds = steps_per_epoch * step_seconds + write_seconds
        low_epoch_seconds = steps_per_epoch * low_step_seconds + write_seconds if low_res else None
        epochs = fit_epochs(
            available, epoch_seconds, eval_seconds, cfg.eval_every, low_epoch_seconds, last_eval_seconds
        )
        if epochs < max(cfg.warmup_epochs, 1):
            raise TrainingError(
                f"--time-budget {cfg.time_budget:g} minutes holds {epochs} epochs here, fewer than "
                f"{'the ' + format(cfg.warmup_epochs, 'g') + ' of --warmup-epochs' if epochs else 'one'}: "
                f"{elapsed:.0f} s went to the start and the timing, an epoch takes about "
                f"{epoch_seconds + eval_seconds:.0f} s "
                f"({steps_per_epoch} steps of {step_seconds:.3g} s, an evaluation of {eval_seconds:.3g} s and "
                f"{write_seconds:.3g} s of checkpoints and plots), "
                f"{100 * BUDGET_MARGIN:g} % is kept in reserve. Give a longer --time-budget (nothing was written)."
            )
        fit = {
            "epochs": epochs, "step_seconds": step_seconds, "eval_seconds": eval_seconds,
            "write_seconds": write_seconds, "start_seconds": elapsed,
        }  # fmt: skip
        if low_res:
            fit["low_res_step_seconds"] = low_step_seconds
        if last_eval_seconds != eval_seconds:
            fit["last_eval_seconds"] = last_eval_seconds
        self.config = replace(cfg, epochs=epochs, budget_fit=fit)
        self._build_schedule()

    def _write_epoch_files(self, folder: Path) -> None:
        """Write what _write_epoch writes (two checkpoints, the logs, the plots) into ``folder``, to time it."""
        from pvt_np.training.plots import plot_curves

        ckpt = self._checkpoint()
        save_checkpoint(folder / "last.npz", ckpt)
        save_checkpoint(folder / "best.npz", ckpt)
        row = {"epoch": 1, "train_loss": 1.0, "train_accuracy": 0.5, "test_loss": 1.0, "test_accuracy": 0.5}
        write_step_log(folder / "steps.csv", self.step_log)
        plot_curves([row], folder / "curves.png", self.step_log)

    def _describe(self) -> str:
        """One line: what this run trains, on what, where (printed at its start)."""
        from pvt_np.complexity import count_flops, count_params
        from pvt_np.ops import parallel

        cfg = self.config
        h, w = self.train_set.image_size
        overrides = "".join(f", {k}={v}" for k, v in cfg.model_overrides.items())
        n = parallel.get_num_threads()
        n_threads = f"{n} thread{'s' if n > 1 else ''}"
        threads = f", {n_threads}" if cfg.device == "cpu" else ""
        if self.world.size > 1:
            threads = f", {self.world.size} processes (MPI)" + (f" x {n_threads}" if threads else "")
        where = f"resuming at epoch {self.epoch + 1}, batch {self.batch}" if self.resume else "starting"
        if self.epoch >= cfg.epochs:
            where = "resuming a complete run"
        fitted = ""
        if cfg.budget_fit is not None:
            fit = cfg.budget_fit
            low_step = ""
            if "low_res_step_seconds" in fit:
                low_step = f" ({fit['low_res_step_seconds']:.3g} at low resolution)"
            last_eval = f" ({fit['last_eval_seconds']:.3g} the last)" if "last_eval_seconds" in fit else ""
            fitted = (
                f" (fitted to --time-budget {cfg.time_budget:g} minutes: {fit['step_seconds']:.3g} s/step{low_step}, "
                f"{fit['eval_seconds']:.3g} s/evaluation{last_eval}, {fit['start_seconds']:.0f} s to start)"
            )
        low_epochs = self.low_res_epochs()
        low = self._low_res_size()
        low_res = f", the first {low_epochs} at {low[0]}x{low[1]}" if low_epochs else ""
        return (
            f"{where}: {cfg.dataset} at {cfg.data_path} ({len(self.train_set)} training / {len(self.test_set)} test "
            f"images of {h}x{w}, {self.num_classes} classes) | {cfg.model} "
            f"({'CIFAR' if cfg.cifar_stem else 'ImageNet'} stem{overrides}): "
            f"{count_params(self.model) / 1e6:.3g} M parameters, {count_flops(self.model, (h, w)) / 1e6:.3g} "
            f"MFLOPs/image | {cfg.device} {cfg.dtype}{threads} | {cfg.epochs} epochs of {len(self.train_loader)} "
            f"steps{low_res}{fitted} | output {self.out}"
        )

    def _restore(self, ckpt: dict[str, Any]) -> None:
        saved = ckpt.get("config", {})
        mine = self.config.architecture()
        theirs = {k: saved.get(k) for k in mine}
        if theirs != mine or ckpt.get("num_classes") != self.num_classes:
            raise CheckpointError(
                f"{self.out / 'last.npz'} is from another model: it has {theirs} with "
                f"{ckpt.get('num_classes')} classes, this run asks for {mine} with {self.num_classes} classes"
            )
        current = _jsonable(asdict(self.config))
        # A setting added after the run was started is absent from its checkpoint: the run had its default
        # (or, where the default is not "without it", the ABSENT_FIELD_VALUES value).
        defaults = {f.name: f.default for f in fields(TrainConfig)} | ABSENT_FIELD_VALUES
        recorded = {k: saved.get(k, defaults[k]) for k in TRAJECTORY_FIELDS}
        changed = [f"{k} {recorded[k]!r} -> {current[k]!r}" for k in TRAJECTORY_FIELDS if recorded[k] != current[k]]
        if changed:
            raise CheckpointError(
                f"--resume continues {self.out} exactly, but these settings differ from its checkpoint: "
                f"{', '.join(changed)}. Repeat the run's own options, or start a new run with another --output."
            )
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.schedule.load_state_dict(ckpt["schedule"])
        self.epoch, self.batch = ckpt["progress"]["epoch"], ckpt["progress"]["batch"]
        self.partial = ckpt["progress"]["partial"]
        self.history = ckpt["history"]
        self.best_accuracy = ckpt["best_accuracy"]
        if self.ema is not None:
            params = dict(self.model.named_parameters())
            self.ema = {k: backend.to_device(v, backend.device_of(params[k].data)) for k, v in ckpt["ema"].items()}
        self.step_log = read_step_log(self.out / "steps.csv", self.epoch * len(self.train_loader) + self.batch)

    def _checkpoint(self) -> dict[str, Any]:
        return {
            "config": {**asdict(self.config), **self.config.architecture()},
            "num_classes": self.num_classes,
            "classes": list(self.train_set.classes),
            "normalize": self.normalize,
            "model_record": model_record(self.model),
            "model": self.model.state_dict(),
            "weights": "raw",  # what "model" holds: the trained weights ("ema": their moving average)
            "ema": self.ema,
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "progress": {"epoch": self.epoch, "batch": self.batch, "partial": dict(self.partial)},
            "history": self.history,
            "best_accuracy": self.best_accuracy,
        }

    # -- the loop ---------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train to the configured number of epochs; returns the last epoch's metrics."""
        world = self.world
        if world.size > 1 and self.config.download:  # rank 0 fetches the archive alone; the others then find it
            world.agree(lambda: self._fetch() if world.is_root else None)
        world.agree(self._setup)  # a rank that cannot read the data stops every rank, before anything is written
        self.allreduce = distributed.GradientAllReduce(world, self.config.device) if world.size > 1 else None
        if self.config.time_budget is not None and self.config.budget_fit is None:
            self._fit_budget()
        self.summary = self._describe()
        self._on_root(self._write_config)
        if self.config.progress:  # rank 0 only: the other ranks run with progress off
            print(self.summary, flush=True)
        cfg = self.config
        with self._interrupt_guard():
            while self.epoch < cfg.epochs:
                interrupted = self._train_epoch()
                if interrupted:
                    self._on_root(self._save_last)
                    raise KeyboardInterrupt(
                        f"interrupted at epoch {self.epoch + 1}, batch {self.batch}; checkpoint saved to "
                        f"{self.out / 'last.npz'} (continue with --resume)"
                    )
                self._end_epoch()
                if self._stop_requested:  # Ctrl-C during the evaluation, saving or plotting: stop here too
                    more = "continue with --resume" if self.epoch < cfg.epochs else "the run is complete"
                    raise KeyboardInterrupt(
                        f"interrupted at the end of epoch {self.epoch}; checkpoint saved to "
                        f"{self.out / 'last.npz'} ({more})"
                    )
        return self.history[-1] if self.history else {}

    def _on_root(self, write: Callable[[], Any]) -> None:
        """Rank 0 writes; if that fails (a full disk), every rank stops with its message."""
        self.world.agree(lambda: write() if self.world.is_root else None)

    def _write_config(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(self.out)
        with atomic_write(self.out / "config.json", "w") as f:
            json.dump(asdict(self.config), f, indent=2)

    def _save_last(self) -> None:
        save_checkpoint(self.out / "last.npz", self._checkpoint())
        write_step_log(self.out / "steps.csv", self.step_log)

    def _low_res_size(self) -> tuple[int, int]:
        """The image size of the low-resolution epochs: the training images' size times low_res_scale, rounded."""
        return tuple(max(1, round(side * self.config.low_res_scale)) for side in self.train_set.image_size)

    def _at_low_res(self, epoch: int) -> str:
        """' at HxW' for an epoch (from 0) that trains on reduced images, for the progress lines; else ''."""
        if epoch >= self.low_res_epochs():
            return ""
        h, w = self._low_res_size()
        return f" at {h}x{w}"

    def low_res_epochs(self) -> int:
        """How many of the first epochs train on reduced images: config.low_res_epochs, or where that is None
        (the default) the first half, epochs // 2, if the reduced images differ and the model takes them."""
        cfg = self.config
        if cfg.low_res_epochs is not None:
            return cfg.low_res_epochs
        return cfg.epochs // 2 if self.low_res_default else 0

    def _train_epoch(self) -> bool:
        """Run the rest of the current epoch; True if stopped by Ctrl-C."""
        from tqdm import tqdm

        cfg = self.config
        loader = self.train_loader
        xp = backend.get_array_module(self.model.patch_embed.proj.weight.data)
        self.model.train()
        desc = f"epoch {self.epoch + 1}/{cfg.epochs}{self._at_low_res(self.epoch)}"
        bar = tqdm(
            total=len(loader), initial=self.batch, desc=desc,
            disable=not cfg.progress, dynamic_ncols=True, leave=True,
        )  # fmt: skip
        losses = xp.zeros(max(cfg.log_every, 1), dtype=np.float64)
        correct = xp.zeros((), dtype=np.int64)
        pending = 0
        start_time = time.perf_counter()
        try:
            low_res = self._low_res_size() if self.epoch < self.low_res_epochs() else None
            for x, y in loader.epoch(self.epoch, start_batch=self.batch):
                if low_res is not None:
                    x = resize_bilinear(x, low_res)
                backend.manual_seed(backend.derive_seed(cfg.seed, self.epoch, self.batch, 1))
                loss, logits = train_step(
                    self.model, self.criterion, self.optimizer, x, y, cfg.clip_grad, self.allreduce
                )
                self.schedule.step()
                if self.ema is not None:
                    self._update_ema()
                labels = y if y.ndim == 1 else y.argmax(axis=1)
                losses[pending] = loss
                correct += (logits.argmax(axis=1) == labels).sum()
                pending += 1
                self.batch += 1
                if self.world.size > 1:  # the ranks stop together (Ctrl-C) and check they still agree
                    self._stop_requested = self.world.any(self._stop_requested)
                    if (self.epoch * len(loader) + self.batch) % distributed.CHECK_WEIGHTS_EVERY == 0:
                        distributed.check_replicas(self.world, self.model.parameters(), f"epoch {self.epoch + 1}")
                # On the CPU reading the loss costs nothing; on the GPU it waits for the device,
                # so it is read every log_every steps (a non-finite loss is still pinned to its step).
                # A stop request flushes too: the checkpoint must count these steps, and never hold
                # weights that a non-finite loss not yet read has already spoiled.
                if xp is np or pending == losses.shape[0] or self.batch == len(loader) or self._stop_requested:
                    self._flush(losses[:pending], correct, pending, cfg.batch_size, start_time, bar)
                    pending = 0
                    correct[...] = 0
                    start_time = time.perf_counter()
                if self._stop_requested:
                    return True
        finally:
            bar.close()
        return False

    def _flush(self, losses: Array, correct: Array, steps: int, batch_size: int, start_time: float, bar: Any) -> None:
        host = backend.to_numpy(losses)
        bad = np.flatnonzero(~np.isfinite(host))
        if bad.size:
            step = self.batch - steps + int(bad[0]) + 1  # counted from 1, like the epoch and the progress bar
            raise TrainingError(
                f"non-finite loss ({host[bad[0]]}) at epoch {self.epoch + 1}, step {step}/{len(self.train_loader)} "
                f"(global step {self.epoch * len(self.train_loader) + step}); {self._stopped()}"
            )
        p = self.partial
        for value in host:  # one step at a time: the same sum however the steps were grouped into reads
            p["loss_sum"] += float(value) * batch_size
        correct = self.world.allreduce_sum(int(correct))
        p["correct"] += correct
        p["seen"] += steps * batch_size
        p["seconds"] += time.perf_counter() - start_time
        lr = self.optimizer.param_groups[0]["lr"]
        step = self.epoch * len(self.train_loader) + self.batch
        self.step_log.append(
            {
                "step": step,
                "epoch": step / len(self.train_loader),
                "loss": float(host.mean()),
                "accuracy": int(correct) / (steps * batch_size),
                "lr": lr,
            }
        )
        bar.update(steps)
        if bar.n % max(self.config.log_every, 1) == 0 or bar.n == bar.total:
            bar.set_postfix(
                loss=f"{p['loss_sum'] / p['seen']:.4f}",
                acc=f"{p['correct'] / p['seen']:.3f}",
                img_s=f"{p['seen'] / max(p['seconds'], 1e-9):.0f}",
                lr=f"{lr:.2e}",
                refresh=False,
            )

    def _stopped(self) -> str:
        last = self.out / "last.npz"
        kept = f"the last good checkpoint {last} is untouched" if last.exists() else "no checkpoint was written"
        return f"training stopped, {kept}. Try a lower --lr or --clip-grad."

    def _update_ema(self) -> None:
        """ema = decay * ema + (1 - decay) * weights, in place, after each update."""
        decay = self.config.ema_decay
        for name, p in self.model.named_parameters():
            average = self.ema[name]
            average *= decay
            average += (1.0 - decay) * p.data

    def _evaluate_ema(self, tta: str) -> dict[str, Any]:
        """The test-set figures of the EMA weights, swapped into the model and back (the same arrays)."""
        params = list(self.model.named_parameters())
        trained = [p.data for _, p in params]
        try:
            for name, p in params:
                p.data = self.ema[name]
            return evaluate(self.model, self.test_loader, self.num_classes, progress=self.config.progress,
                            world=self.world, tta=tta)  # fmt: skip
        finally:
            for (_, p), data in zip(params, trained, strict=True):
                p.data = data

    def _evaluates(self, epoch: int) -> bool:
        """Whether the test set is scored after ``epoch`` (counted from 1): every eval_every-th, and the last."""
        return epoch % self.config.eval_every == 0 or epoch == self.config.epochs

    def _end_epoch(self) -> None:
        cfg = self.config
        p = self.partial
        distributed.check_replicas(self.world, self.model.parameters(), f"end of epoch {self.epoch + 1}")
        tta = scoring_tta(cfg.tta, last=self.epoch + 1 == cfg.epochs)
        if self._evaluates(self.epoch + 1):
            test = evaluate(
                self.model, self.test_loader, self.num_classes, progress=cfg.progress, world=self.world, tta=tta
            )
            spoiled = not np.isfinite(test["loss"])
            ema = self._evaluate_ema(tta) if self.ema is not None and not spoiled else None
        else:  # no test loss to tell: look at the weights themselves (the same on every rank)
            xp = backend.get_array_module(self.model.patch_embed.proj.weight.data)
            test = ema = None
            spoiled = not all(bool(xp.isfinite(q.data).all()) for q in self.model.parameters())
        if spoiled:  # the last update of the epoch spoiled the weights: don't save them
            found = f"non-finite test loss ({test['loss']})" if test is not None else "non-finite weights"
            raise TrainingError(
                f"{found} after epoch {self.epoch + 1}: the weights are no longer finite; {self._stopped()}"
            )
        row = {
            "epoch": self.epoch + 1,
            "train_loss": p["loss_sum"] / max(p["seen"], 1),
            "train_accuracy": p["correct"] / max(p["seen"], 1),
            "test_loss": test["loss"] if test is not None else None,  # None: not evaluated (eval_every)
            "test_accuracy": test["accuracy"] if test is not None else None,
            "lr": self.optimizer.param_groups[0]["lr"],
            "train_seconds": p["seconds"],
            "img_per_s": p["seen"] / max(p["seconds"], 1e-9),
        }
        if cfg.tta != "none":
            row["test_accuracy_single_view"] = test["single_view_accuracy"] if test is not None else None
        if tta in LAST_ONLY_TTA:  # the last evaluation of a flip-shift/grid run: the flip, as the others scored
            row["test_accuracy_flip"] = test["flip_accuracy"] if test is not None else None
        if tta == "flip-grid":  # and flip-shift's ten views of it
            row["test_accuracy_flip_shift"] = test["flip_shift_accuracy"] if test is not None else None
        if self.ema is not None:
            row["ema_test_loss"] = ema["loss"] if ema is not None else None
            row["ema_test_accuracy"] = ema["accuracy"] if ema is not None else None
        self.history.append(row)
        self.epoch, self.batch = self.epoch + 1, 0
        self.partial = {"loss_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}
        # best.npz holds the better of the raw and the EMA weights (the raw ones on a tie) of the best epoch.
        scored = [(name, r) for name, r in (("raw", test), ("ema", ema)) if r is not None]
        winner = max(scored, key=lambda item: item[1]["accuracy"], default=None)
        improved = winner is not None and winner[1]["accuracy"] > self.best_accuracy
        if improved:
            self.best_accuracy = winner[1]["accuracy"]
        best_weights = winner[0] if improved else None
        confusion = test["confusion"] if test is not None else None
        self._on_root(lambda: self._write_epoch(best_weights, confusion))
        if cfg.progress:
            if test is None:
                scores = f"test not evaluated (every {cfg.eval_every} epochs)"
            else:
                scores = f"test loss {row['test_loss']:.4f} acc {row['test_accuracy']:.4f}"
                if tta in LAST_ONLY_TTA:
                    ten = f"ten views {row['test_accuracy_flip_shift']:.4f}, " if tta == "flip-grid" else ""
                    scores += f" ({tta} TTA; {ten}flip {row['test_accuracy_flip']:.4f}"
                    scores += f", single view {row['test_accuracy_single_view']:.4f})"
                elif tta != "none":
                    scores += f" ({tta} TTA; single view {row['test_accuracy_single_view']:.4f})"
                if ema is not None:
                    scores += f" | EMA test loss {ema['loss']:.4f} acc {ema['accuracy']:.4f}"
            best = {None: "", "raw": " (best)", "ema": " (best: EMA)"}[best_weights]
            print(
                f"epoch {row['epoch']}: train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.4f}"
                f"{self._at_low_res(row['epoch'] - 1)} | {scores} | {row['img_per_s']:.0f} img/s{best}",
                flush=True,
            )

    def _write_epoch(self, best_weights: str | None, confusion: np.ndarray | None) -> None:
        """Checkpoints, logs and plots of the epoch just ended (rank 0's job).

        ``best_weights``: None, or which weights ("raw" or "ema") set a new best test accuracy;
        best.npz then holds those as its model, so ``load_model`` gets the weights that scored.
        """
        ckpt = self._checkpoint()
        save_checkpoint(self.out / "last.npz", ckpt)
        if best_weights == "ema":
            save_checkpoint(self.out / "best.npz", {**ckpt, "model": self.ema, "weights": "ema"})
        elif best_weights == "raw":
            save_checkpoint(self.out / "best.npz", ckpt)
        self._write_logs()
        write_step_log(self.out / "steps.csv", self.step_log)
        from pvt_np.training.plots import plot_confusion, plot_curves

        plot_curves(self.history, self.out / "curves.png", self.step_log)
        if self.epoch == self.config.epochs and confusion is not None:
            plot_confusion(confusion, list(self.train_set.classes), self.out / "confusion.png")

    def _write_logs(self) -> None:
        with atomic_write(self.out / "metrics.jsonl", "w") as f:
            for row in self.history:
                f.write(json.dumps(row) + "\n")
        buf = io.StringIO()
        # The columns of every row in order of appearance: a run resumed with another --tta gains or loses one.
        columns = list(dict.fromkeys(k for row in self.history for k in row))
        writer = csv.DictWriter(buf, fieldnames=columns)
        writer.writeheader()
        writer.writerows(self.history)
        with atomic_write(self.out / "metrics.csv", "w") as f:
            f.write(buf.getvalue())

    @contextlib.contextmanager
    def _interrupt_guard(self) -> Iterator[None]:
        """First Ctrl-C: finish the current step, save, stop. A second one stops at once."""

        def handler(signum: int, frame: Any) -> None:
            if self._stop_requested:
                raise KeyboardInterrupt
            self._stop_requested = True

        try:
            previous = signal.signal(signal.SIGINT, handler)
        except ValueError:  # not the main thread: no handler, Ctrl-C behaves as usual
            yield
            return
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)


# What a run writes into its directory (atomic_write's temporaries of these are '.<name>.<random>.tmp').
RUN_FILES = (
    "last.npz", "best.npz", "config.json", "metrics.jsonl", "metrics.csv", "steps.csv", "curves.png", "confusion.png",
)  # fmt: skip


def _remove_stale_temporaries(out: Path) -> None:
    """Remove the temporaries a run killed mid-write (SIGKILL, power loss) left in ``out``; only the run's own."""
    for name in RUN_FILES:
        for stale in out.glob(f".{name}.*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()


def _subset(dataset: Any, n: int | None, seed: int) -> Any:
    """A random subset of ``n`` samples, the same for the same seed (all of it when n is None).

    Random, not the first n: image folders and archives are stored class by class.
    """
    if n is None or n == len(dataset):
        return dataset
    if not 1 <= n <= len(dataset):
        raise ValueError(f"subset size: expected 1 to {len(dataset)} (the number of samples), got {n}")
    from pvt_np.data import Dataset

    keep = np.sort(np.random.default_rng(backend.derive_seed(seed, len(dataset))).permutation(len(dataset))[:n])
    return Dataset(
        dataset.images[keep], dataset.labels[keep], dataset.classes, dataset.name, dataset.split, dataset.source
    )


__all__ = [
    "ConfigError",
    "TrainConfig",
    "Trainer",
    "TrainingError",
    "build_model",
    "evaluate",
    "fit_epochs",
    "train_step",
]
