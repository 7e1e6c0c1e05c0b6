"""Embedding lookup.

Forward: ``y[..., :] = table[ids[...], :]``  (table (V, D), ids (...) int -> (..., D)).
Backward: each output row came from one table row, so the table gradient is a
scatter-add of the output cotangent rows into a zero (V, D) array:
    dL/dtable[v] = sum_{positions p with ids[p] = v} g[p]
Repeated ids accumulate; rows never looked up get 0. ids get no cotangent.
Out-of-range ids cannot be checked under ``jit``. Gather and scatter must
treat them alike, so both use ``mode="clip"``: an id outside [0, V) reads,
and sends its gradient to, the nearest edge row.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._checks import float_array, int_array


@jax.custom_vjp
def _embedding(table, ids):
    return jnp.take(table, ids, axis=0, mode="clip")


def _embedding_fwd(table, ids):
    return _embedding(table, ids), (ids, table.shape)


def _embedding_bwd(res, g):
    ids, (v, d) = res
    flat_ids = ids.reshape(-1)                                   # (P,)
    flat_g = g.reshape(-1, d)                                    # (P, D)
    dtable = jnp.zeros((v, d), g.dtype).at[flat_ids].add(flat_g, mode="clip")
    return dtable, None


_embedding.defvjp(_embedding_fwd, _embedding_bwd)


def embedding(table, ids):
    """Rows of ``table (V, D)`` selected by integer ``ids (...)`` -> ``(..., D)``."""
    table = float_array("table", table, rank=2, layout="(V, D)")
    ids = int_array("ids", ids)
    return _embedding(table, ids)
