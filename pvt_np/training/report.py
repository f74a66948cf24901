"""What a run records and prints: its one-line description at the start, each epoch's metrics row and line."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pvt_np.complexity import count_flops, count_params
from pvt_np.ops import parallel
from pvt_np.training.tta import LAST_ONLY_TTA

if TYPE_CHECKING:
    from pvt_np.training.trainer import Trainer


def describe_run(trainer: Trainer) -> str:
    """One line: what this run trains, on what, where (printed at its start)."""
    cfg = trainer.config
    h, w = trainer.train_set.image_size
    overrides = "".join(f", {k}={v}" for k, v in cfg.model_overrides.items())
    n = parallel.get_num_threads()
    n_threads = f"{n} thread{'s' if n > 1 else ''}"
    threads = f", {n_threads}" if cfg.device == "cpu" else ""
    if trainer.world.size > 1:
        threads = f", {trainer.world.size} processes (MPI)" + (f" x {n_threads}" if threads else "")
    where = f"resuming at epoch {trainer.epoch + 1}, batch {trainer.batch}" if trainer.resume else "starting"
    if trainer.epoch >= cfg.epochs:
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
    low_epochs = trainer.low_res_epochs()
    low = trainer.low_res_size()
    low_res = f", the first {low_epochs} at {low[0]}x{low[1]}" if low_epochs else ""
    return (
        f"{where}: {cfg.dataset} at {cfg.data_path} ({len(trainer.train_set)} training / {len(trainer.test_set)} test "
        f"images of {h}x{w}, {trainer.num_classes} classes) | {cfg.model} "
        f"({'CIFAR' if cfg.cifar_stem else 'ImageNet'} stem{overrides}): "
        f"{count_params(trainer.model) / 1e6:.3g} M parameters, {count_flops(trainer.model, (h, w)) / 1e6:.3g} "
        f"MFLOPs/image | {cfg.device} {cfg.dtype}{threads} | {cfg.epochs} epochs of {len(trainer.train_loader)} "
        f"steps{low_res}{fitted} | output {trainer.out}"
    )


def epoch_row(
    epoch: int,
    partial: dict[str, Any],
    lr: float,
    test: dict[str, Any] | None,
    ema: dict[str, Any] | None,
    run_tta: str,
    tta: str,
    keeps_ema: bool,
) -> dict[str, Any]:
    """The metrics row of ``epoch`` (counted from 1): its training figures (``partial``: the sums of its steps),
    and the test figures of the raw weights (``test``) and of their EMA (``ema``), None where not evaluated.

    ``run_tta``: the run's --tta; ``tta``: the mode this evaluation scored with (see scoring_tta); ``keeps_ema``:
    whether the run keeps an EMA. The columns depend on those alone, so that every row of a run has the same.
    """
    row = {
        "epoch": epoch,
        "train_loss": partial["loss_sum"] / max(partial["seen"], 1),
        "train_accuracy": partial["correct"] / max(partial["seen"], 1),
        "test_loss": test["loss"] if test is not None else None,  # None: not evaluated (eval_every)
        "test_accuracy": test["accuracy"] if test is not None else None,
        "lr": lr,
        "train_seconds": partial["seconds"],
        "img_per_s": partial["seen"] / max(partial["seconds"], 1e-9),
    }
    if run_tta != "none":
        row["test_accuracy_single_view"] = test["single_view_accuracy"] if test is not None else None
    if tta in LAST_ONLY_TTA:  # the last evaluation of a flip-shift/grid run: the flip, as the others scored
        row["test_accuracy_flip"] = test["flip_accuracy"] if test is not None else None
    if tta == "flip-grid":  # and flip-shift's ten views of it
        row["test_accuracy_flip_shift"] = test["flip_shift_accuracy"] if test is not None else None
    if keeps_ema:
        row["ema_test_loss"] = ema["loss"] if ema is not None else None
        row["ema_test_accuracy"] = ema["accuracy"] if ema is not None else None
    return row


def epoch_line(
    row: dict[str, Any],
    tta: str,
    ema: dict[str, Any] | None,
    best_weights: str | None,
    eval_every: int,
    at_low_res: str,
) -> str:
    """The line printed after an epoch: its ``row``'s figures, which weights (if any) set a new best
    (``best_weights``: None, "raw" or "ema"), and ``at_low_res`` (' at HxW' for a low-resolution epoch)."""
    if row["test_loss"] is None:
        scores = f"test not evaluated (every {eval_every} epochs)"
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
    return (
        f"epoch {row['epoch']}: train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.4f}"
        f"{at_low_res} | {scores} | {row['img_per_s']:.0f} img/s{best}"
    )


__all__ = ["describe_run", "epoch_line", "epoch_row"]
