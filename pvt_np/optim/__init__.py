"""torch.optim-shaped optimizers, gradient clipping and a warmup + cosine learning-rate schedule.

Everything here works on :class:`pvt_np.nn.Parameter` objects (``.data`` and ``.grad``) and
runs unchanged on NumPy and CuPy arrays: each update asks
:func:`pvt_np.backend.get_array_module` for the module that owns the parameter.

No ``step()`` synchronises host and GPU: the step counters, bias corrections and learning
rates are Python numbers, and every array update is an in-place ufunc on the device.
``state_dict()`` returns plain NumPy arrays and Python numbers (it copies from the GPU, so
it does synchronise; call it when checkpointing, not every step).

The updates follow torch's single-tensor (CPU) implementations operation by operation,
so float64 results agree with ``torch.optim`` to rounding (FMA contraction inside torch's
vectorised kernels is the only difference).

One module each: ``base`` (:class:`Optimizer`, what every optimizer shares), ``adamw``, ``sgd``, ``groups``
(:func:`param_groups_weight_decay`), ``clip`` (:func:`clip_grad_norm_`) and ``schedule``; all are re-exported here.
"""

from pvt_np.optim.adamw import AdamW
from pvt_np.optim.base import Optimizer
from pvt_np.optim.clip import clip_grad_norm_
from pvt_np.optim.groups import param_groups_weight_decay
from pvt_np.optim.schedule import CosineWarmupSchedule, cosine_warmup_lr
from pvt_np.optim.sgd import SGD

__all__ = [
    "SGD",
    "AdamW",
    "CosineWarmupSchedule",
    "Optimizer",
    "clip_grad_norm_",
    "cosine_warmup_lr",
    "param_groups_weight_decay",
]
