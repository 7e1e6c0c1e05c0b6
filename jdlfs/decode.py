"""Autoregressive decoding over a step function: greedy, sampling, beam search.

Nothing here knows about a model. A model exposes one *step function*::

    step_fn(tokens, position, cache) -> (logits, cache)
    step_fn(tokens, cache) -> (logits, cache)          (also accepted)

    tokens    int32 (N,)    the current input token of each sequence
    position  int32 scalar  the 0-based position of ``tokens`` in the sequence
                            (not passed to a step function with two required
                            positional parameters: one that keeps its own
                            position in the cache, or needs none)
    cache     a pytree whose every leaf has leading axis N: a Transformer's
              key/value cache (and the encoder output it cross-attends to),
              an RNN's hidden state, ...
    logits    (N, V)        scores of the next token (any float dtype;
                            decoding works in float32)

and the three decoders below run it in a ``lax.while_loop`` that stops as
soon as every row is finished, feeding back the chosen token. A Transformer
runs its encoder once, builds the cache, and steps its decoder one token at a
time against it; the character RNN samples text with the same
:func:`sample`.

Output convention (all three): ``ids`` int32 ``(B, max_len)``, the generated
tokens *without* the start token; a row's EOS is kept and every later
position is ``pad_id``. Nothing here is jitted: jit the function that builds
the step function and calls a decoder (config values static, parameters and
inputs as arguments).

Beam search follows the usual recipe (Wu et al. 2016, "GNMT"; as in Flax's
``examples/wmt/decode.py`` and Hugging Face's ``BeamSearchScorer``):

* ``beam_size`` live hypotheses per row, the cache expanded to
  ``B * beam_size`` rows (row ``b * beam_size + k``) and gathered by the
  surviving parents after every step;
* each step scores the ``beam_size * V`` extensions by summed log-probability
  and keeps the best ``2 * beam_size`` (so that ``beam_size`` non-EOS
  hypotheses survive even if many end here);
* an extension ending in EOS among the best ``beam_size`` joins the row's
  finished list with score ``logp / lp(len)``, ``lp(len) = ((5 + len) / 6) **
  length_penalty`` (``len`` counts the EOS); EOS extensions ranked below
  ``beam_size`` are dropped (they would not have survived a beam of that
  width);
* a row is done once it holds ``beam_size`` finished hypotheses and its worst
  one scores at least its best live one, ``logp / lp(len)`` at the current
  length (Hugging Face's default stopping rule). With ``beam_size = 1`` this
  makes beam search exactly greedy decoding;
* at ``max_len``, rows not done also consider their live hypotheses (scored
  the same way) and the best one wins.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

StepFn = Callable[[jax.Array, jax.Array, Any], tuple[jax.Array, Any]]

_NEG = -1.0e9  # "minus infinity" that stays finite under the arithmetic below


# ---------------------------------------------------------------- checks
def _int_arg(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _float_arg(name: str, value: Any, *, positive: bool = False) -> float:
    """A static finite number (``> 0`` if ``positive``, else ``>= 0``) as a Python float.

    Python ints/floats, NumPy scalars (``np.float32(0.6)``, ``np.int64(1)``)
    and concrete 0-d arrays are converted with ``float``; bools, strings,
    arrays with more than one element and traced values are refused.
    """
    number = None
    if not isinstance(value, (bool, np.bool_, str, bytes)) and not isinstance(value, jax.core.Tracer):
        dtype = getattr(value, "dtype", None)
        numeric = isinstance(value, (int, float, np.integer, np.floating)) or (
            dtype is not None and np.ndim(value) == 0 and np.issubdtype(dtype, np.number)
        )
        if numeric and not np.issubdtype(np.asarray(value).dtype, np.complexfloating):
            number = float(value)
    bound = "> 0" if positive else ">= 0"
    if number is None or not math.isfinite(number) or not (number > 0 if positive else number >= 0):
        raise ValueError(f"{name} must be a finite number {bound} (a Python or NumPy scalar), got {value!r}")
    return number


def _optional_id(name: str, value: Any) -> int | None:
    if value is None:
        return None
    return _int_arg(name, value, 0)


def _start(start_tokens: Any) -> jax.Array:
    tokens = jnp.asarray(start_tokens)
    if tokens.ndim != 1 or not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(
            f"start_tokens must be a 1-D integer array (one start token per row), "
            f"got shape {tokens.shape} dtype {tokens.dtype}"
        )
    return tokens.astype(jnp.int32)


def _check_cache(cache: Any, rows: int) -> None:
    for path, leaf in jax.tree_util.tree_leaves_with_path(cache):
        shape = jnp.shape(leaf)
        if not shape or shape[0] != rows:
            raise ValueError(
                f"cache leaf {jax.tree_util.keystr(path) or '(root)'} has shape {shape}: every cache leaf "
                f"must have leading axis {rows} (one row per start token)"
            )


def _takes_position(step_fn) -> bool:
    """False for a ``step_fn(tokens, cache)``: exactly two required positional parameters, no ``*args``."""
    try:
        params = inspect.signature(step_fn).parameters.values()
    except (TypeError, ValueError):  # no introspectable signature: the documented three-argument form
        return True
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return True
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    required = [q for q in params if q.kind in positional and q.default is inspect.Parameter.empty]
    return len(required) != 2


def _logits(step_fn: StepFn, tokens, position, cache, rows: int):
    if _takes_position(step_fn):
        logits, cache = step_fn(tokens, position, cache)
    else:
        logits, cache = step_fn(tokens, cache)
    if logits.ndim != 2 or logits.shape[0] != rows:
        raise ValueError(f"step_fn must return logits of shape ({rows}, vocab), got {logits.shape}")
    return logits.astype(jnp.float32), cache


# ---------------------------------------------------------------- greedy and sampling
def _generate(step_fn, cache, start_tokens, choose, *, max_len, eos_id, pad_id, start_position):
    tokens = _start(start_tokens)
    rows = tokens.shape[0]
    max_len = _int_arg("max_len", max_len, 1)
    eos_id, pad_id = _optional_id("eos_id", eos_id), _int_arg("pad_id", pad_id, 0)
    start_position = _int_arg("start_position", start_position, 0)
    _check_cache(cache, rows)

    def cond(carry):
        i, _, _, _, done = carry
        return (i < max_len) & ~jnp.all(done)

    def body(carry):
        i, tokens, cache, out, done = carry
        logits, cache = _logits(step_fn, tokens, start_position + i, cache, rows)
        nxt = jnp.where(done, pad_id, choose(logits, i).astype(jnp.int32))
        out = jax.lax.dynamic_update_slice(out, nxt[:, None], (0, i))
        if eos_id is not None:
            done = done | (nxt == eos_id)
        return i + 1, nxt, cache, out, done

    out = jnp.full((rows, max_len), pad_id, jnp.int32)
    carry = (jnp.int32(0), tokens, cache, out, jnp.zeros((rows,), bool))
    return jax.lax.while_loop(cond, body, carry)[3]


def greedy(
    step_fn: StepFn,
    cache: Any,
    start_tokens: Any,
    *,
    max_len: int,
    eos_id: int | None = None,
    pad_id: int = 0,
    start_position: int = 0,
) -> jax.Array:
    """The most likely next token at every step. Returns ids ``(B, max_len)``."""
    return _generate(
        step_fn,
        cache,
        start_tokens,
        lambda logits, i: jnp.argmax(logits, axis=-1),
        max_len=max_len,
        eos_id=eos_id,
        pad_id=pad_id,
        start_position=start_position,
    )


def sample(
    step_fn: StepFn,
    cache: Any,
    start_tokens: Any,
    key: jax.Array,
    *,
    max_len: int,
    temperature: float = 1.0,
    eos_id: int | None = None,
    pad_id: int = 0,
    start_position: int = 0,
) -> jax.Array:
    """Ancestral sampling from ``softmax(logits / temperature)``; step ``i``
    draws with ``fold_in(key, i)``, so a key gives the same text every time.
    ``temperature``: a finite number > 0 (Python or NumPy scalar). Returns ids ``(B, max_len)``."""
    t = _float_arg("temperature", temperature, positive=True)
    return _generate(
        step_fn,
        cache,
        start_tokens,
        lambda logits, i: jax.random.categorical(jax.random.fold_in(key, i), logits / t, axis=-1),
        max_len=max_len,
        eos_id=eos_id,
        pad_id=pad_id,
        start_position=start_position,
    )


# ---------------------------------------------------------------- beam search
def _length_penalty(length, alpha: float):
    return ((5.0 + length) / 6.0) ** alpha


def _gather_beams(x, idx):
    """``x (B, M, ...)``, ``idx (B, K)`` -> ``x[b, idx[b, k]]`` of shape ``(B, K, ...)``."""
    return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


def beam_search(
    step_fn: StepFn,
    cache: Any,
    start_tokens: Any,
    *,
    beam_size: int,
    eos_id: int,
    max_len: int,
    length_penalty: float = 0.6,
    pad_id: int = 0,
    start_position: int = 0,
) -> tuple[jax.Array, jax.Array]:
    """Beam search (see the module docstring). Returns ``(ids, scores)``: the
    best hypothesis per row, ids ``(B, max_len)`` int32, and its score
    ``logp / lp(len)`` float32 ``(B,)``.

    ``length_penalty`` is a finite number >= 0 (a Python or NumPy scalar,
    converted with ``float``); the int arguments accept NumPy integers."""
    tokens = _start(start_tokens)
    b = tokens.shape[0]
    k = _int_arg("beam_size", beam_size, 1)
    max_len = _int_arg("max_len", max_len, 1)
    eos_id, pad_id = _int_arg("eos_id", eos_id, 0), _int_arg("pad_id", pad_id, 0)
    start_position = _int_arg("start_position", start_position, 0)
    alpha = _float_arg("length_penalty", length_penalty)
    _check_cache(cache, b)
    cache = jax.tree.map(lambda x: jnp.repeat(x, k, axis=0), cache)

    def cond(c):
        return (c["i"] < max_len) & ~jnp.all(c["done"])

    def body(c):
        i = c["i"]
        logits, cache = _logits(step_fn, c["tokens"].reshape(b * k), start_position + i, c["cache"], b * k)
        logp = jax.nn.log_softmax(logits).reshape(b, k, -1)
        vocab = logp.shape[-1]
        cand = (c["alive_lp"][:, :, None] + logp).reshape(b, k * vocab)
        top_lp, top_idx = jax.lax.top_k(cand, 2 * k)  # (B, 2K), best first
        parent, tok = top_idx // vocab, (top_idx % vocab).astype(jnp.int32)
        seqs = _gather_beams(c["alive_seq"], parent)
        seqs = jax.lax.dynamic_update_slice(seqs, tok[:, :, None], (0, 0, i))
        is_eos = tok == eos_id
        pen = _length_penalty((i + 1).astype(jnp.float32), alpha)

        # finished: EOS extensions ranked within the best K, merged with the row's list
        new_fin = is_eos & (jnp.arange(2 * k) < k)[None, :] & ~c["done"][:, None]
        all_seq = jnp.concatenate([c["fin_seq"], seqs], axis=1)
        all_score = jnp.concatenate([c["fin_score"], jnp.where(new_fin, top_lp / pen, _NEG)], axis=1)
        all_flag = jnp.concatenate([c["fin_flag"], new_fin], axis=1)
        fin_score, fin_idx = jax.lax.top_k(all_score, k)
        fin_seq, fin_flag = _gather_beams(all_seq, fin_idx), _gather_beams(all_flag, fin_idx)

        # alive: the best K extensions that did not end
        alive_score, alive_idx = jax.lax.top_k(jnp.where(is_eos, _NEG, top_lp), k)
        alive_seq = _gather_beams(seqs, alive_idx)
        alive_tok = _gather_beams(tok, alive_idx)
        rows = (jnp.arange(b)[:, None] * k + _gather_beams(parent, alive_idx)).reshape(b * k)
        cache = jax.tree.map(lambda x: jnp.take(x, rows, axis=0), cache)

        full = jnp.all(fin_flag, axis=1)
        done = c["done"] | (full & (fin_score[:, -1] >= alive_score[:, 0] / pen))
        return {
            "i": i + 1,
            "tokens": alive_tok,
            "cache": cache,
            "alive_seq": alive_seq,
            "alive_lp": alive_score,
            "fin_seq": fin_seq,
            "fin_score": fin_score,
            "fin_flag": fin_flag,
            "done": done,
        }

    init = {
        "i": jnp.int32(0),
        "tokens": jnp.repeat(tokens[:, None], k, axis=1),
        "cache": cache,
        "alive_seq": jnp.full((b, k, max_len), pad_id, jnp.int32),
        "alive_lp": jnp.tile(jnp.where(jnp.arange(k) == 0, 0.0, _NEG).astype(jnp.float32), (b, 1)),
        "fin_seq": jnp.full((b, k, max_len), pad_id, jnp.int32),
        "fin_score": jnp.full((b, k), _NEG, jnp.float32),
        "fin_flag": jnp.zeros((b, k), bool),
        "done": jnp.zeros((b,), bool),
    }
    c = jax.lax.while_loop(cond, body, init)

    # rows still open at the end also consider their live hypotheses
    alive_final = c["alive_lp"] / _length_penalty(c["i"].astype(jnp.float32), alpha)
    alive_final = jnp.where(c["done"][:, None] | (c["alive_lp"] <= _NEG / 2), _NEG, alive_final)
    score = jnp.concatenate([c["fin_score"], alive_final], axis=1)
    seq = jnp.concatenate([c["fin_seq"], c["alive_seq"]], axis=1)
    best = jnp.argmax(score, axis=1)
    return seq[jnp.arange(b), best], score[jnp.arange(b), best]
