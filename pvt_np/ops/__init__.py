"""Pure functional ops: ``forward(...) -> (out, cache)`` and ``backward(dout, cache) -> grads``.

The public functions are dispatchers (see :mod:`pvt_np.ops.dispatch`): the
fast reading of each op, or its plain reading inside ``use_plain()``. Each
backward returns the gradient of the input, then (for ops with parameters) of
each parameter in the forward's argument order. Every op takes its array
module from its inputs, so the same code runs on NumPy and CuPy.
"""

from pvt_np.ops import activation as _activation
from pvt_np.ops import attention as _attention
from pvt_np.ops import conv as _conv
from pvt_np.ops import dropout as _dropout
from pvt_np.ops import linear as _linear
from pvt_np.ops import loss as _loss
from pvt_np.ops import norm as _norm
from pvt_np.ops import pooling as _pooling
from pvt_np.ops.activation import erf
from pvt_np.ops.attention import AttentionCache
from pvt_np.ops.conv import ConvCache, conv_output_size
from pvt_np.ops.dispatch import OpCall, observe, register, registered_ops, use_plain
from pvt_np.ops.pooling import (
    adaptive_pool_matrix,
    nchw_to_tokens,
    nhwc_to_tokens,
    tokens_to_nchw,
    tokens_to_nhwc,
)

# The public ops are dispatchers (pvt_np.ops.dispatch): the fast reading, or the plain one inside use_plain().
linear_forward, linear_backward = register("linear", _linear.linear_forward, _linear.linear_backward)
conv2d_forward, conv2d_backward = register("conv2d", _conv.conv2d_forward, _conv.conv2d_backward)
layer_norm_forward, layer_norm_backward = register("layer_norm", _norm.layer_norm_forward, _norm.layer_norm_backward)
gelu_forward, gelu_backward = register("gelu", _activation.gelu_forward, _activation.gelu_backward)
relu_forward, relu_backward = register("relu", _activation.relu_forward, _activation.relu_backward)
softmax_forward, softmax_backward = register("softmax", _activation.softmax_forward, _activation.softmax_backward)
attention_forward, attention_backward = register(
    "attention", _attention.attention_forward, _attention.attention_backward
)
adaptive_avg_pool2d_forward, adaptive_avg_pool2d_backward = register(
    "adaptive_avg_pool2d", _pooling.adaptive_avg_pool2d_forward, _pooling.adaptive_avg_pool2d_backward
)
dropout_forward, dropout_backward = register("dropout", _dropout.dropout_forward, _dropout.dropout_backward)
drop_path_forward, drop_path_backward = register("drop_path", _dropout.drop_path_forward, _dropout.drop_path_backward)
cross_entropy_forward, cross_entropy_backward = register(
    "cross_entropy", _loss.cross_entropy_forward, _loss.cross_entropy_backward
)
token_mean_forward, token_mean_backward = register(
    "token_mean", _pooling.token_mean_forward, _pooling.token_mean_backward
)

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
    "layer_norm_backward",
    "layer_norm_forward",
    "linear_backward",
    "linear_forward",
    "nchw_to_tokens",
    "nhwc_to_tokens",
    "observe",
    "registered_ops",
    "relu_backward",
    "relu_forward",
    "softmax_backward",
    "softmax_forward",
    "token_mean_backward",
    "token_mean_forward",
    "tokens_to_nchw",
    "tokens_to_nhwc",
    "use_plain",
]
