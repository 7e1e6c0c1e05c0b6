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

ids of every integer dtype (int8..int64, uint8..uint64) select exactly the
rows int32 ids of the same values select: the clip compares in the ids' own
dtype, then converts to int32 (``_checks.index_array``). Byte-level ids
(uint8) into a 257-row table (256 bytes + one special token) reach every row;
a uint64 id above 2**32 is out of range and clipped, never wrapped.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._checks import float_array, index_array


@jax.custom_vjp
def _embedding(table, ids):
    return jnp.take(table, ids, axis=0)  # ids already in [0, V)


def _embedding_fwd(table, ids):
    return _embedding(table, ids), (ids, table.shape)


def _embedding_bwd(res, g):
    ids, (v, d) = res
    flat_ids = ids.reshape(-1)  # (P,)
    flat_g = g.reshape(-1, d)  # (P, D)
    dtable = jnp.zeros((v, d), g.dtype).at[flat_ids].add(flat_g)
    return dtable, None


_embedding.defvjp(_embedding_fwd, _embedding_bwd)


def embedding(table, ids):
    """Rows of ``table (V, D)`` selected by integer ``ids (...)`` of any integer
    dtype -> ``(..., D)``; ids outside [0, V) are clipped to the nearest row
    (module docstring)."""
    table = float_array("table", table, rank=2, layout="(V, D)")
    if table.shape[0] == 0:
        raise ValueError(f"table must have at least one row, got shape {table.shape}")
    return _embedding(table, index_array("ids", ids, table.shape[0], out_of_range="clip"))
