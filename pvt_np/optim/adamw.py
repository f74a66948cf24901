"""AdamW, equal to ``torch.optim.AdamW``: the update on NumPy in chunks on worker threads, on CuPy in one fused
kernel over every parameter."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from pvt_np import backend
from pvt_np.backend import Array
from pvt_np.nn.module import Parameter
from pvt_np.ops import cuda, parallel
from pvt_np.optim.base import Optimizer, ParamsT, _nonneg, _unit_interval
from pvt_np.staging import HostStager


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

    ``capturable=True`` keeps every per-step value on the parameters' device, so that a
    step issues no host transfer and can be recorded once and replayed (a CUDA graph,
    :mod:`pvt_np.training.cuda_graph`): each ``step`` is a 0-d int64 array incremented
    there; ``bc1`` and ``bc2`` come from tables of ``1 - beta ** t`` and
    ``(1 - beta2 ** t) ** 0.5`` computed once on the host in Python floats (so the bits are
    the eager step's, which NumPy's and CUDA's ``pow`` would not guarantee), indexed by
    ``min(t, horizon)``, where ``horizon`` is the first ``t`` from which both are exactly 1.0;
    a group's ``lr`` may be a 0-d float64 array on the device that a schedule updates in
    place (:meth:`pvt_np.optim.CosineWarmupSchedule.to_device`), and the step size and the
    decay are computed from it there. On the GPU each parameter's update is then one kernel
    that reads those scalars from device memory when it runs (:func:`pvt_np.ops.cuda.adamw_capturable`,
    the same bits); on NumPy it is the array-expression one (one pass per operation, chunked on
    the worker threads). ``state_dict`` reads the counters back as Python ints, so checkpoints
    keep the eager format either way.
    """

    state_keys = ("step", "exp_avg", "exp_avg_sq")

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        capturable: bool = False,
    ) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})
        self._stager: HostStager | None = None  # the fused update's table of addresses goes through it
        self.capturable = bool(capturable)
        # capturable: the bias-correction tables per (module, betas), and per parameter its scalars' buffers
        self._tables: dict[tuple[Any, ...], tuple[Array, Array, int]] = {}
        self._scalars: dict[Parameter, dict[str, Array]] = {}

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
        if self.capturable:
            self._capturable_step()
            return loss
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
                elif xp is np:
                    tasks += _host_updates(data, g, m, v, opts)
                else:
                    _adamw_whole(data, g, m, v, opts)
        parallel.run_tasks(tasks)
        for (dtype, *_), (xp, opts, tensors) in fused.items():
            self._fused_update(xp, dtype, opts, tensors)
        return loss

    def _restore_step(self, step: int, p: Parameter) -> Any:
        if not self.capturable:
            return step
        return backend.get_array_module(p.data).full((), step, dtype=np.int64)

    def _bias_tables(self, xp: Any, beta1: float, beta2: float) -> tuple[Array, Array, int]:
        """``(1 - beta1 ** t, (1 - beta2 ** t) ** 0.5)`` for t = 0 .. horizon on ``xp``'s device, and horizon.

        Python's floats, as the eager step computes them. ``1 - beta ** t`` is exactly 1.0 once
        ``beta ** t <= 2 ** -54`` (half an ulp of 1.0), and stays so as t grows: from ``horizon`` on
        both corrections are 1.0, so ``min(t, horizon)`` indexes every step.
        """
        key = (xp.__name__, beta1, beta2)
        if key not in self._tables:
            horizon = max(_exact_one_from(beta1), _exact_one_from(beta2))
            if horizon > MAX_BIAS_TABLE:
                raise ValueError(
                    f"AdamW(capturable=True): betas: expected betas whose bias corrections reach 1.0 within "
                    f"{MAX_BIAS_TABLE} steps, got {(beta1, beta2)}, which take {horizon}"
                )
            bc1 = [1 - beta1**t for t in range(horizon + 1)]
            bc2 = [(1 - beta2**t) ** 0.5 for t in range(horizon + 1)]
            self._tables[key] = (xp.asarray(np.array(bc1)), xp.asarray(np.array(bc2)), horizon)
        return self._tables[key]

    def _capturable_step(self) -> None:
        """The update with every per-step value computed on the device (class docstring), no host transfer.

        Per parameter: t += 1; i = min(t, horizon); step_size = lr / bc1[i]; bc2_sqrt = bc2[i]; and per
        group decay = 1 - lr * weight_decay, each written into a buffer made on the first step, then cast to
        the parameter's dtype as the eager step's Python floats are. The decay multiplies even when it is 1
        (exact), since its value is not known to the host.
        """
        tasks: list[Callable[[], None]] = []
        later: list[Callable[[], None]] = []
        for group in self.param_groups:
            lr = group["lr"]
            beta1, beta2 = group["betas"]
            w = 1 - beta1
            decays: dict[Any, Array] = {}
            for p in group["params"]:
                g = p.grad
                if g is None:
                    continue
                data = p.data
                xp = backend.get_array_module(data)
                bc1_table, bc2_table, horizon = self._bias_tables(xp, beta1, beta2)
                state = self.state.get(p)
                if not state:
                    state = {
                        "step": xp.zeros((), dtype=np.int64),
                        "exp_avg": xp.zeros_like(data),
                        "exp_avg_sq": xp.zeros_like(data),
                    }
                    self.state[p] = state
                scalars = self._scalars.get(p)
                if (
                    scalars is None
                    or scalars["step_size"].dtype != data.dtype
                    or backend.get_array_module(scalars["step_size"]) is not xp
                ):
                    scalars = self._scalars[p] = _scalar_buffers(xp, data.dtype)
                t = state["step"]
                xp.add(t, 1, out=t)
                xp.minimum(t, horizon, out=scalars["index"])
                xp.take(bc1_table, scalars["index"], out=scalars["work"])
                xp.divide(lr, scalars["work"], out=scalars["work"])
                scalars["step_size"][...] = scalars["work"]
                xp.take(bc2_table, scalars["index"], out=scalars["work"])
                scalars["bc2_sqrt"][...] = scalars["work"]
                if data.dtype not in decays:  # once per group and dtype
                    xp.multiply(lr, group["weight_decay"], out=scalars["work"])
                    xp.subtract(1.0, scalars["work"], out=scalars["work"])
                    scalars["decay"][...] = scalars["work"]
                    decays[data.dtype] = scalars["decay"]
                opts = {
                    "decay": decays[data.dtype], "w": w, "beta2": beta2, "eps": group["eps"],
                    "step_size": scalars["step_size"], "bc2_sqrt": scalars["bc2_sqrt"],
                }  # fmt: skip
                m, v = state["exp_avg"], state["exp_avg_sq"]
                if cuda.active(xp) and _fusable(data, g, m, v):  # the GPU: one kernel reading the scalars' buffers
                    later.append(functools.partial(_capturable_kernel, data, xp.ascontiguousarray(g), m, v, opts))
                elif xp is np:
                    tasks += _host_updates(data, g, m, v, opts)
                else:
                    later.append(functools.partial(_adamw_whole, data, g, m, v, opts))
        parallel.run_tasks(tasks)
        for update in later:
            update()

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


# The longest bias-correction table capturable mode builds (two float64 tables of this length, 32 MiB each):
# betas up to 0.99999 fit (horizon 3.7 million for 0.99999; 37,400 for torch's default 0.999).
MAX_BIAS_TABLE = 1 << 22


def _exact_one_from(beta: float) -> int:
    """The first t >= 1 from which ``1 - beta ** t == 1.0`` in Python floats (``beta ** t <= 2 ** -54``)."""
    if beta == 0.0:
        return 1
    t = max(1, int(-54 * math.log(2) / math.log(beta)) - 2)
    while 1 - beta**t != 1.0:
        t += 1
    return t


def _scalar_buffers(xp: Any, dtype: Any) -> dict[str, Array]:
    """One parameter's per-step scalars in capturable mode, 0-d arrays on its device, made once."""
    return {
        "index": xp.zeros((), dtype=np.int64),
        "work": xp.zeros((), dtype=np.float64),  # float64, as the eager step's Python floats
        "step_size": xp.zeros((), dtype=dtype),
        "bc2_sqrt": xp.zeros((), dtype=dtype),
        "decay": xp.zeros((), dtype=dtype),
    }


def _capturable_kernel(data: Array, g: Array, m: Array, v: Array, opts: dict[str, Any]) -> None:
    """The capturable update of one parameter in one launch (:func:`pvt_np.ops.cuda.adamw_capturable`): the step
    size, bias correction and decay are the 0-d device buffers of ``opts``, read by the kernel when it runs."""
    cuda.adamw_capturable(
        data, g, m, v, opts["step_size"], opts["bc2_sqrt"], opts["decay"], w=opts["w"], beta2=opts["beta2"],
        eps=opts["eps"],
    )  # fmt: skip


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


def _host_updates(data: Array, g: Array, m: Array, v: Array, opts: dict[str, Any]) -> list[Callable[[], None]]:
    """One parameter's NumPy update as tasks for the worker threads: chunks of a large contiguous one, else one."""
    if not _chunkable(data, g, m, v):
        return [functools.partial(_adamw_whole, data, g, m, v, opts)]
    size = data.size
    flat = [a.reshape(-1) for a in (data, g, m, v)]
    return [
        functools.partial(_adamw_chunk, *flat, start, min(size, start + ADAMW_CHUNK_ELEMENTS), opts)
        for start in range(0, size, ADAMW_CHUNK_ELEMENTS)
    ]


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
    xp: Any, data: Array, g: Array, m: Array, v: Array, tmp: Array, denom: Array, opts: dict[str, Any]
) -> None:
    """AdamW's update (class docstring) in place on arrays of one shape, in torch's order of operations.

    ``tmp`` (the dtype of g - m) and ``denom`` (v's) are scratch of that shape. Elementwise only, so
    any slicing of the arrays gives the same bits. ``decay``, ``step_size`` and ``bc2_sqrt`` are Python
    floats or (capturable) 0-d arrays of the parameter's dtype on its device.
    """
    w, beta2 = opts["w"], opts["beta2"]
    decay = opts["decay"]
    if not isinstance(decay, float) or decay != 1:  # a device value (capturable) always multiplies
        data *= decay
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
    # p.addcdiv_(m, denom, value=-step_size) as p - (m * step_size) / denom: rounding is symmetric in the sign,
    # so these are the bits of p + (m * -step_size) / denom, without negating a device step size
    xp.multiply(m, opts["step_size"], out=tmp)
    tmp /= denom
    data -= tmp


def _adamw_whole(data: Array, g: Array, m: Array, v: Array, opts: dict[str, Any]) -> None:
    """The update on whole arrays, with fresh temporaries."""
    xp = backend.get_array_module(data)
    tmp = xp.empty(data.shape, dtype=xp.result_type(g, m))
    _adamw_update(xp, data, g, m, v, tmp, xp.empty_like(v), opts)


def _adamw_chunk(
    data: np.ndarray, g: np.ndarray, m: np.ndarray, v: np.ndarray, start: int, stop: int, opts: dict[str, Any]
) -> None:
    """The update on elements [start, stop) of flat, contiguous, same-dtype arrays, in per-thread scratch."""
    n = stop - start
    tmp = parallel.scratch("adamw_tmp", (n,), data.dtype)
    denom = parallel.scratch("adamw_denom", (n,), data.dtype)
    part = slice(start, stop)
    _adamw_update(np, data[part], g[part], m[part], v[part], tmp, denom, opts)
