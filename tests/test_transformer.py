"""The encoder-decoder Transformer (``jdlfs.models.transformer``): masks, the key/value cache, beam search,
hand-rule gradients against autodiff, packing, a tiny model that learns to reverse sequences, bad input."""

from __future__ import annotations

import dataclasses
import functools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jdlfs import functional as F
from jdlfs import train
from jdlfs.gradcheck import custom_vjp_count, strip_custom_vjp
from jdlfs.models import transformer as T
from jdlfs.text import pad_to

BOS, EOS = 1, 2
TINY = T.Config(src_vocab=23, tgt_vocab=19, d_model=16, num_heads=2, num_layers=2, d_ff=32, dropout=0.1, max_len=24)


@pytest.fixture(scope="module")
def params():
    return T.init(jax.random.key(0), TINY)


def ids(seed, shape, vocab, *, pad_from=None):
    """Random ordinary int32 ids (>= 3: no PAD/BOS/EOS), PAD from column ``pad_from`` on."""
    x = np.random.default_rng(seed).integers(3, vocab, shape).astype(np.int32)
    if pad_from is not None:
        x[:, pad_from:] = 0
    return x


def decoder_input(seed, shape, vocab):
    x = ids(seed, shape, vocab)
    x[:, 0] = BOS
    return x


# The shapes most tests share, so that apply compiles once for them (jit caches by shape).
SRC, TGT = ids(1, (3, 7), 23, pad_from=5), decoder_input(2, (3, 6), 19)


# ---------------------------------------------------------------- structure
def test_param_tree_is_named_and_sized(params):
    enc, dec = params["encoder"]["layers"], params["decoder"]["layers"]
    assert len(enc) == len(dec) == 2
    assert params["src_embed"]["table"].shape == (23, 16) and params["tgt_embed"]["table"].shape == (19, 16)
    assert enc[0]["attn"]["qkv"]["w"].shape == (16, 48) and enc[0]["mlp"]["fc1"]["w"].shape == (16, 32)
    assert dec[1]["cross_attn"]["kv"]["w"].shape == (16, 32) and dec[1]["cross_attn"]["q"]["w"].shape == (16, 16)
    assert set(params["out"]) == {"b"}  # tied: the output projection is the target table
    shapes = lambda **change: jax.eval_shape(
        lambda k: T.init(k, dataclasses.replace(TINY, **change)), jax.random.key(0)
    )
    assert shapes(tie_embeddings=False)["out"]["w"].shape == (16, 19)
    shared = shapes(src_vocab=19, share_embeddings=True)
    assert "embed" in shared and "src_embed" not in shared
    post = shapes(norm_first=False)
    assert "ln_f" not in post["encoder"] and "ln_f" in params["encoder"]
    # embeddings N(0, 1/D): sqrt(D) times an embedding has unit variance
    assert float(jnp.std(params["src_embed"]["table"])) * 4 == pytest.approx(1.0, rel=0.2)


def test_fused_projections_are_xavier_over_the_fused_shape(params):
    """Documented: qkv (D, 3D) and kv (D, 2D) are Xavier-uniform over their fused shape, a smaller limit than
    separate (D, D) projections would get (sqrt(6 / 2D))."""
    d = TINY.d_model
    for w, fan_out in (
        (params["encoder"]["layers"][0]["attn"]["qkv"]["w"], 3 * d),
        (params["decoder"]["layers"][0]["self_attn"]["qkv"]["w"], 3 * d),
        (params["decoder"]["layers"][0]["cross_attn"]["kv"]["w"], 2 * d),
        (params["decoder"]["layers"][0]["cross_attn"]["q"]["w"], d),
    ):
        limit = np.sqrt(6.0 / (d + fan_out))
        assert float(jnp.abs(w).max()) <= limit and float(jnp.abs(w).max()) > 0.95 * limit
        assert float(jnp.std(w)) == pytest.approx(limit / np.sqrt(3), rel=0.1)  # U(-a, a) has std a / sqrt(3)


def test_sinusoidal_positions():
    pe = np.asarray(T.sinusoidal_positions(50, 8))
    p, i = 7, 1  # PE[p, 2i] = sin(p / 10000^(2i/D)), PE[p, 2i+1] = cos(...)
    assert pe[p, 2 * i] == pytest.approx(np.sin(p / 10000 ** (2 * i / 8)), abs=1e-6)
    assert pe[p, 2 * i + 1] == pytest.approx(np.cos(p / 10000 ** (2 * i / 8)), abs=1e-6)
    assert np.allclose(pe[0, 0::2], 0) and np.allclose(pe[0, 1::2], 1)
    assert T.sinusoidal_positions(3, 5).shape == (3, 5)  # odd width


def test_apply_shapes_and_attention_weights(params):
    src, tgt = SRC, TGT
    logits, attn = T.apply(params, TINY, src, tgt, return_attention=True)
    assert logits.shape == (3, 6, 19) and logits.dtype == jnp.float32
    assert [a.shape for a in attn["encoder"]] == [(3, 2, 7, 7)] * 2
    assert [a.shape for a in attn["decoder_self"]] == [(3, 2, 6, 6)] * 2
    assert [a.shape for a in attn["decoder_cross"]] == [(3, 2, 6, 7)] * 2
    for a in attn["encoder"] + attn["decoder_cross"]:
        assert np.allclose(a.sum(-1), 1, atol=1e-5)
        assert float(jnp.abs(a[..., 5:]).max()) == 0.0  # padded source keys get no weight
    for a in attn["decoder_self"]:
        assert float(jnp.abs(jnp.triu(a, 1)).max()) == 0.0  # no weight on later target positions
    assert np.array_equal(T.apply(params, TINY, src, tgt), logits)


# ---------------------------------------------------------------- masks
POST_LN = dataclasses.replace(  # the other code paths: post-LN, untied output, GELU, 1 encoder / 2 decoder layers
    TINY, norm_first=False, tie_embeddings=False, activation="gelu", num_layers=1, num_decoder_layers=2
)


@pytest.mark.parametrize("cfg", [TINY, POST_LN], ids=["pre-LN", "post-LN"])
def test_output_at_t_does_not_depend_on_later_target_tokens(params, cfg):
    src, tgt = SRC, TGT
    params = params if cfg is TINY else T.init(jax.random.key(1), cfg)
    base = T.apply(params, cfg, src, tgt)
    for t in (0, 2, 4):
        changed = tgt.copy()
        changed[:, t + 1 :] = (tgt[:, t + 1 :] + 5) % 19
        out = T.apply(params, cfg, src, changed)
        np.testing.assert_array_equal(out[:, : t + 1], base[:, : t + 1])
        assert float(jnp.abs(out[:, t + 1 :] - base[:, t + 1 :]).max()) > 1e-3  # later positions do see them


def test_appending_pad_to_the_source_leaves_logits_unchanged(params):
    src, tgt = SRC, TGT  # PAD from column 5 on
    base = T.apply(params, TINY, src, tgt)
    longer = np.concatenate([src, np.zeros((3, 9), src.dtype)], axis=1)
    np.testing.assert_allclose(T.apply(params, TINY, longer, tgt), base, atol=2e-6, rtol=0)
    # a real token in a padded slot does change them: the test can fail
    real = src.copy()
    real[:, 5] = 7
    assert float(jnp.abs(T.apply(params, TINY, real, tgt) - base).max()) > 1e-3


INT_DTYPES = [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64]


@pytest.mark.parametrize("dtype", INT_DTYPES)
def test_ids_of_every_integer_dtype(params, dtype):
    base = T.apply(params, TINY, SRC, TGT)
    np.testing.assert_array_equal(T.apply(params, TINY, SRC.astype(dtype), TGT.astype(dtype)), base)
    big = SRC.astype(dtype)
    big[0, 0] = np.iinfo(dtype).max  # out of the vocabulary, and known: refused, never wrapped into it
    with pytest.raises(ValueError, match=r"src holds ids outside the vocabulary \[0, 23\)"):
        T.apply(params, TINY, big, TGT.astype(dtype))


def test_out_of_range_ids_are_refused_when_known_and_read_the_edge_row_under_jit(params):
    for src, tgt, name in ((SRC.copy(), TGT, "src"), (SRC, TGT.copy(), "tgt")):
        bad = src if name == "src" else tgt
        for value in (-1, 23 if name == "src" else 19):
            bad[1, 2] = value
            with pytest.raises(ValueError, match=rf"{name} holds ids outside the vocabulary.*index \(1, 2\)"):
                T.apply(params, TINY, src, tgt)
            with pytest.raises(ValueError, match=rf"{name} holds ids outside"):  # a concrete JAX array too
                T.apply(params, TINY, jnp.asarray(src), jnp.asarray(tgt))
    with pytest.raises(ValueError, match="src holds ids outside the vocabulary"):
        T.greedy(params, TINY, SRC + 20, bos_id=BOS, eos_id=EOS, max_len=4)
    with pytest.raises(ValueError, match="src holds ids outside the vocabulary"):
        T.beam_search(params, TINY, SRC - 10, beam_size=2, bos_id=BOS, eos_id=EOS, max_len=4)
    # under jit the values are unknown: an out-of-range id reads the nearest edge row (jdlfs.functional.embedding)
    high, edge = SRC.copy(), SRC.copy()
    high[0, 0], edge[0, 0] = 10**6, 22
    np.testing.assert_allclose(
        jax.jit(lambda s: T.apply(params, TINY, s, TGT))(high), T.apply(params, TINY, edge, TGT), atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("dtype, atol", [(jnp.bfloat16, 0.15), (jnp.float16, 0.02)])
def test_low_precision_parameters(params, dtype, atol):
    src, tgt = SRC, TGT
    half = jax.tree.map(lambda a: a.astype(dtype), params)
    out = T.apply(half, TINY, src, tgt)
    assert out.dtype == dtype
    np.testing.assert_allclose(out.astype(jnp.float32), T.apply(params, TINY, src, tgt), atol=atol)


def test_packed_rows_compute_each_pair_alone(params):
    srcs = [[5, 6, 7, EOS], [8, 9, EOS], [10, 11, 12, 13, 14, EOS], [4, EOS]]
    tgts = [[BOS, 4, 5, EOS], [BOS, 6, EOS], [BOS, 7, 8, 9, EOS], [BOS, 11, 12, 13, 14, 15, EOS]]
    inputs, labels = T.pack_pairs(srcs, tgts, src_len=12, tgt_len=10)
    assert labels.shape[0] == 2  # four pairs in two rows
    packed = T.model_fn(TINY)(params, {}, inputs)[0]
    # each pair alone: one right-padded batch (PAD does not change a pair's logits, tested above)
    alone = T.apply(params, TINY, pad_to(srcs, 6), pad_to([t[:-1] for t in tgts], 6))
    found = 0
    for r in range(labels.shape[0]):
        for seg in range(1, int(inputs["tgt_segments"][r].max()) + 1):
            here = inputs["tgt_segments"][r] == seg
            i = next(i for i, t in enumerate(tgts) if list(inputs["tgt"][r][here]) == t[:-1])
            n = len(tgts[i]) - 1
            assert list(labels[r][here]) == tgts[i][1:]
            assert list(inputs["src"][r][inputs["src_segments"][r] == seg]) == srcs[i]
            assert list(inputs["tgt_positions"][r][here]) == list(range(n))
            np.testing.assert_allclose(packed[r][here], alone[i, :n], atol=2e-6, rtol=0)
            found += 1
    assert found == 4 and (labels != 0).sum() == sum(len(t) - 1 for t in tgts)
    with pytest.raises(ValueError, match="more than a row"):
        T.pack_pairs([[5] * 13], [[BOS, 4, EOS]], src_len=12, tgt_len=10)


# ---------------------------------------------------------------- dropout and training mode
def test_dropout_is_keyed_and_off_in_evaluation(params):
    src, tgt = SRC, TGT
    a = T.apply(params, TINY, src, tgt, key=jax.random.key(1), train=True)
    b = T.apply(params, TINY, src, tgt, key=jax.random.key(1), train=True)
    c = T.apply(params, TINY, src, tgt, key=jax.random.key(2), train=True)
    np.testing.assert_array_equal(a, b)
    assert float(jnp.abs(a - c).max()) > 1e-3
    assert float(jnp.abs(a - T.apply(params, TINY, src, tgt)).max()) > 1e-3
    with pytest.raises(ValueError, match="needs a PRNG key"):
        T.apply(params, TINY, src, tgt, train=True)


# ---------------------------------------------------------------- gradients: hand rules vs autodiff
@pytest.mark.x64
def test_parameter_gradient_hand_rules_equal_autodiff(params):
    cfg = TINY  # the default model: pre-LN, tied output projection (the target table gets two gradients), ReLU
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    src, tgt = SRC, TGT
    labels = np.concatenate([tgt[:, 1:], np.full((3, 1), EOS, np.int32)], axis=1)
    labels[2, 4:] = 0
    key = jax.random.key(4)

    def loss(p):
        logits = T.apply(p, cfg, src, tgt, key=key, train=True)  # dropout's rule included
        return F.softmax_cross_entropy(logits, labels, mask=labels != 0, label_smoothing=0.1)

    assert custom_vjp_count(loss, params) > 30  # every op of the model is a hand rule (60 here)
    assert custom_vjp_count(strip_custom_vjp(loss), params) == 0
    hand = jax.jit(jax.grad(loss))(params)
    auto = jax.jit(jax.grad(strip_custom_vjp(loss)))(params)
    flat_h, flat_a = jax.tree_util.tree_leaves_with_path(hand), jax.tree.leaves(auto)
    for (path, h), a in zip(flat_h, flat_a):
        assert h.dtype == jnp.float64
        np.testing.assert_allclose(h, a, rtol=1e-9, atol=1e-12, err_msg=jax.tree_util.keystr(path))
    # the gradient reaches every parameter (the residual paths carry it down to the first layer)
    for path, h in flat_h:
        assert float(jnp.abs(h).max()) > 0, jax.tree_util.keystr(path)


# ---------------------------------------------------------------- the encoder block, reused
def test_encoder_block_is_what_the_model_runs(params):
    @jax.jit
    def by_hand(params, src):
        mask = (src != 0)[:, None, None, :]
        x = F.embedding(params["src_embed"]["table"], src) * 4.0 + T.sinusoidal_positions(7, 16)  # sqrt(16) = 4
        for p in params["encoder"]["layers"]:
            x = T.encoder_block(p, x, mask, num_heads=2)
        return F.layer_norm(x, params["encoder"]["ln_f"]["gamma"], params["encoder"]["ln_f"]["beta"])

    memory, real = jax.jit(T.encode, static_argnums=1)(params, TINY, SRC)
    np.testing.assert_allclose(memory, by_hand(params, SRC), atol=1e-6)
    assert np.array_equal(real, SRC != 0)
    block = T.init_encoder_block(jax.random.key(5), 8, 2, 16)
    run = jax.jit(functools.partial(T.encoder_block, num_heads=2, activation="gelu", return_attention=True))
    y, w = run(block, jnp.ones((1, 3, 8)), None)
    assert y.shape == (1, 3, 8) and w.shape == (1, 2, 3, 3)
    with pytest.raises(ValueError, match="divisible"):
        T.init_encoder_block(jax.random.key(5), 8, 3, 16)


# ---------------------------------------------------------------- an independent reference forward
def reference_forward(params, cfg, src, tgt, mistake=None):
    """The model written out from the paper's equations in plain NumPy, float64 (no jax, no jdlfs.functional,
    no model code): ``x = E[ids] sqrt(D) + PE``; pre-LN ``x + f(LN x)`` with a final LN, or post-LN
    ``LN(x + f(x))``; ``MultiHead(Q, K, V) = Concat(head_1..head_H) W_O``, ``head_h = softmax(Q_h K_h^T /
    sqrt(d_k)) V_h`` (padded source keys and later target positions masked); ``FFN(x) = act(x W_1 + b_1) W_2 +
    b_2``; logits ``h E_tgt^T + b`` (tied) or ``h W + b``. ``mistake``: one deliberate error ("no embedding
    scale", "other norm order", "no residual"), to show that the comparison detects it."""
    p64 = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    d, heads = cfg.d_model, cfg.num_heads
    dk = d // heads

    def pe(n):
        pos, i = np.arange(n)[:, None], np.arange(d)[None, :]
        angle = pos / 10000.0 ** ((i - i % 2) / d)
        return np.where(i % 2 == 0, np.sin(angle), np.cos(angle))

    def ln(p, x):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + cfg.ln_eps) * p["gamma"] + p["beta"]

    def mha(q_in, kv_in, wq, bq, wk, bk, wv, bv, wo, bo, allowed):
        def heads_of(x, w, b):  # (B, T, D) -> (B, H, T, dk): head h holds features h*dk .. (h+1)*dk - 1
            y = x @ w + b
            return y.reshape(y.shape[0], y.shape[1], heads, dk).transpose(0, 2, 1, 3)

        q, k, v = heads_of(q_in, wq, bq), heads_of(kv_in, wk, bk), heads_of(kv_in, wv, bv)
        scores = np.where(allowed, q @ k.transpose(0, 1, 3, 2) / np.sqrt(dk), -np.inf)
        w = np.exp(scores - scores.max(-1, keepdims=True))
        w = w / w.sum(-1, keepdims=True)
        o = (w @ v).transpose(0, 2, 1, 3).reshape(q_in.shape[0], q_in.shape[1], d)
        return o @ wo + bo

    erf = np.vectorize(math.erf)

    def ffn(p, x):
        h = x @ p["fc1"]["w"] + p["fc1"]["b"]
        h = np.maximum(h, 0) if cfg.activation == "relu" else 0.5 * h * (1 + erf(h / np.sqrt(2)))
        return h @ p["fc2"]["w"] + p["fc2"]["b"]

    def residual(x, norm, f):
        keep = 0.0 if mistake == "no residual" else 1.0
        if cfg.norm_first != (mistake == "other norm order"):
            return keep * x + f(ln(norm, x))
        return ln(norm, keep * x + f(x))

    def self_attn(p, allowed):
        w, b = p["qkv"]["w"], p["qkv"]["b"]
        q, k, v = (w[:, i * d : (i + 1) * d] for i in range(3))
        bq, bk, bv = (b[i * d : (i + 1) * d] for i in range(3))
        return lambda h: mha(h, h, q, bq, k, bk, v, bv, p["proj"]["w"], p["proj"]["b"], allowed)

    def cross_attn(c, memory, allowed):
        wk, wv, bk, bv = c["kv"]["w"][:, :d], c["kv"]["w"][:, d:], c["kv"]["b"][:d], c["kv"]["b"][d:]
        return lambda h: mha(
            h, memory, c["q"]["w"], c["q"]["b"], wk, bk, wv, bv, c["proj"]["w"], c["proj"]["b"], allowed
        )

    if cfg.share_embeddings:
        e_src = e_tgt = p64["embed"]["table"]
    else:
        e_src, e_tgt = p64["src_embed"]["table"], p64["tgt_embed"]["table"]
    src, tgt = np.asarray(src), np.asarray(tgt)
    key_real = (src != cfg.pad_id)[:, None, None, :]  # (B, 1, 1, Ts): padded keys get no weight
    causal = np.tril(np.ones((tgt.shape[1], tgt.shape[1]), bool))
    scale = 1.0 if mistake == "no embedding scale" else np.sqrt(d)

    x = e_src[src] * scale + pe(src.shape[1])
    for p in p64["encoder"]["layers"]:
        x = residual(x, p["ln1"], self_attn(p["attn"], key_real))
        x = residual(x, p["ln2"], lambda h, p=p: ffn(p["mlp"], h))
    memory = ln(p64["encoder"]["ln_f"], x) if cfg.norm_first else x

    y = e_tgt[tgt] * scale + pe(tgt.shape[1])
    for p in p64["decoder"]["layers"]:
        y = residual(y, p["ln1"], self_attn(p["self_attn"], causal))
        y = residual(y, p["ln2"], cross_attn(p["cross_attn"], memory, key_real))
        y = residual(y, p["ln3"], lambda h, p=p: ffn(p["mlp"], h))
    if cfg.norm_first:
        y = ln(p64["decoder"]["ln_f"], y)
    if cfg.tie_embeddings:
        return y @ e_tgt.T + p64["out"]["b"]
    return y @ p64["out"]["w"] + p64["out"]["b"]


def jiggled(params, seed):
    """Every parameter moved by N(0, 0.2^2): LayerNorm gains/shifts and biases no longer 1 and 0, so a
    misplaced bias, gain or shift changes the output too."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: np.asarray(a) + 0.2 * rng.standard_normal(a.shape).astype(np.float32), params)


SHARED = dataclasses.replace(TINY, src_vocab=19, share_embeddings=True, num_decoder_layers=3)


@pytest.mark.parametrize("cfg", [TINY, POST_LN, SHARED], ids=["pre-LN", "post-LN-untied-gelu", "shared-3-dec"])
def test_apply_equals_a_reference_written_from_the_paper(cfg):
    params = jiggled(T.init(jax.random.key(11), cfg), 12)
    src = SRC if cfg.src_vocab == 23 else np.minimum(SRC, 18)
    want = reference_forward(params, cfg, src, TGT)
    got = np.asarray(T.apply(params, cfg, src, TGT), np.float64)
    assert np.abs(want).max() > 1.0  # not a degenerate comparison
    np.testing.assert_allclose(got, want, atol=5e-5, rtol=1e-5)
    for mistake in ("no embedding scale", "other norm order", "no residual"):  # each would fail the comparison
        assert np.abs(reference_forward(params, cfg, src, TGT, mistake) - got).max() > 0.1, mistake


# ---------------------------------------------------------------- decoding
def full_apply_greedy(params, cfg, src, max_len):
    """Greedy decoding the slow, obvious way: a Python loop that runs the teacher-forced apply on the whole
    decoded prefix at every step (the prefix sits in a fixed (B, max_len) buffer, PAD after it, so one compiled
    shape serves every step: position t's logits do not depend on later tokens, tested above)."""
    b = src.shape[0]
    buf = np.zeros((b, max_len), np.int32)
    buf[:, 0] = BOS
    out, done = np.zeros((b, max_len), np.int32), np.zeros(b, bool)
    for t in range(max_len):
        nxt = np.asarray(jnp.argmax(T.apply(params, cfg, src, buf)[:, t], -1))
        nxt = np.where(done, 0, nxt)
        out[:, t] = nxt
        done |= nxt == EOS
        if t + 1 < max_len:
            buf[:, t + 1] = nxt
    return out


DECODE_SRC = ids(16, (6, 7), 23, pad_from=6)
DECODE_SRC[1, 3:] = 0
DECODE_LEN = 10


def eos_positions(out):
    return [list(r).index(EOS) if EOS in r else None for r in np.asarray(out)]


@pytest.fixture(scope="module")
def peaked_params():
    """Random parameters with an output bias on EOS, the smallest on a grid for which greedy rows end at
    different steps (so EOS, and PAD after it, are exercised); an untrained model rarely says EOS at all."""
    p = T.init(jax.random.key(7), TINY)
    for bias in np.arange(0.5, 6.0, 0.25):
        q = {**p, "out": {"b": p["out"]["b"].at[EOS].set(bias)}}
        ends = eos_positions(T.greedy(q, TINY, DECODE_SRC, bos_id=BOS, eos_id=EOS, max_len=DECODE_LEN))
        if len(set(ends)) > 2 and None not in ends:
            return q
    raise AssertionError("no EOS bias makes greedy rows end at different steps")


def test_decode_step_equals_apply_at_every_position(params):
    src, tgt = SRC, TGT
    full = T.apply(params, TINY, src, tgt)
    cache = jax.jit(T.init_cache, static_argnums=(1, 3))(params, TINY, src, 6)
    assert cache["layers"][0]["self_k"].shape == (3, 2, 6, 8)
    assert all(leaf.shape[0] == 3 for leaf in jax.tree.leaves(cache))
    step = jax.jit(T.decode_step, static_argnums=1)
    for t in range(6):
        logits, cache = step(params, TINY, tgt[:, t], t, cache)
        np.testing.assert_allclose(logits, full[:, t], atol=5e-6, rtol=0)


def test_cached_greedy_equals_rerunning_full_apply(peaked_params):
    want = full_apply_greedy(peaked_params, TINY, DECODE_SRC, DECODE_LEN)
    kw = dict(bos_id=BOS, eos_id=EOS, max_len=DECODE_LEN)
    got = T.greedy(peaked_params, TINY, DECODE_SRC, **kw)
    assert got.shape == (6, DECODE_LEN) and got.dtype == jnp.int32
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(T.greedy_uncached(peaked_params, TINY, DECODE_SRC, **kw), want)
    for row, n in zip(want, eos_positions(want)):
        assert (row[n + 1 :] == 0).all() and (row[:n] != 0).all()  # PAD after EOS, and only there
    assert len(set(eos_positions(want))) > 2


def test_beam_size_one_equals_greedy(peaked_params):
    kw = dict(bos_id=BOS, eos_id=EOS, max_len=DECODE_LEN)
    g = T.greedy(peaked_params, TINY, DECODE_SRC, **kw)
    np.testing.assert_array_equal(T.beam_search(peaked_params, TINY, DECODE_SRC, beam_size=1, **kw), g)


def test_beam_search_cached_equals_uncached_and_scores_at_least_greedy(peaked_params):
    kw = dict(beam_size=4, bos_id=BOS, eos_id=EOS, max_len=DECODE_LEN, length_penalty=0.0, return_scores=True)
    ids_c, sc_c = T.beam_search(peaked_params, TINY, DECODE_SRC, **kw)
    ids_u, sc_u = T.beam_search(peaked_params, TINY, DECODE_SRC, cache=False, **kw)
    np.testing.assert_array_equal(ids_c, ids_u)
    np.testing.assert_allclose(sc_c, sc_u, atol=1e-5)
    g = T.greedy(peaked_params, TINY, DECODE_SRC, bos_id=BOS, eos_id=EOS, max_len=DECODE_LEN)

    def logprob(seq):
        """Summed log-probability of each row up to its EOS, from the teacher-forced apply."""
        seq = np.asarray(seq)
        tgt = np.concatenate([np.full((seq.shape[0], 1), BOS, np.int32), seq[:, :-1]], axis=1)
        lp = jax.nn.log_softmax(T.apply(peaked_params, TINY, DECODE_SRC, tgt), -1)
        tok = np.take_along_axis(np.asarray(lp), seq[:, :, None], -1)[..., 0]
        before_eos = (np.cumsum(seq == EOS, axis=1) - (seq == EOS)) == 0  # up to and including the first EOS
        return np.sum(np.where(before_eos, tok, 0), axis=1)

    np.testing.assert_allclose(logprob(ids_c), sc_c, atol=1e-4)  # with length_penalty=0: the summed log-prob
    assert np.all(np.asarray(sc_c) >= logprob(g) - 1e-5)  # at least as likely as greedy's output
    assert not np.array_equal(ids_c, g)  # and the wider search found something else somewhere


def test_decode_corpus_buckets_and_restores_the_order(peaked_params):
    sources = [list(row[row != 0]) for row in DECODE_SRC]  # lengths 6 and 3
    greedy = np.asarray(T.greedy(peaked_params, TINY, DECODE_SRC, bos_id=BOS, eos_id=EOS, max_len=DECODE_LEN))
    want = [list(row[:n]) for row, n in zip(greedy, eos_positions(greedy))]  # the ids before EOS
    got = T.decode_corpus(
        peaked_params, TINY, sources, bos_id=BOS, eos_id=EOS, batch_size=6, bucket_lengths=(3, 7), max_len=DECODE_LEN
    )
    assert got == want  # the short source went to the length-3 bucket and came back in its place


def test_beam_search_cached_equals_uncached_with_a_length_penalty(peaked_params):
    """With length_penalty 0.6 the length-normalised ranking and the stopping rule matter; the cached and
    uncached decoders must still agree, and the score is the summed log-prob / ((5 + len) / 6) ** 0.6."""
    kw = dict(beam_size=3, bos_id=BOS, eos_id=EOS, max_len=DECODE_LEN, length_penalty=0.6, return_scores=True)
    ids_c, sc_c = T.beam_search(peaked_params, TINY, DECODE_SRC, **kw)
    ids_u, sc_u = T.beam_search(peaked_params, TINY, DECODE_SRC, cache=False, **kw)
    np.testing.assert_array_equal(ids_c, ids_u)
    np.testing.assert_allclose(sc_c, sc_u, atol=1e-5)
    seq = np.asarray(ids_c)
    tgt = np.concatenate([np.full((seq.shape[0], 1), BOS, np.int32), seq[:, :-1]], axis=1)
    lp = np.asarray(jax.nn.log_softmax(T.apply(peaked_params, TINY, DECODE_SRC, tgt), -1))
    tok = np.take_along_axis(lp, seq[:, :, None], -1)[..., 0]
    upto = (np.cumsum(seq == EOS, axis=1) - (seq == EOS)) == 0
    length = np.where((seq == EOS).any(1), upto.sum(1), DECODE_LEN)
    np.testing.assert_allclose(sc_c, np.sum(np.where(upto, tok, 0), 1) / ((5.0 + length) / 6.0) ** 0.6, atol=1e-4)


@pytest.mark.parametrize("dtype", INT_DTYPES)
def test_decoding_accepts_ids_of_every_integer_dtype(peaked_params, dtype):
    # the decoders' shapes and static arguments of the tests above: the ids are converted before the compiled
    # decoders see them, so every dtype reuses those compiles
    kw = dict(bos_id=BOS, eos_id=EOS, max_len=DECODE_LEN)
    src = DECODE_SRC.astype(dtype)
    want_g = T.greedy(peaked_params, TINY, DECODE_SRC, **kw)
    want_b = T.beam_search(peaked_params, TINY, DECODE_SRC, beam_size=4, length_penalty=0.0, **kw)
    np.testing.assert_array_equal(T.greedy(peaked_params, TINY, src, **kw), want_g)
    np.testing.assert_array_equal(
        T.beam_search(peaked_params, TINY, src, beam_size=4, length_penalty=0.0, **kw), want_b
    )
    # the special ids and sizes may be NumPy integers of this width too
    np_kw = dict(bos_id=dtype(BOS), eos_id=dtype(EOS), max_len=dtype(DECODE_LEN))
    np.testing.assert_array_equal(T.greedy(peaked_params, TINY, src, **np_kw), want_g)
    got_b = T.beam_search(peaked_params, TINY, src, beam_size=dtype(4), length_penalty=dtype(0), **np_kw)
    np.testing.assert_array_equal(got_b, want_b)


def test_beam_search_accepts_numpy_scalar_length_penalties(peaked_params):
    kw = dict(beam_size=4, bos_id=BOS, eos_id=EOS, max_len=DECODE_LEN, return_scores=True)
    want_ids, want_scores = T.beam_search(peaked_params, TINY, DECODE_SRC, length_penalty=0.0, **kw)
    for given in (np.int64(0), np.float32(0.0), np.float16(0.0)):
        ids, scores = T.beam_search(peaked_params, TINY, DECODE_SRC, length_penalty=given, **kw)
        np.testing.assert_array_equal(ids, want_ids)
        np.testing.assert_array_equal(scores, want_scores)
    for bad in (float("nan"), float("inf"), np.float32("inf")):
        with pytest.raises(ValueError, match="length_penalty must be a finite number >= 0"):
            T.beam_search(peaked_params, TINY, DECODE_SRC, length_penalty=bad, **kw)
    with pytest.raises(TypeError, match="length_penalty must be a Python float"):
        T.beam_search(peaked_params, TINY, DECODE_SRC, length_penalty="0.6", **kw)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, pytest.param(jnp.float16, marks=pytest.mark.slow)])
def test_decoding_with_low_precision_parameters(peaked_params, dtype):
    half = jax.tree.map(lambda a: a.astype(dtype), peaked_params)
    cache = jax.eval_shape(lambda p: T.init_cache(p, TINY, DECODE_SRC, DECODE_LEN), half)
    assert cache["layers"][0]["self_k"].dtype == dtype and cache["layers"][0]["cross_k"].dtype == dtype
    assert cache["src_mask"].dtype == jnp.bool_
    kw = dict(bos_id=BOS, eos_id=EOS, max_len=DECODE_LEN)
    g = np.asarray(T.greedy(half, TINY, DECODE_SRC, **kw))
    b = np.asarray(T.beam_search(half, TINY, DECODE_SRC, beam_size=4, length_penalty=0.0, **kw))
    for out in (g, b):
        assert out.shape == (6, DECODE_LEN) and out.dtype == np.int32 and ((out >= 0) & (out < 19)).all()
        for row, n in zip(out, eos_positions(out)):
            assert n is None or (row[n + 1 :] == 0).all()  # PAD after EOS
    # they follow the float32 decoders (up to rounding: most tokens agree)
    assert np.mean(g == np.asarray(T.greedy(peaked_params, TINY, DECODE_SRC, **kw))) > 0.6
    b32 = T.beam_search(peaked_params, TINY, DECODE_SRC, beam_size=4, length_penalty=0.0, **kw)
    assert np.mean(b == np.asarray(b32)) > 0.6


def test_decode_step_refuses_a_known_position_outside_the_cache(params):
    cache = jax.jit(T.init_cache, static_argnums=(1, 3))(params, TINY, SRC, 6)  # compiled above already
    tokens = np.full((3,), BOS, np.int32)
    # a static position is known while tracing: the last slot passes, anything else is refused
    step = jax.jit(T.decode_step, static_argnums=(1, 3))
    assert step(params, TINY, tokens, 5, cache)[0].shape == (3, 19)
    with pytest.raises(ValueError, match=r"position=6 is outside the key/value cache: init_cache\(..., max_len=6\)"):
        step(params, TINY, tokens, 6, cache)
    for position in (6, 10, -1, np.int64(6), jnp.int32(6)):  # called directly: refused before any computation
        with pytest.raises(ValueError, match=r"position=-?\d+ is outside the key/value cache.*max_len=6"):
            T.decode_step(params, TINY, tokens, position, cache)
    with pytest.raises(ValueError, match="position must be an int scalar"):
        T.decode_step(params, TINY, tokens, 1.0, cache)
    with pytest.raises(ValueError, match=r"tokens holds ids outside the vocabulary \[0, 19\)"):
        T.decode_step(params, TINY, np.full((3,), 19, np.int32), 0, cache)
    with pytest.raises(ValueError, match="tokens must be a 1-D integer array"):
        T.decode_step(params, TINY, tokens[:, None], 0, cache)


# ---------------------------------------------------------------- it learns
def reverse_batch(rng, n, length=6, symbols=10):
    """Sources of 3..length random symbols (ids 4..) + EOS; targets BOS + reversed + EOS (padded)."""
    src = np.zeros((n, length + 1), np.int32)
    tgt = np.zeros((n, length + 2), np.int32)
    for i in range(n):
        k = rng.integers(3, length + 1)
        s = rng.integers(4, 4 + symbols, k)
        src[i, : k + 1] = [*s, EOS]
        tgt[i, : k + 2] = [BOS, *s[::-1], EOS]
    return src, tgt


def test_tiny_model_learns_to_reverse_sequences():
    cfg = T.Config(src_vocab=14, tgt_vocab=14, d_model=64, num_heads=4, num_layers=2, d_ff=128, dropout=0.0, max_len=16)
    rng = np.random.default_rng(0)
    steps, batch = 400, 64  # 100% from ~300 steps on (measured); the loss ends near 0.004
    src, tgt = reverse_batch(rng, steps * batch)
    batches = (
        (src.reshape(steps, batch, -1), tgt[:, :-1].reshape(steps, batch, -1)),
        tgt[:, 1:].reshape(steps, batch, -1),
    )
    task = train.sequence(T.model_fn(cfg), pad_id=0)
    opt = optax.adam(optax.warmup_cosine_decay_schedule(0.0, 3e-3, 30, steps, 1e-4))
    run = train.make_scan_steps(train.make_train_step(task.objective, opt))
    ts, metrics = run(train.init_train_state(T.init(jax.random.key(0), cfg), {}, opt), batches, jax.random.key(1))
    test_src, test_tgt = reverse_batch(np.random.default_rng(1), 200)
    out = np.asarray(T.greedy(ts.params, cfg, test_src, bos_id=BOS, eos_id=EOS, max_len=8))
    exact = np.mean(
        [np.array_equal(o[: list(t).index(EOS)], t[1 : list(t).index(EOS) + 1]) for o, t in zip(out, test_tgt)]
    )
    loss = np.asarray(metrics["loss"]) / np.asarray(metrics["count"])
    assert loss[-1] < 0.05 < loss[0]
    assert exact == 1.0


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(num_heads=3), ValueError, "divisible by num_heads"),
        (dict(d_model=0), ValueError, "d_model must be >= 1"),
        (dict(num_layers=True), TypeError, "num_layers must be an int"),
        (dict(d_ff=2.0), TypeError, "d_ff must be an int"),
        (dict(dropout=1.0), ValueError, r"dropout must be in \[0, 1\)"),
        (dict(dropout="0.1"), TypeError, "dropout must be a float"),
        (dict(pad_id=19), ValueError, "pad_id=19 must be an id of both"),
        (dict(pad_id=-1), ValueError, "pad_id must be >= 0"),
        (dict(max_len=0), ValueError, "max_len must be >= 1"),
        (dict(share_embeddings=True), ValueError, "share_embeddings needs one vocabulary"),
        (dict(activation="swish"), ValueError, "activation must be one of"),
        (dict(norm_first=1), TypeError, "norm_first must be a bool"),
        (dict(num_decoder_layers=0), ValueError, "num_decoder_layers must be >= 1"),
    ],
)
def test_bad_config_is_refused(change, error, match):
    with pytest.raises(error, match=match):
        dataclasses.replace(TINY, **change)


def test_config_is_frozen_and_hashable():
    with pytest.raises(dataclasses.FrozenInstanceError):
        TINY.d_model = 32
    assert hash(TINY) == hash(dataclasses.replace(TINY)) and TINY.decoder_layers == 2 and TINY.d_head == 8


def test_config_has_defaults_and_stores_numpy_numbers_as_python_numbers():
    default = T.Config()
    assert (default.src_vocab, default.tgt_vocab, default.d_model, default.num_heads) == (8000, 8000, 256, 4)
    cfg = T.Config(src_vocab=np.int16(50), tgt_vocab=np.int64(60), d_model=np.int32(16), dropout=np.float32(0.25))
    assert type(cfg.src_vocab) is int and type(cfg.d_model) is int and type(cfg.dropout) is float
    assert cfg.dropout == 0.25 and cfg == T.Config(src_vocab=50, tgt_vocab=60, d_model=16, dropout=0.25)
    json.dumps(dataclasses.asdict(cfg))  # serialisable, as the experiments save it


def test_bad_inputs_are_refused(params):
    src, tgt = ids(19, (2, 5), 23), decoder_input(20, (2, 4), 19)
    with pytest.raises(TypeError, match="src must hold integer token ids"):
        T.apply(params, TINY, src.astype(jnp.float32), tgt)
    with pytest.raises(ValueError, match=r"tgt must have shape \(B, T\)"):
        T.apply(params, TINY, src, tgt[0])
    with pytest.raises(ValueError, match="more than Config.max_len=24"):
        T.apply(params, TINY, jnp.ones((2, 25), jnp.int32), tgt)
    with pytest.raises(ValueError, match="same number of sequences"):
        T.apply(params, TINY, src, tgt[:1])
    with pytest.raises(ValueError, match="made for another config"):
        T.apply(params, dataclasses.replace(TINY, d_model=32, num_heads=2), src, tgt)
    with pytest.raises(ValueError, match="encoder / 2 decoder layers"):
        T.apply(params, dataclasses.replace(TINY, num_layers=3), src, tgt)
    with pytest.raises(TypeError, match="config must be a transformer.Config"):
        T.apply(params, {"d_model": 16}, src, tgt)
    with pytest.raises(ValueError, match="both src_segments and tgt_segments"):
        T.apply(params, TINY, src, tgt, src_segments=jnp.ones_like(src))
    with pytest.raises(ValueError, match="exceeds Config.max_len"):
        T.greedy(params, TINY, src, bos_id=BOS, eos_id=EOS, max_len=25)
    with pytest.raises(ValueError, match="eos_id must be an int"):
        T.greedy(params, TINY, src, bos_id=BOS, eos_id=19, max_len=5)
    with pytest.raises(ValueError, match="beam_size must be a positive int"):
        T.beam_search(params, TINY, src, beam_size=0, bos_id=BOS, eos_id=EOS, max_len=5)
    with pytest.raises(ValueError, match="length_penalty must be a finite number >= 0"):
        T.beam_search(params, TINY, src, beam_size=2, bos_id=BOS, eos_id=EOS, max_len=5, length_penalty=-1.0)
