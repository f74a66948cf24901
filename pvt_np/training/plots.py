"""PNG plots of a run: loss and accuracy curves, and the confusion matrix."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pvt_np.io.atomic import atomic_write


def _figure(nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] = (6, 4)) -> tuple[Any, Any]:
    """A Figure of its own (no pyplot), so saving plots never changes the user's matplotlib backend."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols)


def _save(fig: Any, path: str | Path) -> None:
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110, bbox_inches="tight")


def smooth(values: Sequence[float], width: int) -> np.ndarray:
    """Trailing moving average over ``width`` values (over fewer at the start, where fewer exist)."""
    v = np.asarray(values, dtype=np.float64)
    sums = np.concatenate(([0.0], np.cumsum(v)))
    end = np.arange(1, v.size + 1)
    start = np.maximum(end - max(int(width), 1), 0)
    return (sums[end] - sums[start]) / (end - start)


def plot_curves(
    history: Sequence[dict[str, Any]], path: str | Path, steps: Sequence[dict[str, Any]] | None = None
) -> None:
    """Save :func:`curves_figure` of the run as a PNG at ``path``."""
    _save(curves_figure(history, steps), path)


def curves_figure(history: Sequence[dict[str, Any]], steps: Sequence[dict[str, Any]] | None = None) -> Any:
    """Train/test loss and accuracy against the epoch, with the per-step training loss when ``steps`` is given.

    history: one row per epoch (``epoch``, ``train_loss``, ``test_loss``, ``train_accuracy``, ``test_accuracy``;
        the test figures None where the epoch was not evaluated; ``ema_test_loss`` and ``ema_test_accuracy`` too
        when the run keeps an EMA of its weights, ``test_accuracy_single_view`` when it scores with the flip TTA,
        ``test_accuracy_flip`` in a row scored by the ten views of ``--tta flip-shift`` or the fifty of
        ``flip-grid``, which has ``test_accuracy_flip_shift`` too).
    steps: the step log (``epoch`` as a fraction, ``loss``): drawn faintly as read and smoothed over
        about a twentieth of the run, so the noise of single batches does not hide the trend.
    """
    from matplotlib.ticker import MaxNLocator

    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_acc) = _figure(1, 2, figsize=(10, 4))
    if steps:
        x = [s["epoch"] for s in steps]
        loss = [s["loss"] for s in steps]
        ax_loss.plot(x, loss, color="tab:blue", alpha=0.2, lw=0.8)
        ax_loss.plot(
            x, smooth(loss, max(1, len(loss) // 20)), color="tab:blue", lw=1.5, label="train (per step, smoothed)"
        )
    ax_loss.plot(epochs, [r["train_loss"] for r in history], "o", color="tab:blue", label="train (epoch mean)")
    ax_acc.plot(epochs, [100 * r["train_accuracy"] for r in history], "o-", label="train")
    # Test figures exist only for the evaluated epochs (eval_every), the EMA's only when it is kept,
    # the single view's only when the test images were scored with their mirror images (--tta flip).
    single = [r for r in history if r.get("test_accuracy_single_view") is not None]
    test_label = "test (flip TTA)" if single else "test"
    # A flip-shift (flip-grid) run scores its last epoch by ten (fifty) views and records the flip's accuracy
    # beside it (test_accuracy_flip): the flip line takes that, and the many views get a marker of their own.
    many_views = [r for r in history if r.get("test_accuracy_flip") is not None]
    views = "fifty views" if any(r.get("test_accuracy_flip_shift") is not None for r in many_views) else "ten views"
    for prefix, label, colour in (("test", test_label, "tab:orange"), ("ema_test", "test (EMA)", "tab:green")):
        scored = [r for r in history if r.get(f"{prefix}_loss") is not None]
        if scored:
            at = [r["epoch"] for r in scored]
            loss_label = f"{label}; {views} last" if prefix == "test" and many_views else label
            ax_loss.plot(at, [r[f"{prefix}_loss"] for r in scored], "o-", color=colour, label=loss_label)
            accuracy = [  # a row the ten views scored puts its flip's score on the flip line
                r["test_accuracy_flip"] if prefix == "test" and r.get("test_accuracy_flip") is not None
                else r[f"{prefix}_accuracy"] for r in scored
            ]  # fmt: skip
            ax_acc.plot(at, [100 * a for a in accuracy], "o-", color=colour, label=label)
    if many_views:
        ax_acc.plot([r["epoch"] for r in many_views], [100 * r["test_accuracy"] for r in many_views], "*",
                    markersize=12, color="tab:red", label=f"test ({views})")  # fmt: skip
    if single:
        ax_acc.plot([r["epoch"] for r in single], [100 * r["test_accuracy_single_view"] for r in single], "o--",
                    color="tab:orange", alpha=0.6, label="test (single view)")  # fmt: skip
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    # Both panels span the run from its start (epoch 0) to its last epoch, so a one-epoch run shows its points at
    # the end of a 0-1 axis instead of alone in a window of +-5% around epoch 1.
    last = max(epochs, default=1)
    for ax in (ax_loss, ax_acc):
        ax.set_xlim(-0.03 * last, 1.03 * last)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers: no 0.5, 1.5 ticks
        ax.grid(alpha=0.3)
        ax.legend()
    return fig


def plot_confusion(confusion: np.ndarray, classes: Sequence[str], path: str | Path) -> None:
    """Row-normalised confusion matrix (rows: true class, columns: predicted), counts written in."""
    counts = np.asarray(confusion)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    k = len(classes)
    size = max(5.0, 0.55 * k)
    fig, ax = _figure(figsize=(size, size))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    if k <= 20:
        ax.set_xticks(range(k), classes, rotation=60, ha="right")
        ax.set_yticks(range(k), classes)
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if rates[i, j] > 0.5 else "black")  # fmt: skip
    ax.set(xlabel="predicted", ylabel="true", title=f"confusion matrix ({np.trace(counts) / counts.sum():.1%} correct)")
    _save(fig, path)
