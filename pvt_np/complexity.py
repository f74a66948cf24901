"""Parameters and FLOPs of a PVT v2 model, per layer, per stage and in total, without running it.

The counts follow the convention of the official PVT code (whai362/PVT,
``classification/get_flops.py``), so the paper's table is reproduced: that
script takes mmcv's ``get_model_complexity_info`` (forward hooks on torch
layers, ``mmcv/cnn/utils/flops_counter.py``) and adds the two attention
matmuls, which are tensor products inside ``Attention.forward`` that no hook
sees. mmcv's "FLOPs" are multiply-accumulates for convs and linears, so one
"FLOP" here is one MAC there. Per layer, for batch 1:

* Conv2d: kh * kw * (C_in / groups) * C_out MACs per output position, plus
  C_out bias adds per output position when the conv has a bias
  (mmcv ``conv_flops_counter_hook``).
* Linear: (number of input elements) * out_features MACs; the bias is not
  counted (mmcv ``linear_flops_counter_hook``).
* LayerNorm: 2 per input element (normalise, then the affine scale/shift;
  pvt_np's LayerNorm is always affine, mmcv doubles when ``elementwise_affine``).
* ReLU: 1 per output element (mmcv ``relu_flops_counter_hook``).
* AdaptiveAvgPool2d: 1 per INPUT element (mmcv ``pool_flops_counter_hook``).
* GELU, softmax, dropout, drop-path, identity, the residual adds and the final
  token mean: 0 (mmcv has no hook for them, or they are not modules).
* Attention: 2 * N * M * C for N queries, M keys and C channels (N*M*C for
  q @ k^T summed over heads, N*M*C for attn @ v); M = N for full attention,
  (H/R)(W/R) for spatial-reduction attention with ratio R, pool_size^2 for
  linear SRA (the official ``sra_flops`` and ``li_sra_flops``).
* Parameters: every parameter element, the classification head included
  (mmcv's ``get_model_parameters_number``; get_flops.py builds the model with
  ``num_classes=1000``).

Where this differs from the official script (never at the paper's 224x224):
get_flops.py computes the attention term from H//4, H//8, H//16, H//32 and a
hard-coded 7x7 pool, while here the map sizes come from the conv arithmetic of
the model's own layers (kernel, stride, padding) and the pool size from the
module, so a custom stem (``cifar=True``), custom sr_ratios, or an input that is
not a multiple of 32 is counted as it actually runs.

The count is analytic: the module tree is walked with the activation shapes
(no forward pass), so b5 at any size costs milliseconds.
"""

from __future__ import annotations

import argparse
import operator
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from math import prod
from typing import TextIO

from pvt_np.models import (
    Attention,
    Block,
    MlpWithDepthwiseConv,
    OverlapPatchEmbed,
    PyramidVisionTransformerStage,
    PyramidVisionTransformerV2,
    create_model,
    list_models,
)
from pvt_np.nn import (
    GELU,
    AdaptiveAvgPool2d,
    Conv2d,
    Dropout,
    DropPath,
    Identity,
    LayerNorm,
    Linear,
    Module,
    ModuleList,
    ReLU,
    Sequential,
    Softmax,
)
from pvt_np.ops import conv_output_size

Shape = tuple[int, ...]

DEPTHS = ("stage", "block", "layer")

# The PVT v2 paper's Table (arXiv 2106.13797, ImageNet-1K at 224x224): params (M, 1000-class head) and GFLOPs.
PAPER_TABLE: dict[str, tuple[float, float]] = {
    "pvt_v2_b0": (3.7, 0.6),
    "pvt_v2_b1": (14.0, 2.1),
    "pvt_v2_b2": (25.4, 4.0),
    "pvt_v2_b2_li": (22.6, 3.9),
    "pvt_v2_b3": (45.2, 6.9),
    "pvt_v2_b4": (62.6, 10.1),
    "pvt_v2_b5": (82.0, 11.8),
}

_ATTENTION_KIND = "AttentionMatmul"
_ZERO_COST = (GELU, Softmax, Dropout, DropPath, Identity)


@dataclass(frozen=True)
class LayerCost:
    """One row of a breakdown.

    ``name`` is the dotted module name (the attention matmuls, not a module,
    appear as ``<attention>.matmul``); ``kind`` the class name; ``output_shape``
    the per-sample shape (batch dimension dropped) in the layout the pvt_np
    module returns: (C, H, W) for the stem conv, (H, W, C) for channels-last
    convs, pools and embeddings, (N, C) for tokens; ``params`` the parameter
    elements; ``flops`` the count under the rules in this module's docstring.
    """

    name: str
    kind: str
    output_shape: Shape
    params: int
    flops: int
    note: str = ""


@dataclass
class _Node:
    name: str
    kind: str
    output_shape: Shape
    params: int = 0
    flops: int = 0
    note: str = ""
    module: Module | None = None
    children: list[_Node] = field(default_factory=list)

    def add(self, child: _Node) -> _Node:
        self.children.append(child)
        self.params += child.params
        self.flops += child.flops
        self.output_shape = child.output_shape
        return child

    def row(self) -> LayerCost:
        return LayerCost(self.name, self.kind, self.output_shape, self.params, self.flops, self.note)


# ---------------------------------------------------------------------------
# parameters
# ---------------------------------------------------------------------------
def count_params(model: Module) -> int:
    """Number of parameter elements (weights and biases, the head included)."""
    return sum(p.size for p in model.parameters())


def _own_params(module: Module) -> int:
    return sum(p.size for p in module._parameters.values())


# ---------------------------------------------------------------------------
# the analytic attention cost
# ---------------------------------------------------------------------------
def attention_flops(
    h: int, w: int, c: int, mode: str = "full", *, sr_ratio: int = 1, pool_size: int = 7, exact: bool = True
) -> float:
    """FLOPs (MACs) of one attention layer's two matmuls, q @ k^T and attn @ v, on an h x w map of c channels.

    * ``mode="full"``: 2 (hw)^2 c -- every token attends to every token;
    * ``mode="sra"`` (ratio ``sr_ratio`` = R): 2 hw (h/R)(w/R) c = 2 (hw)^2 c / R^2;
    * ``mode="linear"`` (linear SRA, ``pool_size`` = P): 2 hw P^2 c, linear in the number of tokens.

    With ``exact=True`` (default) the reduced map is (h // R) x (w // R), as the
    stride-R conv produces it (and as the official get_flops.py's ``sra_flops``),
    and an int is returned; ``exact=False`` gives the idealised 2 (hw)^2 c / R^2
    as a float (the same when R divides h and w). The projections (q, kv, proj,
    the SR conv) are not included: they are counted per layer by :func:`count_flops`.
    """
    for label, v in (("h", h), ("w", w), ("c", c), ("sr_ratio", sr_ratio), ("pool_size", pool_size)):
        if int(v) != v or v < 1:
            raise ValueError(f"attention_flops: {label} must be a positive integer, got {v!r}")
    n = h * w
    if mode == "full":
        return 2 * n * n * c
    if mode == "sra":
        if exact:
            return 2 * n * (h // sr_ratio) * (w // sr_ratio) * c
        return 2 * n * n * c / sr_ratio**2
    if mode == "linear":
        return 2 * n * pool_size * pool_size * c
    raise ValueError(f"attention_flops: mode must be 'full', 'sra' or 'linear', got {mode!r}")


# ---------------------------------------------------------------------------
# leaf layers
# ---------------------------------------------------------------------------
def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _leaf(module: Module, name: str, shape: Shape) -> _Node:
    """The cost of one torch-like layer on a per-sample input of ``shape`` (rules in the module docstring)."""
    kind = type(module).__name__
    params = _own_params(module)
    if isinstance(module, Conv2d):
        if len(shape) != 3:
            raise ValueError(f"complexity: Conv2d '{name}' expects a 3-D per-sample shape, got {shape}")
        (h, w, c) = shape if module.channels_last else (shape[1], shape[2], shape[0])
        if c != module.in_channels:
            raise ValueError(f"complexity: Conv2d '{name}' expects {module.in_channels} channels, got shape {shape}")
        (kh, kw), (sh, sw), (ph, pw) = module.kernel_size, module.stride, module.padding
        ho, wo = conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)
        if ho < 1 or wo < 1:
            raise ValueError(
                f"complexity: input {h}x{w} is too small for Conv2d '{name}' (kernel {module.kernel_size}, "
                f"padding {module.padding}): output would be {ho}x{wo}"
            )
        positions = ho * wo
        macs = kh * kw * (module.in_channels // module.groups) * module.out_channels * positions
        bias_adds = module.out_channels * positions if module.bias is not None else 0
        out = (ho, wo, module.out_channels) if module.channels_last else (module.out_channels, ho, wo)
        return _Node(name, kind, out, params, macs + bias_adds, module=module)
    if isinstance(module, Linear):
        if not shape or shape[-1] != module.in_features:
            raise ValueError(f"complexity: Linear '{name}' expects (..., {module.in_features}), got {shape}")
        return _Node(
            name, kind, (*shape[:-1], module.out_features), params, prod(shape) * module.out_features, module=module
        )
    if isinstance(module, LayerNorm):
        if not shape or shape[-1] != module.normalized_shape[0]:
            raise ValueError(f"complexity: LayerNorm '{name}' expects (..., {module.normalized_shape[0]}), got {shape}")
        return _Node(name, kind, shape, params, 2 * prod(shape), module=module)
    if isinstance(module, ReLU):
        return _Node(name, kind, shape, params, prod(shape), module=module)
    if isinstance(module, AdaptiveAvgPool2d):
        if len(shape) != 3:
            raise ValueError(f"complexity: AdaptiveAvgPool2d '{name}' expects a 3-D per-sample shape, got {shape}")
        oh, ow = module.output_size
        out = (oh, ow, shape[2]) if module.channels_last else (shape[0], oh, ow)
        return _Node(name, kind, out, params, prod(shape), module=module)
    if isinstance(module, _ZERO_COST):
        return _Node(name, kind, shape, params, 0, module=module)
    raise TypeError(f"complexity: no counting rule for {kind} at '{name}'")


# ---------------------------------------------------------------------------
# PVT v2 composites (shapes routed as their forward passes route them)
# ---------------------------------------------------------------------------
def _visit(module: Module, name: str, shape: Shape) -> _Node:
    """A module that takes a single array (leaf layers, patch embeddings, stages, Sequential)."""
    if isinstance(module, OverlapPatchEmbed):
        return _patch_embed(module, name, shape)
    if isinstance(module, PyramidVisionTransformerStage):
        return _stage(module, name, shape)
    if isinstance(module, Sequential):
        node = _Node(name, type(module).__name__, shape, _own_params(module), module=module)
        for i, child in enumerate(module):
            node.add(_visit(child, _join(name, str(i)), node.output_shape))
        return node
    if isinstance(module, (Block, Attention, MlpWithDepthwiseConv)):
        raise TypeError(f"complexity: {type(module).__name__} '{name}' needs its map size; visit it from its stage")
    if module._modules:
        raise TypeError(f"complexity: no counting rule for composite {type(module).__name__} at '{name}'")
    return _leaf(module, name, shape)


def _patch_embed(module: OverlapPatchEmbed, name: str, shape: Shape) -> _Node:
    """proj conv (NCHW in at the stem, NHWC between stages), to NHWC, LayerNorm."""
    node = _Node(name, type(module).__name__, shape, _own_params(module), module=module)
    proj = node.add(_leaf(module.proj, _join(name, "proj"), shape))
    fmap = proj.output_shape if module.channels_last_input else (*proj.output_shape[1:], proj.output_shape[0])
    node.add(_visit(module.norm, _join(name, "norm"), fmap))
    return node


def _attention(module: Attention, name: str, shape: Shape, feat_size: tuple[int, int]) -> _Node:
    """q; keys/values from the (pooled, reduced, normalised) map; the two matmuls; proj."""
    node = _Node(name, type(module).__name__, shape, _own_params(module), module=module)
    n, c = shape
    node.add(_visit(module.q, _join(name, "q"), shape))
    kv_in: Shape = shape
    if module.sr is not None:
        fmap: Shape = (*feat_size, c)
        if module.pool is not None:
            fmap = node.add(_visit(module.pool, _join(name, "pool"), fmap)).output_shape
        fmap = node.add(_visit(module.sr, _join(name, "sr"), fmap)).output_shape
        kv_in = (fmap[0] * fmap[1], fmap[2])
        if module.norm is not None:
            kv_in = node.add(_visit(module.norm, _join(name, "norm"), kv_in)).output_shape
        if module.act is not None:
            kv_in = node.add(_visit(module.act, _join(name, "act"), kv_in)).output_shape
    m = kv_in[0]
    node.add(_visit(module.kv, _join(name, "kv"), kv_in))
    node.add(_Node(_join(name, "matmul"), _ATTENTION_KIND, (n, c), 0, 2 * n * m * c, note=f"N={n} M={m} C={c}"))
    node.add(_visit(module.proj, _join(name, "proj"), (n, c)))
    node.add(_visit(module.proj_drop, _join(name, "proj_drop"), (n, c)))
    return node


def _mlp(module: MlpWithDepthwiseConv, name: str, shape: Shape, feat_size: tuple[int, int]) -> _Node:
    """fc1, ReLU (linear variant), 3x3 depthwise conv on the map, GELU, dropout, fc2, dropout."""
    node = _Node(name, type(module).__name__, shape, _own_params(module), module=module)
    hidden = node.add(_visit(module.fc1, _join(name, "fc1"), shape)).output_shape
    hidden = node.add(_visit(module.relu, _join(name, "relu"), hidden)).output_shape
    fmap = node.add(_visit(module.dwconv, _join(name, "dwconv"), (*feat_size, hidden[-1]))).output_shape
    tokens: Shape = (fmap[0] * fmap[1], fmap[2])
    for attr in ("act", "drop1", "fc2", "drop2"):
        tokens = node.add(_visit(getattr(module, attr), _join(name, attr), tokens)).output_shape
    return node


def _block(module: Block, name: str, shape: Shape, feat_size: tuple[int, int]) -> _Node:
    """norm1, attention, drop-path; norm2, MLP, drop-path (the residual adds are not counted)."""
    node = _Node(name, type(module).__name__, shape, _own_params(module), module=module)
    node.add(_visit(module.norm1, _join(name, "norm1"), shape))
    node.add(_attention(module.attn, _join(name, "attn"), shape, feat_size))
    node.add(_visit(module.drop_path1, _join(name, "drop_path1"), shape))
    node.add(_visit(module.norm2, _join(name, "norm2"), shape))
    node.add(_mlp(module.mlp, _join(name, "mlp"), shape, feat_size))
    node.add(_visit(module.drop_path2, _join(name, "drop_path2"), shape))
    node.output_shape = shape
    return node


def _stage(module: PyramidVisionTransformerStage, name: str, shape: Shape) -> _Node:
    """Downsample embedding (stages 2-4), the blocks on (N, C) tokens, LayerNorm; returns the (H, W, C) map."""
    node = _Node(name, type(module).__name__, shape, _own_params(module), module=module)
    fmap = shape
    if module.downsample is not None:
        fmap = node.add(_visit(module.downsample, _join(name, "downsample"), fmap)).output_shape
    h, w, c = fmap
    tokens: Shape = (h * w, c)
    blocks_name = _join(name, "blocks")
    blocks = _Node(blocks_name, type(module.blocks).__name__, tokens, _own_params(module.blocks), module=module.blocks)
    for i, blk in enumerate(module.blocks):
        if not isinstance(blk, Block):
            raise TypeError(f"complexity: no counting rule for {type(blk).__name__} at '{blocks_name}.{i}'")
        blocks.add(_block(blk, _join(blocks_name, str(i)), tokens, (h, w)))
    node.add(blocks)
    node.add(_visit(module.norm, _join(name, "norm"), tokens))
    node.output_shape = (h, w, c)
    return node


def _check_input_size(input_size: int | Sequence[int]) -> tuple[int, int]:
    """(H, W) from an int (square) or a pair of ints; a clear error otherwise."""
    try:
        if isinstance(input_size, bool):
            raise TypeError
        size = (operator.index(input_size),) * 2 if not isinstance(input_size, Sequence) else tuple(input_size)
        if len(size) != 2 or any(isinstance(v, bool) for v in size):
            raise TypeError
        height, width = operator.index(size[0]), operator.index(size[1])
    except TypeError:
        raise ValueError(
            f"complexity: input_size must be an int or a pair of ints (H, W), got {input_size!r}"
        ) from None
    if min(height, width) < 1:
        raise ValueError(f"complexity: input_size must be positive, got {(height, width)}")
    return height, width


def _walk(model: Module, input_size: int | Sequence[int]) -> _Node:
    """The cost tree of ``model`` on one input image of ``input_size``; the root holds the totals."""
    if not isinstance(model, PyramidVisionTransformerV2):
        raise TypeError(f"complexity: expected a PyramidVisionTransformerV2, got {type(model).__name__}")
    height, width = _check_input_size(input_size)
    expected_sizes = model.feature_sizes(height, width)  # a clear error when the input is too small
    root = _Node("", type(model).__name__, (model.in_chans, height, width), _own_params(model), module=model)
    fmap = root.add(_visit(model.patch_embed, "patch_embed", (model.in_chans, height, width))).output_shape
    stages = _Node("stages", type(model.stages).__name__, fmap, _own_params(model.stages), module=model.stages)
    for i, stage in enumerate(model.stages):
        fmap = stages.add(_visit(stage, f"stages.{i}", fmap)).output_shape
    root.add(stages)
    sizes = [c.output_shape[:2] for c in stages.children]
    if sizes != [tuple(s) for s in expected_sizes]:
        raise RuntimeError(f"complexity: stage maps {sizes} differ from model.feature_sizes {expected_sizes}")
    pooled: Shape = (fmap[-1],)  # mean over the last map's tokens: not a module, not counted
    pooled = root.add(_visit(model.head_drop, "head_drop", pooled)).output_shape
    root.add(_visit(model.head, "head", pooled))
    total = count_params(model)
    if root.params != total:
        raise RuntimeError(
            f"complexity: {total - root.params} of {total} parameters sit in modules the counter did not visit"
        )
    return root


# ---------------------------------------------------------------------------
# public counting API
# ---------------------------------------------------------------------------
def count_flops(model: Module, input_size: int | Sequence[int] = (224, 224)) -> int:
    """Total FLOPs (MACs, official PVT / mmcv convention) of one forward on a 3 x H x W image, batch 1."""
    return _walk(model, input_size).flops


def _units(node: _Node) -> Iterator[_Node]:
    """A node's children, with the ModuleLists (stages, blocks) opened."""
    for child in node.children:
        if isinstance(child.module, ModuleList) and not isinstance(child.module, Sequential):
            yield from child.children
        else:
            yield child


def _leaves(node: _Node) -> Iterator[_Node]:
    if not node.children:
        yield node
    for child in node.children:
        yield from _leaves(child)


def flops_breakdown(
    model: Module, input_size: int | Sequence[int] = (224, 224), depth: str = "layer"
) -> list[LayerCost]:
    """Rows of (name, kind, output shape, params, FLOPs) in forward order; at every depth they sum to the totals.

    * ``depth="layer"``: every leaf layer (Conv2d, Linear, LayerNorm, GELU, ...) and
      each attention's ``matmul`` pseudo-layer;
    * ``depth="block"``: the stem embedding, each stage's downsample, each Block,
      each stage norm, the head;
    * ``depth="stage"``: ``patch_embed`` (the stem), ``stages.0`` ... ``stages.3``
      (each with its downsample embedding), ``head_drop``, ``head``.
    """
    if depth not in DEPTHS:
        raise ValueError(f"flops_breakdown: depth must be one of {DEPTHS}, got {depth!r}")
    root = _walk(model, input_size)
    if depth == "layer":
        nodes = list(_leaves(root))
    elif depth == "stage":
        nodes = list(_units(root))
    else:
        nodes = [
            v for u in _units(root) for v in (_units(u) if isinstance(u.module, PyramidVisionTransformerStage) else [u])
        ]
    return [n.row() for n in nodes]


def format_count(value: float, unit: str = "") -> str:
    """``value`` with a G/M/K suffix and two decimals (e.g. ``4.04 G``); below 1000 as is."""
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {prefix}{unit}"
    return f"{value:g} {unit}".rstrip()


def _shape_str(shape: Shape) -> str:
    return "x".join(str(s) for s in shape)


def _model_label(model: Module) -> str:
    return str(getattr(model, "model_name", type(model).__name__))


def _print_rows(rows: Sequence[LayerCost], total_flops: int, out: TextIO, title: str) -> None:
    width = max([len(title), *(len(r.name) for r in rows)]) + 2
    kind_width = max([4, *(len(r.kind) for r in rows)]) + 2
    print(
        f"{title:<{width}}{'kind':<{kind_width}}{'output':>16}{'params':>12}{'FLOPs':>14}{'%FLOPs':>9}  note",
        file=out,
    )
    for r in rows:
        share = 100.0 * r.flops / total_flops if total_flops else 0.0
        print(
            f"{r.name:<{width}}{r.kind:<{kind_width}}{_shape_str(r.output_shape):>16}"
            f"{format_count(r.params):>12}{format_count(r.flops):>14}{share:>8.2f}%  {r.note}".rstrip(),
            file=out,
        )


def print_complexity(
    model: Module,
    input_size: int | Sequence[int] = (224, 224),
    depth: str = "stage",
    file: TextIO | None = None,
) -> tuple[int, int]:
    """Print a table at ``depth`` ('stage', 'block' or 'layer'), a per-stage summary and the totals.

    Rows with neither parameters nor FLOPs (GELU, dropout, identities) are left
    out of the printed table (they are in :func:`flops_breakdown`). Returns
    ``(params, flops)``.
    """
    out = file if file is not None else sys.stdout
    h, w = _check_input_size(input_size)
    rows = flops_breakdown(model, (h, w), depth)
    stage_rows = rows if depth == "stage" else flops_breakdown(model, (h, w), "stage")
    params = count_params(model)
    flops = sum(r.flops for r in stage_rows)
    print(
        f"{_model_label(model)}: input 1x{getattr(model, 'in_chans', 3)}x{h}x{w}, "
        f"{getattr(model, 'num_classes', '?')} classes -- FLOPs are multiply-accumulates, official PVT "
        "get_flops.py convention (mmcv counter + attention matmuls)",
        file=out,
    )
    shown = [r for r in rows if r.params or r.flops]
    _print_rows(shown, flops, out, depth)
    if depth != "stage":
        print(file=out)
        _print_rows([r for r in stage_rows if r.params or r.flops], flops, out, "per stage")
    print(file=out)
    print(
        f"total: params {params:,} ({params / 1e6:.2f} M), FLOPs {flops:,} ({flops / 1e9:.2f} G); "
        "GELU, softmax, dropout and residual adds not counted",
        file=out,
    )
    return params, flops


# ---------------------------------------------------------------------------
# the paper's table
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class PaperRow:
    """One variant at 224x224 with a 1000-class head: our counts next to the paper's."""

    name: str
    params: int
    flops: int
    paper_params_m: float
    paper_gflops: float

    @property
    def params_m(self) -> float:
        return self.params / 1e6

    @property
    def gflops(self) -> float:
        return self.flops / 1e9

    @property
    def matches(self) -> bool:
        """Both numbers equal the paper's after rounding to one decimal."""
        return round(self.params_m, 1) == self.paper_params_m and round(self.gflops, 1) == self.paper_gflops


def paper_table(file: TextIO | None = None) -> list[PaperRow]:
    """Count the seven PVT v2 variants at 224x224 (1000 classes) and print them beside the paper's numbers."""
    out = file if file is not None else sys.stdout
    rows = []
    for name, (paper_params, paper_gflops) in PAPER_TABLE.items():
        model = create_model(name, num_classes=1000)
        rows.append(PaperRow(name, count_params(model), count_flops(model, (224, 224)), paper_params, paper_gflops))
    print("PVT v2 at 224x224, 1000-class head (official get_flops.py convention: mmcv counter + attention)", file=out)
    print(f"{'model':<14}{'params (M)':>11}{'paper':>7}{'GFLOPs':>9}{'paper':>7}  match", file=out)
    for r in rows:
        print(
            f"{r.name:<14}{r.params_m:>11.2f}{r.paper_params_m:>7.1f}{r.gflops:>9.3f}{r.paper_gflops:>7.1f}  "
            f"{'yes' if r.matches else 'NO'}",
            file=out,
        )
    return rows


# ---------------------------------------------------------------------------
# CLI: pvt-np flops
# ---------------------------------------------------------------------------
def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``pvt-np flops MODEL [--input-size H W] [--num-classes K] [--cifar] [--depth D]`` or ``pvt-np flops --paper``."""
    parser.add_argument("model", nargs="?", help=f"model name ({', '.join(list_models())})")
    parser.add_argument(
        "--input-size",
        type=_positive_int,
        nargs=2,
        metavar=("H", "W"),
        help="input image size (default 224 224, or 32 32 with --cifar)",
    )
    parser.add_argument("--num-classes", type=_non_negative_int, default=1000, help="head size (default 1000)")
    parser.add_argument("--cifar", action="store_true", help="the CIFAR config (3x3 stride-2 stem, sr_ratios 4,2,1,1)")
    parser.add_argument("--depth", choices=DEPTHS, default="stage", help="table granularity (default stage)")
    parser.add_argument("--paper", action="store_true", help="all seven variants at 224x224 next to the paper's table")


def run(args: argparse.Namespace) -> int:
    """Print the table; a clear message on stderr and exit status 2 for a bad model name or input size."""
    if args.paper:
        if args.model is not None:
            print("pvt-np flops: error: --paper takes no MODEL", file=sys.stderr)
            return 2
        rows = paper_table()
        return 0 if all(r.matches for r in rows) else 1
    if args.model is None:
        print(f"pvt-np flops: error: give a MODEL ({', '.join(list_models())}) or --paper", file=sys.stderr)
        return 2
    size = tuple(args.input_size) if args.input_size else ((32, 32) if args.cifar else (224, 224))
    try:
        model = create_model(args.model, num_classes=args.num_classes, cifar=args.cifar)
        print_complexity(model, size, depth=args.depth)
    except ValueError as err:
        print(f"pvt-np flops: error: {err}", file=sys.stderr)
        return 2
    return 0
