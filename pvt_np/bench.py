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

``--frameworks`` picks among :data:`ALL_FRAMEWORKS` (see :mod:`pvt_np.bench_worker`): pvt_np's eager step and
its graph-mode step (``pvt_np_graph``), torch eager, torch's step as a CUDA graph (``torch_graph``, the GPU
only) and ``torch.compile`` (``torch_compile``). By default the CPU times pvt_np and torch
(:data:`FRAMEWORKS`), the GPU pvt_np's graph-mode step as well (:data:`GPU_FRAMEWORKS`). Every ratio in the
report is against torch eager of the same round.

Here: the runner, which starts a worker process per pair and a neighbour beside it; the worker's timing and
profile are :mod:`pvt_np.bench_worker`, the report :mod:`pvt_np.bench_report`.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

from pvt_np import backend
from pvt_np.bench_report import format_report, machine_info
from pvt_np.bench_worker import CONFIGS, GPU_ONLY_FRAMEWORKS, be_neighbour, worker
from pvt_np.bench_worker import FRAMEWORKS as ALL_FRAMEWORKS
from pvt_np.io.atomic import atomic_write

# Besides its own: the names pvt_np.bench gave before its worker and its report had modules of their own.
__all__ = [
    "ALL_FRAMEWORKS",
    "CONFIGS",
    "CPU_CONFIGS",
    "FRAMEWORKS",
    "GPU_CONFIGS",
    "GPU_FRAMEWORKS",
    "NEIGHBOURS",
    "THREAD_VARS",
    "format_report",
    "machine_info",
    "run",
]

CPU_CONFIGS = ("b0-cifar", "b0-224", "b2_li-224")
GPU_CONFIGS = ("b0-cifar", "b0-224", "b2_li-224", "b0-224-bs32", "b2_li-224-bs16")
FRAMEWORKS = ("pvt_np", "torch")  # the default on the CPU
GPU_FRAMEWORKS = ("pvt_np", "pvt_np_graph", "torch")  # the default on the GPU: pvt_np's best step against torch's
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")
NEIGHBOURS = ("loop", "gemm", "pvt_np", "torch")


def run(args: Any) -> int:
    """Time every pair ``args`` asks for (the parsed options of ``pvt-np bench``: an attribute per flag) and print
    the report; or, as a worker or a neighbour (its hidden options), time one pair or be the neighbour."""
    if args.neighbour_run:
        be_neighbour(args.neighbour_run, args.threads)
        return 0
    if args.worker:
        framework, config = args.worker
        result = worker(framework, config, args.device, args.threads, args.repeats, args.warmup, args.step_only)
        print("BENCH-RESULT " + json.dumps(result))
        return 0
    frameworks = args.frameworks or list(GPU_FRAMEWORKS if args.device == "gpu" else FRAMEWORKS)
    gpu_only = [f for f in frameworks if f in GPU_ONLY_FRAMEWORKS]
    if gpu_only and args.device != "gpu":
        print(
            f"pvt-np bench: error: --frameworks: {' '.join(gpu_only)} records torch's step as a CUDA graph and needs "
            f"--device gpu, got --device {args.device}; leave it out of --frameworks on the CPU",
            file=sys.stderr,
        )
        return 2
    if args.device == "gpu":
        backend.check_device("gpu")
    configs = args.configs or list(GPU_CONFIGS if args.device == "gpu" else CPU_CONFIGS)
    report: dict[str, Any] = {"machine": machine_info(args.device, args.threads), "results": []}
    failed = False
    rounds = getattr(args, "rounds", 1)
    for round_number in range(1, rounds + 1):
        for config in configs:
            for framework in frameworks:
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
