"""Losses, each with a fused backward.

Softmax cross-entropy (integer labels y, K classes, optional mask over
positions, label smoothing e):
    t = (1 - e) onehot(y) + e / K                    (target distribution)
    l_n = lse(z_n) - sum_k t_k z_nk                  (= -sum_k t_k log softmax(z_n)_k)
    L = sum_n m_n l_n / C,     C = max(sum_n m_n, 1)  (mean over unmasked positions)
    dL/dz_nk = g m_n (softmax(z_n)_k - t_k) / C       (sum_k t_k = 1 makes this exact)
  With the mask, padded positions of a sequence contribute neither loss nor
  gradient and the mean is over real tokens. An all-masked batch gives L = 0.

Binary cross-entropy with logits (targets t in [0, 1], mean over all N entries):
    l = max(z, 0) - z t + log(1 + exp(-|z|))          (stable form of -t log s - (1-t) log(1-s))
    dL/dz = g (sigmoid(z) - t) / N,     dL/dt = -g z / N

Mean squared error over all N entries:
    L = sum (p - t)^2 / N,     dL/dp = 2 g (p - t) / N,     dL/dt = -dL/dp
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from .._checks import float_array, int_array, same_dtype


# ================================================================ softmax cross-entropy
def _xent_parts(logits, labels, mask, smoothing):
    k = logits.shape[-1]
    m = lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    shifted = logits - m
    lse = jnp.log(jnp.sum(jnp.exp(shifted), axis=-1, keepdims=True))         # (..., 1)
    log_p = shifted - lse                                                     # (..., K)
    onehot = jax.nn.one_hot(labels, k, dtype=logits.dtype)                    # (..., K)
    target = onehot if smoothing == 0.0 else (1 - smoothing) * onehot + smoothing / k
    per_pos = jnp.sum(target * (lse - shifted), axis=-1)                      # (...) = -sum t log p, >= +0
    w = jnp.ones(labels.shape, logits.dtype) if mask is None else mask.astype(logits.dtype)
    count = jnp.maximum(jnp.sum(w), 1)
    return jnp.sum(w * per_pos) / count, (log_p, target, w, count)


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def _softmax_xent(logits, labels, mask, smoothing):
    return _xent_parts(logits, labels, mask, smoothing)[0]


def _softmax_xent_fwd(logits, labels, mask, smoothing):
    loss, (log_p, target, w, count) = _xent_parts(logits, labels, mask, smoothing)
    return loss, (jnp.exp(log_p), target, w, count)


def _softmax_xent_bwd(smoothing, res, g):
    p, target, w, count = res
    dlogits = (g * w / count)[..., None] * (p - target)                      # (..., K)
    return dlogits, None, None                                               # labels, mask: no cotangent


_softmax_xent.defvjp(_softmax_xent_fwd, _softmax_xent_bwd)


def softmax_cross_entropy(logits, labels, *, mask=None, label_smoothing: float = 0.0):
    """Mean cross-entropy of ``softmax(logits)`` against integer ``labels``.

    Args:
      logits: ``(..., K)`` floating.
      labels: ``(...)`` integer class ids in ``[0, K)`` (an id outside that
        range has an all-zero one-hot: its loss is ``lse(z)`` and it is not
        checked under ``jit``).
      mask: optional ``(...)`` bool/float weights; the mean is over
        ``sum(mask)`` (e.g. real tokens of padded sequences).
      label_smoothing: ``e`` in ``[0, 1)``; target ``(1 - e) onehot + e / K``.
    Returns:
      scalar loss. Gradient w.r.t. logits ``(softmax - target) * mask / count``.
    """
    logits = float_array("logits", logits, min_rank=1, layout="(..., K)")
    labels = int_array("labels", labels)
    if labels.shape != logits.shape[:-1]:
        raise ValueError(f"labels must have shape logits.shape[:-1] = {logits.shape[:-1]}, "
                         f"got {labels.shape}")
    if mask is not None:
        mask = jnp.asarray(mask)
        if mask.shape != labels.shape:
            raise ValueError(f"mask must have the shape of labels {labels.shape}, got {mask.shape}")
        if not (mask.dtype == jnp.bool_ or jnp.issubdtype(mask.dtype, jnp.number)):
            raise TypeError(f"mask must be bool or numeric, got dtype {mask.dtype}")
    label_smoothing = float(label_smoothing)
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    return _softmax_xent(logits, labels, mask, label_smoothing)


# ================================================================ binary cross-entropy
def _bce_forward(z, t):
    return jnp.mean(jnp.maximum(z, 0) - z * t + jnp.log1p(jnp.exp(-jnp.abs(z))))


@jax.custom_vjp
def _bce(z, t):
    return _bce_forward(z, t)


def _bce_fwd(z, t):
    return _bce_forward(z, t), (z, t)


def _bce_bwd(res, g):
    z, t = res
    scale = g / z.size
    return scale * (lax.logistic(z) - t), -scale * z


_bce.defvjp(_bce_fwd, _bce_bwd)


def binary_cross_entropy_with_logits(logits, targets):
    """Mean binary cross-entropy of ``sigmoid(logits)`` against ``targets`` in
    ``[0, 1]`` (same shape). Gradient ``(sigmoid(z) - t) / N`` w.r.t. logits,
    ``-z / N`` w.r.t. targets."""
    logits = float_array("logits", logits)
    targets = float_array("targets", targets)
    if logits.shape != targets.shape:
        raise ValueError(f"targets must have the shape of logits {logits.shape}, got {targets.shape}")
    same_dtype(logits=logits, targets=targets)
    return _bce(logits, targets)


# ================================================================ mean squared error
@jax.custom_vjp
def _mse(p, t):
    return jnp.mean((p - t) ** 2)


def _mse_fwd(p, t):
    return _mse(p, t), p - t


def _mse_bwd(diff, g):
    dp = (2 * g / diff.size) * diff
    return dp, -dp


_mse.defvjp(_mse_fwd, _mse_bwd)


def mse(pred, target):
    """Mean over all entries of ``(pred - target)^2``; gradient ``2 (p - t) / N``."""
    pred = float_array("pred", pred)
    target = float_array("target", target)
    if pred.shape != target.shape:
        raise ValueError(f"target must have the shape of pred {pred.shape}, got {target.shape}")
    same_dtype(pred=pred, target=target)
    return _mse(pred, target)
