"""The worker of ``pvt-np bench``: one (config, framework) pair timed in a process of its own, and the neighbour.

:func:`worker` builds the model (pvt_np, or timm's pvt_v2 on torch), times its forward, forward+backward and
training step, measures the step's peak memory and profiles the share of the step per op type (see
:mod:`pvt_np.bench`, which starts these processes and prints the report); :func:`be_neighbour` is the busy process
that ``--neighbour`` runs beside a pair.
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
from pvt_np.optim import AdamW, param_groups_weight_decay

__all__ = ["CONFIGS", "be_neighbour", "worker"]

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
    name, overrides, size, batch = CONFIGS[config]
    rng = np.random.default_rng(0)
    x_host = rng.standard_normal((batch, 3, size, size)).astype(np.float32)
    y_host = rng.integers(0, overrides["num_classes"], size=batch)
    if framework == "pvt_np":
        steps, sync, mem = _pvt_np_steps(name, overrides, x_host, y_host, device, threads)
    else:
        steps, sync, mem = _torch_steps(name, overrides, x_host, y_host, device, threads)
    result: dict[str, Any] = {"framework": framework, "config": config, "batch": batch, "size": size}
    mem["start"]()
    for key in ("train_step",) if step_only else ("forward", "forward_backward", "train_step"):
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
    opt = AdamW(param_groups_weight_decay(model, 0.05), lr=1e-3)
    x, y = backend.to_device(x_host, device), backend.to_device(y_host, device)

    def forward() -> None:
        model(x)
        model.zero_grad()

    def forward_backward() -> None:
        crit(model(x), y)
        model.backward(crit.backward(), input_grad=False)
        model.zero_grad()

    def model_step() -> None:
        opt.zero_grad()
        crit(model(x), y)
        model.backward(crit.backward(), input_grad=False)

    def train_step() -> None:
        model_step()
        opt.step()

    if device == "gpu":
        import cupy

        def sync() -> None:
            cupy.cuda.Device().synchronize()

        pool = cupy.get_default_memory_pool()
        mem = {
            "start": lambda: None,
            "peak": lambda: _cupy_peak_bytes(train_step, sync),
            "held": pool.total_bytes,
        }
    else:
        sync, mem = _cpu_meters()  # the baseline, before any step
    # One step first, so that optimizer state exists and first-call costs are paid before anything is timed.
    train_step()
    steps = {
        "forward": forward,
        "forward_backward": forward_backward,
        "train_step": train_step,
        "model_step": model_step,  # train_step is model_step then optimizer_step (for the profile)
        "optimizer_step": opt.step,
    }
    return steps, sync, mem


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


def _torch_steps(
    name: str, overrides: dict[str, Any], x_host: np.ndarray, y_host: np.ndarray, device: str, threads: int
):
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
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}])
    x, y = torch.from_numpy(x_host).to(dev), torch.from_numpy(y_host).to(dev)

    def forward() -> None:
        model(x)

    def forward_backward() -> None:
        crit(model(x), y).backward()
        model.zero_grad(set_to_none=True)

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        crit(model(x), y).backward()
        opt.step()

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
    train_step()
    steps = {"forward": forward, "forward_backward": forward_backward, "train_step": train_step}
    return steps, sync, mem


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
