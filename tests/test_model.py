"""PVT v2 model tests: whole model and every module against timm, gradient checks, structure, errors, modes.

Weights come from a timm model whose parameters were given generic seeded values
(model_helpers.randomize_) and are copied by name into ours, so every comparison
runs both implementations on identical weights, inputs and upstream gradients.
Tolerances are relative to each tensor's largest magnitude.
"""

from __future__ import annotations

import functools
import itertools
import math
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

from model_helpers import (  # noqa: E402
    CIFAR_PATCH_SIZE,
    CIFAR_SR_RATIOS,
    CIFAR_STRIDE,
    assert_all_close,
    compare,
    numpy_state,
    randomize_,
    rel_err,
    run_ours,
    run_torch,
    timm_pvt,
)
from timm.models import pvt_v2 as tpvt  # noqa: E402
from torch import nn  # noqa: E402

import pvt_np  # noqa: E402
from pvt_np.models import (  # noqa: E402
    CIFAR_OVERRIDES,
    Attention,
    Block,
    MlpWithDepthwiseConv,
    OverlapPatchEmbed,
    PyramidVisionTransformerStage,
    PyramidVisionTransformerV2,
    pyramid_sizes,
)
from pvt_np.nn import Conv2d, LayerNorm, Linear  # noqa: E402

# Tolerances, relative to each tensor's largest magnitude. ----------------------------------
# float64 against timm in float64: two orderings of the same sums. Measured (every default case and
# b2_li's slow ones): at most 1.6e-14 (b2_li's gradients), 4e-16 to 5e-15 per module.
F64_TOL = 1e-12
F32_LOGIT_TOL = 1e-5  # float32 logits against the float64 reference (measured: at most 6.0e-7)
F32_GRAD_TOL = 1e-2  # float32 gradients: ReLU/GELU kinks and LayerNorm cancellation amplify rounding
GRADCHECK_TOL = 1e-6  # central differences, h = 1e-6, float64

ODD = (97, 61)  # odd and non-square: every stride-2/4 conv and every SR conv floors

# --------------------------------------------------------------------------------------------
# 1. The whole model against timm
# --------------------------------------------------------------------------------------------
# (name, cifar, (H, W), batch, train). Per model the four non-CIFAR float64 cases form a
# pairwise covering array of size x batch x mode (every pair of levels occurs once), half the
# full product; float32 is checked where it adds something (the SRA variant at 224, and the
# linear variant, ReLU included, in train mode). The rest of the product is marked slow.
_F64 = np.dtype(np.float64)
_F32 = np.dtype(np.float32)
_DEFAULT_CASES = [
    (("pvt_v2_b0", False, (224, 224), 2, False), _F64),
    (("pvt_v2_b0", False, (224, 224), 2, False), _F32),
    (("pvt_v2_b0", False, (224, 224), 1, True), _F64),
    (("pvt_v2_b0", False, ODD, 1, False), _F64),
    (("pvt_v2_b0", False, ODD, 2, True), _F64),
    (("pvt_v2_b0", True, (32, 32), 2, True), _F64),
    (("pvt_v2_b2_li", False, (224, 224), 2, False), _F64),
    (("pvt_v2_b2_li", False, (224, 224), 1, True), _F64),
    (("pvt_v2_b2_li", False, (224, 224), 1, True), _F32),
    (("pvt_v2_b2_li", False, ODD, 2, True), _F64),
    (("pvt_v2_b2_li", False, ODD, 2, True), _F32),
    (("pvt_v2_b2_li", False, ODD, 1, False), _F64),
    (("pvt_v2_b2_li", True, (32, 32), 2, False), _F64),
]
_SLOW_CASES = [
    ((name, False, size, batch, train), dt)
    for name, size, batch, train, dt in itertools.product(
        ("pvt_v2_b0", "pvt_v2_b2_li"), ((224, 224), ODD), (1, 2), (False, True), (_F64, _F32)
    )
    if ((name, False, size, batch, train), dt) not in _DEFAULT_CASES
]


def _case_id(case: tuple, dtype: np.dtype) -> str:
    name, cifar, (h, w), batch, train = case
    return f"{name}{'-cifar' if cifar else ''}-{h}x{w}-B{batch}-{'train' if train else 'eval'}-{dtype.name}"


@functools.lru_cache(maxsize=1)  # cases are ordered by model, so each model is built once
def _timm_model(name: str, cifar: bool) -> tuple[nn.Module, dict[str, np.ndarray]]:
    tm = randomize_(timm_pvt(name, cifar=cifar), seed=11)
    return tm, numpy_state(tm)


@functools.lru_cache(maxsize=1)  # the float64 and float32 runs of one case share it
def _timm_reference(case: tuple) -> tuple[dict, np.ndarray, np.ndarray, dict]:
    """(weights, input, upstream gradient, timm's float64 logits and gradients) for a case."""
    name, cifar, (h, w), batch, train = case
    tm, state = _timm_model(name, cifar)
    rng = np.random.default_rng([h, w, batch])
    x = rng.standard_normal((batch, 3, h, w))
    dlogits = rng.standard_normal((batch, 1000))  # random, so every logit's gradient path is weighted
    return state, x, dlogits, run_torch(tm.train(train), [x], dlogits)


def _check_against_timm(case: tuple, dtype: np.dtype) -> None:
    name, cifar, _size, _batch, train = case
    state, x, dlogits, ref = _timm_reference(case)
    model = pvt_np.create_model(name, cifar=cifar, dtype=dtype).load_state_dict(state).train(train)
    errors = compare(run_ours(model, [x], dlogits), ref)
    what = _case_id(case, dtype)
    logit_tol, grad_tol = (F64_TOL, F64_TOL) if dtype == _F64 else (F32_LOGIT_TOL, F32_GRAD_TOL)
    assert_all_close({"logits": errors.pop("out")}, logit_tol, f"{what} logits")
    assert_all_close(errors, grad_tol, f"{what} input and parameter gradients")


@pytest.mark.parametrize(("case", "dtype"), _DEFAULT_CASES, ids=[_case_id(*c) for c in _DEFAULT_CASES])
def test_model_matches_timm(case: tuple, dtype: np.dtype) -> None:
    _check_against_timm(case, dtype)


@pytest.mark.slow
@pytest.mark.parametrize(("case", "dtype"), _SLOW_CASES, ids=[_case_id(*c) for c in _SLOW_CASES])
def test_model_matches_timm_full_product(case: tuple, dtype: np.dtype) -> None:
    _check_against_timm(case, dtype)


# --------------------------------------------------------------------------------------------
# Each module against timm's (float64), so a mismatch is located without the whole model.
# --------------------------------------------------------------------------------------------
DIM, HEADS, FEAT = 8, 2, (5, 3)
ATTENTION_MODES = {
    "full": {"sr_ratio": 1},
    "sra2-floors": {"sr_ratio": 2},  # 5x3 -> 2x1 keys
    "linear-pool2": {"linear_attn": True, "pool_size": 2},  # pool smaller than the map
    "linear-pool7": {"linear_attn": True, "pool_size": 7},  # pool larger than the map
}


def _timm_attention(sr_ratio: int = 1, linear_attn: bool = False, pool_size: int = 7) -> nn.Module:
    tm = tpvt.Attention(DIM, num_heads=HEADS, sr_ratio=sr_ratio, linear_attn=linear_attn, qkv_bias=True)
    if linear_attn:
        tm.pool = nn.AdaptiveAvgPool2d(pool_size)  # timm hard-codes 7
    return randomize_(tm.double(), seed=3)


def _compare_module(ours, theirs, x: np.ndarray, dout: np.ndarray, *args, what: str) -> None:
    ours.load_state_dict(numpy_state(theirs))
    errors = compare(run_ours(ours, [x], dout, *args), run_torch(theirs, [x], dout, *args))
    assert_all_close(errors, F64_TOL, what)


@pytest.mark.parametrize("mode", ATTENTION_MODES)
def test_attention_matches_timm(mode: str, rng: np.random.Generator) -> None:
    kw = ATTENTION_MODES[mode]
    ours = Attention(DIM, HEADS, qkv_bias=True, dtype=np.float64, **kw)
    x = rng.standard_normal((2, FEAT[0] * FEAT[1], DIM))
    dout = rng.standard_normal(x.shape)
    _compare_module(ours, _timm_attention(**kw), x, dout, FEAT, what=f"Attention {mode}")


@pytest.mark.parametrize("extra_relu", [False, True])
def test_mlp_matches_timm(extra_relu: bool, rng: np.random.Generator) -> None:
    ours = MlpWithDepthwiseConv(6, 12, extra_relu=extra_relu, dtype=np.float64)
    theirs = randomize_(tpvt.MlpWithDepthwiseConv(6, 12, extra_relu=extra_relu).double(), seed=4)
    x = rng.standard_normal((2, FEAT[0] * FEAT[1], 6))
    _compare_module(ours, theirs, x, rng.standard_normal(x.shape), FEAT, what=f"Mlp extra_relu={extra_relu}")


@pytest.mark.parametrize("linear", [False, True])
def test_block_matches_timm(linear: bool, rng: np.random.Generator) -> None:
    kw = {"mlp_ratio": 2.0, "sr_ratio": 2, "linear_attn": linear, "qkv_bias": True}
    ours = Block(DIM, HEADS, pool_size=7, dtype=np.float64, **kw)
    theirs = randomize_(tpvt.Block(DIM, HEADS, **kw).double(), seed=5)
    x = rng.standard_normal((2, FEAT[0] * FEAT[1], DIM))
    _compare_module(ours, theirs, x, rng.standard_normal(x.shape), FEAT, what=f"Block linear={linear}")


def _compare_channels_last(ours, theirs, x_nhwc: np.ndarray, rng: np.random.Generator, what: str) -> None:
    """ours takes NHWC; timm's module takes NCHW (a stage also returns NCHW, a patch embed NHWC)."""
    ours.load_state_dict(numpy_state(theirs))
    out = ours(x_nhwc)
    dout = rng.standard_normal(out.shape)
    mine = run_ours(ours, [x_nhwc], dout)
    nchw_out = isinstance(theirs, tpvt.PyramidVisionTransformerStage)
    ref = run_torch(theirs, [x_nhwc.transpose(0, 3, 1, 2)], dout.transpose(0, 3, 1, 2) if nchw_out else dout)
    if nchw_out:
        ref["out"] = ref["out"].transpose(0, 2, 3, 1)
    ref["input"] = ref["input"].transpose(0, 2, 3, 1)
    assert_all_close(compare(mine, ref), F64_TOL, what)


def test_patch_embed_matches_timm(rng: np.random.Generator) -> None:
    stem = OverlapPatchEmbed(7, 4, 3, 8, dtype=np.float64)
    x = rng.standard_normal((2, 3, 11, 9))
    out = stem(x)
    assert out.shape == (2, 3, 3, 8)
    _compare_module(
        stem,
        randomize_(tpvt.OverlapPatchEmbed(7, 4, 3, 8).double(), seed=6),
        x,
        rng.standard_normal(out.shape),
        what="stem OverlapPatchEmbed",
    )
    down = OverlapPatchEmbed(3, 2, 4, 8, channels_last_input=True, dtype=np.float64)
    theirs = randomize_(tpvt.OverlapPatchEmbed(3, 2, 4, 8).double(), seed=7)
    _compare_channels_last(down, theirs, rng.standard_normal((2, 7, 5, 4)), rng, "channels-last OverlapPatchEmbed")


@pytest.mark.parametrize("linear", [False, True])
def test_stage_matches_timm(linear: bool, rng: np.random.Generator) -> None:
    kw = {"depth": 2, "num_heads": HEADS, "sr_ratio": 2, "linear_attn": linear, "mlp_ratio": 2.0}
    ours = PyramidVisionTransformerStage(4, DIM, dtype=np.float64, **kw)
    theirs = randomize_(tpvt.PyramidVisionTransformerStage(4, DIM, **kw).double(), seed=8)
    _compare_channels_last(ours, theirs, rng.standard_normal((2, 7, 5, 4)), rng, f"Stage linear={linear}")


# --------------------------------------------------------------------------------------------
# 2. Gradient checks (float64 central differences)
# --------------------------------------------------------------------------------------------
def randomize_module_(module, rng: np.random.Generator) -> None:
    """Generic values for a pvt_np module (biases and LayerNorm affines away from 0 and 1)."""
    for name, p in module.named_parameters():
        if name.endswith("weight") and p.data.ndim >= 2:
            fan_in = int(np.prod(p.shape[1:]))
            p.data = rng.standard_normal(p.shape).astype(p.dtype) / math.sqrt(fan_in)
        elif name.endswith("weight"):  # LayerNorm
            p.data = (1.0 + 0.2 * rng.standard_normal(p.shape)).astype(p.dtype)
        else:
            p.data = (0.1 * rng.standard_normal(p.shape)).astype(p.dtype)


def _gradcheck(
    module, x: np.ndarray, what: str, args: tuple = (), num_checks: int | None = None, seed: int = 0
) -> None:
    errors = pvt_np.gradcheck(module, x, args=args, num_checks=num_checks, seed=seed)
    expected = ["input"] + [name for name, _ in module.named_parameters()]
    assert sorted(errors) == sorted(expected), f"{what}: gradcheck covered {sorted(errors)}, expected {expected}"
    assert_all_close(errors, GRADCHECK_TOL, f"gradcheck {what}")


@pytest.mark.parametrize("mode", ATTENTION_MODES)
def test_gradcheck_attention(mode: str, rng: np.random.Generator) -> None:
    attn = Attention(DIM, HEADS, dtype=np.float64, **ATTENTION_MODES[mode])
    randomize_module_(attn, rng)
    _gradcheck(attn, rng.standard_normal((2, FEAT[0] * FEAT[1], DIM)), f"Attention {mode}", args=(FEAT,))


def test_gradcheck_attention_with_dropout_in_train_mode(rng: np.random.Generator) -> None:
    """Attention- and projection-dropout masks are redrawn identically on every forward (gradcheck reseeds)."""
    attn = Attention(DIM, HEADS, sr_ratio=2, attn_drop=0.3, proj_drop=0.2, dtype=np.float64).train()
    randomize_module_(attn, rng)
    _gradcheck(attn, rng.standard_normal((2, 15, DIM)), "Attention with dropout", args=(FEAT,))


@pytest.mark.parametrize("extra_relu", [False, True])
def test_gradcheck_mlp(extra_relu: bool, rng: np.random.Generator) -> None:
    mlp = MlpWithDepthwiseConv(6, 12, extra_relu=extra_relu, dtype=np.float64)
    randomize_module_(mlp, rng)
    _gradcheck(mlp, rng.standard_normal((2, 15, 6)), f"Mlp extra_relu={extra_relu}", args=(FEAT,))


@pytest.mark.parametrize("linear", [False, True])
def test_gradcheck_block_with_drop_path(linear: bool, rng: np.random.Generator) -> None:
    blk = Block(DIM, HEADS, mlp_ratio=2.0, sr_ratio=2, linear_attn=linear, drop_path=0.5, pool_size=2, dtype=np.float64)
    blk.train()
    randomize_module_(blk, rng)
    x = rng.standard_normal((4, 15, DIM))

    # gradcheck reseeds with `seed` before every forward; take a seed whose masks keep some
    # samples and drop others in both branches, or the check would not exercise them. The
    # block's only draws are its two per-sample masks (drop_path1, then drop_path2).
    def mixed(seed: int) -> bool:
        pvt_np.manual_seed(seed)
        masks = [pvt_np.ops.drop_path_forward(np.ones((len(x), 1, 1)), 0.5)[0] for _ in range(2)]
        return all(set(np.ravel(m).tolist()) == {0.0, 2.0} for m in masks)

    seed = next(s for s in range(100) if mixed(s))
    _gradcheck(blk, x, f"Block linear={linear} drop_path=0.5", args=(FEAT,), num_checks=24, seed=seed)


def test_gradcheck_patch_embed(rng: np.random.Generator) -> None:
    stem = OverlapPatchEmbed(7, 4, 3, 6, dtype=np.float64)
    randomize_module_(stem, rng)
    _gradcheck(stem, rng.standard_normal((2, 3, 11, 9)), "stem OverlapPatchEmbed (NCHW)", num_checks=40)
    down = OverlapPatchEmbed(3, 2, 4, 6, channels_last_input=True, dtype=np.float64)
    randomize_module_(down, rng)
    _gradcheck(down, rng.standard_normal((2, 7, 5, 4)), "OverlapPatchEmbed (NHWC)", num_checks=40)


def test_gradcheck_stage(rng: np.random.Generator) -> None:
    stage = PyramidVisionTransformerStage(4, DIM, 2, num_heads=HEADS, sr_ratio=2, mlp_ratio=2.0, dtype=np.float64)
    randomize_module_(stage, rng)
    _gradcheck(stage, rng.standard_normal((2, 7, 5, 4)), "PyramidVisionTransformerStage", num_checks=12)


TINY = {
    "num_classes": 5,
    "depths": (1, 1, 1, 1),
    "embed_dims": (4, 8, 8, 8),
    "num_heads": (1, 2, 2, 2),
    "mlp_ratios": (2, 2, 2, 2),
}


@pytest.mark.parametrize(
    ("linear", "train_drops"),
    [(False, False), (True, False), (False, True)],
    ids=["sra", "linear-pool2", "sra-train-all-drops"],
)
def test_gradcheck_tiny_model(linear: bool, train_drops: bool, rng: np.random.Generator) -> None:
    """Input and every parameter of a whole (tiny) model, 3x3/2 stem, sr_ratios (2, 2, 1, 1), pool_size 2."""
    drops = {"drop_rate": 0.3, "drop_path_rate": 0.3, "attn_drop_rate": 0.2, "proj_drop_rate": 0.1}
    model = pvt_np.create_model(
        "pvt_v2_b0",
        dtype=np.float64,
        cifar=True,
        sr_ratios=(2, 2, 1, 1),
        linear=linear,
        pool_size=2,
        **TINY,
        **(drops if train_drops else {}),
    )
    model.train(train_drops)
    randomize_module_(model, rng)
    assert model.feature_sizes(17, 15) == [(9, 8), (5, 4), (3, 2), (2, 1)]  # >= 2 tokens: q matters everywhere
    _gradcheck(model, rng.standard_normal((2, 3, 17, 15)), f"tiny model linear={linear}", num_checks=4)


# --------------------------------------------------------------------------------------------
# 3. forward_pyramid / backward_pyramid against timm's forward_intermediates
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("size", "used"),
    [((224, 224), (0, 1, 2, 3)), (ODD, (0, 2))],
    ids=["224-all-maps", "97x61-maps-0-2"],
)
def test_pyramid_matches_timm(size: tuple[int, int], used: tuple[int, ...], rng: np.random.Generator) -> None:
    tm = randomize_(timm_pvt("pvt_v2_b0"), seed=12).eval()
    model = pvt_np.create_model("pvt_v2_b0", dtype=np.float64).load_state_dict(numpy_state(tm)).eval()
    x = rng.standard_normal((1, 3, *size))
    maps = model.forward_pyramid(x)
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    ref_maps = tm.forward_intermediates(xt, intermediates_only=True)
    assert len(maps) == len(ref_maps) == 4
    if size == (224, 224):
        for i, (m, stride) in enumerate(zip(maps, (4, 8, 16, 32), strict=True)):
            assert m.shape == (1, model.embed_dims[i], 224 // stride, 224 // stride), f"map {i}: {m.shape}"
    errors = {f"map{i}": rel_err(m, r.detach().numpy()) for i, (m, r) in enumerate(zip(maps, ref_maps, strict=True))}
    assert_all_close(errors, F64_TOL, f"forward_pyramid {size}")

    dmaps = [rng.standard_normal(m.shape) if i in used else None for i, m in enumerate(maps)]
    dx = model.backward_pyramid(dmaps)
    loss = sum((ref_maps[i] * torch.from_numpy(dmaps[i])).sum() for i in used)
    loss.backward()
    errors = {"input": rel_err(dx, xt.grad.numpy())}
    # No gradient reaches the head, nor the stages after the last map that has one.
    unused = ("head.", *(f"stages.{i}." for i in range(max(used) + 1, 4)))
    for name, p in model.named_parameters():
        tp = tm.get_parameter(name)
        if name.startswith(unused):
            assert tp.grad is None and p.grad is None, f"{name}: has a gradient but takes no part"
        else:
            assert tp.grad is not None and p.grad is not None, f"{name}: no gradient"
            errors[name] = rel_err(p.grad, tp.grad.numpy())
    assert_all_close(errors, F64_TOL, f"backward_pyramid {size}")


def test_forward_features_matches_timm(rng: np.random.Generator) -> None:
    tm = randomize_(timm_pvt("pvt_v2_b2_li", depths=(1, 1, 1, 1)), seed=13).eval()
    model = pvt_np.create_model("pvt_v2_b2_li", dtype=np.float64, depths=(1, 1, 1, 1))
    model.load_state_dict(numpy_state(tm)).eval()
    x = rng.standard_normal((2, 3, *ODD))
    tokens = model.forward_features(x)
    dtokens = rng.standard_normal(tokens.shape)
    dx = model.backward_features(dtokens)
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    ref = tm.forward_features(xt)  # (B, C, H, W)
    ref_tokens = ref.flatten(2).transpose(1, 2)
    (ref_tokens * torch.from_numpy(dtokens)).sum().backward()
    errors = {"features": rel_err(tokens, ref_tokens.detach().numpy()), "input": rel_err(dx, xt.grad.numpy())}
    assert_all_close(errors, F64_TOL, "forward_features / backward_features")


# --------------------------------------------------------------------------------------------
# 4. Structure and initialisation
# --------------------------------------------------------------------------------------------
def test_list_models_is_timms_family() -> None:
    assert pvt_np.list_models() == sorted(timm.list_models("pvt_v2_*"))


def _timm_meta(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):  # shapes and names only, no allocation or initialisation
        return timm.create_model(name, **kwargs)


@pytest.mark.parametrize("name", pvt_np.list_models())
def test_parameters_equal_timm_state_dict(name: str) -> None:
    model = pvt_np.create_model(name)
    ours = [(k, p.shape) for k, p in model.named_parameters()]
    timm_state = _timm_meta(name).state_dict()
    theirs = [(k, tuple(v.shape)) for k, v in timm_state.items()]
    diff = [(i, a, b) for i, (a, b) in enumerate(itertools.zip_longest(ours, theirs)) if a != b]
    assert not diff, f"{name}: {len(diff)} differences, first (index, ours, timm's): {diff[0]}"
    assert all(p.dtype == np.float32 for p in model.parameters())
    assert sum(p.size for p in model.parameters()) == sum(v.numel() for v in timm_state.values())


@pytest.mark.parametrize("name", ["pvt_v2_b0", "pvt_v2_b2_li"])
def test_mlp_modules_equal_timm(name: str) -> None:
    """Every block's MLP runs timm's layers in timm's order (fc1, relu, dwconv, act, fc2; timm has one dropout
    module where ours has two), relu a ReLU in the linear variant, else an Identity."""
    model = pvt_np.create_model(name)
    layers = (".mlp.fc1", ".mlp.relu", ".mlp.dwconv", ".mlp.act", ".mlp.fc2")
    ours, theirs = ([(k, type(m).__name__) for k, m in modules if k.endswith(layers)]
                    for modules in (model.named_modules(), _timm_meta(name).named_modules()))  # fmt: skip
    assert ours == theirs
    relus = [kind for k, kind in ours if k.endswith(".mlp.relu")]
    assert relus == ["ReLU" if model.linear else "Identity"] * sum(model.depths)


def test_cifar_overrides_are_documented() -> None:
    assert CIFAR_OVERRIDES == {"patch_size": CIFAR_PATCH_SIZE, "stride": CIFAR_STRIDE, "sr_ratios": CIFAR_SR_RATIOS}
    model = pvt_np.create_model("pvt_v2_b0", cifar=True)
    assert model.feature_sizes(32, 32) == [(16, 16), (8, 8), (4, 4), (2, 2)]
    assert [s.blocks[0].attn.sr.kernel_size for s in list(model.stages)[:2]] == [(4, 4), (2, 2)]


@pytest.mark.parametrize("name", ["pvt_v2_b0", "pvt_v2_b2_li"])
def test_cifar_parameters_equal_timm_mirror(name: str) -> None:
    ours = [(k, p.shape) for k, p in pvt_np.create_model(name, cifar=True).named_parameters()]
    theirs = [(k, tuple(v.shape)) for k, v in timm_pvt(name, cifar=True).state_dict().items()]
    assert ours == theirs


def test_drop_path_rates_equal_timm() -> None:
    model = pvt_np.create_model("pvt_v2_b2", drop_path_rate=0.3)
    tm = _timm_meta("pvt_v2_b2", drop_path_rate=0.3)
    ours, theirs = [], []
    for stage, tstage in zip(model.stages, tm.stages, strict=True):
        for blk, tblk in zip(stage.blocks, tstage.blocks, strict=True):
            for a, b in ((blk.drop_path1, tblk.drop_path1), (blk.drop_path2, tblk.drop_path2)):
                ours.append(getattr(a, "p", 0.0))
                theirs.append(getattr(b, "drop_prob", 0.0))
    assert len(ours) == 2 * 16 and theirs[0] == 0.0 and theirs[-1] == pytest.approx(0.3)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-7)


def test_init_statistics() -> None:
    """Linear ~ N(0, 0.02^2) truncated at +-2, conv ~ N(0, 2/fan_out), LayerNorm 1/0, biases 0.

    Each tensor's sample std must be within 5 standard errors (std/sqrt(2n)) of the target:
    conv fan_in = fan_out * in/out (stem: 147 vs 1568), so an init from fan_in fails.
    """
    model = pvt_np.create_model("pvt_v2_b1", dtype=np.float64, seed=0)
    counts = {"linear": 0, "conv": 0, "norm": 0}
    for name, m in model.named_modules():
        if isinstance(m, (Linear, Conv2d)):
            w = m.weight.data
            if isinstance(m, Linear):
                target = 0.02
                counts["linear"] += 1
                assert np.abs(w).max() <= 2.0
            else:
                kh, kw = m.kernel_size
                target = math.sqrt(2.0 / (kh * kw * m.out_channels // m.groups))
                counts["conv"] += 1
            n = w.size
            assert abs(w.std() / target - 1.0) <= 5.0 / math.sqrt(2 * n), (
                f"{name}: std {w.std():.4g}, want {target:.4g}"
            )
            assert abs(w.mean()) <= 5.0 * target / math.sqrt(n), f"{name}: mean {w.mean():.3g}"
            assert m.bias is not None and not np.any(m.bias.data), f"{name}: bias not zero"
        elif isinstance(m, LayerNorm):
            counts["norm"] += 1
            assert np.all(m.weight.data == 1.0) and not np.any(m.bias.data), f"{name}: LayerNorm not 1/0"
    # b1, depths (2, 2, 2, 2), SR in stages 0-2: 8 blocks x (q, kv, proj, fc1, fc2) + head;
    # 4 patch embeds + 6 SR + 8 dwconv; 4 embed norms + 6 SR norms + 16 block norms + 4 stage norms
    assert counts == {"linear": 41, "conv": 18, "norm": 30}


def test_seed_determines_weights() -> None:
    a = pvt_np.create_model("pvt_v2_b0", seed=5).state_dict()
    b = pvt_np.create_model("pvt_v2_b0", seed=5).state_dict()
    c = pvt_np.create_model("pvt_v2_b0", seed=6).state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    random_keys = [k for k in a if k.endswith("weight") and a[k].ndim >= 2]
    assert len(random_keys) == 41 + 18  # b0 has b1's layout: 41 Linear and 18 conv weights
    assert all(not np.array_equal(a[k], c[k]) for k in random_keys)
    assert all(np.array_equal(a[k], c[k]) for k in a if k not in random_keys)  # constant inits


# --------------------------------------------------------------------------------------------
# 5. Bad input: clear errors before any arithmetic
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def b0() -> PyramidVisionTransformerV2:
    return pvt_np.create_model("pvt_v2_b0")


def test_wrong_channel_count(b0: PyramidVisionTransformerV2) -> None:
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 3, H, W\), got \(1, 4, 64, 64\)"):
        b0(np.zeros((1, 4, 64, 64), np.float32))


@pytest.mark.parametrize("shape", [(3, 64, 64), (1, 1, 3, 64, 64), (64,)])
def test_input_not_4d(b0: PyramidVisionTransformerV2, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 3, H, W\), got " + re.escape(str(shape))):
        b0(np.zeros(shape, np.float32))


def test_min_input_size_is_exact(b0: PyramidVisionTransformerV2) -> None:
    """b0: the stage-0 map must hold one 8x8 SR window: (H - 1) // 4 + 1 >= 8, so H >= 29."""
    assert b0.min_input_size() == (29, 29)
    with pvt_np.nn.no_grad():
        assert b0(np.zeros((1, 3, 29, 29), np.float32)).shape == (1, 1000)
        assert b0(np.zeros((1, 3, 29, 200), np.float32)).shape == (1, 1000)
    for shape in [(28, 28), (28, 224), (224, 28)]:
        with pytest.raises(ValueError, match=re.escape(f"input {shape[0]}x{shape[1]} is too small") + r".*29x29"):
            b0(np.zeros((1, 3, *shape), np.float32))
    cifar = pvt_np.create_model("pvt_v2_b0", cifar=True)  # 3x3/2 stem, stage-0 SR 4: (H - 1) // 2 + 1 >= 4
    assert cifar.min_input_size() == (7, 7)
    with pytest.raises(ValueError, match=r"too small.*minimum input is 7x7"):
        cifar(np.zeros((1, 3, 6, 32), np.float32))


GEOMETRIES = [
    {},  # ImageNet stem 7/4, sr_ratios 8, 4, 2, 1
    {"patch_size": 3, "stride": 2, "sr_ratios": (4, 2, 1, 1)},  # the CIFAR config
    {"patch_size": 5, "stride": 3, "sr_ratios": (2, 1, 6, 1)},  # a later stage is the binding one
    {"patch_size": 9, "stride": 2, "sr_ratios": (3, 5, 1, 2)},
    {"patch_size": 7, "stride": 4, "sr_ratios": (8, 4, 2, 1), "linear": True},  # any non-empty map
]


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_min_input_size_is_computed_exactly(geometry: dict) -> None:
    """min_input_size (the conv size formula run backwards) equals a search over sides with pyramid_sizes."""
    model = PyramidVisionTransformerV2(
        num_classes=0, depths=(1, 1, 1, 1), embed_dims=(4, 8, 8, 8), num_heads=(1, 1, 1, 1), **geometry
    )
    need = [1 if model.linear else r for r in model.sr_ratios]
    kernels, strides = [model.patch_size, 3, 3, 3], [model.stride, 2, 2, 2]

    def fits(side: int) -> bool:
        return all(min(hw) >= n for hw, n in zip(pyramid_sizes(side, side, kernels, strides), need, strict=True))

    side = model.min_input_size()[0]
    assert side == next(s for s in range(1, 4096) if fits(s)), geometry
    assert model.min_input_size() == (side, side)
    assert model.feature_sizes(side, side) == pyramid_sizes(side, side, kernels, strides)
    assert model.feature_sizes(side, 5 * side) == pyramid_sizes(side, 5 * side, kernels, strides)
    if side > 1:
        for h, w in [(side - 1, side - 1), (side - 1, 4 * side), (4 * side, side - 1)]:
            with pytest.raises(ValueError, match=rf"input {h}x{w} is too small.*minimum input is {side}x{side}"):
                model.feature_sizes(h, w)


def test_linear_variant_fits_tiny_inputs(rng: np.random.Generator) -> None:
    """Linear SRA pools to 7x7 whatever the map, so tiny images run, as in timm.

    9x7 gives maps 3x2, 2x1, 1x1, 1x1. On a 1x1 map all 49 pooled keys are equal, the
    attention weights are uniform whatever q is, so q's gradient is exactly 0 there: both
    sides must leave only rounding noise in it, and every other tensor must match.
    """
    tm = randomize_(timm_pvt("pvt_v2_b2_li", depths=(1, 1, 1, 1)), seed=14).eval()
    model = pvt_np.create_model("pvt_v2_b2_li", dtype=np.float64, depths=(1, 1, 1, 1))
    model.load_state_dict(numpy_state(tm)).eval()
    assert model.min_input_size() == (1, 1)
    assert model.feature_sizes(9, 7) == [(3, 2), (2, 1), (1, 1), (1, 1)]
    x = rng.standard_normal((2, 3, 9, 7))
    dlogits = rng.standard_normal((2, 1000))
    ours, ref = run_ours(model, [x], dlogits), run_torch(tm, [x], dlogits)
    scale = max(np.abs(g).max() for g in ref.values())
    for name in [k for k in ref if k.startswith(("stages.2.blocks.0.attn.q.", "stages.3.blocks.0.attn.q."))]:
        noise = max(np.abs(ours.pop(name)).max(), np.abs(ref.pop(name)).max())
        assert noise <= 1e-12 * scale, f"{name}: gradient {noise:.3g} where it is mathematically 0"
    assert_all_close(compare(ours, ref), F64_TOL, "b2_li at 9x7")
    with pvt_np.nn.no_grad():
        assert model(np.zeros((1, 3, 1, 1))).shape == (1, 1000)
    with pytest.raises(ValueError, match="too small"):
        model(np.zeros((1, 3, 0, 5)))


def test_dtype_mismatch(b0: PyramidVisionTransformerV2) -> None:
    with pytest.raises(TypeError, match=r"input dtype float64 does not match the model's float32"):
        b0(np.zeros((1, 3, 64, 64), np.float64))
    with pytest.raises(TypeError, match=r"float32 or float64, got int64"):
        b0(np.zeros((1, 3, 64, 64), np.int64))
    with pytest.raises(TypeError, match="NumPy or CuPy array"):
        b0([[0.0]])


def test_unknown_model_name_lists_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'pvt_v2_b9'.*" + re.escape(", ".join(pvt_np.list_models()))):
        pvt_np.create_model("pvt_v2_b9")


def test_unknown_override_lists_allowed_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown override\(s\) \['embed_dim'\]; allowed: .*embed_dims.*sr_ratios"):
        pvt_np.create_model("pvt_v2_b0", embed_dim=64)
    with pytest.raises(TypeError, match="float32 or float64"):
        pvt_np.create_model("pvt_v2_b0", dtype=np.float16)
    with pytest.raises(ValueError, match=r"sr_ratios needs 4 values"):
        pvt_np.create_model("pvt_v2_b0", sr_ratios=(8, 4, 2))


def test_backward_without_forward() -> None:
    model = pvt_np.create_model("pvt_v2_b0", depths=(1, 1, 1, 1))
    g = np.zeros((1, 1000), np.float32)
    with pytest.raises(RuntimeError, match="backward called without a preceding forward"):
        model.backward(g)
    x = np.zeros((1, 3, 32, 32), np.float32)
    model(x)
    model.backward(g)
    with pytest.raises(RuntimeError, match="backward called without a preceding forward"):
        model.backward(g)  # a second time
    model.forward_pyramid(x)
    with pytest.raises(RuntimeError, match="backward_logits called after forward_pyramid"):
        model.backward(g)
    with pvt_np.nn.no_grad():
        model(x)
    with pytest.raises(RuntimeError, match="backward called without a preceding forward"):
        model.backward(g)


# --------------------------------------------------------------------------------------------
# 6. Train / eval
# --------------------------------------------------------------------------------------------
DROPS = {"drop_rate": 0.5, "drop_path_rate": 0.5, "attn_drop_rate": 0.2, "proj_drop_rate": 0.2}


def _forward_backward(model, x: np.ndarray, g: np.ndarray) -> list[np.ndarray]:
    model.zero_grad()
    out = [model(x)]
    out.append(model.backward(g))
    return out + [p.grad for p in model.parameters()]


def test_train_mode_is_stochastic_but_seeded(rng: np.random.Generator) -> None:
    model = pvt_np.create_model("pvt_v2_b0", dtype=np.float64, **DROPS).train()
    x = rng.standard_normal((2, 3, 40, 40))
    g = rng.standard_normal((2, 1000))
    pvt_np.manual_seed(7)
    first = _forward_backward(model, x, g)
    unseeded = _forward_backward(model, x, g)  # the generator moved on: new masks
    pvt_np.manual_seed(7)
    again = _forward_backward(model, x, g)
    pvt_np.manual_seed(8)
    other = _forward_backward(model, x, g)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True)), "same seed, different result"
    assert not np.array_equal(first[0], unseeded[0]) and not np.array_equal(first[1], unseeded[1])
    assert not np.array_equal(first[0], other[0]) and not np.array_equal(first[1], other[1])


def test_eval_mode_is_deterministic_and_drop_free(rng: np.random.Generator) -> None:
    model = pvt_np.create_model("pvt_v2_b0", dtype=np.float64, **DROPS)
    plain = pvt_np.create_model("pvt_v2_b0", dtype=np.float64, seed=1).load_state_dict(model.state_dict())
    x = rng.standard_normal((2, 3, 40, 40))
    g = rng.standard_normal((2, 1000))
    model.train()
    pvt_np.manual_seed(3)
    train_out = _forward_backward(model, x, g)
    model.eval()
    pvt_np.manual_seed(3)
    a = _forward_backward(model, x, g)
    b = _forward_backward(model, x, g)  # no reseed: eval draws nothing
    ref = _forward_backward(plain.train(), x, g)  # drop rates 0: train mode is exact too
    assert all(np.array_equal(u, v) for u, v in zip(a, b, strict=True)), "eval mode is not deterministic"
    for i, (u, v) in enumerate(zip(a, ref, strict=True)):
        assert np.array_equal(u, v), f"eval output {i} differs from the drop-free model by {np.abs(u - v).max():.3g}"
    assert rel_err(train_out[0], a[0]) > 1e-3, "train mode with drops equals eval mode"


@pytest.mark.parametrize(
    ("mode", "num_keys"),
    [({"sr_ratio": 1}, 15), ({"sr_ratio": 2}, 2), ({"linear_attn": True, "pool_size": 2}, 4)],
    ids=["full", "sra", "linear"],
)
def test_attention_probs_of_the_last_forward(mode: dict, num_keys: int) -> None:
    """Attention.attention_probs(): (B, heads, N, M) softmax rows over the (reduced) keys, until backward."""
    attn = Attention(8, num_heads=2, dtype=np.float64, **mode)
    x = np.random.default_rng(0).standard_normal((2, 5 * 3, 8))
    attn(x, (5, 3))  # a 5x3 map: SRA with R=2 floors to 2x1 keys, linear SRA pools to 2x2
    probs = attn.attention_probs()
    assert probs.shape == (2, 2, 15, num_keys)
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, rtol=0, atol=1e-12)
    attn.backward(np.ones((2, 15, 8)))
    with pytest.raises(RuntimeError, match="backward called without a preceding forward"):
        attn.attention_probs()
