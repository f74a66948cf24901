"""Bad input raises ValueError/TypeError naming the layer (or op), the expected and the received shape/dtype."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from helpers import contains_all

from pvt_np import create_model, nn, ops

F64 = np.float64


def _x(*shape: int, dtype: Any = F64) -> np.ndarray:
    return np.ones(shape, dtype=dtype)


def _ints(*shape: int) -> np.ndarray:
    return np.ones(shape, dtype=np.int64)


# (id, module factory, call(module), exception, parts the message must contain)
LAYER_CASES: list[tuple[str, Callable[[], nn.Module], Callable[[Any], Any], type[Exception], tuple[str, ...]]] = [
    # Linear
    ("linear-rank0", lambda: nn.Linear(4, 3, dtype=F64), lambda m: m(_x()), ValueError,
     ("Linear", "(..., 4)", "got ()")),
    ("linear-features", lambda: nn.Linear(4, 3, dtype=F64), lambda m: m(_x(2, 5)), ValueError,
     ("Linear", "(..., 4)", "(2, 5)")),
    ("linear-int", lambda: nn.Linear(4, 3, dtype=F64), lambda m: m(_ints(2, 4)), TypeError,
     ("Linear", "float32 or float64", "int64")),
    ("linear-f32-into-f64", lambda: nn.Linear(4, 3, dtype=F64), lambda m: m(_x(2, 4, dtype=np.float32)), TypeError,
     ("Linear", "float32", "float64")),
    ("linear-f64-into-f32", lambda: nn.Linear(4, 3), lambda m: m(_x(2, 4)), TypeError,
     ("Linear", "input dtype float64", "weight dtype float32")),
    ("linear-list", lambda: nn.Linear(4, 3), lambda m: m([[1.0] * 4]), TypeError, ("Linear", "array", "list")),
    # Conv2d
    ("conv-rank3", lambda: nn.Conv2d(3, 4, 3, dtype=F64), lambda m: m(_x(3, 13, 7)), ValueError,
     ("Conv2d", "rank 4", "(N, 3, H, W)", "(3, 13, 7)")),
    ("conv-rank5-nhwc", lambda: nn.Conv2d(3, 4, 3, dtype=F64, channels_last=True), lambda m: m(_x(1, 1, 13, 7, 3)),
     ValueError, ("Conv2d", "rank 4", "(N, H, W, 3)", "(1, 1, 13, 7, 3)")),
    ("conv-channels", lambda: nn.Conv2d(3, 4, 3, dtype=F64), lambda m: m(_x(1, 5, 13, 7)), ValueError,
     ("Conv2d", "(N, 3, H, W)", "(1, 5, 13, 7)")),
    ("conv-channels-nhwc", lambda: nn.Conv2d(3, 4, 3, dtype=F64, channels_last=True), lambda m: m(_x(1, 13, 7, 5)),
     ValueError, ("Conv2d", "(N, H, W, 3)", "(1, 13, 7, 5)")),
    ("conv-nchw-into-nhwc", lambda: nn.Conv2d(3, 4, 3, dtype=F64, channels_last=True), lambda m: m(_x(1, 3, 13, 7)),
     ValueError, ("Conv2d", "(N, H, W, 3)", "(1, 3, 13, 7)")),
    ("conv-too-small", lambda: nn.Conv2d(3, 4, 5, dtype=F64), lambda m: m(_x(1, 3, 4, 7)), ValueError,
     ("Conv2d", "4x7", "(5, 5)", "0x3")),
    ("conv-int", lambda: nn.Conv2d(3, 4, 3, dtype=F64), lambda m: m(_ints(1, 3, 5, 5)), TypeError,
     ("Conv2d", "float32 or float64", "int64")),
    ("conv-f32-into-f64", lambda: nn.Conv2d(3, 4, 3, dtype=F64), lambda m: m(_x(1, 3, 5, 5, dtype=np.float32)),
     TypeError, ("Conv2d", "float32", "float64")),
    # LayerNorm
    ("layernorm-rank0", lambda: nn.LayerNorm(8, dtype=F64), lambda m: m(_x()), ValueError,
     ("LayerNorm", "(..., 8)", "got ()")),
    ("layernorm-features", lambda: nn.LayerNorm(8, dtype=F64), lambda m: m(_x(2, 13, 5)), ValueError,
     ("LayerNorm", "(..., 8)", "(2, 13, 5)")),
    ("layernorm-int", lambda: nn.LayerNorm(8, dtype=F64), lambda m: m(_ints(2, 8)), TypeError,
     ("LayerNorm", "float32 or float64", "int64")),
    ("layernorm-f32-into-f64", lambda: nn.LayerNorm(8, dtype=F64), lambda m: m(_x(2, 8, dtype=np.float32)),
     TypeError, ("LayerNorm", "float32", "float64")),
    # parameter-free layers
    ("gelu-int", lambda: nn.GELU(), lambda m: m(_ints(2, 3)), TypeError, ("GELU", "float32 or float64", "int64")),
    ("relu-int", lambda: nn.ReLU(), lambda m: m(_ints(2, 3)), TypeError, ("ReLU", "float32 or float64", "int64")),
    ("softmax-int", lambda: nn.Softmax(), lambda m: m(_ints(2, 3)), TypeError,
     ("Softmax", "float32 or float64", "int64")),
    ("softmax-rank", lambda: nn.Softmax(dim=2), lambda m: m(_x(2, 3)), ValueError,
     ("Softmax", "dim=2", "rank >= 3", "(2, 3)")),
    ("softmax-rank-negative-dim", lambda: nn.Softmax(dim=-3), lambda m: m(_x(4,)), ValueError,
     ("Softmax", "dim=-3", "rank >= 3", "(4,)")),
    ("dropout-int", lambda: nn.Dropout(0.5), lambda m: m(_ints(2, 3)), TypeError,
     ("Dropout", "float32 or float64", "int64")),
    ("dropout-eval-int", lambda: nn.Dropout(0.5).eval(), lambda m: m(_ints(2, 3)), TypeError,
     ("Dropout", "float32 or float64", "int64")),
    ("droppath-int", lambda: nn.DropPath(0.5), lambda m: m(_ints(2, 3)), TypeError,
     ("DropPath", "float32 or float64", "int64")),
    ("droppath-rank0", lambda: nn.DropPath(0.5), lambda m: m(_x()), ValueError,
     ("DropPath", "(N, ...)", "got ()")),
    ("pool-rank3", lambda: nn.AdaptiveAvgPool2d(7), lambda m: m(_x(3, 15, 11)), ValueError,
     ("AdaptiveAvgPool2d", "rank 4", "(N, C, H, W)", "(3, 15, 11)")),
    ("pool-rank3-nhwc", lambda: nn.AdaptiveAvgPool2d(7, channels_last=True), lambda m: m(_x(15, 11, 3)), ValueError,
     ("AdaptiveAvgPool2d", "rank 4", "(N, H, W, C)", "(15, 11, 3)")),
    ("pool-int", lambda: nn.AdaptiveAvgPool2d(7), lambda m: m(_ints(1, 3, 15, 11)), TypeError,
     ("AdaptiveAvgPool2d", "float32 or float64", "int64")),
    # loss
    ("ce-rank1", lambda: nn.CrossEntropyLoss(), lambda m: m(_x(3), np.array([0, 1, 2])), ValueError,
     ("CrossEntropyLoss", "rank >= 2", "(N, num_classes, ...)", "(3,)")),
    ("ce-pixel-target-shape", lambda: nn.CrossEntropyLoss(), lambda m: m(_x(2, 3, 4), np.array([0, 1])), ValueError,
     ("CrossEntropyLoss", "(2, 4) indices", "(2, 3, 4) probabilities", "got (2,)")),
    ("ce-ignore-index-out-of-range", lambda: nn.CrossEntropyLoss(ignore_index=255),
     lambda m: m(_x(2, 3, 2), np.array([[0, 255], [3, 1]])), ValueError,
     ("CrossEntropyLoss", "[0, 2] (or ignore_index=255)", "3")),
    ("ce-int-logits", lambda: nn.CrossEntropyLoss(), lambda m: m(_ints(2, 3), np.array([0, 1])), TypeError,
     ("CrossEntropyLoss", "float32 or float64", "int64")),
    ("ce-target-length", lambda: nn.CrossEntropyLoss(), lambda m: m(_x(2, 3), np.array([0, 1, 2])), ValueError,
     ("CrossEntropyLoss", "(2,)", "(3,)")),
    ("ce-soft-target-classes", lambda: nn.CrossEntropyLoss(), lambda m: m(_x(2, 3), _x(2, 4)), ValueError,
     ("CrossEntropyLoss", "(2, 3)", "(2, 4)")),
    ("ce-negative-index", lambda: nn.CrossEntropyLoss(), lambda m: m(_x(2, 3), np.array([0, -1])), ValueError,
     ("CrossEntropyLoss", "[0, 2]", "-1")),
    ("ce-index-too-large", lambda: nn.CrossEntropyLoss(), lambda m: m(_x(2, 3), np.array([3, 1])), ValueError,
     ("CrossEntropyLoss", "[0, 2]", "3")),
    ("ce-float-index-target", lambda: nn.CrossEntropyLoss(), lambda m: m(_x(2, 3), np.array([0.0, 1.0])), TypeError,
     ("CrossEntropyLoss", "integers", "float64")),
]  # fmt: skip


@pytest.mark.parametrize(
    ("make", "call", "exc", "parts"), [c[1:] for c in LAYER_CASES], ids=[c[0] for c in LAYER_CASES]
)
def test_layer_rejects_bad_input(
    make: Callable[[], nn.Module], call: Callable[[Any], Any], exc: type[Exception], parts: tuple[str, ...]
) -> None:
    """The layer raises before computing anything, and says who, what was expected and what came."""
    module = make()
    with pytest.raises(exc, match=contains_all(*parts)):
        call(module)


def test_error_names_the_layer_path() -> None:
    """Inside a named model the message carries the layer's dotted path."""
    model = nn.Sequential(nn.Linear(4, 3, dtype=F64), nn.GELU(), nn.Sequential(nn.LayerNorm(3, dtype=F64))).set_names()
    with pytest.raises(ValueError, match=contains_all("Linear '0'", "(..., 4)", "(2, 5)")):
        model(_x(2, 5))
    with pytest.raises(TypeError, match=contains_all("GELU '1'", "int64")):
        model[1](_ints(2, 3))
    with pytest.raises(ValueError, match=contains_all("LayerNorm '2.0'", "(..., 3)", "(2, 4)")):
        model[2](_x(2, 4))


# (id, call, exception, parts) for the functional ops, which name themselves
OP_CASES: list[tuple[str, Callable[[], Any], type[Exception], tuple[str, ...]]] = [
    ("linear-features", lambda: ops.linear_forward(_x(2, 5), _x(3, 4)), ValueError, ("linear", "(..., 4)", "(2, 5)")),
    ("linear-dtype", lambda: ops.linear_forward(_x(2, 4, dtype=np.float32), _x(3, 4)), TypeError,
     ("linear", "float32", "float64")),
    ("conv-channels", lambda: ops.conv2d_forward(_x(1, 5, 7, 7), _x(4, 3, 3, 3)), ValueError,
     ("conv2d", "(N, 3, H, W)", "(1, 5, 7, 7)")),
    ("conv-groups", lambda: ops.conv2d_forward(_x(1, 6, 7, 7), _x(4, 3, 3, 3), groups=4), ValueError,
     ("conv2d", "groups=4", "in_channels=6", "out_channels=4")),
    ("conv-bias", lambda: ops.conv2d_forward(_x(1, 3, 7, 7), _x(4, 3, 3, 3), _x(5)), ValueError,
     ("conv2d", "(4,)", "(5,)")),
    ("conv-weight-rank", lambda: ops.conv2d_forward(_x(1, 3, 7, 7), _x(4, 3, 3)), ValueError,
     ("conv2d", "weight", "rank 4", "(4, 3, 3)")),
    ("conv-stride", lambda: ops.conv2d_forward(_x(1, 3, 7, 7), _x(4, 3, 3, 3), stride=1.5), TypeError,
     ("conv2d", "stride", "1.5")),
    ("conv-too-small", lambda: ops.conv2d_forward(_x(1, 3, 2, 7), _x(4, 3, 3, 3)), ValueError,
     ("conv2d", "2x7", "(3, 3)", "0x5")),
    ("layer_norm-features", lambda: ops.layer_norm_forward(_x(2, 5), _x(4), _x(4)), ValueError,
     ("layer_norm", "(..., 4)", "(2, 5)")),
    ("group_norm-channels", lambda: ops.group_norm_forward(_x(2, 5, 3, 3), _x(4), _x(4), 2), ValueError,
     ("group_norm", "(N, 4, ...)", "(2, 5, 3, 3)")),
    ("group_norm-channels-last", lambda: ops.group_norm_forward(_x(2, 3, 3, 5), _x(4), _x(4), 2, channels_last=True),
     ValueError, ("group_norm", "(N, ..., 4)", "(2, 3, 3, 5)")),
    ("group_norm-groups", lambda: ops.group_norm_forward(_x(2, 6, 3), _x(6), _x(6), 4), ValueError,
     ("group_norm", "num_groups=4", "6 channels")),
    ("group_norm-groups-type", lambda: ops.group_norm_forward(_x(2, 6, 3), _x(6), _x(6), 1.5), ValueError,
     ("group_norm", "num_groups", "positive int", "1.5")),
    ("group_norm-bias", lambda: ops.group_norm_forward(_x(2, 6, 3), _x(6), _x(5), 3), ValueError,
     ("group_norm", "bias", "(6,)", "(5,)")),
    ("group_norm-dtype", lambda: ops.group_norm_forward(_x(2, 6, 3, dtype=np.float32), _x(6), _x(6), 3), TypeError,
     ("group_norm", "float32", "float64")),
    ("gelu-approximate", lambda: ops.gelu_forward(_x(2), "fast"), ValueError, ("gelu", "'none' or 'tanh'", "'fast'")),
    ("attention-rank", lambda: ops.attention_forward(_x(2, 5, 4), _x(2, 5, 4), _x(2, 5, 4)), ValueError,
     ("attention", "rank 4", "(2, 5, 4)")),
    ("attention-shapes", lambda: ops.attention_forward(_x(1, 2, 5, 4), _x(1, 2, 3, 4), _x(1, 2, 6, 4)), ValueError,
     ("attention", "(1, 2, 5, 4)", "(1, 2, 3, 4)", "(1, 2, 6, 4)")),
    ("attention-head-dim", lambda: ops.attention_forward(_x(1, 2, 5, 4), _x(1, 2, 3, 8), _x(1, 2, 3, 8)), ValueError,
     ("attention", "(B, h, N, d)", "(1, 2, 5, 4)", "(1, 2, 3, 8)")),
    ("attention-dtype", lambda: ops.attention_forward(_x(1, 1, 2, 2, dtype=np.float32), _x(1, 1, 2, 2),
                                                      _x(1, 1, 2, 2)), TypeError,
     ("attention", "float32", "float64")),
    ("attention-p", lambda: ops.attention_forward(_x(1, 1, 2, 2), _x(1, 1, 2, 2), _x(1, 1, 2, 2), dropout_p=1.5),
     ValueError, ("attention", "dropout_p", "[0, 1]", "1.5")),
    ("dropout-p", lambda: ops.dropout_forward(_x(2), -0.1), ValueError, ("dropout", "[0, 1]", "-0.1")),
    ("drop_path-rank0", lambda: ops.drop_path_forward(_x(), 0.5), ValueError,
     ("drop_path", "(N, ...)", "got ()")),
    ("pool-output-size", lambda: ops.adaptive_avg_pool2d_forward(_x(1, 1, 4, 4), 0), ValueError,
     ("adaptive_avg_pool2d", "positive", "0")),
    ("interp-rank3", lambda: ops.interpolate_forward(_x(3, 5, 4), (6, 8)), ValueError,
     ("interpolate", "rank 4", "(N, C, H, W)", "(3, 5, 4)")),
    ("interp-mode", lambda: ops.interpolate_forward(_x(1, 1, 5, 4), (6, 8), mode="bicubic"), ValueError,
     ("interpolate", "'nearest' or 'bilinear'", "'bicubic'")),
    ("interp-size-and-scale", lambda: ops.interpolate_forward(_x(1, 1, 5, 4), (6, 8), 2.0), ValueError,
     ("interpolate", "exactly one of size and scale_factor", "(6, 8)", "2.0")),
    ("interp-neither", lambda: ops.interpolate_forward(_x(1, 1, 5, 4)), ValueError,
     ("interpolate", "exactly one of size and scale_factor", "None")),
    ("interp-size", lambda: ops.interpolate_forward(_x(1, 1, 5, 4), (0, 8)), ValueError,
     ("interpolate", "size", "positive", "(0, 8)")),
    ("interp-scale-negative", lambda: ops.interpolate_forward(_x(1, 1, 5, 4), None, -2.0), ValueError,
     ("interpolate", "scale_factor", "positive", "-2.0")),
    ("interp-scale-type", lambda: ops.interpolate_forward(_x(1, 1, 5, 4), None, "2"), TypeError,
     ("interpolate", "scale_factor", "number", "'2'")),
    ("interp-empty", lambda: ops.interpolate_forward(_x(1, 5, 4, 2), None, 0.2, channels_last=True), ValueError,
     ("interpolate", "scale_factor 0.2", "5x4", "1x0")),
    ("token_mean-rank", lambda: ops.token_mean_forward(_x(2, 3)), ValueError, ("token_mean", "rank 3", "(2, 3)")),
    ("tokens_to_nhwc-count", lambda: ops.tokens_to_nhwc(_x(2, 12, 3), (3, 5)), ValueError,
     ("tokens_to_nhwc", "12 tokens", "3x5")),
    ("ce-smoothing", lambda: ops.cross_entropy_forward(_x(2, 3), np.array([0, 1]), 2.0), ValueError,
     ("cross_entropy", "label_smoothing", "2.0")),
    ("ce-ignore-index-style-target", lambda: ops.cross_entropy_forward(_x(2, 1000), np.array([5, -100])), ValueError,
     ("cross_entropy", "[0, 999]", "-100")),
    ("ce-target-rank", lambda: ops.cross_entropy_forward(_x(2, 3), _x(2, 3, 1)), ValueError,
     ("cross_entropy", "(N,)", "(N, K)", "(2, 3, 1)")),
    ("ce-ignore-index-type", lambda: ops.cross_entropy_forward(_x(2, 3), np.array([0, 1]), 0.0, 2.5), TypeError,
     ("cross_entropy", "ignore_index", "int or None", "2.5")),
]  # fmt: skip


@pytest.mark.parametrize(("call", "exc", "parts"), [c[1:] for c in OP_CASES], ids=[c[0] for c in OP_CASES])
def test_op_rejects_bad_input(call: Callable[[], Any], exc: type[Exception], parts: tuple[str, ...]) -> None:
    """Functional ops validate their inputs the same way, naming the op."""
    with pytest.raises(exc, match=contains_all(*parts)):
        call()


@pytest.mark.parametrize(
    ("make", "exc", "parts"),
    [
        (lambda: nn.Linear(4, 3, dtype=np.int32), TypeError, ("dtype", "float32 or float64", "int32")),
        (lambda: nn.Conv2d(4, 6, 3, groups=4), ValueError, ("Conv2d", "groups=4", "in_channels=4", "out_channels=6")),
        (lambda: nn.Conv2d(4, 6, 2.5), TypeError, ("Conv2d", "kernel_size", "2.5")),
        (lambda: nn.LayerNorm((4, 5)), ValueError, ("LayerNorm", "1-D", "(4, 5)")),
        (lambda: nn.GELU("erf"), ValueError, ("GELU", "'none' or 'tanh'", "'erf'")),
        (lambda: nn.Dropout(1.5), ValueError, ("Dropout", "[0, 1]", "1.5")),
        (lambda: nn.DropPath(-0.5), ValueError, ("DropPath", "[0, 1]", "-0.5")),
        (lambda: nn.CrossEntropyLoss(label_smoothing=2.0), ValueError, ("CrossEntropyLoss", "[0, 1]", "2.0")),
        (lambda: nn.AdaptiveAvgPool2d((7, 7, 7)), TypeError, ("AdaptiveAvgPool2d", "output_size", "(7, 7, 7)")),
        (lambda: nn.Upsample(), ValueError, ("Upsample", "exactly one of size and scale_factor")),
        (lambda: nn.GroupNorm(4, 6), ValueError, ("GroupNorm", "num_groups=4", "num_channels=6")),
        (lambda: nn.CrossEntropyLoss(ignore_index="255"), TypeError, ("CrossEntropyLoss", "ignore_index", "'255'")),
        (lambda: nn.Upsample(4, mode="area"), ValueError, ("Upsample", "'nearest' or 'bilinear'", "'area'")),
    ],
    ids=[
        "linear-dtype",
        "conv-groups",
        "conv-kernel",
        "layernorm-shape",
        "gelu",
        "dropout",
        "droppath",
        "ce",
        "pool",
        "upsample-neither",
        "groupnorm-groups",
        "ce-ignore-index",
        "upsample-mode",
    ],
)
def test_bad_constructor_arguments(make: Callable[[], Any], exc: type[Exception], parts: tuple[str, ...]) -> None:
    """Constructors reject bad hyper-parameters with the same kind of message."""
    with pytest.raises(exc, match=contains_all(*parts)):
        make()


@pytest.mark.parametrize("layer", ["linear", "conv", "layer_norm"])
def test_gradient_of_another_dtype_is_refused(layer: str) -> None:
    """A float64 gradient into a float32 layer would silently promote the whole backward."""
    x = np.ones((2, 3, 5, 5), np.float32)
    module = {
        "linear": nn.Linear(5, 4),
        "conv": nn.Conv2d(3, 4, 3),
        "layer_norm": nn.LayerNorm(5),
    }[layer]
    y = module(x)
    with pytest.raises(TypeError, match=r"gradient dtype float64 does not match weight dtype float32"):
        module.backward(np.ones(y.shape))
    module.backward(np.ones(y.shape, np.float32))  # the cache survived the refused call


def test_model_gradient_shape_and_dtype_are_checked() -> None:
    model = create_model("pvt_v2_b0", num_classes=10, cifar=True)
    model(np.zeros((2, 3, 32, 32), np.float32))
    with pytest.raises(ValueError, match=r"expected a gradient of shape \(2, 10\).*got \(2, 9\)"):
        model.backward(np.ones((2, 9), np.float32))
    with pytest.raises(TypeError, match=r"expected a gradient of dtype float32.*got float64"):
        model.backward(np.ones((2, 10)))
