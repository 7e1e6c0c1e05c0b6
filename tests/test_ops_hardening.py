"""Regression tests for issue 7 at the op level: integer ids/labels of every
width, float16/bfloat16 accumulation, float16 batch statistics, the XLA
convolution abort, negative cross-entropy weights, max pooling with NaN and
-inf, and the bad input that used to escape with a generic error.

Each test reproduces the failing example of the issue (or the pattern the
audit found) and fails on the code before the fix."""

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdlfs
import jdlfs.functional as F
from jdlfs.gradcheck import check_vjp, strip_custom_vjp
from jdlfs.op_cases import INT_DTYPES

F16, BF16 = jnp.float16, jnp.bfloat16


def ramp(n, d=2, dtype=jnp.float32):
    return jnp.arange(n * d, dtype=dtype).reshape(n, d)  # row r starts at r * d


# ================================================================ 1. integer ids and labels of every width
def test_uint8_ids_into_300_rows_read_their_own_rows():
    ids = jnp.array([0, 100, 200, 255], jnp.uint8)
    out = F.embedding(ramp(300), ids)
    np.testing.assert_array_equal(out[:, 0] / 2, [0, 100, 200, 255])  # was rows [0, 43, 43, 43]


def test_uint8_ids_into_257_rows_reach_every_byte_row():
    """256 byte ids + one special token: every uint8 id used to return row 0."""
    ids = jnp.arange(256, dtype=jnp.uint8)
    table = ramp(257)
    np.testing.assert_array_equal(F.embedding(table, ids)[:, 0] / 2, np.arange(256))
    g = jax.grad(lambda t: jnp.sum(F.embedding(t, ids)))(table)
    np.testing.assert_array_equal(g[:, 0], [1.0] * 256 + [0.0])  # each byte row once, special row 0


def test_int16_ids_into_gpt2_sized_table_are_exact():
    """int16 ids into 50,257 rows gave NaN (the clip bound 50,256 wraps to -15,280 in int16)."""
    ids = jnp.array([0, 100, 30000, 32767, -5], jnp.int16)
    out = F.embedding(ramp(50257), ids)
    assert bool(jnp.all(jnp.isfinite(out)))
    np.testing.assert_array_equal(out[:, 0] / 2, [0, 100, 30000, 32767, 0])


def test_int8_token_indices_over_200_tokens():
    x = jnp.arange(200, dtype=jnp.float32).reshape(1, 200, 1)
    idx = jnp.array([[0, 100, 127]], jnp.int8)
    np.testing.assert_array_equal(F.take_tokens(x, idx)[0, :, 0], [0, 100, 127])  # was 143 three times
    g = jax.grad(lambda x: jnp.sum(F.take_tokens(x, idx)))(x)
    assert float(g[0, 100, 0]) == 1.0 and float(jnp.sum(g)) == 3.0


def test_uint8_labels_with_300_classes_have_one_true_class():
    """Label 5 used to make class 5 *and* class 261 (= 5 + 256) true."""
    z = jax.random.normal(jax.random.key(0), (4, 300))
    labels = np.array([5, 5, 200, 255])
    loss8, g8 = jax.value_and_grad(F.softmax_cross_entropy)(z, jnp.asarray(labels, jnp.uint8))
    loss32, g32 = jax.value_and_grad(F.softmax_cross_entropy)(z, jnp.asarray(labels, jnp.int32))
    np.testing.assert_array_equal(loss8, loss32)
    np.testing.assert_array_equal(g8, g32)
    assert np.count_nonzero(np.asarray(g8) < 0) == 4  # p - onehot < 0 only at the label
    p = jax.nn.softmax(z, axis=-1)
    expected = -jnp.mean(jnp.log(p[jnp.arange(4), labels]))
    np.testing.assert_allclose(loss8, expected, rtol=1e-6)


@pytest.mark.x64  # int64/uint64 JAX arrays need x64
@pytest.mark.parametrize(
    "dtype",
    # int8, uint16 (more rows than it holds), int64 and uint64 (need x64) in the default suite; the other widths
    # are the same code path and slow (the catalogue checks embedding/take_tokens/cross-entropy ids of all 8).
    [
        pytest.param(
            d, id=np.dtype(d).name, marks=pytest.mark.slow if d in (np.int16, np.int32, np.uint8, np.uint32) else ()
        )
        for d in INT_DTYPES
    ],
)
def test_every_integer_dtype_gives_the_int32_result(dtype):
    info = np.iinfo(dtype)
    values = [
        v
        for v in (0, 1, 2, 120, 127, 255, 299, 300, 32767, 65535, 70000, 2**31 + 5, 2**32 + 5, -1, -200)
        if info.min <= v <= info.max
    ]
    n = 65539 if np.dtype(dtype).itemsize == 2 else 300  # more rows than 8/16-bit ids hold
    ids = jnp.asarray(np.array(values, dtype))
    ids32 = jnp.asarray(np.array([min(max(v, 0), n - 1) for v in values], np.int32))  # clipped, as int32 ids
    labels32 = jnp.asarray(np.array([v if 0 <= v < n else -1 for v in values], np.int32))
    table = jnp.asarray(np.random.default_rng(0).standard_normal((n, 3)), jnp.float32)
    ct = jnp.asarray(np.random.default_rng(1).standard_normal((len(values), 3)), jnp.float32)
    for fn in (F.embedding, jax.jit(F.embedding)):
        out, vjp = jax.vjp(lambda t, fn=fn: fn(t, ids), table)
        out32, vjp32 = jax.vjp(lambda t: F.embedding(t, ids32), table)
        np.testing.assert_array_equal(out, out32)
        np.testing.assert_array_equal(vjp(ct)[0], vjp32(ct)[0])
    x = table[None]
    np.testing.assert_array_equal(F.take_tokens(x, ids[None]), F.take_tokens(x, ids32[None]))
    np.testing.assert_array_equal(
        jax.grad(lambda x: jnp.sum(F.take_tokens(x, ids[None]) * ct))(x),
        jax.grad(lambda x: jnp.sum(F.take_tokens(x, ids32[None]) * ct))(x),
    )
    z = jnp.asarray(np.random.default_rng(2).standard_normal((len(values), n)), jnp.float32)
    loss, g = jax.value_and_grad(F.softmax_cross_entropy)(z, ids)
    loss32, g32 = jax.value_and_grad(F.softmax_cross_entropy)(z, labels32)
    np.testing.assert_array_equal(loss, loss32)
    np.testing.assert_array_equal(g, g32)


def test_64_bit_numpy_ids_stay_exact_with_x64_off():
    """With 64-bit mode off JAX converts a uint64 2**32 + 5 to 5 (wraps); the ops map
    NumPy ids into range before converting, so the id stays out of range."""
    assert not jax.config.jax_enable_x64
    table = ramp(300)
    ids = np.array([2**32 + 5, 7, 2**63 + 1], np.uint64)
    np.testing.assert_array_equal(F.embedding(table, ids)[:, 0] / 2, [299, 7, 299])
    np.testing.assert_array_equal(
        F.take_tokens(table[None], np.array([[2**40, -(2**40)]], np.int64))[0, :, 0] / 2, [299, 0]
    )
    z = jnp.zeros((2, 300))
    lo = F.softmax_cross_entropy(z, np.array([2**32 + 5, 5], np.int64))  # first is out of range: 0 loss
    np.testing.assert_allclose(lo, math.log(300) / 2, rtol=1e-6)


def test_uint32_ids_above_int32_max_are_out_of_range_not_negative():
    table = ramp(300)
    ids = jnp.array([2**31 + 5, 2**32 - 1, 3], jnp.uint32)  # as int32 these would be negative
    np.testing.assert_array_equal(F.embedding(table, ids)[:, 0] / 2, [299, 299, 3])
    loss = F.softmax_cross_entropy(jnp.zeros((3, 300)), ids)  # only label 3 adds loss
    np.testing.assert_allclose(loss, math.log(300) / 3, rtol=1e-6)


def test_empty_axes_and_empty_batches():
    with pytest.raises(ValueError, match="table must have at least one row"):
        F.embedding(jnp.zeros((0, 3)), jnp.array([0]))
    with pytest.raises(ValueError, match="x must hold at least one token"):
        F.take_tokens(jnp.zeros((1, 0, 3)), jnp.zeros((1, 1), jnp.int32))
    with pytest.raises(ValueError, match="logits must have at least one class"):
        F.softmax_cross_entropy(jnp.zeros((2, 0)), jnp.zeros(2, jnp.int32))
    loss, g = jax.value_and_grad(F.softmax_cross_entropy)(jnp.zeros((0, 5)), jnp.zeros(0, jnp.int32))
    assert float(loss) == 0.0 and g.shape == (0, 5)  # empty batch: 0, like all-masked


# ================================================================ 2. low-precision accumulation
def test_float16_cross_entropy_16384_positions_by_1000_classes_is_finite():
    z = jax.random.normal(jax.random.key(0), (16384, 1000), F16)
    labels = jax.random.randint(jax.random.key(1), (16384,), 0, 1000)
    loss = F.softmax_cross_entropy(z, labels)  # sum ~ 1.2e5 > 65,504: was inf
    assert loss.dtype == F16
    ref = F.softmax_cross_entropy(z.astype(jnp.float32), labels)
    np.testing.assert_allclose(float(loss), float(ref), rtol=1e-3)


def test_float16_cross_entropy_70000_positions_value_and_gradient():
    z = jax.random.normal(jax.random.key(0), (70000, 10), F16)
    labels = jax.random.randint(jax.random.key(1), (70000,), 0, 10)
    loss, g = jax.value_and_grad(F.softmax_cross_entropy)(z, labels)  # count 70,000 > 65,504: was NaN
    loss32, g32 = jax.value_and_grad(F.softmax_cross_entropy)(z.astype(jnp.float32), labels)
    np.testing.assert_allclose(float(loss), float(loss32), rtol=1e-3)
    assert g.dtype == F16 and bool(jnp.any(g != 0))  # was all zero
    # entries ~1e-5..1e-8 are float16 subnormals: compare to float16's resolution there
    np.testing.assert_allclose(np.asarray(g, np.float32), g32, rtol=1e-2, atol=6e-8)


@pytest.mark.parametrize("masked", [False, True])
def test_bfloat16_cross_entropy_counts_257_positions(masked):
    """bfloat16 rounds the count 257 to 256: a 0.4% bias."""
    z = jnp.zeros((257, 2), BF16)  # every position: loss log 2
    labels = jnp.zeros(257, jnp.int32)
    mask = jnp.ones(257, bool) if masked else None
    loss = F.softmax_cross_entropy(z, labels, mask=mask)
    assert loss.dtype == BF16
    assert float(loss) == float(jnp.asarray(math.log(2), BF16))
    wloss = F.softmax_cross_entropy(z, labels, mask=jnp.ones(257, BF16))  # float weights, sum 257
    assert float(wloss) == float(jnp.asarray(math.log(2), BF16))


def test_float16_element_counts_above_65504_keep_gradients():
    """g / N with a Python-int N > 65,504 turns N into float16 inf and the gradient into 0."""
    n = 70000
    z = jnp.full((n,), 0.5, F16)
    t = jnp.zeros((n,), F16)
    gz = jax.grad(F.binary_cross_entropy_with_logits)(z, t)
    np.testing.assert_allclose(np.asarray(gz, np.float32), float(jax.nn.sigmoid(0.5)) / n, rtol=1e-2)
    gp = jax.grad(F.mse)(z, t)
    np.testing.assert_allclose(np.asarray(gp, np.float32), 2 * 0.5 / n, rtol=1e-2)
    x = jnp.ones((1, 256, 256, 1), F16)  # H W = 65,536
    gx = jax.grad(lambda x: jnp.sum(F.global_avg_pool(x)))(x)
    np.testing.assert_array_equal(np.asarray(gx, np.float32), 2.0**-16)  # exact, was 0


def test_float16_softmax_family_over_more_than_65504_classes():
    x = jnp.zeros((1, 70000), F16)
    np.testing.assert_allclose(float(F.logsumexp(x)[0]), math.log(70000), rtol=1e-3)  # was inf
    np.testing.assert_allclose(float(F.log_softmax(x)[0, 0]), -math.log(70000), rtol=1e-3)
    np.testing.assert_allclose(np.asarray(F.softmax(x), np.float32), 1 / 70000, rtol=1e-2)  # was 0
    g = jax.grad(lambda x: F.softmax(x)[0, 0] * 1000)(x)
    assert bool(jnp.all(jnp.isfinite(g))) and float(g[0, 0]) > 0


def test_float16_attention_over_more_than_65504_keys():
    q = jnp.zeros((1, 1, 1), F16)
    k = jnp.zeros((1, 70000, 1), F16)
    v = jnp.ones((1, 70000, 1), F16)
    np.testing.assert_allclose(float(F.attention(q, k, v)[0, 0, 0]), 1.0, rtol=1e-2)  # was 0 (normaliser inf)


def test_float16_sums_that_overflow_before_dividing():
    x = jnp.full((1, 3, 3, 1), 30000.0, F16)  # window sum 270,000 > 65,504
    np.testing.assert_array_equal(F.avg_pool2d(x, 3, 1), jnp.full((1, 1, 1, 1), 30000.0, F16))
    p, t = jnp.array([300.0, 0, 0, 0], F16), jnp.zeros(4, F16)  # square 90,000 > 65,504
    np.testing.assert_allclose(float(F.mse(p, t)), 22500.0, rtol=1e-3)


@pytest.mark.parametrize("dtype", [F16, BF16])
def test_low_precision_reductions_return_the_input_dtype(dtype):
    x = jnp.ones((2, 4, 4, 3), dtype)
    for out in (
        F.avg_pool2d(x, 2),
        F.global_avg_pool(x),
        F.softmax(x),
        F.log_softmax(x),
        F.logsumexp(x),
        F.mse(x, x),
        F.binary_cross_entropy_with_logits(x, x),
        F.layer_norm(x, x[0, 0, 0], x[0, 0, 0]),
        F.attention(x, x, x),
        F.softmax_cross_entropy(x, jnp.zeros((2, 4, 4), jnp.int32)),
    ):
        assert out.dtype == dtype


# ================================================================ 3. float16 batch norm statistics
def test_float16_batch_norm_variance_above_65504_stays_finite():
    x = (300.0 * jax.random.normal(jax.random.key(0), (256, 4))).astype(F16)  # var ~ 90,000
    gamma, beta = jnp.ones(4, F16), jnp.zeros(4, F16)
    y, mean, var = F.batch_norm(x, gamma, beta)
    assert y.dtype == F16 and mean.dtype == var.dtype == jnp.float32
    xr = np.asarray(x, np.float64)
    np.testing.assert_allclose(var, xr.var(0), rtol=1e-5)  # was inf
    assert float(jnp.min(var)) > 65504
    np.testing.assert_allclose(np.asarray(y, np.float64), (xr - xr.mean(0)) / np.sqrt(xr.var(0) + 1e-5), atol=1e-2)
    # evaluation with those float32 statistics (running statistics are kept in float32)
    y_eval = F.batch_norm_inference(x, gamma, beta, mean, var)
    assert y_eval.dtype == F16
    np.testing.assert_allclose(np.asarray(y_eval, np.float32), np.asarray(y, np.float32), atol=1e-2)
    grads = jax.grad(lambda *a: jnp.sum(F.batch_norm_inference(*a).astype(jnp.float32)), argnums=(0, 1, 2, 3, 4))(
        x, gamma, beta, mean, var
    )
    assert [g.dtype for g in grads] == [F16, F16, F16, jnp.float32, jnp.float32]
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)


def test_batch_norm_inference_refuses_other_statistics_dtypes():
    x = jnp.ones((2, 3), F16)
    with pytest.raises(TypeError, match="mean and var must have x's dtype"):
        F.batch_norm_inference(x, jnp.ones(3, F16), jnp.ones(3, F16), jnp.ones(3, BF16), jnp.ones(3, BF16))


# ================================================================ 4. the XLA convolution abort
_CONV_CONFIGS = [  # (x shape, w shape, stride, padding): each aborted the process before (SIGABRT)
    ((1, 8, 8, 2), (5, 2, 2, 3), 2, 1),  # the example
    ((2, 3, 6, 2), (3, 2, 2, 3), (3, 2), ((2, 2), (1, 1))),
    ((1, 6, 4, 2), (2, 6, 2, 3), (2, 1), ((1, 1), (0, 2))),
    ((1, 6, 8, 1), (2, 4, 1, 2), 2, ((1, 2), (0, 0))),
    ((1, 4, 4, 2), (5, 2, 2, 1), 2, ((1, 0), (1, 2))),
    ((1, 10, 1, 2), (2, 3, 2, 3), (2, 1), ((1, 2), (1, 2))),
    ((1, 1, 3, 2), (1, 1, 2, 3), (10, 1), ((5, 0), (0, 0))),  # windows read padding only (rows)
]

_CONV_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np
    import jdlfs.functional as F

    results = []
    for xs, ws, stride, padding in json.loads(sys.argv[1]):
        padding = padding if not isinstance(padding, list) else tuple(map(tuple, padding))
        stride = stride if not isinstance(stride, list) else tuple(stride)
        rng = np.random.default_rng(0)
        x, w, b = (jnp.asarray(rng.standard_normal(s)) for s in (xs, ws, ws[3:]))
        lax_fn = lambda x, w, b: F.conv2d(x, w, b, stride=stride, padding=padding)
        col_fn = lambda x, w, b: F.conv2d_im2col(x, w, b, stride=stride, padding=padding)
        y = lax_fn(x, w, b)
        ct = jnp.asarray(rng.standard_normal(y.shape))
        loss = lambda fn: (lambda x, w, b: jnp.sum(fn(x, w, b) * ct))
        dw_only = jax.grad(loss(lax_fn), argnums=1)(x, w, b)               # only the weight gradient
        hand = jax.jit(jax.grad(loss(lax_fn), argnums=(0, 1, 2)))(x, w, b)
        ref = jax.grad(loss(col_fn), argnums=(0, 1, 2))(x, w, b)
        err = max(float(jnp.max(jnp.abs(a - c))) for a, c in
                  [(y, col_fn(x, w, b)), (dw_only, ref[1]), *zip(hand, ref)])
        results.append(err)
    print(json.dumps(results))
""")


def test_conv2d_geometries_that_aborted_xla_run_and_agree_with_im2col():
    """Run in a subprocess: an abort (SIGABRT) fails this test instead of killing pytest."""
    root = Path(jdlfs.__file__).resolve().parents[1]  # the jdlfs this test imported
    proc = subprocess.run(
        [sys.executable, "-c", _CONV_SCRIPT, json.dumps(_CONV_CONFIGS)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=root,
    )
    assert proc.returncode == 0, f"conv2d aborted (rc {proc.returncode}):\n{proc.stderr[-3000:]}"
    errors = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(errors) == len(_CONV_CONFIGS)
    assert max(errors) < 1e-12, errors  # float64, forward and every gradient


# ================================================================ 5. negative float weights in cross-entropy
@pytest.mark.x64
@pytest.mark.parametrize(
    "w", [[1.0, -1.0, 0.5, -0.5], [0.0, -2.0, 1.0, 0.5], [1.0, 0.0, 0.0, -1.0]], ids=["sum=0", "sum<0", "sum=0 sparse"]
)
def test_weights_summing_to_at_most_zero_differentiate_their_forward(w):
    z = jnp.asarray(np.random.default_rng(0).standard_normal((4, 5)))
    y = jnp.array([0, 3, 1, 4])
    w = jnp.asarray(w)
    fn = lambda z, w: F.softmax_cross_entropy(z, y, mask=w)  # noqa: E731
    auto = jax.grad(strip_custom_vjp(fn), argnums=(0, 1))(z, w)
    hand = jax.grad(fn, argnums=(0, 1))(z, w)
    for a, h in zip(auto, hand):  # dw was (l - L), not l
        np.testing.assert_allclose(h, a, rtol=1e-12, atol=1e-14)
    per = -jax.nn.log_softmax(z)[jnp.arange(4), y]
    np.testing.assert_allclose(fn(z, w), jnp.sum(w * per), rtol=1e-12)  # S <= 0: C = 1
    np.testing.assert_allclose(hand[1], per, rtol=1e-12)


@pytest.mark.x64
def test_mixed_sign_weights_away_from_zero_sum_pass_all_three_checks():
    z = jnp.asarray(np.random.default_rng(1).standard_normal((4, 5)))
    y = jnp.array([0, 3, 1, 4])
    for w in ([2.0, -0.5, 1.0, 0.25], [-2.0, 0.5, -1.0, 0.25]):  # S > 0 and S < 0
        check_vjp(lambda z, w: F.softmax_cross_entropy(z, y, mask=w), z, jnp.asarray(w)).raise_if_failed()


# ================================================================ 6. max pooling with NaN and -inf
def test_max_pool_nan_window_outputs_nan_and_routes_gradient_to_the_first_nan():
    x = jnp.arange(16.0).reshape(1, 4, 4, 1)
    x = x.at[0, 0, 1, 0].set(jnp.nan).at[0, 1, 0, 0].set(jnp.nan).at[0, 2, 3, 0].set(jnp.nan)
    y = F.max_pool2d(x, 2)
    np.testing.assert_array_equal(np.isnan(y[0, :, :, 0]), [[True, False], [False, True]])
    np.testing.assert_array_equal(y[0, :, :, 0][~np.isnan(y[0, :, :, 0])], [7.0, 13.0])
    g = jax.grad(lambda x: jnp.sum(F.max_pool2d(x, 2) * jnp.array([1.0, 2, 3, 4]).reshape(1, 2, 2, 1)))(x)
    expected = np.zeros((4, 4))
    expected[0, 1] = 1  # window (0, 0): first NaN in row-major order (not the later one)
    expected[1, 3] = 2  # window (0, 1): its max 7
    expected[3, 1] = 3  # window (1, 0): its max 13
    expected[2, 3] = 4  # window (1, 1): its NaN
    np.testing.assert_array_equal(g[0, :, :, 0], expected)  # NaN windows' gradient was dropped


def test_max_pool_all_minus_inf_window_routes_gradient_to_a_real_pixel():
    x = jnp.full((1, 3, 3, 1), -jnp.inf)
    pads = ((1, 0), (1, 0))  # padding comes first in each window
    y = F.max_pool2d(x, 2, 2, pads)
    np.testing.assert_array_equal(y, jnp.full((1, 2, 2, 1), -jnp.inf))
    g = jax.grad(lambda x: jnp.sum(F.max_pool2d(x, 2, 2, pads) * jnp.array([1.0, 2, 3, 4]).reshape(1, 2, 2, 1)))(x)
    # each window's first *real* -inf pixel; before, a -inf padding entry took it
    np.testing.assert_array_equal(g[0, :, :, 0], [[1, 2, 0], [3, 4, 0], [0, 0, 0]])


# ================================================================ 7. traced config and zero keys
def test_traced_deterministic_and_approximate_get_the_static_config_message():
    x = jnp.ones(3)
    with pytest.raises(TypeError, match="deterministic is static configuration and must be a Python bool"):
        jax.jit(lambda x, d: F.dropout(jax.random.key(0), x, 0.5, deterministic=d))(x, True)
    with pytest.raises(TypeError, match="approximate is static configuration and must be a Python bool"):
        jax.jit(lambda x, a: F.gelu(x, approximate=a))(x, False)
    with pytest.raises(TypeError, match="approximate must be a Python bool"):
        F.gelu(x, approximate="tanh")
    # Python and NumPy bools (static values) still work
    np.testing.assert_array_equal(F.dropout(None, x, 0.5, deterministic=np.True_), x)
    np.testing.assert_allclose(F.gelu(x, approximate=np.bool_(True)), jax.nn.gelu(x, approximate=True), rtol=1e-6)


def test_attention_with_zero_keys_or_zero_features_names_the_argument():
    with pytest.raises(ValueError, match=r"k must hold at least one key \(Tk >= 1\)"):
        F.attention(jnp.ones((2, 3, 4)), jnp.ones((2, 0, 4)), jnp.ones((2, 0, 4)))
    with pytest.raises(ValueError, match=r"k must hold at least one key"):
        F.attention(jnp.ones((2, 3, 4)), jnp.ones((2, 0, 4)), jnp.ones((2, 0, 4)), mask=jnp.ones((3, 0), bool))
    with pytest.raises(ValueError, match="feature size d >= 1"):
        F.attention(jnp.ones((2, 3, 0)), jnp.ones((2, 5, 0)), jnp.ones((2, 5, 4)))


@pytest.mark.x64
def test_float64_batchnorm_layer_evaluates_after_training_with_float32_statistics():
    from jdlfs import layers as L

    bn = L.BatchNorm()
    params, state = bn.init(jax.random.key(0), (1, 3))
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    x = jax.random.normal(jax.random.key(1), (8, 3), jnp.float64)
    _, state = bn.apply(params, state, x, train=True)
    y, _ = bn.apply(params, state, x)
    assert state["var"].dtype == jnp.float32 and y.dtype == jnp.float64
    expected = (x - state["mean"].astype(jnp.float64)) / jnp.sqrt(state["var"].astype(jnp.float64) + 1e-5)
    np.testing.assert_allclose(y, expected, rtol=1e-12)


def test_float16_attention_scores_do_not_overflow_before_the_softmax():
    """q.k = 40 * 40 * 64 = 102,400 > 65,504: the score sum must run in float32."""
    q = jnp.full((1, 2, 64), 40.0, jnp.float16)
    k = jnp.concatenate([jnp.zeros((1, 5, 64)), jnp.full((1, 1, 64), 40.0)], axis=1).astype(jnp.float16)
    v = jnp.arange(6 * 3, dtype=jnp.float16).reshape(1, 6, 3)
    out, w = F.attention(q, k, v, return_weights=True)
    assert out.dtype == jnp.float16 and np.all(np.isfinite(np.asarray(w, np.float32)))
    np.testing.assert_allclose(np.asarray(w[0, 0], np.float32), [0, 0, 0, 0, 0, 1], atol=1e-3)
    g = jax.grad(lambda q: jnp.sum(F.attention(q, k, v).astype(jnp.float32)))(q)
    assert np.all(np.isfinite(np.asarray(g, np.float32)))
