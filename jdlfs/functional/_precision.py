"""Accumulation precision shared by every op that reduces.

A sum, a count or a normaliser held in float16 overflows at 65,504 and a
bfloat16 count of 257 rounds to 256, even when the final result is small. So
every reduction runs in :func:`acc_dtype` — float32 for float16/bfloat16 and
float32 input, float64 for float64 — and only the result is cast back to the
input's dtype. Divisors that are Python ints (an element count) are applied in
the accumulation dtype too: ``g / 70000`` on a float16 ``g`` converts 70000 to
float16 (``inf``) and returns 0.
"""

from __future__ import annotations

import jax.numpy as jnp


def acc_dtype(dtype):
    """The dtype reductions of ``dtype`` input run in: at least float32."""
    return jnp.promote_types(dtype, jnp.float32)


def upcast(x):
    """``x`` in its accumulation dtype (a no-op for float32/float64)."""
    return x.astype(acc_dtype(x.dtype))
