"""Pure functional ops: ``forward(...) -> (out, cache)`` and ``backward(dout, cache) -> grads``.

Each backward returns the gradient of the input, then (for ops with
parameters) of each parameter in the forward's argument order. Every op takes
its array module from its inputs, so the same code runs on NumPy and CuPy.
"""

from pvt_np.ops.activation import (
    erf,
    gelu_backward,
    gelu_forward,
    relu_backward,
    relu_forward,
    softmax_backward,
    softmax_forward,
)
from pvt_np.ops.attention import AttentionCache, attention_backward, attention_forward
from pvt_np.ops.conv import ConvCache, conv2d_backward, conv2d_forward, conv_output_size
from pvt_np.ops.dropout import drop_path_backward, drop_path_forward, dropout_backward, dropout_forward
from pvt_np.ops.linear import linear_backward, linear_forward
from pvt_np.ops.loss import cross_entropy_backward, cross_entropy_forward
from pvt_np.ops.norm import layer_norm_backward, layer_norm_forward
from pvt_np.ops.pooling import (
    adaptive_avg_pool2d_backward,
    adaptive_avg_pool2d_forward,
    adaptive_pool_matrix,
    nchw_to_tokens,
    nhwc_to_tokens,
    token_mean_backward,
    token_mean_forward,
    tokens_to_nchw,
    tokens_to_nhwc,
)

__all__ = [
    "AttentionCache",
    "ConvCache",
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
    "relu_backward",
    "relu_forward",
    "softmax_backward",
    "softmax_forward",
    "token_mean_backward",
    "token_mean_forward",
    "tokens_to_nchw",
    "tokens_to_nhwc",
]
