"""The exponential moving average (EMA) of a run's weights (``--ema-decay``).

Device arrays beside the parameters, the same on every rank because the weights are; updated after each
optimisation step, evaluated beside the raw weights and saved in the checkpoints.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from pvt_np import backend
from pvt_np.backend import Array
from pvt_np.nn import Module


def update_ema(ema: dict[str, Array], model: Module, decay: float) -> None:
    """ema = decay * ema + (1 - decay) * weights, in place, after each update."""
    for name, p in model.named_parameters():
        average = ema[name]
        average *= decay
        average += (1.0 - decay) * p.data


@contextlib.contextmanager
def weights_swapped_in(model: Module, weights: dict[str, Array]) -> Iterator[None]:
    """``weights`` in the model's parameters for the block, then the trained ones back (the same arrays)."""
    params = list(model.named_parameters())
    trained = [p.data for _, p in params]
    try:
        for name, p in params:
            p.data = weights[name]
        yield
    finally:
        for (_, p), data in zip(params, trained, strict=True):
            p.data = data


def ema_on_device(saved: dict[str, Array], model: Module) -> dict[str, Array]:
    """A checkpoint's EMA moved to where the model's parameters are."""
    params = dict(model.named_parameters())
    return {k: backend.to_device(v, backend.device_of(params[k].data)) for k, v in saved.items()}


__all__ = ["ema_on_device", "update_ema", "weights_swapped_in"]
