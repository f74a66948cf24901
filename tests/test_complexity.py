"""pvt_np.complexity: the paper's table, parameter counts against timm, per-layer FLOPs against real forwards,
one counting rule per op checked against the op, and a new layer counted with no new rule."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from pvt_np import backend, complexity, ops
from pvt_np.cli import main
from pvt_np.complexity import (
    PAPER_TABLE,
    attention_flops,
    count_flops,
    count_params,
    flops_breakdown,
    paper_table,
    print_complexity,
)
from pvt_np.models import Attention, create_model
from pvt_np.nn import (
    AdaptiveAvgPool2d,
    Conv2d,
    GroupNorm,
    Identity,
    LayerNorm,
    Linear,
    Module,
    ReLU,
    Sequential,
    Upsample,
    no_grad,
)
from pvt_np.nn.module import watch_calls
from pvt_np.ops import OpCall
from pvt_np.ops.dispatch import substitute

VARIANTS = list(PAPER_TABLE)

_MODELS: dict[tuple[Any, ...], Module] = {}


def _cached_create_model(name: str, num_classes: int = 1000, **kwargs: Any) -> Module:
    """create_model, built once per argument set (counting never changes a model)."""
    key = (name, num_classes, tuple(sorted(kwargs.items())))
    if key not in _MODELS:
        _MODELS[key] = create_model(name, num_classes=num_classes, **kwargs)
    return _MODELS[key]


@pytest.fixture
def cached_models(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Module]:
    """complexity's model builder replaced by the cached one (paper_table / CLI build all seven variants)."""
    monkeypatch.setattr(complexity, "create_model", _cached_create_model)
    return _cached_create_model


# ---------------------------------------------------------------------------
# the paper's table
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", VARIANTS)
def test_paper_table_per_variant(name: str) -> None:
    model = _cached_create_model(name)
    paper_params, paper_gflops = PAPER_TABLE[name]
    assert round(count_params(model) / 1e6, 1) == paper_params
    assert round(count_flops(model, (224, 224)) / 1e9, 1) == paper_gflops


def test_official_readme_b2_numbers() -> None:
    # classification/README.md of whai362/PVT: "python get_flops.py pvt_v2_b2" gives 4.04 GFLOPs, 25.36 M.
    model = _cached_create_model("pvt_v2_b2")
    assert round(count_flops(model) / 1e9, 2) == 4.04
    assert round(count_params(model) / 1e6, 2) == 25.36


def test_b5_rounding_needs_layer_norm_flops() -> None:
    # b5 is 11.75 G: counting LayerNorm as 2 FLOPs per element (mmcv's norm hook) tips it to the paper's 11.8;
    # without the LayerNorms it would round to 11.7.
    model = _cached_create_model("pvt_v2_b5")
    rows = flops_breakdown(model, (224, 224), "layer")
    total = sum(r.flops for r in rows)
    ln = sum(r.flops for r in rows if r.kind == "LayerNorm")
    assert round(total / 1e9, 1) == 11.8
    assert round((total - ln) / 1e9, 1) == 11.7


def test_paper_table_prints_all_variants(cached_models: Callable[..., Module], capsys: pytest.CaptureFixture) -> None:
    rows = paper_table()
    out = capsys.readouterr().out
    assert [r.name for r in rows] == VARIANTS
    assert all(r.matches for r in rows)
    for r in rows:
        line = next(line for line in out.splitlines() if line.startswith(r.name + " "))
        assert f"{r.paper_params_m:.1f}" in line and line.rstrip().endswith("yes")


# ---------------------------------------------------------------------------
# parameters
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", VARIANTS)
def test_params_match_parameter_sizes_and_timm(name: str) -> None:
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    model = _cached_create_model(name)
    ours = count_params(model)
    assert ours == sum(int(np.prod(p.shape)) for p in model.parameters())
    with torch.device("meta"):  # structure only: no memory, no init
        reference = timm.create_model(name, num_classes=1000)
    assert ours == sum(p.numel() for p in reference.parameters())
    # every parameter sits in exactly one breakdown row, at every depth
    for depth in complexity.DEPTHS:
        assert sum(r.params for r in flops_breakdown(model, (224, 224), depth)) == ours


def test_params_without_head_and_cifar() -> None:
    model = create_model("pvt_v2_b0", num_classes=0)
    assert count_params(model) == count_params(_cached_create_model("pvt_v2_b0")) - (256 * 1000 + 1000)
    cifar = create_model("pvt_v2_b0", num_classes=10, cifar=True)
    assert count_params(cifar) == sum(p.size for p in cifar.parameters())


# ---------------------------------------------------------------------------
# per-layer FLOPs against shapes observed in real forwards
# ---------------------------------------------------------------------------
def _record_forwards(model: Module) -> dict[str, list[tuple[tuple[int, ...], tuple[int, ...]]]]:
    """Wrap every leaf module's forward to record (input shape, output shape) per call."""
    calls: dict[str, list[tuple[tuple[int, ...], tuple[int, ...]]]] = {}
    for name, m in model.named_modules():
        if m._modules:
            continue

        def wrapped(x: Any, *args: Any, _name: str = name, _orig: Any = m.forward, **kwargs: Any) -> Any:
            y = _orig(x, *args, **kwargs)
            calls.setdefault(_name, []).append((tuple(x.shape), tuple(y.shape)))
            return y

        object.__setattr__(m, "forward", wrapped)
    return calls


def _independent_flops(m: Module, x_shape: tuple[int, ...], y_shape: tuple[int, ...]) -> int:
    """The same rules computed from the observed arrays and the parameter arrays' sizes."""
    if isinstance(m, Conv2d):
        ho, wo = (y_shape[1], y_shape[2]) if m.channels_last else (y_shape[2], y_shape[3])
        return (m.weight.size + (m.bias.size if m.bias is not None else 0)) * ho * wo
    if isinstance(m, Linear):
        return int(np.prod(x_shape[:-1])) * m.weight.size
    if isinstance(m, LayerNorm):
        return 2 * int(np.prod(x_shape))
    if isinstance(m, ReLU):
        return int(np.prod(y_shape))
    if isinstance(m, AdaptiveAvgPool2d):
        return int(np.prod(x_shape))
    return 0


def _iter_attention(model: Module) -> Iterator[tuple[str, Attention]]:
    for name, m in model.named_modules():
        if isinstance(m, Attention):
            yield name, m


FORWARD_CASES = [
    ("pvt_v2_b0", (97, 61), {"depths": (1, 2, 1, 1)}),  # SRA, odd non-square input
    ("pvt_v2_b2_li", (61, 97), {"depths": (1, 1, 1, 1), "embed_dims": (16, 32, 40, 64)}),  # linear SRA
    ("pvt_v2_b0", (35, 33), {"cifar": True, "depths": (1, 1, 1, 1)}),  # CIFAR stem
    ("pvt_v2_b1", (71, 45), {"depths": (1, 1, 1, 1), "sr_ratios": (3, 2, 2, 1), "embed_dims": (16, 32, 40, 64)}),
]


@pytest.mark.parametrize(("name", "size", "overrides"), FORWARD_CASES)
def test_layer_flops_match_a_real_forward(name: str, size: tuple[int, int], overrides: dict[str, Any]) -> None:
    model = create_model(name, num_classes=7, **overrides)
    rows = flops_breakdown(model, size, "layer")
    calls = _record_forwards(model)
    x = np.random.default_rng(0).standard_normal((1, 3, *size)).astype(np.float32)
    with no_grad():
        model.eval()(x)
    modules = dict(model.named_modules())
    layer_rows = {r.name: r for r in rows if r.name in modules}
    op_rows = {r.name: r for r in rows if r.name not in modules}
    assert set(layer_rows) == set(calls), "every leaf module runs once per forward and has one row"
    kinds_seen = set()
    for row_name, row in layer_rows.items():
        ((x_shape, y_shape),) = calls[row_name]
        assert row.output_shape == y_shape[1:], row_name  # the counted shape is the forward's
        assert row.flops == _independent_flops(modules[row_name], x_shape, y_shape), row_name
        assert row.kind == type(modules[row_name]).__name__
        kinds_seen.add(row.kind)
    assert {"Conv2d", "Linear", "LayerNorm"} <= kinds_seen
    if model.linear:
        assert {"ReLU", "AdaptiveAvgPool2d"} <= kinds_seen
    # the rows that are no module: each attention's matmuls and the final token mean (free)
    matmuls = {k: r for k, r in op_rows.items() if r.kind == "AttentionMatmul"}
    assert set(op_rows) - set(matmuls) == {"token_mean"} and op_rows["token_mean"].flops == 0
    assert op_rows["token_mean"].output_shape == (model.num_features,)
    # the attention matmuls: N and C from the observed q output, M from the observed kv output
    attentions = list(_iter_attention(model))
    assert len(matmuls) == len(attentions) == sum(model.depths)
    for attn_name, attn in attentions:
        ((_, q_out),) = calls[f"{attn_name}.q"]
        ((_, kv_out),) = calls[f"{attn_name}.kv"]
        n, c, m = q_out[1], q_out[2], kv_out[1]
        assert matmuls[f"{attn_name}.matmul"].flops == 2 * n * m * c
        assert matmuls[f"{attn_name}.matmul"].output_shape == (attn.num_heads, n, attn.head_dim)
    assert sum(r.flops for r in rows) == count_flops(model, size)


@pytest.mark.parametrize(("name", "size", "overrides"), FORWARD_CASES)
def test_shape_substitutes_count_what_the_real_ops_count(
    name: str, size: tuple[int, int], overrides: dict[str, Any]
) -> None:
    """The counter runs the forward on shape substitutes; with the real ops it gives the same tree, row for row,
    and each op's real output shape equals its rule's (the tracer checks it on every call)."""
    model = create_model(name, num_classes=7, drop_rate=0.3, drop_path_rate=0.2, **overrides)
    shapes_only, real = complexity._trace(model, size), complexity._trace(model, size, run_ops=True)
    for depth in complexity.DEPTHS:
        assert complexity._rows(shapes_only, depth) == complexity._rows(real, depth), depth


def test_counting_leaves_the_model_as_it_was() -> None:
    """Counting in the middle of a training step: the caches survive, and no random draw is made."""
    model = create_model("pvt_v2_b0", num_classes=5, depths=(1, 1, 1, 1), drop_rate=0.5, drop_path_rate=0.5)
    x = np.random.default_rng(1).standard_normal((2, 3, 64, 64)).astype(np.float32)
    model(x)
    rng_state = backend.get_rng(np).bit_generator.state
    count_flops(model, (97, 61))
    assert backend.get_rng(np).bit_generator.state == rng_state
    assert model.training
    assert model.backward(np.ones((2, 5), np.float32)).shape == x.shape


def test_watch_calls_sees_each_module_call_nested() -> None:
    seq = Sequential(Linear(3, 4), Identity())
    x = np.ones((2, 3), np.float32)
    events: list[tuple[Any, ...]] = []
    with watch_calls(
        lambda m: events.append(("enter", type(m).__name__)),
        lambda m, out: events.append(("exit", type(m).__name__, out.shape)),
    ):
        seq(x)
    assert events == [
        ("enter", "Sequential"),
        ("enter", "Linear"),
        ("exit", "Linear", (2, 4)),
        ("enter", "Identity"),
        ("exit", "Identity", (2, 4)),
        ("exit", "Sequential", (2, 4)),
    ]
    seq(x)  # nobody watches any more
    assert len(events) == 6


def test_substitute_answers_op_calls() -> None:
    x = np.ones((2, 3))
    seen: list[OpCall] = []
    with ops.observe(seen.append), substitute(lambda op, phase, *args, **kwargs: (op, phase, len(args))):
        assert ops.relu_forward(x) == ("relu", "forward", 1)
        with pytest.raises(RuntimeError, match="already inside"), substitute(lambda *a: None):
            pass
    assert [(c.op, c.result) for c in seen] == [("relu", ("relu", "forward", 1))]
    assert ops.relu_forward(x)[0] is not None  # the real op again


def test_input_follows_the_model_dtype() -> None:
    """The counting forward's input takes the parameters' dtype (a float64 model rejects float32 input)."""
    f32 = create_model("pvt_v2_b0", num_classes=10, depths=(1, 1, 1, 1))
    f64 = create_model("pvt_v2_b0", num_classes=10, depths=(1, 1, 1, 1), dtype=np.float64)
    assert count_flops(f64, (61, 97)) == count_flops(f32, (61, 97))
    assert flops_breakdown(f64, (61, 97), "layer") == flops_breakdown(f32, (61, 97), "layer")


# ---------------------------------------------------------------------------
# one rule per op
# ---------------------------------------------------------------------------
def _arrays(rng: np.random.Generator, *shapes: tuple[int, ...]) -> list[np.ndarray]:
    return [rng.standard_normal(s) for s in shapes]


def _op_examples(rng: np.random.Generator) -> list[tuple[str, Callable[[], Any], int]]:
    """(op, a call of it on awkward shapes, the FLOPs the convention gives for that call), every op at least once."""
    x, w, b = _arrays(rng, (2, 3, 5), (4, 5), (4,))
    img, wd, bd = _arrays(rng, (2, 3, 7, 6), (4, 3, 3, 2), (4,))
    nhwc, wg = _arrays(rng, (2, 7, 6, 6), (6, 2, 3, 3))
    q, k, v = _arrays(rng, (2, 3, 5, 4), (2, 3, 7, 4), (2, 3, 7, 4))
    tokens, gamma, beta = _arrays(rng, (2, 9, 6), (6,), (6,))
    target = np.array([1, 0])
    return [
        ("linear", lambda: ops.linear_forward(x, w, b), 2 * 3 * 5 * 4),
        ("linear", lambda: ops.linear_forward(x, w), 2 * 3 * 5 * 4),  # the bias is free
        # dense NCHW, stride 2 x 1, padding 1 x 0: output 4 x 5
        ("conv2d", lambda: ops.conv2d_forward(img, wd, bd, (2, 1), (1, 0)), (3 * 3 * 2 * 4 + 4) * 2 * 4 * 5),
        # grouped NHWC, no bias, int stride/padding: output 4 x 3
        ("conv2d", lambda: ops.conv2d_forward(nhwc, wg, None, 2, 1, 3, True), 3 * 3 * 2 * 6 * 2 * 4 * 3),
        ("layer_norm", lambda: ops.layer_norm_forward(tokens, gamma, beta, 1e-5), 2 * 2 * 9 * 6),
        ("group_norm", lambda: ops.group_norm_forward(img, gamma[:3], beta[:3], 3), 2 * img.size),
        ("group_norm", lambda: ops.group_norm_forward(nhwc, gamma, beta, 2, 1e-6, True), 2 * nhwc.size),
        ("gelu", lambda: ops.gelu_forward(tokens, "tanh"), 0),
        ("relu", lambda: ops.relu_forward(tokens), 2 * 9 * 6),
        ("softmax", lambda: ops.softmax_forward(img, 1), 0),
        ("attention", lambda: ops.attention_forward(q, k, v, scale=0.3, dropout_p=0.2), 2 * 2 * 5 * 7 * 12),
        ("adaptive_avg_pool2d", lambda: ops.adaptive_avg_pool2d_forward(img, (4, 3)), img.size),
        ("adaptive_avg_pool2d", lambda: ops.adaptive_avg_pool2d_forward(nhwc, 5, channels_last=True), nhwc.size),
        # 1 per output element, either mode: 7x6 -> 16x5 bilinear, 7x6x6 -> floor(7 * 2.5) x floor(6 * 0.5)
        ("interpolate", lambda: ops.interpolate_forward(img, (16, 5), mode="bilinear"), 2 * 3 * 16 * 5),
        ("interpolate", lambda: ops.interpolate_forward(nhwc, None, (2.5, 0.5), channels_last=True), 2 * 17 * 3 * 6),
        ("dropout", lambda: ops.dropout_forward(tokens, 0.5, True), 0),
        ("drop_path", lambda: ops.drop_path_forward(tokens, 0.5, True), 0),
        ("cross_entropy", lambda: ops.cross_entropy_forward(x[:, 0], target, 0.1), 0),
        ("cross_entropy", lambda: ops.cross_entropy_forward(img, np.zeros((2, 7, 6), int), 0.0, 255), 0),
        ("token_mean", lambda: ops.token_mean_forward(tokens), 0),
    ]


def test_every_registered_op_has_a_rule() -> None:
    assert set(ops.registered_ops()) <= set(complexity.OP_RULES)
    with pytest.raises(NotImplementedError, match=r"no counting rule for op 'pool3d'.*OP_RULES"):
        complexity.op_rule("pool3d")


def test_each_rule_against_its_op() -> None:
    """Every op, called for real on awkward shapes: the rule's output shape is the op's, its FLOPs the convention's."""
    examples = _op_examples(np.random.default_rng(3))
    assert {op for op, _, _ in examples} == set(ops.registered_ops())
    seen: list[OpCall] = []
    for op, call, expected_flops in examples:
        with ops.observe(seen.append):
            out, _ = call()
        record = seen.pop()
        assert record.op == op and not seen
        arguments = complexity._arguments(op, record.args, record.kwargs)
        rule = complexity.op_rule(op)
        assert rule.output_shape(arguments) == out.shape, op
        assert rule.flops(arguments, out.shape) == expected_flops, op


def test_an_op_without_a_rule_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(complexity.OP_RULES, "layer_norm")
    with pytest.raises(NotImplementedError, match="'layer_norm'"):
        count_flops(_cached_create_model("pvt_v2_b0"), (64, 64))


class LinearNorm(Module):
    """A layer the counter and the profiler have never heard of: a Linear, then a LayerNorm."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.fc = Linear(in_features, out_features)
        self.norm = LayerNorm(out_features)

    def forward(self, x: Any) -> Any:
        return self.norm(self.fc(x))

    def backward(self, dout: Any) -> Any:
        return self.fc.backward(self.norm.backward(dout))


def test_a_new_layer_is_counted_without_a_new_rule() -> None:
    model = create_model("pvt_v2_b0", num_classes=10, depths=(1, 1, 1, 1))
    plain_head = flops_breakdown(model, (64, 64), "layer")
    model.head = LinearNorm(model.num_features, 10)
    rows = flops_breakdown(model, (64, 64), "layer")
    assert rows[: len(plain_head) - 1] == plain_head[:-1]  # everything before the head is unchanged
    assert [(r.name, r.kind, r.output_shape, r.params, r.flops) for r in rows[len(plain_head) - 1 :]] == [
        ("head.fc", "Linear", (10,), 256 * 10 + 10, 256 * 10),
        ("head.norm", "LayerNorm", (10,), 2 * 10, 2 * 10),
    ]
    head = {r.name: r for r in flops_breakdown(model, (64, 64), "stage")}["head"]
    assert (head.kind, head.params, head.flops) == ("LinearNorm", 256 * 10 + 10 + 20, 256 * 10 + 20)
    assert count_params(model) == sum(r.params for r in rows)


class SegmentationLikeHead(Module):
    """A head that sees the pooled features as a 16 x 4 x 4 map: GroupNorm, then a bilinear resize to 7 x 9."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = GroupNorm(4, 16)
        self.up = Upsample(size=(7, 9), mode="bilinear")

    def forward(self, x: Any) -> Any:
        return self.up(self.norm(x.reshape(x.shape[0], 16, 4, 4)))


def test_group_norm_and_upsampling_layers_are_charged() -> None:
    """GroupNorm: 2 per element (+ 32 parameters); Upsample: 1 per output element."""
    model = create_model("pvt_v2_b0", num_classes=10, depths=(1, 1, 1, 1))  # 256 features = 16 x 4 x 4
    model.head = Identity()
    without = count_flops(model, (64, 64))
    model.head = SegmentationLikeHead()
    rows = flops_breakdown(model, (64, 64), "layer")
    assert [(r.name, r.kind, r.output_shape, r.params, r.flops) for r in rows[-2:]] == [
        ("head.norm", "GroupNorm", (16, 4, 4), 32, 2 * 256),
        ("head.up", "Upsample", (16, 7, 9), 0, 16 * 7 * 9),
    ]
    assert count_flops(model, (64, 64)) == without + 2 * 256 + 16 * 7 * 9


class HiddenLinear(Module):
    """Calls a Linear it keeps outside the registry (so it would have no name and uncounted parameters)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        object.__setattr__(self, "hidden", Linear(in_features, out_features))

    def forward(self, x: Any) -> Any:
        return self.hidden(x)


def test_an_unregistered_module_is_an_error() -> None:
    model = create_model("pvt_v2_b0", num_classes=10, depths=(1, 1, 1, 1))
    model.head = HiddenLinear(model.num_features, 10)
    with pytest.raises(RuntimeError, match="a Linear ran in the forward but is not a submodule of the model"):
        count_flops(model, (64, 64))


# ---------------------------------------------------------------------------
# breakdown totals, stages, official attention term
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("depth", complexity.DEPTHS)
def test_breakdown_sums_to_totals(depth: str) -> None:
    model = _cached_create_model("pvt_v2_b2_li")
    rows = flops_breakdown(model, (160, 224), depth)
    assert sum(r.flops for r in rows) == count_flops(model, (160, 224))
    assert sum(r.params for r in rows) == count_params(model)
    assert all(isinstance(r.flops, int) and isinstance(r.params, int) for r in rows)


def test_stage_rows_are_sums_of_their_layers() -> None:
    model = _cached_create_model("pvt_v2_b1")
    layers = flops_breakdown(model, (224, 224), "layer")
    blocks = flops_breakdown(model, (224, 224), "block")
    stages = flops_breakdown(model, (224, 224), "stage")
    assert [r.name for r in stages] == [
        "patch_embed",
        "stages.0",
        "stages.1",
        "stages.2",
        "stages.3",
        "token_mean",
        "head_drop",
        "head",
    ]
    for st in stages:
        prefix = st.name + "."
        assert st.flops == sum(r.flops for r in layers if r.name.startswith(prefix) or r.name == st.name)
        assert st.flops == sum(r.flops for r in blocks if r.name.startswith(prefix) or r.name == st.name)
    assert [r.output_shape[:2] for r in stages[1:5]] == model.feature_sizes(224, 224)
    assert sum(1 for r in blocks if r.kind == "Block") == sum(model.depths)


def _official_attention_term(model: Module, height: int, width: int) -> int:
    """get_flops.py's added term: sra_flops / li_sra_flops on H//4, H//8, H//16, H//32, times the depths."""
    total = 0
    for i, depth in enumerate(model.depths):
        h, w, dim = height // 2 ** (i + 2), width // 2 ** (i + 2), model.embed_dims[i]
        if model.linear:
            total += 2 * h * w * 7 * 7 * dim * depth
        else:
            r = model.sr_ratios[i]
            total += 2 * h * w * (h // r) * (w // r) * dim * depth
    return total


@pytest.mark.parametrize("name", ["pvt_v2_b2", "pvt_v2_b2_li", "pvt_v2_b0"])
@pytest.mark.parametrize("size", [(224, 224), (256, 320)])
def test_attention_term_equals_official_script(name: str, size: tuple[int, int]) -> None:
    model = _cached_create_model(name)
    rows = flops_breakdown(model, size, "layer")
    ours = sum(r.flops for r in rows if r.kind == "AttentionMatmul")
    assert ours == _official_attention_term(model, *size)


# ---------------------------------------------------------------------------
# the analytic attention formulas
# ---------------------------------------------------------------------------
def test_attention_formulas() -> None:
    h, w, c = 56, 56, 64
    n = h * w
    assert attention_flops(h, w, c) == 2 * n * n * c
    assert attention_flops(h, w, c, "sra", sr_ratio=8) == 2 * n * n * c // 64
    assert attention_flops(h, w, c, "sra", sr_ratio=8, exact=False) == pytest.approx(2 * n * n * c / 64)
    assert attention_flops(h, w, c, "sra", sr_ratio=1) == attention_flops(h, w, c, "full")
    assert attention_flops(h, w, c, "linear") == 2 * n * 49 * c
    assert attention_flops(h, w, c, "linear", pool_size=5) == 2 * n * 25 * c
    # a ratio that does not divide the map: the stride-R conv floors
    assert attention_flops(25, 16, 8, "sra", sr_ratio=8) == 2 * 400 * (3 * 2) * 8
    assert attention_flops(25, 16, 8, "sra", sr_ratio=8, exact=False) == pytest.approx(2 * 400 * 400 * 8 / 64)
    with pytest.raises(ValueError, match="mode"):
        attention_flops(h, w, c, "windowed")
    with pytest.raises(ValueError, match="positive"):
        attention_flops(0, w, c)


def test_attention_formula_matches_counter_rows() -> None:
    model = _cached_create_model("pvt_v2_b2")
    rows = {r.name: r for r in flops_breakdown(model, (224, 224), "layer")}
    for i, (h, w) in enumerate(model.feature_sizes(224, 224)):
        c, r = model.embed_dims[i], model.sr_ratios[i]
        assert rows[f"stages.{i}.blocks.0.attn.matmul"].flops == attention_flops(h, w, c, "sra", sr_ratio=r)


def _stage0_attention(model: Module, size: int) -> int:
    rows = flops_breakdown(model, (size, size), "layer")
    return next(r.flops for r in rows if r.name == "stages.0.blocks.0.attn.matmul")


def test_linear_sra_grows_linearly_sra_quadratically() -> None:
    sra, li = _cached_create_model("pvt_v2_b2"), _cached_create_model("pvt_v2_b2_li")
    # doubling the side multiplies the tokens by 4
    assert _stage0_attention(sra, 448) == 16 * _stage0_attention(sra, 224)
    assert _stage0_attention(li, 448) == 4 * _stage0_attention(li, 224)
    assert _stage0_attention(li, 896) == 16 * _stage0_attention(li, 224)
    tokens = np.array([8, 16, 32, 64]) ** 2
    full = np.array([attention_flops(s, s, 64, "full") for s in (8, 16, 32, 64)])
    sra_f = np.array([attention_flops(s, s, 64, "sra", sr_ratio=8) for s in (8, 16, 32, 64)])
    lin = np.array([attention_flops(s, s, 64, "linear") for s in (8, 16, 32, 64)])
    np.testing.assert_allclose(lin / tokens, lin[0] / tokens[0])
    np.testing.assert_allclose(sra_f / tokens**2, sra_f[0] / tokens[0] ** 2)
    np.testing.assert_allclose(full / sra_f, 64)


# ---------------------------------------------------------------------------
# printing and the CLI
# ---------------------------------------------------------------------------
def test_print_complexity(capsys: pytest.CaptureFixture) -> None:
    model = _cached_create_model("pvt_v2_b0")
    params, flops = print_complexity(model, (224, 224), depth="layer")
    out = capsys.readouterr().out
    assert (params, flops) == (count_params(model), count_flops(model))
    assert "stages.0.blocks.0.attn.sr" in out and "AttentionMatmul" in out and "per stage" in out
    assert f"params {params:,} (3.67 M)" in out and f"FLOPs {flops:,} (0.57 G)" in out
    assert ".drop_path1" not in out  # zero-cost rows are left out of the printed table


def test_cli_model(cached_models: Callable[..., Module], capsys: pytest.CaptureFixture) -> None:
    assert main(["flops", "pvt_v2_b0"]) == 0
    out = capsys.readouterr().out
    assert "input 1x3x224x224" in out and "stages.3" in out and "3,666,760" in out
    assert main(["flops", "pvt_v2_b0", "--input-size", "97", "61", "--depth", "block", "--num-classes", "10"]) == 0
    out = capsys.readouterr().out
    model = create_model("pvt_v2_b0", num_classes=10)
    assert "input 1x3x97x61" in out and "stages.1.blocks.1" in out and f"{count_flops(model, (97, 61)):,}" in out


def test_cli_cifar_defaults_to_32(capsys: pytest.CaptureFixture) -> None:
    assert main(["flops", "pvt_v2_b0", "--cifar", "--num-classes", "10"]) == 0
    out = capsys.readouterr().out
    model = create_model("pvt_v2_b0", num_classes=10, cifar=True)
    assert "input 1x3x32x32" in out and f"{count_flops(model, (32, 32)):,}" in out


def test_cli_paper(cached_models: Callable[..., Module], capsys: pytest.CaptureFixture) -> None:
    assert main(["flops", "--paper"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in VARIANTS) and "NO" not in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["flops", "pvt_v2_b9"], "unknown model 'pvt_v2_b9'"),
        (["flops", "pvt_v2_b0", "--input-size", "16", "16"], "too small"),
        (["flops"], "give a MODEL"),
        (["flops", "pvt_v2_b0", "--paper"], "--paper takes no MODEL"),
    ],
)
def test_cli_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_cli_rejects_bad_numbers(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["flops", "pvt_v2_b0", "--input-size", "0", "32"])
    assert "argument --input-size: expected an integer >= 1, got 0" in capsys.readouterr().err


def test_bad_input_errors() -> None:
    model = _cached_create_model("pvt_v2_b0")
    with pytest.raises(ValueError, match="too small"):
        count_flops(model, (16, 16))
    with pytest.raises(ValueError, match="positive"):
        count_flops(model, (0, 224))
    with pytest.raises(ValueError, match="pair of ints"):
        count_flops(model, (224, 224, 3))
    with pytest.raises(ValueError, match="depth"):
        flops_breakdown(model, (224, 224), depth="head")
    with pytest.raises(TypeError, match="PyramidVisionTransformerV2"):
        count_flops(Linear(3, 4), (224, 224))
    assert count_flops(model, 224) == count_flops(model, (224, 224))
