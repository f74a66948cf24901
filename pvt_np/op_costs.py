"""One counting rule per op family for :mod:`pvt_np.complexity`: the shape of each forward's output and its FLOPs,
from the forward's arguments, under the convention that module's docstring states (mmcv's, one "FLOP" a MAC).

While counting, every op call is answered by :func:`_zeros_of_output_shape` (a zero view of the rule's output
shape: nothing computed), and each call is charged by its rule. A registered op with no rule is an error.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from math import prod
from typing import Any

import numpy as np

from pvt_np import backend, ops
from pvt_np.ops.checks import check_interpolate

Shape = tuple[int, ...]
Arguments = Mapping[str, Any]  # an op forward's arguments by parameter name, defaults filled in


@dataclass(frozen=True)
class OpRule:
    """How one op family's forward is counted, from its arguments.

    ``output_shape(args)`` is the forward's output shape (the batch included):
    the substitute returns an array of it, and a run with the real ops checks it.
    ``flops(args, output_shape)`` is the charge under the module docstring's
    convention. An op called by a composite module itself (not through a layer,
    as ``Attention`` calls ``attention``) gets a row of its own, named
    ``<module>.<row>`` and of kind ``kind`` (both default to the op's name), with
    ``note(args)`` as its note.
    """

    output_shape: Callable[[Arguments], Shape]
    flops: Callable[[Arguments, Shape], int]
    row: str = ""
    kind: str = ""
    note: Callable[[Arguments], str] | None = None


def _pair(value: Any) -> tuple[int, int]:
    """An op's int-or-pair argument (stride, padding, output_size) as a pair."""
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    return int(value[0]), int(value[1])


def _same_shape(args: Arguments) -> Shape:
    return tuple(args["x"].shape)


def _free(args: Arguments, out: Shape) -> int:
    return 0


def _linear_shape(args: Arguments) -> Shape:
    return (*args["x"].shape[:-1], args["weight"].shape[0])


def _conv_shape(args: Arguments) -> Shape:
    x, weight, channels_last = args["x"], args["weight"], args["channels_last"]
    n, h, w, _ = x.shape if channels_last else (x.shape[0], x.shape[2], x.shape[3], x.shape[1])
    out_channels, _, kh, kw = weight.shape
    (sh, sw), (ph, pw) = _pair(args["stride"]), _pair(args["padding"])
    ho, wo = ops.conv_output_size(h, kh, sh, ph), ops.conv_output_size(w, kw, sw, pw)
    return (n, ho, wo, out_channels) if channels_last else (n, out_channels, ho, wo)


def _conv_flops(args: Arguments, out: Shape) -> int:
    weight = args["weight"]
    positions = prod(out) // weight.shape[0]  # batch * H_out * W_out
    bias_adds = weight.shape[0] * positions if args["bias"] is not None else 0
    return weight.size * positions + bias_adds  # weight.size = C_out * (C_in / groups) * kh * kw


def _pool_shape(args: Arguments) -> Shape:
    x, (oh, ow) = args["x"], _pair(args["output_size"])
    return (x.shape[0], oh, ow, x.shape[3]) if args["channels_last"] else (x.shape[0], x.shape[1], oh, ow)


def _interpolate_shape(args: Arguments) -> Shape:
    x, channels_last = args["x"], args["channels_last"]
    (oh, ow), _ = check_interpolate(x, args["size"], args["scale_factor"], args["mode"], channels_last, "interpolate")
    return (x.shape[0], oh, ow, x.shape[3]) if channels_last else (x.shape[0], x.shape[1], oh, ow)


def _attention_shape(args: Arguments) -> Shape:
    return (*args["q"].shape[:-1], args["v"].shape[-1])


def _attention_flops(args: Arguments, out: Shape) -> int:
    q, k, v = args["q"], args["k"], args["v"]
    # per batch and head: q @ k^T is N * M * d_k MACs, attn @ v is N * M * d_v
    return prod(q.shape[:-1]) * k.shape[-2] * (q.shape[-1] + v.shape[-1])


def _attention_note(args: Arguments) -> str:
    q, k = args["q"], args["k"]
    return f"N={q.shape[-2]} M={k.shape[-2]} C={q.shape[1] * q.shape[-1]}"


OP_RULES: dict[str, OpRule] = {
    "linear": OpRule(_linear_shape, lambda a, out: prod(a["x"].shape) * a["weight"].shape[0]),
    "conv2d": OpRule(_conv_shape, _conv_flops),
    "layer_norm": OpRule(_same_shape, lambda a, out: 2 * prod(out)),
    "group_norm": OpRule(_same_shape, lambda a, out: 2 * prod(out)),
    "gelu": OpRule(_same_shape, _free),
    "relu": OpRule(_same_shape, lambda a, out: prod(out)),
    "softmax": OpRule(_same_shape, _free),
    "attention": OpRule(_attention_shape, _attention_flops, "matmul", "AttentionMatmul", _attention_note),
    "adaptive_avg_pool2d": OpRule(_pool_shape, lambda a, out: prod(a["x"].shape)),
    "interpolate": OpRule(_interpolate_shape, lambda a, out: prod(out)),
    "dropout": OpRule(_same_shape, _free),
    "drop_path": OpRule(_same_shape, _free),
    "cross_entropy": OpRule(lambda a: (), _free),
    "token_mean": OpRule(lambda a: (a["x"].shape[0], a["x"].shape[-1]), _free, kind="TokenMean"),
}


def op_rule(op: str) -> OpRule:
    """The counting rule of op family ``op``; an op without one is an error (it would count as 0 unseen)."""
    try:
        return OP_RULES[op]
    except KeyError:
        raise NotImplementedError(
            f"complexity: no counting rule for op {op!r}; add one to pvt_np.op_costs.OP_RULES"
        ) from None


@functools.cache
def _forward_signature(op: str) -> inspect.Signature:
    return inspect.signature(ops.registered_ops()[op].fast_forward)


def _arguments(op: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """An op forward's arguments by name, as its fast implementation's signature binds them."""
    bound = _forward_signature(op).bind(*args, **kwargs)
    bound.apply_defaults()
    return bound.arguments


def _zeros_of_output_shape(op: str, phase: str, *args: Any, **kwargs: Any) -> tuple[Any, None]:
    """What a forward returns while counting: a zero view of its output shape (no memory, no work), no cache."""
    if phase != "forward":
        raise RuntimeError(f"complexity: {op}_{phase} called while counting, which runs a forward only")
    arguments = _arguments(op, args, kwargs)
    like = next(iter(arguments.values()))  # every op's first argument is its float input
    xp = backend.get_array_module(like)
    return xp.broadcast_to(xp.zeros((), dtype=like.dtype), op_rule(op).output_shape(arguments)), None
