"""The worker of ``pvt-np bench``: one (config, framework) pair timed in a process of its own, and the neighbour.

:func:`worker` builds the model (pvt_np, or timm's pvt_v2 on torch), times its forward, forward+backward and
training step, measures the step's peak memory and profiles the share of the step per op type (see
:mod:`pvt_np.bench`, which starts these processes and prints the report); :func:`be_neighbour` is the busy process
that ``--neighbour`` runs beside a pair.

The frameworks (:data:`FRAMEWORKS`):

* ``pvt_np``: the eager step (zero_grad, forward, loss, backward, AdamW), as the trainer runs it off the graph;
* ``pvt_np_graph``: the step as the trainer runs it in graph mode, a
  :class:`~pvt_np.training.capturable.CapturableStep` (``AdamW(capturable=True)``, the schedule on the device)
  behind a :class:`~pvt_np.training.cuda_graph.StaticStep`: recorded as a CUDA graph on its second step and
  replayed from then on; on the CPU (nothing to record) the capturable step called directly. Only the training
  step is timed (a graph records the whole step, not its forward);
* ``torch``: timm's model in torch eager;
* ``torch_graph``: torch's step recorded as a CUDA graph the way torch documents it (static input and target,
  warm-up steps on a side stream, ``AdamW(capturable=True)``, ``torch.cuda.graph``), each step a copy into the
  static input and a replay; the GPU only; only the training step is timed;
* ``torch_compile``: ``torch.compile(model)`` in its default mode (the optimizer eager); the first step
  compiles, before anything is timed.

Every result holds ``first_loss``, the loss of the first step on the worker's fixed batch (the same weights and
batch in every framework), and the graph rows ``cuda_graph``: whether the timed step replays a recorded graph.
"""

from __future__ import annotations

import inspect
import os
import resource
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np

from pvt_np import backend, ops
from pvt_np.io.timm import timm_twin
from pvt_np.models import create_model
from pvt_np.nn import CrossEntropyLoss
from pvt_np.ops import parallel
from pvt_np.optim import AdamW, CosineWarmupSchedule, param_groups_weight_decay
from pvt_np.training.capturable import CapturableStep
from pvt_np.training.cuda_graph import StaticStep

__all__ = ["CONFIGS", "FRAMEWORKS", "GPU_ONLY_FRAMEWORKS", "be_neighbour", "worker"]

FRAMEWORKS = ("pvt_np", "pvt_np_graph", "torch", "torch_graph", "torch_compile")
GPU_ONLY_FRAMEWORKS = ("torch_graph",)
LR = 1e-3

# name -> (model name, create_model overrides, image size, batch size)
CONFIGS: dict[str, tuple[str, dict[str, Any], int, int]] = {
    "b0-cifar": ("pvt_v2_b0", {"cifar": True, "num_classes": 10}, 32, 128),
    "b0-224": ("pvt_v2_b0", {"num_classes": 1000}, 224, 8),
    "b2_li-224": ("pvt_v2_b2_li", {"num_classes": 1000}, 224, 4),
    "b0-224-bs32": ("pvt_v2_b0", {"num_classes": 1000}, 224, 32),
    "b2_li-224-bs16": ("pvt_v2_b2_li", {"num_classes": 1000}, 224, 16),
}


def be_neighbour(kind: str, threads: int) -> None:
    """Loop until killed, printing READY once the busy part begins (the parent times against it)."""
    if kind == "loop":
        print("READY", flush=True)
        while True:
            pass
    if kind == "gemm":  # NumPy's BLAS with its own threads (the environment set by pvt_np.bench._neighbour)
        a = np.ones((1024, 1024), dtype=np.float32)
        print("READY", flush=True)
        while True:
            a @ a
    name, overrides, size, batch = CONFIGS["b0-cifar"]
    rng = np.random.default_rng(1)
    x = rng.standard_normal((batch, 3, size, size)).astype(np.float32)
    y = rng.integers(0, overrides["num_classes"], size=batch)
    if kind == "pvt_np":  # its defaults: no thread count given
        steps = _pvt_np_steps(name, overrides, x, y, "cpu", None)[0]
    else:
        import torch

        steps = _torch_steps(name, overrides, x, y, "cpu", torch.get_num_threads())[0]
    print("READY", flush=True)
    while True:
        steps["train_step"]()


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    """The process's peak resident set: VmHWM, which starts afresh at exec (getrusage's ru_maxrss carries
    the high-water mark of the parent across fork and exec, so a worker started by a large process would
    report the parent's peak)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _median_ms(fn: Callable[[], None], sync: Callable[[], None], repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000.0


def worker(
    framework: str, config: str, device: str, threads: int, repeats: int, warmup: int, step_only: bool = False
) -> dict[str, Any]:
    """Time ``framework`` on ``config`` (one of :data:`FRAMEWORKS`, :data:`CONFIGS`): the result's fields."""
    if framework not in FRAMEWORKS:
        raise ValueError(f"bench worker: framework: expected one of {FRAMEWORKS}, got {framework!r}")
    if framework in GPU_ONLY_FRAMEWORKS and device != "gpu":
        raise ValueError(
            f"bench worker: framework {framework!r} records a CUDA graph and needs device 'gpu', got {device!r}"
        )
    name, overrides, size, batch = CONFIGS[config]
    rng = np.random.default_rng(0)
    x_host = rng.standard_normal((batch, 3, size, size)).astype(np.float32)
    y_host = rng.integers(0, overrides["num_classes"], size=batch)
    if framework == "pvt_np":
        steps, sync, mem, info = _pvt_np_steps(name, overrides, x_host, y_host, device, threads)
    elif framework == "pvt_np_graph":
        # every step this worker runs: the set-up's two, the training step's timing, the GPU memory meter's two
        calls = 4 + warmup + repeats
        steps, sync, mem, info = _pvt_np_graph_steps(name, overrides, x_host, y_host, device, threads, calls)
    elif framework == "torch_graph":
        steps, sync, mem, info = _torch_graph_steps(name, overrides, x_host, y_host, threads)
    else:
        compiled = framework == "torch_compile"
        steps, sync, mem, info = _torch_steps(name, overrides, x_host, y_host, device, threads, compiled)
    result: dict[str, Any] = {"framework": framework, "config": config, "batch": batch, "size": size, **info}
    mem["start"]()
    timed = [k for k in ("forward", "forward_backward", "train_step") if k in steps]
    for key in ("train_step",) if step_only else timed:
        result[key + "_ms"] = _median_ms(steps[key], sync, repeats, warmup)
    if step_only:
        return result
    result["peak_memory_mb"] = mem["peak"]() / 2**20
    if "held" in mem:  # GPU: what the allocator keeps reserved (CuPy's pool total, torch's max reserved)
        result["pool_held_mb"] = mem["held"]() / 2**20
    result["img_per_s"] = batch / (result["train_step_ms"] / 1000.0)
    if framework == "pvt_np":
        result["op_share"] = _profile_ops(steps["model_step"], steps["optimizer_step"], sync, max(3, repeats // 2))
    return result


def _pvt_np_steps(
    name: str, overrides: dict[str, Any], x_host: np.ndarray, y_host: np.ndarray, device: str, threads: int | None
):
    if threads is not None:  # None: the defaults (the first op configures them), as a user's script gets
        parallel.configure_threads(threads)
    model = create_model(name, device=device, **overrides)
    crit = CrossEntropyLoss()
    opt = AdamW(param_groups_weight_decay(model, 0.05), lr=LR)
    x, y = backend.to_device(x_host, device), backend.to_device(y_host, device)

    def forward() -> None:
        model(x)
        model.zero_grad()

    def forward_backward() -> None:
        crit(model(x), y)
        model.backward(crit.backward(), input_grad=False)
        model.zero_grad()

    def model_step() -> Any:
        opt.zero_grad()
        loss = crit(model(x), y)
        model.backward(crit.backward(), input_grad=False)
        return loss

    def train_step() -> Any:
        loss = model_step()
        opt.step()
        return loss

    sync, mem = _cupy_meters(train_step) if device == "gpu" else _cpu_meters()  # CPU: the baseline, before any step
    # One step first, so that optimizer state exists and first-call costs are paid before anything is timed.
    first_loss = float(train_step())
    steps = {
        "forward": forward,
        "forward_backward": forward_backward,
        "train_step": train_step,
        "model_step": model_step,  # train_step is model_step then optimizer_step (for the profile)
        "optimizer_step": opt.step,
    }
    return steps, sync, mem, {"first_loss": first_loss}


def _pvt_np_graph_steps(
    name: str, overrides: dict[str, Any], x_host: np.ndarray, y_host: np.ndarray, device: str, threads: int, calls: int
):
    """pvt_np's step as the trainer runs it in graph mode (module docstring), for ``calls`` steps at most.

    The schedule holds the lr at the eager rows' (``min_lr`` = the base lr) but is stepped on the device every
    step, as the trainer's; the mask keys and the loss tally are sized for ``calls`` steps, so that nothing is
    read back inside the timings (the trainer reads the tally every ``--log-every`` steps, between steps).
    """
    parallel.configure_threads(threads)
    model = create_model(name, device=device, **overrides)
    crit = CrossEntropyLoss()
    opt = AdamW(param_groups_weight_decay(model, 0.05), lr=LR, capturable=True)
    schedule = CosineWarmupSchedule(opt, total_steps=calls, min_lr=LR)
    capturable = CapturableStep(model, crit, opt, schedule, steps_per_epoch=calls, log_every=calls)
    capturable.begin_epoch(0, 0, 0)
    x, y = backend.to_device(x_host, device), backend.to_device(y_host, device)
    static = StaticStep(capturable) if device == "gpu" else None

    def train_step() -> None:
        if static is None:
            capturable(x, y)
        else:
            static(x, y)

    if device == "gpu":
        sync, mem = _cupy_meters(train_step, static)
    else:
        sync, mem = _cpu_meters()
    # Two steps first: on the GPU the first runs eagerly (kernels compiled, state made), the second is recorded
    # and launched, so every timed step is a replay.
    train_step()
    train_step()
    losses, _ = capturable.read_tally(1)
    info = {"first_loss": float(losses[0]), "cuda_graph": static is not None and bool(static.graphs())}
    return {"train_step": train_step}, sync, mem, info


def _cupy_meters(
    train_step: Callable[[], Any], static: StaticStep | None = None
) -> tuple[Callable[[], None], dict[str, Callable[[], Any]]]:
    """The GPU's sync and memory meters for pvt_np: the pool's high-water mark (:func:`_cupy_peak_bytes`) and
    its total; with ``static``, what its recorded graphs' own pools hold is added to both (the graphs' temporaries,
    kept for their life and written by every replay, which allocates nothing from the default pool)."""
    import cupy

    def sync() -> None:
        cupy.cuda.Device().synchronize()

    def graph_bytes() -> int:
        return 0 if static is None else sum(g.pool.total_bytes() for g in static.graphs())

    pool = cupy.get_default_memory_pool()
    mem = {
        "start": lambda: None,
        "peak": lambda: _cupy_peak_bytes(train_step, sync) + graph_bytes(),
        "held": lambda: pool.total_bytes() + graph_bytes(),
    }
    return sync, mem


def _cupy_peak_bytes(train_step: Callable[[], None], sync: Callable[[], None], steps: int = 2) -> int:
    """High-water mark of the memory pool's allocated bytes over ``steps`` training steps.

    The counterpart of torch.cuda.max_memory_allocated: bytes handed out, not the
    pool's cached total (reported beside it as pool_held_mb). Every allocation goes
    through a counting wrapper, which costs Python time, so this runs after the
    timed iterations.
    """
    import cupy

    pool = cupy.get_default_memory_pool()
    sync()
    pool.free_all_blocks()
    peak = pool.used_bytes()

    def counting_malloc(nbytes: int) -> Any:
        nonlocal peak
        memory = pool.malloc(nbytes)
        peak = max(peak, pool.used_bytes())
        return memory

    cupy.cuda.set_allocator(counting_malloc)
    try:
        for _ in range(steps):
            train_step()
        sync()
    finally:
        cupy.cuda.set_allocator(pool.malloc)
    return peak


def _torch_parts(
    name: str, overrides: dict[str, Any], x_host: np.ndarray, y_host: np.ndarray, device: str, threads: int,
    capturable: bool = False,
) -> tuple[Any, Any, Any, Any, Any, Any]:  # fmt: skip
    """torch, timm's twin of the pvt_np model, the loss, AdamW, and the batch on the device."""
    import torch

    torch.set_num_threads(threads)
    dev = torch.device("cuda" if device == "gpu" else "cpu")
    if device == "gpu":  # true float32 on both sides (CuPy's GEMMs do not use TF32 by default)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    model = timm_twin(create_model(name, **overrides)).to(dev).train()
    crit = torch.nn.CrossEntropyLoss()
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=LR, capturable=capturable)
    return torch, model, crit, opt, torch.from_numpy(x_host).to(dev), torch.from_numpy(y_host).to(dev)


def _torch_steps(
    name: str, overrides: dict[str, Any], x_host: np.ndarray, y_host: np.ndarray, device: str, threads: int,
    compiled: bool = False,
):  # fmt: skip
    """torch eager, or with ``compiled`` the model through ``torch.compile`` (default mode)."""
    torch, model, crit, opt, x, y = _torch_parts(name, overrides, x_host, y_host, device, threads)
    run = torch.compile(model) if compiled else model

    def forward() -> None:
        run(x)

    def forward_backward() -> None:
        crit(run(x), y).backward()
        model.zero_grad(set_to_none=True)

    def train_step() -> Any:
        opt.zero_grad(set_to_none=True)
        loss = crit(run(x), y)
        loss.backward()
        opt.step()
        return loss.detach()

    if device == "gpu":

        def sync() -> None:
            torch.cuda.synchronize()

        mem = {
            "start": torch.cuda.reset_peak_memory_stats,
            "peak": lambda: torch.cuda.max_memory_allocated(),
            "held": lambda: torch.cuda.max_memory_reserved(),
        }
    else:
        sync, mem = _cpu_meters()  # the baseline, before any step
    first_loss = float(train_step())  # torch.compile compiles the forward and the backward here
    steps = {"forward": forward, "forward_backward": forward_backward, "train_step": train_step}
    return steps, sync, mem, {"first_loss": first_loss}


def _torch_graph_steps(name: str, overrides: dict[str, Any], x_host: np.ndarray, y_host: np.ndarray, threads: int):
    """torch's step recorded as one CUDA graph, the documented way (module docstring); the GPU only."""
    torch, model, crit, opt, x, y = _torch_parts(name, overrides, x_host, y_host, "gpu", threads, capturable=True)
    torch.cuda.reset_peak_memory_stats()  # the peak from here on: the warm-up's eager steps and the recording
    static_x, static_y = x.clone(), y.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    losses = []
    with torch.cuda.stream(side):  # warm-up on a side stream, as torch's CUDA graph notes ask
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            loss = crit(model(static_x), static_y)
            loss.backward()
            opt.step()
            losses.append(loss.detach())
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        static_loss = crit(model(static_x), static_y)
        static_loss.backward()
        opt.step()

    def train_step() -> None:
        static_x.copy_(x)
        static_y.copy_(y)
        graph.replay()

    def sync() -> None:
        torch.cuda.synchronize()

    train_step()
    mem = {
        "start": lambda: None,
        "peak": lambda: torch.cuda.max_memory_allocated(),
        "held": lambda: torch.cuda.max_memory_reserved(),
    }
    return {"train_step": train_step}, sync, mem, {"first_loss": float(losses[0]), "cuda_graph": True}


def _cpu_meters() -> tuple[Callable[[], None], dict[str, Callable[[], Any]]]:
    """CPU work is synchronous (no-op sync); memory is the peak-RSS rise over the size when this is called.

    Called before the first step: a baseline taken after it would subtract what the allocator kept from
    that step (glibc keeps freed heap memory for reuse, torch's allocator likewise), so the rise would
    measure how much each allocator returned to the system rather than what a step needs.
    """
    base = _rss_bytes()

    def peak() -> int:
        return max(0, _peak_rss_bytes() - base)

    return (lambda: None), {"start": lambda: None, "peak": peak}


def _profile_ops(
    model_step: Callable[[], None], optimizer_step: Callable[[], None], sync: Callable[[], None], iterations: int
) -> dict[str, float]:
    """Share of the training step (``model_step`` then ``optimizer_step``) per op type, over ``iterations`` steps.

    Every op call is timed by an observer on the dispatchers (``sync`` on both
    sides of each call, so queued GPU work is charged to its op); the optimizer
    step is timed around its call. The rest (reshapes, residual adds, module
    glue) is reported as "other".
    """
    totals: dict[str, float] = defaultdict(float)

    def record(call: ops.OpCall) -> None:
        totals[_op_label(call)] += call.seconds

    t0 = time.perf_counter()
    with ops.observe(record, sync):
        for _ in range(iterations):
            model_step()
            start = time.perf_counter()
            optimizer_step()
            sync()
            totals["optimizer"] += time.perf_counter() - start
    total = time.perf_counter() - t0
    shares = {k: v / total for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}
    shares["other (glue, reshapes, residual adds)"] = max(0.0, 1.0 - sum(shares.values()))
    return shares


def _op_label(call: Any) -> str:
    """The op's name; conv2d split into depthwise and dense (the two are different kernels).

    The forward has the weight and groups among its arguments, the backward in its cache.
    """
    if call.op != "conv2d":
        return call.op
    arguments = inspect.signature(getattr(ops, f"conv2d_{call.phase}")).bind(*call.args, **call.kwargs).arguments
    conv = arguments if call.phase == "forward" else arguments["cache"]._asdict()
    groups = conv.get("groups", 1)
    return "conv2d depthwise" if groups > 1 and groups == conv["weight"].shape[0] else "conv2d dense"
