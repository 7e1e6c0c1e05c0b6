"""Embedding lookup.

Forward: ``y[..., :] = table[ids[...], :]``  (table (V, D), ids (...) int -> (..., D)).
Backward: each output row came from one table row, so the table gradient is a
scatter-add of the output cotangent rows into a zero (V, D) array:
    dL/dtable[v] = sum_{positions p with ids[p] = v} g[p]
Repeated ids accumulate; rows never looked up get 0. ids get no cotangent.
Out-of-range ids cannot be checked under ``jit``. Gather and scatter must
treat them alike, so the public function clips the ids to [0, V) once, before
either pass sees them: an id outside reads, and sends its gradient to, the
nearest edge row (-1 -> row 0, V + 3 -> row V - 1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._checks import float_array, int_array


@jax.custom_vjp
def _embedding(table, ids):
    return jnp.take(table, ids, axis=0)                          # ids already in [0, V)


def _embedding_fwd(table, ids):
    return _embedding(table, ids), (ids, table.shape)


def _embedding_bwd(res, g):
    ids, (v, d) = res
    flat_ids = ids.reshape(-1)                                   # (P,)
    flat_g = g.reshape(-1, d)                                    # (P, D)
    dtable = jnp.zeros((v, d), g.dtype).at[flat_ids].add(flat_g)
    return dtable, None


_embedding.defvjp(_embedding_fwd, _embedding_bwd)


def embedding(table, ids):
    """Rows of ``table (V, D)`` selected by integer ``ids (...)`` -> ``(..., D)``;
    ids outside [0, V) are clipped to the nearest row (module docstring)."""
    table = float_array("table", table, rank=2, layout="(V, D)")
    ids = jnp.clip(int_array("ids", ids), 0, table.shape[0] - 1)
    return _embedding(table, ids)
