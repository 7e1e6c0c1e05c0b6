"""Losses, each with a fused backward.

Softmax cross-entropy (integer labels y, K classes, optional weights m over
positions, label smoothing e):
    t = (1 - e) onehot(y) + e / K                    (target distribution)
    l_n = -sum_k t_k log p_nk = (sum_k t_k) lse(z_n) - sum_k t_k z_nk,   p_n = softmax(z_n)
    S = sum_n m_n,   C = S if S > 0 else 1
    L = sum_n m_n l_n / C                            (mean over unmasked positions)
    dL/dz_nk = g m_n (p_nk sum_j t_j - t_k) / C       (= p - t, as sum t = 1 for a valid label)
    dL/dm_n  = g (l_n - L) / C                        (float weights; L = 0 when S = 0)
  With a bool mask, padded positions of a sequence contribute neither loss nor
  gradient and the mean is over real tokens; an all-masked batch gives L = 0.
  A label outside [0, K) has an all-zero one-hot (labels cannot be range-checked
  under jit): without smoothing its loss and gradient are 0, as in optax, but it
  still counts in the mean's denominator: mask it out to exclude it.

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

from .._checks import float_array, int_array, same_dtype, static_float


# ================================================================ softmax cross-entropy
def _xent_parts(logits, labels, w, smoothing):
    k = logits.shape[-1]
    shifted = logits - lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    sum_e = jnp.sum(jnp.exp(shifted), axis=-1, keepdims=True)
    lse = jnp.log(sum_e)                                                      # (..., 1), shifted lse
    onehot = jax.nn.one_hot(labels, k, dtype=logits.dtype)                    # (..., K); 0s if out of range
    target = onehot if smoothing == 0.0 else (1 - smoothing) * onehot + smoothing / k
    # l_n = -sum_k t_k log p_k = sum_k t_k (lse - shifted_k): the shift cancels
    # for any t (so it needs no gradient), and every term is >= +0.
    per_pos = jnp.sum(target * (lse - shifted), axis=-1)                      # (...)
    if w is None:
        count = jnp.asarray(per_pos.size, logits.dtype)
        loss = jnp.sum(per_pos) / count
    else:
        total = jnp.sum(w)
        count = jnp.where(total > 0, total, 1)                                # all masked -> L = 0
        loss = jnp.sum(w * per_pos) / count
    return loss, (jnp.exp(shifted) / sum_e, target, count, per_pos)


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def _softmax_xent(logits, labels, w, smoothing):
    return _xent_parts(logits, labels, w, smoothing)[0]


def _softmax_xent_fwd(logits, labels, w, smoothing):
    loss, (p, target, count, per_pos) = _xent_parts(logits, labels, w, smoothing)
    return loss, (p, target, w, count, per_pos, loss)


def _softmax_xent_bwd(smoothing, res, g):
    p, target, w, count, per_pos, loss = res
    scale = g / count
    residual = p * jnp.sum(target, axis=-1, keepdims=True) - target          # p sum(t) - t; = p - t for valid labels
    if w is None:
        return scale * residual, None, None                                   # labels: no cotangent
    dlogits = (scale * w)[..., None] * residual                               # (..., K)
    dw = scale * (per_pos - loss)                                             # (...)
    return dlogits, None, dw


_softmax_xent.defvjp(_softmax_xent_fwd, _softmax_xent_bwd)


def softmax_cross_entropy(logits, labels, *, mask=None, label_smoothing: float = 0.0):
    """Mean cross-entropy of ``softmax(logits)`` against integer ``labels``.

    Args:
      logits: ``(..., K)`` floating.
      labels: ``(...)`` integer class ids in ``[0, K)``. Not range-checked
        under ``jit``: an id outside has an all-zero one-hot, so (without
        smoothing) zero loss and gradient, yet it counts in the mean — mask it.
      mask: optional ``(...)`` weights: bool (True = counts, e.g. the real
        tokens of padded sequences) or float (per-position weights, which are
        differentiable). The loss is ``sum(mask * l) / sum(mask)``, or 0 when
        ``sum(mask) == 0``. Weights should be non-negative (not checked).
      label_smoothing: ``e`` in ``[0, 1)``; target ``(1 - e) onehot + e / K``.
    Returns:
      scalar loss. Gradient w.r.t. logits ``(softmax - target) * mask / sum(mask)``.
    """
    logits = float_array("logits", logits, min_rank=1, layout="(..., K)")
    labels = int_array("labels", labels)
    if labels.shape != logits.shape[:-1]:
        raise ValueError(f"labels must have shape logits.shape[:-1] = {logits.shape[:-1]}, "
                         f"got {labels.shape}")
    w = None
    if mask is not None:
        mask = jnp.asarray(mask)
        if mask.shape != labels.shape:
            raise ValueError(f"mask must have the shape of labels {labels.shape}, got {mask.shape}")
        if not (mask.dtype == jnp.bool_ or jnp.issubdtype(mask.dtype, jnp.number)):
            raise TypeError(f"mask must be bool or numeric, got dtype {mask.dtype}")
        # Bool/int masks become constant weights (astype has no gradient path);
        # float weights of logits' dtype stay differentiable through the rule.
        w = mask.astype(logits.dtype)
    label_smoothing = static_float("label_smoothing", label_smoothing)
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    return _softmax_xent(logits, labels, w, label_smoothing)


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
