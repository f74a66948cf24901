"""pvt_np: PVT v2 in NumPy/CuPy with every forward and backward pass written by hand."""

import os

# OpenBLAS keeps its idle threads spinning for about 2^28 cycles after each GEMM, which
# starves pvt_np's elementwise worker threads (pvt_np.ops.parallel) between GEMMs: at the
# CIFAR config a training step ran 20% slower. 2^4 cycles lets them sleep at once. It only
# takes effect when pvt_np is imported before NumPy (as in the pvt-np command); a value the
# user already set is kept.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

from pvt_np import nn, ops
from pvt_np.backend import get_array_module, gpu_available, manual_seed, to_device, to_numpy
from pvt_np.complexity import count_flops, count_params
from pvt_np.grad_check import gradcheck, relative_error
from pvt_np.models import create_model, list_models

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "count_flops",
    "count_params",
    "create_model",
    "get_array_module",
    "gpu_available",
    "gradcheck",
    "list_models",
    "manual_seed",
    "nn",
    "ops",
    "relative_error",
    "to_device",
    "to_numpy",
]
