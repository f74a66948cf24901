"""Shared test set-up: one BLAS/torch thread per pytest-xdist worker, seeded generators, GPU marker."""

import os

# Two xdist workers on two cores: each worker gets one thread, set before NumPy/torch load BLAS.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from pvt_np import backend  # noqa: E402

try:
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
except ImportError:  # torch is a test extra; tests that need it skip via importorskip
    torch = None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if backend.gpu_available():
        return
    reason = "needs CuPy and a CUDA device: " + (
        "CuPy is not installed" if backend.cupy_module() is None else "CuPy finds no GPU"
    )
    for item in items:
        # The marker itself: item.keywords also holds the names of parent folders (a checkout named "gpu").
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
