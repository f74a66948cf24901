"""``pvt-np bench``: pvt_np against PyTorch (timm's pvt_v2) on this machine, in one run.

Every (config, framework) pair runs in a fresh subprocess with the same
thread count, so that peak memory is that pair's alone: on the CPU it is
the rise of the process's peak resident set over its size just before the
first (untimed) step, so it holds the step's whole working set (activations,
gradients, optimizer state, temporaries) and not what the allocator kept from
an earlier step; on the GPU the high-water mark of allocated device memory
(CuPy's memory pool against ``torch.cuda.max_memory_allocated``). Times are medians of
``--repeats`` timed iterations after ``--warmup`` untimed ones:

* forward         logits = model(x)                       (train mode, caches kept)
* forward+backward  + loss and the full backward
* train step      zero_grad, forward, loss, backward, AdamW step

A profiling pass (separate, untimed in the results) reports the share of the
training step spent per op type: an observer on the op dispatchers
(:func:`pvt_np.ops.observe`) times every op call, and the optimizer step is
timed around its call; nothing is patched, so a new layer's ops are profiled as
they run.

``--neighbour loop|gemm|pvt_np|torch`` also times each pair's training step while a
neighbour process shares the machine (a single-threaded busy loop, a NumPy GEMM loop on
``--threads`` BLAS threads, or a second training of b0 at the CIFAR config with that
framework's defaults) and reports the slowdown against the quiet step: how the
framework behaves when its cores are not its own.

``--rounds R`` runs every (config, framework) pair R times, the pairs interleaved in each round (pvt_np,
torch, pvt_np, torch, ...), and reports the median of the rounds; a ratio is the median of the rounds'
own ratios, with their range: this machine's speed drifts by +-15 % between runs, and a ratio taken within
a round, between two processes a few seconds apart, cancels most of it.

``--device gpu`` times CuPy against torch CUDA eager, both in float32 without
TF32 (CuPy does not use it unless ``CUPY_TF32=1``; torch's cuDNN does by default,
so the worker turns it off), each timed iteration ending with a device
synchronise. It runs the CPU table's configs and the GPU ones (:data:`GPU_CONFIGS`).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from pvt_np import backend, ops
from pvt_np.io.atomic import atomic_write
from pvt_np.io.timm import timm_twin
from pvt_np.models import create_model
from pvt_np.nn import CrossEntropyLoss
from pvt_np.ops import parallel
from pvt_np.optim import AdamW, param_groups_weight_decay

# name -> (model name, create_model overrides, image size, batch size)
CONFIGS: dict[str, tuple[str, dict[str, Any], int, int]] = {
    "b0-cifar": ("pvt_v2_b0", {"cifar": True, "num_classes": 10}, 32, 128),
    "b0-224": ("pvt_v2_b0", {"num_classes": 1000}, 224, 8),
    "b2_li-224": ("pvt_v2_b2_li", {"num_classes": 1000}, 224, 4),
    "b0-224-bs32": ("pvt_v2_b0", {"num_classes": 1000}, 224, 32),
    "b2_li-224-bs16": ("pvt_v2_b2_li", {"num_classes": 1000}, 224, 16),
}
CPU_CONFIGS = ("b0-cifar", "b0-224", "b2_li-224")
GPU_CONFIGS = ("b0-cifar", "b0-224", "b2_li-224", "b0-224-bs32", "b2_li-224-bs16")
FRAMEWORKS = ("pvt_np", "torch")
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")
NEIGHBOURS = ("loop", "gemm", "pvt_np", "torch")


def run(args: Any) -> int:
    """Time every pair ``args`` asks for (the parsed options of ``pvt-np bench``: an attribute per flag) and print
    the report; or, as a worker or a neighbour (its hidden options), time one pair or be the neighbour."""
    if args.neighbour_run:
        _be_neighbour(args.neighbour_run, args.threads)
        return 0
    if args.worker:
        framework, config = args.worker
        result = _worker(framework, config, args.device, args.threads, args.repeats, args.warmup, args.step_only)
        print("BENCH-RESULT " + json.dumps(result))
        return 0
    if args.device == "gpu":
        backend.check_device("gpu")
    configs = args.configs or list(GPU_CONFIGS if args.device == "gpu" else CPU_CONFIGS)
    report: dict[str, Any] = {"machine": machine_info(args.device, args.threads), "results": []}
    failed = False
    rounds = getattr(args, "rounds", 1)
    for round_number in range(1, rounds + 1):
        for config in configs:
            for framework in args.frameworks:
                of = f" (round {round_number} of {rounds})" if rounds > 1 else ""
                print(f"timing {framework} {config}{of} ...", file=sys.stderr, flush=True)
                try:
                    result = _spawn(framework, config, args)
                except RuntimeError as err:  # report it and go on: one failing pair must not lose the others
                    print(f"pvt-np bench: {err}", file=sys.stderr, flush=True)
                    result = {"framework": framework, "config": config, "error": str(err)[-3000:]}
                    failed = True
                report["results"].append({**result, "round": round_number})
                if args.json:  # after every pair, so a run stopped early keeps what it measured
                    _write_json(args.json, report)
                quiet = report["results"][-1]
                for kind in args.neighbour if "error" not in quiet else []:
                    print(f"timing {framework} {config} beside {kind}{of} ...", file=sys.stderr, flush=True)
                    try:
                        with _neighbour(kind, args.threads):
                            beside = _spawn(framework, config, args, step_only=True)
                    except RuntimeError as err:
                        print(f"pvt-np bench: {err}", file=sys.stderr, flush=True)
                        failed = True
                        continue
                    report.setdefault("beside", []).append({
                        "config": config, "framework": framework, "neighbour": kind, "round": round_number,
                        "quiet_ms": quiet["train_step_ms"], "beside_ms": beside["train_step_ms"],
                        "slowdown": beside["train_step_ms"] / quiet["train_step_ms"],
                    })  # fmt: skip
                    if args.json:
                        _write_json(args.json, report)
    print(format_report(report))
    return 1 if failed else 0


def _write_json(path: str, report: dict[str, Any]) -> None:
    with atomic_write(path, "w") as f:
        json.dump(report, f, indent=2)


def _spawn(framework: str, config: str, args: Any, step_only: bool = False) -> dict[str, Any]:
    env = dict(os.environ, **{v: str(args.threads) for v in THREAD_VARS})
    cmd = [
        sys.executable, "-m", "pvt_np", "bench", "--worker", framework, config,
        "--device", args.device, "--threads", str(args.threads),
        "--repeats", str(args.repeats), "--warmup", str(args.warmup),
    ] + (["--step-only"] if step_only else [])  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH-RESULT "):
            return json.loads(line[len("BENCH-RESULT ") :])
    raise RuntimeError(f"bench worker {framework}/{config} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


@contextlib.contextmanager
def _neighbour(kind: str, threads: int) -> Iterator[None]:
    """Run the neighbour process ``kind`` (see --neighbour) from its first busy moment until the context ends."""
    env = dict(os.environ)
    if kind == "gemm":
        env.update({v: str(threads) for v in THREAD_VARS})
    cmd = [sys.executable, "-m", "pvt_np", "bench", "--neighbour-run", kind, "--threads", str(threads)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if line.strip() != "READY":
            proc.kill()
            err = proc.communicate()[1]
            raise RuntimeError(f"bench neighbour {kind} failed to start (exit {proc.returncode}):\n{err[-3000:]}")
        yield
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _be_neighbour(kind: str, threads: int) -> None:
    """Loop until killed, printing READY once the busy part begins (the parent times against it)."""
    if kind == "loop":
        print("READY", flush=True)
        while True:
            pass
    if kind == "gemm":  # NumPy's BLAS with its own threads (the environment set by _neighbour)
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


def machine_info(device: str, threads: int) -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "threads": threads,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "device": device,
    }
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        info["torch"] = None
    if device == "gpu":
        import cupy

        info["cupy"] = cupy.__version__
        info["gpu"] = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
        info["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
        info["cuda_driver"] = cupy.cuda.runtime.driverGetVersion()
        info["tf32"] = False
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# -- the worker ---------------------------------------------------------------


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


def _worker(
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


# -- the report -----------------------------------------------------------------


_REPORTED = ("forward_ms", "forward_backward_ms", "train_step_ms", "img_per_s", "peak_memory_mb")


def _ratios(values: list[float]) -> str:
    """One ratio as is; several as their median and range."""
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def format_report(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"machine: {m['cpu']} ({m['cores']} cores), {m['threads']} threads, device {m['device']}"
        + (f" [{m.get('gpu')}]" if m["device"] == "gpu" else ""),
        f"versions: python {m['python']}, numpy {m['numpy']}, torch {m['torch']}"
        + (f", cupy {m.get('cupy')}" if m["device"] == "gpu" else ""),
        "",
    ]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in report["results"]:
        groups.setdefault((r["config"], r["framework"]), []).append(r)
    rounds = max((len(rows) for rows in groups.values()), default=1)
    width = 10 if rounds == 1 else 18
    if rounds > 1:
        lines.insert(-1, f"medians of {rounds} interleaved rounds; ratios: median of the rounds' ratios (min-max)")
    lines.append(
        f"{'config':<14} {'framework':<7} {'fwd ms':>8} {'fwd+bwd ms':>11} {'step ms':>8} "
        f"{'img/s':>7} {'peak MB':>8} {'step ratio':>{width}} {'mem ratio':>{width}}"
    )
    by_key: dict[tuple[str, str], dict[str, Any]] = {}  # the first good result of each pair (its op shares)
    for (config, framework), rows in groups.items():
        for r in rows:
            if "error" in r:
                lines.append(f"{config:<14} {framework:<7} failed: {r['error'].strip().splitlines()[-1]}")
        good = [r for r in rows if "error" not in r]
        if not good:
            continue
        by_key[config, framework] = good[0]
        med = {k: statistics.median(r[k] for r in good) for k in _REPORTED}
        ratio = mem_ratio = ""
        if framework == "pvt_np":
            torch_by_round = {r.get("round", 1): r for r in groups.get((config, "torch"), []) if "error" not in r}
            pairs = [(r, torch_by_round[r.get("round", 1)]) for r in good if r.get("round", 1) in torch_by_round]
            if pairs:
                ratio = _ratios([a["train_step_ms"] / b["train_step_ms"] for a, b in pairs])
                mem_ratio = _ratios([a["peak_memory_mb"] / max(b["peak_memory_mb"], 1e-9) for a, b in pairs])
        lines.append(
            f"{config:<14} {framework:<7} {med['forward_ms']:8.1f} {med['forward_backward_ms']:11.1f} "
            f"{med['train_step_ms']:8.1f} {med['img_per_s']:7.0f} {med['peak_memory_mb']:8.0f} "
            f"{ratio:>{width}} {mem_ratio:>{width}}"
        )
    if report.get("beside"):
        lines += [
            "",
            "beside a neighbour process: training step ms (median), slowdown = beside / quiet",
            f"{'config':<14} {'framework':<9} {'neighbour':<9} {'quiet ms':>9} {'beside ms':>10} {'slowdown':>8}",
        ]
        lines.extend(
            f"{b['config']:<14} {b['framework']:<9} {b['neighbour']:<9} {b['quiet_ms']:9.1f} {b['beside_ms']:10.1f} "
            f"{b['slowdown']:7.2f}x"
            for b in report["beside"]
        )
    for r in by_key.values():
        if "op_share" in r:
            lines.append("")
            lines.append(f"pvt_np {r['config']}: share of the training step per op type")
            lines.extend(f"  {k:<40} {v * 100:5.1f}%" for k, v in r["op_share"].items())
    return "\n".join(lines)
