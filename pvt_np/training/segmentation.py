"""Semantic segmentation training: a PVT v2 backbone and a Semantic FPN head, trained on per-pixel cross-entropy.

It shares the classification trainer's parts (AdamW without decay on biases and norms, the cosine schedule
with warm-up, the checkpoint format and its atomic writes, the run directory's config.json / metrics.jsonl /
metrics.csv, Ctrl-C handling) and its determinism: the batch order, the crops and flips (which move each mask
with its image, see :class:`~pvt_np.data.segmentation.SegmentationBatches`) and the drop-path masks are pure
functions of (seed, epoch, batch), so resuming from last.npz replays exactly what an uninterrupted run sees.

Each epoch records the training loss and the test pixel accuracy, mIoU and, for the generated scenes, the
IoU by object size (:class:`~pvt_np.training.segmentation_metrics.SegmentationMetrics`); best.npz keeps the
best mIoU.

Data-parallel (``pvt-np train --task segmentation --nprocs N``, or under mpiexec) as the classification trainer:
each rank takes its rows of every global batch (the samples, crops, flips and drop-path masks of the one-process
batch), its per-pixel loss weighted so that the all-reduce's average is the global batch's mean
(:class:`RankCrossEntropy`), the gradients averaged by :class:`~pvt_np.distributed.GradientAllReduce`; the ranks
score their parts of the test set and sum the confusion counts; rank 0 alone writes. So N ranks compute the
one-process run to rounding.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from pvt_np import backend, distributed
from pvt_np.backend import Array
from pvt_np.data.scenes import SCENE_STYLES, SHAPES, load_scenes
from pvt_np.data.segmentation import IGNORE_INDEX, SegmentationBatches, load_segmentation_folder
from pvt_np.io.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from pvt_np.io.load import load_model
from pvt_np.models import create_segmenter, list_models
from pvt_np.models.semantic_fpn import SemanticSegmenter
from pvt_np.nn import CrossEntropyLoss
from pvt_np.optim import AdamW, CosineWarmupSchedule, param_groups_weight_decay
from pvt_np.training.config import check_resumable, jsonable
from pvt_np.training.errors import TrainingError
from pvt_np.training.interrupt import ctrl_c_requests_stop
from pvt_np.training.rundir import check_run_directory, write_config, write_metrics
from pvt_np.training.segmentation_metrics import SegmentationMetrics
from pvt_np.training.state import restore_progress
from pvt_np.training.trainer import train_step
from pvt_np.training.validation import ConfigError, check_subset

__all__ = [
    "SEGMENTATION_DATASETS", "RankCrossEntropy", "SegmentationConfig", "SegmentationTrainer", "load_splits",
    "predict_masks", "score_masks",
]  # fmt: skip

SEGMENTATION_DATASETS = ("scenes", "segfolder")
# ImageNet's statistics: those a backbone started from a classification checkpoint was trained with.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class SegmentationConfig:
    """Everything that defines a segmentation run (saved in its checkpoints and checked on resume).

    init_backbone: a classification model file :func:`~pvt_np.io.load_model` reads (pvt_np's checkpoints and
    weights, timm or official ``.pth``) whose backbone weights start the run (every backbone key, its
    classification head left out); the FPN head starts from scratch. None: the seed's initialisation.
    dataset: "scenes" (generated, :func:`~pvt_np.data.scenes.load_scenes`; train_subset / test_subset scenes
    of image_size pixels in scene_style with scene_classes classes) or "segfolder" (data_path in the images +
    masks layout; image_size resizes). The scenes' defaults (flat style, object or background) are what a few
    minutes on a CPU learn; ``scene_classes=6`` asks for the shape of each object too.
    """

    model: str = "pvt_v2_b0"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    init_backbone: str | None = None
    dataset: str = "scenes"
    data_path: str = "data"
    image_size: int | None = None  # scenes: None is 64; segfolder: None keeps the images' own size
    train_subset: int | None = None  # scenes: None is 256; segfolder: None is every image
    test_subset: int | None = None  # scenes: None is 64; segfolder: None is every image
    scene_style: str = "flat"  # scenes: "flat" objects on grain, or "textured" (see pvt_np.data.scenes)
    scene_classes: int = 2  # scenes: classes with the background, 2 (object or not) to 6 (the five shapes)
    epochs: int = 20
    batch_size: int = 16
    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup_epochs: float = 1.0
    weight_decay: float = 0.05
    drop_path_rate: float = 0.1
    crop_padding: int = 8
    hflip: bool = True
    device: str = "cpu"
    dtype: str = "float32"
    seed: int = 0
    eval_batch_size: int = 32
    progress: bool = True

    def __post_init__(self) -> None:
        if self.model not in list_models():
            raise ConfigError("model", f"one of {', '.join(list_models())}", self.model)
        if not isinstance(self.model_overrides, dict):
            raise ConfigError("model_overrides", "a dict of create_model arguments", self.model_overrides)
        if self.init_backbone is not None and not isinstance(self.init_backbone, str):
            raise ConfigError("init_backbone", "a path to a classification model file (or None)", self.init_backbone)
        if self.dataset not in SEGMENTATION_DATASETS:
            raise ConfigError("dataset", f"one of {', '.join(SEGMENTATION_DATASETS)}", self.dataset)
        if self.scene_style not in SCENE_STYLES:
            raise ConfigError("scene_style", f"one of {', '.join(SCENE_STYLES)}", self.scene_style)
        classes = self.scene_classes
        if isinstance(classes, bool) or not isinstance(classes, int) or not 2 <= classes <= len(SHAPES) + 1:
            raise ConfigError("scene_classes", f"an integer in [2, {len(SHAPES) + 1}]", classes)
        for name, low, optional in (
            ("image_size", 32, True), ("train_subset", 1, True), ("test_subset", 1, True), ("epochs", 1, False),
            ("batch_size", 1, False), ("crop_padding", 0, False), ("eval_batch_size", 1, False),
        ):  # fmt: skip
            value = getattr(self, name)
            if (value is None and not optional) or (
                value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < low)
            ):
                raise ConfigError(name, f"an integer >= {low}" + (" (or None)" if optional else ""), value)
        for name, low, high in (
            ("lr", 0.0, math.inf), ("min_lr", 0.0, math.inf), ("weight_decay", 0.0, math.inf),
            ("drop_path_rate", 0.0, 1.0),
        ):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value < high:
                raise ConfigError(name, f"a number in [{low:g}, {high:g})", value)
        if not (isinstance(self.warmup_epochs, (int, float)) and 0 <= self.warmup_epochs <= self.epochs):
            raise ConfigError("warmup_epochs", f"a number in [0, epochs = {self.epochs}]", self.warmup_epochs)
        if self.min_lr > self.lr:
            raise ConfigError("min_lr", f"a number <= lr = {self.lr:g}", self.min_lr)
        if self.device not in ("cpu", "gpu"):
            raise ConfigError("device", "cpu or gpu", self.device)
        if self.dtype not in ("float32", "float64"):
            raise ConfigError("dtype", "float32 or float64", self.dtype)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ConfigError("seed", "an integer >= 0", self.seed)

    @classmethod
    def from_saved(cls, saved: dict[str, Any], **changes: Any) -> SegmentationConfig:
        """The config a run saved (config.json, or its checkpoint's "config"), with ``changes``: its other keys
        (the task) left out, JSON's lists back to the tuples of ``model_overrides``, and the settings a run from
        before them did not save at the values it ran with (ABSENT_FIELD_VALUES)."""
        known = {f.name for f in fields(cls)}
        values = {**ABSENT_FIELD_VALUES, **{k: v for k, v in saved.items() if k in known}}
        values["model_overrides"] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in values.get("model_overrides", {}).items()
        }
        return cls(**{**values, **changes})

    def architecture(self) -> dict[str, Any]:
        """The fields that must match for a checkpoint to be resumed."""
        return {"model": self.model, "model_overrides": jsonable(self.model_overrides), "dtype": self.dtype}


# The settings a resumed run must keep besides the architecture: the rest (device, paths, progress, evaluation
# batch) may change.
_FREE_FIELDS = ("data_path", "device", "eval_batch_size", "progress")
# Runs started before the scene settings existed trained on the six-class textured scenes.
ABSENT_FIELD_VALUES = {"scene_style": "textured", "scene_classes": len(SHAPES) + 1}
TRAJECTORY_FIELDS = tuple(
    f.name for f in fields(SegmentationConfig) if f.name not in (*_FREE_FIELDS, *SegmentationConfig().architecture())
)


class RankCrossEntropy(CrossEntropyLoss):
    """Per-pixel cross-entropy on a data-parallel rank's slice of the batch, weighted so that the ranks' average
    (the all-reduce's) is the global batch's mean over its counted pixels.

    One process: L = S / C, S the sum of the batch's pixel losses, C its counted (not ignored) pixels. Rank r of
    N holds S_r and c_r of them, and CrossEntropyLoss gives it S_r / c_r with dL/dlogits = (softmax - t) / c_r.
    With w_r = N c_r / C (C the all-reduced sum of the c_r) rank r reports w_r S_r / c_r and backpropagates
    dout = w_r; the average over the ranks is S / C, and the averaged gradient sum_r (softmax - t)_r / C is the
    one-process gradient. A plain average of the S_r / c_r would weigh the pixels of a slice with more ignored
    ones (the crops' padding, 255 in a mask) more. A slice with no counted pixel (loss nan, gradient 0) adds 0;
    a global batch with none gives nan on every rank, as one process does.
    """

    def __init__(self, world: distributed.World, ignore_index: int) -> None:
        super().__init__(ignore_index=ignore_index)
        self.world = world
        self.weight = 1.0

    def forward(self, logits: Array, target: Array) -> Array:
        loss = super().forward(logits, target)
        mine = int((target != self.ignore_index).sum())
        total = int(self.world.allreduce_sum(mine))
        self.weight = self.world.size * mine / total if total else 0.0
        if not total:  # every pixel of the global batch ignored: nan, as in one process
            return loss
        if not mine:  # this slice's 0 / 0 = nan must not reach the average
            return backend.get_array_module(loss).zeros_like(loss)
        return loss * self.weight

    def backward(self, dout: float | Array = 1.0) -> Array:
        return super().backward(dout * self.weight)


@dataclass(frozen=True)
class _Split:
    images: np.ndarray
    masks: np.ndarray
    classes: tuple[str, ...]
    buckets: np.ndarray | None  # per-pixel object-size buckets (scenes only)


def load_splits(config: SegmentationConfig) -> tuple[_Split, _Split]:
    """The train and test splits the config names (data errors name the file)."""
    if config.dataset == "scenes":
        size = config.image_size or 64
        n_train, n_test = config.train_subset or 256, config.test_subset or 64
        splits = [
            load_scenes(s, n_train, n_test, config.seed, size=size, style=config.scene_style,
                        num_classes=config.scene_classes)
            for s in ("train", "test")
        ]  # fmt: skip
        return tuple(_Split(s.images, s.masks, s.classes, s.size_buckets) for s in splits)  # type: ignore[return-value]
    train = load_segmentation_folder(config.data_path, "train", size=config.image_size)
    test = load_segmentation_folder(config.data_path, "test", num_classes=train.num_classes, size=config.image_size)
    if train.image_size != test.image_size:
        raise TrainingError(
            f"{config.data_path}: train images are {train.image_size} but test images {test.image_size}; "
            "pass --image-size to resize both"
        )
    out = []
    # As for classification: a random subset, not the first files by name (folders are often sorted by class or
    # source), drawn with the run's seed for training and seed 0 for the test images, never more than there are.
    for name, split, subset, seed in (("train_subset", train, config.train_subset, config.seed),
                                       ("test_subset", test, config.test_subset, 0)):  # fmt: skip
        check_subset(name, subset, len(split), f"{split.split} images")
        keep = np.arange(len(split))
        if subset is not None and subset < len(split):
            rng = np.random.default_rng(backend.derive_seed(seed, len(split)))
            keep = np.sort(rng.permutation(len(split))[:subset])
        out.append(_Split(split.images[keep], split.masks[keep], train.classes, None))
    return out[0], out[1]


class SegmentationTrainer:
    """Runs a :class:`SegmentationConfig` into ``output_dir`` (created; an existing run needs ``resume``)."""

    def __init__(self, config: SegmentationConfig, output_dir: str | Path, resume: bool = False) -> None:
        self.config = config
        self.out = Path(output_dir)
        self.resume = resume
        backend.check_device(config.device)
        check_run_directory(self.out, resume)
        self._stop_requested = False
        self.allreduce: distributed.GradientAllReduce | None = None  # data-parallel: made once the data is set up
        # Data-parallel ranks (mpiexec), as the classification trainer's: each takes a slice of every batch (and of
        # its drop-path masks), rank 0 alone writes and prints.
        self.world = distributed.join_world(config.device)
        if not self.world.is_root:
            self.config = replace(config, progress=False)

    def _setup(self) -> None:
        cfg = self.config
        self.train_split, self.test_split = load_splits(cfg)
        self.classes = self.train_split.classes
        self.num_classes = len(self.classes)
        world = self.world
        batch_size = min(cfg.batch_size, len(self.train_split.images))
        distributed.local_batch_size(batch_size, world)  # a clear error if the ranks cannot share it
        self.train_loader = SegmentationBatches(
            self.train_split.images, self.train_split.masks, batch_size, seed=cfg.seed, drop_last=True,
            device=cfg.device, crop_padding=cfg.crop_padding, hflip=cfg.hflip, mean=MEAN, std=STD, dtype=cfg.dtype,
            shard=(world.rank, world.size),
        )  # fmt: skip
        # This rank's contiguous part of the test set (all of it in one process).
        start, stop = distributed.shard_bounds(len(self.test_split.images), world)
        test = self.test_split
        self.test_part = _Split(
            test.images[start:stop], test.masks[start:stop], test.classes,
            None if test.buckets is None else test.buckets[start:stop],
        )  # fmt: skip
        self.test_loader = SegmentationBatches(
            self.test_part.images, self.test_part.masks, min(cfg.eval_batch_size, stop - start),
            shuffle=False, device=cfg.device, mean=MEAN, std=STD, dtype=cfg.dtype,
        )  # fmt: skip
        try:
            self.model = create_segmenter(
                cfg.model, self.num_classes, drop_path_rate=cfg.drop_path_rate, seed=cfg.seed, dtype=cfg.dtype,
                device=cfg.device, **cfg.model_overrides,
            )  # fmt: skip
            self.model.feature_sizes(*self.train_split.images.shape[1:3])
        except (ValueError, TypeError) as err:
            field_name = "model_overrides" if cfg.model_overrides else "image_size"
            expected = f"settings that build a {cfg.model} segmenter ({err})"
            raise ConfigError(field_name, expected, getattr(cfg, field_name)) from err
        if cfg.init_backbone is not None and not self.resume:
            self._load_backbone(cfg.init_backbone)
        self.criterion = (
            CrossEntropyLoss(ignore_index=IGNORE_INDEX) if world.size == 1 else RankCrossEntropy(world, IGNORE_INDEX)
        )
        self.optimizer = AdamW(param_groups_weight_decay(self.model, cfg.weight_decay), lr=cfg.lr)
        steps = len(self.train_loader)
        self.schedule = CosineWarmupSchedule(
            self.optimizer, total_steps=cfg.epochs * steps, warmup_steps=round(cfg.warmup_epochs * steps),
            min_lr=cfg.min_lr,
        )  # fmt: skip
        self.history: list[dict[str, Any]] = []
        self.best_miou = -1.0
        self.epoch, self.batch = 0, 0
        self.partial = {"loss_sum": 0.0, "steps": 0, "seconds": 0.0}
        if self.resume:
            self._restore(load_checkpoint(self.out / "last.npz"))

    def _load_backbone(self, path: str) -> None:
        """The backbone's weights from a classification model file, strict on the backbone's keys."""
        source = load_model(path)
        if isinstance(source, SemanticSegmenter):  # another segmentation run: its backbone alone
            source = source.backbone
        state = {k: v for k, v in source.state_dict().items() if not k.startswith("head.")}
        try:
            self.model.backbone.load_state_dict(state, strict=True)
        except ValueError as err:
            raise TrainingError(
                f"--init-backbone {path}: its backbone does not fit this run's {self.config.model} (with its "
                f"--override settings): {err}"
            ) from err

    def _restore(self, ckpt: dict[str, Any]) -> None:
        path = self.out / "last.npz"
        if ckpt.get("task") != "segmentation":
            raise CheckpointError(f"{path} is not a segmentation run's checkpoint")
        check_resumable(ckpt, self.config, self.num_classes, path, TRAJECTORY_FIELDS, ABSENT_FIELD_VALUES)
        restore_progress(self, ckpt)
        self.best_miou = ckpt["best_miou"]

    def checkpoint_state(self) -> dict[str, Any]:
        """What last.npz holds: the task, config, classes, weights, optimizer, schedule and progress."""
        return {
            "task": "segmentation",
            "config": jsonable(asdict(self.config)),
            "num_classes": self.num_classes,
            "classes": list(self.classes),
            "normalize": {"mean": list(MEAN), "std": list(STD)},
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "progress": {"epoch": self.epoch, "batch": self.batch, "partial": dict(self.partial)},
            "history": self.history,
            "best_miou": self.best_miou,
        }

    def _request_stop(self) -> bool:
        first = not self._stop_requested
        self._stop_requested = True
        return first

    def train_step(self, x: Array, y: Array) -> float:
        """The classification trainer's step (zero_grad -> forward -> per-pixel loss, 255 ignored -> backward by
        hand -> [data-parallel: the all-reduce] -> AdamW), then the schedule; returns the global batch's loss."""
        loss, _ = train_step(self.model, self.criterion, self.optimizer, x, y, allreduce=self.allreduce)
        self.schedule.step()
        return float(loss)

    def fit(self) -> dict[str, Any]:
        """Train to the configured number of epochs; returns the last epoch's metrics."""
        world = self.world
        world.agree(self._setup)  # a rank that cannot read the data stops every rank, before anything is written
        self.allreduce = distributed.GradientAllReduce(world, self.config.device) if world.size > 1 else None
        self._on_root(lambda: write_config(self.out, {"task": "segmentation", **asdict(self.config)}))
        cfg = self.config
        with ctrl_c_requests_stop(self._request_stop):
            while self.epoch < cfg.epochs:
                if self._train_epoch():
                    self._on_root(lambda: save_checkpoint(self.out / "last.npz", self.checkpoint_state()))
                    raise KeyboardInterrupt(
                        f"interrupted at epoch {self.epoch + 1}, batch {self.batch}; checkpoint saved to "
                        f"{self.out / 'last.npz'} (continue with --resume)"
                    )
                self._end_epoch()
                if self._stop_requested:  # Ctrl-C during the evaluation or the saving: stop here too
                    raise KeyboardInterrupt(
                        f"interrupted at the end of epoch {self.epoch}; checkpoint saved to {self.out / 'last.npz'}"
                    )
        return self.history[-1] if self.history else {}

    def _on_root(self, write: Callable[[], Any]) -> None:
        """Rank 0 writes; if that fails (a full disk), every rank stops with its message."""
        self.world.agree(lambda: write() if self.world.is_root else None)

    def _train_epoch(self) -> bool:
        """Run the rest of the current epoch; True if stopped by Ctrl-C."""
        cfg = self.config
        self.model.train()
        start = time.perf_counter()
        try:
            for x, y in self.train_loader.epoch(self.epoch, start_batch=self.batch):
                backend.manual_seed(backend.derive_seed(cfg.seed, self.epoch, self.batch, 1))
                loss = self.train_step(x, y)
                if not math.isfinite(loss):
                    raise TrainingError(
                        f"the loss became {loss} at epoch {self.epoch + 1}, batch {self.batch + 1}; lower --lr"
                    )
                self.partial["loss_sum"] += loss
                self.partial["steps"] += 1
                self.batch += 1
                if self.world.size > 1:  # the ranks stop together (Ctrl-C) and check they still agree
                    self._stop_requested = self.world.any(self._stop_requested)
                    if (self.epoch * len(self.train_loader) + self.batch) % distributed.CHECK_WEIGHTS_EVERY == 0:
                        distributed.check_replicas(self.world, self.model.parameters(), f"epoch {self.epoch + 1}")
                if self._stop_requested:
                    return self.batch < len(self.train_loader)
        finally:
            self.partial["seconds"] += time.perf_counter() - start
        return False

    def evaluate(self) -> dict[str, Any]:
        """Test pixel accuracy, mIoU, per-class IoU and (scenes) IoU by object size, on the test split (each rank
        counts its part; the counts summed over the ranks score the whole)."""
        return score_masks(
            self.model, self.test_loader, self.test_part.buckets, self.num_classes, self.world.allreduce_sum
        )

    def _end_epoch(self) -> None:
        distributed.check_replicas(self.world, self.model.parameters(), f"end of epoch {self.epoch + 1}")
        row = {
            "epoch": self.epoch + 1,
            "train_loss": self.partial["loss_sum"] / max(self.partial["steps"], 1),
            "lr": float(self.optimizer.param_groups[0]["lr"]),
            "train_seconds": self.partial["seconds"],
            **self.evaluate(),
        }
        self.history.append(row)
        self.epoch, self.batch = self.epoch + 1, 0
        self.partial = {"loss_sum": 0.0, "steps": 0, "seconds": 0.0}
        state = self.checkpoint_state()
        improved = row["test_miou"] > self.best_miou
        if improved:
            self.best_miou = row["test_miou"]
            state["best_miou"] = self.best_miou
        self._on_root(lambda: self._write_epoch(state, improved))
        if self.config.progress:
            sizes = "".join(f" {k[9:]} {row[k]:.3f}" for k in row if k.startswith("test_iou_") and row[k] is not None)
            print(
                f"epoch {row['epoch']}/{self.config.epochs}: loss {row['train_loss']:.4f}, pixel accuracy "
                f"{row['test_pixel_accuracy']:.4f}, mIoU {row['test_miou']:.4f}{sizes}",
                flush=True,
            )

    def _write_epoch(self, state: dict[str, Any], improved: bool) -> None:
        if improved:
            save_checkpoint(self.out / "best.npz", state)
        save_checkpoint(self.out / "last.npz", state)
        write_metrics(self.out, self.history)


def score_masks(
    model: SemanticSegmenter,
    loader: SegmentationBatches,
    buckets: np.ndarray | None,
    num_classes: int,
    allreduce_sum: Callable[[Any], Any] | None = None,
) -> dict[str, Any]:
    """Pixel accuracy, mIoU, per-class IoU and, given the per-pixel size ``buckets`` of the loader's images (in
    its order: an unshuffled loader), IoU by object size, of ``model`` on every batch of ``loader``, in eval mode.
    ``allreduce_sum``: sums the confusion counts over data-parallel ranks, each scoring its part of the images."""
    model.eval()
    metrics = SegmentationMetrics(num_classes)
    size = loader.batch_size
    for k, (x, y) in enumerate(loader.epoch(0)):
        pred = model(x).argmax(axis=1)
        b = None if buckets is None else backend.to_device(buckets[k * size : (k + 1) * size], model.device)
        metrics.update(pred, y, b)
    if allreduce_sum is not None:
        metrics.sum_counts(allreduce_sum)
    scores = metrics.compute()
    return {
        "test_pixel_accuracy": scores["pixel_accuracy"],
        "test_miou": scores["miou"],
        "test_iou": [None if math.isnan(v) else float(v) for v in scores["iou"]],
        **(
            {}
            if buckets is None
            else {f"test_iou_{k}": None if math.isnan(v) else v for k, v in scores["iou_by_size"].items()}
        ),
    }


def predict_masks(model: SemanticSegmenter, images: Array) -> Array:
    """Per-pixel class ids (N, H, W) int64 of normalised NCHW ``images``: the argmax of the model's logits."""
    model.eval()
    return model(images).argmax(axis=1)
