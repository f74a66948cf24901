"""Semantic FPN segmenter tests: the head's gradient check, the whole model (PVT v2 b0 + head) against a torch
twin built from torch.nn and timm's pvt_v2, plain == fast, FLOP counting, bad input.

The twin is mmseg's FPN neck + FPNHead written with torch.nn (Conv2d, GroupNorm, ReLU, Upsample) and
F.interpolate, on timm's ``forward_intermediates``; its parameter names are ours, so its seeded weights are
copied by name. Tolerances are relative to each tensor's largest magnitude.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

import torch.nn.functional as F  # noqa: E402
from model_helpers import assert_all_close, compare, numpy_state, randomize_, rel_err, run_ours, run_torch  # noqa: E402
from torch import nn  # noqa: E402

import pvt_np  # noqa: E402
from pvt_np.models import ConvModule, SemanticFPNHead, SemanticSegmenter, create_segmenter  # noqa: E402
from pvt_np.nn import Module  # noqa: E402

# Tolerances, relative to each tensor's largest magnitude. -----------------------------------------
F64_TOL = 1e-12  # float64 against the twin in float64 (measured: at most 8.5e-15)
F32_LOGIT_TOL = 1e-5  # float32 as tests/test_model.py bounds the classification model (measured: 1.2e-6)
F32_GRAD_TOL = 1e-2  # (measured: at most 3.5e-6, LayerNorm weights of the backbone)
GRADCHECK_TOL = 1e-6  # central differences, h = 1e-6, float64

NUM_CLASSES = 7
FPN_CHANNELS, HEAD_CHANNELS, GROUPS = 16, 8, 4  # small widths keep the twin tests in seconds
ODD = (97, 61)  # maps 25x16, 13x8, 7x4, 4x2: the top-down and scale-head upsamplings need resizes


# --------------------------------------------------------------------------------------------
# The torch twin: mmseg's FPN neck + FPNHead, written from torch.nn and F.interpolate
# --------------------------------------------------------------------------------------------
class TorchConvModule(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, groups: int | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=k // 2, bias=groups is None)
        self.gn = nn.GroupNorm(groups, cout) if groups is not None else None
        self.activate = nn.ReLU() if groups is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return self.activate(self.gn(x)) if self.gn is not None else x


class TorchSemanticFPNHead(nn.Module):
    """Modules keyed by level ("0".."3"), so a subset of levels keeps the full head's names."""

    def __init__(
        self,
        in_channels: tuple[int, ...],
        fpn: int,
        head: int,
        num_classes: int,
        groups: int,
        levels: tuple[int, ...] = (0, 1, 2, 3),
    ) -> None:
        super().__init__()
        self.levels = levels
        self.lateral_convs = nn.ModuleDict({str(i): TorchConvModule(in_channels[i], fpn, 1) for i in levels})
        self.fpn_convs = nn.ModuleDict({str(i): TorchConvModule(fpn, fpn, 3) for i in levels})
        self.scale_heads = nn.ModuleDict()
        for level in levels:
            layers = []
            for k in range(max(1, level)):
                layers.append(TorchConvModule(fpn if k == 0 else head, head, 3, groups))
                if level > 0:
                    layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.scale_heads[str(level)] = nn.Sequential(*layers)
        self.conv_seg = nn.Conv2d(head, num_classes, 1)

    def forward(self, maps: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        laterals = {i: self.lateral_convs[str(i)](maps[i]) for i in self.levels}
        for finer, i in reversed(list(itertools.pairwise(self.levels))):
            laterals[finer] = laterals[finer] + F.interpolate(laterals[i], size=laterals[finer].shape[2:])
        fused = 0
        for i in self.levels:
            out = self.scale_heads[str(i)](self.fpn_convs[str(i)](laterals[i]))
            fused = fused + F.interpolate(out, size=maps[0].shape[2:], mode="bilinear", align_corners=False)
        return F.interpolate(self.conv_seg(fused), size=size, mode="bilinear", align_corners=False)


class TorchSegmenter(nn.Module):
    def __init__(self, backbone: nn.Module, head: TorchSemanticFPNHead) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone.forward_intermediates(x, intermediates_only=True), x.shape[2:])


def randomize_group_norms_(module: nn.Module, seed: int) -> nn.Module:
    """GroupNorm affines away from ones and zeros (model_helpers.randomize_ covers convs and LayerNorms)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.GroupNorm):
                m.weight.copy_(1.0 + 0.2 * torch.randn(m.weight.shape, generator=g, dtype=torch.float64))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g, dtype=torch.float64))
    return module


@functools.lru_cache(maxsize=1)
def _twin() -> tuple[nn.Module, dict[str, np.ndarray]]:
    backbone = timm.create_model("pvt_v2_b0", num_classes=0)
    head = TorchSemanticFPNHead(
        tuple(f["num_chs"] for f in backbone.feature_info), FPN_CHANNELS, HEAD_CHANNELS, NUM_CLASSES, GROUPS
    )
    twin = TorchSegmenter(backbone, head).double()
    randomize_group_norms_(randomize_(twin, seed=21), seed=22)
    return twin, numpy_state(twin)


def _ours(dtype: np.dtype) -> SemanticSegmenter:
    model = create_segmenter(
        "pvt_v2_b0",
        NUM_CLASSES,
        fpn_channels=FPN_CHANNELS,
        head_channels=HEAD_CHANNELS,
        num_groups=GROUPS,
        dtype=dtype,
    )
    return model.load_state_dict(_twin()[1])


@functools.lru_cache(maxsize=2)
def _reference(size: tuple[int, int], batch: int, train: bool) -> tuple[np.ndarray, np.ndarray, dict]:
    twin, _ = _twin()
    rng = np.random.default_rng([*size, batch])
    x = rng.standard_normal((batch, 3, *size))
    dlogits = rng.standard_normal((batch, NUM_CLASSES, *size))  # random: every logit's path is weighted
    return x, dlogits, run_torch(twin.train(train), [x], dlogits)


def _check_against_twin(size: tuple[int, int], batch: int, train: bool, dtype: type) -> dict[str, float]:
    x, dlogits, ref = _reference(size, batch, train)
    model = _ours(np.dtype(dtype)).train(train)
    errors = compare(run_ours(model, [x], dlogits), ref)
    what = f"b0 + Semantic FPN {size[0]}x{size[1]} B{batch} {'train' if train else 'eval'} {np.dtype(dtype).name}"
    logit_tol, grad_tol = (F64_TOL, F64_TOL) if dtype == np.float64 else (F32_LOGIT_TOL, F32_GRAD_TOL)
    assert_all_close({"logits": errors.pop("out")}, logit_tol, f"{what} logits")
    assert_all_close(errors, grad_tol, f"{what} input and parameter gradients")
    return errors


def test_twin_has_our_parameter_names() -> None:
    """Every parameter of ours is the twin's of the same name and shape, and no other: the head's
    names are mmseg's, the backbone's are timm's under ``backbone.``."""
    ours = {name: p.shape for name, p in _ours(np.dtype(np.float64)).named_parameters()}
    theirs = {name: tuple(t.shape) for name, t in _twin()[0].named_parameters()}
    assert ours == theirs
    assert "head.scale_heads.3.4.gn.weight" in ours  # level 3: three conv-GN-ReLU blocks, each then upsampled


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_segmenter_matches_torch_twin(dtype: type) -> None:
    """128x128 scenes (maps 32, 16, 8, 4), batch 2, eval mode: logits, input and every parameter gradient."""
    _check_against_twin((128, 128), 2, False, dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_segmenter_matches_torch_twin_odd_size_train_mode(dtype: type) -> None:
    """Odd, non-square input: every upsampling lands off the finer map and is resized, as mmseg does.
    Train mode: b0 has no dropout or drop path at its default rates, so train must equal eval."""
    _check_against_twin(ODD, 2, True, dtype)


# --------------------------------------------------------------------------------------------
# Gradient check of the head alone (float64 central differences)
# --------------------------------------------------------------------------------------------
HEAD_IN = (3, 4, 5, 6)
HEAD_MAPS = ((8, 6), (4, 3), (2, 2), (1, 1))  # level 2 and 3 upsample to 8x8: resized to 8x6
HEAD_OUT = (30, 22)  # not 4x the stride-4 map: the final resize is not an exact x4


def _small_head(rng: np.random.Generator) -> tuple[SemanticFPNHead, list[np.ndarray]]:
    head = SemanticFPNHead(HEAD_IN, fpn_channels=4, head_channels=4, num_classes=3, num_groups=2, dtype=np.float64)
    for name, p in head.named_parameters():
        if name.endswith("gn.weight"):
            p.data = 1.0 + 0.2 * rng.standard_normal(p.shape)
        elif name.endswith("weight"):
            p.data = rng.standard_normal(p.shape) / math.sqrt(int(np.prod(p.shape[1:])))
        else:
            p.data = 0.1 * rng.standard_normal(p.shape)
    maps = [rng.standard_normal((2, c, h, w)) for c, (h, w) in zip(HEAD_IN, HEAD_MAPS, strict=True)]
    return head, maps


class _HeadOnFirstMap(Module):
    """The head as a one-input module (map 0 varies, the others are fixed), for gradcheck of its parameters."""

    def __init__(self, head: SemanticFPNHead, others: list[np.ndarray]) -> None:
        super().__init__()
        self.head, self.others = head, others

    def forward(self, x: np.ndarray) -> np.ndarray:
        return self.head([x, *self.others], HEAD_OUT)

    def backward(self, dout: np.ndarray) -> np.ndarray:
        return self.head.backward(dout)[0]


def test_gradcheck_head_maps(rng: np.random.Generator) -> None:
    head, maps = _small_head(rng)
    names = [f"map{i}" for i in range(4)]
    errors = pvt_np.gradcheck(
        (lambda *m: (head(list(m), HEAD_OUT), None), lambda d, _cache: head.backward(d)), maps, names=names
    )
    assert sorted(errors) == names
    assert_all_close(errors, GRADCHECK_TOL, "gradcheck SemanticFPNHead maps")


def test_gradcheck_head_parameters(rng: np.random.Generator) -> None:
    head, maps = _small_head(rng)
    wrapped = _HeadOnFirstMap(head, maps[1:])
    errors = pvt_np.gradcheck(wrapped, maps[0])
    expected = ["input"] + [name for name, _ in wrapped.named_parameters()]
    assert sorted(errors) == sorted(expected)
    assert len(expected) == 1 + 4 * 2 + 4 * 2 + (1 + 1 + 2 + 3) * 3 + 2  # input, lateral, fpn, scale heads, seg
    assert_all_close(errors, GRADCHECK_TOL, "gradcheck SemanticFPNHead parameters")


# --------------------------------------------------------------------------------------------
# plain == fast, FLOPs, structure, bad input
# --------------------------------------------------------------------------------------------
def test_fast_equals_plain(rng: np.random.Generator) -> None:
    """The whole segmenter (float64, 64x48 input) gives the same logits and gradients with either op set."""
    x = rng.standard_normal((2, 3, 64, 48))
    dlogits = rng.standard_normal((2, NUM_CLASSES, 64, 48))
    model = _ours(np.dtype(np.float64))
    fast = run_ours(model, [x], dlogits)
    with pvt_np.ops.use_plain():
        plain = run_ours(model, [x], dlogits)
    assert_all_close(compare(fast, plain), 1e-12, "fast against plain")


def test_flops_count_the_head() -> None:
    """count_flops covers the head: every conv, GroupNorm, ReLU and upsampling of it has a row, the rows sum to
    the head's, and the model's total is the backbone's plus the head's."""
    model = create_segmenter("pvt_v2_b0", 150)
    size, side = 128, 32  # the stride-4 map is 32x32
    rows = {r.name: r for r in pvt_np.complexity.flops_breakdown(model, size, depth="stage")}
    assert list(rows) == ["backbone.patch_embed", *(f"backbone.stages.{i}" for i in range(4)), "head"]
    backbone = pvt_np.count_flops(pvt_np.create_model("pvt_v2_b0", num_classes=0), size)
    assert pvt_np.count_flops(model, size) == backbone + rows["head"].flops
    layers = [r for r in pvt_np.complexity.flops_breakdown(model, size, depth="layer") if r.name.startswith("head.")]
    assert sum(r.flops for r in layers) == rows["head"].flops
    kinds = [r.kind for r in layers]
    # 4 lateral + 4 fpn + 7 scale-head + 1 classifier convs; 7 conv-GN-ReLU blocks; 6 bilinear x2 upsamplings;
    # and one row for the resizes the head runs itself (no resize to stride 4 at 128x128).
    counts = {kind: kinds.count(kind) for kind in set(kinds)}
    assert counts == {"Conv2d": 16, "GroupNorm": 7, "ReLU": 7, "Upsample": 6, "interpolate": 1}, counts
    by_name = {r.name: r.flops for r in layers}
    # 1 per output element: the three top-down nearest upsamplings (256 channels) and the final x4 to 128x128
    assert by_name["head.interpolate"] == 256 * (side**2 + (side // 2) ** 2 + (side // 4) ** 2) + 150 * size**2
    assert by_name["head.conv_seg"] == (128 + 1) * 150 * side**2  # MACs and bias adds
    # level 3 (4x4): blocks at 4x4, 8x8, 16x16, each followed by a x2 upsampling, the last to the stride-4 map
    assert by_name["head.scale_heads.3.4.gn"] == 2 * 128 * (side // 2) ** 2
    assert by_name["head.scale_heads.3.5"] == 128 * side**2


def test_segmenter_structure_and_bad_input() -> None:
    model = _ours(np.dtype(np.float64))
    assert [len(h) for h in model.head.scale_heads] == [1, 2, 4, 6]  # conv blocks and upsamplings per level
    assert all(isinstance(h[0], ConvModule) for h in model.head.scale_heads)
    with pytest.raises(ValueError, match="in_channels"):
        SemanticSegmenter(model.backbone, SemanticFPNHead((1, 2, 3, 4), 8, 8, 2, 2, dtype=np.float64))
    with pytest.raises(ValueError, match="num_groups=3 must divide head_channels=8"):
        SemanticFPNHead((32, 64, 160, 256), 8, 8, 2, 3)
    x = np.zeros((1, 3, 64, 64))
    y = model(x)
    assert y.shape == (1, NUM_CLASSES, 64, 64)
    with pytest.raises(ValueError, match=r"expected a gradient of shape \(1, 7, 64, 64\)"):
        model.backward(np.zeros((1, NUM_CLASSES, 16, 16)))


def test_create_segmenter_is_seeded() -> None:
    a, b = create_segmenter("pvt_v2_b0", 3, seed=5), create_segmenter("pvt_v2_b0", 3, seed=5)
    c = create_segmenter("pvt_v2_b0", 3, seed=6)
    assert all(np.array_equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert not np.array_equal(a.state_dict()["head.conv_seg.weight"], c.state_dict()["head.conv_seg.weight"])
    assert float(np.std(a.state_dict()["head.conv_seg.weight"])) == pytest.approx(0.01, rel=0.1)
    assert rel_err(a.state_dict()["head.scale_heads.0.0.gn.weight"], np.ones(128)) == 0.0


def test_backward_without_input_grad_gives_the_same_parameter_gradients(rng: np.random.Generator) -> None:
    """``input_grad=False`` only skips the image gradient: every parameter's gradient is bit-identical."""
    model = create_segmenter("pvt_v2_b0", 3, fpn_channels=16, head_channels=8, num_groups=4, dtype=np.float64)
    x = rng.standard_normal((2, 3, 64, 48))
    dlogits = rng.standard_normal((2, 3, 64, 48))
    grads, returned = [], []
    for input_grad in (True, False):
        model.zero_grad()
        model(x)
        returned.append(model.backward(dlogits, input_grad=input_grad))
        grads.append({name: p.grad.copy() for name, p in model.named_parameters()})
    assert returned[0].shape == x.shape
    assert returned[1] is None
    assert grads[0].keys() == grads[1].keys() == dict(model.named_parameters()).keys()
    assert all(np.array_equal(grads[0][name], grads[1][name]) for name in grads[0])


def test_backward_pyramid_without_input_grad(rng: np.random.Generator) -> None:
    """The backbone alone: ``backward_pyramid(..., input_grad=False)`` returns None, parameter gradients unchanged."""
    backbone = pvt_np.create_model("pvt_v2_b0", 0, dtype=np.float64)
    x = rng.standard_normal((1, 3, 64, 64))
    grads, returned = [], []
    for input_grad in (True, False):
        backbone.zero_grad()
        maps = backbone.forward_pyramid(x)
        dmaps = [np.random.default_rng(i).standard_normal(m.shape) for i, m in enumerate(maps)]
        returned.append(backbone.backward_pyramid(dmaps, input_grad=input_grad))
        grads.append({name: p.grad.copy() for name, p in backbone.named_parameters()})
    assert returned[0].shape == x.shape
    assert returned[1] is None
    assert all(np.array_equal(grads[0][name], grads[1][name]) for name in grads[0])


def test_create_segmenter_is_exported_at_the_top_level() -> None:
    assert pvt_np.create_segmenter is create_segmenter
    assert "create_segmenter" in pvt_np.__all__


# --------------------------------------------------------------------------------------------
# levels: the head on a subset of the pyramid (the full pyramid against one map alone)
# --------------------------------------------------------------------------------------------
SUBSETS = [(3,), (0,), (1, 3)]
SUBSET_SIZE = (64, 48)  # maps 16x12, 8x6, 4x3, 2x2: level 3's x2 chain lands on 16x16 and is resized


def _grads(named: Any) -> tuple[dict[str, np.ndarray], list[str]]:
    """Parameter gradients as float64 NumPy by name, and the names that got none (in order)."""
    grads, none = {}, []
    for name, p in named:
        if p.grad is None:
            none.append(name)
        else:
            grads[name] = np.asarray(pvt_np.to_numpy(p.grad) if isinstance(p, pvt_np.nn.Parameter) else p.grad)
    return grads, none


@pytest.mark.parametrize("levels", SUBSETS, ids=str)
def test_subset_matches_torch_twin_float64(levels: tuple[int, ...]) -> None:
    """The segmenter with a subset of levels against the twin built with the same levels (float64, train mode):
    logits, input and parameter gradients; the stages after the last used map get no gradient on either side."""
    backbone = timm.create_model("pvt_v2_b0", num_classes=0)
    head = TorchSemanticFPNHead(
        tuple(f["num_chs"] for f in backbone.feature_info), FPN_CHANNELS, HEAD_CHANNELS, NUM_CLASSES, GROUPS, levels
    )
    twin = randomize_group_norms_(randomize_(TorchSegmenter(backbone, head).double(), seed=31), seed=32)
    ours = create_segmenter(
        "pvt_v2_b0", NUM_CLASSES, fpn_channels=FPN_CHANNELS, head_channels=HEAD_CHANNELS, num_groups=GROUPS,
        levels=levels, dtype=np.float64,
    ).load_state_dict(numpy_state(twin))  # fmt: skip
    rng = np.random.default_rng(len(levels))
    x = rng.standard_normal((2, 3, *SUBSET_SIZE))
    dlogits = rng.standard_normal((2, NUM_CLASSES, *SUBSET_SIZE))

    twin.zero_grad(set_to_none=True)
    xt = torch.from_numpy(x).requires_grad_(True)
    out = twin(xt)
    out.backward(torch.from_numpy(dlogits))
    ref_grads, ref_none = _grads(twin.named_parameters())

    ours.zero_grad()
    logits = ours(x)
    dx = ours.backward(dlogits)
    our_grads, our_none = _grads(ours.named_parameters())

    unused_stages = [f"backbone.stages.{j}." for j in range(max(levels) + 1, 4)]
    expected_none = [name for name in our_grads.keys() | set(our_none) if name.startswith(tuple(unused_stages))]
    assert sorted(our_none) == sorted(ref_none) == sorted(expected_none)
    assert list(our_grads) == list(ref_grads)
    errors = {"logits": rel_err(logits, out.detach().numpy()), "input": rel_err(dx, xt.grad.numpy())}
    errors.update({name: rel_err(our_grads[name], ref_grads[name]) for name in ref_grads})
    assert_all_close(errors, F64_TOL, f"levels={levels} against the twin")


@pytest.mark.parametrize("levels", SUBSETS, ids=str)
def test_subset_parameter_names_are_the_full_heads(levels: tuple[int, ...]) -> None:
    """Only the kept levels' modules, under the full head's names and shapes (so a full head's weights load)."""
    full = dict(SemanticFPNHead(HEAD_IN, 4, 4, 3, 2).named_parameters())
    sub = dict(SemanticFPNHead(HEAD_IN, 4, 4, 3, 2, levels=levels).named_parameters())
    kept = {
        name: p.shape for name, p in full.items() if name.startswith("conv_seg") or int(name.split(".")[1]) in levels
    }
    assert {name: p.shape for name, p in sub.items()} == kept
    assert list(sub) == [name for name in full if name in kept]


class _HeadOnMap(Module):
    """The head as a one-input module (map ``index`` varies, the others are fixed)."""

    def __init__(self, head: SemanticFPNHead, maps: list[np.ndarray], index: int) -> None:
        super().__init__()
        self.head, self.maps, self.index = head, maps, index

    def forward(self, x: np.ndarray) -> np.ndarray:
        return self.head([x if i == self.index else m for i, m in enumerate(self.maps)], HEAD_OUT)

    def backward(self, dout: np.ndarray) -> np.ndarray:
        return self.head.backward(dout)[self.index]


@pytest.mark.parametrize("levels", [(1, 3), (3,)], ids=str)
def test_gradcheck_subset_head(levels: tuple[int, ...], rng: np.random.Generator) -> None:
    """Gradcheck of the used maps and of every parameter; the unused maps' gradients are None. Level 3 is 2x2
    here: on a 1x1 map its first GroupNorm normalises 2 values per group, too few for central differences."""
    maps = [rng.standard_normal((2, c, 2 * h, 2 * w)) for c, (h, w) in zip(HEAD_IN, HEAD_MAPS, strict=True)]
    head = SemanticFPNHead(HEAD_IN, 4, 4, 3, 2, dtype=np.float64, levels=levels)
    for name, p in head.named_parameters():
        p.data = (1.0 if name.endswith("gn.weight") else 0.0) + 0.3 * rng.standard_normal(p.shape)

    def run(*used: np.ndarray) -> tuple[np.ndarray, None]:
        full = list(maps)
        for i, m in zip(levels, used, strict=True):
            full[i] = m
        return head(full, HEAD_OUT), None

    def back(dout: np.ndarray, _cache: None) -> list[np.ndarray]:
        dmaps = head.backward(dout)
        assert [i for i, g in enumerate(dmaps) if g is not None] == list(levels)
        return [dmaps[i] for i in levels]

    names = [f"map{i}" for i in levels]
    errors = pvt_np.gradcheck((run, back), [maps[i] for i in levels], names=names)
    assert sorted(errors) == names
    wrapped_errors = pvt_np.gradcheck(_HeadOnMap(head, maps, levels[0]), maps[levels[0]])
    assert sorted(wrapped_errors) == sorted(["input", *(f"head.{n}" for n, _ in head.named_parameters())])
    assert_all_close({**errors, **wrapped_errors}, GRADCHECK_TOL, f"gradcheck SemanticFPNHead levels={levels}")


@pytest.mark.parametrize("levels", SUBSETS, ids=str)
def test_flops_count_only_the_kept_levels(levels: tuple[int, ...]) -> None:
    """count_flops charges the kept levels' modules exactly as the full head does, and nothing of the others."""
    size, side = 128, 32

    def head_rows(model: SemanticSegmenter) -> dict[str, int]:
        rows = pvt_np.complexity.flops_breakdown(model, size, depth="layer")
        return {r.name: r.flops for r in rows if r.name.startswith("head.")}

    full = head_rows(create_segmenter("pvt_v2_b0", 150))
    model = create_segmenter("pvt_v2_b0", 150, levels=levels)
    sub = head_rows(model)
    kept = {
        name: flops
        for name, flops in full.items()
        if name == "head.conv_seg" or (name != "head.interpolate" and int(name.split(".")[2]) in levels)
    }
    assert {name: flops for name, flops in sub.items() if name != "head.interpolate"} == kept
    # the top-down nearest upsamplings between kept neighbours (256 channels), and the final x4 to 128x128
    top_down = sum((side >> finer) ** 2 for finer, _ in itertools.pairwise(levels))
    assert sub["head.interpolate"] == 256 * top_down + 150 * size**2
    backbone = pvt_np.count_flops(pvt_np.create_model("pvt_v2_b0", num_classes=0), size)
    assert pvt_np.count_flops(model, size) == backbone + sum(sub.values())


@pytest.mark.parametrize("levels", [(), (1, 0), (2, 2), (4,), (-1,), (0.0,), (True,), 3, "0"], ids=repr)
def test_bad_levels_are_refused(levels: Any) -> None:
    with pytest.raises(ValueError, match=r"levels must be a non-empty, sorted sequence of unique ints in 0\.\.3"):
        SemanticFPNHead(HEAD_IN, 4, 4, 3, 2, levels=levels)
    with pytest.raises(ValueError, match="levels"):
        create_segmenter("pvt_v2_b0", 3, levels=levels)
