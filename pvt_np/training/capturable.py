"""The classification training step with every per-step value on the device: no host transfer inside a step.

What the eager loop of :mod:`pvt_np.training.trainer` passes from the host each step lives here in device
arrays, updated by the step itself:

* the learning rate: the schedule's step counter and a table of its values
  (:meth:`pvt_np.optim.CosineWarmupSchedule.to_device`);
* AdamW's step counts, step sizes and bias corrections (``AdamW(capturable=True)``);
* the dropout/drop-path key: ``keys[batch]`` with ``keys`` the epoch's SplitMix64 keys
  ``mix64(derive_seed(seed, epoch, b, 1))``, made on the host once per epoch, and ``batch`` a device
  counter (:func:`pvt_np.backend.use_device_key`), so the masks are those the eager GPU step draws
  after ``manual_seed(derive_seed(seed, epoch, batch, 1))``;
* the losses and the count of correct predictions, written into a device buffer ``tally`` that the
  trainer reads back (one transfer) every ``log_every`` steps and at the end of an epoch.

Gradients are zeroed in place (``zero_grad(set_to_none=False)``), so they, the optimizer's state and these
scalars are arrays made in the first step and reused by every later one: the step makes no host
transfer, no branch on data, and from its second call on no new buffer for the state. That lets
:mod:`pvt_np.training.cuda_graph` record it once as a CUDA graph and replay it.
"""

from __future__ import annotations

import numpy as np

from pvt_np import backend
from pvt_np.backend import Array
from pvt_np.counter_rng import mix64
from pvt_np.models.pvt_v2 import PyramidVisionTransformerV2
from pvt_np.nn import CrossEntropyLoss
from pvt_np.optim import AdamW, CosineWarmupSchedule, clip_grad_norm_
from pvt_np.training.ema import update_ema


def epoch_keys(seed: int, epoch: int, steps: int) -> np.ndarray:
    """The SplitMix64 keys of an epoch's dropout/drop-path masks, one per batch (uint64, on the host)."""
    return np.array([mix64(backend.derive_seed(seed, epoch, b, 1)) for b in range(steps)], dtype=np.uint64)


class CapturableStep:
    """``step(x, y)``: one training step of the classification trainer with its per-step values on the device.

    The eager step's order: mask key, zero_grad, forward, loss, backward, optional gradient clipping,
    AdamW, schedule, optional EMA, then the loss into ``tally[slot]`` and the batch's correct
    predictions into ``tally[-1]``. ``optimizer`` must be ``AdamW(capturable=True)``; ``schedule`` is moved
    to the device here.
    """

    def __init__(
        self,
        model: PyramidVisionTransformerV2,
        criterion: CrossEntropyLoss,
        optimizer: AdamW,
        schedule: CosineWarmupSchedule,
        *,
        steps_per_epoch: int,
        log_every: int,
        clip_grad: float | None = None,
        ema: dict[str, Array] | None = None,
        ema_decay: float | None = None,
    ) -> None:
        if not getattr(optimizer, "capturable", False):
            raise ValueError(f"CapturableStep: optimizer: expected AdamW(capturable=True), got {optimizer!r}")
        self.model, self.criterion, self.optimizer, self.schedule = model, criterion, optimizer, schedule
        self.clip_grad, self.ema, self.ema_decay = clip_grad, ema, ema_decay
        xp = self.xp = backend.get_array_module(next(iter(model.parameters())).data)
        schedule.to_device(xp)
        self.window = max(int(log_every), 1)
        self.batch = xp.zeros((), dtype=np.int64)  # the batch within the epoch: the index of its mask key
        self.keys = xp.zeros(int(steps_per_epoch), dtype=np.uint64)
        self.key = xp.zeros((), dtype=np.uint64)
        self.slot = xp.zeros((), dtype=np.int64)  # where the next step's loss goes in tally
        # tally[:window]: the losses of the steps since the last read; tally[window]: their correct predictions
        # (exact in float64 below 2**53), so that one transfer reads both
        self.tally = xp.zeros(self.window + 1, dtype=np.float64)

    def begin_epoch(self, seed: int, epoch: int, start_batch: int) -> None:
        """Before an epoch's first step (or the first after a resume at ``start_batch``): its mask keys."""
        self.keys[...] = self.xp.asarray(epoch_keys(seed, epoch, self.keys.shape[0]))
        self.batch[...] = start_batch
        self.reset_tally()

    def reset_tally(self) -> None:
        """After the trainer has read the tally: the next step writes its loss at slot 0."""
        self.slot[...] = 0
        self.tally[...] = 0

    def read_tally(self, steps: int) -> tuple[np.ndarray, int]:
        """The losses of the last ``steps`` steps and their correct predictions, in one transfer."""
        host = backend.to_numpy(self.tally)
        return host[:steps], int(host[self.window])

    def __call__(self, x: Array, y: Array) -> None:
        xp = self.xp
        xp.take(self.keys, self.batch, out=self.key)
        backend.use_device_key(xp, self.key)
        self.optimizer.zero_grad(set_to_none=False)
        logits = self.model(x)
        loss = self.criterion(logits, y)
        self.model.backward(self.criterion.backward(), input_grad=False)
        if self.clip_grad is not None:
            clip_grad_norm_(self.model.parameters(), self.clip_grad)
        self.optimizer.step()
        self.schedule.step()
        if self.ema is not None:
            update_ema(self.ema, self.model, self.ema_decay)
        labels = y if y.ndim == 1 else y.argmax(axis=1)
        xp.put(self.tally, self.slot, loss)
        self.tally[self.window :] += (logits.argmax(axis=1) == labels).sum()
        xp.add(self.slot, 1, out=self.slot)
        xp.add(self.batch, 1, out=self.batch)
