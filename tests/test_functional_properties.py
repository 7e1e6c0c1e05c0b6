"""Randomised shapes and configurations (hypothesis): each draw is checked
three ways by check_vjp (vs autodiff, vs float64 finite differences, vs an
independent reference)."""

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import jdlfs.functional as F
from jdlfs.gradcheck import check_vjp
from jdlfs.op_cases import _ref_attention, _ref_avg_pool, _ref_conv, _ref_max_pool, _ref_rnn

pytestmark = pytest.mark.x64  # float64 checks and finite differences

dtypes = st.sampled_from([np.float32, np.float64])
paddings = st.one_of(
    st.sampled_from(["SAME", "VALID"]),
    st.integers(0, 2),
    st.tuples(st.tuples(st.integers(0, 2), st.integers(0, 2)), st.tuples(st.integers(0, 2), st.integers(0, 2))),
)


def arr(rng, shape, dtype, scale=1.0):
    return jnp.asarray(scale * rng.standard_normal(shape), dtype)


@given(
    n=st.integers(1, 2),
    h=st.integers(3, 9),
    w=st.integers(3, 9),
    cin=st.integers(1, 3),
    cout=st.integers(1, 3),
    kh=st.integers(1, 3),
    kw=st.integers(1, 3),
    stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    padding=paddings,
    im2col=st.booleans(),
    dtype=dtypes,
    seed=st.integers(0, 2**16),
)
def test_conv2d_random_configs(n, h, w, cin, cout, kh, kw, stride, padding, im2col, dtype, seed):
    rng = np.random.default_rng(seed)
    if padding == "VALID" and (h < kh or w < kw):
        return
    op = F.conv2d_im2col if im2col else F.conv2d
    x, k, b = arr(rng, (n, h, w, cin), dtype), arr(rng, (kh, kw, cin, cout), dtype), arr(rng, (cout,), dtype)
    check_vjp(
        lambda x, k, b: op(x, k, b, stride=stride, padding=padding),
        x,
        k,
        b,
        reference=lambda x, k, b: _ref_conv(x, k, b, stride, padding),
    ).raise_if_failed()
    np.testing.assert_allclose(
        F.conv2d_im2col(x, k, b, stride=stride, padding=padding),
        F.conv2d(x, k, b, stride=stride, padding=padding),
        rtol=1e-4 if dtype == np.float32 else 1e-10,
        atol=1e-4 if dtype == np.float32 else 1e-10,
    )


@given(
    h=st.integers(2, 8),
    w=st.integers(2, 8),
    window=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    same=st.booleans(),
    is_max=st.booleans(),
    dtype=dtypes,
    seed=st.integers(0, 2**16),
)
def test_pooling_random_configs(h, w, window, stride, same, is_max, dtype, seed):
    if not same and (h < window[0] or w < window[1]):
        return
    rng = np.random.default_rng(seed)
    x = jnp.asarray((rng.permutation(2 * h * w * 2).reshape(2, h, w, 2) * 0.01), dtype)  # no ties
    padding = "SAME" if same else "VALID"
    op, ref = (F.max_pool2d, _ref_max_pool) if is_max else (F.avg_pool2d, _ref_avg_pool)
    check_vjp(
        lambda x: op(x, window, stride, padding), x, reference=lambda x: ref(x, window, stride, padding)
    ).raise_if_failed()


@given(
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=3),
    which=st.sampled_from(["softmax", "log_softmax", "logsumexp"]),
    dtype=dtypes,
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_softmax_family_random_axes(shape, which, dtype, seed, data):
    import jax

    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    refs = {"softmax": jax.nn.softmax, "log_softmax": jax.nn.log_softmax, "logsumexp": jax.scipy.special.logsumexp}
    x = arr(np.random.default_rng(seed), shape, dtype, 3.0)
    check_vjp(
        lambda x: getattr(F, which)(x, axis=axis), x, reference=lambda x: refs[which](x, axis=axis)
    ).raise_if_failed()


@given(
    batch=st.lists(st.integers(1, 3), min_size=0, max_size=2),
    tq=st.integers(1, 5),
    tk=st.integers(1, 5),
    d=st.integers(1, 6),
    dv=st.integers(1, 4),
    masked=st.booleans(),
    dtype=dtypes,
    seed=st.integers(0, 2**16),
)
def test_attention_random_shapes_and_masks(batch, tq, tk, d, dv, masked, dtype, seed):
    rng = np.random.default_rng(seed)
    q, k, v = arr(rng, (*batch, tq, d), dtype), arr(rng, (*batch, tk, d), dtype), arr(rng, (*batch, tk, dv), dtype)
    if masked:
        m = jnp.asarray(rng.uniform(size=(tq, tk)) > 0.4)  # broadcast over batch; rows may be empty
        check_vjp(
            lambda q, k, v: F.attention(q, k, v, mask=m),
            q,
            k,
            v,
            reference=lambda q, k, v: _ref_attention(q, k, v, jnp.broadcast_to(m, (*batch, tq, tk))),
        ).raise_if_failed()
    else:
        check_vjp(F.attention, q, k, v, reference=_ref_attention).raise_if_failed()


@given(
    b=st.integers(1, 3),
    t=st.integers(1, 8),
    din=st.integers(1, 4),
    hidden=st.integers(1, 5),
    dtype=dtypes,
    seed=st.integers(0, 2**16),
)
def test_rnn_random_shapes(b, t, din, hidden, dtype, seed):
    rng = np.random.default_rng(seed)
    args = (
        arr(rng, (b, t, din), dtype),
        arr(rng, (b, hidden), dtype),
        arr(rng, (din, hidden), dtype, 0.5),
        arr(rng, (hidden, hidden), dtype, 0.4),
        arr(rng, (hidden,), dtype, 0.1),
    )
    check_vjp(F.rnn, *args, reference=_ref_rnn).raise_if_failed()


@given(
    shape=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    d=st.integers(3, 6),
    dtype=dtypes,
    seed=st.integers(0, 2**16),
    batch=st.booleans(),
)
def test_normalization_random_shapes(shape, d, dtype, seed, batch):
    # Normalising over 2 entries is degenerate: xh = +-1 whatever x is, so dL/dx is
    # exactly 0 and every implementation returns rounding noise (relative error of
    # noise vs noise is meaningless). Hence >= 3 normalised entries; N = 1 and the
    # zero-variance cases are tested in test_functional_edges.py.
    rng = np.random.default_rng(seed)
    x, g, b = arr(rng, (*shape, d), dtype, 2.0), arr(rng, (d,), dtype), arr(rng, (d,), dtype)
    if batch:
        if int(np.prod(shape)) < 3:
            return
        from jdlfs.op_cases import _ref_batch_norm

        check_vjp(F.batch_norm, x, g, b, reference=_ref_batch_norm).raise_if_failed()
    else:
        from jdlfs.op_cases import _ref_layer_norm

        check_vjp(F.layer_norm, x, g, b, reference=_ref_layer_norm).raise_if_failed()


@given(
    batch=st.lists(st.integers(1, 4), min_size=0, max_size=2),
    din=st.integers(1, 6),
    dout=st.integers(1, 6),
    bias=st.booleans(),
    dtype=dtypes,
    seed=st.integers(0, 2**16),
)
def test_linear_random_shapes(batch, din, dout, bias, dtype, seed):
    rng = np.random.default_rng(seed)
    x, w, b = arr(rng, (*batch, din), dtype), arr(rng, (din, dout), dtype), arr(rng, (dout,), dtype)
    if bias:
        check_vjp(F.linear, x, w, b, reference=lambda x, w, b: jnp.tensordot(x, w, 1) + b).raise_if_failed()
    else:
        check_vjp(lambda x, w: F.linear(x, w), x, w, reference=lambda x, w: jnp.tensordot(x, w, 1)).raise_if_failed()


@given(
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=3),
    op=st.sampled_from(["relu", "leaky_relu", "sigmoid", "tanh", "gelu", "gelu_tanh", "step", "dropout"]),
    dtype=dtypes,
    seed=st.integers(0, 2**16),
)
def test_pointwise_ops_random_shapes(shape, op, dtype, seed):
    import jax

    rng = np.random.default_rng(seed)
    z = rng.standard_normal(shape)
    x = jnp.asarray(np.sign(z) * (np.abs(z) + 0.1), dtype)  # away from the kinks at 0
    key = jax.random.key(seed)
    ops = {
        "relu": (F.relu, jax.nn.relu),
        "leaky_relu": (F.leaky_relu, jax.nn.leaky_relu),
        "sigmoid": (F.sigmoid, jax.nn.sigmoid),
        "tanh": (F.tanh, jnp.tanh),
        "gelu": (F.gelu, lambda x: jax.nn.gelu(x, approximate=False)),
        "gelu_tanh": (lambda x: F.gelu(x, True), lambda x: jax.nn.gelu(x, approximate=True)),
        "step": (F.step, lambda x: (x > 0).astype(x.dtype)),
        "dropout": (
            lambda x: F.dropout(key, x, 0.25),
            lambda x: jnp.where(jax.random.bernoulli(key, 0.75, x.shape), x / 0.75, 0),
        ),
    }
    fn, ref = ops[op]
    check_vjp(fn, x, reference=ref).raise_if_failed()


@given(
    n=st.integers(1, 3),
    gh=st.integers(1, 3),
    gw=st.integers(1, 3),
    p=st.integers(1, 4),
    c=st.integers(1, 3),
    dtype=dtypes,
    seed=st.integers(0, 2**16),
)
def test_patchify_roundtrip_and_rules_random_sizes(n, gh, gw, p, c, dtype, seed):
    from jdlfs.op_cases import _ref_patchify, _ref_unpatchify

    rng = np.random.default_rng(seed)
    images = arr(rng, (n, gh * p, gw * p, c), dtype)
    patches = F.patchify(images, p)
    assert patches.shape == (n, gh * gw, p * p * c)
    np.testing.assert_array_equal(F.unpatchify(patches, p, images.shape[1:]), images)
    check_vjp(lambda x: F.patchify(x, p), images, reference=lambda x: _ref_patchify(x, p)).raise_if_failed()
    check_vjp(
        lambda q: F.unpatchify(q, p, images.shape[1:]),
        patches,
        reference=lambda q: _ref_unpatchify(q, p, images.shape[1:3]),
    ).raise_if_failed()


@given(
    vocab=st.integers(1, 8),
    dim=st.integers(1, 4),
    ids_shape=st.lists(st.integers(1, 4), min_size=0, max_size=2),
    tokens=st.integers(1, 6),
    take=st.integers(1, 6),
    dtype=dtypes,
    seed=st.integers(0, 2**16),
)
def test_gather_ops_random_shapes(vocab, dim, ids_shape, tokens, take, dtype, seed):
    import jax

    rng = np.random.default_rng(seed)
    table = arr(rng, (vocab, dim), dtype)
    ids = jnp.asarray(rng.integers(0, vocab, size=ids_shape), jnp.int32)  # repeats likely
    check_vjp(
        F.embedding, table, ids, reference=lambda t, i: jax.nn.one_hot(i, vocab, dtype=t.dtype) @ t
    ).raise_if_failed()
    x = arr(rng, (2, tokens, dim), dtype)
    idx = jnp.asarray(rng.integers(0, tokens, size=(2, take)), jnp.int32)
    check_vjp(
        F.take_tokens,
        x,
        idx,
        reference=lambda x, i: jnp.einsum("nkl,nld->nkd", jax.nn.one_hot(i, tokens, dtype=x.dtype), x),
    ).raise_if_failed()
