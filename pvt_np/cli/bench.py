"""``pvt-np bench``: pvt_np against PyTorch on this machine (the runner is :mod:`pvt_np.bench`)."""

from __future__ import annotations

import argparse
import os

from pvt_np.bench import ALL_FRAMEWORKS, CONFIGS, CPU_CONFIGS, FRAMEWORKS, GPU_CONFIGS, GPU_FRAMEWORKS, NEIGHBOURS
from pvt_np.bench import run as run
from pvt_np.cli.arguments import positive_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    extra = " ".join(c for c in GPU_CONFIGS if c not in CPU_CONFIGS)
    p.add_argument("--configs", nargs="+", choices=list(CONFIGS),
                   help=f"what to time (default: {' '.join(CPU_CONFIGS)}; with --device gpu also {extra})")  # fmt: skip
    p.add_argument("--device", default="cpu", choices=("cpu", "gpu"))
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for both frameworks")
    p.add_argument("--repeats", type=int, default=10, help="timed iterations per measurement")
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations before timing")
    p.add_argument("--rounds", type=positive_int, default=1,
                   help="time every pair this many times, interleaved; medians and each ratio's range")  # fmt: skip
    gpu_extra = " ".join(f for f in GPU_FRAMEWORKS if f not in FRAMEWORKS)
    p.add_argument("--frameworks", nargs="+", choices=ALL_FRAMEWORKS,
                   help=f"what to time (default: {' '.join(FRAMEWORKS)}; with --device gpu also {gpu_extra}): "
                   "pvt_np (eager), pvt_np_graph (the trainer's graph-mode step: a CUDA graph on the GPU, the "
                   "capturable step on the CPU), torch (eager), torch_graph (torch's step as a CUDA graph; "
                   "--device gpu only), torch_compile (torch.compile, default mode; its first steps compile, which "
                   "is slow on the CPU); ratios are against torch")  # fmt: skip
    p.add_argument("--neighbour", nargs="+", choices=NEIGHBOURS, default=[],
                   help="also time each training step beside this process: loop (a single-threaded busy loop), "
                   "gemm (a NumPy GEMM loop on --threads BLAS threads), pvt_np or torch (a second b0 CIFAR "
                   "training with its defaults); reports the slowdown against the quiet step")  # fmt: skip
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--worker", nargs=2, metavar=("FRAMEWORK", "CONFIG"), help=argparse.SUPPRESS)
    p.add_argument("--step-only", action="store_true", help=argparse.SUPPRESS)  # worker: the training step alone
    p.add_argument("--neighbour-run", choices=NEIGHBOURS, help=argparse.SUPPRESS)  # be the neighbour until killed
