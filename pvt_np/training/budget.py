"""The time budget (``--time-budget``): a timed probe before training, and the epochs fitted to what is left.

The probe times a few steps of a throw-away copy of the model, a few test batches and what is written after
each epoch; :func:`fit_epochs` then takes the most epochs whose training and evaluations fit in the budget.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pvt_np import backend
from pvt_np.backend import Array
from pvt_np.data.augment import resize_bilinear
from pvt_np.io.checkpoint import save_checkpoint
from pvt_np.nn import no_grad
from pvt_np.optim import AdamW, param_groups_weight_decay
from pvt_np.training.errors import TrainingError
from pvt_np.training.model import build_model
from pvt_np.training.steplog import write_step_log
from pvt_np.training.tta import TTA_VIEWS, scoring_tta

if TYPE_CHECKING:
    from pvt_np.training.trainer import Trainer

# The time-budget probe: PROBE_STEPS training steps of a throw-away copy of the model (the first, which
# allocates, untimed) and PROBE_EVAL_BATCHES test batches; BUDGET_MARGIN of the budget is kept back for
# what the probe does not time (checkpoints, plots, the EMA update) and for the machine's jitter.
PROBE_STEPS = 12
PROBE_EVAL_BATCHES = 2
BUDGET_MARGIN = 0.03
# With progressive resizing, also PROBE_LOW_RES_STEPS steps on the reduced images (the first untimed: new shapes).
PROBE_LOW_RES_STEPS = 6


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


def fit_time_budget(trainer: Trainer, step: Callable[..., tuple[Array, Array]]) -> dict[str, float]:
    """The number of epochs that ends ``trainer``'s run within config.time_budget minutes, with what was measured
    (the record the run keeps as config.budget_fit).

    Times PROBE_STEPS steps (loading and augmenting the batches included) of a fresh copy of
    the model with its own optimizer, and PROBE_EVAL_BATCHES test batches, then takes the most
    epochs E whose training and evaluations (every eval_every epochs and the last, twice with an
    EMA) fit in what is left of the budget less BUDGET_MARGIN. The probe leaves the run's model,
    optimizer and random draws untouched (every step reseeds), so the run is the plain run of E
    epochs: the cosine ends at min_lr. On several ranks rank 0's timings decide, for all.
    ``step``: the training step the run's loop takes (timed as the loop calls it).
    """
    cfg = trainer.config
    steps_per_epoch = len(trainer.train_loader)
    model = build_model(cfg, trainer.num_classes, trainer.train_set.image_size)
    optimizer = AdamW(param_groups_weight_decay(model, cfg.weight_decay), lr=cfg.lr)
    model.train()

    def seconds_per_step(steps: int, size: tuple[int, int] | None) -> float:
        done = [time.monotonic()]  # the probe's start, then the end of each step
        for k in range(min(steps, steps_per_epoch)):
            x, y = trainer.train_loader.batch(0, k)
            if size is not None:
                x = resize_bilinear(x, size)
            backend.manual_seed(backend.derive_seed(cfg.seed, 0, k, 1))
            loss, _ = step(model, trainer.criterion, optimizer, x, y, cfg.clip_grad, trainer.allreduce)
            float(loss)  # wait for the device
            done.append(time.monotonic())
        # The first step allocates and warms caches: time from the second on (when there is one).
        timed = done[1:] if len(done) > 2 else done
        return (timed[-1] - timed[0]) / (len(timed) - 1)

    step_seconds = seconds_per_step(PROBE_STEPS, None)
    low_res = cfg.low_res_epochs is None and trainer.low_res_default  # (typed epochs are refused with a budget)
    low_step_seconds = seconds_per_step(PROBE_LOW_RES_STEPS, trainer.low_res_size()) if low_res else 0.0
    now = time.monotonic()
    model.eval()
    eval_batches = min(PROBE_EVAL_BATCHES, len(trainer.test_loader))
    with no_grad():
        for k, (x, _) in enumerate(trainer.test_loader.epoch(0)):
            if k == eval_batches:
                break
            float(model(x).sum())
    view_seconds = (time.monotonic() - now) / eval_batches * len(trainer.test_loader)
    view_seconds *= 2 if cfg.ema_decay is not None else 1
    # One forward pass over the test set per view; the last evaluation may have more views than the others.
    eval_seconds = view_seconds * len(TTA_VIEWS[scoring_tta(cfg.tta, last=False)])
    last_eval_seconds = view_seconds * len(TTA_VIEWS[cfg.tta])
    write_seconds = 0.0
    if trainer.world.is_root:  # what rank 0 writes after each epoch, into a scratch folder: timed the second time
        with tempfile.TemporaryDirectory() as scratch:  # (the first imports matplotlib)
            _write_epoch_files(trainer, Path(scratch))
            now = time.monotonic()
            _write_epoch_files(trainer, Path(scratch))
            write_seconds = time.monotonic() - now
    elapsed = time.monotonic() - trainer.started
    if trainer.world.size > 1:  # rank 0's measurements, on every rank
        root = trainer.world.is_root
        step_seconds, low_step_seconds, eval_seconds, last_eval_seconds, write_seconds, elapsed = (
            trainer.world.allreduce_sum(v if root else 0.0)
            for v in (step_seconds, low_step_seconds, eval_seconds, last_eval_seconds, write_seconds, elapsed)
        )
    available = cfg.time_budget * 60.0 * (1.0 - BUDGET_MARGIN) - elapsed
    epoch_seconds = steps_per_epoch * step_seconds + write_seconds
    low_epoch_seconds = steps_per_epoch * low_step_seconds + write_seconds if low_res else None
    epochs = fit_epochs(available, epoch_seconds, eval_seconds, cfg.eval_every, low_epoch_seconds, last_eval_seconds)
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
    return fit


def _write_epoch_files(trainer: Trainer, folder: Path) -> None:
    """Write what the trainer writes after each epoch (two checkpoints, the logs, the plots) into ``folder``."""
    from pvt_np.training.plots import plot_curves

    ckpt = trainer.checkpoint_state()
    save_checkpoint(folder / "last.npz", ckpt)
    save_checkpoint(folder / "best.npz", ckpt)
    row = {"epoch": 1, "train_loss": 1.0, "train_accuracy": 0.5, "test_loss": 1.0, "test_accuracy": 0.5}
    write_step_log(folder / "steps.csv", trainer.step_log)
    plot_curves([row], folder / "curves.png", trainer.step_log)


__all__ = ["BUDGET_MARGIN", "PROBE_EVAL_BATCHES", "PROBE_LOW_RES_STEPS", "PROBE_STEPS", "fit_epochs", "fit_time_budget"]
