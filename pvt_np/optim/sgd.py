"""SGD with optional momentum, equal to ``torch.optim.SGD``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from pvt_np import backend
from pvt_np.optim.base import Optimizer, ParamsT, _nonneg


class SGD(Optimizer):
    r"""Stochastic gradient descent with optional momentum, equal to ``torch.optim.SGD`` (maximize=False).

    For each parameter ``p`` with gradient ``g`` (parameters whose ``grad`` is None are skipped)::

        d <- g + weight_decay * p                       # L2 penalty (coupled), when weight_decay != 0
        if momentum != 0:
            b <- d                       on the first update of p   (state 'momentum_buffer')
            b <- momentum * b + (1 - dampening) * d     afterwards
            d <- d + momentum * b        if nesterov, else  d <- b
        p <- p - lr * d

    ``nesterov`` needs ``momentum > 0`` and ``dampening == 0``. The gradient itself is never modified.
    """

    state_keys = ("momentum_buffer",)

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
    ) -> None:
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "dampening": dampening,
            "nesterov": nesterov,
            "weight_decay": weight_decay,
        }
        super().__init__(params, defaults)

    def _check_options(self, options: dict[str, Any], where: str) -> dict[str, Any]:
        for key in ("lr", "momentum", "dampening", "weight_decay"):
            options[key] = _nonneg(options[key], key, where)
        if not isinstance(options["nesterov"], (bool, np.bool_)):
            raise ValueError(f"{where}: nesterov: expected True or False, got {options['nesterov']!r}")
        options["nesterov"] = bool(options["nesterov"])
        if options["nesterov"] and (options["momentum"] <= 0 or options["dampening"] != 0):
            raise ValueError(
                f"{where}: nesterov=True: expected momentum > 0 and dampening == 0, "
                f"got momentum={options['momentum']!r}, dampening={options['dampening']!r}"
            )
        return options

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One SGD update of every parameter that has a gradient; returns ``closure()`` if given."""
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            momentum, dampening, nesterov = group["momentum"], group["dampening"], group["nesterov"]
            for p in group["params"]:
                g = p.grad
                if g is None:
                    continue
                data = p.data
                xp = backend.get_array_module(data)
                owned = wd != 0  # is d a scratch array of ours (safe to overwrite)?
                if owned:
                    d = xp.multiply(data, wd)  # g.add(p, alpha=wd)
                    d += g
                else:
                    d = g
                if momentum != 0:
                    state = self.state.setdefault(p, {})
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = d.copy()
                        state["momentum_buffer"] = buf
                    else:
                        buf *= momentum  # buf.mul_(momentum).add_(d, alpha=1 - dampening)
                        if dampening != 0:
                            buf += xp.multiply(d, 1 - dampening)
                        else:
                            buf += d
                    if nesterov:  # d.add(buf, alpha=momentum)
                        scaled = xp.multiply(buf, momentum)
                        if owned:
                            d += scaled
                        else:
                            d = xp.add(d, scaled, out=scaled)
                            owned = True
                    else:
                        d = buf
                        owned = False
                # p.add_(d, alpha=-lr): p + (-lr) * d == p - lr * d exactly
                data -= xp.multiply(d, lr, out=d) if owned else xp.multiply(d, lr)
        return loss
