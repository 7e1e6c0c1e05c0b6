"""Weight initializers: ``init(key, shape, dtype=float32) -> array``.

Fans, for the layouts jdlfs uses (the receptive field multiplies both):

============================  ==================  ===================
weight                          fan_in              fan_out
============================  ==================  ===================
linear ``(in, out)``            in                  out
conv ``(kh, kw, cin, cout)``    kh * kw * cin       kh * kw * cout
============================  ==================  ===================

=================  =========================================  =====================
scheme             distribution                               why
=================  =========================================  =====================
zeros              0                                          symmetric: every unit
                                                              in a layer gets the same
                                                              gradient, never breaks
normal(std)        N(0, std^2)                                std=0.01: signals shrink
                                                              by ~std*sqrt(fan) per layer
xavier_normal      N(0, 2 / (fan_in + fan_out))               keeps variance for tanh/
xavier_uniform     U(-a, a), a = sqrt(6 / (fan_in + fan_out))  linear units (Glorot 2010)
he_normal          N(0, 2 / fan_in)                           keeps variance through
he_uniform         U(-a, a), a = sqrt(6 / fan_in)              ReLU (He 2015)
=================  =========================================  =====================

The variance-scaling schemes are ``jax.nn.initializers.variance_scaling`` with
an *untruncated* normal (the classical definitions; jax's own ``he_normal``
truncates at 2 std and rescales), which computes the fans exactly as above.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.nn.initializers import variance_scaling

Initializer = jax.nn.initializers.Initializer


def fans(shape) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a linear ``(in, out)`` or conv ``(kh, kw, cin, cout)`` weight."""
    shape = tuple(shape)
    if len(shape) < 2:
        raise ValueError(f"fans need a weight of rank >= 2 ((in, out) or (kh, kw, cin, cout)), got {shape}")
    receptive = 1
    for s in shape[:-2]:
        receptive *= s
    return receptive * shape[-2], receptive * shape[-1]


def zeros(key, shape, dtype=jnp.float32):
    """All zeros (fails to break symmetry; shown in experiments/init_schemes.py)."""
    del key
    return jnp.zeros(shape, dtype)


def normal(std: float = 0.01) -> Initializer:
    """``N(0, std^2)`` regardless of shape."""
    return jax.nn.initializers.normal(std)


xavier_normal: Initializer = variance_scaling(1.0, "fan_avg", "normal")
xavier_uniform: Initializer = variance_scaling(1.0, "fan_avg", "uniform")
glorot_normal, glorot_uniform = xavier_normal, xavier_uniform
he_normal: Initializer = variance_scaling(2.0, "fan_in", "normal")
he_uniform: Initializer = variance_scaling(2.0, "fan_in", "uniform")

BY_NAME = {
    "zeros": zeros,
    "normal": normal(0.01),
    "xavier_normal": xavier_normal,
    "xavier_uniform": xavier_uniform,
    "he_normal": he_normal,
    "he_uniform": he_uniform,
}


def get(name_or_fn) -> Initializer:
    """An initializer by name (``"he_normal"``, ...) or the callable itself."""
    if callable(name_or_fn):
        return name_or_fn
    try:
        return BY_NAME[name_or_fn]
    except KeyError:
        raise ValueError(f"unknown initializer {name_or_fn!r}; known: {sorted(BY_NAME)}") from None
