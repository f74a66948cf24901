"""The GPU's code paths, run on NumPy: what can be checked of them without a device.

* the depthwise conv's tap loop (CuPy's path) against the einsum path, forward and both gradients;
* the counter-based device generator against an independent scalar SplitMix64, and its re-keying;
* manual_seed re-keys the device generator instead of rebuilding it (with a stand-in CuPy module);
* the cached adaptive-pooling matrices;
* the loader's staged (packed, one-copy) uploads give the same batches as direct ones.
"""

from __future__ import annotations

import types
from typing import Any

import numpy as np
import pytest
from helpers import assert_close, randn

from pvt_np import ops, parallel
from pvt_np.ops import conv

TAP_LOOP_TOL = 1e-12  # float64, the same products summed in another order

# n, c, (h, w), (kh, kw), stride, padding, bias
DEPTHWISE_SPECS = [
    (2, 5, (13, 7), (3, 3), 1, 1, True),
    (2, 5, (13, 7), (3, 3), 2, 1, True),
    (1, 4, (9, 11), (3, 2), (2, 3), (1, 0), False),
    (3, 3, (8, 6), (3, 3), 1, 0, False),
    (1, 6, (5, 5), (5, 5), 1, 2, True),
    # above the chunking threshold: several chunks of images (the last one partial), threaded
    (20, 64, (16, 16), (3, 3), 1, 1, True),
    (20, 64, (32, 32), (3, 3), 2, 1, True),
]


def _depthwise_run(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride: Any, padding: Any) -> list[Any]:
    c = x.shape[3]
    out, cache = ops.conv2d_forward(x, w, b, stride, padding, groups=c, channels_last=True)
    g = np.random.default_rng(5).standard_normal(out.shape)
    return [out, *(a for a in ops.conv2d_backward(g, cache) if a is not None)]


@pytest.mark.parametrize("spec", DEPTHWISE_SPECS, ids=lambda s: f"n{s[0]}c{s[1]}-{s[2]}-k{s[3]}-s{s[4]}-p{s[5]}")
def test_depthwise_tap_loop_matches_einsum(spec: tuple[Any, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    """The CuPy tap loop, forced on NumPy, gives the einsum path's output, input and weight (and bias) gradients."""
    n, c, (h, w), kernel, stride, padding, bias = spec
    rng = np.random.default_rng(0)
    x = randn(rng, n, h, w, c)
    weight = randn(rng, c, 1, *kernel)
    b = randn(rng, c) if bias else None
    expected = _depthwise_run(x, weight, b, stride, padding)

    def no_windows(*args: Any) -> None:
        raise AssertionError("the tap loop built the window view")

    monkeypatch.setattr(conv, "FORCE_TAP_LOOP", True)
    monkeypatch.setattr(conv, "_windows", no_windows)
    assert conv.use_tap_loop(np)
    actual = _depthwise_run(x, weight, b, stride, padding)
    names = ("out", "dx", "dw", "db") if bias else ("out", "dx", "dw")
    assert len(actual) == len(expected) == len(names)
    for name, a, e in zip(names, actual, expected, strict=True):
        assert a.shape == e.shape, f"{name}: shape {a.shape} != {e.shape}"
        assert_close(a, e, TAP_LOOP_TOL, name)


def test_depthwise_chunked_specs_really_chunk() -> None:
    """The large specs above span several chunks (else they would not test the chunk boundaries)."""
    for n, c, (h, _w), _, stride, padding, _ in DEPTHWISE_SPECS[-2:]:
        s = stride if isinstance(stride, int) else stride[0]
        p = padding if isinstance(padding, int) else padding[0]
        ho = conv.conv_output_size(h, 3, s, p)
        rows = parallel.chunk_rows(ho * ho * c)
        assert n > 2 * rows and n % rows, f"n={n} with {rows} rows per chunk"
        assert n * ho * ho * c >= parallel.PARALLEL_MIN_ELEMENTS


def test_tap_loop_is_the_cupy_default() -> None:
    """Without the test switch NumPy keeps the einsum; any other array module gets the tap loop."""
    assert not conv.FORCE_TAP_LOOP
    assert not conv.use_tap_loop(np)
    assert conv.use_tap_loop(types.SimpleNamespace(__name__="cupy"))
