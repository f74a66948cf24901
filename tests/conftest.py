"""Shared test set-up: one BLAS/torch thread per pytest-xdist worker, seeded generators, GPU marker."""

import os
from typing import Any

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


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache_home(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Decoded-image caches of every test (and of its child processes) go to a temporary
    XDG_CACHE_HOME, never the user's ~/.cache/pvt_np."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg")))
        yield


@pytest.fixture(autouse=True)
def _one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """``pvt-np train`` called in-process trains in this process: without this, on 2 or more cores
    with mpi4py installed its default would start mpiexec (tests of that default call
    ``distributed.auto_nprocs`` through a reference taken at import, before this patch)."""
    from pvt_np import distributed

    monkeypatch.setattr(distributed, "auto_nprocs", lambda *args: 1)
