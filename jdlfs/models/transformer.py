"""The encoder-decoder Transformer ("Attention Is All You Need"), as plain functions over named nested dicts.

Every piece goes through :mod:`jdlfs.functional` (``embedding``, ``linear``,
``layer_norm``, ``attention``, ``split_heads``/``merge_heads``,
``causal_mask``, ``relu``/``gelu``, ``dropout``), so the backward pass of the
whole model is the composition of the hand-written, verified rules; the
residual additions, the head reshapes and the sinusoidal positions are the
only plain ``jnp`` (their derivatives are identities and permutations).

Parameters (``init(key, config)``), nanoGPT style::

    params["src_embed"]["table"]                     (src_vocab, d_model)  N(0, d_model^-1/2)
    params["tgt_embed"]["table"]                     (tgt_vocab, d_model)  (one "embed" table if shared)
    params["encoder"]["layers"][i]["ln1" | "ln2"]    {"gamma", "beta"}
    params["encoder"]["layers"][i]["attn"]           {"qkv": {"w" (D, 3D), "b"}, "proj": {"w" (D, D), "b"}}
    params["encoder"]["layers"][i]["mlp"]            {"fc1": {"w" (D, d_ff), "b"}, "fc2": {"w" (d_ff, D), "b"}}
    params["decoder"]["layers"][i]["self_attn"]      like "attn" (causal)
    params["decoder"]["layers"][i]["cross_attn"]     {"q": {"w" (D, D)}, "kv": {"w" (D, 2D)}, "proj"}  (+ biases)
    params["decoder"]["layers"][i]["ln1" | "ln2" | "ln3" | "mlp"]
    params["encoder" | "decoder"]["ln_f"]            final LayerNorm (pre-LN only)
    params["out"]                                    {"b"} tied to the target table, or {"w" (D, V), "b"}

Linear weights are Xavier-uniform over their stored shape, biases 0. The
fused projections ``qkv (D, 3D)`` and ``kv (D, 2D)`` are one matrix each, so
their limit is ``sqrt(6 / (D + 3D))`` (``sqrt(6 / (D + 2D))``), i.e.
``1/sqrt(2)`` (``sqrt(2/3)``) of the ``sqrt(6 / (D + D))`` that three (two)
separate ``(D, D)`` projections would get: slightly smaller query/key/value
weights at initialisation. PyTorch's ``nn.MultiheadAttention`` initialises its
fused ``in_proj_weight`` the same way; it is kept (changing it would change
every trained result).

Forward (``apply``): ``x = embed(ids) * sqrt(d_model) + PE[positions]`` with
the sinusoidal ``PE[p, 2i] = sin(p / 10000^(2i/D))``, ``PE[p, 2i+1] =
cos(...)``, dropout; the encoder's self-attention sees the real source tokens
(``src != pad_id``), the decoder's self-attention is causal and its
cross-attention sees the real source tokens; logits ``h W_out + b`` with
``W_out = table^T`` of the target embedding when tied (the embedding's
``sqrt(d_model)`` scale and its ``d_model^-1/2`` init give unit-variance
inputs and unit-scale logits from the one table).

**Pre-LN by default** (``norm_first=True``: ``x + f(LN(x))``, a final LN after
each stack). Post-LN (``LN(x + f(x))``, the original paper's order) puts a
LayerNorm on the residual path, so the gradient reaching layer ``l`` is
multiplied by every later LayerNorm's Jacobian; at initialisation the
gradients of the last layers are large and those of the first layers small,
and post-LN trains only with a learning-rate warm-up (Xiong et al. 2020, "On
Layer Normalization in the Transformer Architecture"). Pre-LN keeps an
identity path from the loss to every layer (``d(x + f(LN x))/dx = I +
...``), so gradients are well scaled at every depth and Adam works without a
long warm-up -- the residual gradient the from-scratch write-up lost in its
hand backward pass is here the identity term of that sum, which autodiff of
the residual addition cannot drop. ``norm_first=False`` gives post-LN.

Packed examples (optional; how the experiments fill rows without padding):
``src_segments``/``tgt_segments`` (int, 0 = padding, 1, 2, ... = the example
a token belongs to) restrict every attention to tokens of the same example
and ``src_positions``/``tgt_positions`` restart the positions at 0 for each
example, so a row holding several short pairs computes exactly what each pair
would alone (:func:`pack_pairs` builds such rows; Flax's WMT example does the
same). Without them a row is one example, right-padded with ``pad_id``.

Decoding (:func:`greedy`, :func:`beam_search`, jitted) runs the encoder once
per source (:func:`init_cache`) and then the decoder one token at a time
(:func:`decode_step`) over a **key/value cache**: each decoder layer keeps the
keys/values of the tokens decoded so far (``(N, H, max_len, d_head)``,
position ``p`` written at step ``p``, later slots masked) and the
cross-attention keys/values of the encoder output, computed once. The loops
themselves (early stop, beams, length penalty) are the generic
:mod:`jdlfs.decode`. The decoders choose among *all* ``tgt_vocab`` logits:
PAD and BOS are not masked out (a documented limitation, kept as is). A
trained model gives them next to no probability -- PAD is never a training
label (masked out of the loss) and BOS only ever starts the decoder input --
but an untrained model can emit them, and a PAD emitted before EOS looks like
the padding that follows EOS in the ids (:func:`decode_corpus` cuts each output
at its first EOS only). :func:`greedy_uncached` / ``beam_search(..., cache=False)``
decode by re-running the full teacher-forced :func:`apply` at every step (the
baseline the cache is measured against).

The encoder block is public (:func:`init_encoder_block`,
:func:`encoder_block`) for the other Transformer models (the masked
autoencoder's ViT).

Token ids: when their values are known (NumPy arrays, lists, concrete JAX
arrays) :func:`apply`, :func:`encode`, :func:`greedy`, :func:`beam_search`
and :func:`decode_step` refuse an id outside ``[0, vocab)`` with a ValueError
naming the argument. Under ``jit`` the values cannot be checked; there an
out-of-range id reads the nearest edge row of the table, as
:func:`jdlfs.functional.embedding` documents (never wrapped into the
vocabulary). Likewise :func:`decode_step` refuses a concrete ``position``
outside the cache; under ``jit`` (how :func:`greedy` and :func:`beam_search`
run it) it cannot, and a position past the cache would overwrite its last slot.

Dropout is applied to the embedded inputs and to each sub-layer's output
before the residual addition (the paper's P_drop); :func:`jdlfs.functional.attention`
has no dropout on the attention weights, so there is none here.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jdlfs import decode
from jdlfs import functional as F
from jdlfs import init as initializers

__all__ = [
    "ACTIVATIONS",
    "Config",
    "apply",
    "beam_search",
    "decode_corpus",
    "decode_step",
    "decoder_block",
    "encode",
    "encoder_block",
    "greedy",
    "greedy_uncached",
    "init",
    "init_cache",
    "init_decoder_block",
    "init_encoder_block",
    "model_fn",
    "pack_pairs",
    "param_count",
    "sinusoidal_positions",
]

ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}


# ================================================================ configuration
def _int_field(config, name: str, minimum: int) -> None:
    """Check an int field and store it as a Python int (numpy ints would not serialise to JSON)."""
    v = getattr(config, name)
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"Config.{name} must be an int, got {type(v).__name__} {v!r}")
    if v < minimum:
        raise ValueError(f"Config.{name} must be >= {minimum}, got {v}")
    object.__setattr__(config, name, int(v))


def _float_field(config, name: str) -> float:
    """Check a float field (Python or numpy, int accepted) and store it as a Python float."""
    v = getattr(config, name)
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"Config.{name} must be a float, got {type(v).__name__} {v!r}")
    object.__setattr__(config, name, float(v))
    return float(v)


def _bool_field(name: str, v) -> None:
    if not isinstance(v, (bool, np.bool_)):
        raise TypeError(f"Config.{name} must be a bool, got {type(v).__name__} {v!r}")


@dataclasses.dataclass(frozen=True)
class Config:
    """Hyper-parameters of the encoder-decoder Transformer (hashable: a ``jit`` static argument).

    Attributes:
      src_vocab, tgt_vocab: vocabulary sizes (the special ids included; default 8,000, the joint
        sentencepiece vocabulary of ``experiments/translate.py``).
      d_model: model width ``D``; ``num_heads`` must divide it.
      num_heads: attention heads per attention layer.
      num_layers: encoder layers (and decoder layers unless ``num_decoder_layers``).
      d_ff: hidden width of the position-wise feed-forward network.
      dropout: dropout rate of the embeddings and of every sub-layer output.
      max_len: the longest source, target or decoded sequence (positions 0 .. max_len - 1).
      pad_id: the padding id of both vocabularies (masked out of every attention and of the loss).
      num_decoder_layers: decoder layers; ``None``: ``num_layers``.
      norm_first: pre-LN (True, default) or post-LN (False); see the module docstring.
      tie_embeddings: output projection = the target embedding table transposed (plus a bias).
      share_embeddings: one table for source and target (needs ``src_vocab == tgt_vocab``,
        e.g. a joint subword vocabulary).
      activation: ``"relu"`` (the paper) or ``"gelu"`` (exact erf form).
      ln_eps: LayerNorm epsilon.
    """

    src_vocab: int = 8000
    tgt_vocab: int = 8000
    d_model: int = 256
    num_heads: int = 4
    num_layers: int = 3
    d_ff: int = 1024
    dropout: float = 0.1
    max_len: int = 128
    pad_id: int = 0
    num_decoder_layers: int | None = None
    norm_first: bool = True
    tie_embeddings: bool = True
    share_embeddings: bool = False
    activation: str = "relu"
    ln_eps: float = 1e-5

    def __post_init__(self):
        for name, minimum in (
            ("src_vocab", 1),
            ("tgt_vocab", 1),
            ("d_model", 1),
            ("num_heads", 1),
            ("num_layers", 1),
            ("d_ff", 1),
            ("max_len", 1),
            ("pad_id", 0),
        ):
            _int_field(self, name, minimum)
        if self.num_decoder_layers is not None:
            _int_field(self, "num_decoder_layers", 1)
        if self.d_model % self.num_heads:
            raise ValueError(
                f"Config.d_model={self.d_model} must be divisible by num_heads={self.num_heads} "
                "(each head gets d_model / num_heads features)"
            )
        if not 0.0 <= _float_field(self, "dropout") < 1.0:
            raise ValueError(f"Config.dropout must be in [0, 1), got {self.dropout}")
        if self.pad_id >= min(self.src_vocab, self.tgt_vocab):
            raise ValueError(
                f"Config.pad_id={self.pad_id} must be an id of both vocabularies "
                f"(src_vocab={self.src_vocab}, tgt_vocab={self.tgt_vocab})"
            )
        for name in ("norm_first", "tie_embeddings", "share_embeddings"):
            _bool_field(name, getattr(self, name))
        if self.share_embeddings and self.src_vocab != self.tgt_vocab:
            raise ValueError(
                f"Config.share_embeddings needs one vocabulary, got src_vocab={self.src_vocab} != "
                f"tgt_vocab={self.tgt_vocab}"
            )
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"Config.activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        if not _float_field(self, "ln_eps") > 0:
            raise ValueError(f"Config.ln_eps must be a positive float, got {self.ln_eps!r}")

    @property
    def decoder_layers(self) -> int:
        return self.num_layers if self.num_decoder_layers is None else self.num_decoder_layers

    @property
    def d_head(self) -> int:
        return self.d_model // self.num_heads


# ================================================================ parameters
def _init_linear(key, d_in: int, d_out: int, *, bias: bool = True) -> dict:
    p = {"w": initializers.xavier_uniform(key, (d_in, d_out), jnp.float32)}
    if bias:
        p["b"] = jnp.zeros((d_out,), jnp.float32)
    return p


def _init_ln(d: int) -> dict:
    return {"gamma": jnp.ones((d,), jnp.float32), "beta": jnp.zeros((d,), jnp.float32)}


def _init_mlp(key, d_model: int, d_ff: int) -> dict:
    k1, k2 = jax.random.split(key)
    return {"fc1": _init_linear(k1, d_model, d_ff), "fc2": _init_linear(k2, d_ff, d_model)}


def _check_block_dims(d_model, num_heads, d_ff) -> None:
    for name, v in (("d_model", d_model), ("num_heads", num_heads), ("d_ff", d_ff)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if d_model % num_heads:
        raise ValueError(f"d_model={d_model} must be divisible by num_heads={num_heads}")


def init_encoder_block(key, d_model: int, num_heads: int, d_ff: int) -> dict:
    """Parameters of one encoder block: ``{"ln1", "attn": {"qkv", "proj"}, "ln2", "mlp": {"fc1", "fc2"}}``.

    Linear weights Xavier-uniform ``(in, out)``, biases 0, LayerNorm gamma 1 and beta 0.
    ``num_heads`` is checked to divide ``d_model`` (it is not stored: pass it to :func:`encoder_block`).
    """
    _check_block_dims(d_model, num_heads, d_ff)
    k1, k2, k3 = jax.random.split(key, 3)
    return {
        "ln1": _init_ln(d_model),
        "attn": {"qkv": _init_linear(k1, d_model, 3 * d_model), "proj": _init_linear(k2, d_model, d_model)},
        "ln2": _init_ln(d_model),
        "mlp": _init_mlp(k3, d_model, d_ff),
    }


def init_decoder_block(key, d_model: int, num_heads: int, d_ff: int) -> dict:
    """Parameters of one decoder block: causal self-attention, cross-attention, feed-forward, three LayerNorms."""
    _check_block_dims(d_model, num_heads, d_ff)
    k1, k2, k3, k4, k5, k6 = jax.random.split(key, 6)
    return {
        "ln1": _init_ln(d_model),
        "self_attn": {"qkv": _init_linear(k1, d_model, 3 * d_model), "proj": _init_linear(k2, d_model, d_model)},
        "ln2": _init_ln(d_model),
        "cross_attn": {
            "q": _init_linear(k3, d_model, d_model),
            "kv": _init_linear(k4, d_model, 2 * d_model),
            "proj": _init_linear(k5, d_model, d_model),
        },
        "ln3": _init_ln(d_model),
        "mlp": _init_mlp(k6, d_model, d_ff),
    }


def init(key, config: Config) -> dict:
    """Fresh parameters for ``config`` (float32; see the module docstring for the tree). Compiled once per
    config (eagerly, each of the many small random draws would be dispatched, and compiled, on its own)."""
    if not isinstance(config, Config):
        raise TypeError(f"config must be a transformer.Config, got {type(config).__name__}")
    return _init(key, config)


@functools.partial(jax.jit, static_argnums=1)
def _init(key, config: Config) -> dict:
    k_src, k_tgt, k_enc, k_dec, k_out = jax.random.split(key, 5)
    d = config.d_model
    std = d**-0.5

    def table(k, v):
        return {"table": std * jax.random.normal(k, (v, d), jnp.float32)}

    params: dict[str, Any] = {}
    if config.share_embeddings:
        params["embed"] = table(k_src, config.src_vocab)
    else:
        params["src_embed"] = table(k_src, config.src_vocab)
        params["tgt_embed"] = table(k_tgt, config.tgt_vocab)
    params["encoder"] = {
        "layers": [
            init_encoder_block(k, d, config.num_heads, config.d_ff) for k in jax.random.split(k_enc, config.num_layers)
        ]
    }
    params["decoder"] = {
        "layers": [
            init_decoder_block(k, d, config.num_heads, config.d_ff)
            for k in jax.random.split(k_dec, config.decoder_layers)
        ]
    }
    if config.norm_first:
        params["encoder"]["ln_f"] = _init_ln(d)
        params["decoder"]["ln_f"] = _init_ln(d)
    if config.tie_embeddings:
        params["out"] = {"b": jnp.zeros((config.tgt_vocab,), jnp.float32)}
    else:
        params["out"] = _init_linear(k_out, d, config.tgt_vocab)
    return params


def param_count(params) -> int:
    """Number of scalars in a parameter tree."""
    return int(sum(np.prod(a.shape) for a in jax.tree.leaves(params)))


def _tables(params, config: Config):
    if config.share_embeddings:
        return params["embed"]["table"], params["embed"]["table"]
    return params["src_embed"]["table"], params["tgt_embed"]["table"]


def _check_params(params, config: Config):
    if not isinstance(config, Config):
        raise TypeError(f"config must be a transformer.Config, got {type(config).__name__}")
    try:
        src_t, tgt_t = _tables(params, config)
        enc, dec = params["encoder"]["layers"], params["decoder"]["layers"]
    except (KeyError, TypeError):
        raise ValueError(
            "params do not have the structure init(key, config) gives for this config "
            "(missing embedding tables or layers; share_embeddings must match)"
        ) from None
    for name, t, v in (("source", src_t, config.src_vocab), ("target", tgt_t, config.tgt_vocab)):
        if tuple(t.shape) != (v, config.d_model):
            raise ValueError(
                f"the {name} embedding table has shape {tuple(t.shape)} but the config asks for "
                f"({v}, {config.d_model}): params were made for another config"
            )
    if len(enc) != config.num_layers or len(dec) != config.decoder_layers:
        raise ValueError(
            f"params hold {len(enc)} encoder / {len(dec)} decoder layers but the config asks for "
            f"{config.num_layers} / {config.decoder_layers}"
        )
    if ("ln_f" in params["encoder"]) != config.norm_first:
        raise ValueError("params were made with another norm_first (pre-LN has a final LayerNorm 'ln_f')")
    return src_t, tgt_t


# ================================================================ positions and masks
@functools.lru_cache(maxsize=32)
def _positions_np(max_len: int, d_model: int) -> np.ndarray:
    pos = np.arange(max_len, dtype=np.float64)[:, None]
    rate = 1.0 / 10000.0 ** (np.arange(0, d_model, 2, dtype=np.float64) / d_model)  # (ceil(D/2),)
    pe = np.zeros((max_len, d_model), np.float64)
    pe[:, 0::2] = np.sin(pos * rate)
    pe[:, 1::2] = np.cos(pos * rate[: d_model // 2])
    return pe


def sinusoidal_positions(max_len: int, d_model: int, dtype=jnp.float32) -> jax.Array:
    """``(max_len, d_model)``: ``PE[p, 2i] = sin(p / 10000^(2i/D))``, ``PE[p, 2i+1] = cos(p / 10000^(2i/D))``."""
    return jnp.asarray(_positions_np(int(max_len), int(d_model)), dtype)


def _check_id_values(name: str, x, vocab: int) -> None:
    """ValueError for ids outside ``[0, vocab)`` when their values are known (not under ``jit``)."""
    if isinstance(x, jax.core.Tracer):
        return
    values = np.asarray(x)
    if values.size == 0:
        return
    bad = (values < 0) | (values >= vocab)  # compared in the ids' own dtype: nothing wraps
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{name} holds ids outside the vocabulary [0, {vocab}), e.g. {values[where]} at index {where} "
            f"({int(bad.sum())} such ids): the tokenizer and the model config must agree on the vocabulary"
        )


def _ids(name: str, x, vocab: int, *, max_len: int | None = None):
    """Checked ``(B, T)`` ids as int32 (one compiled shape for every integer dtype).

    Known values (not traced) must lie in ``[0, vocab)`` (ValueError otherwise).
    Traced values cannot be checked: they are clipped in their own dtype to
    ``[-1, vocab]`` first, so an id outside the vocabulary stays outside (never
    wraps into it), and the embedding then reads the nearest edge row.
    """
    if not hasattr(x, "dtype"):
        x = np.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.integer):
        raise TypeError(f"{name} must hold integer token ids, got dtype {x.dtype}")
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (B, T) (a batch of id sequences), got shape {tuple(x.shape)}")
    if x.shape[1] < 1:
        raise ValueError(f"{name} must hold at least one token per sequence, got shape {tuple(x.shape)}")
    if max_len is not None and x.shape[1] > max_len:
        raise ValueError(
            f"{name} has {x.shape[1]} tokens per sequence, more than Config.max_len={max_len} "
            "(the sinusoidal positions go up to max_len - 1)"
        )
    _check_id_values(name, x, vocab)
    if x.dtype == np.int32:
        return jnp.asarray(x)
    info = np.iinfo(x.dtype)
    lo, hi = max(int(info.min), -1), min(int(info.max), int(vocab))
    if isinstance(x, np.ndarray):
        return jnp.asarray(np.clip(x, lo, hi).astype(np.int32))
    return jnp.clip(x, lo, hi).astype(jnp.int32)


def _embed(table, ids, positions, config: Config):
    """``embed(ids) sqrt(D) + PE[positions]`` (positions ``None``: 0 .. T - 1)."""
    x = F.embedding(table, ids) * jnp.asarray(math.sqrt(config.d_model), table.dtype)
    pe = sinusoidal_positions(config.max_len, config.d_model, table.dtype)
    if positions is None:
        return x + pe[: ids.shape[1]]
    return x + jnp.take(pe, jnp.clip(positions, 0, config.max_len - 1), axis=0)


def _same_segment(seg_q, seg_k):
    """``(B, 1, Tq, Tk)``: query and key belong to the same packed example."""
    return (seg_q[:, :, None] == seg_k[:, None, :])[:, None]


def _masks(config: Config, src, tgt, src_segments, tgt_segments):
    """Boolean attention masks (True = may attend), broadcastable to ``(B, H, Tq, Tk)``."""
    real_src = (src != config.pad_id)[:, None, None, :]  # (B, 1, 1, Ts)
    causal = F.causal_mask(tgt.shape[1])  # (Tt, Tt)
    if src_segments is None:
        return real_src, causal, real_src
    enc = real_src & _same_segment(src_segments, src_segments)  # (B, 1, Ts, Ts)
    dec = causal & _same_segment(tgt_segments, tgt_segments)  # (B, 1, Tt, Tt)
    cross = real_src & _same_segment(tgt_segments, src_segments)  # (B, 1, Tt, Ts)
    return enc, dec, cross


# ================================================================ sub-layers
def _ln(p, x, eps):
    return F.layer_norm(x, p["gamma"], p["beta"], eps=eps)


def _lin(p, x):
    return F.linear(x, p["w"], p.get("b"))


def _attend(q, k, v, mask, want_weights: bool):
    """Heads ``(B, H, T, dh)`` -> ``(B, T, H dh)`` (and the weights ``(B, H, Tq, Tk)`` or None)."""
    if want_weights:
        o, w = F.attention(q, k, v, mask=mask, return_weights=True)
        return F.merge_heads(o), w
    return F.merge_heads(F.attention(q, k, v, mask=mask)), None


def _self_qkv(p, x, num_heads):
    q, k, v = jnp.split(_lin(p["qkv"], x), 3, axis=-1)
    return F.split_heads(q, num_heads), F.split_heads(k, num_heads), F.split_heads(v, num_heads)


def _self_attention(p, x, mask, num_heads, want_weights):
    q, k, v = _self_qkv(p, x, num_heads)
    o, w = _attend(q, k, v, mask, want_weights)
    return _lin(p["proj"], o), w


def _cross_kv(p, memory, num_heads):
    k, v = jnp.split(_lin(p["kv"], memory), 2, axis=-1)
    return F.split_heads(k, num_heads), F.split_heads(v, num_heads)


def _cross_attention(p, x, k, v, mask, num_heads, want_weights):
    q = F.split_heads(_lin(p["q"], x), num_heads)
    o, w = _attend(q, k, v, mask, want_weights)
    return _lin(p["proj"], o), w


def _mlp(p, x, activation):
    return _lin(p["fc2"], ACTIVATIONS[activation](_lin(p["fc1"], x)))


def _sublayer(x, ln, fn, *, norm_first, eps, rate, key, train):
    """Residual sub-layer: pre-LN ``x + drop(f(LN x))`` or post-LN ``LN(x + drop(f(x)))``; ``fn`` returns (y, aux)."""
    y, aux = fn(_ln(ln, x, eps) if norm_first else x)
    y = F.dropout(key, y, rate, deterministic=not train)
    return (x + y, aux) if norm_first else (_ln(ln, x + y, eps), aux)


def _keys(key, n: int, active: bool):
    return list(jax.random.split(key, n)) if active else [None] * n


def _check_activation(activation):
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")


def encoder_block(
    params,
    x,
    mask,
    *,
    num_heads: int,
    dropout: float = 0.0,
    key=None,
    train: bool = False,
    norm_first: bool = True,
    activation: str = "relu",
    ln_eps: float = 1e-5,
    return_attention: bool = False,
):
    """One encoder block: self-attention then feed-forward, each a residual sub-layer.

    Args:
      params: from :func:`init_encoder_block`.
      x: ``(B, T, D)`` floating.
      mask: bool, broadcastable to ``(B, H, T, T)`` (True = may attend; e.g.
        ``(src != pad)[:, None, None, :]``), or None (every token sees every token).
      num_heads: heads (must divide D).
      dropout: rate on each sub-layer output (training only).
      key: PRNG key, needed when ``train`` and ``dropout > 0``.
      train: static bool; dropout is applied only when True.
      norm_first: pre-LN (default) or post-LN.
      activation: ``"relu"`` or ``"gelu"``.
      return_attention: also return the attention weights ``(B, H, T, T)``.
    Returns:
      ``y (B, T, D)``, or ``(y, weights)``.
    """
    _check_activation(activation)
    if getattr(x, "ndim", None) != 3:
        raise ValueError(f"encoder_block expects x of shape (B, T, D), got {getattr(x, 'shape', None)}")
    active = bool(train) and dropout > 0
    if active and key is None:
        raise ValueError("encoder_block(train=True) with dropout > 0 needs a PRNG key")
    k1, k2 = _keys(key, 2, active)
    common = dict(norm_first=norm_first, eps=ln_eps, rate=dropout, train=train)
    attend = lambda h: _self_attention(params["attn"], h, mask, num_heads, return_attention)
    x, w = _sublayer(x, params["ln1"], attend, key=k1, **common)
    x, _ = _sublayer(x, params["ln2"], lambda h: (_mlp(params["mlp"], h, activation), None), key=k2, **common)
    return (x, w) if return_attention else x


def decoder_block(
    params,
    x,
    memory,
    self_mask,
    cross_mask,
    *,
    num_heads: int,
    dropout: float = 0.0,
    key=None,
    train: bool = False,
    norm_first: bool = True,
    activation: str = "relu",
    ln_eps: float = 1e-5,
    return_attention: bool = False,
):
    """One decoder block: masked self-attention, cross-attention over ``memory (B, Ts, D)``, feed-forward.

    ``self_mask`` broadcastable to ``(B, H, Tt, Tt)`` (causal), ``cross_mask``
    to ``(B, H, Tt, Ts)``. Returns ``y (B, Tt, D)`` or ``(y, (self_weights,
    cross_weights))``.
    """
    _check_activation(activation)
    active = bool(train) and dropout > 0
    if active and key is None:
        raise ValueError("decoder_block(train=True) with dropout > 0 needs a PRNG key")
    k1, k2, k3 = _keys(key, 3, active)
    common = dict(norm_first=norm_first, eps=ln_eps, rate=dropout, train=train)
    ck, cv = _cross_kv(params["cross_attn"], memory, num_heads)
    x, w_self = _sublayer(
        x,
        params["ln1"],
        lambda h: _self_attention(params["self_attn"], h, self_mask, num_heads, return_attention),
        key=k1,
        **common,
    )
    x, w_cross = _sublayer(
        x,
        params["ln2"],
        lambda h: _cross_attention(params["cross_attn"], h, ck, cv, cross_mask, num_heads, return_attention),
        key=k2,
        **common,
    )
    x, _ = _sublayer(x, params["ln3"], lambda h: (_mlp(params["mlp"], h, activation), None), key=k3, **common)
    return (x, (w_self, w_cross)) if return_attention else x


def _block_kwargs(config: Config, train: bool) -> dict:
    return dict(
        num_heads=config.num_heads,
        dropout=config.dropout,
        train=train,
        norm_first=config.norm_first,
        activation=config.activation,
        ln_eps=config.ln_eps,
    )


# ================================================================ the model
def _run_encoder(params, config, src_t, src, positions, mask, key, train, want):
    active = bool(train) and config.dropout > 0
    k_emb, *k_layers = _keys(key, config.num_layers + 1, active)
    x = F.dropout(k_emb, _embed(src_t, src, positions, config), config.dropout, deterministic=not train)
    weights = []
    for p, k in zip(params["encoder"]["layers"], k_layers):
        x = encoder_block(p, x, mask, key=k, return_attention=want, **_block_kwargs(config, train))
        if want:
            x, w = x
            weights.append(w)
    if config.norm_first:
        x = _ln(params["encoder"]["ln_f"], x, config.ln_eps)
    return x, weights


def _logits(params, config, tgt_t, h):
    if config.tie_embeddings:
        return F.linear(h, tgt_t.T, params["out"]["b"])
    return _lin(params["out"], h)


def encode(params, config: Config, src, *, key=None, train: bool = False, src_segments=None, src_positions=None):
    """The encoder output ``memory (B, Ts, D)`` and the source mask ``(B, Ts)`` (True = real token)."""
    src_t, _ = _check_params(params, config)
    src = _ids("src", src, config.src_vocab, max_len=config.max_len)
    _check_train_key(config, key, train)
    real = src != config.pad_id
    mask = (
        real[:, None, None, :]
        if src_segments is None
        else real[:, None, None, :] & _same_segment(src_segments, src_segments)
    )
    memory, _ = _run_encoder(params, config, src_t, src, src_positions, mask, key, train, False)
    return memory, real


def _check_train_key(config, key, train):
    if not isinstance(train, (bool, np.bool_)):
        raise TypeError(f"train must be a Python bool (static: it selects the computation), got {type(train).__name__}")
    if train and config.dropout > 0 and key is None:
        raise ValueError("apply(train=True) with Config.dropout > 0 needs a PRNG key: key=jax.random.key(...)")


def _check_segments(name, seg, like):
    if seg is None:
        return None
    seg = jnp.asarray(seg)
    if not jnp.issubdtype(seg.dtype, jnp.integer) or seg.shape != like.shape:
        raise ValueError(
            f"{name} must be an integer array of shape {tuple(like.shape)} (one entry per token), "
            f"got {seg.dtype} {tuple(seg.shape)}"
        )
    return seg


def apply(
    params,
    config: Config,
    src,
    tgt,
    *,
    key=None,
    train: bool = False,
    return_attention: bool = False,
    src_segments=None,
    tgt_segments=None,
    src_positions=None,
    tgt_positions=None,
):
    """Teacher-forced logits.

    Args:
      params: from :func:`init`.
      config: the :class:`Config` they were made with.
      src: ``(B, Ts)`` integer source ids (right-padded with ``pad_id``).
      tgt: ``(B, Tt)`` integer decoder input ids (BOS first; labels are the
        same sequence shifted left).
      key: PRNG key for dropout (needed when ``train`` and ``dropout > 0``).
      train: static bool: dropout on.
      return_attention: also return the attention weights.
      src_segments, tgt_segments, src_positions, tgt_positions: packed rows
        (module docstring); give both segment arrays or neither.
    Returns:
      ``logits (B, Tt, tgt_vocab)`` in the parameters' dtype; with
      ``return_attention`` ``(logits, attn)``, ``attn = {"encoder": [(B, H,
      Ts, Ts)] * num_layers, "decoder_self": [(B, H, Tt, Tt)] * L_dec,
      "decoder_cross": [(B, H, Tt, Ts)] * L_dec}``.
    """
    _check_params(params, config)
    src = _ids("src", src, config.src_vocab, max_len=config.max_len)
    tgt = _ids("tgt", tgt, config.tgt_vocab, max_len=config.max_len)
    if src.shape[0] != tgt.shape[0]:
        raise ValueError(f"src and tgt must hold the same number of sequences, got {src.shape[0]} and {tgt.shape[0]}")
    _check_train_key(config, key, train)
    if not isinstance(return_attention, (bool, np.bool_)):
        raise TypeError(f"return_attention must be a Python bool, got {type(return_attention).__name__}")
    if (src_segments is None) != (tgt_segments is None):
        raise ValueError("give both src_segments and tgt_segments (packed rows) or neither")
    packing = {
        "src_segments": _check_segments("src_segments", src_segments, src),
        "tgt_segments": _check_segments("tgt_segments", tgt_segments, tgt),
        "src_positions": _check_segments("src_positions", src_positions, src),
        "tgt_positions": _check_segments("tgt_positions", tgt_positions, tgt),
    }
    key = key if bool(train) and config.dropout > 0 else None
    return _apply(params, config, src, tgt, key, packing, train=bool(train), return_attention=bool(return_attention))


@functools.partial(jax.jit, static_argnames=("config", "train", "return_attention"))
def _apply(params, config: Config, src, tgt, key, packing, *, train: bool, return_attention: bool):
    """:func:`apply` after its checks, compiled once per shape (an eager call would dispatch op by op)."""
    src_t, tgt_t = _tables(params, config)
    enc_mask, dec_mask, cross_mask = _masks(config, src, tgt, packing["src_segments"], packing["tgt_segments"])
    active = train and config.dropout > 0
    k_enc, k_emb, *k_layers = _keys(key, config.decoder_layers + 2, active)

    memory, enc_w = _run_encoder(
        params, config, src_t, src, packing["src_positions"], enc_mask, k_enc, train, return_attention
    )
    x = _embed(tgt_t, tgt, packing["tgt_positions"], config)
    x = F.dropout(k_emb, x, config.dropout, deterministic=not train)
    self_w, cross_w = [], []
    for p, k in zip(params["decoder"]["layers"], k_layers):
        x = decoder_block(
            p, x, memory, dec_mask, cross_mask, key=k, return_attention=return_attention, **_block_kwargs(config, train)
        )
        if return_attention:
            x, (ws, wc) = x
            self_w.append(ws)
            cross_w.append(wc)
    if config.norm_first:
        x = _ln(params["decoder"]["ln_f"], x, config.ln_eps)
    logits = _logits(params, config, tgt_t, x)
    if return_attention:
        return logits, {"encoder": enc_w, "decoder_self": self_w, "decoder_cross": cross_w}
    return logits


def model_fn(config: Config):
    """``apply(params, state, inputs, *, key=None, train=False) -> (logits, state)`` for
    :func:`jdlfs.train.sequence`: ``inputs`` is ``(src, tgt_in)`` or a dict with ``"src"``, ``"tgt"``
    and optionally the packing arrays (``"src_segments"``, ...; :func:`pack_pairs`)."""

    def run(params, state, inputs, *, key=None, train=False):
        if isinstance(inputs, dict):
            extra = {k: v for k, v in inputs.items() if k not in ("src", "tgt")}
            return apply(params, config, inputs["src"], inputs["tgt"], key=key, train=train, **extra), state
        src, tgt = inputs
        return apply(params, config, src, tgt, key=key, train=train), state

    return run


# ================================================================ decoding with a key/value cache
def _check_decode_len(config: Config, max_len):
    if isinstance(max_len, bool) or not isinstance(max_len, (int, np.integer)) or max_len < 1:
        raise ValueError(f"max_len must be a positive int (tokens to generate), got {max_len!r}")
    if max_len > config.max_len:
        raise ValueError(
            f"max_len={max_len} exceeds Config.max_len={config.max_len} (the decoder's positions go up to "
            f"{config.max_len - 1})"
        )
    return int(max_len)


def init_cache(params, config: Config, src, max_len: int) -> dict:
    """Run the encoder once and allocate the decoder's key/value cache for ``max_len`` steps.

    Returns a dict whose every leaf has the batch as its leading axis (what
    :mod:`jdlfs.decode` needs to expand and reorder beams)::

        {"src_mask": (B, Ts) bool,
         "layers": [{"self_k", "self_v": (B, H, max_len, d_head) zeros,
                     "cross_k", "cross_v": (B, H, Ts, d_head) from the encoder output}] * L_dec}
    """
    max_len = _check_decode_len(config, max_len)
    memory, real = encode(params, config, src)
    b = memory.shape[0]
    zeros = jnp.zeros((b, config.num_heads, max_len, config.d_head), memory.dtype)
    layers = []
    for p in params["decoder"]["layers"]:
        ck, cv = _cross_kv(p["cross_attn"], memory, config.num_heads)
        layers.append({"self_k": zeros, "self_v": zeros, "cross_k": ck, "cross_v": cv})
    return {"src_mask": real, "layers": layers}


def decode_step(params, config: Config, tokens, position, cache):
    """One decoder step: ``tokens (N,)`` at ``position`` (int scalar, may be traced) -> ``(logits (N, V), cache)``.

    Layer ``l`` writes this token's key/value into slot ``position`` of its
    self-attention cache and attends to slots ``0 .. position`` (later slots
    are masked, so their stale contents never matter); cross-attention reads
    the cached encoder keys/values. Equals ``apply(...)[:, position]`` for the
    same prefix (tested).

    A concrete ``position`` must be a slot of the cache (``0 <= position <
    max_len`` of :func:`init_cache`) and concrete ``tokens`` ids of the target
    vocabulary (ValueError naming them). Under ``jit`` neither can be checked:
    a traced position past the cache is clamped by ``dynamic_update_slice`` to
    the last slot (overwriting it), and an out-of-range token reads the edge
    row of the embedding.
    """
    _, tgt_t = _tables(params, config)
    _check_step(config, tokens, position, cache)
    kw = _block_kwargs(config, False)
    eps, nf = config.ln_eps, config.norm_first
    x = _embed(tgt_t, tokens[:, None], jnp.full((tokens.shape[0], 1), position, jnp.int32), config)  # (N, 1, D)
    cross_mask = cache["src_mask"][:, None, None, :]  # (N, 1, 1, Ts)
    new_layers = []
    for p, c in zip(params["decoder"]["layers"], cache["layers"]):
        slots = c["self_k"].shape[2]
        self_mask = (jnp.arange(slots) <= position)[None, None, None, :]  # (1, 1, 1, L)
        upd = {}

        def self_attn(h, p=p, c=c, self_mask=self_mask, upd=upd):
            q, k, v = _self_qkv(p["self_attn"], h, config.num_heads)  # (N, H, 1, dh)
            upd["self_k"] = lax.dynamic_update_slice_in_dim(c["self_k"], k.astype(c["self_k"].dtype), position, 2)
            upd["self_v"] = lax.dynamic_update_slice_in_dim(c["self_v"], v.astype(c["self_v"].dtype), position, 2)
            o, _ = _attend(q, upd["self_k"], upd["self_v"], self_mask, False)
            return _lin(p["self_attn"]["proj"], o), None

        def cross_attn(h, p=p, c=c):
            return _cross_attention(p["cross_attn"], h, c["cross_k"], c["cross_v"], cross_mask, kw["num_heads"], False)

        common = dict(norm_first=nf, eps=eps, rate=0.0, key=None, train=False)
        x, _ = _sublayer(x, p["ln1"], self_attn, **common)
        x, _ = _sublayer(x, p["ln2"], cross_attn, **common)
        x, _ = _sublayer(x, p["ln3"], lambda h, p=p: (_mlp(p["mlp"], h, config.activation), None), **common)
        new_layers.append({**c, **upd})
    if nf:
        x = _ln(params["decoder"]["ln_f"], x, eps)
    return _logits(params, config, tgt_t, x)[:, 0], {"src_mask": cache["src_mask"], "layers": new_layers}


def _check_step(config: Config, tokens, position, cache) -> None:
    if getattr(tokens, "ndim", None) != 1 or not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(
            f"tokens must be a 1-D integer array (one token per row), got {getattr(tokens, 'shape', type(tokens))}"
        )
    _check_id_values("tokens", tokens, config.tgt_vocab)
    if isinstance(position, jax.core.Tracer):
        return  # traced: cannot be checked (see the docstring)
    value = np.asarray(position)  # concrete: a Python or NumPy int, or a 0-d array
    if value.ndim != 0 or not np.issubdtype(value.dtype, np.integer):
        raise ValueError(f"position must be an int scalar (the slot of tokens), got {position!r}")
    slots = cache["layers"][0]["self_k"].shape[2] if cache["layers"] else config.max_len
    if not 0 <= int(value) < slots:
        raise ValueError(
            f"position={int(value)} is outside the key/value cache: init_cache(..., max_len={slots}) "
            f"holds positions 0 .. {slots - 1}"
        )


def _start(src, bos_id):
    return jnp.full((src.shape[0],), bos_id, jnp.int32)


def _check_special(config: Config, bos_id, eos_id):
    for name, v in (("bos_id", bos_id), ("eos_id", eos_id)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v < config.tgt_vocab:
            raise ValueError(f"{name} must be an int in [0, tgt_vocab={config.tgt_vocab}), got {v!r}")


def _uncached(params, config: Config, src, max_len: int):
    """A "cache" that is only the decoded tokens: every step re-runs the full teacher-forced :func:`apply`."""
    buf = jnp.full((src.shape[0], max_len), config.pad_id, jnp.int32)

    def step(tokens, position, cache):
        buf = lax.dynamic_update_slice_in_dim(cache["tgt"], tokens[:, None].astype(jnp.int32), position, 1)
        logits = apply(params, config, cache["src"], buf)  # (N, max_len, V); causal: slots > position do not matter
        return lax.dynamic_index_in_dim(logits, position, 1, keepdims=False), {"src": cache["src"], "tgt": buf}

    return step, {"src": src, "tgt": buf}


def _cached(params, config: Config, src, max_len: int):
    return functools.partial(decode_step, params, config), init_cache(params, config, src, max_len)


@functools.partial(jax.jit, static_argnames=("config", "bos_id", "eos_id", "max_len", "cache"))
def _greedy(params, config, src, *, bos_id, eos_id, max_len, cache):
    step, state = (_cached if cache else _uncached)(params, config, src, max_len)
    return decode.greedy(step, state, _start(src, bos_id), max_len=max_len, eos_id=eos_id, pad_id=config.pad_id)


@functools.partial(
    jax.jit, static_argnames=("config", "beam_size", "bos_id", "eos_id", "max_len", "length_penalty", "cache")
)
def _beam(params, config, src, *, beam_size, bos_id, eos_id, max_len, length_penalty, cache):
    step, state = (_cached if cache else _uncached)(params, config, src, max_len)
    return decode.beam_search(
        step,
        state,
        _start(src, bos_id),
        beam_size=beam_size,
        eos_id=eos_id,
        max_len=max_len,
        length_penalty=length_penalty,
        pad_id=config.pad_id,
    )


def _check_decode(params, config, src, bos_id, eos_id, max_len):
    _check_params(params, config)
    src = _ids("src", src, config.src_vocab, max_len=config.max_len)
    _check_special(config, bos_id, eos_id)
    return src, _check_decode_len(config, max_len)


def greedy(params, config: Config, src, *, bos_id: int, eos_id: int, max_len: int, cache: bool = True):
    """Greedy decoding (jitted): ``ids int32 (B, max_len)``, BOS not included, ``pad_id`` after EOS.

    The encoder runs once; the decoder steps over the key/value cache
    (``cache=False``: re-run the full :func:`apply` every step instead, the
    slow baseline). Stops early once every row has produced EOS.
    """
    src, max_len = _check_decode(params, config, src, bos_id, eos_id, max_len)
    return _greedy(params, config, src, bos_id=int(bos_id), eos_id=int(eos_id), max_len=max_len, cache=bool(cache))


def greedy_uncached(params, config: Config, src, *, bos_id: int, eos_id: int, max_len: int):
    """:func:`greedy` re-running the full teacher-forced :func:`apply` at every step (no cache)."""
    return greedy(params, config, src, bos_id=bos_id, eos_id=eos_id, max_len=max_len, cache=False)


def beam_search(
    params,
    config: Config,
    src,
    *,
    beam_size: int,
    bos_id: int,
    eos_id: int,
    max_len: int,
    length_penalty: float = 0.6,
    cache: bool = True,
    return_scores: bool = False,
):
    """Beam search (jitted): the best beam per source, ``ids int32 (B, max_len)``, ``pad_id`` after EOS.

    Hypotheses are ranked by summed log-probability divided by the GNMT length
    penalty ``((5 + len) / 6) ** length_penalty`` (:func:`jdlfs.decode.beam_search`);
    ``beam_size=1`` equals :func:`greedy`. ``length_penalty`` (>= 0) is static:
    each value compiles once. ``return_scores``: also the ``(B,)`` float32 scores.
    """
    src, max_len = _check_decode(params, config, src, bos_id, eos_id, max_len)
    if isinstance(beam_size, bool) or not isinstance(beam_size, (int, np.integer)) or beam_size < 1:
        raise ValueError(f"beam_size must be a positive int, got {beam_size!r}")
    if isinstance(length_penalty, (bool, np.bool_)) or not isinstance(
        length_penalty, (int, float, np.integer, np.floating)
    ):
        raise TypeError(f"length_penalty must be a Python float, got {type(length_penalty).__name__}")
    if not (math.isfinite(length_penalty) and length_penalty >= 0):
        raise ValueError(f"length_penalty must be a finite number >= 0, got {length_penalty}")
    ids, scores = _beam(
        params,
        config,
        src,
        length_penalty=float(length_penalty),
        beam_size=int(beam_size),
        bos_id=int(bos_id),
        eos_id=int(eos_id),
        max_len=max_len,
        cache=bool(cache),
    )
    return (ids, scores) if return_scores else ids


def decode_corpus(
    params,
    config: Config,
    sources,
    *,
    bos_id: int,
    eos_id: int,
    beam_size: int = 1,
    length_penalty: float = 0.6,
    batch_size: int = 64,
    bucket_lengths=(16, 32, 64, 128),
    extra_len: int = 16,
    max_len: int | None = None,
    cache: bool = True,
    compile_only: bool = False,
):
    """Decode a list of source id sequences in length buckets; returns each output's ids before its EOS.

    Sources are grouped with :func:`jdlfs.text.bucket_batches` (no shuffling,
    ``batch_size`` rows, bucket lengths up to ``Config.max_len``; a longer
    source is cut to the largest), so the jitted decoder compiles once per
    bucket; each bucket of length ``L`` decodes at most ``max_len`` tokens
    (default ``L + extra_len``; never more than ``Config.max_len``). ``beam_size == 1`` is :func:`greedy`, else
    :func:`beam_search`. ``compile_only=True`` compiles every bucket's decoder
    without running it (to time decoding without compilation) and returns None.
    """
    from jdlfs.text import bucket_batches  # the text package is only needed here

    buckets = tuple(b for b in bucket_lengths if b <= config.max_len) or (config.max_len,)
    batches = list(
        bucket_batches(
            None,
            [list(s) for s in sources],
            batch_size,
            buckets,
            config.pad_id,
            overflow="truncate",
            return_indices=True,
        )
    )
    out: list = [None] * len(sources)
    steps = max_len
    for batch, idx in batches:
        max_len = min(config.max_len, batch.shape[1] + extra_len if steps is None else steps)
        if beam_size == 1:
            kw = dict(bos_id=int(bos_id), eos_id=int(eos_id), max_len=max_len, cache=bool(cache))
            fn = _greedy
        else:
            kw = dict(
                beam_size=int(beam_size),
                bos_id=int(bos_id),
                eos_id=int(eos_id),
                max_len=max_len,
                length_penalty=float(length_penalty),
                cache=bool(cache),
            )
            fn = _beam
        if compile_only:
            fn.lower(params, config, jnp.asarray(batch), **kw).compile()
            continue
        src, _ = _check_decode(params, config, batch, bos_id, eos_id, max_len)
        ids = fn(params, config, src, **kw)
        ids = np.asarray(ids[0] if isinstance(ids, tuple) else ids)
        for row, i in zip(ids, idx):
            if i >= 0:
                stop = np.flatnonzero(row == eos_id)
                out[i] = row[: stop[0] if stop.size else len(row)].tolist()
    return None if compile_only else out


# ================================================================ packing
def pack_pairs(
    src: list,
    tgt: list,
    *,
    src_len: int,
    tgt_len: int,
    pad_id: int = 0,
    key=None,
    max_per_row: int | None = None,
) -> tuple[dict, np.ndarray]:
    """Pack (source, target) id sequences into fixed-length rows, several pairs per row.

    ``src[i]`` is a source sequence (e.g. ending in EOS), ``tgt[i]`` the full
    target ``[BOS, y_1, ..., y_n, EOS]``; the decoder input is ``tgt[i][:-1]``
    and the labels ``tgt[i][1:]``. Pairs are placed first-fit (in the order of
    a permutation drawn from ``key``, input order when ``None``) into rows
    with room for both sides; a pair too long for a row is refused
    (ValueError naming it: truncate or filter first).

    Returns:
      ``(inputs, labels)``: ``inputs`` a dict of int32 arrays -- ``src``,
      ``src_segments``, ``src_positions`` ``(R, src_len)`` and ``tgt``,
      ``tgt_segments``, ``tgt_positions`` ``(R, tgt_len)`` -- for
      :func:`apply` / :func:`model_fn`, and ``labels (R, tgt_len)`` with
      ``pad_id`` wherever there is no label. Segment ids are 1, 2, ... per
      row (0 = padding); positions restart at 0 for each pair.
    """
    if len(src) != len(tgt):
        raise ValueError(f"src and tgt must hold the same number of sequences, got {len(src)} and {len(tgt)}")
    src = [np.asarray(s, np.int64) for s in src]
    dec = [np.asarray(t, np.int64) for t in tgt]
    for i, (s, t) in enumerate(zip(src, dec)):
        if len(s) < 1 or len(t) < 2:
            raise ValueError(f"pair {i}: needs >= 1 source id and >= 2 target ids (BOS ... EOS)")
        if len(s) > src_len or len(t) - 1 > tgt_len:
            raise ValueError(
                f"pair {i} has {len(s)} source / {len(t) - 1} decoder tokens, more than a row's "
                f"src_len={src_len} / tgt_len={tgt_len}: truncate or filter it first"
            )
    n = len(src)
    order = np.arange(n) if key is None else np.asarray(jax.random.permutation(key, n))
    cap = n  # at most one row per pair
    room_s = np.full(cap, src_len, np.int64)
    room_t = np.full(cap, tgt_len, np.int64)
    count = np.zeros(cap, np.int64)
    row_of = np.empty(n, np.int64)
    rows = 0
    limit = max_per_row or n
    for i in order:
        ls, lt = len(src[i]), len(dec[i]) - 1
        fits = np.flatnonzero((room_s[:rows] >= ls) & (room_t[:rows] >= lt) & (count[:rows] < limit))
        r = int(fits[0]) if fits.size else rows
        rows = max(rows, r + 1)
        room_s[r] -= ls
        room_t[r] -= lt
        count[r] += 1
        row_of[i] = r
    out = {
        name: np.zeros((rows, length), np.int32)
        for name, length in (
            ("src", src_len),
            ("src_segments", src_len),
            ("src_positions", src_len),
            ("tgt", tgt_len),
            ("tgt_segments", tgt_len),
            ("tgt_positions", tgt_len),
        )
    }
    out["src"][:] = pad_id
    out["tgt"][:] = pad_id
    labels = np.full((rows, tgt_len), pad_id, np.int32)
    fill_s = np.zeros(rows, np.int64)
    fill_t = np.zeros(rows, np.int64)
    seg = np.zeros(rows, np.int64)
    for i in order:
        r = row_of[i]
        seg[r] += 1
        s, t = src[i], dec[i]
        a, b = fill_s[r], fill_s[r] + len(s)
        out["src"][r, a:b], out["src_segments"][r, a:b], out["src_positions"][r, a:b] = s, seg[r], np.arange(len(s))
        a, b = fill_t[r], fill_t[r] + len(t) - 1
        out["tgt"][r, a:b], out["tgt_segments"][r, a:b] = t[:-1], seg[r]
        out["tgt_positions"][r, a:b] = np.arange(len(t) - 1)
        labels[r, a:b] = t[1:]
        fill_s[r], fill_t[r] = fill_s[r] + len(s), b
    return out, labels
