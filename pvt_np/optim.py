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
"""

from __future__ import annotations

import fnmatch
import functools
import math
import numbers
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

import numpy as np

from pvt_np import backend
from pvt_np.backend import Array
from pvt_np.nn.module import Module, Parameter
from pvt_np.ops import cuda, parallel
from pvt_np.staging import HostStager

__all__ = [
    "SGD",
    "AdamW",
    "CosineWarmupSchedule",
    "Optimizer",
    "clip_grad_norm_",
    "cosine_warmup_lr",
    "param_groups_weight_decay",
]

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

    # -- checkpoints ----------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """torch's layout with host copies: ``{'state': {i: {...}}, 'param_groups': [{..., 'params': [i, ...]}]}``.

        Parameters are numbered 0, 1, ... in group order; state arrays are NumPy copies and
        counters Python ints, so the result pickles and never changes with later steps.
        """
        number: dict[int, int] = {}
        groups = []
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            packed["params"] = [number.setdefault(id(p), len(number)) for p in group["params"]]
            groups.append(packed)
        state = {}
        for group in self.param_groups:
            for p in group["params"]:
                if p in self.state:
                    state[number[id(p)]] = {
                        k: (v if v is None or isinstance(v, numbers.Number) else _copy_to_host(v))
                        for k, v in self.state[p].items()
                    }
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
                    restored[k] = int(v)
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


# -- AdamW ----------------------------------------------------------------------
class AdamW(Optimizer):
    r"""Adam with decoupled weight decay, equal to ``torch.optim.AdamW`` (amsgrad=False, maximize=False).

    For each parameter ``p`` with gradient ``g`` (parameters whose ``grad`` is None are
    skipped and their step counter does not advance), with ``t`` its own step count::

        t   <- t + 1
        p   <- p * (1 - lr * weight_decay)             # decoupled decay, before the moments
        m   <- m + (1 - beta1) * (g - m)               # torch's m.lerp_(g, 1 - beta1)
        v   <- beta2 * v + (1 - beta2) * g * g
        bc1 = 1 - beta1 ** t ;  bc2 = 1 - beta2 ** t   # Python floats
        p   <- p - (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)

    ``m`` and ``v`` (state ``exp_avg``, ``exp_avg_sq``) start at zero. As in torch the lerp
    is evaluated as ``g - (g - m) * beta1`` when ``1 - beta1 >= 0.5``. On NumPy every
    parameter's update is a task for the worker threads, large ones cut into chunks of
    ADAMW_CHUNK_ELEMENTS (elementwise, so the bits are those of the whole-array update).
    On the GPU the parameters of a group that share a step count are updated by one
    kernel launch (:func:`pvt_np.ops.cuda.adamw_multi`), with the same bits.
    """

    state_keys = ("step", "exp_avg", "exp_avg_sq")

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
    ) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})
        self._stager: HostStager | None = None  # the fused update's table of addresses goes through it

    def _check_options(self, options: dict[str, Any], where: str) -> dict[str, Any]:
        options["lr"] = _nonneg(options["lr"], "lr", where)
        options["eps"] = _nonneg(options["eps"], "eps", where)
        options["weight_decay"] = _nonneg(options["weight_decay"], "weight_decay", where)
        betas = options["betas"]
        if isinstance(betas, (str, bytes)) or not isinstance(betas, Iterable) or len(tuple(betas)) != 2:
            raise ValueError(f"{where}: betas: expected a pair (beta1, beta2), got {betas!r}")
        b1, b2 = tuple(betas)
        options["betas"] = (_unit_interval(b1, "betas[0]", where), _unit_interval(b2, "betas[1]", where))
        return options

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One AdamW update of every parameter that has a gradient; returns ``closure()`` if given."""
        loss = closure() if closure is not None else None
        tasks: list[Callable[[], None]] = []  # NumPy: every update, large ones in chunks, run on the worker threads
        fused: dict[tuple[Any, ...], tuple[Any, dict[str, float], list[tuple[Array, ...]]]] = {}  # same options
        for group in self.param_groups:
            lr = group["lr"]
            beta1, beta2 = group["betas"]
            eps = group["eps"]
            decay = 1 - lr * group["weight_decay"]
            w = 1 - beta1
            for p in group["params"]:
                g = p.grad
                if g is None:
                    continue
                data = p.data
                xp = backend.get_array_module(data)
                state = self.state.get(p)
                if not state:
                    state = {"step": 0, "exp_avg": xp.zeros_like(data), "exp_avg_sq": xp.zeros_like(data)}
                    self.state[p] = state
                state["step"] += 1
                t = state["step"]
                m, v = state["exp_avg"], state["exp_avg_sq"]
                opts = {"decay": decay, "w": w, "beta2": beta2, "eps": eps}
                opts["step_size"] = lr / (1 - beta1**t)
                opts["bc2_sqrt"] = (1 - beta2**t) ** 0.5
                if cuda.active(xp) and _fusable(data, g, m, v):  # the GPU: one kernel per group (pvt_np.ops.cuda)
                    key = (data.dtype, *opts.values())
                    fused.setdefault(key, (xp, opts, []))[2].append((data, xp.ascontiguousarray(g), m, v))
                elif xp is np and _chunkable(data, g, m, v):
                    size = data.size
                    flat = [a.reshape(-1) for a in (data, g, m, v)]
                    for start in range(0, size, ADAMW_CHUNK_ELEMENTS):
                        stop = min(size, start + ADAMW_CHUNK_ELEMENTS)
                        tasks.append(functools.partial(_adamw_chunk, *flat, start, stop, opts))
                elif xp is np:
                    tasks.append(functools.partial(_adamw_whole, data, g, m, v, opts))
                else:
                    _adamw_whole(data, g, m, v, opts)
        parallel.run_tasks(tasks)
        for (dtype, *_), (xp, opts, tensors) in fused.items():
            self._fused_update(xp, dtype, opts, tensors)
        return loss

    def _fused_update(self, xp: Any, dtype: Any, opts: dict[str, float], tensors: list[tuple[Array, ...]]) -> None:
        """The update of ``tensors`` [(param, grad, exp_avg, exp_avg_sq), ...] with the same options, one launch.

        The launch takes a table of the tensors' starts and addresses (:func:`pvt_np.ops.cuda.adamw_multi`),
        sent in one asynchronous copy from pinned memory (a copy from pageable memory would make the host
        wait for the GPU every step).
        """
        tensors = [t for t in tensors if t[0].size]
        if not tensors:
            return
        starts = np.cumsum([0] + [t[0].size for t in tensors], dtype=np.int64)
        addresses = np.array([cuda.address(a) for t in tensors for a in t], dtype=np.int64)
        if self._stager is None or self._stager.xp is not xp:
            self._stager = HostStager(xp)
        (table,) = self._stager.upload([np.concatenate([starts, addresses])])
        cuda.adamw_multi(table, len(tensors), int(starts[-1]), dtype, **opts)


def _fusable(data: Array, g: Array, m: Array, v: Array) -> bool:
    """Whether the fused kernel can update this parameter: one float dtype, contiguous state."""
    return (
        data.dtype == g.dtype == m.dtype == v.dtype
        and data.dtype in cuda.C_TYPES
        and all(a.flags.c_contiguous for a in (data, m, v))
    )


# AdamW's update makes 14 NumPy calls per chunk; as for the GELU (pvt_np.ops.activation.GELU_CHUNK_ELEMENTS), chunks
# twice the common size keep the GIL hand-offs between the threads from eating the second thread.
ADAMW_CHUNK_ELEMENTS = 2 * parallel.CHUNK_ELEMENTS


def _chunkable(data: np.ndarray, g: np.ndarray, m: np.ndarray, v: np.ndarray) -> bool:
    """Whether the update can run on flat slices: more than one chunk, contiguous, one dtype (so the scratch
    buffers hold what the whole-array update's temporaries would)."""
    arrays = (data, g, m, v)
    return (
        data.size > ADAMW_CHUNK_ELEMENTS
        and all(a.flags.c_contiguous for a in arrays)
        and len({a.dtype for a in arrays}) == 1
    )


def _adamw_update(
    xp: Any, data: Array, g: Array, m: Array, v: Array, tmp: Array, denom: Array, opts: dict[str, float]
) -> None:
    """AdamW's update (class docstring) in place on arrays of one shape, in torch's order of operations.

    ``tmp`` (the dtype of g - m) and ``denom`` (v's) are scratch of that shape. Elementwise only, so
    any slicing of the arrays gives the same bits.
    """
    w, beta2 = opts["w"], opts["beta2"]
    if opts["decay"] != 1:
        data *= opts["decay"]
    xp.subtract(g, m, out=tmp)  # m.lerp_(g, w)
    if abs(w) < 0.5:
        tmp *= w
        m += tmp
    else:
        tmp *= 1 - w
        xp.subtract(g, tmp, out=m)
    xp.multiply(g, 1 - beta2, out=tmp)  # v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    tmp *= g
    v *= beta2
    v += tmp
    xp.sqrt(v, out=denom)
    denom /= opts["bc2_sqrt"]
    denom += opts["eps"]
    xp.multiply(m, -opts["step_size"], out=tmp)  # p.addcdiv_(m, denom, value=-step_size)
    tmp /= denom
    data += tmp


def _adamw_whole(data: Array, g: Array, m: Array, v: Array, opts: dict[str, float]) -> None:
    """The update on whole arrays, with fresh temporaries."""
    xp = backend.get_array_module(data)
    tmp = xp.empty(data.shape, dtype=xp.result_type(g, m))
    _adamw_update(xp, data, g, m, v, tmp, xp.empty_like(v), opts)


def _adamw_chunk(
    data: np.ndarray, g: np.ndarray, m: np.ndarray, v: np.ndarray, start: int, stop: int, opts: dict[str, float]
) -> None:
    """The update on elements [start, stop) of flat, contiguous, same-dtype arrays, in per-thread scratch."""
    n = stop - start
    tmp = parallel.scratch("adamw_tmp", (n,), data.dtype)
    denom = parallel.scratch("adamw_denom", (n,), data.dtype)
    part = slice(start, stop)
    _adamw_update(np, data[part], g[part], m[part], v[part], tmp, denom, opts)


# -- SGD ------------------------------------------------------------------------
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


# -- parameter groups -----------------------------------------------------------
def param_groups_weight_decay(
    model: Module, weight_decay: float = 1e-5, no_weight_decay: Collection[str] = ()
) -> list[dict[str, Any]]:
    """Split ``model``'s parameters by timm's rule into ``[no-decay group, decay group]``.

    A parameter goes to the first group (``weight_decay=0.0``) when it has at most one
    dimension (biases, LayerNorm weights), its name ends in ``.bias``, or its name matches
    one of ``no_weight_decay`` (exact names or fnmatch patterns such as ``'*.pos_embed'``);
    all others go to the second group (``weight_decay=weight_decay``). Both groups are
    always returned (either may be empty), in timm's order, keeping ``named_parameters``
    order within each group.
    """
    if not isinstance(model, Module):
        raise TypeError(f"param_groups_weight_decay: model: expected a pvt_np Module, got {type(model).__name__}")
    weight_decay = _nonneg(weight_decay, "weight_decay", "param_groups_weight_decay")
    if isinstance(no_weight_decay, str):
        no_weight_decay = (no_weight_decay,)
    patterns = tuple(no_weight_decay)
    decay: list[Parameter] = []
    no_decay: list[Parameter] = []
    for name, p in model.named_parameters():
        if p.data.ndim <= 1 or name.endswith(".bias") or any(fnmatch.fnmatchcase(name, pat) for pat in patterns):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


# -- gradient clipping ----------------------------------------------------------
def clip_grad_norm_(parameters: Parameter | Iterable[Parameter], max_norm: float) -> Array:
    """Scale all gradients together so that their joint L2 norm is at most ``max_norm``; torch's semantics.

    ``total = sqrt(sum_i ||g_i||_2 ** 2)`` over every parameter whose grad is not None (in the
    gradients' dtype, on their device), then every gradient is multiplied in place by
    ``min(max_norm / (total + 1e-6), 1)``. The norm and the coefficient stay 0-d device
    arrays (no host/GPU synchronisation, no branch on the value), so gradients are always
    multiplied, by exactly 1 when no clipping is needed. Returns ``total`` (before
    clipping) as a 0-d array; with no gradients, a float32 zero.
    """
    if isinstance(parameters, Parameter):
        parameters = [parameters]
    if not _is_real(max_norm) or math.isnan(max_norm) or max_norm < 0:
        raise ValueError(f"clip_grad_norm_: max_norm: expected a number >= 0 (inf allowed), got {max_norm!r}")
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return np.zeros((), dtype=np.float32)
    xp = backend.get_array_module(grads[0])
    if xp is np:
        norms = [xp.linalg.norm(g.reshape(-1)) for g in grads]
        total = xp.asarray(xp.linalg.norm(xp.stack(norms)))
    else:  # one cuBLAS dot per gradient instead of norm's several launches
        total = xp.sqrt(xp.stack([xp.vdot(g.reshape(-1), g.reshape(-1)) for g in grads]).sum())
    coef = xp.minimum(float(max_norm) / (total + 1e-6), 1.0)
    for g in grads:
        g *= coef
    return total


# -- learning-rate schedule -------------------------------------------------------
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
        self.last_step = 0
        self._apply()

    def lr_at(self, step: int, base_lr: float) -> float:
        """The lr for a group with base ``base_lr`` after ``step`` iterations."""
        return cosine_warmup_lr(step, base_lr, self.total_steps, self.warmup_steps, self.warmup_lr_init, self.min_lr)

    def get_lr(self) -> list[float]:
        """Each group's lr at ``last_step``."""
        return [self.lr_at(self.last_step, base) for base in self.base_lrs]

    def get_last_lr(self) -> list[float]:
        """The lrs the schedule last set (torch's name)."""
        return self.get_lr()

    def _apply(self) -> None:
        for group, lr in zip(self.optimizer.param_groups, self.get_lr(), strict=True):
            group["lr"] = lr

    def step(self) -> None:
        """Advance one iteration and set every group's lr."""
        self.last_step += 1
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
        self.total_steps, self.warmup_steps, self.last_step = total, warmup, last_step
        self.warmup_lr_init, self.min_lr, self.base_lrs = warmup_lr_init, min_lr, base_lrs
        for group, base in zip(self.optimizer.param_groups, base_lrs, strict=True):
            group["initial_lr"] = base
        self._apply()
