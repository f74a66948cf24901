"""Pure functional ops: ``forward(...) -> (out, cache)`` and ``backward(dout, cache) -> grads``.

The public functions are dispatchers (see :mod:`pvt_np.ops.dispatch`): the
fast implementation of each op (``pvt_np/ops/<family>.py``), or its plain one
(:mod:`pvt_np.ops.plain`, the formula as it reads) inside ``use_plain()``; what
``help()`` shows for each is the plain implementation's docstring, the formula and
its derived gradient, and where both implementations live. Each backward returns the
gradient of the input, then (for ops with parameters) of each parameter in the
forward's argument order. Every op takes its array module from its inputs, so
the same code runs on NumPy and CuPy; a fast op whose CPU and GPU code differ
chooses between its ``_cpu`` and ``_gpu`` functions in one place
(:func:`pvt_np.ops.cuda.active`). Every forward takes the keyword ``layer=``
(default: the op's name), the name its input checks (:mod:`pvt_np.ops.checks`,
shared by both implementations) put in their messages; the layers pass their own
label. ``who=``, its former name, is still taken, with a DeprecationWarning.
"""

from pvt_np.ops import activation as _activation
from pvt_np.ops import attention as _attention
from pvt_np.ops import conv as _conv
from pvt_np.ops import dropout as _dropout
from pvt_np.ops import group_norm as _group_norm
from pvt_np.ops import linear as _linear
from pvt_np.ops import loss as _loss
from pvt_np.ops import norm as _norm
from pvt_np.ops import plain as _plain
from pvt_np.ops import pooling as _pooling
from pvt_np.ops import resize as _resize
from pvt_np.ops.activation import erf
from pvt_np.ops.attention import AttentionCache
from pvt_np.ops.conv import ConvCache, conv_output_size
from pvt_np.ops.dispatch import OpCall, observe, register, registered_ops, use_plain
from pvt_np.ops.pooling import (
    adaptive_pool_matrix,
    nhwc_to_tokens,
    tokens_to_nhwc,
)
from pvt_np.ops.resize import interpolation_matrix

# The public ops are dispatchers (pvt_np.ops.dispatch): the fast implementation, or the plain one in use_plain().
linear_forward, linear_backward = register(
    "linear",
    _linear.linear_forward,
    _linear.linear_backward,
    _plain.linear_forward,
    _plain.linear_backward,
    _plain.PlainLinearCache,
)
conv2d_forward, conv2d_backward = register(
    "conv2d",
    _conv.conv2d_forward,
    _conv.conv2d_backward,
    _plain.conv2d_forward,
    _plain.conv2d_backward,
    _plain.PlainConv2dCache,
)
layer_norm_forward, layer_norm_backward = register(
    "layer_norm",
    _norm.layer_norm_forward,
    _norm.layer_norm_backward,
    _plain.layer_norm_forward,
    _plain.layer_norm_backward,
    _plain.PlainLayerNormCache,
)
group_norm_forward, group_norm_backward = register(
    "group_norm",
    _group_norm.group_norm_forward,
    _group_norm.group_norm_backward,
    _plain.group_norm_forward,
    _plain.group_norm_backward,
    _plain.PlainGroupNormCache,
)
gelu_forward, gelu_backward = register(
    "gelu",
    _activation.gelu_forward,
    _activation.gelu_backward,
    _plain.gelu_forward,
    _plain.gelu_backward,
    _plain.PlainGeluCache,
)
relu_forward, relu_backward = register(
    "relu",
    _activation.relu_forward,
    _activation.relu_backward,
    _plain.relu_forward,
    _plain.relu_backward,
    _plain.PlainReluCache,
)
softmax_forward, softmax_backward = register(
    "softmax",
    _activation.softmax_forward,
    _activation.softmax_backward,
    _plain.softmax_forward,
    _plain.softmax_backward,
    _plain.PlainSoftmaxCache,
)
attention_forward, attention_backward = register(
    "attention",
    _attention.attention_forward,
    _attention.attention_backward,
    _plain.attention_forward,
    _plain.attention_backward,
    _plain.PlainAttentionCache,
)
adaptive_avg_pool2d_forward, adaptive_avg_pool2d_backward = register(
    "adaptive_avg_pool2d",
    _pooling.adaptive_avg_pool2d_forward,
    _pooling.adaptive_avg_pool2d_backward,
    _plain.adaptive_avg_pool2d_forward,
    _plain.adaptive_avg_pool2d_backward,
    _plain.PlainAdaptiveAvgPool2dCache,
)
interpolate_forward, interpolate_backward = register(
    "interpolate",
    _resize.interpolate_forward,
    _resize.interpolate_backward,
    _plain.interpolate_forward,
    _plain.interpolate_backward,
    _plain.PlainInterpolateCache,
)
dropout_forward, dropout_backward = register(
    "dropout",
    _dropout.dropout_forward,
    _dropout.dropout_backward,
    _plain.dropout_forward,
    _plain.dropout_backward,
    _plain.PlainDropoutCache,
)
drop_path_forward, drop_path_backward = register(
    "drop_path",
    _dropout.drop_path_forward,
    _dropout.drop_path_backward,
    _plain.drop_path_forward,
    _plain.drop_path_backward,
    _plain.PlainDropoutCache,
)
cross_entropy_forward, cross_entropy_backward = register(
    "cross_entropy",
    _loss.cross_entropy_forward,
    _loss.cross_entropy_backward,
    _plain.cross_entropy_forward,
    _plain.cross_entropy_backward,
    _plain.PlainCrossEntropyCache,
)
token_mean_forward, token_mean_backward = register(
    "token_mean", _pooling.token_mean_forward, _pooling.token_mean_backward,
    _plain.token_mean_forward, _plain.token_mean_backward, _plain.PlainTokenMeanCache,
)  # fmt: skip

__all__ = [
    "AttentionCache",
    "ConvCache",
    "OpCall",
    "adaptive_avg_pool2d_backward",
    "adaptive_avg_pool2d_forward",
    "adaptive_pool_matrix",
    "attention_backward",
    "attention_forward",
    "conv2d_backward",
    "conv2d_forward",
    "conv_output_size",
    "cross_entropy_backward",
    "cross_entropy_forward",
    "drop_path_backward",
    "drop_path_forward",
    "dropout_backward",
    "dropout_forward",
    "erf",
    "gelu_backward",
    "gelu_forward",
    "group_norm_backward",
    "group_norm_forward",
    "interpolate_backward",
    "interpolate_forward",
    "interpolation_matrix",
    "layer_norm_backward",
    "layer_norm_forward",
    "linear_backward",
    "linear_forward",
    "nhwc_to_tokens",
    "observe",
    "registered_ops",
    "relu_backward",
    "relu_forward",
    "softmax_backward",
    "softmax_forward",
    "token_mean_backward",
    "token_mean_forward",
    "tokens_to_nhwc",
    "use_plain",
]
