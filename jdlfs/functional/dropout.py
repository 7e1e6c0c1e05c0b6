"""Inverted dropout.

Forward, with keep probability q = 1 - rate and a Bernoulli(q) mask M drawn
from ``key``:
    y = M * x / q                       (E[y] = x, so inference is the identity)
Backward: y is linear in x with the *same* mask,
    dL/dx = M * g / q
The mask is a residual of the forward pass (one bool per element), so the
backward never re-draws it. The key gets no cotangent.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from .._checks import float_array, static_bool, static_float


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _masked_scale(x, keep, scale):
    return jnp.where(keep, x * scale, 0)


def _masked_scale_fwd(x, keep, scale):
    return _masked_scale(x, keep, scale), keep


def _masked_scale_bwd(scale, keep, g):
    return jnp.where(keep, g * scale, 0), None


_masked_scale.defvjp(_masked_scale_fwd, _masked_scale_bwd)


def dropout(key, x, rate: float, *, deterministic: bool = False):
    """Zero each element of ``x`` with probability ``rate``, scale the rest by
    ``1 / (1 - rate)``.

    Args:
      key: a ``jax.random`` key (same key, same mask). Ignored when
        ``deterministic`` or ``rate == 0``; may then be None.
      x: floating array of any shape.
      rate: static drop probability in ``[0, 1)``.
      deterministic: static Python bool; if True (evaluation), return ``x``
        unchanged. A traced value is refused (it selects which computation
        runs): make it a ``static_argnames`` of ``jit``.
    """
    x = float_array("x", x)
    rate = static_float("rate", rate)
    deterministic = static_bool("deterministic", deterministic)
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"rate must be in [0, 1), got {rate}")
    if deterministic or rate == 0.0:
        return x
    if key is None:
        raise ValueError("dropout needs a PRNG key when deterministic=False and rate > 0")
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)  # same shape as x
    return _masked_scale(x, keep, 1.0 / (1.0 - rate))
