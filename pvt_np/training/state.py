"""What a run keeps of its trainer on disk: the checkpoint's state, a resume putting it back, the files of an epoch.

Checkpoints (``last.npz`` every epoch and on Ctrl-C, ``best.npz`` on a new best test accuracy, of the raw weights
or of their EMA when the run keeps one) are written to a temporary file and renamed, so a run killed at any moment
keeps its previous checkpoint intact; the next start in that directory removes the temporary files such a kill
leaves behind. A checkpoint needs no generator state: everything random is a pure function of (seed, epoch, batch)
(see :mod:`pvt_np.training.trainer`).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from pvt_np.io.checkpoint import save_checkpoint
from pvt_np.io.record import model_record
from pvt_np.training.config import check_resumable
from pvt_np.training.ema import ema_on_device
from pvt_np.training.rundir import write_metrics
from pvt_np.training.steplog import read_step_log, write_step_log

if TYPE_CHECKING:
    import numpy as np

    from pvt_np.training.trainer import Trainer

__all__ = ["checkpoint_state", "restore", "restore_progress", "save_last", "write_epoch"]


def checkpoint_state(trainer: Trainer) -> dict[str, Any]:
    """What last.npz holds: the config, the weights (and their EMA), the optimizer, the schedule and progress."""
    return {
        "config": {**asdict(trainer.config), **trainer.config.architecture()},
        "num_classes": trainer.num_classes,
        "classes": list(trainer.train_set.classes),
        "normalize": trainer.normalize,
        "model_record": model_record(trainer.model),
        "model": trainer.model.state_dict(),
        "weights": "raw",  # what "model" holds: the trained weights ("ema": their moving average)
        "ema": trainer.ema,
        "optimizer": trainer.optimizer.state_dict(),
        "schedule": trainer.schedule.state_dict(),
        "progress": {"epoch": trainer.epoch, "batch": trainer.batch, "partial": dict(trainer.partial)},
        "history": trainer.history,
        "best_accuracy": trainer.best_accuracy,
    }


def restore_progress(trainer: Any, ckpt: dict[str, Any]) -> None:
    """What either task's trainer resumes alike: weights, optimizer, schedule, where the epoch stopped, history."""
    trainer.model.load_state_dict(ckpt["model"])
    trainer.optimizer.load_state_dict(ckpt["optimizer"])
    trainer.schedule.load_state_dict(ckpt["schedule"])
    trainer.epoch, trainer.batch = ckpt["progress"]["epoch"], ckpt["progress"]["batch"]
    trainer.partial = ckpt["progress"]["partial"]
    trainer.history = ckpt["history"]


def restore(trainer: Trainer, ckpt: dict[str, Any]) -> None:
    """Put a checkpoint's state (``checkpoint_state``'s) back into a set-up ``trainer``, after checking it fits."""
    check_resumable(ckpt, trainer.config, trainer.num_classes, trainer.out / "last.npz")
    restore_progress(trainer, ckpt)
    trainer.best_accuracy = ckpt["best_accuracy"]
    if trainer.ema is not None:
        trainer.ema = ema_on_device(ckpt["ema"], trainer.model)
    steps_done = trainer.epoch * len(trainer.train_loader) + trainer.batch
    trainer.step_log = read_step_log(trainer.out / "steps.csv", steps_done)


def save_last(trainer: Trainer) -> None:
    """last.npz and steps.csv, for a run stopped within an epoch (rank 0's job)."""
    save_checkpoint(trainer.out / "last.npz", checkpoint_state(trainer))
    write_step_log(trainer.out / "steps.csv", trainer.step_log)


def write_epoch(trainer: Trainer, best_weights: str | None, confusion: np.ndarray | None) -> None:
    """Checkpoints, logs and plots of the epoch just ended (rank 0's job).

    ``best_weights``: None, or which weights ("raw" or "ema") set a new best test accuracy;
    best.npz then holds those as its model, so ``load_model`` gets the weights that scored.
    """
    out = trainer.out
    ckpt = checkpoint_state(trainer)
    save_checkpoint(out / "last.npz", ckpt)
    if best_weights == "ema":
        save_checkpoint(out / "best.npz", {**ckpt, "model": trainer.ema, "weights": "ema"})
    elif best_weights == "raw":
        save_checkpoint(out / "best.npz", ckpt)
    write_metrics(out, trainer.history)
    write_step_log(out / "steps.csv", trainer.step_log)
    from pvt_np.training.plots import plot_confusion, plot_curves

    plot_curves(trainer.history, out / "curves.png", trainer.step_log)
    if trainer.epoch == trainer.config.epochs and confusion is not None:
        plot_confusion(confusion, list(trainer.train_set.classes), out / "confusion.png")
