"""Edge cases that break hand-written rules, documented behaviours, and errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdlfs.functional as F
from jdlfs.gradcheck import check_vjp

pytestmark = pytest.mark.x64  # float64 checks and finite differences

rng = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _reseed():
    """Every test draws the same inputs whatever order (or xdist worker) runs it."""
    global rng
    rng = np.random.default_rng(0)


def normal(*shape, dtype=np.float64):
    return jnp.asarray(rng.standard_normal(shape), dtype)


# ------------------------------------------------------------------ pooling
def test_max_pool_ties_go_to_first_element_of_each_window():
    x = jnp.ones((1, 4, 4, 1))
    g = jax.grad(lambda x: jnp.sum(F.max_pool2d(x, 2) * jnp.arange(1.0, 5.0).reshape(1, 2, 2, 1)))(x)
    expected = np.zeros((4, 4))
    expected[0, 0], expected[0, 2], expected[2, 0], expected[2, 2] = 1, 2, 3, 4
    np.testing.assert_array_equal(g[0, :, :, 0], expected)


def test_overlapping_max_pool_windows_accumulate():
    # One big value in the middle is the max of every 3x3 window that covers it.
    x = jnp.zeros((1, 5, 5, 1)).at[0, 2, 2, 0].set(10.0)
    g = jax.grad(lambda x: jnp.sum(F.max_pool2d(x, 3, 1)))(x)  # 3x3 output, all windows hold (2,2)
    assert float(g[0, 2, 2, 0]) == 9.0
    assert float(jnp.sum(g)) == 9.0


def test_avg_pool_same_padding_excludes_padding_from_the_mean():
    x = jnp.ones((1, 5, 5, 2))
    np.testing.assert_allclose(F.avg_pool2d(x, 3, 2, "SAME"), np.ones((1, 3, 3, 2)))


def test_max_pool_with_padding_never_selects_padding():
    x = -jnp.abs(normal(1, 5, 5, 1)) - 1.0  # all negative, padding is -inf
    y = F.max_pool2d(x, 3, 2, "SAME")
    assert bool(jnp.all(jnp.isfinite(y))) and bool(jnp.all(y < 0))


# ------------------------------------------------------------------ attention
def test_fully_masked_rows_output_zeros_and_no_gradient():
    q, k, v = normal(2, 3, 4), normal(2, 5, 4), normal(2, 5, 4)
    mask = jnp.ones((2, 3, 5), bool).at[1, 2].set(False)
    o, p = F.attention(q, k, v, mask=mask, return_weights=True)
    np.testing.assert_array_equal(o[1, 2], 0.0)
    np.testing.assert_array_equal(p[1, 2], 0.0)
    dq, dk, dv = jax.grad(lambda q, k, v: jnp.sum(F.attention(q, k, v, mask=mask) ** 2), argnums=(0, 1, 2))(q, k, v)
    assert all(bool(jnp.all(jnp.isfinite(d))) for d in (dq, dk, dv))
    np.testing.assert_array_equal(dq[1, 2], 0.0)
    # an all-masked batch element contributes nothing to k and v gradients
    mask0 = mask.at[0].set(False)
    dk0, dv0 = jax.grad(lambda k, v: jnp.sum(F.attention(q, k, v, mask=mask0) ** 2), argnums=(0, 1))(k, v)
    np.testing.assert_array_equal(dk0[0], 0.0)
    np.testing.assert_array_equal(dv0[0], 0.0)


def test_causal_attention_ignores_the_future():
    q, k, v = normal(1, 6, 4), normal(1, 6, 4), normal(1, 6, 4)
    o1 = F.attention(q, k, v, mask=F.causal_mask(6))
    v2 = v.at[0, 4:].set(100.0)
    o2 = F.attention(q, k, v2, mask=F.causal_mask(6))
    np.testing.assert_allclose(o1[0, :4], o2[0, :4])


def test_split_merge_heads_roundtrip():
    x = normal(2, 5, 12)
    h = F.split_heads(x, 3)
    assert h.shape == (2, 3, 5, 4)
    np.testing.assert_array_equal(F.merge_heads(h), x)


# ------------------------------------------------------------------ embedding / tokens
def test_repeated_embedding_ids_accumulate():
    table = normal(5, 3)
    ids = jnp.array([[2, 2, 2], [0, 2, 4]])
    g = jax.grad(lambda t: jnp.sum(F.embedding(t, ids)))(table)
    np.testing.assert_array_equal(g[:, 0], [1, 0, 4, 0, 1])


def test_out_of_range_ids_read_and_receive_gradient_at_the_same_row():
    table = normal(4, 3)
    ids = jnp.array([-1, 5])  # clipped to rows 0 and 3
    np.testing.assert_array_equal(F.embedding(table, ids), table[jnp.array([0, 3])])
    g = jax.grad(lambda t: jnp.sum(F.embedding(t, ids) * jnp.array([[1.0], [10.0]])))(table)
    np.testing.assert_array_equal(g[:, 0], [1, 0, 0, 10])
    x = normal(1, 4, 2)
    gx = jax.grad(lambda x: jnp.sum(F.take_tokens(x, jnp.array([[-2, 7]])) * jnp.array([[[1.0], [10.0]]])))(x)
    np.testing.assert_array_equal(gx[0, :, 0], [1, 0, 0, 10])


def test_out_of_range_label_adds_no_loss_or_gradient_but_counts():
    z = normal(3, 4)
    full = F.softmax_cross_entropy(z, jnp.array([1, 2, 3]))
    bad = F.softmax_cross_entropy(z, jnp.array([1, 2, 9]))  # label 9 of 4 classes
    two = F.softmax_cross_entropy(z[:2], jnp.array([1, 2]))
    np.testing.assert_allclose(bad, two * 2 / 3, rtol=1e-12)  # zero term, still in the mean
    assert float(bad) < float(full)
    g = jax.grad(F.softmax_cross_entropy)(z, jnp.array([1, 2, -1]))
    np.testing.assert_array_equal(g[2], 0.0)


def test_float_mask_weights_are_differentiable():
    z, y = normal(4, 3), jnp.array([0, 1, 2, 0])
    w = jnp.array([1.0, 0.5, 2.0, 0.0])
    gw = jax.grad(lambda w: F.softmax_cross_entropy(z, y, mask=w))(w)
    per = -jnp.take_along_axis(jax.nn.log_softmax(z), y[:, None], 1)[:, 0]
    loss = jnp.sum(w * per) / jnp.sum(w)
    np.testing.assert_allclose(gw, (per - loss) / jnp.sum(w), rtol=1e-10)


def test_take_tokens_scatter_back():
    x = normal(2, 4, 3)
    idx = jnp.array([[3, 3], [0, 1]])
    g = jax.grad(lambda x: jnp.sum(F.take_tokens(x, idx)))(x)
    np.testing.assert_array_equal(g[:, :, 0], [[0, 0, 0, 2], [1, 1, 0, 0]])


# ------------------------------------------------------------------ softmax family / losses
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_huge_logits_stay_finite_and_correct(dtype):
    z = jnp.asarray([[1e4, -1e4, 0.0], [-1e4, -1e4 + 1.0, -1e4]], dtype)
    np.testing.assert_allclose(F.softmax(z)[0], [1, 0, 0])
    np.testing.assert_allclose(F.logsumexp(z)[0], 1e4)
    expected = np.log(np.exp([0.0, 1.0, 0.0]) / np.exp([0.0, 1.0, 0.0]).sum())
    np.testing.assert_allclose(F.log_softmax(z)[1], expected, rtol=1e-5)
    labels = jnp.array([1, 1])
    loss, g = jax.value_and_grad(F.softmax_cross_entropy)(z, labels)
    assert np.isfinite(float(loss)) and bool(jnp.all(jnp.isfinite(g)))
    np.testing.assert_allclose(float(loss), (2e4 + -expected[1]) / 2, rtol=1e-6)
    for f in (F.softmax, F.log_softmax, F.logsumexp):
        assert bool(jnp.all(jnp.isfinite(jax.grad(lambda z, f=f: jnp.sum(f(z) * 0.5))(z))))


def test_cross_entropy_mask_counts_only_real_positions():
    logits, labels = normal(2, 4, 5), jnp.array([[1, 2, 0, 0], [3, 3, 3, 0]])
    mask = jnp.array([[1, 1, 0, 0], [1, 1, 1, 0]], bool)
    full = F.softmax_cross_entropy(logits[mask], labels[mask])
    np.testing.assert_allclose(F.softmax_cross_entropy(logits, labels, mask=mask), full, rtol=1e-12)
    g = jax.grad(F.softmax_cross_entropy)(logits, labels, mask=mask)
    np.testing.assert_array_equal(g[~mask], 0.0)
    assert float(F.softmax_cross_entropy(logits, labels, mask=jnp.zeros_like(mask))) == 0.0


def test_binary_cross_entropy_extreme_logits():
    z = jnp.asarray([-1e3, 1e3, 0.0])
    t = jnp.asarray([0.0, 1.0, 0.5])
    assert np.isfinite(float(F.binary_cross_entropy_with_logits(z, t)))
    np.testing.assert_allclose(float(F.binary_cross_entropy_with_logits(z, t)), np.log(2) / 3, rtol=1e-12)


# ------------------------------------------------------------------ normalization
def test_batch_norm_near_zero_variance():
    x = 1000.0 + 1e-4 * normal(64, 3)  # var ~ 1e-8 << mean^2
    gamma, beta = jnp.ones(3), jnp.zeros(3)
    y, mean, var = F.batch_norm(x, gamma, beta)
    xr = np.asarray(x)
    np.testing.assert_allclose(var, xr.var(0), rtol=1e-6)  # two-pass variance
    ref = (xr - xr.mean(0)) / np.sqrt(xr.var(0) + 1e-5)
    np.testing.assert_allclose(y, ref, rtol=1e-6, atol=1e-9)
    # The rule agrees with autodiff to ~1e-13 here. Finite differences cannot do
    # better than ~1e-7 at this point whatever the step: x ~ 1e3 is stored to
    # ~1e-13 absolute and y amplifies differences by 1/sqrt(eps) ~ 316, so the
    # FD tolerance is relaxed to 1e-6 for this ill-conditioned input only.
    check_vjp(lambda x: F.batch_norm(x, gamma, beta)[0], x, tolerances={"fd": 1e-6}).raise_if_failed()
    x32 = x.astype(np.float32)
    y32 = F.batch_norm(x32, gamma.astype(np.float32), beta.astype(np.float32))[0]
    assert bool(jnp.all(jnp.isfinite(y32)))


def test_batch_norm_batch_size_one():
    x = normal(1, 4)
    gamma, beta = normal(4), normal(4)
    y, mean, var = F.batch_norm(x, gamma, beta)
    np.testing.assert_allclose(y[0], beta)  # x - mean == 0
    np.testing.assert_array_equal(var, 0.0)
    g = jax.grad(lambda x: jnp.sum(F.batch_norm(x, gamma, beta)[0] * normal(1, 4)))(x)
    np.testing.assert_allclose(g, 0.0, atol=1e-12)  # y does not depend on x at N = 1


def test_batch_norm_float16_computes_statistics_in_float32():
    x = (100 + normal(32, 2)).astype(jnp.float16)
    y, mean, var = F.batch_norm(x, jnp.ones(2, jnp.float16), jnp.zeros(2, jnp.float16))
    assert y.dtype == jnp.float16
    xr = np.asarray(x, np.float64)
    np.testing.assert_allclose(np.asarray(y, np.float64), (xr - xr.mean(0)) / np.sqrt(xr.var(0) + 1e-5), atol=2e-2)


def test_batch_size_one_everywhere():
    x = normal(1, 6, 6, 2)
    w = normal(3, 3, 2, 3)
    check_vjp(lambda x, w: F.conv2d(x, w, stride=2), x, w).raise_if_failed()
    distinct = jnp.asarray(rng.permutation(72).reshape(1, 6, 6, 2) * 1.0)
    check_vjp(lambda x: F.max_pool2d(x, 2), distinct).raise_if_failed()
    check_vjp(F.linear, normal(1, 5), normal(5, 2)).raise_if_failed()


# ------------------------------------------------------------------ dropout
def test_dropout_same_key_same_mask_and_backward_uses_it():
    key = jax.random.key(3)
    x = normal(200, 50)
    y1, y2 = F.dropout(key, x, 0.4), F.dropout(key, x, 0.4)
    np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(y1, F.dropout(jax.random.key(4), x, 0.4))
    kept = y1 != 0
    assert 0.55 < float(jnp.mean(kept)) < 0.65
    np.testing.assert_allclose(y1[kept], x[kept] / 0.6)
    g = jax.grad(lambda x: jnp.sum(F.dropout(key, x, 0.4)))(x)
    np.testing.assert_array_equal(g != 0, kept)
    np.testing.assert_allclose(g[kept], 1 / 0.6)


def test_dropout_eval_and_rate_zero_are_identity():
    x = normal(4, 4)
    np.testing.assert_array_equal(F.dropout(None, x, 0.5, deterministic=True), x)
    np.testing.assert_array_equal(F.dropout(jax.random.key(0), x, 0.0), x)


def test_step_has_zero_gradient():
    x = normal(10)
    np.testing.assert_array_equal(F.step(x), (np.asarray(x) > 0).astype(float))
    np.testing.assert_array_equal(jax.grad(lambda x: jnp.sum(F.step(x)))(x), 0.0)


# ------------------------------------------------------------------ rnn
def test_rnn_grad_of_vmap_matches_unbatched():
    x, h0 = normal(4, 5, 3), normal(4, 6)
    wx, wh, b = normal(3, 6) * 0.5, normal(6, 6) * 0.3, normal(6) * 0.1

    def total(params):
        def per_seq(x1, h1):  # one sequence; a batch of 1 inside
            hs, hT = F.rnn(x1[None], h1[None], *params)
            return jnp.sum(hs**2) + jnp.sum(hT)

        return jnp.sum(jax.vmap(per_seq)(x, h0))

    def total_direct(params):
        hs, hT = F.rnn(x, h0, *params)
        return jnp.sum(hs**2) + jnp.sum(hT)

    g_vmap = jax.grad(total)((wx, wh, b))
    g_direct = jax.grad(total_direct)((wx, wh, b))
    for a, c in zip(g_vmap, g_direct):
        np.testing.assert_allclose(a, c, rtol=1e-10)


def test_rnn_single_step_and_long_sequence():
    check_vjp(F.rnn, normal(2, 1, 3), normal(2, 4), normal(3, 4), normal(4, 4) * 0.3, normal(4)).raise_if_failed()
    check_vjp(
        F.rnn, normal(2, 40, 3), normal(2, 4), normal(3, 4) * 0.5, normal(4, 4) * 0.3, normal(4) * 0.1
    ).raise_if_failed()


# ------------------------------------------------------------------ bad input
BAD_INPUTS = [
    (lambda: F.linear(jnp.ones((2, 3)), jnp.ones((4, 5))), ValueError, "x has 3 input features"),
    (lambda: F.linear(jnp.ones((2, 3)), jnp.ones((3, 5)), jnp.ones(4)), ValueError, "b must have shape"),
    (lambda: F.linear(jnp.ones((2, 3), jnp.int32), jnp.ones((3, 5))), TypeError, "x must have a floating"),
    (
        lambda: F.linear(jnp.ones((2, 3), jnp.float32), jnp.ones((3, 5), jnp.float64)),
        TypeError,
        "share one floating dtype",
    ),
    (lambda: F.conv2d(jnp.ones((2, 8, 8)), jnp.ones((3, 3, 1, 4))), ValueError, r"x must have rank 4 \(N, H, W, C\)"),
    (lambda: F.conv2d(jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3, 2, 4))), ValueError, "expects Cin=2"),
    (lambda: F.conv2d(jnp.ones((1, 8, 8, 3)), jnp.ones((3, 3, 3, 4)), padding="FULL"), ValueError, "padding must be"),
    (lambda: F.conv2d(jnp.ones((1, 2, 2, 3)), jnp.ones((3, 3, 3, 4)), padding="VALID"), ValueError, "does not fit"),
    (lambda: F.conv2d(jnp.ones((1, 8, 8, 3)), jnp.ones((3, 3, 3, 4)), stride=0), ValueError, "stride must be >= 1"),
    (
        lambda: F.conv2d(jnp.ones((1, 8, 8, 3)), jnp.ones((3, 3, 3, 4)), stride=1.5),
        TypeError,
        "stride must be a Python int",
    ),
    (lambda: F.max_pool2d(jnp.ones((1, 8, 8, 3)), 2, 2, 2), ValueError, "smaller than the window"),
    (lambda: F.softmax(jnp.ones((2, 3)), axis=2), ValueError, "axis 2 is out of range"),
    (
        lambda: F.softmax_cross_entropy(jnp.ones((4, 3)), jnp.ones((4,), jnp.float32)),
        TypeError,
        "labels must have an integer",
    ),
    (
        lambda: F.softmax_cross_entropy(jnp.ones((4, 3)), jnp.ones((5,), jnp.int32)),
        ValueError,
        "labels must have shape",
    ),
    (
        lambda: F.softmax_cross_entropy(jnp.ones((4, 3)), jnp.ones((4,), jnp.int32), label_smoothing=1.0),
        ValueError,
        "label_smoothing",
    ),
    (lambda: F.mse(jnp.ones(3), jnp.ones(4)), ValueError, "target must have the shape"),
    (lambda: F.dropout(None, jnp.ones(3), 0.5), ValueError, "needs a PRNG key"),
    (lambda: F.dropout(jax.random.key(0), jnp.ones(3), 1.0), ValueError, r"rate must be in \[0, 1\)"),
    (lambda: F.batch_norm(jnp.ones((4, 3)), jnp.ones(2), jnp.ones(3)), ValueError, "gamma must have shape"),
    (lambda: F.batch_norm(jnp.ones(3), jnp.ones(3), jnp.ones(3)), ValueError, "x must have rank >= 2"),
    (lambda: F.layer_norm(jnp.ones((2, 4)), jnp.ones(4), jnp.ones(3)), ValueError, "beta must have shape"),
    (lambda: F.embedding(jnp.ones((5, 2)), jnp.ones(3)), TypeError, "ids must have an integer"),
    (
        lambda: F.attention(jnp.ones((2, 3, 4)), jnp.ones((2, 5, 3)), jnp.ones((2, 5, 4))),
        ValueError,
        "feature size d=4",
    ),
    (
        lambda: F.attention(jnp.ones((2, 3, 4)), jnp.ones((2, 5, 4)), jnp.ones((2, 6, 4))),
        ValueError,
        "v must have Tk=5",
    ),
    (
        lambda: F.attention(jnp.ones((2, 3, 4)), jnp.ones((2, 5, 4)), jnp.ones((2, 5, 4)), mask=jnp.ones((3, 4), bool)),
        ValueError,
        "does not broadcast",
    ),
    (
        lambda: F.attention(jnp.ones((2, 3, 4)), jnp.ones((2, 5, 4)), jnp.ones((2, 5, 4)), mask=jnp.ones((3, 5))),
        TypeError,
        "mask must be a bool",
    ),
    (
        lambda: F.rnn(jnp.ones((2, 5, 3)), jnp.ones((2, 4)), jnp.ones((3, 4)), jnp.ones((4, 3)), jnp.ones(4)),
        ValueError,
        "w_h must have shape",
    ),
    (
        lambda: F.rnn(jnp.ones((2, 5, 3)), jnp.ones((3, 4)), jnp.ones((3, 4)), jnp.ones((4, 4)), jnp.ones(4)),
        ValueError,
        "h0 must have shape",
    ),
    (lambda: F.patchify(jnp.ones((1, 8, 10, 3)), 4), ValueError, "not divisible by patch=4"),
    (lambda: F.unpatchify(jnp.ones((1, 6, 48)), 4, (8, 8, 3)), ValueError, "patches must have shape"),
    (lambda: F.take_tokens(jnp.ones((2, 5, 3)), jnp.ones((3, 2), jnp.int32)), ValueError, "batch size 2"),
    (lambda: F.unpatchify(jnp.ones((1, 4, 4)), 2, (4, 4)), ValueError, r"image_shape must be \(H, W, C\)"),
    (lambda: F.split_heads(jnp.ones((2, 3)), 2), ValueError, "split_heads expects x of rank 3"),
    (lambda: F.split_heads(jnp.ones((2, 3, 5)), 2), ValueError, "not divisible by num_heads=2"),
    (lambda: F.merge_heads(jnp.ones((2, 3, 5))), ValueError, "merge_heads expects x of rank 4"),
    (lambda: F.causal_mask(3.5), TypeError, "t must be a Python int"),
    (
        lambda: jax.jit(lambda x, r: F.dropout(jax.random.key(0), x, r))(jnp.ones(3), 0.5),
        TypeError,
        "rate is static configuration",
    ),
    (
        lambda: jax.jit(lambda x, e: F.layer_norm(x, jnp.ones(3), jnp.zeros(3), eps=e))(jnp.ones((2, 3)), 1e-5),
        TypeError,
        "eps is static configuration",
    ),
]


@pytest.mark.parametrize("call, exc, message", BAD_INPUTS, ids=[m for _, _, m in BAD_INPUTS])
def test_bad_input_raises_clear_error(call, exc, message):
    with pytest.raises(exc, match=message):
        call()
