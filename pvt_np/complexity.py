"""Parameters and FLOPs of a PVT v2 model, per layer, per stage and in total, from the ops its forward calls.

The counts follow the convention of the official PVT code (whai362/PVT,
``classification/get_flops.py``), so the paper's table is reproduced: that
script takes mmcv's ``get_model_complexity_info`` (forward hooks on torch
layers, ``mmcv/cnn/utils/flops_counter.py``) and adds the two attention
matmuls, which are tensor products inside ``Attention.forward`` that no hook
sees. mmcv's "FLOPs" are multiply-accumulates for convs and linears, so one
"FLOP" here is one MAC there. pvt_np charges each op call (one rule per op in
:data:`pvt_np.op_costs.OP_RULES`), for batch 1:

* conv2d: kh * kw * (C_in / groups) * C_out MACs per output position, plus
  C_out bias adds per output position when the conv has a bias
  (mmcv ``conv_flops_counter_hook``).
* linear: (number of input elements) * out_features MACs; the bias is not
  counted (mmcv ``linear_flops_counter_hook``).
* layer_norm: 2 per input element (normalise, then the affine scale/shift;
  pvt_np's LayerNorm is always affine, mmcv doubles when ``elementwise_affine``).
* group_norm: 2 per input element, as layer_norm (mmcv's ``norm_flops_counter_hook``,
  doubled for the affine GroupNorm).
* relu: 1 per output element (mmcv ``relu_flops_counter_hook``).
* adaptive_avg_pool2d: 1 per INPUT element (mmcv ``pool_flops_counter_hook``).
* interpolate: 1 per OUTPUT element, nearest and bilinear alike (mmcv
  ``upsample_flops_counter_hook``, so a segmentation head counts as mmseg's
  numbers count it; the work is 0 (a copy) for nearest and 4 multiply-adds
  for bilinear).
* gelu, softmax, dropout, drop_path, token_mean (the final pooling of tokens)
  and cross_entropy: 0 (mmcv has no hook for them, or they are not modules);
  the residual adds and identities are not ops and cost nothing.
* attention: 2 * N * M * C for N queries, M keys and C channels (N*M*C for
  q @ k^T summed over heads, N*M*C for attn @ v); M = N for full attention,
  (H/R)(W/R) for spatial-reduction attention with ratio R, pool_size^2 for
  linear SRA (the official ``sra_flops`` and ``li_sra_flops``).
* Parameters: every parameter element, the classification head included
  (mmcv's ``get_model_parameters_number``; get_flops.py builds the model with
  ``num_classes=1000``).

Where this differs from the official script (never at the paper's 224x224):
get_flops.py computes the attention term from H//4, H//8, H//16, H//32 and a
hard-coded 7x7 pool, while here the map sizes are those the model's own layers
produce, so a custom stem (``cifar=True``), custom sr_ratios, or an input that
is not a multiple of 32 is counted as it actually runs.

How: the model's forward runs (batch 1, the model's dtype and device, under
``no_grad``) with every op call answered by a substitute
(:func:`pvt_np.ops.dispatch.substitute`) that returns a read-only zero view of
the op's output shape, so nothing is computed and b2 with full attention at
2048 px costs what b0 at 32 px does. An op observer (:func:`pvt_np.ops.observe`)
charges each call by its op's rule, and a module watcher
(:func:`pvt_np.nn.module.watch_calls`) tells which module made it. The counter
keeps no picture of the model: a new layer built from registered ops is counted
as it runs, and an op with no rule is an error, not a silent zero. The tests run
the same count with the real ops, checking every rule's output shape against
the op's.
"""

from __future__ import annotations

import contextlib
import operator
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from pvt_np import backend, ops
from pvt_np.models import PyramidVisionTransformerStage, PyramidVisionTransformerV2, SemanticSegmenter, create_model
from pvt_np.nn import Module, no_grad
from pvt_np.nn.module import watch_calls
from pvt_np.op_costs import OP_RULES, OpRule, Shape, _arguments, _zeros_of_output_shape, op_rule
from pvt_np.ops.dispatch import OpCall, substitute

# The rules (OP_RULES, OpRule, op_rule) live in op_costs and are named here too, beside the counter that applies them.
__all__ = [
    "DEPTHS",
    "OP_RULES",
    "PAPER_TABLE",
    "LayerCost",
    "OpRule",
    "PaperRow",
    "attention_flops",
    "count_flops",
    "count_params",
    "flops_breakdown",
    "format_count",
    "op_rule",
    "paper_table",
    "print_complexity",
]

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


# ---------------------------------------------------------------------------
# the cost tree of one forward
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerCost:
    """One row of a breakdown.

    ``name`` is the dotted module name; an op that a composite module calls
    itself appears as ``<module>.<row>`` (the attention matmuls as
    ``<attention>.matmul``, the final token mean as ``token_mean``). ``kind`` is
    the module's class name (or the op rule's ``kind``); ``output_shape`` the
    per-sample shape (batch dimension dropped) of what the module (or op)
    returned: (C, H, W) for the stem conv, (H, W, C) for channels-last convs,
    pools and embeddings, (N, C) for tokens, (heads, N, head_dim) for an
    attention matmul; ``params`` the parameter elements; ``flops`` the count
    under the rules in this module's docstring.
    """

    name: str
    kind: str
    output_shape: Shape
    params: int
    flops: int
    note: str = ""


@dataclass
class _Node:
    """A module call (or an op a composite module called itself) and what ran inside it."""

    name: str
    kind: str
    module: Module | None  # None for an op's own row
    own_params: int = 0
    own_flops: int = 0
    output_shape: Shape = ()
    note: str = ""
    children: list[_Node] = field(default_factory=list)

    def child(self, name: str, kind: str, module: Module | None) -> _Node:
        """The child row ``name``, created (in call order) on first use: a module called twice is one row."""
        for c in self.children:
            if c.name == name:
                return c
        node = _Node(name, kind, module, 0 if module is None else _own_params(module))
        self.children.append(node)
        return node

    @property
    def params(self) -> int:
        return self.own_params + sum(c.params for c in self.children)

    @property
    def flops(self) -> int:
        return self.own_flops + sum(c.flops for c in self.children)

    def row(self) -> LayerCost:
        return LayerCost(self.name, self.kind, self.output_shape, self.params, self.flops, self.note)


def _own_params(module: Module) -> int:
    """Parameter elements a module holds itself (not through its children)."""
    return sum(p.size for p in module._parameters.values())


def _per_sample(shape: Sequence[int]) -> Shape:
    return tuple(int(s) for s in shape[1:])


class _Tracer:
    """Builds the cost tree: module calls (``watch_calls``) nest the rows, op calls (``observe``) charge them."""

    def __init__(self, model: Module) -> None:
        self.names = {id(m): name for name, m in model.named_modules()}
        self.stack: list[tuple[_Node, Module]] = []  # the modules whose forward is running, innermost last
        self.root: _Node | None = None

    def enter(self, module: Module) -> None:
        name = self.names.get(id(module))
        if name is None:
            raise RuntimeError(
                f"complexity: a {type(module).__name__} ran in the forward but is not a submodule of the model "
                "(assign it as an attribute, so that it is named and its parameters counted)"
            )
        kind = type(module).__name__
        if self.stack:
            node = self.stack[-1][0].child(name, kind, module)
        else:
            node = self.root = _Node(name, kind, module, _own_params(module))
        self.stack.append((node, module))

    def exit(self, module: Module, output: Any) -> None:
        shape = getattr(output, "shape", None)  # a module may return something else than an array
        self.stack.pop()[0].output_shape = _per_sample(shape) if shape is not None else ()

    def op_call(self, call: OpCall) -> None:
        if call.phase != "forward":
            raise RuntimeError(f"complexity: {call.op}_{call.phase} called while counting, which runs a forward only")
        rule = op_rule(call.op)
        arguments = _arguments(call.op, call.args, call.kwargs)
        shape = tuple(rule.output_shape(arguments))
        actual = tuple(call.result[0].shape)
        if actual != shape:
            raise RuntimeError(f"complexity: the {call.op} rule gives output shape {shape}, the op returned {actual}")
        if not self.stack:
            raise RuntimeError(f"complexity: op {call.op} ran outside the model's modules")
        owner, module = self.stack[-1]
        if not module._modules:
            owner.own_flops += rule.flops(arguments, shape)  # a layer's own op: charged to its row
            return
        label = rule.row or call.op
        node = owner.child(f"{owner.name}.{label}" if owner.name else label, rule.kind or call.op, None)
        node.own_flops += rule.flops(arguments, shape)
        node.output_shape = _per_sample(shape)
        node.note = rule.note(arguments) if rule.note is not None else ""


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


def _trace(model: Module, input_size: int | Sequence[int], run_ops: bool = False) -> _Node:
    """The cost tree of ``model``'s forward on one ``input_size`` image; the root holds the totals.

    ``run_ops=True`` runs the real ops instead of the shape substitutes (what the
    tests compare against: the same rows, and every rule's shape checked).
    The model is left as it was: its caches are put back, and no random draw is
    made (with the substitutes).
    """
    if not isinstance(model, (PyramidVisionTransformerV2, SemanticSegmenter)):
        raise TypeError(
            f"complexity: expected a PyramidVisionTransformerV2 or a SemanticSegmenter, got {type(model).__name__}"
        )
    height, width = _check_input_size(input_size)
    model.feature_sizes(height, width)  # a clear error when the input is too small
    xp = backend.get_array_module(next(model.parameters()).data)
    x = xp.zeros((1, model.in_chans, height, width), dtype=model.dtype)
    tracer = _Tracer(model)
    kept = [(m, m._cache, m._has_cache) for m in model.modules()]
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(no_grad())
            stack.enter_context(watch_calls(tracer.enter, tracer.exit))
            stack.enter_context(ops.observe(tracer.op_call))
            if not run_ops:
                stack.enter_context(substitute(_zeros_of_output_shape))
            model(x)
    finally:
        for m, cache, has_cache in kept:
            object.__setattr__(m, "_cache", cache)
            object.__setattr__(m, "_has_cache", has_cache)
    root = tracer.root
    assert root is not None  # model(x) entered the model
    total = count_params(model)
    if root.params != total:
        raise RuntimeError(
            f"complexity: {total - root.params} of {total} parameters sit in modules the forward did not call"
        )
    return root


# ---------------------------------------------------------------------------
# parameters and the analytic attention cost
# ---------------------------------------------------------------------------
def count_params(model: Module) -> int:
    """Number of parameter elements (weights and biases, the head included)."""
    return sum(p.size for p in model.parameters())


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
# public counting API
# ---------------------------------------------------------------------------
def count_flops(model: Module, input_size: int | Sequence[int] = (224, 224)) -> int:
    """Total FLOPs (MACs, official PVT / mmcv convention) of one forward on a 3 x H x W image, batch 1."""
    return _trace(model, input_size).flops


def _leaves(node: _Node) -> Iterator[_Node]:
    if not node.children:
        yield node
    for child in node.children:
        yield from _leaves(child)


def _rows(root: _Node, depth: str) -> list[LayerCost]:
    """The breakdown of a cost tree at ``depth`` (see :func:`flops_breakdown`)."""
    if depth == "layer":
        nodes = list(_leaves(root))
    elif depth == "stage":
        nodes = root.children
    else:
        nodes = [
            v
            for u in root.children
            for v in (u.children if isinstance(u.module, PyramidVisionTransformerStage) else [u])
        ]
    return [n.row() for n in nodes]


def flops_breakdown(
    model: Module, input_size: int | Sequence[int] = (224, 224), depth: str = "layer"
) -> list[LayerCost]:
    """Rows of (name, kind, output shape, params, FLOPs) in forward order; at every depth they sum to the totals.

    * ``depth="layer"``: every leaf layer (Conv2d, Linear, LayerNorm, GELU, ...),
      each attention's ``matmul`` row and the final ``token_mean``;
    * ``depth="block"``: the stem embedding, each stage's downsample, each Block,
      each stage norm, the token mean, the head;
    * ``depth="stage"``: ``patch_embed`` (the stem), ``stages.0`` ... ``stages.3``
      (each with its downsample embedding), ``token_mean``, ``head_drop``, ``head``.
    """
    if depth not in DEPTHS:
        raise ValueError(f"flops_breakdown: depth must be one of {DEPTHS}, got {depth!r}")
    return _rows(_trace(model, input_size), depth)


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
    if depth not in DEPTHS:
        raise ValueError(f"print_complexity: depth must be one of {DEPTHS}, got {depth!r}")
    h, w = _check_input_size(input_size)
    root = _trace(model, (h, w))
    rows, stage_rows = _rows(root, depth), _rows(root, "stage")
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
