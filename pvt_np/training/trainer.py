"""The training loop: deterministic, resumable, with progress bars, logs, plots and checkpoints.

Everything random is a pure function of (seed, epoch, batch): the sample order
and augmentation (see :class:`pvt_np.data.BatchLoader`) and the dropout /
drop-path masks (``manual_seed(derive_seed(seed, epoch, batch))`` before each
step). A checkpoint therefore needs no generator state: resuming from
(epoch, batch) replays exactly the batches and masks an uninterrupted run
would have seen, and ends with the same weights.

What a checkpoint holds, a resume putting it back and the files each epoch writes (``last.npz``,
``best.npz``, the logs and plots) are :mod:`pvt_np.training.state`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from pvt_np import backend, distributed
from pvt_np.backend import Array
from pvt_np.data.augment import resize_bilinear
from pvt_np.io.checkpoint import load_checkpoint
from pvt_np.models import ModelMeta
from pvt_np.models.pvt_v2 import PyramidVisionTransformerV2
from pvt_np.nn import CrossEntropyLoss
from pvt_np.optim import AdamW, CosineWarmupSchedule, clip_grad_norm_, param_groups_weight_decay
from pvt_np.training.budget import fit_epochs, fit_time_budget
from pvt_np.training.capturable import CapturableStep
from pvt_np.training.config import CIFAR_TRAIN_OVERRIDES, TrainConfig
from pvt_np.training.cuda_graph import StaticStep, graph_mode
from pvt_np.training.datasets import fetch_data, load_run_data
from pvt_np.training.ema import update_ema, weights_swapped_in
from pvt_np.training.errors import TrainingError
from pvt_np.training.interrupt import ctrl_c_requests_stop
from pvt_np.training.lowres import halves_by_default, low_res_epoch_count, reduced_size
from pvt_np.training.model import build_model
from pvt_np.training.report import describe_run, epoch_line, epoch_row
from pvt_np.training.rundir import check_run_directory, write_config
from pvt_np.training.state import checkpoint_state, restore, save_last, write_epoch
from pvt_np.training.tta import evaluate, scoring_tta
from pvt_np.training.validation import ConfigError


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
        check_run_directory(self.out, resume)
        self._stop_requested = False
        # Data-parallel ranks (mpiexec): each takes a slice of every batch, rank 0 alone writes.
        self.world = distributed.join_world(config.device)
        if not self.world.is_root:
            self.config = replace(config, progress=False)

    # -- set-up ---------------------------------------------------------------
    def _setup(self) -> None:
        cfg = self.config
        data = load_run_data(cfg, self.world)
        self.train_set, self.test_set, self.train_loader, self.test_loader = (
            data.train_set,
            data.test_set,
            data.train_loader,
            data.test_loader,
        )
        mean, std = data.mean, data.std
        self.normalize = {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}
        self.num_classes = self.train_set.num_classes
        if cfg.cifar_stem is None:  # resolve 'auto' so the checkpoint records the model actually built
            cfg = self.config = replace(cfg, cifar_stem=max(self.train_set.image_size) <= 64)
        recipe = {k: v for k, v in CIFAR_TRAIN_OVERRIDES.items() if k not in cfg.model_overrides}
        if cfg.cifar_stem and recipe and not self.resume:
            cfg = self.config = replace(cfg, model_overrides={**cfg.model_overrides, **recipe})
        self.model = build_model(cfg, self.num_classes, self.train_set.image_size)
        self.low_res_default = halves_by_default(self.model, cfg, self.train_set.image_size)
        # What predict needs to prepare an image as this run's were; saved with the weights.
        self.model.meta = ModelMeta(
            classes=self.train_set.classes, input_size=self.train_set.image_size, mean=mean, std=std
        )
        self.criterion = CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        # Graph mode (pvt_np.training.cuda_graph): every per-step value on the device, the step recorded once
        self.graphed = graph_mode(cfg.device, cfg.cuda_graph, self.world.size)
        self.optimizer = AdamW(
            param_groups_weight_decay(self.model, cfg.weight_decay), lr=cfg.lr, capturable=self.graphed
        )
        self.static_step: StaticStep | None = None  # made in fit, once the schedule is final
        self._build_schedule()
        # The EMA of the weights (config.ema_decay; see pvt_np.training.ema).
        self.ema = self.model.state_dict() if cfg.ema_decay is not None else None
        self.history: list[dict[str, Any]] = []
        # Training loss, accuracy and lr as they were read (every step on the CPU, every
        # log_every steps on the GPU), for plots; saved as steps.csv with each last.npz.
        self.step_log: list[dict[str, Any]] = []
        self.best_accuracy = -1.0
        self.epoch, self.batch = 0, 0
        self.partial = {"loss_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}
        if self.resume:
            restore(self, load_checkpoint(self.out / "last.npz"))

    def _fit_budget(self) -> None:
        """Fit the epochs (and so the cosine) to config.time_budget (see pvt_np.training.budget)."""
        fit = fit_time_budget(self, train_step)
        self.config = replace(self.config, epochs=fit["epochs"], budget_fit=fit)
        self._build_schedule()

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

    def checkpoint_state(self) -> dict[str, Any]:
        """What last.npz holds (see pvt_np.training.state)."""
        return checkpoint_state(self)

    # -- the loop ---------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train to the configured number of epochs; returns the last epoch's metrics."""
        world = self.world
        if world.size > 1 and self.config.download:  # rank 0 fetches the archive alone; the others then find it
            world.agree(lambda: fetch_data(self.config) if world.is_root else None)
        world.agree(self._setup)  # a rank that cannot read the data stops every rank, before anything is written
        self.allreduce = distributed.GradientAllReduce(world, self.config.device) if world.size > 1 else None
        if self.config.time_budget is not None and self.config.budget_fit is None:
            self._fit_budget()
        if self.graphed:
            cfg = self.config
            capturable = CapturableStep(
                self.model, self.criterion, self.optimizer, self.schedule, steps_per_epoch=len(self.train_loader),
                log_every=cfg.log_every, clip_grad=cfg.clip_grad, ema=self.ema, ema_decay=cfg.ema_decay,
            )  # fmt: skip
            self.static_step = StaticStep(capturable)
        self.summary = describe_run(self)
        self._on_root(self._write_config)
        if self.config.progress:  # rank 0 only: the other ranks run with progress off
            print(self.summary, flush=True)
        cfg = self.config
        with ctrl_c_requests_stop(self._request_stop):
            while self.epoch < cfg.epochs:
                interrupted = self._train_epoch()
                if interrupted:
                    self._on_root(lambda: save_last(self))
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
        write_config(self.out, asdict(self.config))

    def _request_stop(self) -> bool:
        """Ctrl-C: stop after the current step; False if a stop was already requested (the second Ctrl-C)."""
        first = not self._stop_requested
        self._stop_requested = True
        return first

    def low_res_size(self) -> tuple[int, int]:
        """The image size of the low-resolution epochs (see pvt_np.training.lowres)."""
        return reduced_size(self.train_set.image_size, self.config.low_res_scale)

    def low_res_epochs(self) -> int:
        """How many of the first epochs train on reduced images (see pvt_np.training.lowres)."""
        return low_res_epoch_count(self.config, self.low_res_default)

    def _at_low_res(self, epoch: int) -> str:
        """' at HxW' for an epoch (from 0) that trains on reduced images, for the progress lines; else ''."""
        if epoch >= self.low_res_epochs():
            return ""
        h, w = self.low_res_size()
        return f" at {h}x{w}"

    def _train_epoch(self) -> bool:
        """Run the rest of the current epoch; True if stopped by Ctrl-C."""
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
            if self.static_step is not None:
                return self._train_graphed(bar)
            low_res = self.low_res_size() if self.epoch < self.low_res_epochs() else None
            for x, y in loader.epoch(self.epoch, start_batch=self.batch):
                if low_res is not None:
                    x = resize_bilinear(x, low_res)
                backend.manual_seed(backend.derive_seed(cfg.seed, self.epoch, self.batch, 1))
                loss, logits = train_step(
                    self.model, self.criterion, self.optimizer, x, y, cfg.clip_grad, self.allreduce
                )
                self.schedule.step()
                if self.ema is not None:
                    update_ema(self.ema, self.model, cfg.ema_decay)
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
                    host = backend.to_numpy(losses[:pending])
                    self._flush(host, int(correct), pending, cfg.batch_size, start_time, bar)
                    pending = 0
                    correct[...] = 0
                    start_time = time.perf_counter()
                if self._stop_requested:
                    return True
        finally:
            bar.close()
        return False

    def _train_graphed(self, bar: Any) -> bool:
        """The rest of the epoch through the static-buffer step (graph mode); True if stopped by Ctrl-C.

        As the eager loop, but the step's values stay on the device and the tally is read every
        log_every steps, at the end of the epoch and on a stop.
        """
        cfg = self.config
        loader = self.train_loader
        capturable = self.static_step.step
        capturable.begin_epoch(cfg.seed, self.epoch, self.batch)
        pending = 0
        start_time = time.perf_counter()
        low_res = self.low_res_size() if self.epoch < self.low_res_epochs() else None
        for x, y in loader.epoch(self.epoch, start_batch=self.batch):
            if low_res is not None:
                x = resize_bilinear(x, low_res)
            self.static_step(x, y)
            pending += 1
            self.batch += 1
            if pending == capturable.window or self.batch == len(loader) or self._stop_requested:
                host, correct = capturable.read_tally(pending)
                self._flush(host, correct, pending, cfg.batch_size, start_time, bar)
                capturable.reset_tally()
                pending = 0
                start_time = time.perf_counter()
            if self._stop_requested:
                return True
        return False

    def _flush(self, host: np.ndarray, correct: int, steps: int, batch_size: int, start_time: float, bar: Any) -> None:
        """Account for ``steps`` steps read back: their losses (``host``) and correct predictions."""
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
        correct = self.world.allreduce_sum(correct)
        p["correct"] += correct
        p["seen"] += steps * batch_size
        p["seconds"] += time.perf_counter() - start_time
        lr = float(self.optimizer.param_groups[0]["lr"])
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

    def _evaluate_ema(self, tta: str) -> dict[str, Any]:
        """The test-set figures of the EMA weights, swapped into the model and back."""
        with weights_swapped_in(self.model, self.ema):
            return evaluate(self.model, self.test_loader, self.num_classes, progress=self.config.progress,
                            world=self.world, tta=tta)  # fmt: skip

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
        lr = float(self.optimizer.param_groups[0]["lr"])
        row = epoch_row(self.epoch + 1, p, lr, test, ema, cfg.tta, tta, self.ema is not None)
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
        self._on_root(lambda: write_epoch(self, best_weights, confusion))
        if cfg.progress:
            at_low_res = self._at_low_res(row["epoch"] - 1)
            print(epoch_line(row, tta, ema, best_weights, cfg.eval_every, at_low_res), flush=True)


# Besides its own: the names pvt_np.training.trainer gave before the parts of the trainer had modules of their own.
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
