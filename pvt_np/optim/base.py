"""What every optimizer shares: parameter groups, per-parameter state, ``zero_grad`` and ``state_dict``
(:class:`Optimizer`), and the checks of their options."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from pvt_np import backend
from pvt_np.backend import Array
from pvt_np.nn.module import Parameter

ParamsT = Iterable[Parameter] | Iterable[Mapping[str, Any]]


# -- validation helpers -------------------------------------------------------
def _is_real(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _nonneg(value: Any, name: str, where: str) -> float:
    """A finite real number >= 0, returned as a Python float."""
    if not _is_real(value) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{where}: {name}: expected a finite number >= 0, got {value!r}")
    return float(value)


def _unit_interval(value: Any, name: str, where: str) -> float:
    """A real number in [0, 1), returned as a Python float."""
    if not _is_real(value) or not 0.0 <= value < 1.0:
        raise ValueError(f"{where}: {name}: expected a number in [0, 1), got {value!r}")
    return float(value)


def _copy_to_host(x: Array) -> np.ndarray:
    """A NumPy copy that later in-place updates of ``x`` cannot change."""
    return x.copy() if isinstance(x, np.ndarray) else backend.to_numpy(x)


def _host_number(value: Any) -> Any:
    """A 0-d array (a device lr) as a Python float; anything else as it is."""
    return float(value) if getattr(value, "ndim", None) == 0 else value


def _like_param(value: Any, p: Parameter) -> Array:
    """A fresh array with ``value``'s contents on ``p``'s device and in ``p``'s dtype."""
    xp = backend.get_array_module(p.data)
    if xp is np:
        return np.array(backend.to_numpy(value), dtype=p.data.dtype, copy=True)
    return xp.array(value, dtype=p.data.dtype, copy=True)


# -- base class ---------------------------------------------------------------
class Optimizer:
    """Parameter groups, per-parameter state, ``zero_grad`` and ``state_dict`` as in ``torch.optim.Optimizer``.

    ``params`` is an iterable of :class:`Parameter` or of dicts ``{'params': [...], **options}``;
    options missing from a group are taken from the constructor's defaults. ``param_groups``
    is a list of dicts (a scheduler sets ``group['lr']``); ``state`` maps each Parameter to
    its state dict (created on its first update).
    """

    #: names of the entries every parameter's state holds (validated by load_state_dict)
    state_keys: tuple[str, ...] = ()

    def __init__(self, params: ParamsT, defaults: dict[str, Any]) -> None:
        name = type(self).__name__
        self.defaults = self._check_options(dict(defaults), name)
        self.param_groups: list[dict[str, Any]] = []
        self.state: dict[Parameter, dict[str, Any]] = {}
        if isinstance(params, (Parameter, Mapping)) or not isinstance(params, Iterable):
            raise TypeError(
                f"{name}: params: expected an iterable of Parameters or of parameter-group dicts, "
                f"got {type(params).__name__}"
            )
        groups = list(params)
        if not groups:
            raise ValueError(f"{name}: params: expected at least one Parameter, got an empty list")
        if not isinstance(groups[0], Mapping):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)
        if not any(group["params"] for group in self.param_groups):
            raise ValueError(f"{name}: params: expected at least one Parameter, got parameter groups with none")

    # Subclasses validate (and normalise) their hyperparameters here.
    def _check_options(self, options: dict[str, Any], where: str) -> dict[str, Any]:
        return options

    def add_param_group(self, param_group: Mapping[str, Any]) -> None:
        """Add a group ``{'params': [...], **options}``; a Parameter may belong to one group only."""
        index = len(self.param_groups)
        where = f"{type(self).__name__} param_groups[{index}]"
        if not isinstance(param_group, Mapping):
            raise TypeError(f"{where}: expected a dict, got {type(param_group).__name__}")
        if "params" not in param_group:
            raise ValueError(f"{where}: expected a 'params' entry, got keys {sorted(param_group)}")
        params = param_group["params"]
        if isinstance(params, Parameter):
            params = [params]
        elif isinstance(params, (set, frozenset)) or not isinstance(params, Iterable):
            raise TypeError(f"{where}: params: expected an ordered iterable of Parameters, got {type(params).__name__}")
        params = list(params)
        for i, p in enumerate(params):
            if not isinstance(p, Parameter):
                raise TypeError(f"{where}: params[{i}]: expected a Parameter, got {type(p).__name__}")
            if p.data.dtype.kind != "f":
                raise TypeError(f"{where}: params[{i}]: expected a floating-point Parameter, got dtype {p.data.dtype}")
        seen: dict[int, int] = {}
        for i, p in enumerate(params):
            if id(p) in seen:
                raise ValueError(
                    f"{where}: params: expected each Parameter once, got params[{i}] repeating params[{seen[id(p)]}]"
                )
            seen[id(p)] = i
        for g, other in enumerate(self.param_groups):
            for p in other["params"]:
                if id(p) in seen:
                    raise ValueError(
                        f"{where}: params[{seen[id(p)]}] {p!r}: expected each Parameter in one group only, "
                        f"got it also in param_groups[{g}]"
                    )
        group = {**self.defaults, **{k: v for k, v in param_group.items() if k != "params"}}
        group = self._check_options(group, where)
        group["params"] = params
        self.param_groups.append(group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop every gradient (``grad = None``), or zero it in place with ``set_to_none=False``."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    p.grad[...] = 0

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not define step")

    def _restore_step(self, step: int, p: Parameter) -> Any:
        """A parameter's ``step`` counter as this optimizer keeps it (a Python int; a device array in AdamW's
        capturable mode)."""
        return step

    # -- checkpoints ----------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """torch's layout with host copies: ``{'state': {i: {...}}, 'param_groups': [{..., 'params': [i, ...]}]}``.

        Parameters are numbered 0, 1, ... in group order; state arrays are NumPy copies and
        counters Python ints, so the result pickles and never changes with later steps. Options
        and counters kept on the device (a schedule's device lr, AdamW's capturable step) are
        read back as Python numbers, so the format is the same either way.
        """
        number: dict[int, int] = {}
        groups = []
        for group in self.param_groups:
            packed = {k: _host_number(v) for k, v in group.items() if k != "params"}
            packed["params"] = [number.setdefault(id(p), len(number)) for p in group["params"]]
            groups.append(packed)
        state = {}
        for group in self.param_groups:
            for p in group["params"]:
                if p in self.state:
                    state[number[id(p)]] = {
                        k: (
                            int(v) if k == "step"
                            else v if v is None or isinstance(v, numbers.Number)
                            else _copy_to_host(v)
                        )
                        for k, v in self.state[p].items()
                    }  # fmt: skip
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore ``state_dict()`` output: group options and per-parameter state.

        Arrays are copied onto each parameter's device and into its dtype. Groups and their
        parameters are matched by position; the counts, state keys and array shapes must
        agree, else ValueError (and nothing is changed).
        """
        name = f"{type(self).__name__}.load_state_dict"
        if not isinstance(state_dict, Mapping) or set(state_dict) != {"state", "param_groups"}:
            got = sorted(state_dict) if isinstance(state_dict, Mapping) else type(state_dict).__name__
            raise ValueError(f"{name}: state_dict: expected keys ['param_groups', 'state'], got {got}")
        saved_groups = list(state_dict["param_groups"])
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"{name}: state_dict: expected {len(self.param_groups)} parameter groups, got {len(saved_groups)}"
            )
        by_number: dict[Any, Parameter] = {}
        new_groups = []
        for g, (group, saved) in enumerate(zip(self.param_groups, saved_groups, strict=True)):
            saved_params = list(saved["params"])
            if len(saved_params) != len(group["params"]):
                raise ValueError(
                    f"{name}: state_dict param_groups[{g}]: expected {len(group['params'])} parameters, "
                    f"got {len(saved_params)}"
                )
            by_number.update(zip(saved_params, group["params"], strict=True))
            merged = {**group, **{k: v for k, v in saved.items() if k != "params"}}
            merged = self._check_options(merged, f"{name}: state_dict param_groups[{g}]")
            merged["params"] = group["params"]
            new_groups.append(merged)
        new_state: dict[Parameter, dict[str, Any]] = {}
        for key, entry in dict(state_dict["state"]).items():
            if key not in by_number:
                raise ValueError(
                    f"{name}: state_dict['state']: expected parameter numbers from {sorted(by_number)}, got {key!r}"
                )
            p = by_number[key]
            if set(entry) != set(self.state_keys):
                raise ValueError(
                    f"{name}: state_dict['state'][{key!r}]: expected keys {sorted(self.state_keys)}, "
                    f"got {sorted(entry)}"
                )
            restored = {}
            for k, v in entry.items():
                if k == "step":
                    restored[k] = self._restore_step(int(v), p)
                elif v is None:
                    restored[k] = None
                else:
                    if tuple(np.shape(v)) != p.shape:
                        raise ValueError(
                            f"{name}: state_dict['state'][{key!r}][{k!r}]: expected shape {p.shape}, "
                            f"got {tuple(np.shape(v))}"
                        )
                    restored[k] = _like_param(v, p)
            new_state[p] = restored
        self.param_groups[:] = new_groups
        self.state = new_state

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i} ({len(group['params'])} parameters)")
            lines.extend(f"    {k}: {v}" for k, v in sorted(group.items()) if k != "params")
        lines.append(")")
        return "\n".join(lines)
