"""pvt_np.backend: array-module dispatch, device moves and checks, dtype checks, seeding."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import types
from typing import Any

import numpy as np
import pytest

import pvt_np
from pvt_np import backend


def test_get_array_module_is_numpy_for_host_data() -> None:
    """NumPy arrays, Python objects and no arguments at all dispatch to numpy."""
    assert backend.get_array_module(np.ones(3)) is np
    assert backend.get_array_module(np.ones(3), [1.0], 2.0, None) is np
    assert backend.get_array_module() is np
    assert pvt_np.get_array_module is backend.get_array_module
    assert backend.device_of(np.ones(2)) == "cpu"


def test_get_array_module_finds_a_cupy_argument(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any argument of the CuPy array type selects the CuPy module (checked with a stand-in module)."""

    class FakeArray:
        pass

    fake = types.SimpleNamespace(ndarray=FakeArray, __name__="cupy")
    monkeypatch.setattr(backend, "_cupy", fake)
    assert backend.get_array_module(np.ones(2), FakeArray()) is fake
    assert backend.get_array_module(np.ones(2)) is np
    assert backend.device_of(FakeArray()) == "gpu"


def test_to_numpy() -> None:
    """to_numpy returns NumPy arrays as they are (no copy) and converts other array-likes."""
    x = np.arange(6.0).reshape(2, 3)
    assert backend.to_numpy(x) is x
    y = backend.to_numpy([[1, 2], [3, 4]])
    assert isinstance(y, np.ndarray) and y.shape == (2, 2)
    assert backend.to_numpy(np.float32(2.5)).shape == ()


def test_to_device_cpu_is_a_no_op_for_numpy() -> None:
    """to_device(x, 'cpu') keeps a NumPy array (same object) and converts lists."""
    x = np.ones((2, 2), dtype=np.float32)
    assert backend.to_device(x, "cpu") is x
    np.testing.assert_array_equal(backend.to_device([1.0, 2.0], "cpu"), np.array([1.0, 2.0]))


def test_check_device_accepts_cpu_and_rejects_unknown_names() -> None:
    """'cpu' passes; unknown names raise ValueError listing the valid ones."""
    assert backend.check_device("cpu") == "cpu"
    for bad in ("cuda", "GPU", ""):
        with pytest.raises(ValueError, match=r"expected one of \('cpu', 'gpu'\)"):
            backend.check_device(bad)
    with pytest.raises(ValueError, match="'cuda'"):
        backend.to_device(np.ones(1), "cuda")


def test_check_device_gpu_without_cupy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Asking for the GPU without CuPy raises RuntimeError saying why and what to install."""
    monkeypatch.setattr(backend, "_cupy", None)
    assert not backend.gpu_available()
    with pytest.raises(RuntimeError, match=r"device='gpu' requested but CuPy is not installed.*pvt_np\[gpu\]"):
        backend.check_device("gpu")
    with pytest.raises(RuntimeError, match="CuPy is not installed"):
        backend.to_device(np.ones(1), "gpu")


def test_check_device_gpu_without_a_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """CuPy importable but no CUDA device (getDeviceCount fails or is 0): RuntimeError naming that."""

    def no_driver() -> int:
        raise RuntimeError("cudaErrorNoDevice")

    for count in (no_driver, lambda: 0):
        fake = types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=count)))
        monkeypatch.setattr(backend, "_cupy", fake)
        assert backend.gpu_available() is False
        with pytest.raises(RuntimeError, match="CuPy finds no CUDA device"):
            backend.check_device("gpu")


def test_check_float_dtype() -> None:
    """float32/float64 in any spelling normalise to np.dtype; anything else is a TypeError naming it."""
    assert backend.check_float_dtype(np.float32) == np.dtype(np.float32)
    assert backend.check_float_dtype("float64") == np.dtype(np.float64)
    assert backend.check_float_dtype(np.dtype("f4")) == np.dtype(np.float32)
    for bad, shown in ((np.int64, "int64"), ("float16", "float16"), (complex, "complex128")):
        with pytest.raises(TypeError, match=f"expected float32 or float64, got {shown}"):
            backend.check_float_dtype(bad, "dtype")
    with pytest.raises(TypeError, match="weights: expected float32 or float64"):
        backend.check_float_dtype("not-a-dtype", "weights")


def _draw(seed: int | None) -> np.ndarray:
    if seed is not None:
        pvt_np.manual_seed(seed)
    return backend.get_rng(np).random(5)


def test_manual_seed_reproducibility() -> None:
    """manual_seed(s) restarts the shared stream: same seed, same numbers; other seed, other numbers."""
    a = _draw(7)
    a_next = _draw(None)
    b = _draw(7)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a_next, _draw(None))
    assert not np.array_equal(a, a_next)
    assert not np.array_equal(a, _draw(8))
    np.testing.assert_array_equal(a, np.random.default_rng(7).random(5))  # seeded exactly with s


def test_get_rng_is_shared_until_reseeded() -> None:
    """get_rng returns one generator per array module, replaced by the next manual_seed."""
    pvt_np.manual_seed(0)
    g = backend.get_rng(np)
    assert backend.get_rng(np) is g and backend.get_rng() is g
    assert isinstance(g, np.random.Generator)
    pvt_np.manual_seed(0)
    assert backend.get_rng(np) is not g


def _blake(*keys: int) -> int:
    digest = hashlib.blake2b(repr(tuple(keys)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def test_derive_seed_is_stable() -> None:
    """derive_seed is a fixed function of its integers: 63-bit, order-sensitive, independent of the process."""
    keys_list: list[tuple[Any, ...]] = [(0,), (1, 2, 3), (2024, 7), (2**40, 0, 5)]
    for keys in keys_list:
        s = backend.derive_seed(*keys)
        assert isinstance(s, int) and 0 <= s < 2**63
        assert s == backend.derive_seed(*keys) == _blake(*keys)
    assert backend.derive_seed(1, 2) != backend.derive_seed(2, 1)
    assert backend.derive_seed(1, 2) != backend.derive_seed(1, 2, 0)
    assert backend.derive_seed(np.int64(3), np.uint8(4)) == backend.derive_seed(3, 4)
    # pinned: a change here would change every resumed run's dropout masks and data order
    assert backend.derive_seed(0) == 2631537505891389924
    assert backend.derive_seed(2024, 7) == 6983590035938039724


def test_derive_seed_does_not_depend_on_hash_randomisation() -> None:
    """A fresh interpreter with another PYTHONHASHSEED derives the same seed."""
    code = "from pvt_np.backend import derive_seed; print(derive_seed(1, 2, 3))"
    env = {"PYTHONHASHSEED": "12345", "PATH": ""}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert int(out) == backend.derive_seed(1, 2, 3)
