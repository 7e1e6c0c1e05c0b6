"""``jdlfs.functional`` — pure JAX ops with hand-written backward passes.

Every public op validates its inputs, then calls a ``jax.custom_vjp`` whose
backward rule is written out by hand (no ``jax.vjp``/``jax.grad`` inside a
rule) with its derivation in the module docstring next to it. Configuration
(stride, padding, axis, rate, eps) is static Python data; differentiable
inputs are arrays. Layouts: images NHWC, conv kernels HWIO, linear weights
``(in, out)``.
"""

from .activations import gelu, leaky_relu, relu, sigmoid, step, tanh
from .attention import attention, causal_mask, merge_heads, split_heads
from .conv import conv2d, conv2d_im2col
from .dropout import dropout
from .embedding import embedding
from .linear import linear
from .losses import binary_cross_entropy_with_logits, mse, softmax_cross_entropy
from .lstm import lstm
from .normalization import batch_norm, batch_norm_inference, layer_norm
from .patches import patchify, take_tokens, unpatchify
from .pooling import avg_pool2d, global_avg_pool, max_pool2d
from .recurrent import rnn
from .softmax import log_softmax, logsumexp, softmax

__all__ = [
    "linear",
    "conv2d",
    "conv2d_im2col",
    "max_pool2d",
    "avg_pool2d",
    "global_avg_pool",
    "relu",
    "leaky_relu",
    "sigmoid",
    "tanh",
    "gelu",
    "step",
    "softmax",
    "log_softmax",
    "logsumexp",
    "softmax_cross_entropy",
    "binary_cross_entropy_with_logits",
    "mse",
    "dropout",
    "batch_norm",
    "batch_norm_inference",
    "layer_norm",
    "embedding",
    "attention",
    "split_heads",
    "merge_heads",
    "causal_mask",
    "rnn",
    "lstm",
    "patchify",
    "unpatchify",
    "take_tokens",
]
