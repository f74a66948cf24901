"""Checks of a :class:`~pvt_np.training.TrainConfig`: each bad setting named, with its allowed range and value.

The checks live here, once, for the Python API and the command line alike: a
:class:`ConfigError` carries the setting's field name, what was expected and what
came, so ``pvt-np train`` can say the same thing in terms of its own flags
(``argument --batch-size: expected an integer >= 1, got 0``) instead of quoting
an internal class deep in the loop (the loader, the optimizer, the schedule).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from pvt_np.data import DATASETS
from pvt_np.models import list_models

__all__ = ["ConfigError", "check_subset", "check_train_config"]


# Test-time augmentation of the evaluation (see pvt_np.training.tta): the image alone; the mean of its logits and its
# mirror image's; those two and each shifted by 2 pixels in four directions (ten views); those two at every shift of
# up to 2 pixels each way (fifty views). A run scores its last evaluation by the ten or fifty views and the ones
# before it with the flip alone.
TTA_MODES = ("none", "flip", "flip-shift", "flip-grid")


class ConfigError(ValueError):
    """A training setting outside its allowed range; ``field``, ``expected`` and ``got`` say which and why."""

    def __init__(self, field: str, expected: str, got: Any) -> None:
        self.field, self.expected, self.got = field, expected, got
        super().__init__(f"TrainConfig: {field}: expected {expected}, got {got!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _int_at_least(config: Any, field: str, low: int, optional: bool = False) -> None:
    value = getattr(config, field)
    if optional and value is None:
        return
    if not _is_int(value) or value < low:
        raise ConfigError(field, f"an integer >= {low}" + (" (or None: all of them)" if optional else ""), value)


def _real_in(config: Any, field: str, low: float, high: float, *, high_open: bool, what: str = "") -> None:
    value = getattr(config, field)
    ok = _is_real(value) and low <= value and (value < high if high_open else value <= high)
    if not ok:
        bracket = ")" if high_open else "]"
        high_text = "inf" if math.isinf(high) else f"{high:g}"
        raise ConfigError(field, f"a number in [{low:g}, {high_text}{bracket}{what}", value)


def check_train_config(config: Any) -> None:
    """Raise :class:`ConfigError` for the first setting of ``config`` outside its range.

    What depends on the data (the subset sizes against the number of images, the batch
    size against the training images used, whether the overrides build a model) is
    checked by the trainer once the data is loaded.
    """
    if config.model not in list_models():
        raise ConfigError("model", f"one of {', '.join(list_models())}", config.model)
    if not isinstance(config.model_overrides, dict):
        raise ConfigError("model_overrides", "a dict of create_model arguments", config.model_overrides)
    if config.cifar_stem not in (None, True, False):
        raise ConfigError("cifar_stem", "True, False or None (auto: for images of 64 px or less)", config.cifar_stem)
    if config.dataset not in DATASETS:
        raise ConfigError("dataset", f"one of {', '.join(DATASETS)}", config.dataset)
    _int_at_least(config, "epochs", 1)
    _int_at_least(config, "batch_size", 1)
    _int_at_least(config, "eval_batch_size", 1)
    _int_at_least(config, "eval_every", 1)
    # Learning rates above 0 only: a zero peak rate trains nothing, and AdamW refuses a negative one.
    if not _is_real(config.lr) or config.lr <= 0:
        raise ConfigError("lr", "a finite number > 0", config.lr)
    _real_in(config, "min_lr", 0.0, config.lr, high_open=False, what=" (at most the peak learning rate)")
    _real_in(config, "warmup_epochs", 0.0, config.epochs, high_open=False, what=" (at most the number of epochs)")
    _real_in(config, "weight_decay", 0.0, math.inf, high_open=True)
    _real_in(config, "label_smoothing", 0.0, 1.0, high_open=True)
    if config.clip_grad is not None and (not _is_real(config.clip_grad) or config.clip_grad <= 0):
        raise ConfigError("clip_grad", "a finite number > 0 (or None: no clipping)", config.clip_grad)
    _real_in(config, "drop_rate", 0.0, 1.0, high_open=True)
    _real_in(config, "drop_path_rate", 0.0, 1.0, high_open=True)
    _int_at_least(config, "crop_padding", 0)
    _real_in(config, "mixup", 0.0, math.inf, high_open=True, what=" (0: off)")
    _real_in(config, "cutmix", 0.0, math.inf, high_open=True, what=" (0: off)")
    if config.ema_decay is not None and (not _is_real(config.ema_decay) or not 0 < config.ema_decay < 1):
        raise ConfigError("ema_decay", "a number in (0, 1) (or None: no EMA)", config.ema_decay)
    if config.time_budget is not None and (not _is_real(config.time_budget) or config.time_budget <= 0):
        raise ConfigError("time_budget", "a number of minutes > 0 (or None: train --epochs)", config.time_budget)
    if config.budget_fit is not None and not isinstance(config.budget_fit, dict):
        raise ConfigError("budget_fit", "None or the record of a time-budget fit (a dict)", config.budget_fit)
    low_res = config.low_res_epochs
    if low_res is not None and (not _is_int(low_res) or not 0 <= low_res <= config.epochs):
        raise ConfigError(
            "low_res_epochs", f"an integer from 0 to the number of epochs ({config.epochs}) (none given: the first "
            "half)", low_res,
        )  # fmt: skip
    if not _is_real(config.low_res_scale) or not 0 < config.low_res_scale <= 1:
        raise ConfigError("low_res_scale", "a number in (0, 1] (the low-resolution epochs' size / the images')",
                          config.low_res_scale)  # fmt: skip
    if config.low_res_epochs and config.time_budget is not None:
        raise ConfigError(
            "low_res_epochs", "0 or none given with --time-budget (it then fits the epochs with their first half at "
            "low resolution itself)",
            config.low_res_epochs,
        )  # fmt: skip
    if config.trivial_augment not in (True, False):
        raise ConfigError("trivial_augment", "True or False", config.trivial_augment)
    if config.cuda_graph not in (True, False):
        raise ConfigError("cuda_graph", "True or False", config.cuda_graph)
    if config.tta not in TTA_MODES:
        raise ConfigError("tta", " or ".join(map(repr, TTA_MODES)), config.tta)
    if config.device not in ("cpu", "gpu"):
        raise ConfigError("device", "'cpu' or 'gpu'", config.device)
    if config.dtype not in ("float32", "float64"):
        raise ConfigError("dtype", "'float32' or 'float64'", config.dtype)
    _int_at_least(config, "seed", 0)
    _int_at_least(config, "train_subset", 1, optional=True)
    _int_at_least(config, "test_subset", 1, optional=True)
    _int_at_least(config, "log_every", 1)


def check_subset(field: str, size: int | None, available: int, what: str) -> None:
    """A subset may not ask for more images than the split has (it would silently use them all)."""
    if size is not None and size > available:
        raise ConfigError(field, f"at most {available} (the number of {what})", size)
