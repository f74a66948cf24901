"""Semantic segmentation on PVT v2's four maps: a Semantic FPN head (Kirillov et al. 2019, "Panoptic Feature
Pyramid Networks", arXiv 1901.02446, the head PVT v2 used on ADE20K) with hand-written backward passes.

The structure follows mmsegmentation's ``FPN`` neck (``mmseg/models/necks/fpn.py``) followed by its ``FPNHead``
decode head (``mmseg/models/decode_heads/fpn_head.py``), the pair the PVT v2 segmentation configs build, and
the parameter names follow theirs (``lateral_convs.i.conv``, ``fpn_convs.i.conv``, ``scale_heads.i.j.conv`` /
``.gn``, ``conv_seg``), so the keys of such a checkpoint map onto these by a prefix:

* **neck**: a 1x1 conv with bias per level (``lateral_convs``, no norm, no activation); the top-down path adds to
  each level its coarser neighbour, already merged, upsampled by nearest interpolation to the finer map's size
  (mmseg's default ``upsample_cfg``: ``size=`` the finer shape, which is x2 when the sides are even); then a 3x3
  conv with bias per level (``fpn_convs``), all with ``fpn_channels`` outputs;
* **scale heads**: level i (stride 4 * 2^i) gets max(1, i) blocks of conv3x3 (no bias) -> GroupNorm -> ReLU
  (mmcv's ``ConvModule`` with a norm drops the conv bias), each followed by a bilinear x2 upsampling
  (align_corners=False) for the levels coarser than stride 4; a level whose upsampled map is not the size of the
  stride-4 map (odd inputs) is resized to it bilinearly, as ``FPNHead`` does;
* **fusion and classifier**: the four outputs are summed, a 1x1 conv with bias (``conv_seg``) gives the class
  logits at stride 4, and a bilinear resize (align_corners=False) brings them to the input size, as mmseg's
  ``EncoderDecoder`` does at the end.

Choices where the references leave one open: the norm is GroupNorm with ``num_groups`` groups (32 by default,
Panoptic FPN's choice; the PVT v2 ADE20K config used synchronised BatchNorm, whose batch statistics a
single-process NumPy model would not reproduce), and the classifier has no dropout (mmseg's ``FPNHead`` puts a
channel-wise ``Dropout2d(0.1)`` before ``conv_seg``; there is no channel-wise dropout op here).

``levels`` picks the maps the head uses (all four by default): a subset builds the lateral conv, the fpn conv
and the scale head of its levels only, under the indices the full head gives them (so a kept level's weights load
from a full head's checkpoint); the top-down path adds to each kept level its merged coarser kept neighbour
(nearest, to the finer map's size), and every scale head still ends at the stride-4 map's size. ``levels=(3,)``
is the stride-32 map alone (as a plain ViT would give) through three conv-GN-ReLU + x2 blocks; ``levels=(0,)`` is
the stride-4 map alone. The unused maps get no gradient (None), so the backbone runs no backward for the stages
after the last used one.

The head runs channels-last, like the backbone: ``forward_pyramid``'s NCHW maps are views of NHWC arrays, so
transposing them back costs nothing, and the logits come back as an NCHW view of the NHWC result.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from pvt_np import backend, ops
from pvt_np.backend import Array
from pvt_np.models.pvt_v2 import PyramidVisionTransformerV2
from pvt_np.nn import Conv2d, GroupNorm, Module, Parameter, ReLU, Sequential, Upsample
from pvt_np.ops.checks import check_array

#: Panoptic FPN's GroupNorm groups (Kirillov et al., semantic branch).
DEFAULT_GN_GROUPS = 32


class ConvModule(Module):
    """Conv2d, then optionally GroupNorm and ReLU, on channels-last maps (mmcv's ``ConvModule``).

    The conv has a bias only without a norm (a bias before a norm is absorbed by the norm's mean).

    Ops: ``pvt_np.ops.conv2d_forward`` / ``_backward``; with a norm ``group_norm_forward`` / ``_backward``
    and ``relu_forward`` / ``_backward``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        norm_groups: int | None = None,
        dtype: Any = np.float32,
    ) -> None:
        super().__init__()
        with_norm = norm_groups is not None
        self.conv = Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            padding=kernel_size // 2,
            bias=not with_norm,
            dtype=dtype,
            channels_last=True,
        )
        self.gn = GroupNorm(norm_groups, out_channels, channels_last=True, dtype=dtype) if with_norm else None
        self.activate = ReLU() if with_norm else None

    def forward(self, x: Array) -> Array:
        y = self.conv(x)
        if self.gn is not None:
            y = self.activate(self.gn(y))
        return y

    def backward(self, dout: Array) -> Array:
        if self.gn is not None:
            dout = self.gn.backward(self.activate.backward(dout))
        return self.conv.backward(dout)


class LevelModules(Module):
    """Modules registered under their pyramid level's index ('0'..'3'), possibly with gaps, as torch's
    ``ModuleList`` of the full head names them; indexing takes the level."""

    def __init__(self, modules: dict[int, Module]) -> None:
        super().__init__()
        for level, module in modules.items():
            setattr(self, str(level), module)

    def __getitem__(self, level: int) -> Module:
        return self._modules[str(level)]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())


def check_levels(levels: Any, num_levels: int = 4) -> tuple[int, ...]:
    """``levels`` as a tuple: non-empty, sorted, unique ints in 0..num_levels-1, else a ValueError naming it."""
    try:
        values = tuple(levels)
    except TypeError:
        values = None
    ok = (
        values is not None
        and len(values) > 0
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values)
        and all(0 <= v < num_levels for v in values)
        and all(a < b for a, b in itertools.pairwise(values))
    )
    if not ok:
        raise ValueError(
            f"SemanticFPNHead: levels must be a non-empty, sorted sequence of unique ints in 0..{num_levels - 1} "
            f"(the pyramid maps the head uses), got {levels!r}"
        )
    return tuple(int(v) for v in values)


class SemanticFPNHead(Module):
    """Semantic FPN on four maps (strides 4, 8, 16, 32): lateral 1x1 convs, a top-down path (nearest
    upsampling and add), a 3x3 conv per level, per-level scale heads (conv3x3-GN-ReLU blocks and bilinear x2
    upsamplings down to stride 4), their sum, a 1x1 classifier and a bilinear resize to the output size; see the
    module docstring for the structure and the references. ``levels`` (default all four) are the indices of the
    maps the head uses; see the module docstring for what a subset builds.

    ``logits = head(maps, size)`` takes the four NCHW maps (as ``forward_pyramid`` returns them) and the output
    (H, W), and returns (N, num_classes, H, W); ``dmaps = head.backward(dlogits)`` returns the four maps'
    gradients (NCHW; None for a map not in ``levels``) and adds every parameter's gradient to its ``.grad``.

    Ops: those of :class:`ConvModule` (conv2d, group_norm, relu) and ``pvt_np.ops.interpolate_forward`` /
    ``_backward`` (the nearest top-down upsampling, the bilinear upsamplings of the scale heads, the resizes to
    the stride-4 size and to the output size).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        fpn_channels: int = 256,
        head_channels: int = 128,
        num_classes: int = 150,
        num_groups: int = DEFAULT_GN_GROUPS,
        dtype: Any = np.float32,
        levels: Sequence[int] = (0, 1, 2, 3),
    ) -> None:
        super().__init__()
        in_channels = tuple(in_channels)
        if len(in_channels) != 4:
            raise ValueError(f"SemanticFPNHead: in_channels needs 4 values (one per map), got {in_channels}")
        for name, value in (("fpn_channels", fpn_channels), ("head_channels", head_channels)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"SemanticFPNHead: {name} must be a positive int, got {value!r}")
        if not isinstance(num_classes, (int, np.integer)) or isinstance(num_classes, bool) or num_classes < 1:
            raise ValueError(f"SemanticFPNHead: num_classes must be a positive int, got {num_classes!r}")
        if head_channels % num_groups:
            raise ValueError(
                f"SemanticFPNHead: num_groups={num_groups} must divide head_channels={head_channels} (GroupNorm)"
            )
        self.levels = check_levels(levels, len(in_channels))
        self.in_channels = in_channels
        self.fpn_channels, self.head_channels = int(fpn_channels), int(head_channels)
        self.num_classes, self.num_groups = int(num_classes), int(num_groups)
        self.lateral_convs = LevelModules(
            {i: ConvModule(in_channels[i], fpn_channels, 1, dtype=dtype) for i in self.levels}
        )
        self.fpn_convs = LevelModules({i: ConvModule(fpn_channels, fpn_channels, 3, dtype=dtype) for i in self.levels})
        scale_heads = {}
        for level in self.levels:
            layers: list[Module] = []
            for k in range(max(1, level)):
                layers.append(
                    ConvModule(fpn_channels if k == 0 else head_channels, head_channels, 3, num_groups, dtype=dtype)
                )
                if level > 0:
                    layers.append(Upsample(scale_factor=2, mode="bilinear", channels_last=True))
            scale_heads[level] = Sequential(*layers)
        self.scale_heads = LevelModules(scale_heads)
        self.conv_seg = Conv2d(head_channels, num_classes, 1, dtype=dtype, channels_last=True)

    def _resize(self, x: Array, size: tuple[int, int], mode: str) -> tuple[Array, Any]:
        """x resized to ``size`` (channels-last), and the cache (None when x already has that size)."""
        if tuple(x.shape[1:3]) == tuple(size):
            return x, None
        return ops.interpolate_forward(x, size, None, mode, True, layer=self._label())

    @staticmethod
    def _resize_backward(dout: Array, cache: Any) -> Array:
        return dout if cache is None else ops.interpolate_backward(dout, cache)

    def forward(self, maps: Sequence[Array], size: tuple[int, int]) -> Array:
        if len(maps) != len(self.in_channels):
            raise ValueError(f"SemanticFPNHead: expected {len(self.in_channels)} maps, got {len(maps)}")
        for i, (m, c) in enumerate(zip(maps, self.in_channels, strict=True)):
            check_array(m, self._label(), f"map {i}")
            if m.ndim != 4 or m.shape[1] != c:
                raise ValueError(f"SemanticFPNHead: map {i} must have shape (N, {c}, H, W), got {tuple(m.shape)}")
        levels = self.levels
        laterals = {i: self.lateral_convs[i](maps[i].transpose(0, 2, 3, 1)) for i in levels}
        top_down = {}
        for finer, i in reversed(list(itertools.pairwise(levels))):
            up, top_down[i] = self._resize(laterals[i], laterals[finer].shape[1:3], "nearest")
            laterals[finer] = laterals[finer] + up
        # The stride-4 map's size, whether or not level 0 is used: every scale head ends there.
        base_size = tuple(maps[0].shape[2:])
        fused, to_base = None, {}
        for i in levels:
            out, to_base[i] = self._resize(self.scale_heads[i](self.fpn_convs[i](laterals[i])), base_size, "bilinear")
            fused = out if fused is None else fused + out
        logits, to_output = self._resize(self.conv_seg(fused), tuple(size), "bilinear")
        self._save((top_down, to_base, to_output))
        return logits.transpose(0, 3, 1, 2)

    def backward(self, dlogits: Array) -> list[Array | None]:
        top_down, to_base, to_output = self._pop_cache()
        dfused = self.conv_seg.backward(self._resize_backward(dlogits.transpose(0, 2, 3, 1), to_output))
        levels = self.levels
        dlaterals = {
            i: self.fpn_convs[i].backward(self.scale_heads[i].backward(self._resize_backward(dfused, to_base[i])))
            for i in reversed(levels)
        }
        # laterals[finer] += up(laterals[i]) ran from the coarsest level down, so its gradients flow back upwards.
        for finer, i in itertools.pairwise(levels):
            dlaterals[i] = dlaterals[i] + self._resize_backward(dlaterals[finer], top_down[i])
        return [
            self.lateral_convs[i].backward(dlaterals[i]).transpose(0, 3, 1, 2) if i in dlaterals else None
            for i in range(len(self.in_channels))
        ]

    def init_weights(self, seed: int = 0) -> SemanticFPNHead:
        """mmseg's initialisation, reproducible from ``seed``: the neck's convs (lateral and fpn) Xavier-uniform,
        bound sqrt(6 / (fan_in + fan_out)); the scale heads' convs Kaiming-normal for ReLU, std sqrt(2 / fan_out)
        with fan_out = out_channels * kh * kw (mmcv's ``ConvModule``); the classifier normal(0, 0.01); every
        bias zeros, every GroupNorm ones and zeros."""
        rng = np.random.default_rng(seed)

        def set_(p: Parameter, values: np.ndarray) -> None:
            p.data = backend.to_device(values.astype(p.data.dtype), backend.device_of(p.data))

        for module in [*self.lateral_convs, *self.fpn_convs]:
            out_c, in_c, kh, kw = module.conv.weight.shape
            bound = np.sqrt(6.0 / (in_c * kh * kw + out_c * kh * kw))
            set_(module.conv.weight, rng.uniform(-bound, bound, module.conv.weight.shape))
            set_(module.conv.bias, np.zeros(module.conv.bias.shape))
        for scale_head in self.scale_heads:
            for module in scale_head:
                if isinstance(module, ConvModule):
                    out_c, _, kh, kw = module.conv.weight.shape
                    set_(
                        module.conv.weight, rng.normal(0.0, np.sqrt(2.0 / (out_c * kh * kw)), module.conv.weight.shape)
                    )
                    set_(module.gn.weight, np.ones(module.gn.weight.shape))
                    set_(module.gn.bias, np.zeros(module.gn.bias.shape))
        set_(self.conv_seg.weight, rng.normal(0.0, 0.01, self.conv_seg.weight.shape))
        set_(self.conv_seg.bias, np.zeros(self.conv_seg.bias.shape))
        return self

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, fpn_channels={self.fpn_channels}, head_channels={self.head_channels}, "
            f"num_classes={self.num_classes}, num_groups={self.num_groups}, levels={self.levels}"
        )


class SemanticSegmenter(Module):
    """A PVT v2 backbone and a :class:`SemanticFPNHead`: ``logits = model(x)`` gives per-pixel class logits
    (N, num_classes, H, W) for NCHW images (N, in_chans, H, W); ``dx = model.backward(dlogits)`` runs the head's
    backward, then the backbone's ``backward_pyramid`` (None for the maps the head does not use), and returns the
    input gradient (None with ``input_grad=False``).

    The backbone should have no classification head (``num_classes=0``): its parameters would get no gradient.
    With a head on a subset of the maps (``levels``), the stages after the last map it uses get none either
    (optimizers skip a parameter whose ``.grad`` is None).

    Ops: those of :class:`PyramidVisionTransformerV2` (``forward_pyramid``) and of :class:`SemanticFPNHead`.
    """

    def __init__(self, backbone: PyramidVisionTransformerV2, head: SemanticFPNHead) -> None:
        super().__init__()
        if tuple(backbone.embed_dims) != tuple(head.in_channels):
            raise ValueError(
                f"SemanticSegmenter: the head's in_channels {tuple(head.in_channels)} must equal the backbone's "
                f"embed_dims {tuple(backbone.embed_dims)}"
            )
        self.backbone = backbone
        self.head = head
        self.num_classes = head.num_classes
        self.set_names()

    @property
    def in_chans(self) -> int:
        return self.backbone.in_chans

    def feature_sizes(self, height: int, width: int) -> list[tuple[int, int]]:
        """The backbone's map sizes for a height x width input (a clear error when it is too small)."""
        return self.backbone.feature_sizes(height, width)

    def forward(self, x: Array) -> Array:
        maps = self.backbone.forward_pyramid(x)
        self._save(tuple(x.shape))
        return self.head(maps, x.shape[2:])

    def backward(self, dlogits: Array, input_grad: bool = True) -> Array | None:
        """Input gradient (N, in_chans, H, W), or None with ``input_grad=False`` (training needs none)."""
        x_shape = self._peek_cache()
        expected = (x_shape[0], self.num_classes, *x_shape[2:])
        check_array(dlogits, self._label(), "gradient")
        if tuple(dlogits.shape) != expected:
            raise ValueError(
                f"{self._label()}.backward: expected a gradient of shape {expected} (like the logits), "
                f"got {tuple(dlogits.shape)}"
            )
        self._pop_cache()
        return self.backbone.backward_pyramid(self.head.backward(dlogits), input_grad)
