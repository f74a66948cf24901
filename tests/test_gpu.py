"""The GPU against the CPU: every op, the whole model, the trainer, the CLI and checkpoints, float32 and float64.

Each comparison takes the ``target`` fixture, the GPU: marked ``gpu``, so it is skipped
without CuPy and a device, and ``python -m pytest -m gpu`` selects exactly these. Without
a GPU the CUDA kernels' code runs on host-compiled kernels in tests/test_device_paths.py.

Random ops draw from :class:`pvt_np.counter_rng.CounterRng`, whose stream is the
same on both devices, so dropout masks are compared exactly too.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import F32_GRAD_TOL, F32_TOL, assert_close, away_from_zero, randn
from training_fixtures import run_pvt_np, train_args, write_image_folder

import pvt_np
from pvt_np import backend, ops
from pvt_np.counter_rng import CounterRng
from pvt_np.nn import CrossEntropyLoss
from pvt_np.nn.module import Parameter
from pvt_np.optim import SGD, AdamW, param_groups_weight_decay
from pvt_np.training import load_checkpoint, save_checkpoint, train_step

# float64 on the GPU sums in other orders (cuBLAS, reductions): ~1e-15 per op, allowed 1e-12 for one op.
GPU_F64_TOL = 1e-12
# A whole model or two optimiser steps chain a few hundred ops: allowed 1e-10 in float64.
GPU_F64_MODEL_TOL = 1e-10
# float32 whole model, GPU against CPU (ReLU/GELU kinks and LayerNorm cancellation amplify rounding).
F32_MODEL_OUT_TOL = 1e-4
F32_MODEL_GRAD_TOL = 1e-2
# float32 trainer steps: the test_training bounds against PyTorch.
F32_LOSS_TOL = 1e-5
F32_WEIGHT_TOL = 3e-5
DTYPES = [np.float64, np.float32]


@dataclass(frozen=True)
class Target:
    """The side compared with the CPU: pvt_np's device name and its array module."""

    device: str
    xp: Any

    def put(self, a: np.ndarray) -> Any:
        """A copy of host array ``a`` on this target."""
        return backend.to_device(a, self.device)

    def owns(self, a: Any) -> bool:
        """Whether ``a`` lives on this target."""
        return isinstance(a, self.xp.ndarray)


@pytest.fixture(params=[pytest.param("gpu", marks=pytest.mark.gpu)])
def target(request: pytest.FixtureRequest) -> Target:
    return Target(request.param, importlib.import_module("cupy"))


def _tol(dtype: Any, f64: float, f32: float) -> float:
    return f64 if np.dtype(dtype) == np.float64 else f32


# -- every op ---------------------------------------------------------------------------
@dataclass(frozen=True)
class OpCase:
    """forward(*inputs[, rng]) -> (out, cache); backward(dout, cache) -> the gradient(s) of the float inputs."""

    op: str  # the registered op family
    id: str
    forward: Callable[..., Any]
    backward: Callable[[Any, Any], Any]
    make: Callable[[np.random.Generator], list[np.ndarray]]
    random: bool = False


def _conv(op_id: str, x: tuple[int, ...], w: tuple[int, ...], bias: bool, **kw: Any) -> OpCase:
    def make(rng: np.random.Generator) -> list[np.ndarray]:
        arrays = [randn(rng, *x), randn(rng, *w)]
        return [*arrays, randn(rng, w[0])] if bias else arrays

    def fwd(a: Any, weight: Any, b: Any = None) -> Any:
        return ops.conv2d_forward(a, weight, b, **kw)

    def bwd(g: Any, cache: Any) -> Any:
        dx, dw, db = ops.conv2d_backward(g, cache)
        return (dx, dw, db) if bias else (dx, dw)

    return OpCase("conv2d", f"conv2d-{op_id}", fwd, bwd, make)


OP_CASES = [
    _conv("dense-strided-padded", (2, 3, 13, 7), (5, 3, 3, 3), True, stride=2, padding=1),
    _conv("patch-embed-7x7-s4", (1, 3, 13, 11), (4, 3, 7, 7), True, stride=4, padding=3),
    _conv("sr-2x2-s2-nhwc", (2, 8, 6, 4), (4, 4, 2, 2), False, stride=2, channels_last=True),
    _conv("grouped", (2, 4, 7, 5), (6, 2, 3, 3), True, padding=1, groups=2),
    _conv("rect-mixed-stride", (1, 2, 9, 11), (3, 2, 3, 2), True, stride=(2, 3), padding=(1, 0)),
    _conv("depthwise-nhwc", (2, 13, 7, 5), (5, 1, 3, 3), True, padding=1, groups=5, channels_last=True),
    _conv("depthwise-nchw-nobias", (2, 5, 13, 7), (5, 1, 3, 3), False, padding=1, groups=5),
    _conv("depthwise-strided", (1, 9, 11, 4), (4, 1, 3, 3), True, stride=2, padding=1, groups=4, channels_last=True),
    _conv("depthwise-multiplier", (1, 3, 13, 7), (6, 1, 3, 3), True, padding=1, groups=3),
    _conv("depthwise-large", (6, 16, 16, 64), (64, 1, 3, 3), True, padding=1, groups=64, channels_last=True),
    _conv("depthwise-pad3", (2, 6, 5, 3), (3, 1, 3, 3), True, padding=3, groups=3, channels_last=True),
    _conv("depthwise-s3-5x5", (1, 11, 10, 7), (7, 1, 5, 5), False, stride=3, padding=2, groups=7, channels_last=True),
    OpCase(
        "linear",
        "linear",
        ops.linear_forward,
        ops.linear_backward,
        lambda r: [randn(r, 2, 5, 7), randn(r, 3, 7), randn(r, 3)],
    ),
    OpCase(
        "layer_norm",
        "layer_norm",
        lambda x, w, b: ops.layer_norm_forward(x, w, b, 1e-6),
        ops.layer_norm_backward,
        lambda r: [randn(r, 2, 5, 7) + 0.3, 1.0 + 0.5 * randn(r, 7), randn(r, 7)],
    ),
    OpCase(
        "layer_norm",
        "layer_norm-wide",
        lambda x, w, b: ops.layer_norm_forward(x, w, b, 1e-6),
        ops.layer_norm_backward,
        lambda r: [3.0 * randn(r, 300, 512) - 0.7, 1.0 + 0.5 * randn(r, 512), randn(r, 512)],
    ),
    OpCase(
        "gelu",
        "gelu-none",
        lambda x: ops.gelu_forward(x, "none"),
        ops.gelu_backward,
        lambda r: [2.0 * randn(r, 2, 13, 7)],
    ),
    OpCase(
        "gelu",
        "gelu-tanh",
        lambda x: ops.gelu_forward(x, "tanh"),
        ops.gelu_backward,
        lambda r: [2.0 * randn(r, 2, 13, 7)],
    ),
    OpCase("relu", "relu", ops.relu_forward, ops.relu_backward, lambda r: [away_from_zero(r, 2, 13, 7)]),
    OpCase(
        "softmax",
        "softmax",
        lambda x: ops.softmax_forward(x, axis=1),
        ops.softmax_backward,
        lambda r: [randn(r, 2, 5, 7)],
    ),
    OpCase(
        "attention",
        "attention",
        ops.attention_forward,
        ops.attention_backward,
        lambda r: [randn(r, 2, 2, 13, 4), randn(r, 2, 2, 5, 4), randn(r, 2, 2, 5, 4)],
    ),
    OpCase(
        "attention",
        "attention-dropout",
        lambda q, k, v, rng: ops.attention_forward(q, k, v, None, 0.3, rng),
        ops.attention_backward,
        lambda r: [randn(r, 2, 2, 13, 4), randn(r, 2, 2, 5, 4), randn(r, 2, 2, 5, 4)],
        random=True,
    ),
    OpCase(
        "adaptive_avg_pool2d",
        "pool-nchw",
        lambda x: ops.adaptive_avg_pool2d_forward(x, 7),
        ops.adaptive_avg_pool2d_backward,
        lambda r: [randn(r, 2, 3, 15, 11)],
    ),
    OpCase(
        "adaptive_avg_pool2d",
        "pool-nhwc",
        lambda x: ops.adaptive_avg_pool2d_forward(x, (7, 5), True),
        ops.adaptive_avg_pool2d_backward,
        lambda r: [randn(r, 2, 15, 11, 3)],
    ),
    OpCase(
        "dropout",
        "dropout",
        lambda x, rng: ops.dropout_forward(x, 0.3, True, rng),
        ops.dropout_backward,
        lambda r: [randn(r, 4, 33, 7)],
        random=True,
    ),
    OpCase(
        "drop_path",
        "drop_path",
        lambda x, rng: ops.drop_path_forward(x, 0.4, True, rng),
        ops.drop_path_backward,
        lambda r: [randn(r, 16, 5, 3)],
        random=True,
    ),
    OpCase(
        "cross_entropy",
        "cross_entropy-labels",
        lambda z, t: ops.cross_entropy_forward(z, t, 0.1),
        ops.cross_entropy_backward,
        lambda r: [randn(r, 6, 5), np.array([0, 3, 1, 4, 4, 2])],
    ),
    OpCase(
        "cross_entropy",
        "cross_entropy-soft",
        lambda z, t: ops.cross_entropy_forward(z, t, 0.1),
        ops.cross_entropy_backward,
        lambda r: [randn(r, 6, 5), r.dirichlet(np.ones(5), 6)],
    ),
    OpCase(
        "group_norm",
        "group_norm-nhwc",
        lambda x, w, b: ops.group_norm_forward(x, w, b, 4, 1e-5, True),
        ops.group_norm_backward,
        lambda r: [randn(r, 2, 7, 5, 8) + 0.3, 1.0 + 0.5 * randn(r, 8), randn(r, 8)],
    ),
    OpCase(
        "group_norm",
        "group_norm-nchw",
        lambda x, w, b: ops.group_norm_forward(x, w, b, 3),
        ops.group_norm_backward,
        lambda r: [randn(r, 2, 6, 13, 7) - 0.3, 1.0 + 0.5 * randn(r, 6), randn(r, 6)],
    ),
    OpCase(
        "interpolate",
        "interpolate-bilinear-nhwc",
        lambda x: ops.interpolate_forward(x, (16, 5), mode="bilinear", channels_last=True),
        ops.interpolate_backward,
        lambda r: [randn(r, 2, 7, 13, 3)],
    ),
    OpCase(
        "interpolate",
        "interpolate-nearest-nchw",
        lambda x: ops.interpolate_forward(x, scale_factor=(2.5, 0.5)),
        ops.interpolate_backward,
        lambda r: [randn(r, 1, 3, 9, 7)],
    ),
    OpCase(
        "cross_entropy",
        "cross_entropy-pixels-ignore",
        lambda z, t: ops.cross_entropy_forward(z, t, 0.1, 255),
        ops.cross_entropy_backward,
        lambda r: [randn(r, 2, 5, 3, 4), np.where(r.random((2, 3, 4)) < 0.3, 255, r.integers(0, 5, (2, 3, 4)))],
    ),
    OpCase("token_mean", "token_mean", ops.token_mean_forward, ops.token_mean_backward, lambda r: [randn(r, 2, 13, 7)]),
]


def test_op_cases_cover_every_registered_op() -> None:
    """A new op family fails here until it has a GPU case."""
    assert {c.op for c in OP_CASES} == set(ops.registered_ops())


def _run_op(case: OpCase, inputs: list[Any], xp: Any, put: Callable[[np.ndarray], Any]) -> tuple[Any, list[Any]]:
    """Forward, then backward of a fixed random dout; random ops draw from CounterRng(xp, 3)."""
    args = [put(a) for a in inputs]
    out, cache = case.forward(*args, CounterRng(xp, 3)) if case.random else case.forward(*args)
    dout = np.random.default_rng(11).standard_normal(np.shape(out)).astype(out.dtype)
    grads = case.backward(put(dout), cache)
    return out, list(grads) if isinstance(grads, tuple) else [grads]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("case", OP_CASES, ids=lambda c: c.id)
def test_op_matches_cpu(case: OpCase, dtype: Any, target: Target) -> None:
    """Forward and every gradient on the target equal the NumPy results (random ops: the same masks)."""
    inputs = [a.astype(dtype) if a.dtype.kind == "f" else a for a in case.make(np.random.default_rng(7))]
    out, grads = _run_op(case, inputs, np, np.asarray)
    dev_out, dev_grads = _run_op(case, inputs, target.xp, target.put)
    assert target.owns(dev_out), f"{case.id}: the output left the target"
    assert np.dtype(dev_out.dtype) == np.dtype(dtype), f"{case.id}: output dtype {dev_out.dtype}"
    assert_close(dev_out, out, _tol(dtype, GPU_F64_TOL, F32_TOL), f"{case.id} forward")
    assert len(dev_grads) == len(grads) >= 1
    for i, (g, h) in enumerate(zip(dev_grads, grads, strict=True)):
        assert h is not None and g is not None, f"{case.id}: gradient {i} missing"
        assert target.owns(g) and np.dtype(g.dtype) == np.dtype(dtype), f"{case.id}: gradient {i} {type(g)} {g.dtype}"
        assert_close(g, h, _tol(dtype, GPU_F64_TOL, F32_GRAD_TOL), f"{case.id} gradient {i}")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_counter_rng_on_target_is_the_host_stream(dtype: Any, target: Target) -> None:
    """The device generator (CuPy: its fused kernel and its array-op reference) draws the host's numbers exactly."""
    host = CounterRng(np, 12345)
    expected = [host.random((300, 7), dtype=dtype), host.random(1001, dtype=dtype)]
    for fused in (True, False):
        dev = CounterRng(target.xp, 12345, fused=fused)
        for e in expected:
            got = dev.random(e.shape, dtype=dtype)
            assert target.owns(got) and got.dtype == e.dtype
            np.testing.assert_array_equal(backend.to_numpy(got), e)


def test_augmented_batches_match_cpu(target: Target) -> None:
    """Crops, flips, TrivialAugment and cutmix on the target give the CPU's batches bit for bit (uint8 gathers,
    and float32 blends as separate multiplies and adds, each rounded as on the host)."""
    from pvt_np.data import Augment, BatchLoader

    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (48, 12, 10, 3), dtype=np.uint8)
    labels = rng.integers(0, 5, 48)
    aug = Augment(crop_padding=3, hflip=True, cutmix_alpha=1.0, trivial=True)
    loaders = [BatchLoader(images, labels, 16, seed=5, augment=aug, num_classes=5, device=d)
               for d in ("cpu", target.device)]  # fmt: skip
    for k in range(len(loaders[0])):
        (x, y), (tx, ty) = (loader.batch(1, k) for loader in loaders)
        assert target.owns(tx) and target.owns(ty)
        np.testing.assert_array_equal(backend.to_numpy(tx), x, err_msg=f"batch {k} images")
        np.testing.assert_array_equal(backend.to_numpy(ty), y, err_msg=f"batch {k} targets")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_resize_bilinear_matches_cpu(dtype: Any, target: Target) -> None:
    """The low-resolution epochs' resize (two matrix products) on the target against the CPU's."""
    from pvt_np.data import resize_bilinear

    x = np.random.default_rng(4).standard_normal((5, 3, 17, 23)).astype(dtype)
    for size in ((12, 17), (24, 30)):
        y = resize_bilinear(target.put(x), size)
        assert target.owns(y) and y.dtype == dtype
        assert_close(y, resize_bilinear(x, size), 1e-6 if dtype == np.float32 else 1e-13, f"resize to {size}")


def test_translate_matches_cpu(target: Target) -> None:
    """The shifted test views of --tta flip-shift (a fill and a slice copy) on the target: the CPU's, exactly."""
    from pvt_np.data import translate

    x = np.random.default_rng(5).standard_normal((4, 3, 9, 7)).astype(np.float32)
    fill = np.array([-1.5, 0.5, 2.0], np.float32).reshape(1, 3, 1, 1)
    for dy, dx in ((2, 0), (-2, 0), (0, 2), (0, -2), (1, -3)):
        y = translate(target.put(x), dy, dx, target.put(fill))
        assert target.owns(y)
        np.testing.assert_array_equal(backend.to_numpy(y), translate(x, dy, dx, fill), err_msg=f"shift {dy}, {dx}")


def test_manual_seed_reuses_the_device_generator(target: Target) -> None:
    """On the target manual_seed re-keys (GPU: the same CounterRng object) and restarts the same masks."""
    x = target.put(np.ones((64, 50), dtype=np.float32))
    pvt_np.manual_seed(5)
    first = backend.get_rng(target.xp)
    y1, _ = ops.dropout_forward(x, 0.5)
    pvt_np.manual_seed(6)
    y_other, _ = ops.dropout_forward(x, 0.5)
    pvt_np.manual_seed(5)
    y2, _ = ops.dropout_forward(x, 0.5)
    np.testing.assert_array_equal(backend.to_numpy(y1), backend.to_numpy(y2))
    assert not np.array_equal(backend.to_numpy(y1), backend.to_numpy(y_other))
    assert backend.get_rng(target.xp) is first


# -- the whole model ------------------------------------------------------------------------
def _model_run(name: str, dtype: Any, device: str, put: Callable[[np.ndarray], Any]) -> dict[str, np.ndarray]:
    """Forward and backward of a random-weight model: the logits, the input gradient and every parameter gradient."""
    model = pvt_np.create_model(name, num_classes=10, dtype=dtype, seed=3, device=device)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 64, 48)).astype(dtype)
    dout = rng.standard_normal((2, 10)).astype(dtype)
    logits = model(put(x))
    dx = model.backward(put(dout))
    result = {"logits": backend.to_numpy(logits), "input": backend.to_numpy(dx)}
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: no gradient in {pname}"
        assert backend.device_of(p.grad) == device, f"{name}: {pname}'s gradient is not on {device}"
        result[pname] = backend.to_numpy(p.grad)
    return result


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("name", ["pvt_v2_b0", "pvt_v2_b2_li"])
def test_model_matches_cpu(name: str, dtype: Any, target: Target) -> None:
    """b0 and b2_li (64x48, batch 2, train mode): logits, input gradient and every parameter gradient."""
    host = _model_run(name, dtype, "cpu", np.asarray)
    dev = _model_run(name, dtype, target.device, target.put)
    assert list(dev) == list(host) and len(host) > 100
    for key, value in host.items():
        tol = _tol(dtype, GPU_F64_MODEL_TOL, F32_MODEL_OUT_TOL if key == "logits" else F32_MODEL_GRAD_TOL)
        assert_close(dev[key], value, tol, f"{name} {key}")


# -- two trainer steps ------------------------------------------------------------------------
def _two_steps(dtype: Any, device: str, put: Callable[[np.ndarray], Any], xp: Any) -> dict[str, Any]:
    """Two train_steps (drop-path 0.1, label smoothing, clipping) with CounterRng masks on both devices.

    float64 steps with AdamW. float32 steps with SGD and momentum, whose update is linear in the
    gradient: AdamW divides each element's step by that element's own gradient scale, so where a
    gradient is near zero its float32 rounding (~1e-6 of the tensor's largest gradient, in another
    summation order on the GPU) moves the weight by a sizeable fraction of lr (measured on an H100:
    9e-5 of fc1's largest weight after two steps). test_adamw_step_matches_cpu compares AdamW's
    kernel itself on equal gradients.
    """
    model = pvt_np.create_model(
        "pvt_v2_b0", num_classes=10, cifar=True, drop_path_rate=0.1, dtype=dtype, seed=1, device=device
    )
    criterion = CrossEntropyLoss(label_smoothing=0.1)
    groups = param_groups_weight_decay(model, 0.05)
    optimizer = AdamW(groups, lr=1e-3) if dtype == np.float64 else SGD(groups, lr=0.1, momentum=0.9)
    rng = np.random.default_rng(8)
    backend._RNGS[xp.__name__] = CounterRng(xp, 21)  # dropout and drop-path draw the same stream on both devices
    losses = []
    try:
        for _ in range(2):
            x = rng.standard_normal((8, 3, 32, 32)).astype(dtype)
            y = rng.integers(0, 10, 8)
            loss, logits = train_step(model, criterion, optimizer, put(x), put(y), clip_grad=1.0)
            assert backend.device_of(logits) == device
            losses.append(float(loss))
    finally:
        del backend._RNGS[xp.__name__]  # create_model's initialisers need NumPy's own generator back
    return {"losses": np.array(losses), "state": {k: backend.to_numpy(v) for k, v in model.state_dict().items()}}


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_two_trainer_steps_match_cpu(dtype: Any, target: Target, monkeypatch: pytest.MonkeyPatch) -> None:
    """Per-step losses and the weights after two steps equal the CPU run's (same batches, same masks)."""
    monkeypatch.setattr(backend, "_RNGS", {})
    host = _two_steps(dtype, "cpu", np.asarray, np)
    dev = _two_steps(dtype, target.device, target.put, target.xp)
    loss_tol = _tol(dtype, GPU_F64_MODEL_TOL, F32_LOSS_TOL)
    errors = np.abs(dev["losses"] - host["losses"]) / np.abs(host["losses"])
    assert errors.max() <= loss_tol, f"per-step loss relative errors {errors}"
    tol = _tol(dtype, GPU_F64_MODEL_TOL, F32_WEIGHT_TOL)
    _assert_states_close(dev["state"], host["state"], tol, "weights", adam_float32=False)  # float32 steps with SGD


def _assert_states_close(
    actual: dict[str, Any], expected: dict[str, Any], tol: float, what: str, adam_float32: bool = True
) -> None:
    """Every tensor within tol; after AdamW in float32 the key half of each attention kv.bias is left out.

    That half has a zero gradient up to rounding (softmax ignores a constant shift of the
    scores), and Adam's normalised step magnifies the rounding to +-lr in float32 (see
    test_training), so only the value half is compared there.
    """
    assert sorted(actual) == sorted(expected)
    for key, value in expected.items():
        got = backend.to_numpy(actual[key])
        if adam_float32 and value.dtype == np.float32 and key.endswith("attn.kv.bias"):
            half = value.shape[0] // 2
            assert_close(got[half:], value[half:], tol, f"{what}: {key} (value half)")
        else:
            assert_close(got, value, tol, f"{what}: {key}")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.3, 0.9)], ids=["lerp-from-m", "lerp-from-g"])
@pytest.mark.parametrize("capturable", [False, True], ids=["eager", "capturable"])
def test_adamw_step_matches_cpu(dtype: Any, betas: tuple[float, float], capturable: bool, target: Target) -> None:
    """Three AdamW steps on equal gradients (decay on and off): the target's weights and moments equal the CPU's.

    Every operation of the update is correctly rounded in IEEE arithmetic on both sides and the GPU
    kernel is compiled without fused multiply-adds, so the allowed error is a few units in the last place.
    Capturable: the GPU's kernel reading its scalars from device memory against the CPU's array expressions.
    """

    def run(put: Callable[[np.ndarray], Any]) -> list[np.ndarray]:
        rng = np.random.default_rng(3)
        params = [Parameter(put(randn(rng, 7, 5).astype(dtype))), Parameter(put(randn(rng, 300).astype(dtype)))]
        opt = AdamW([{"params": params[:1], "weight_decay": 0.05}, {"params": params[1:], "weight_decay": 0.0}],
                    lr=3e-3, betas=betas, capturable=capturable)  # fmt: skip
        for _ in range(3):
            for p in params:
                p.grad = put((randn(rng, *p.data.shape) * 1e-3).astype(dtype))
            opt.step()
        arrays = [p.data for p in params] + [opt.state[p][k] for p in params for k in ("exp_avg", "exp_avg_sq")]
        return [backend.to_numpy(a) for a in arrays]

    ulps = 4 * np.finfo(dtype).eps
    for i, (got, want) in enumerate(zip(run(target.put), run(np.asarray), strict=True)):
        assert_close(got, want, ulps, f"AdamW array {i}")


# -- the CLI and checkpoints ---------------------------------------------------------------------
def test_cli_train_one_epoch_then_evaluate_on_cpu(target: Target, tmp_path: Path) -> None:
    """`pvt-np train --device <target>` for one epoch on an image folder; its checkpoint scores the same on the CPU."""
    data = write_image_folder(tmp_path / "data")
    run = tmp_path / "run"
    proc = run_pvt_np(train_args(data, run, "--device", target.device, "--no-progress", epochs=1))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1]
    assert np.isfinite(rows[0]["train_loss"]) and np.isfinite(rows[0]["test_loss"])
    proc = run_pvt_np(["evaluate", str(run / "last.npz"), "--device", "cpu"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    loss = float(re.search(r"loss ([0-9.]+)\s+accuracy", proc.stdout).group(1))
    assert abs(loss - rows[0]["test_loss"]) <= 1e-3 * max(1.0, rows[0]["test_loss"]), proc.stdout


@pytest.mark.parametrize("direction", ["target-to-cpu", "cpu-to-target"])
def test_checkpoint_moves_between_devices(direction: str, target: Target, tmp_path: Path) -> None:
    """Model and AdamW state saved on one device load on the other: the same logits and the same next step."""

    def build(device: str) -> tuple[Any, AdamW]:
        model = pvt_np.create_model("pvt_v2_b0", num_classes=10, cifar=True, seed=2, device=device)
        return model, AdamW(param_groups_weight_decay(model, 0.05), lr=1e-3)

    src_device, dst_device = (target.device, "cpu") if direction == "target-to-cpu" else ("cpu", target.device)
    src_put = target.put if src_device == target.device else np.asarray
    dst_put = target.put if dst_device == target.device else np.asarray
    rng = np.random.default_rng(9)
    x = rng.standard_normal((4, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, 4)
    src, src_opt = build(src_device)
    train_step(src, CrossEntropyLoss(), src_opt, src_put(x), src_put(y))  # optimizer state exists
    save_checkpoint(tmp_path / "ckpt.npz", {"model": src.state_dict(), "optimizer": src_opt.state_dict()})
    ckpt = load_checkpoint(tmp_path / "ckpt.npz")
    dst, dst_opt = build(dst_device)
    dst.load_state_dict(ckpt["model"])
    dst_opt.load_state_dict(ckpt["optimizer"])
    assert all(backend.device_of(p.data) == dst_device for p in dst.parameters())
    src.eval()
    dst.eval()
    assert_close(dst(dst_put(x)), src(src_put(x)), F32_MODEL_OUT_TOL, "logits of the loaded model")
    src.train()
    dst.train()
    for model, opt, put in ((src, src_opt, src_put), (dst, dst_opt, dst_put)):
        train_step(model, CrossEntropyLoss(), opt, put(x), put(y))
    src_state = {k: backend.to_numpy(v) for k, v in src.state_dict().items()}
    _assert_states_close(dst.state_dict(), src_state, F32_WEIGHT_TOL, "after one more step")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_cuda_graph_step_equals_eager_step(dtype: Any, target: Target) -> None:
    """The training step recorded as CUDA graphs (pvt_np.training.cuda_graph) against the same step run eagerly
    on the same device: eight steps through two batch shapes and two partial batches (so four graphs, each
    recorded at its shape's second batch), with dropout, drop path, clipping and the EMA. The same kernels in the
    same order: the losses, lrs and weights agree to float64's 1e-12 and float32's rounding."""
    from test_capturable_step import SEED, SHAPES, _batches, _optimizer, _parts

    from pvt_np.training.capturable import CapturableStep
    from pvt_np.training.cuda_graph import StaticStep

    runs = []
    try:
        for capture in (False, True):
            model, criterion, _ = _parts(dtype)
            model.to(device=target.device)
            ema = model.state_dict()
            opt, sched = _optimizer(model, capturable=True)
            step = CapturableStep(model, criterion, opt, sched, steps_per_epoch=len(SHAPES), log_every=len(SHAPES),
                                  clip_grad=1.0, ema=ema, ema_decay=0.9)  # fmt: skip
            step.begin_epoch(SEED, 0, 0)
            run = StaticStep(step, capture=capture)
            lrs = []
            for x, y in _batches(dtype):
                run(target.put(x), target.put(y))
                lrs.append(float(opt.param_groups[0]["lr"]))
            assert run.capture is capture and len(run.shapes()) == 4
            losses, _ = step.read_tally(len(SHAPES))
            weights = {k: backend.to_numpy(v) for k, v in model.state_dict().items()}
            runs.append((losses, lrs, weights))
    finally:
        backend._RNGS.pop(target.xp.__name__, None)
        backend.manual_seed(0)
    (eager_losses, eager_lrs, eager_weights), (graph_losses, graph_lrs, graph_weights) = runs
    assert graph_lrs == eager_lrs
    assert_close(graph_losses, eager_losses, _tol(dtype, GPU_F64_TOL, F32_LOSS_TOL), "losses")
    _assert_states_close(graph_weights, eager_weights, _tol(dtype, GPU_F64_MODEL_TOL, F32_WEIGHT_TOL), "weights")


def test_bench_graph_frameworks_run_on_a_tiny_config(target: Target, monkeypatch: pytest.MonkeyPatch) -> None:
    """`pvt-np bench`'s graph rows on the GPU (the tiny config of test_bench_frameworks, in this process): pvt_np_graph
    times a recorded CUDA graph and its first loss is the eager row's; torch_graph records torch's step the
    documented way and starts from the loss torch eager starts from; pvt_np and torch agree to float32 rounding."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device: the torch rows need one")
    from test_bench_frameworks import TINY

    from pvt_np import bench_worker
    from pvt_np.ops import parallel

    monkeypatch.setitem(bench_worker.CONFIGS, "tiny", TINY)
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32  # the torch rows turn TF32 off
    results = {}
    try:
        for framework in ("pvt_np", "pvt_np_graph", "torch", "torch_graph"):
            backend.manual_seed(0)
            threads = parallel.get_num_threads() if framework.startswith("pvt_np") else torch.get_num_threads()
            results[framework] = bench_worker.worker(framework, "tiny", target.device, threads, repeats=2, warmup=1)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
        backend._RNGS.pop(target.xp.__name__, None)
        backend.manual_seed(0)
    assert results["pvt_np_graph"]["cuda_graph"] is True and results["torch_graph"]["cuda_graph"] is True
    for framework, r in results.items():
        assert r["train_step_ms"] > 0 and r["peak_memory_mb"] > 0 and r["pool_held_mb"] > 0, framework
    loss = {framework: r["first_loss"] for framework, r in results.items()}
    assert loss["pvt_np_graph"] == pytest.approx(loss["pvt_np"], rel=F32_LOSS_TOL)
    assert loss["torch_graph"] == pytest.approx(loss["torch"], rel=F32_LOSS_TOL)
    assert loss["torch"] == pytest.approx(loss["pvt_np"], rel=F32_LOSS_TOL)
