"""torch.nn-shaped layers over the functional ops (same names, arguments, defaults, parameter names).

Each layer's docstring names its op; ``help(pvt_np.ops.<op>_forward)`` (and ``_backward``) shows the
op's formula and derived gradient.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from pvt_np import backend, ops
from pvt_np.backend import Array
from pvt_np.nn.module import Module, Parameter, is_grad_enabled
from pvt_np.ops.checks import check_array, check_same_dtype, pair

_SKIP_INIT = False


@contextlib.contextmanager
def skip_init() -> Iterator[None]:
    """Within this context Linear and Conv2d allocate their weights without drawing them.

    For a loader that overwrites every weight next: drawing b5's 82 M uniform values it
    would discard took about a second. Until loaded, such weights hold arbitrary values;
    no random number is drawn, so the shared generator's stream is left as it was.
    """
    global _SKIP_INIT
    previous = _SKIP_INIT
    _SKIP_INIT = True
    try:
        yield
    finally:
        _SKIP_INIT = previous


def _uniform(shape: tuple[int, ...], bound: float, dtype: Any) -> Array:
    """U(-bound, bound), torch's default init for Linear and Conv2d (kaiming_uniform with a=sqrt(5))."""
    if _SKIP_INIT:
        return np.empty(shape, dtype=dtype)
    return backend.get_rng(np).uniform(-bound, bound, size=shape).astype(dtype)


def _check_gradient(dout: Array, weight: Array, layer: str) -> None:
    """A gradient of another dtype would silently promote the whole backward (float64 in a float32 model)."""
    check_array(dout, layer, "gradient")
    check_same_dtype(dout, weight, layer, name="gradient")


class Identity(Module):
    """y = x; backward passes the gradient through."""

    def forward(self, x: Array) -> Array:
        return x

    def backward(self, dout: Array) -> Array:
        return dout


class Linear(Module):
    """y = x W^T + b over any leading dimensions; weight (out_features, in_features).

    Op: ``pvt_np.ops.linear_forward`` / ``linear_backward``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype: Any = np.float32) -> None:
        super().__init__()
        dtype = backend.check_float_dtype(dtype)
        self.in_features, self.out_features = int(in_features), int(out_features)
        bound = 1.0 / math.sqrt(self.in_features) if self.in_features else 0.0
        self.weight = Parameter(_uniform((self.out_features, self.in_features), bound, dtype))
        self.bias = Parameter(_uniform((self.out_features,), bound, dtype)) if bias else None

    def forward(self, x: Array) -> Array:
        bias = None if self.bias is None else self.bias.data
        out, cache = ops.linear_forward(x, self.weight.data, bias, layer=self._label())
        self._save(cache)
        return out

    def backward(self, dout: Array) -> Array:
        _check_gradient(dout, self.weight.data, self._label())
        dx, dw, db = ops.linear_backward(dout, self._pop_cache())
        self.weight.accumulate(dw)
        if self.bias is not None:
            self.bias.accumulate(db)
        return dx

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Conv2d(Module):
    """torch.nn.Conv2d on NCHW input (or NHWC with ``channels_last=True``, as PVT v2's token maps).

    Op: ``pvt_np.ops.conv2d_forward`` / ``conv2d_backward``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        groups: int = 1,
        bias: bool = True,
        dtype: Any = np.float32,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        dtype = backend.check_float_dtype(dtype)
        layer = "Conv2d"
        self.in_channels, self.out_channels, self.groups = int(in_channels), int(out_channels), int(groups)
        self.kernel_size = pair(kernel_size, layer, "kernel_size")
        self.stride = pair(stride, layer, "stride")
        self.padding = pair(padding, layer, "padding")
        self.channels_last = bool(channels_last)
        if self.groups < 1 or self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(
                f"{layer}: groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}"
            )
        kh, kw = self.kernel_size
        fan_in = self.in_channels // self.groups * kh * kw
        bound = 1.0 / math.sqrt(fan_in)
        self.weight = Parameter(_uniform((self.out_channels, self.in_channels // self.groups, kh, kw), bound, dtype))
        self.bias = Parameter(_uniform((self.out_channels,), bound, dtype)) if bias else None

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(H_out, W_out) for an input of height x width."""
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        return ops.conv_output_size(height, kh, sh, ph), ops.conv_output_size(width, kw, sw, pw)

    def forward(self, x: Array) -> Array:
        out, cache = ops.conv2d_forward(
            x,
            self.weight.data,
            None if self.bias is None else self.bias.data,
            self.stride,
            self.padding,
            self.groups,
            self.channels_last,
            layer=self._label(),
        )
        self._save(cache)
        return out

    def backward(self, dout: Array, input_grad: bool = True) -> Array | None:
        """dx (None with ``input_grad=False``: the input needs no gradient, e.g. images)."""
        _check_gradient(dout, self.weight.data, self._label())
        dx, dw, db = ops.conv2d_backward(dout, self._pop_cache(), input_grad)
        self.weight.accumulate(dw)
        if self.bias is not None:
            self.bias.accumulate(db)
        return dx

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s


class LayerNorm(Module):
    """Normalises the last dimension; weight (ones) and bias (zeros) of that size.

    Op: ``pvt_np.ops.layer_norm_forward`` / ``layer_norm_backward``.
    """

    def __init__(self, normalized_shape: int | tuple[int], eps: float = 1e-5, dtype: Any = np.float32) -> None:
        super().__init__()
        dtype = backend.check_float_dtype(dtype)
        if isinstance(normalized_shape, (tuple, list)):
            if len(normalized_shape) != 1:
                raise ValueError(f"LayerNorm: only a 1-D normalized_shape is supported, got {normalized_shape!r}")
            normalized_shape = normalized_shape[0]
        self.normalized_shape = (int(normalized_shape),)
        self.eps = float(eps)
        self.weight = Parameter(np.ones(self.normalized_shape, dtype=dtype))
        self.bias = Parameter(np.zeros(self.normalized_shape, dtype=dtype))

    def forward(self, x: Array) -> Array:
        out, cache = ops.layer_norm_forward(x, self.weight.data, self.bias.data, self.eps, layer=self._label())
        self._save(cache)
        return out

    def backward(self, dout: Array) -> Array:
        _check_gradient(dout, self.weight.data, self._label())
        dx, dw, db = ops.layer_norm_backward(dout, self._pop_cache())
        self.weight.accumulate(dw)
        self.bias.accumulate(db)
        return dx

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}"


class GroupNorm(Module):
    """Normalises each sample over groups of ``num_channels / num_groups`` channels and all positions, then
    scales and shifts per channel (weight ones, bias zeros), as torch.nn.GroupNorm; (N, C, *) input, or
    (N, *, C) with ``channels_last``.

    Op: ``pvt_np.ops.group_norm_forward`` / ``group_norm_backward``.
    """

    def __init__(
        self,
        num_groups: int,
        num_channels: int,
        eps: float = 1e-5,
        channels_last: bool = False,
        dtype: Any = np.float32,
    ) -> None:
        super().__init__()
        dtype = backend.check_float_dtype(dtype)
        for name, value in (("num_groups", num_groups), ("num_channels", num_channels)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"GroupNorm: {name} must be a positive int, got {value!r}")
        if num_channels % num_groups:
            raise ValueError(f"GroupNorm: num_groups={num_groups} must divide num_channels={num_channels}")
        self.num_groups, self.num_channels = int(num_groups), int(num_channels)
        self.eps = float(eps)
        self.channels_last = bool(channels_last)
        self.weight = Parameter(np.ones(self.num_channels, dtype=dtype))
        self.bias = Parameter(np.zeros(self.num_channels, dtype=dtype))

    def forward(self, x: Array) -> Array:
        out, cache = ops.group_norm_forward(
            x, self.weight.data, self.bias.data, self.num_groups, self.eps, self.channels_last, layer=self._label()
        )
        self._save(cache)
        return out

    def backward(self, dout: Array) -> Array:
        _check_gradient(dout, self.weight.data, self._label())
        dx, dw, db = ops.group_norm_backward(dout, self._pop_cache())
        self.weight.accumulate(dw)
        self.bias.accumulate(db)
        return dx

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}"


class GELU(Module):
    """x * Phi(x) (approximate='none') or its tanh approximation (approximate='tanh').

    Op: ``pvt_np.ops.gelu_forward`` / ``gelu_backward``.
    """

    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def forward(self, x: Array) -> Array:
        out, cache = ops.gelu_forward(x, self.approximate, need_grad=is_grad_enabled(), layer=self._label())
        self._save(cache)
        return out

    def backward(self, dout: Array) -> Array:
        return ops.gelu_backward(dout, self._pop_cache())

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


class ReLU(Module):
    """max(x, 0).

    Op: ``pvt_np.ops.relu_forward`` / ``relu_backward``.
    """

    def forward(self, x: Array) -> Array:
        out, cache = ops.relu_forward(x, layer=self._label())
        self._save(cache)
        return out

    def backward(self, dout: Array) -> Array:
        return ops.relu_backward(dout, self._pop_cache())


class Softmax(Module):
    """Softmax along ``dim``.

    Op: ``pvt_np.ops.softmax_forward`` / ``softmax_backward``.
    """

    def __init__(self, dim: int = -1) -> None:
        super().__init__()
        self.dim = int(dim)

    def forward(self, x: Array) -> Array:
        out, cache = ops.softmax_forward(x, self.dim, layer=f"{self._label()} (dim={self.dim})")
        self._save(cache)
        return out

    def backward(self, dout: Array) -> Array:
        return ops.softmax_backward(dout, self._pop_cache())


class Dropout(Module):
    """Zeroes elements with probability p in training (scaling the rest by 1/(1-p)); identity in eval.

    Op: ``pvt_np.ops.dropout_forward`` / ``dropout_backward``.
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.p = float(p)
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1], got {p}")

    def forward(self, x: Array) -> Array:
        out, cache = ops.dropout_forward(x, self.p, self.training, layer=self._label())
        self._save(cache)
        return out

    def backward(self, dout: Array) -> Array:
        return ops.dropout_backward(dout, self._pop_cache())

    def extra_repr(self) -> str:
        return f"p={self.p}"


class DropPath(Module):
    """Stochastic depth: drops a sample's whole residual branch with probability p (timm's DropPath).

    Op: ``pvt_np.ops.drop_path_forward`` / ``drop_path_backward``.
    """

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = float(p)
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"DropPath: p must be in [0, 1], got {p}")

    def forward(self, x: Array) -> Array:
        out, cache = ops.drop_path_forward(x, self.p, self.training, layer=self._label())
        self._save(cache)
        return out

    def backward(self, dout: Array) -> Array:
        return ops.drop_path_backward(dout, self._pop_cache())

    def extra_repr(self) -> str:
        return f"p={self.p}"


class AdaptiveAvgPool2d(Module):
    """Average pooling to a fixed output_size with torch's (possibly overlapping) windows.

    Op: ``pvt_np.ops.adaptive_avg_pool2d_forward`` / ``adaptive_avg_pool2d_backward``.
    """

    def __init__(self, output_size: int | tuple[int, int], channels_last: bool = False) -> None:
        super().__init__()
        self.output_size = pair(output_size, "AdaptiveAvgPool2d", "output_size")
        self.channels_last = bool(channels_last)

    def forward(self, x: Array) -> Array:
        out, cache = ops.adaptive_avg_pool2d_forward(x, self.output_size, self.channels_last, layer=self._label())
        self._save(cache)
        return out

    def backward(self, dout: Array) -> Array:
        return ops.adaptive_avg_pool2d_backward(dout, self._pop_cache())

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


class Upsample(Module):
    """Resizes (N, C, H, W) maps (or (N, H, W, C) with ``channels_last``) to ``size``, or by ``scale_factor``,
    by torch's 'nearest' or 'bilinear' (align_corners=False) interpolation, as torch.nn.Upsample.

    Op: ``pvt_np.ops.interpolate_forward`` / ``interpolate_backward``.
    """

    def __init__(
        self,
        size: int | tuple[int, int] | None = None,
        scale_factor: float | tuple[float, float] | None = None,
        mode: str = "nearest",
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        if (size is None) == (scale_factor is None):
            raise ValueError(f"Upsample: give exactly one of size and scale_factor, got size={size!r}, "
                             f"scale_factor={scale_factor!r}")  # fmt: skip
        if mode not in ("nearest", "bilinear"):
            raise ValueError(f"Upsample: mode must be 'nearest' or 'bilinear', got {mode!r}")
        self.size = None if size is None else pair(size, "Upsample", "size")
        self.scale_factor = scale_factor
        self.mode = mode
        self.channels_last = bool(channels_last)

    def forward(self, x: Array) -> Array:
        out, cache = ops.interpolate_forward(
            x, self.size, self.scale_factor, self.mode, self.channels_last, layer=self._label()
        )
        self._save(cache)
        return out

    def backward(self, dout: Array) -> Array:
        return ops.interpolate_backward(dout, self._pop_cache())

    def extra_repr(self) -> str:
        given = f"size={self.size}" if self.size is not None else f"scale_factor={self.scale_factor}"
        return f"{given}, mode={self.mode!r}"


class CrossEntropyLoss(Module):
    """Mean softmax cross-entropy: ``loss = crit(logits, target)`` then ``dlogits = crit.backward()``.

    logits (N, K) or per pixel (N, K, H, W); targets equal to ``ignore_index`` are left out of the mean
    (torch's default -100 is not taken for granted: None, the default, ignores nothing and refuses
    out-of-range indices).

    Op: ``pvt_np.ops.cross_entropy_forward`` / ``cross_entropy_backward``.
    """

    def __init__(self, label_smoothing: float = 0.0, ignore_index: int | None = None) -> None:
        super().__init__()
        self.label_smoothing = float(label_smoothing)
        if not 0.0 <= self.label_smoothing <= 1.0:
            raise ValueError(f"CrossEntropyLoss: label_smoothing must be in [0, 1], got {label_smoothing}")
        is_int = isinstance(ignore_index, (int, np.integer)) and not isinstance(ignore_index, bool)
        if ignore_index is not None and not is_int:
            raise TypeError(f"CrossEntropyLoss: ignore_index must be an int or None, got {ignore_index!r}")
        self.ignore_index = None if ignore_index is None else int(ignore_index)

    def forward(self, logits: Array, target: Array) -> Array:
        loss, cache = ops.cross_entropy_forward(
            logits, target, self.label_smoothing, self.ignore_index, layer=self._label()
        )
        self._save(cache)
        return loss

    def backward(self, dout: float | Array = 1.0) -> Array:
        return ops.cross_entropy_backward(dout, self._pop_cache())

    def extra_repr(self) -> str:
        ignored = "" if self.ignore_index is None else f", ignore_index={self.ignore_index}"
        return f"label_smoothing={self.label_smoothing}{ignored}"
