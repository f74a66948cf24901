"""pvt_np: PVT v2 in NumPy/CuPy with every forward and backward pass written by hand.

Every public submodule (``pvt_np.weights``, ``pvt_np.training``, ``pvt_np.data``, ...) and
function (``pvt_np.create_model``, ``pvt_np.load_model``, ``pvt_np.predict``, ...) is reached
from ``import pvt_np`` alone, imported on first use (PEP 562), so importing stays fast.
"""

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_SUBMODULES = (
    "backend",
    "bench",
    "cli",
    "complexity",
    "data",
    "distributed",
    "grad_check",
    "inference",
    "io",
    "models",
    "nn",
    "ops",
    "optim",
    "training",
    "weights",
)

# name -> the submodule that defines it
_FUNCTIONS = {
    "count_flops": "complexity",
    "count_params": "complexity",
    "create_model": "models",
    "create_segmenter": "models",
    "get_array_module": "backend",
    "gpu_available": "backend",
    "gradcheck": "grad_check",
    "list_models": "models",
    "load_model": "weights",
    "manual_seed": "backend",
    "predict": "inference",
    "relative_error": "grad_check",
    "set_threads": "ops.parallel",
    "to_device": "backend",
    "to_numpy": "backend",
}

__all__ = ["__version__", *sorted(_FUNCTIONS), *_SUBMODULES]

if TYPE_CHECKING:  # what the lazy attributes are, for type checkers and IDEs
    from pvt_np import (  # noqa: F401
        backend,
        bench,
        cli,
        complexity,
        data,
        distributed,
        grad_check,
        inference,
        io,
        models,
        nn,
        ops,
        optim,
        training,
        weights,
    )
    from pvt_np.backend import (  # noqa: F401
        get_array_module,
        gpu_available,
        manual_seed,
        to_device,
        to_numpy,
    )
    from pvt_np.complexity import count_flops, count_params  # noqa: F401
    from pvt_np.grad_check import gradcheck, relative_error  # noqa: F401
    from pvt_np.inference import predict  # noqa: F401
    from pvt_np.models import create_model, create_segmenter, list_models  # noqa: F401
    from pvt_np.ops.parallel import set_threads  # noqa: F401
    from pvt_np.weights import load_model  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    elif name in _FUNCTIONS:
        value = getattr(importlib.import_module(f"{__name__}.{_FUNCTIONS[name]}"), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
