"""Affine map ``y = x W + b``.

Forward
    y[..., o] = sum_i x[..., i] W[i, o] + b[o]          x (..., in), W (in, out), b (out,)

Backward (g = dL/dy, batch axes flattened into one axis of length M)
    dL/dx = g W^T                                          (..., in)
    dL/dW = x^T g   = sum_m x[m, i] g[m, o]                (in, out)
    dL/db = sum_m g[m, o]                                  (out,)

These are the two matmuls and one reduction autodiff would emit; the rule just
writes them out, reshaping the batch axes to one so each is a single GEMM.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._checks import float_array, same_dtype, shape_is


@jax.custom_vjp
def _linear(x, w, b):
    y = jnp.matmul(x, w)  # (..., out)
    return y if b is None else y + b


def _linear_fwd(x, w, b):
    return _linear(x, w, b), (x, w, b is None)


def _linear_bwd(res, g):
    x, w, no_bias = res
    x2 = x.reshape(-1, x.shape[-1])  # (M, in)
    g2 = g.reshape(-1, g.shape[-1])  # (M, out)
    dx = jnp.matmul(g, w.T)  # (..., in)
    dw = jnp.matmul(x2.T, g2)  # (in, out)
    db = None if no_bias else jnp.sum(g2, axis=0)  # (out,)
    return dx, dw, db


_linear.defvjp(_linear_fwd, _linear_bwd)


def linear(x, w, b=None):
    """Affine layer ``x @ w + b`` with a hand-written backward (see module docstring).

    Args:
      x: ``(..., in)`` floating array.
      w: ``(in, out)`` weights.
      b: optional ``(out,)`` bias.
    Returns:
      ``(..., out)``.
    """
    x = float_array("x", x, min_rank=1, layout="(..., in)")
    w = float_array("w", w, rank=2, layout="(in, out)")
    if x.shape[-1] != w.shape[0]:
        raise ValueError(
            f"linear: x has {x.shape[-1]} input features (last axis of shape "
            f"{x.shape}) but w expects {w.shape[0]} (w shape {w.shape}, layout (in, out))"
        )
    if b is not None:
        b = float_array("b", b, rank=1, layout="(out,)")
        shape_is("b", b, (w.shape[1],), "one bias per output feature")
    same_dtype(x=x, w=w, b=b)
    return _linear(x, w, b)
