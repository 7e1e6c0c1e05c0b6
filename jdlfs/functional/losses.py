"""Losses, each with a fused backward.

Softmax cross-entropy (integer labels y, K classes, optional weights m over
positions, label smoothing e):
    t = (1 - e) onehot(y) + e / K                    (target distribution)
    l_n = -sum_k t_k log p_nk = (sum_k t_k) lse(z_n) - sum_k t_k z_nk,   p_n = softmax(z_n)
    S = sum_n m_n,   C = S if S > 0 else 1
    L = sum_n m_n l_n / C                            (mean over unmasked positions)
    dL/dz_nk = g m_n (p_nk sum_j t_j - t_k) / C       (= p - t, as sum t = 1 for a valid label)
    dL/dm_n  = g (l_n - [S > 0] L) / C                (float weights)
  No one-hot is formed (each would cost a pass over N x K, the size of the logits):
    l_n = (1 - e) [y_n valid] (lse - z_ny) + (e / K) (K lse - sum_k z_nk)
  (a gather of the label's logit; the row sum only with smoothing), and with
  sum_j t_j = (1 - e) [y_n valid] + e in closed form and p = E / sum_k E_k
  (E = exp(z - max z), saved by the forward)
    dL/dz_nk = c_n (sum_j t_j / sum_k E_nk) E_nk - c_n e / K - c_n (1 - e) [y_n valid] [k = y_n],
    c_n = g m_n / C
  one elementwise pass over E, then the label term added at one entry per row.
  Logits of -inf (a masked vocabulary): without smoothing the loss stays finite
  (the label's logit is gathered, the -inf ones only enter as E = 0) and they get
  zero gradient, as long as the label's own logit is finite; with smoothing every
  class has target mass e / K, so the loss is +inf.
  The weight gradient differentiates both branches of C: where S > 0, C = S
  depends on m (the ``- L`` term); where S <= 0, C = 1 is constant and
  dL/dm_n = g l_n. So the rule is the derivative of the forward for weights of
  any sign, e.g. ``[1, -1]`` (S = 0, L = l_1 - l_2); only at S = 0 itself the
  forward jumps. Weights are meant to be non-negative: with mixed signs and S
  near 0+ the "mean" divides by a tiny S and is huge.
  With a bool mask, padded positions of a sequence contribute neither loss nor
  gradient and the mean is over real tokens; an all-masked (or empty) batch
  gives L = 0 (no mask: S = number of positions).
  A label outside [0, K) has an all-zero one-hot (labels are never range-checked,
  eager or under jit): without smoothing its loss and gradient are 0, but it still
  counts in the mean's denominator: mask it out to exclude it. (optax's
  ``softmax_cross_entropy_with_integer_labels`` differs: label >= K gives NaN
  and -1 reads class K - 1.) Labels of every integer dtype (int8..int64,
  uint8..uint64) give the int32 result: a uint8 label 5 with 300 classes is
  class 5 only, a uint64 label above 2**32 is out of range.

Binary cross-entropy with logits (targets t in [0, 1], mean over all N entries):
    l = max(z, 0) - z t + log(1 + exp(-|z|))          (stable form of -t log s - (1-t) log(1-s))
    dL/dz = g (sigmoid(z) - t) / N,     dL/dt = -g z / N

Mean squared error over all N entries:
    L = sum (p - t)^2 / N,     dL/dp = 2 g (p - t) / N,     dL/dt = -dL/dp

Precision: every loss computes in float32 for float16/bfloat16 input (float64
for float64; ``_precision``): per-position terms, their sum, the count S and
the scale g / C, so 16,384 x 1,000 float16 logits or 70,000 positions (sum
and count above float16's 65,504) and a bfloat16 count of 257 are exact; the
loss and the gradients are returned in the input dtypes. The E = exp(z - max)
saved for cross-entropy's backward is kept in the logits' dtype (its entries lie
in (0, 1]; no more memory than the logits), its row sums in float32.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from .._checks import float_array, index_array, same_dtype, static_float
from ._precision import upcast


# ================================================================ softmax cross-entropy
def _target_mass(labels, smoothing, dtype):
    """sum_k t_k, (..., 1): (1 - e) [label valid] + e (dropped labels are -1)."""
    valid = (labels >= 0).astype(dtype)[..., None]
    return valid if smoothing == 0.0 else (1 - smoothing) * valid + smoothing


def _xent_parts(logits, labels, w, smoothing):
    z = upcast(logits)  # float32 or wider
    k = z.shape[-1]
    m = lax.stop_gradient(jnp.max(z, axis=-1, keepdims=True))  # (..., 1)
    e = jnp.exp(z - m)
    sum_e = jnp.sum(e, axis=-1, keepdims=True)
    lse = jnp.log(sum_e)[..., 0]  # (...), lse of the shifted z - m
    # l_n = sum_k t_k (lse - shifted_k) without forming t (one-hot): the label's term
    # is a gather, the smoothing term a row sum. The shift cancels for any t (so it
    # needs no gradient), and every term is >= +0 (lse >= z_k - m).
    picked = (jnp.take_along_axis(z, jnp.maximum(labels, 0)[..., None], axis=-1) - m)[..., 0]
    per_pos = jnp.where(labels >= 0, (1 - smoothing) * (lse - picked), 0)  # (...)
    if smoothing != 0.0:
        per_pos = per_pos + (smoothing / k) * (k * lse - jnp.sum(z - m, axis=-1))
    if w is None:
        count = jnp.asarray(max(per_pos.size, 1), z.dtype)  # empty batch -> L = 0
        loss = jnp.sum(per_pos) / count
        centre = loss
    else:
        wa = upcast(w)
        total = jnp.sum(wa)
        count = jnp.where(total > 0, total, 1)  # all masked -> L = 0
        loss = jnp.sum(wa * per_pos) / count
        centre = jnp.where(total > 0, loss, 0)  # [S > 0] L
    # saved for the backward: exp(z - m) in the logits' dtype (its entries are in (0, 1]) and its row sum
    return loss.astype(logits.dtype), (e.astype(logits.dtype), sum_e, labels, w, count, per_pos, centre)


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def _softmax_xent(logits, labels, w, smoothing):
    return _xent_parts(logits, labels, w, smoothing)[0]


def _softmax_xent_fwd(logits, labels, w, smoothing):
    return _xent_parts(logits, labels, w, smoothing)


def _softmax_xent_bwd(smoothing, res, g):
    e, sum_e, labels, w, count, per_pos, centre = res
    acc, k = count.dtype, e.shape[-1]
    c = g.astype(acc) / count  # (), or (...) times the weights
    if w is not None:
        c = c * upcast(w)
    c = jnp.broadcast_to(c, labels.shape)[..., None]  # (..., 1)
    # dL/dz = c (p sum_j t_j - t) = c sum_t / sum_e * e - c e / K - c (1 - e) [k = y]:
    # one elementwise pass over e, then the label term added at one entry per row.
    dlogits = (c * _target_mass(labels, smoothing, acc) / sum_e) * upcast(e)  # (..., K)
    if smoothing != 0.0:
        dlogits = dlogits - c * (smoothing / k)
    at_label = jnp.where(labels >= 0, -(1 - smoothing) * c[..., 0], 0).reshape(-1)  # dropped label: nothing
    rows = jnp.arange(at_label.size)
    flat = dlogits.reshape(-1, k).at[rows, jnp.maximum(labels, 0).reshape(-1)].add(at_label, unique_indices=True)
    dlogits = flat.reshape(e.shape).astype(e.dtype)
    if w is None:
        return dlogits, None, None  # labels: no cotangent
    dw = g.astype(acc) / count * (per_pos - centre)  # (...)
    return dlogits, None, dw.astype(w.dtype)


_softmax_xent.defvjp(_softmax_xent_fwd, _softmax_xent_bwd)


def softmax_cross_entropy(logits, labels, *, mask=None, label_smoothing: float = 0.0):
    """Mean cross-entropy of ``softmax(logits)`` against integer ``labels``.

    Args:
      logits: ``(..., K)`` floating, ``K >= 1``.
      labels: ``(...)`` integer class ids in ``[0, K)``, any integer dtype. Never
        range-checked (eager or under ``jit``): an id outside has an all-zero
        one-hot, so (without smoothing) zero loss and gradient — unlike optax,
        where a label >= K gives NaN — yet it counts in the mean: mask it.
      mask: optional ``(...)`` weights: bool (True = counts, e.g. the real
        tokens of padded sequences) or float (per-position weights, which are
        differentiable). The loss is ``sum(mask * l) / sum(mask)``, or
        ``sum(mask * l)`` when ``sum(mask) <= 0`` (0 for an all-False mask).
        Weights are meant to be non-negative; for any sign the gradient is the
        exact derivative of this formula (module docstring).
      label_smoothing: ``e`` in ``[0, 1)``; target ``(1 - e) onehot + e / K``.
    Returns:
      scalar loss in logits' dtype (accumulated in float32 or wider). Gradient
      w.r.t. logits ``(softmax - target) * mask / sum(mask)``. With ``-inf``
      logits (vocabulary masking) and no smoothing the loss is finite (the
      label's logit is gathered); with smoothing it is ``inf``.
    """
    logits = float_array("logits", logits, min_rank=1, layout="(..., K)")
    if logits.shape[-1] == 0:
        raise ValueError(f"logits must have at least one class (K >= 1) on the last axis, got shape {logits.shape}")
    labels = index_array("labels", labels, logits.shape[-1], out_of_range="drop")
    if labels.shape != logits.shape[:-1]:
        raise ValueError(f"labels must have shape logits.shape[:-1] = {logits.shape[:-1]}, got {labels.shape}")
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
    za, ta = upcast(z), upcast(t)
    return jnp.mean(jnp.maximum(za, 0) - za * ta + jnp.log1p(jnp.exp(-jnp.abs(za)))).astype(z.dtype)


@jax.custom_vjp
def _bce(z, t):
    return _bce_forward(z, t)


def _bce_fwd(z, t):
    return _bce_forward(z, t), (z, t)


def _bce_bwd(res, g):
    z, t = res
    za, ta = upcast(z), upcast(t)
    scale = g.astype(za.dtype) / z.size  # in float32: N may exceed float16's range
    return (scale * (lax.logistic(za) - ta)).astype(z.dtype), (-scale * za).astype(t.dtype)


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
    return jnp.mean((upcast(p) - upcast(t)) ** 2).astype(p.dtype)


def _mse_fwd(p, t):
    return _mse(p, t), upcast(p) - upcast(t)  # p, t and the loss share one dtype


def _mse_bwd(diff, g):
    dp = (2 * g.astype(diff.dtype) / diff.size) * diff  # in float32: N may exceed float16's range
    return dp.astype(g.dtype), (-dp).astype(g.dtype)


_mse.defvjp(_mse_fwd, _mse_bwd)


def mse(pred, target):
    """Mean over all entries of ``(pred - target)^2``; gradient ``2 (p - t) / N``."""
    pred = float_array("pred", pred)
    target = float_array("target", target)
    if pred.shape != target.shape:
        raise ValueError(f"target must have the shape of pred {pred.shape}, got {target.shape}")
    same_dtype(pred=pred, target=target)
    return _mse(pred, target)
