"""softmax, log_softmax and logsumexp along one axis.

Forward (shifted by the max m = max_k x_k, so exp never overflows and logits of
magnitude 1e4 stay finite; at least one term is exp(0) = 1, so log never sees 0)
    z           = x - m                               (exact: the shift comes first)
    lse(x)      = m + log sum_k exp(z_k)
    softmax(x)  = exp(z) / sum_k exp(z_k)
    log_softmax = z - log sum_k exp(z_k)
Forming ``x - lse(x)`` instead would round lse to the float32 spacing of |x|
(~1e-3 at 1e4) before subtracting; working on the shifted z keeps full precision.

Backward (p = softmax(x), g = upstream cotangent, sums along ``axis``)
    lse:          d lse / dx_k = p_k                  ->  dx = g p           (g broadcast)
    softmax:      dp_i / dx_k = p_i (d_ik - p_k)      ->  dx = p (g - sum(g p))
    log_softmax:  d ls_i / dx_k = d_ik - p_k          ->  dx = g - p sum(g)

If every entry along the axis is ``-inf`` the result is NaN (an empty
distribution has no normaliser); :func:`jdlfs.functional.attention` handles
fully masked rows explicitly instead.

Precision: for float16/bfloat16 input the exponentials, their sum and its log
are computed in float32 (``_precision``) and the result is cast back, so a
normaliser over more than 65,504 classes cannot overflow; the backward sums
(``sum(g p)``, ``sum(g)``) are float32 too.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from .._checks import float_array
from ._precision import upcast


def _shifted(x, axis):
    """(z, log sum exp z, m) in the accumulation dtype, with m = max(x) (kept
    dims), z = x - m. The max only shifts (the result does not depend on it),
    so it carries no gradient."""
    x = upcast(x)
    m = lax.stop_gradient(jnp.max(x, axis=axis, keepdims=True))
    z = x - m
    return z, jnp.log(jnp.sum(jnp.exp(z), axis=axis, keepdims=True)), m


def _lse(x, axis):
    _, log_sum, m = _shifted(x, axis)
    return m + log_sum


def _axis(x, axis) -> int:
    if not isinstance(axis, int) or isinstance(axis, bool):
        raise TypeError(f"axis must be a Python int, got {axis!r}")
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis {axis} is out of range for x of shape {x.shape}")
    return axis % x.ndim


# ---------------------------------------------------------------- logsumexp
@partial(jax.custom_vjp, nondiff_argnums=(1,))
def _logsumexp(x, axis):
    return jnp.squeeze(_lse(x, axis), axis).astype(x.dtype)


def _logsumexp_fwd(x, axis):
    lse = _lse(x, axis)  # accumulation dtype, kept dims
    return jnp.squeeze(lse, axis).astype(x.dtype), (x, lse)


def _logsumexp_bwd(axis, res, g):
    x, lse = res
    p = jnp.exp(upcast(x) - lse)  # softmax(x); x - lse <= 0
    return ((upcast(jnp.expand_dims(g, axis)) * p).astype(x.dtype),)


_logsumexp.defvjp(_logsumexp_fwd, _logsumexp_bwd)


def logsumexp(x, axis: int = -1):
    """``log sum exp(x)`` along ``axis`` (removed); gradient ``g * softmax(x)``."""
    x = float_array("x", x, min_rank=1)
    return _logsumexp(x, _axis(x, axis))


# ---------------------------------------------------------------- softmax
@partial(jax.custom_vjp, nondiff_argnums=(1,))
def _softmax(x, axis):
    e = jnp.exp(_shifted(x, axis)[0])
    return (e / jnp.sum(e, axis=axis, keepdims=True)).astype(x.dtype)


def _softmax_fwd(x, axis):
    p = _softmax(x, axis)
    return p, p


def _softmax_bwd(axis, p, g):
    pa, ga = upcast(p), upcast(g)
    return ((pa * (ga - jnp.sum(ga * pa, axis=axis, keepdims=True))).astype(p.dtype),)


_softmax.defvjp(_softmax_fwd, _softmax_bwd)


def softmax(x, axis: int = -1):
    """``exp(x) / sum exp(x)`` along ``axis``; gradient ``p * (g - sum(g p))``."""
    x = float_array("x", x, min_rank=1)
    return _softmax(x, _axis(x, axis))


# ---------------------------------------------------------------- log_softmax
@partial(jax.custom_vjp, nondiff_argnums=(1,))
def _log_softmax(x, axis):
    z, log_sum, _ = _shifted(x, axis)
    return (z - log_sum).astype(x.dtype)


def _log_softmax_fwd(x, axis):
    xa = upcast(x)
    z = xa - lax.stop_gradient(jnp.max(xa, axis=axis, keepdims=True))
    e = jnp.exp(z)  # one exp, shared by y and the saved softmax
    s = jnp.sum(e, axis=axis, keepdims=True)
    return (z - jnp.log(s)).astype(x.dtype), (e / s).astype(x.dtype)


def _log_softmax_bwd(axis, p, g):
    ga = upcast(g)
    return ((ga - upcast(p) * jnp.sum(ga, axis=axis, keepdims=True)).astype(p.dtype),)


_log_softmax.defvjp(_log_softmax_fwd, _log_softmax_bwd)


def log_softmax(x, axis: int = -1):
    """``x - logsumexp(x)`` along ``axis``; gradient ``g - softmax(x) * sum(g)``."""
    x = float_array("x", x, min_rank=1)
    return _log_softmax(x, _axis(x, axis))
