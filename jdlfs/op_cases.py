"""The catalogue of op configurations verified by ``jdlfs check`` and the tests.

Each :class:`OpCase` names an op of :mod:`jdlfs.functional`, one static
configuration, a factory of random positional arguments, and an independent
reference forward (lax, jax.nn, optax, or plain jnp written differently from
the op) whose autodiff VJP is the third opinion on the hand-written rule.

Inputs are drawn away from the ops' kinks (ReLU at 0, ties in max pooling) so
that central finite differences in float64 measure the derivative and not a
jump: ``_away_from_zero`` pushes samples out of (-0.1, 0.1), ``_distinct``
gives pooling inputs all-different values.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from . import functional as F

Factory = Callable[[np.random.Generator, np.dtype], tuple]


@dataclass(frozen=True)
class OpCase:
    op: str  # public name in jdlfs.functional
    config: str  # human-readable configuration
    fn: Callable  # positional array args -> output(s)
    make_args: Factory  # (rng, float dtype) -> positional args
    reference: Callable | None  # independent forward with fn's signature

    @property
    def name(self) -> str:
        return f"{self.op}[{self.config}]"


# ---------------------------------------------------------------- input factories
def _normal(rng, dtype, *shape, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(dtype)


def _away_from_zero(rng, dtype, *shape):
    z = rng.standard_normal(shape)
    return (np.sign(z) * (np.abs(z) + 0.1)).astype(dtype)


def _distinct(rng, dtype, *shape):
    """All-different values, spaced >= 0.01 apart: no ties, no kink crossings."""
    n = int(np.prod(shape))
    return (rng.permutation(n).reshape(shape) * 0.01 - n * 0.005).astype(dtype)


def _ints(rng, high, *shape):
    return rng.integers(0, high, size=shape).astype(np.int32)


INT_DTYPES = (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64)


def _rows(dtype) -> int:
    """Table rows / tokens / classes for ids of ``dtype``: more than the dtype
    holds for 8/16-bit ids (a bound or iota cast to the ids' dtype would wrap:
    300 > 255, 65539 > 65535), small for 32/64-bit ids (huge ids test those)."""
    return 65539 if np.dtype(dtype).itemsize == 2 else 300


def _id_values(dtype) -> list[int]:
    """Ids that trip dtype handling: in range, at the edges of the axis and of
    the dtype, above int32/uint32 max (must stay out of range), negative."""
    info = np.iinfo(dtype)
    candidates = [
        0,
        1,
        127,
        255,
        256,
        299,
        300,
        32767,
        65535,
        65538,
        65539,
        2**31 + 5,
        2**32 + 5,
        2**63 + 5,
        -1,
        -129,
        -(2**40),
        int(info.max),
        int(info.min),
    ]
    return sorted({v for v in candidates if info.min <= v <= info.max})


# ---------------------------------------------------------------- reference forwards
def _ref_pads(padding, in_hw, window, stride):
    """Padding pairs resolved by lax itself (not by jdlfs's _windows), so a wrong
    SAME convention in the ops would show up as a reference mismatch."""
    if isinstance(padding, str):
        return lax.padtype_to_pads(in_hw, window, stride, padding)
    if isinstance(padding, int):
        return [(padding, padding)] * 2
    return [tuple(p) for p in padding]


def _ref_conv(x, w, b, stride, padding):
    pads = _ref_pads(padding, x.shape[1:3], w.shape[:2], stride)
    y = lax.conv_general_dilated(x, w, stride, pads, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + b


def _patches(x, window, stride, pads, pad_value):
    """(N, Ho, Wo, C, kh*kw) windows via lax.conv_general_dilated_patches."""
    xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=pad_value)
    p = lax.conv_general_dilated_patches(xp, window, stride, "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    n, ho, wo, _ = p.shape
    return p.reshape(n, ho, wo, x.shape[3], window[0] * window[1])


def _ref_max_pool(x, window, stride, padding):
    pads = _ref_pads(padding, x.shape[1:3], window, stride)
    low = lax.stop_gradient(jnp.min(x)) - 1.0  # finite "-inf": the patches op is a conv
    return jnp.max(_patches(x, window, stride, pads, low), axis=-1)


def _ref_avg_pool(x, window, stride, padding):
    pads = _ref_pads(padding, x.shape[1:3], window, stride)
    total = jnp.sum(_patches(x, window, stride, pads, 0.0), axis=-1)
    count = jnp.sum(_patches(jnp.ones_like(x), window, stride, pads, 0.0), axis=-1)
    return total / count


def _ref_xent(logits, labels, mask=None, smoothing=0.0):
    k = logits.shape[-1]
    targets = optax.smooth_labels(jax.nn.one_hot(labels, k, dtype=logits.dtype), smoothing)
    per = optax.softmax_cross_entropy(logits, targets)
    w = jnp.ones_like(per) if mask is None else mask.astype(per.dtype)
    total = jnp.sum(w)
    return jnp.sum(per * w) / jnp.where(total > 0, total, 1)


def _ref_batch_norm(x, gamma, beta, eps=1e-5):
    axes = tuple(range(x.ndim - 1))
    xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))  # statistics returned in float32 or wider
    mean, var = jnp.mean(xf, axes), jnp.var(xf, axes)
    return ((xf - mean) / jnp.sqrt(var + eps) * gamma + beta).astype(x.dtype), mean, var


def _ref_layer_norm(x, gamma, beta, eps=1e-5):
    mean, var = jnp.mean(x, -1, keepdims=True), jnp.var(x, -1, keepdims=True)
    return (x - mean) / jnp.sqrt(var + eps) * gamma + beta


def _ref_attention(q, k, v, mask=None):
    s = jnp.einsum("...qd,...kd->...qk", q, k) / math.sqrt(q.shape[-1])
    if mask is None:
        return jnp.einsum("...qk,...kd->...qd", jax.nn.softmax(s, axis=-1), v)
    p = jax.nn.softmax(jnp.where(mask, s, -1e30), axis=-1) * mask
    p = jnp.where(jnp.any(mask, axis=-1, keepdims=True), p, 0)
    return jnp.einsum("...qk,...kd->...qd", p, v)


def _ref_rnn(x, h0, w_x, w_h, b):
    h, hs = h0, []
    for t in range(x.shape[1]):  # a plain Python loop over time
        h = jnp.tanh(x[:, t] @ w_x + h @ w_h + b)
        hs.append(h)
    return jnp.stack(hs, axis=1), h


def _lstm_args(r, d, *, shape):
    """x (B, T, D), h0, c0 (B, H), w_x (D, 4H), w_h (H, 4H), b (4H,) for the lstm cases."""
    b, t, din, h = shape
    return (
        _normal(r, d, b, t, din),
        _normal(r, d, b, h),
        _normal(r, d, b, h),
        _normal(r, d, din, 4 * h, scale=0.5),
        _normal(r, d, h, 4 * h, scale=0.4),
        _normal(r, d, 4 * h, scale=0.1),
    )


def _ref_lstm(x, h0, c0, w_x, w_h, b):
    bsz, hidden = h0.shape
    h, c, hs = h0, c0, []
    for t in range(x.shape[1]):  # a plain Python loop over time
        z = (x[:, t] @ w_x + h @ w_h + b).reshape(bsz, 4, hidden)  # gate blocks i, f, g, o
        i, f, g, o = jax.nn.sigmoid(z[:, 0]), jax.nn.sigmoid(z[:, 1]), jnp.tanh(z[:, 2]), jax.nn.sigmoid(z[:, 3])
        c = f * c + i * g
        h = o * jnp.tanh(c)
        hs.append(h)
    return jnp.stack(hs, axis=1), (h, c)


def _ref_patchify(images, p):
    n, h, w, c = images.shape
    rows = [images[:, i : i + p, j : j + p, :].reshape(n, -1) for i in range(0, h, p) for j in range(0, w, p)]
    return jnp.stack(rows, axis=1)


def _ref_unpatchify(patches, p, hw):
    h, w = hw
    n, gw = patches.shape[0], w // p
    c = patches.shape[-1] // (p * p)
    blocks = patches.reshape(n, h // p, gw, p, p, c)
    return jnp.concatenate(
        [jnp.concatenate(list(blocks[:, i].transpose(1, 0, 2, 3, 4)), axis=2) for i in range(h // p)], axis=1
    )


# ---------------------------------------------------------------- the catalogue
def _cases() -> list[OpCase]:
    cases: list[OpCase] = []
    add = lambda *a: cases.append(OpCase(*a))  # noqa: E731

    # linear
    add(
        "linear",
        "x(5,7) w(7,3) b",
        F.linear,
        lambda r, d: (_normal(r, d, 5, 7), _normal(r, d, 7, 3), _normal(r, d, 3)),
        lambda x, w, b: jnp.einsum("ni,io->no", x, w) + b,
    )
    add(
        "linear",
        "x(2,3,4,6) no bias",
        lambda x, w: F.linear(x, w),
        lambda r, d: (_normal(r, d, 2, 3, 4, 6), _normal(r, d, 6, 5)),
        lambda x, w: lax.dot_general(x, w, (((3,), (0,)), ((), ()))),
    )

    # convolution, both paths
    conv_cfgs = [
        ((1, 9, 9, 3), (3, 3, 3, 4), 1, "SAME"),
        ((2, 8, 7, 2), (3, 3, 2, 3), 2, "SAME"),
        ((2, 9, 8, 2), (3, 2, 2, 3), 2, "VALID"),
        ((1, 10, 9, 3), (5, 5, 3, 2), (3, 2), ((2, 1), (0, 2))),
        ((2, 6, 6, 1), (2, 2, 1, 2), 1, 1),
    ]
    for op in (F.conv2d, F.conv2d_im2col):
        for xs, ws, s, pad in conv_cfgs:
            stride = (s, s) if isinstance(s, int) else s
            add(
                op.__name__,
                f"x{xs} w{ws} stride={s} padding={pad}",
                partial(lambda x, w, b, op, s, pad: op(x, w, b, stride=s, padding=pad), op=op, s=s, pad=pad),
                partial(
                    lambda r, d, xs, ws: (_normal(r, d, *xs), _normal(r, d, *ws), _normal(r, d, ws[3])), xs=xs, ws=ws
                ),
                partial(lambda x, w, b, st, pad: _ref_conv(x, w, b, st, pad), st=stride, pad=pad),
            )

    # pooling
    pool_cfgs = [
        ((2, 8, 8, 3), 2, None, "VALID"),
        ((1, 7, 9, 2), 3, 2, "SAME"),
        ((2, 7, 7, 2), 3, 1, "VALID"),
        ((1, 5, 6, 2), (2, 3), (1, 2), ((1, 0), (1, 2))),
    ]
    for op, ref in ((F.max_pool2d, _ref_max_pool), (F.avg_pool2d, _ref_avg_pool)):
        for xs, k, s, pad in pool_cfgs:
            win = (k, k) if isinstance(k, int) else k
            st = win if s is None else ((s, s) if isinstance(s, int) else s)
            add(
                op.__name__,
                f"x{xs} window={k} stride={s} padding={pad}",
                partial(lambda x, op, k, s, pad: op(x, k, s, pad), op=op, k=k, s=s, pad=pad),
                partial(lambda r, d, xs: (_distinct(r, d, *xs),), xs=xs),
                partial(lambda x, ref, win, st, pad: ref(x, win, st, pad), ref=ref, win=win, st=st, pad=pad),
            )
    add(
        "global_avg_pool",
        "x(2,5,4,3)",
        F.global_avg_pool,
        lambda r, d: (_normal(r, d, 2, 5, 4, 3),),
        lambda x: jnp.mean(x, axis=(1, 2)),
    )

    # activations
    add("relu", "x(4,9)", F.relu, lambda r, d: (_away_from_zero(r, d, 4, 9),), jax.nn.relu)
    add(
        "leaky_relu",
        "x(4,9) slope=0.2",
        lambda x: F.leaky_relu(x, 0.2),
        lambda r, d: (_away_from_zero(r, d, 4, 9),),
        lambda x: jax.nn.leaky_relu(x, 0.2),
    )
    add("sigmoid", "x(4,9)", F.sigmoid, lambda r, d: (_normal(r, d, 4, 9, scale=3),), jax.nn.sigmoid)
    add("tanh", "x(4,9)", F.tanh, lambda r, d: (_normal(r, d, 4, 9, scale=2),), jnp.tanh)
    add(
        "gelu",
        "x(4,9) exact",
        F.gelu,
        lambda r, d: (_normal(r, d, 4, 9, scale=2),),
        lambda x: jax.nn.gelu(x, approximate=False),
    )
    add(
        "gelu",
        "x(4,9) approximate",
        lambda x: F.gelu(x, approximate=True),
        lambda r, d: (_normal(r, d, 4, 9, scale=2),),
        lambda x: jax.nn.gelu(x, approximate=True),
    )
    add(
        "step",
        "x(4,9)",
        F.step,
        lambda r, d: (_away_from_zero(r, d, 4, 9),),
        lambda x: jnp.heaviside(x, 0.0).astype(x.dtype),
    )

    # softmax family
    for axis in (-1, 0):
        add(
            "softmax",
            f"x(5,6) axis={axis}",
            partial(F.softmax, axis=axis),
            lambda r, d: (_normal(r, d, 5, 6, scale=3),),
            partial(jax.nn.softmax, axis=axis),
        )
        add(
            "log_softmax",
            f"x(5,6) axis={axis}",
            partial(F.log_softmax, axis=axis),
            lambda r, d: (_normal(r, d, 5, 6, scale=3),),
            partial(jax.nn.log_softmax, axis=axis),
        )
        add(
            "logsumexp",
            f"x(5,6) axis={axis}",
            partial(F.logsumexp, axis=axis),
            lambda r, d: (_normal(r, d, 5, 6, scale=3),),
            partial(jax.scipy.special.logsumexp, axis=axis),
        )

    # losses
    add(
        "softmax_cross_entropy",
        "logits(8,10)",
        F.softmax_cross_entropy,
        lambda r, d: (_normal(r, d, 8, 10, scale=2), _ints(r, 10, 8)),
        _ref_xent,
    )
    add(
        "softmax_cross_entropy",
        "logits(3,5,7) mask label_smoothing=0.1",
        lambda z, y, m: F.softmax_cross_entropy(z, y, mask=m, label_smoothing=0.1),
        lambda r, d: (_normal(r, d, 3, 5, 7), _ints(r, 7, 3, 5), r.uniform(size=(3, 5)) > 0.3),
        lambda z, y, m: _ref_xent(z, y, m, 0.1),
    )
    add(
        "softmax_cross_entropy",
        "logits(6,5) float weights, labels out of range",
        lambda z, y, w: F.softmax_cross_entropy(z, y, mask=w),
        lambda r, d: (
            _normal(r, d, 6, 5),
            np.array([0, 5, 2, -1, 4, 1], np.int32),
            r.uniform(0.1, 2.0, size=6).astype(d),
        ),
        _ref_xent,
    )
    add(
        "binary_cross_entropy_with_logits",
        "x(6,4)",
        F.binary_cross_entropy_with_logits,
        lambda r, d: (_normal(r, d, 6, 4, scale=3), r.uniform(size=(6, 4)).astype(d)),
        lambda z, t: jnp.mean(optax.sigmoid_binary_cross_entropy(z, t)),
    )
    add(
        "mse",
        "x(6,4)",
        F.mse,
        lambda r, d: (_normal(r, d, 6, 4), _normal(r, d, 6, 4)),
        lambda p, t: jnp.mean(optax.l2_loss(p, t)) * 2,
    )

    # dropout (same key => same mask in the op and the reference)
    key = jax.random.key(7)
    add(
        "dropout",
        "x(6,10) rate=0.3",
        lambda x: F.dropout(key, x, 0.3),
        lambda r, d: (_normal(r, d, 6, 10),),
        lambda x: jnp.where(jax.random.bernoulli(key, 0.7, x.shape), x / 0.7, 0),
    )

    # normalization
    add(
        "batch_norm",
        "x(16,5)",
        F.batch_norm,
        lambda r, d: (_normal(r, d, 16, 5, scale=2) + 1, _normal(r, d, 5), _normal(r, d, 5)),
        _ref_batch_norm,
    )
    add(
        "batch_norm",
        "x(4,3,3,6) NHWC",
        F.batch_norm,
        lambda r, d: (_normal(r, d, 4, 3, 3, 6), _normal(r, d, 6), _normal(r, d, 6)),
        _ref_batch_norm,
    )
    add(
        "batch_norm_inference",
        "x(4,3,3,6)",
        F.batch_norm_inference,
        lambda r, d: (
            _normal(r, d, 4, 3, 3, 6),
            _normal(r, d, 6),
            _normal(r, d, 6),
            _normal(r, d, 6),
            (r.uniform(size=6) + 0.5).astype(d),
        ),
        lambda x, g, b, m, v: (x - m) / jnp.sqrt(v + 1e-5) * g + b,
    )
    add(
        "layer_norm",
        "x(3,4,8)",
        F.layer_norm,
        lambda r, d: (_normal(r, d, 3, 4, 8, scale=2) - 1, _normal(r, d, 8), _normal(r, d, 8)),
        _ref_layer_norm,
    )

    # embedding (repeated ids on purpose)
    add(
        "embedding",
        "table(7,5) ids(3,4) repeated",
        F.embedding,
        lambda r, d: (_normal(r, d, 7, 5), np.array([[1, 1, 2, 6], [0, 1, 6, 6], [3, 3, 3, 1]], np.int32)),
        lambda t, i: jax.nn.one_hot(i, t.shape[0], dtype=t.dtype) @ t,
    )
    add(
        "embedding",
        "table(4,3) ids out of range (-1, 9) clipped",
        F.embedding,
        lambda r, d: (_normal(r, d, 4, 3), np.array([-1, 2, 9, 0, -5], np.int32)),
        lambda t, i: jax.nn.one_hot(jnp.clip(i, 0, t.shape[0] - 1), t.shape[0], dtype=t.dtype) @ t,
    )

    # attention
    add(
        "attention",
        "q(2,3,4,8) k,v(2,3,5,8)",
        F.attention,
        lambda r, d: (_normal(r, d, 2, 3, 4, 8), _normal(r, d, 2, 3, 5, 8), _normal(r, d, 2, 3, 5, 8)),
        _ref_attention,
    )
    causal = np.tril(np.ones((6, 6), bool))
    add(
        "attention",
        "q,k(2,6,4) v(2,6,3) causal mask",
        lambda q, k, v: F.attention(q, k, v, mask=causal),
        lambda r, d: (_normal(r, d, 2, 6, 4), _normal(r, d, 2, 6, 4), _normal(r, d, 2, 6, 3)),
        lambda q, k, v: _ref_attention(q, k, v, causal),
    )
    add(
        "attention",
        "q(2,4,4) k,v(2,5,4) padding mask + fully masked row",
        lambda q, k, v, m: F.attention(q, k, v, mask=m),
        lambda r, d: (
            _normal(r, d, 2, 4, 4),
            _normal(r, d, 2, 5, 4),
            _normal(r, d, 2, 5, 4),
            np.array([[[1, 1, 0, 0, 1]] * 3 + [[0, 0, 0, 0, 0]], [[1, 0, 1, 1, 1]] * 4], bool),
        ),
        _ref_attention,
    )

    # recurrent
    add(
        "rnn",
        "B=3 T=7 in=4 H=5",
        F.rnn,
        lambda r, d: (
            _normal(r, d, 3, 7, 4),
            _normal(r, d, 3, 5),
            _normal(r, d, 4, 5, scale=0.5),
            _normal(r, d, 5, 5, scale=0.4),
            _normal(r, d, 5, scale=0.1),
        ),
        _ref_rnn,
    )
    for label, (b, t, d, h) in [
        ("B=3 T=7 D=4 H=5", (3, 7, 4, 5)),
        ("B=2 T=1 D=3 H=4 single step", (2, 1, 3, 4)),
        ("B=2 T=32 D=3 H=4 long sequence", (2, 32, 3, 4)),
    ]:
        add("lstm", label, F.lstm, functools.partial(_lstm_args, shape=(b, t, d, h)), _ref_lstm)

    # patches and tokens
    add(
        "patchify",
        "images(2,8,12,3) patch=4",
        lambda x: F.patchify(x, 4),
        lambda r, d: (_normal(r, d, 2, 8, 12, 3),),
        lambda x: _ref_patchify(x, 4),
    )
    add(
        "unpatchify",
        "patches(2,6,48) patch=4 -> (8,12,3)",
        lambda p: F.unpatchify(p, 4, (8, 12, 3)),
        lambda r, d: (_normal(r, d, 2, 6, 48),),
        lambda p: _ref_unpatchify(p, 4, (8, 12)),
    )
    add(
        "take_tokens",
        "x(2,9,5) idx(2,4) repeated",
        F.take_tokens,
        lambda r, d: (_normal(r, d, 2, 9, 5), np.array([[0, 3, 3, 8], [7, 1, 2, 1]], np.int32)),
        lambda x, i: jnp.einsum("nkl,nld->nkd", jax.nn.one_hot(i, x.shape[1], dtype=x.dtype), x),
    )

    # integer ids / labels of every width give exactly the int32 result (clip / drop in
    # range); one case per op covers all eight dtypes, each id list padded to one length.
    # The references index with the expected int32 ids, computed from Python ints.
    values = [_id_values(dt) for dt in INT_DTYPES]
    width = max(map(len, values))
    values = [v + [v[-1]] * (width - len(v)) for v in values]
    ids = [np.array(v, dt) for v, dt in zip(values, INT_DTYPES)]
    big = _rows(np.int16)
    clipped = [np.array([min(max(i, 0), big - 1) for i in v], np.int32) for v in values]
    add(
        "embedding",
        f"table({big},2) ids({width},) of 8 integer dtypes int8..uint64 (edges, out of range)",
        lambda t, *ids: tuple(F.embedding(t, i) for i in ids),
        lambda r, d: (_normal(r, d, big, 2), *ids),
        lambda t, *ids: tuple(jnp.take(t, c, axis=0) for c in clipped),
    )
    add(
        "take_tokens",
        f"x(1,{big},2) idx(1,{width}) of 8 integer dtypes int8..uint64 (edges, out of range)",
        lambda x, *ids: tuple(F.take_tokens(x, i) for i in ids),
        lambda r, d: (_normal(r, d, 1, big, 2), *(i[None] for i in ids)),
        lambda x, *ids: tuple(x[:, c] for c in clipped),
    )
    # Classes: 65539 for 16-bit labels, 300 for the others (``_rows``); logits of each
    # size stacked in one argument, row j for the j-th dtype of that size.
    wide = [np.dtype(dt).itemsize == 2 for dt in INT_DTYPES]
    slot = [sum(w == wj for w in wide[:j]) for j, wj in enumerate(wide)]
    dropped = [np.array([i if 0 <= i < _rows(dt) else -1 for i in v], np.int32) for v, dt in zip(values, INT_DTYPES)]

    def xent_all(z_small, z_big, *labels, ref=False):
        zs = [(z_big if w else z_small)[k] for w, k in zip(wide, slot)]
        if ref:
            return tuple(_ref_xent(z, c) for z, c in zip(zs, dropped))
        return tuple(F.softmax_cross_entropy(z, y) for z, y in zip(zs, labels))

    add(
        "softmax_cross_entropy",
        f"labels({width},) of 8 integer dtypes int8..uint64, K=300 (K={big} for 16-bit) (edges, out of range)",
        xent_all,
        lambda r, d: (
            _normal(r, d, len(wide) - sum(wide), width, _rows(np.int8)),
            _normal(r, d, sum(wide), width, big),
            *ids,
        ),
        partial(xent_all, ref=True),
    )
    return cases


CASES: list[OpCase] = _cases()
