"""pvt_np.nn modules: gradchecks, torch.nn parity (float64/float32, train/eval) and the Module contract."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from helpers import (
    F64_TOL,
    GRAD_TOLS,
    TOLS,
    assert_close,
    assert_dtype,
    assert_gradcheck,
    away_from_zero,
    contains_all,
    randn,
    to_torch,
)

from pvt_np import backend, gradcheck, manual_seed, nn

torch = pytest.importorskip("torch")

F64 = np.float64
DTYPES = [np.float64, np.float32]
TORCH_DTYPES = {np.dtype(np.float64): torch.float64, np.dtype(np.float32): torch.float32}


# -- torch twins ------------------------------------------------------------------
class TorchConv2dNHWC(torch.nn.Conv2d):
    """torch.nn.Conv2d on channels-last input (same parameters and state_dict keys)."""

    def forward(self, x: Any) -> Any:
        return super().forward(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class TorchGroupNormNHWC(torch.nn.GroupNorm):
    """torch.nn.GroupNorm on channels-last input."""

    def forward(self, x: Any) -> Any:
        return super().forward(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class TorchUpsampleNHWC(torch.nn.Upsample):
    """torch.nn.Upsample on channels-last input."""

    def forward(self, x: Any) -> Any:
        return super().forward(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class TorchPoolNHWC(torch.nn.AdaptiveAvgPool2d):
    """torch.nn.AdaptiveAvgPool2d on channels-last input."""

    def forward(self, x: Any) -> Any:
        return super().forward(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class TorchMask(torch.nn.Module):
    """Training-mode Dropout/DropPath reference: multiplies by pvt_np's own scaled mask."""

    def __init__(self) -> None:
        super().__init__()
        self.mask: Any = None

    def forward(self, x: Any) -> Any:
        return x if self.mask is None else x * self.mask


T = torch.nn
T64: dict[str, Any] = {"dtype": torch.float64}


def _t_dropout(p: float, training: bool) -> Any:
    """torch reference of nn.Dropout: pvt_np's mask in training, torch's own Dropout in eval."""
    return TorchMask() if training else T.Dropout(p)


def _t_droppath(p: float, training: bool) -> Any:
    """torch reference of nn.DropPath: pvt_np's mask in training, timm's DropPath in eval."""
    from timm.layers import DropPath

    return TorchMask() if training else DropPath(p)


# -- cases -----------------------------------------------------------------------
@dataclass(frozen=True)
class ModCase:
    """A pvt_np module (built in float64), its torch.nn reference, the input shape and extra forward args."""

    id: str
    make: Callable[[], nn.Module]
    make_torch: Callable[[bool], Any]  # training -> the torch.nn reference (float64)
    shape: tuple[int, ...]
    args: tuple[Any, ...] = ()
    make_input: Callable[..., np.ndarray] | None = None
    scale: float = 1.0
    random: bool = False  # has a Dropout/DropPath inside: gradcheck it in both modes


_CE_RNG = np.random.default_rng(42)
_CE_SOFT = _CE_RNG.dirichlet(np.ones(6), size=4)
_CE_INDEX = _CE_RNG.integers(0, 6, size=4)
_CE_PIXELS = np.where(_CE_RNG.random((2, 3, 2)) < 0.3, 255, _CE_RNG.integers(0, 6, size=(2, 3, 2)))

MOD_CASES = [
    ModCase("linear-3d", lambda: nn.Linear(7, 5, dtype=F64), lambda tr: T.Linear(7, 5, **T64), (2, 13, 7)),
    ModCase("linear-batch1-nobias", lambda: nn.Linear(7, 3, bias=False, dtype=F64),
            lambda tr: T.Linear(7, 3, bias=False, **T64), (1, 7)),
    ModCase("conv-dense-batch1-13x7", lambda: nn.Conv2d(3, 4, 3, dtype=F64), lambda tr: T.Conv2d(3, 4, 3, **T64),
            (1, 3, 13, 7)),
    ModCase("conv-stride2-pad1", lambda: nn.Conv2d(4, 6, 3, stride=2, padding=1, dtype=F64),
            lambda tr: T.Conv2d(4, 6, 3, stride=2, padding=1, **T64), (2, 4, 13, 7)),
    ModCase("conv-rect", lambda: nn.Conv2d(3, 4, (3, 2), stride=(2, 1), padding=(1, 0), dtype=F64),
            lambda tr: T.Conv2d(3, 4, (3, 2), stride=(2, 1), padding=(1, 0), **T64), (1, 3, 9, 11)),
    ModCase("conv-grouped", lambda: nn.Conv2d(4, 6, 3, padding=1, groups=2, dtype=F64),
            lambda tr: T.Conv2d(4, 6, 3, padding=1, groups=2, **T64), (2, 4, 7, 5)),
    ModCase("conv-depthwise", lambda: nn.Conv2d(6, 6, 3, padding=1, groups=6, dtype=F64),
            lambda tr: T.Conv2d(6, 6, 3, padding=1, groups=6, **T64), (2, 6, 13, 7)),
    ModCase("conv-depthwise-x2", lambda: nn.Conv2d(3, 6, 3, stride=2, padding=1, groups=3, dtype=F64),
            lambda tr: T.Conv2d(3, 6, 3, stride=2, padding=1, groups=3, **T64), (1, 3, 13, 7)),
    ModCase("conv-nhwc-sr", lambda: nn.Conv2d(4, 4, 2, stride=2, dtype=F64, channels_last=True),
            lambda tr: TorchConv2dNHWC(4, 4, 2, stride=2, **T64), (2, 8, 6, 4)),
    ModCase("conv-nhwc-dw", lambda: nn.Conv2d(5, 5, 3, padding=1, groups=5, dtype=F64, channels_last=True),
            lambda tr: TorchConv2dNHWC(5, 5, 3, padding=1, groups=5, **T64), (1, 13, 7, 5)),
    ModCase("conv-1x1-nobias", lambda: nn.Conv2d(4, 6, 1, bias=False, dtype=F64),
            lambda tr: T.Conv2d(4, 6, 1, bias=False, **T64), (2, 4, 5, 3)),
    ModCase("layernorm-eps1e-5", lambda: nn.LayerNorm(7, dtype=F64), lambda tr: T.LayerNorm(7, **T64), (2, 13, 7)),
    # small-variance input (var ~1e-4), where eps 1e-6 instead of 1e-5 changes the output by ~5 %
    ModCase("layernorm-eps1e-6-batch1-smallvar", lambda: nn.LayerNorm(5, eps=1e-6, dtype=F64),
            lambda tr: T.LayerNorm(5, eps=1e-6, **T64), (1, 5), scale=0.01),
    ModCase("groupnorm-3-of-6", lambda: nn.GroupNorm(3, 6, dtype=F64), lambda tr: T.GroupNorm(3, 6, **T64),
            (2, 6, 5, 3)),
    ModCase("groupnorm-nhwc-batch1-eps1e-6", lambda: nn.GroupNorm(2, 4, eps=1e-6, channels_last=True, dtype=F64),
            lambda tr: TorchGroupNormNHWC(2, 4, eps=1e-6, **T64), (1, 7, 5, 4), scale=0.01),
    ModCase("gelu-none", lambda: nn.GELU(), lambda tr: T.GELU(), (2, 13, 7)),
    ModCase("gelu-tanh", lambda: nn.GELU("tanh"), lambda tr: T.GELU(approximate="tanh"), (1, 13, 7)),
    ModCase("relu", lambda: nn.ReLU(), lambda tr: T.ReLU(), (2, 13, 7), make_input=away_from_zero),
    ModCase("softmax-last", lambda: nn.Softmax(dim=-1), lambda tr: T.Softmax(dim=-1), (2, 5, 7)),
    ModCase("softmax-dim1", lambda: nn.Softmax(dim=1), lambda tr: T.Softmax(dim=1), (2, 5, 3)),
    ModCase("dropout-p0.3", lambda: nn.Dropout(0.3), lambda tr: _t_dropout(0.3, tr), (2, 13, 7), random=True),
    ModCase("dropout-p0", lambda: nn.Dropout(0.0), lambda tr: _t_dropout(0.0, tr), (1, 5), random=True),
    ModCase("droppath-p0.5", lambda: nn.DropPath(0.5), lambda tr: _t_droppath(0.5, tr), (6, 13, 7), random=True),
    ModCase("pool-15x11-to-7", lambda: nn.AdaptiveAvgPool2d(7), lambda tr: T.AdaptiveAvgPool2d(7), (2, 3, 15, 11)),
    ModCase("pool-nhwc-13x7-to-3x5", lambda: nn.AdaptiveAvgPool2d((3, 5), channels_last=True),
            lambda tr: TorchPoolNHWC((3, 5)), (1, 13, 7, 2)),
    ModCase("upsample-bilinear-x2-odd", lambda: nn.Upsample(scale_factor=2, mode="bilinear"),
            lambda tr: T.Upsample(scale_factor=2, mode="bilinear"), (1, 3, 7, 5)),
    ModCase("upsample-nearest-13x5-to-5x16", lambda: nn.Upsample((5, 16)), lambda tr: T.Upsample((5, 16)),
            (2, 2, 13, 5)),
    ModCase("upsample-nhwc-bilinear-x1.5x0.5", lambda: nn.Upsample(scale_factor=(1.5, 0.5), mode="bilinear",
                                                                   channels_last=True),
            lambda tr: TorchUpsampleNHWC(scale_factor=(1.5, 0.5), mode="bilinear"), (1, 7, 9, 3)),
    ModCase("ce-index", lambda: nn.CrossEntropyLoss(), lambda tr: T.CrossEntropyLoss(), (4, 6), (_CE_INDEX,),
            scale=2.0),
    ModCase("ce-pixels-ignore255", lambda: nn.CrossEntropyLoss(ignore_index=255),
            lambda tr: T.CrossEntropyLoss(ignore_index=255), (2, 6, 3, 2), (_CE_PIXELS,), scale=2.0),
    ModCase("ce-index-smoothing", lambda: nn.CrossEntropyLoss(label_smoothing=0.1),
            lambda tr: T.CrossEntropyLoss(label_smoothing=0.1), (4, 6), (_CE_INDEX,), scale=2.0),
    ModCase("ce-index-batch1", lambda: nn.CrossEntropyLoss(), lambda tr: T.CrossEntropyLoss(), (1, 6),
            (_CE_INDEX[:1],), scale=2.0),
    ModCase("ce-soft-smoothing", lambda: nn.CrossEntropyLoss(label_smoothing=0.2),
            lambda tr: T.CrossEntropyLoss(label_smoothing=0.2), (4, 6), (_CE_SOFT,), scale=2.0),
    ModCase("identity", lambda: nn.Identity(), lambda tr: T.Identity(), (2, 13, 7)),
    ModCase(
        "sequential-nested",
        lambda: nn.Sequential(
            nn.Linear(7, 5, dtype=F64),
            nn.GELU(),
            nn.Dropout(0.3),
            nn.LayerNorm(5, dtype=F64),
            nn.Sequential(nn.Linear(5, 4, dtype=F64), nn.GELU("tanh"), nn.DropPath(0.5), nn.Identity()),
        ),
        lambda tr: T.Sequential(
            T.Linear(7, 5, **T64),
            T.GELU(),
            _t_dropout(0.3, tr),
            T.LayerNorm(5, **T64),
            T.Sequential(T.Linear(5, 4, **T64), T.GELU(approximate="tanh"), _t_droppath(0.5, tr), T.Identity()),
        ),
        (3, 13, 7),
        random=True,
    ),
    ModCase(
        "sequential-conv-pool",
        lambda: nn.Sequential(
            nn.Conv2d(3, 4, 3, stride=2, padding=1, dtype=F64),
            nn.Conv2d(4, 4, 3, padding=1, groups=4, dtype=F64),
            nn.AdaptiveAvgPool2d(3),
        ),
        lambda tr: T.Sequential(
            T.Conv2d(3, 4, 3, stride=2, padding=1, **T64),
            T.Conv2d(4, 4, 3, padding=1, groups=4, **T64),
            T.AdaptiveAvgPool2d(3),
        ),
        (1, 3, 13, 7),
    ),
]  # fmt: skip


def _seed(case_id: str) -> int:
    return zlib.crc32(case_id.encode())


def _input(case: ModCase, rng: np.random.Generator) -> np.ndarray:
    return (case.make_input or randn)(rng, *case.shape) * case.scale


def _torch_args(case: ModCase, dtype: Any) -> list[Any]:
    out = []
    for a in case.args:
        out.append(torch.from_numpy(a) if a.dtype.kind in "iu" else to_torch(a).to(TORCH_DTYPES[np.dtype(dtype)]))
    return out


def _param_names(m: nn.Module) -> list[str]:
    return [name for name, _ in m.named_parameters()]


def _gradcheck_modes(case: ModCase) -> list[bool]:
    return [True, False] if case.random else [True]


GRADCHECK_PARAMS = [
    pytest.param(case, training, id=f"{case.id}-{'train' if training else 'eval'}")
    for case in MOD_CASES
    for training in _gradcheck_modes(case)
]


@pytest.mark.parametrize(("case", "training"), GRADCHECK_PARAMS)
def test_module_gradcheck(case: ModCase, training: bool) -> None:
    """The input gradient and every parameter's .grad match float64 central differences."""
    m = case.make().train(training)
    x = _input(case, np.random.default_rng(_seed(case.id)))
    errors = gradcheck(m, x, args=case.args)
    assert_gradcheck(errors, ["input", *_param_names(m)])


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("case", MOD_CASES, ids=lambda c: c.id)
def test_module_matches_torch(case: ModCase, dtype: Any, training: bool) -> None:
    """Output, input gradient and each parameter gradient equal torch.nn's, with identical state_dict keys."""
    m = case.make()
    tm = case.make_torch(training)
    tm.load_state_dict({k: to_torch(v) for k, v in m.state_dict().items()}, strict=True)
    m.to(dtype=dtype).train(training)
    tm.to(TORCH_DTYPES[np.dtype(dtype)]).train(training)
    assert _param_names(m) == list(tm.state_dict().keys())

    rng = np.random.default_rng(_seed(case.id) + 1)
    x = _input(case, rng).astype(dtype)
    manual_seed(7)
    out = m(x, *case.args)
    assert_dtype(out, dtype, "output")
    for name, sub in m.named_modules():
        if isinstance(sub, (nn.Dropout, nn.DropPath)):
            mask = sub._cache  # pvt_np's own scaled keep-mask (None when the layer is the identity)
            assert (mask is None) == (not training or sub.p == 0.0)
            if mask is not None:
                tm.get_submodule(name).mask = to_torch(mask)
    dout = rng.standard_normal(np.shape(out)).astype(dtype)
    dx = m.backward(dout)

    tx = to_torch(x, requires_grad=True)
    ref = tm(tx, *_torch_args(case, dtype))
    ref.backward(to_torch(dout))

    tol, grad_tol = TOLS[np.dtype(dtype)], GRAD_TOLS[np.dtype(dtype)]
    assert_close(out, ref, tol, f"{case.id} forward")
    assert_dtype(dx, dtype, "input grad")
    assert_close(dx, tx.grad, grad_tol, f"{case.id} input grad")
    torch_params = dict(tm.named_parameters())
    for name, p in m.named_parameters():
        assert_dtype(p.grad, dtype, f"{name} grad")
        assert_close(p.grad, torch_params[name].grad, grad_tol, f"{case.id} {name} grad")


def test_random_modules_reproducible_and_identity_in_eval() -> None:
    """Dropout/DropPath: same seed, same output; in eval the output is the input and the gradient passes."""
    x = np.random.default_rng(0).standard_normal((8, 4, 3))
    for m in (nn.Dropout(0.5), nn.DropPath(0.5)):
        manual_seed(3)
        a = m(x)
        m.backward(np.ones_like(x))
        manual_seed(3)
        b = m(x)
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, x)
        m.eval()
        np.testing.assert_array_equal(m(x), x)
        np.testing.assert_array_equal(m.backward(np.full_like(x, 2.0)), np.full_like(x, 2.0))


def test_droppath_module_drops_whole_samples() -> None:
    """DropPath zeroes or keeps (scaled by 1/(1-p)) each sample as a whole."""
    m = nn.DropPath(0.5)
    manual_seed(0)
    y = m(np.ones((64, 5, 3)))
    per_sample = y.reshape(64, -1)
    assert np.all(per_sample == per_sample[:, :1])
    assert set(np.unique(per_sample).tolist()) == {0.0, 2.0}


# -- Module contract --------------------------------------------------------------
def _mlp(dtype: Any = F64) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(6, 5, dtype=dtype), nn.GELU(), nn.LayerNorm(5, dtype=dtype), nn.Linear(5, 3, bias=False, dtype=dtype)
    )


@pytest.mark.parametrize(
    ("make", "shape"),
    [
        (lambda: nn.Linear(6, 4, dtype=F64), (3, 6)),
        (lambda: nn.Conv2d(3, 3, 3, padding=1, groups=3, dtype=F64), (2, 3, 5, 4)),
        (lambda: nn.Conv2d(3, 4, 3, stride=2, dtype=F64), (2, 3, 7, 5)),
        (lambda: nn.LayerNorm(6, dtype=F64), (3, 6)),
        (_mlp, (2, 6)),
    ],
    ids=["linear", "depthwise", "conv", "layernorm", "sequential"],
)
def test_backward_accumulates_until_zero_grad(make: Callable[[], nn.Module], shape: tuple[int, ...]) -> None:
    """Two forward/backward pairs leave twice the gradient in .grad; zero_grad() resets to None."""
    m = make()
    rng = np.random.default_rng(0)
    x = randn(rng, *shape)
    g = rng.standard_normal(np.shape(m(x)))
    dx1 = m.backward(g)
    once = {n: p.grad.copy() for n, p in m.named_parameters()}
    assert once, "module has no parameters"
    m(x)
    dx2 = m.backward(g)
    np.testing.assert_array_equal(dx1, dx2)  # the input gradient is returned, not accumulated
    for n, p in m.named_parameters():
        assert_close(p.grad, 2.0 * once[n], F64_TOL, f"{n} after two backwards")
    m.zero_grad()
    assert all(p.grad is None for p in m.parameters())
    m(x)
    m.backward(g)
    for n, p in m.named_parameters():
        np.testing.assert_array_equal(p.grad, once[n])


class Block(nn.Module):
    """A nested pvt_np module built from attributes, a Sequential and a ModuleList."""

    def __init__(self) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(8)
        self.sr = nn.Conv2d(8, 8, 2, stride=2)
        self.mlp = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Sequential(nn.Linear(16, 8, bias=False)))
        self.heads = nn.ModuleList([nn.Linear(8, 2), nn.Identity(), nn.Linear(8, 3)])
        self.drop = nn.Dropout(0.1)


class TorchBlock(torch.nn.Module):
    """torch version of Block (same attribute names and order)."""

    def __init__(self) -> None:
        super().__init__()
        self.norm1 = torch.nn.LayerNorm(8)
        self.sr = torch.nn.Conv2d(8, 8, 2, stride=2)
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Sequential(torch.nn.Linear(16, 8, bias=False))
        )
        self.heads = torch.nn.ModuleList([torch.nn.Linear(8, 2), torch.nn.Identity(), torch.nn.Linear(8, 3)])
        self.drop = torch.nn.Dropout(0.1)


def test_named_parameters_match_torch_state_dict_keys() -> None:
    """Dotted names, their order and shapes equal torch's state_dict for nested Sequential/ModuleList/attributes."""
    m, tm = Block(), TorchBlock()
    names = [(n, p.shape) for n, p in m.named_parameters()]
    expected = [(k, tuple(v.shape)) for k, v in tm.state_dict().items()]
    assert names == expected
    assert list(m.state_dict()) == list(tm.state_dict())
    tm.load_state_dict({k: to_torch(v) for k, v in m.state_dict().items()})  # strict: raises on any mismatch
    seq = _mlp()
    assert list(seq.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias", "3.weight"]


def test_train_eval_propagate() -> None:
    """train()/eval() set .training on every descendant and return the module."""
    m = Block()
    assert m.eval() is m
    assert all(not sub.training for sub in m.modules())
    x = np.ones((4, 8), dtype=np.float32)
    np.testing.assert_array_equal(m.drop(x), x)  # eval: the identity
    assert m.train() is m
    assert all(sub.training for sub in m.modules())
    assert m.train(False) is m and not m.mlp[2][0].training
    m.mlp.train()
    assert m.mlp[2][0].training and not m.training  # only the sub-tree changes


def test_state_dict_round_trip() -> None:
    """state_dict() holds copies; load_state_dict() restores them exactly and keeps each parameter's dtype."""
    manual_seed(0)
    a = _mlp()
    manual_seed(1)
    b = _mlp()
    x = randn(np.random.default_rng(0), 2, 6)
    sd = a.state_dict()
    assert not np.array_equal(a(x), b(x))
    sd_before = {k: v.copy() for k, v in sd.items()}
    assert b.load_state_dict(sd) is b
    np.testing.assert_array_equal(a(x), b(x))
    for k, v in sd.items():  # the dict is a copy: neither side aliases the other
        v += 1.0
        np.testing.assert_array_equal(a.state_dict()[k], sd_before[k])
        np.testing.assert_array_equal(b.state_dict()[k], sd_before[k])
    c = _mlp(np.float32)
    c.load_state_dict(sd_before)
    assert all(p.dtype == np.float32 for p in c.parameters())
    np.testing.assert_array_equal(c.state_dict()["0.weight"], sd_before["0.weight"].astype(np.float32))


def test_load_state_dict_from_torch() -> None:
    """Weights exported from the torch twin load by name and reproduce torch's output."""
    tm = TorchBlock().double()
    m = Block().to(dtype=F64)
    m.load_state_dict({k: v.numpy() for k, v in tm.state_dict().items()})
    x = randn(np.random.default_rng(0), 3, 8)
    assert_close(m.mlp(x), tm.mlp(to_torch(x)), F64_TOL, "mlp output after loading torch weights")


def test_load_state_dict_names_every_problem_at_once() -> None:
    """Missing, unexpected and mis-shaped keys are all listed in one error; nothing is loaded."""
    m = _mlp()
    before = m.state_dict()
    sd = m.state_dict()
    del sd["0.bias"], sd["3.weight"]
    sd["5.weight"] = np.zeros(3)
    sd["head.bias"] = np.zeros(3)
    sd["0.weight"] = np.zeros((6, 5))
    sd["2.bias"] = np.zeros((5, 1))
    sd["2.weight"] = np.full(5, 7.0)  # a valid key: must not be loaded either
    parts = ("missing", "0.bias", "3.weight", "unexpected", "5.weight", "head.bias",
             "mis-shaped", "0.weight: expected (5, 6), got (6, 5)", "2.bias: expected (5,), got (5, 1)")  # fmt: skip
    with pytest.raises(ValueError, match=contains_all(*parts)):
        m.load_state_dict(sd)
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    with pytest.raises(ValueError, match=contains_all("mis-shaped", "0.weight", "2.bias")) as info:
        m.load_state_dict(sd, strict=False)
    assert "missing" not in str(info.value) and "unexpected" not in str(info.value)
    del sd["0.weight"], sd["2.bias"]
    m.load_state_dict(sd, strict=False)  # missing/unexpected ignored, the rest loaded
    np.testing.assert_array_equal(m[2].weight.data, np.full(5, 7.0))
    np.testing.assert_array_equal(m[0].bias.data, before["0.bias"])


def test_to_dtype_casts_params_and_grads() -> None:
    """to(dtype=...) casts every parameter and existing gradient, and returns the module."""
    m = _mlp(np.float32)
    x = np.ones((2, 6), dtype=np.float32)
    m.backward(np.ones_like(m(x)))
    assert m.to(dtype=np.float64) is m
    assert m.dtype == np.float64
    for p in m.parameters():
        assert p.data.dtype == np.float64 and p.grad.dtype == np.float64
    m.to(dtype="float32")
    for p in m.parameters():
        assert p.data.dtype == np.float32 and p.grad.dtype == np.float32
    assert m.to(device="cpu") is m and m.device == "cpu"
    with pytest.raises(TypeError, match=contains_all("float32 or float64", "int32")):
        m.to(dtype=np.int32)
    with pytest.raises(ValueError, match=contains_all("device", "'tpu'")):
        m.to(device="tpu")


def test_to_dtype_drops_stale_cache() -> None:
    """A cast invalidates the forward cache (a backward would mix dtypes)."""
    m = nn.Linear(3, 2)
    m(np.ones((1, 3), dtype=np.float32))
    m.to(dtype=np.float64)
    with pytest.raises(RuntimeError, match="Linear"):
        m.backward(np.ones((1, 2)))


@pytest.mark.skipif(backend.gpu_available(), reason="a GPU is present")
def test_to_gpu_without_gpu_raises() -> None:
    """to(device='gpu') without a usable GPU raises a clear RuntimeError and changes nothing."""
    m = _mlp()
    before = m.state_dict()
    with pytest.raises(RuntimeError, match=r"device='gpu' requested but CuPy (is not installed|finds no CUDA device)"):
        m.to(device="gpu", dtype=np.float32)
    assert m.dtype == np.float64 and m.device == "cpu"
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_no_grad_keeps_no_cache() -> None:
    """Under no_grad() forwards keep nothing (and drop an older cache); backward then raises."""
    m = _mlp()
    x = randn(np.random.default_rng(0), 2, 6)
    y = m(x)
    assert nn.is_grad_enabled()
    with nn.no_grad():
        assert not nn.is_grad_enabled()
        y2 = m(x)
    assert nn.is_grad_enabled()
    np.testing.assert_array_equal(y, y2)
    assert all(sub._cache is None for sub in m.modules())
    with pytest.raises(RuntimeError, match="no_grad"):
        m.backward(np.ones_like(y))
    with pytest.raises(KeyError), nn.no_grad():
        raise KeyError("boom")
    assert nn.is_grad_enabled(), "no_grad did not restore the flag after an exception"
    with nn.no_grad():
        with nn.no_grad():
            pass
        assert not nn.is_grad_enabled()


def test_a_second_forward_drops_the_first_cache_before_it_runs() -> None:
    """Two forwards without a backward never hold two caches: the call drops the old one first (the memory
    of a model called twice in training mode is one forward's), and the backward uses the second forward's."""
    seen: list[bool] = []

    class Probe(nn.Linear):
        def forward(self, x: Any) -> Any:
            seen.append(self._has_cache or self._cache is not None)
            return super().forward(x)

    m = Probe(3, 2, dtype=F64)
    rng = np.random.default_rng(0)
    x1, x2 = randn(rng, 4, 3), randn(rng, 4, 3)
    m(x1)
    m(x2)
    assert seen == [False, False]
    m.backward(np.ones((4, 2)))
    np.testing.assert_allclose(m.weight.grad, np.ones((4, 2)).T @ x2, rtol=1e-15)


CACHED_MODULES = [
    (lambda: nn.Linear(3, 2, dtype=F64), (np.ones((1, 3)),), "Linear"),
    (lambda: nn.Conv2d(2, 2, 1, dtype=F64), (np.ones((1, 2, 3, 3)),), "Conv2d"),
    (lambda: nn.LayerNorm(3, dtype=F64), (np.ones((1, 3)),), "LayerNorm"),
    (lambda: nn.GroupNorm(1, 2, dtype=F64), (np.ones((1, 2, 3, 3)),), "GroupNorm"),
    (lambda: nn.GELU(), (np.ones((1, 3)),), "GELU"),
    (lambda: nn.ReLU(), (np.ones((1, 3)),), "ReLU"),
    (lambda: nn.Softmax(), (np.ones((1, 3)),), "Softmax"),
    (lambda: nn.Dropout(0.5), (np.ones((1, 3)),), "Dropout"),
    (lambda: nn.DropPath(0.5), (np.ones((1, 3)),), "DropPath"),
    (lambda: nn.AdaptiveAvgPool2d(2), (np.ones((1, 1, 3, 3)),), "AdaptiveAvgPool2d"),
    (lambda: nn.CrossEntropyLoss(), (np.ones((2, 3)), np.array([0, 1])), "CrossEntropyLoss"),
]


@pytest.mark.parametrize(("make", "inputs", "label"), CACHED_MODULES, ids=[c[2] for c in CACHED_MODULES])
def test_backward_without_forward_raises(make: Callable[[], nn.Module], inputs: tuple[Any, ...], label: str) -> None:
    """backward before any forward, and a second backward, raise RuntimeError naming the layer."""
    m = make()
    with pytest.raises(RuntimeError, match=contains_all(label, "without a preceding forward")):
        m.backward(np.ones(1))
    out = m(*inputs)
    m.backward(np.ones_like(out))
    with pytest.raises(RuntimeError, match=contains_all(label, "second time")):
        m.backward(np.ones_like(out))


def test_backward_error_names_the_layer_path() -> None:
    """In a named model the error carries the failing layer's dotted path."""
    model = nn.Sequential(nn.Linear(4, 3, dtype=F64), nn.Sequential(nn.GELU())).set_names()
    with pytest.raises(RuntimeError, match=contains_all("GELU '1.0'")):
        model.backward(np.ones((2, 3)))
    y = model(np.ones((2, 4)))
    model.backward(np.ones_like(y))
    with pytest.raises(RuntimeError, match=contains_all("GELU '1.0'")):
        model.backward(np.ones_like(y))


def test_identity_and_empty_sequential_pass_gradients_through() -> None:
    """Identity (stateless) and an empty Sequential return their input and gradient unchanged."""
    x = np.arange(6.0).reshape(2, 3)
    for m in (nn.Identity(), nn.Sequential()):
        assert m(x) is x
        assert m.backward(x) is x
        assert list(m.parameters()) == []


def test_default_init_follows_torch() -> None:
    """Defaults: float32; Linear/Conv2d U(-1/sqrt(fan_in), 1/sqrt(fan_in)); LayerNorm ones/zeros."""
    manual_seed(0)
    lin, conv, ln = nn.Linear(50, 40), nn.Conv2d(6, 8, 3, groups=2), nn.LayerNorm(7)
    for m, fan_in in ((lin, 50), (conv, 3 * 9)):
        bound = 1.0 / np.sqrt(fan_in)
        for p in m.parameters():
            assert p.dtype == np.float32
            assert np.abs(p.data).max() <= bound
            assert np.abs(p.data).max() > 0.8 * bound  # spread over the whole interval
    np.testing.assert_array_equal(ln.weight.data, np.ones(7, np.float32))
    np.testing.assert_array_equal(ln.bias.data, np.zeros(7, np.float32))
    assert conv.weight.shape == (8, 3, 3, 3)


def test_gradcheck_restores_module_dtype_and_grads() -> None:
    """gradcheck casts a float32 module to float64 for the check and back afterwards, leaving no .grad."""
    m = _mlp(np.float32)
    errors = gradcheck(m, np.random.default_rng(0).standard_normal((2, 6)))
    assert_gradcheck(errors, ["input", *_param_names(m)])
    assert all(p.dtype == np.float32 and p.grad is None for p in m.parameters())


def test_gradcheck_detects_a_wrong_gradient() -> None:
    """The checker itself is not vacuous: a backward that is off by 1e-4 is reported."""

    class Bad(nn.Linear):
        def backward(self, dout: Any) -> Any:
            return super().backward(dout) * (1 + 1e-4)

    errors = gradcheck(Bad(3, 2, dtype=F64), np.ones((2, 3)))
    assert errors["input"] > 1e-5 and errors["weight"] < 1e-8
