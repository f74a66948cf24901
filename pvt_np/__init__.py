"""pvt_np: PVT v2 in NumPy/CuPy with every forward and backward pass written by hand."""

from pvt_np import nn, ops
from pvt_np.backend import get_array_module, gpu_available, manual_seed, to_device, to_numpy
from pvt_np.grad_check import gradcheck, relative_error

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "get_array_module",
    "gpu_available",
    "gradcheck",
    "manual_seed",
    "nn",
    "ops",
    "relative_error",
    "to_device",
    "to_numpy",
]
