"""Character (or any token) language model: embedding -> recurrent cell -> linear readout.

nanoGPT-style: a frozen :class:`Config`, parameters in a named nested dict, and plain
functions, every piece of arithmetic one :mod:`jdlfs.functional` op (``embedding``,
``rnn`` or ``lstm``, ``linear``), so every gradient comes from the hand-written rules::

    params["embed"]["table"]                         (V, E)
    params["cell"]["w_x"], ["w_h"], ["b"]            rnn: (E, H), (H, H), (H,)
                                                     lstm: (E, 4H), (H, 4H), (4H,) -- gates i, f, g, o
    params["readout"]["w"], ["b"]                    (H, V), (V,)

The recurrent state is a dict, ``{"h": (B, H)}`` for ``cell="rnn"`` and ``{"h", "c"}`` for
``cell="lstm"`` (:func:`init_state`). :func:`apply` has the model signature of
:mod:`jdlfs.train` (``apply(params, state, ids, *, key=None, train=False) -> (logits,
new_state)`` once ``config`` is bound, see :func:`model`): the state it is given is where the
window starts, the state it returns where the window ends. **Truncated BPTT:** the incoming
state passes through ``lax.stop_gradient``, so a window's loss sends no gradient into the
computation of the state it started from (the previous window); ``jdlfs.train.fit`` carries
the returned state from step to step as its model state.

The pieces are public for measurements that need them: :func:`embed`, :func:`recur` (the
cell over embedded inputs, *without* the stop-gradient) and :func:`readout`; ``apply`` is
``readout(recur(stop_gradient(state), embed(ids)))``.

Decoding: :func:`step_fn` gives ``step(tokens (N,), position, cache) -> (logits (N, V),
cache)`` for :mod:`jdlfs.decode`, one embedding + one cell step + readout, with the state
dict as the cache (every leaf ``(N, H)``).

Initialisation: embedding ``N(0, 1)``; input weights Glorot-normal; recurrent weights
orthogonal (each gate's ``(H, H)`` block for the LSTM), so the linearised recurrence neither
grows nor shrinks at the start; biases zero except the LSTM forget gate's, 1 (Jozefowicz et
al. 2015: the cell remembers by default); readout Glorot-normal, bias zero.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from jax import lax

from .. import functional as F
from .. import init as initializers

__all__ = [
    "CELLS",
    "Config",
    "apply",
    "embed",
    "init",
    "init_state",
    "model",
    "param_count",
    "readout",
    "recur",
    "step_fn",
]

#: Recurrent cells: name -> number of H-wide blocks in the fused weights.
CELLS = {"rnn": 1, "lstm": 4}


@dataclass(frozen=True)
class Config:
    """Static configuration (hashable: pass it as a static argument under ``jit``).

    Attributes:
      vocab_size: number of token ids ``V`` (inputs and outputs).
      embed_dim: embedding width ``E``.
      hidden: state width ``H``.
      cell: ``"rnn"`` (tanh Elman cell, :func:`jdlfs.functional.rnn`) or ``"lstm"``
        (:func:`jdlfs.functional.lstm`).
    """

    vocab_size: int
    embed_dim: int = 64
    hidden: int = 256
    cell: str = "rnn"

    def __post_init__(self):
        for name in ("vocab_size", "embed_dim", "hidden"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"Config.{name} must be a positive int, got {v!r}")
        if self.cell not in CELLS:
            raise ValueError(f"Config.cell must be one of {sorted(CELLS)}, got {self.cell!r}")


def _config(config) -> Config:
    if not isinstance(config, Config):
        raise TypeError(f"config must be a rnn_lm.Config, got {type(config).__name__}")
    return config


def _orthogonal_blocks(key, hidden: int, blocks: int, dtype):
    """``(H, blocks * H)``: ``blocks`` independent orthogonal ``(H, H)`` matrices side by side."""
    keys = jax.random.split(key, blocks)
    ortho = jax.nn.initializers.orthogonal()
    return jnp.concatenate([ortho(k, (hidden, hidden), jnp.float32) for k in keys], axis=1).astype(dtype)


def init(key: jax.Array, config: Config, dtype=jnp.float32) -> dict:
    """Fresh parameters (see the module docstring for layout and scheme); same key, same parameters."""
    config = _config(config)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"dtype must be a floating dtype, got {jnp.dtype(dtype)}")
    return _init(key, config, jnp.dtype(dtype))


@functools.partial(jax.jit, static_argnums=(1, 2))  # one compiled computation, not a dozen eager ops
def _init(key, config: Config, dtype):
    v, e, h, g = config.vocab_size, config.embed_dim, config.hidden, CELLS[config.cell]
    k_emb, k_x, k_h, k_out = jax.random.split(key, 4)
    b = jnp.zeros((g * h,), dtype)
    if config.cell == "lstm":
        b = b.at[h : 2 * h].set(1.0)  # forget gate
    return {
        "embed": {"table": jax.random.normal(k_emb, (v, e), jnp.float32).astype(dtype)},
        "cell": {
            "w_x": initializers.xavier_normal(k_x, (e, g * h), jnp.float32).astype(dtype),
            "w_h": _orthogonal_blocks(k_h, h, g, dtype),
            "b": b,
        },
        "readout": {
            "w": initializers.xavier_normal(k_out, (h, v), jnp.float32).astype(dtype),
            "b": jnp.zeros((v,), dtype),
        },
    }


def init_state(config: Config, batch_size: int, dtype=jnp.float32) -> dict:
    """The zero state for ``batch_size`` sequences: ``{"h"}`` (rnn) or ``{"h", "c"}`` (lstm), each ``(B, H)``."""
    config = _config(config)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    zeros = jnp.zeros((batch_size, config.hidden), dtype)
    return {"h": zeros} if config.cell == "rnn" else {"h": zeros, "c": zeros}


def _check_state(state, config: Config, batch: int) -> dict:
    keys = ("h",) if config.cell == "rnn" else ("h", "c")
    if not isinstance(state, dict) or tuple(sorted(state)) != tuple(sorted(keys)):
        got = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"state must be a dict with keys {list(keys)} for cell={config.cell!r}, got {got}")
    for k in keys:
        shape = tuple(getattr(state[k], "shape", ()))
        if shape != (batch, config.hidden):
            raise ValueError(
                f'state["{k}"] must have shape (B, H) = ({batch}, {config.hidden}) to match ids, got {shape}'
            )
    return {k: state[k] for k in keys}


def embed(params: dict, ids):
    """Token ids ``(B, T)`` (any integer dtype) -> embeddings ``(B, T, E)``."""
    if getattr(ids, "ndim", None) != 2:
        raise ValueError(f"ids must be integer token ids of shape (B, T), got {getattr(ids, 'shape', type(ids))}")
    return F.embedding(params["embed"]["table"], ids)


def recur(params: dict, state: dict, x, *, config: Config):
    """The recurrent cell over embedded inputs ``x (B, T, E)`` from ``state`` -> ``(hs (B, T, H), new_state)``.

    No stop-gradient here: gradients flow into ``state`` (what the gradient-vs-distance
    measurement of ``experiments/char_rnn.py`` differentiates through); :func:`apply` stops them.
    """
    config = _config(config)
    state = _check_state(state, config, x.shape[0])
    cell = params["cell"]
    if config.cell == "rnn":
        hs, h_t = F.rnn(x, state["h"], cell["w_x"], cell["w_h"], cell["b"])
        return hs, {"h": h_t}
    hs, (h_t, c_t) = F.lstm(x, state["h"], state["c"], cell["w_x"], cell["w_h"], cell["b"])
    return hs, {"h": h_t, "c": c_t}


def readout(params: dict, hs):
    """States ``(..., H)`` -> next-token logits ``(..., V)``."""
    return F.linear(hs, params["readout"]["w"], params["readout"]["b"])


def apply(params: dict, state: dict, ids, *, config: Config, key=None, train: bool = False):
    """Logits for every position of ``ids`` and the state after the last one.

    Args:
      params: from :func:`init`.
      state: where the sequences start (:func:`init_state`, or the state a previous call
        returned); the gradient is stopped here (truncated BPTT).
      ids: integer ids ``(B, T)`` of any integer dtype, ``T >= 1``.
      config: the model's :class:`Config`.
      key, train: unused (no dropout), accepted for the :mod:`jdlfs.train` model signature.

    Returns:
      ``(logits (B, T, V), new_state)``, logits in the parameters' dtype.
    """
    del key, train
    config = _config(config)
    x = embed(params, ids)  # (B, T, E)
    state = jax.tree.map(lax.stop_gradient, _check_state(state, config, x.shape[0]))  # truncated BPTT
    hs, new_state = recur(params, state, x, config=config)
    return readout(params, hs), new_state  # (B, T, V)


def model(config: Config):
    """``apply`` with ``config`` bound: the model argument of ``jdlfs.train.sequence``."""
    config = _config(config)

    def bound(params, state, ids, *, key=None, train=False):
        return apply(params, state, ids, config=config, key=key, train=train)

    return bound


def step_fn(params: dict, config: Config):
    """``step(tokens (N,), position, cache) -> (logits (N, V), cache)`` for :mod:`jdlfs.decode`:
    one embedding + cell step + readout; ``cache`` is the state dict (:func:`init_state`),
    ``position`` is not needed by a recurrent model."""
    config = _config(config)

    def step(tokens, position, cache):
        del position
        logits, cache = apply(params, cache, tokens[:, None], config=config)
        return logits[:, 0], cache

    return step


def param_count(params: dict) -> int:
    return int(sum(a.size for a in jax.tree.leaves(params)))
