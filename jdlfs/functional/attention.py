"""Scaled dot-product attention, and the reshapes multi-head attention needs.

Forward (per batch index; q (Tq, d), k (Tk, d), v (Tk, dv), mask (Tq, Tk)):
    s = q k^T / sqrt(d)                                  (Tq, Tk)
    p = softmax over k of s, restricted to mask == True    (Tq, Tk)
    o = p v                                              (Tq, dv)

Backward (g = dL/do, gp = dL/dp when the weights are returned and used):
    dv = p^T g                                            (Tk, dv)
    dp = g v^T + gp                                       (Tq, Tk)
    ds = p * (dp - sum_k(dp * p))        (softmax VJP, row-wise)
    dq = ds k / sqrt(d),    dk = ds^T q / sqrt(d)
Masked entries have p = 0 and therefore ds = 0: no gradient reaches them.

Fully masked rows (a query that may attend to nothing) are *defined* to output
zeros, with zero weights and zero gradient — not NaN (0/0 of a naive softmax)
and not a uniform average over forbidden keys (what a large negative fill
gives). The max-shift uses 0 for such rows and the normaliser 1.

Precision: the softmax normaliser sum_k exp(s_k - m) and the backward's row
sums sum_k dp p are accumulated in float32 for float16/bfloat16 inputs
(``_precision``); the weights are returned in the inputs' dtype. At least one
key is required (Tk >= 1): a softmax over nothing is refused, not NaN.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from .._checks import float_array, same_dtype, static_int
from ._precision import acc_dtype, upcast


def _weights(q, k, mask):
    scale = 1.0 / math.sqrt(q.shape[-1])
    # scores summed over d in float32+ (a float16 q.k overflows at 65,504 before any cast could help)
    s = jnp.matmul(q, jnp.swapaxes(k, -1, -2), preferred_element_type=acc_dtype(q.dtype)) * scale  # (..., Tq, Tk)
    if mask is None:
        m = jax.lax.stop_gradient(jnp.max(s, axis=-1, keepdims=True))
        e = jnp.exp(s - m)
        return (e / jnp.sum(e, axis=-1, keepdims=True)).astype(q.dtype)
    s = jnp.where(mask, s, -jnp.inf)
    m = jax.lax.stop_gradient(jnp.max(s, axis=-1, keepdims=True))
    m = jnp.where(jnp.isfinite(m), m, 0)  # fully masked row -> 0
    e = jnp.where(mask, jnp.exp(s - m), 0)
    z = jnp.sum(e, axis=-1, keepdims=True)
    return (e / jnp.where(z > 0, z, 1)).astype(q.dtype)  # fully masked row -> 0s


def _attention_forward(q, k, v, mask):
    p = _weights(q, k, mask)  # (..., Tq, Tk)
    return jnp.matmul(p, v), p  # (..., Tq, dv)


@jax.custom_vjp
def _attention(q, k, v, mask):
    return _attention_forward(q, k, v, mask)


def _attention_fwd(q, k, v, mask):
    o, p = _attention_forward(q, k, v, mask)
    return (o, p), (q, k, v, p)


def _attention_bwd(res, cts):
    q, k, v, p = res
    g, gp = cts
    scale = 1.0 / math.sqrt(q.shape[-1])
    dv = jnp.matmul(jnp.swapaxes(p, -1, -2), g)  # (..., Tk, dv)
    dp = jnp.matmul(g, jnp.swapaxes(v, -1, -2), preferred_element_type=acc_dtype(g.dtype)) + upcast(gp)  # float32+
    pa = upcast(p)
    ds = (pa * (dp - jnp.sum(dp * pa, axis=-1, keepdims=True))).astype(q.dtype)  # (..., Tq, Tk)
    dq = jnp.matmul(ds, k) * scale  # (..., Tq, d)
    dk = jnp.matmul(jnp.swapaxes(ds, -1, -2), q) * scale  # (..., Tk, d)
    return dq, dk, dv, None


_attention.defvjp(_attention_fwd, _attention_bwd)


def attention(q, k, v, *, mask=None, return_weights: bool = False):
    """Scaled dot-product attention ``softmax(q k^T / sqrt(d)) v``.

    Args:
      q: ``(..., Tq, d)``; k: ``(..., Tk, d)``; v: ``(..., Tk, dv)`` — the
        leading (batch/head) axes must be equal; ``Tk >= 1`` and ``d >= 1``.
      mask: optional bool, broadcastable to ``(..., Tq, Tk)``; True = may attend.
        A fully masked query row outputs zeros (module docstring).
      return_weights: also return the attention weights ``(..., Tq, Tk)``
        (differentiable too; used for heatmaps).
    Returns:
      ``o (..., Tq, dv)`` or ``(o, weights)``.
    """
    q = float_array("q", q, min_rank=2, layout="(..., Tq, d)")
    k = float_array("k", k, min_rank=2, layout="(..., Tk, d)")
    v = float_array("v", v, min_rank=2, layout="(..., Tk, dv)")
    same_dtype(q=q, k=k, v=v)
    if k.shape[-1] != q.shape[-1]:
        raise ValueError(f"k must have the feature size d={q.shape[-1]} of q, got k shape {k.shape}")
    if q.shape[:-2] != k.shape[:-2] or k.shape[:-2] != v.shape[:-2]:
        raise ValueError(f"q, k, v must share their leading axes, got {q.shape}, {k.shape}, {v.shape}")
    if v.shape[-2] != k.shape[-2]:
        raise ValueError(f"v must have Tk={k.shape[-2]} rows like k, got v shape {v.shape}")
    if k.shape[-2] == 0:
        raise ValueError(
            f"k must hold at least one key (Tk >= 1): a softmax over zero keys is undefined, got k shape {k.shape}"
        )
    if q.shape[-1] == 0:
        raise ValueError(
            f"q and k must have a feature size d >= 1 (the scores are scaled by 1/sqrt(d)), got q shape {q.shape}"
        )
    full = (*q.shape[:-1], k.shape[-2])  # (..., Tq, Tk)
    if mask is not None:
        mask = jnp.asarray(mask)
        if mask.dtype != jnp.bool_:
            raise TypeError(f"mask must be a bool array (True = may attend), got dtype {mask.dtype}")
        try:
            if np.broadcast_shapes(mask.shape, full) != full:
                raise ValueError
        except ValueError:
            raise ValueError(f"mask of shape {mask.shape} does not broadcast to (..., Tq, Tk) = {full}") from None
        mask = jnp.broadcast_to(mask, full)
    o, p = _attention(q, k, v, mask)
    return (o, p) if return_weights else o


def split_heads(x, num_heads: int):
    """``(B, T, H * dh) -> (B, H, T, dh)``: a reshape + transpose (autodiff of a
    permutation is its inverse permutation; no rule of its own needed)."""
    num_heads = static_int("num_heads", num_heads, minimum=1)
    if getattr(x, "ndim", None) != 3:
        raise ValueError(f"split_heads expects x of rank 3 (B, T, H * dh), got shape {getattr(x, 'shape', None)}")
    b, t, d = x.shape
    if d % num_heads:
        raise ValueError(f"model width {d} is not divisible by num_heads={num_heads}")
    return x.reshape(b, t, num_heads, d // num_heads).transpose(0, 2, 1, 3)


def merge_heads(x):
    """``(B, H, T, dh) -> (B, T, H * dh)``, the inverse of :func:`split_heads`."""
    if getattr(x, "ndim", None) != 4:
        raise ValueError(f"merge_heads expects x of rank 4 (B, H, T, dh), got shape {getattr(x, 'shape', None)}")
    b, h, t, dh = x.shape
    return x.transpose(0, 2, 1, 3).reshape(b, t, h * dh)


def causal_mask(t: int):
    """``(t, t)`` bool lower-triangular mask: position i may attend to j <= i."""
    t = static_int("t", t, minimum=1)
    return jnp.tril(jnp.ones((t, t), bool))
