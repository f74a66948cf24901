"""The learning rate: linear warmup, then cosine decay (:func:`cosine_warmup_lr`, :class:`CosineWarmupSchedule`)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np

from pvt_np.optim.base import _nonneg


def cosine_warmup_lr(
    step: int,
    base_lr: float,
    total_steps: int,
    warmup_steps: int = 0,
    warmup_lr_init: float = 0.0,
    min_lr: float = 0.0,
) -> float:
    """The learning rate of :class:`CosineWarmupSchedule` after ``step`` calls of ``.step()``.

    With ``t = step``, ``W = warmup_steps``, ``T = total_steps``::

        t <  W :       lr = warmup_lr_init + (base_lr - warmup_lr_init) * t / W
        W <= t < T :   lr = min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * (t - W) / (T - W)))
        t >= T :       lr = min_lr

    (evaluated in Python floats in exactly this order). ``lr(0) = warmup_lr_init`` when
    ``W > 0``, ``lr(W) = base_lr``, and the cosine reaches ``min_lr`` at ``t = T``.
    To build the same schedule in torch, give ``torch.optim.lr_scheduler.LambdaLR`` one
    lambda per group, ``lambda t: cosine_warmup_lr(t, base_lr, T, W, warmup_lr_init, min_lr) / base_lr``
    (``base_lr != 0``; LambdaLR multiplies the lambda by base_lr, so values agree to rounding).
    """
    if step < warmup_steps:
        return warmup_lr_init + (base_lr - warmup_lr_init) * step / warmup_steps
    if step >= total_steps:
        return min_lr
    return min_lr + 0.5 * (base_lr - min_lr) * (
        1 + math.cos(math.pi * (step - warmup_steps) / (total_steps - warmup_steps))
    )


def _count(value: Any, name: str, where: str, low: int) -> int:
    if not isinstance(value, (numbers.Integral, np.integer)) or isinstance(value, bool) or value < low:
        raise ValueError(f"{where}: {name}: expected an integer >= {low}, got {value!r}")
    return int(value)


class CosineWarmupSchedule:
    """Per-iteration learning rate: linear warmup, then cosine decay to ``min_lr`` (see :func:`cosine_warmup_lr`).

    Each group's base lr is its ``'initial_lr'`` (set to its current ``'lr'`` when absent, as
    torch schedulers do). Construction sets every group's lr to its value at step 0;
    each ``.step()`` (call it after ``optimizer.step()``, once per iteration) advances
    ``last_step`` by one and sets ``lr = cosine_warmup_lr(last_step, base_lr, ...)``.
    After ``total_steps`` the lr stays at ``min_lr``. Any object with a ``param_groups``
    list of dicts can be driven, including a torch optimizer.

    :meth:`to_device` moves the schedule onto an array module's device for a step that
    issues no host transfer (AdamW's capturable mode): the step counter is then a 0-d int64
    array there, each group's lr a 0-d float64 array there (the group's ``'lr'``), and
    ``.step()`` computes ``lr = table[min(step, total_steps)]`` on the device from a table of
    :func:`cosine_warmup_lr` made once on the host, so the values are the host schedule's bit
    for bit. ``last_step`` and :meth:`get_last_lr` then read the device (a synchronisation).
    """

    def __init__(
        self,
        optimizer: Any,
        total_steps: int,
        warmup_steps: int = 0,
        warmup_lr_init: float = 0.0,
        min_lr: float = 0.0,
    ) -> None:
        where = type(self).__name__
        groups = getattr(optimizer, "param_groups", None)
        if not isinstance(groups, list) or not groups:
            raise ValueError(
                f"{where}: optimizer: expected an optimizer with param_groups, got {type(optimizer).__name__}"
            )
        self.total_steps = _count(total_steps, "total_steps", where, 1)
        self.warmup_steps = _count(warmup_steps, "warmup_steps", where, 0)
        if self.warmup_steps > self.total_steps:
            raise ValueError(
                f"{where}: warmup_steps: expected at most total_steps={self.total_steps}, got {self.warmup_steps}"
            )
        self.warmup_lr_init = _nonneg(warmup_lr_init, "warmup_lr_init", where)
        self.min_lr = _nonneg(min_lr, "min_lr", where)
        self.optimizer = optimizer
        for group in groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_lrs: list[float] = [float(group["initial_lr"]) for group in groups]
        self._last_step = 0
        self._device: dict[str, Any] | None = None  # to_device's arrays: step, per group lr and table
        self._apply()

    @property
    def last_step(self) -> int:
        """How many times ``.step()`` has run (read from the device after :meth:`to_device`)."""
        return self._last_step if self._device is None else int(self._device["step"])

    @last_step.setter
    def last_step(self, value: int) -> None:
        self._last_step = int(value)
        if self._device is not None:
            self._device["step"][...] = self._last_step

    def to_device(self, xp: Any) -> None:
        """Keep the step counter and the lrs on ``xp``'s device from now on (class docstring); each group's
        ``'lr'`` becomes its 0-d float64 array, updated in place by every ``.step()``."""
        step = self.last_step
        steps = range(self.total_steps + 1)
        tables = [xp.asarray(np.array([self.lr_at(t, base) for t in steps])) for base in self.base_lrs]
        self._device = {
            "xp": xp,
            "step": xp.full((), step, dtype=np.int64),
            "index": xp.zeros((), dtype=np.int64),
            "tables": tables,
            "lrs": [xp.zeros((), dtype=np.float64) for _ in tables],
        }
        self._apply()

    def lr_at(self, step: int, base_lr: float) -> float:
        """The lr for a group with base ``base_lr`` after ``step`` iterations."""
        return cosine_warmup_lr(step, base_lr, self.total_steps, self.warmup_steps, self.warmup_lr_init, self.min_lr)

    def get_lr(self) -> list[float]:
        """Each group's lr at ``last_step``."""
        return [self.lr_at(self.last_step, base) for base in self.base_lrs]

    def get_last_lr(self) -> list[float]:
        """The lrs the schedule last set (torch's name), as Python floats."""
        return self.get_lr()

    def _apply(self) -> None:
        if self._device is None:
            for group, lr in zip(self.optimizer.param_groups, self.get_lr(), strict=True):
                group["lr"] = lr
            return
        d = self._device
        d["xp"].minimum(d["step"], self.total_steps, out=d["index"])
        for group, table, lr in zip(self.optimizer.param_groups, d["tables"], d["lrs"], strict=True):
            d["xp"].take(table, d["index"], out=lr)
            group["lr"] = lr

    def step(self) -> None:
        """Advance one iteration and set every group's lr (on the device after :meth:`to_device`)."""
        if self._device is None:
            self._last_step += 1
        else:
            self._device["xp"].add(self._device["step"], 1, out=self._device["step"])
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        """Python numbers only: ``last_step``, ``base_lrs`` and the schedule's settings."""
        return {
            "last_step": self.last_step,
            "base_lrs": list(self.base_lrs),
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "warmup_lr_init": self.warmup_lr_init,
            "min_lr": self.min_lr,
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore ``state_dict()`` output and set the optimizer's lrs for the restored step."""
        where = f"{type(self).__name__}.load_state_dict"
        expected = set(self.state_dict())
        if not isinstance(state_dict, Mapping) or set(state_dict) != expected:
            got = sorted(state_dict) if isinstance(state_dict, Mapping) else type(state_dict).__name__
            raise ValueError(f"{where}: state_dict: expected keys {sorted(expected)}, got {got}")
        base_lrs = [float(b) for b in state_dict["base_lrs"]]
        n_groups = len(self.optimizer.param_groups)
        if len(base_lrs) != n_groups:
            raise ValueError(f"{where}: base_lrs: expected {n_groups} values (one per group), got {len(base_lrs)}")
        total = _count(state_dict["total_steps"], "total_steps", where, 1)
        warmup = _count(state_dict["warmup_steps"], "warmup_steps", where, 0)
        if warmup > total:
            raise ValueError(f"{where}: warmup_steps: expected at most total_steps={total}, got {warmup}")
        last_step = _count(state_dict["last_step"], "last_step", where, 0)
        warmup_lr_init = _nonneg(state_dict["warmup_lr_init"], "warmup_lr_init", where)
        min_lr = _nonneg(state_dict["min_lr"], "min_lr", where)
        self.total_steps, self.warmup_steps = total, warmup
        self.warmup_lr_init, self.min_lr, self.base_lrs = warmup_lr_init, min_lr, base_lrs
        for group, base in zip(self.optimizer.param_groups, base_lrs, strict=True):
            group["initial_lr"] = base
        xp = None if self._device is None else self._device["xp"]
        self._device = None  # the settings may have changed: on the device, new tables
        self.last_step = last_step
        if xp is None:
            self._apply()
        else:
            self.to_device(xp)
