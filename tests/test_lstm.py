"""The hand-derived LSTM (jdlfs.functional.lstm): its BPTT rule checked three ways, the rule
really used, reverse-over-reverse, jit/vmap, low precision, gate layout and bad input."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jdlfs.functional as F
from jdlfs.gradcheck import TOLERANCES, check_vjp, custom_vjp_count, strip_custom_vjp

# (B, T, D, H): a typical case, a single step, all-ones sizes, wider. Long T: its own test.
SHAPES = [(3, 7, 4, 5), (2, 1, 3, 4), (1, 5, 1, 1), (4, 6, 6, 8)]
SHAPE_IDS = ["B3T7D4H5", "T1", "B1T5D1H1", "B4T6D6H8"]
LONG = (2, 64, 3, 4)
# The typical and single-step shapes, the long sequence and grad-of-grad are also lstm cases of jdlfs.op_cases,
# which tests/test_functional_catalogue.py checks three ways in the default suite: here those are slow, so the
# default suite runs each check once (the all-ones and wider shapes, here only, stay in it).
ALSO_IN_CATALOGUE = pytest.mark.slow
SHAPE_PARAMS = [
    pytest.param(s, id=i, marks=ALSO_IN_CATALOGUE if i in ("B3T7D4H5", "T1") else ()) for s, i in zip(SHAPES, SHAPE_IDS)
]


def ref_step(h, c, x_t, w_x, w_h, b):
    """One LSTM step written independently: the 4H axis read through a (B, 4, H) reshape as
    four blocks in the documented order i, f, g, o."""
    z = (x_t @ w_x + h @ w_h + b).reshape(h.shape[0], 4, h.shape[1])
    i, f, g, o = jax.nn.sigmoid(z[:, 0]), jax.nn.sigmoid(z[:, 1]), jnp.tanh(z[:, 2]), jax.nn.sigmoid(z[:, 3])
    c = f * c + i * g
    return o * jnp.tanh(c), c


def ref_lstm(x, h0, c0, w_x, w_h, b, step=ref_step):
    """Independent plain-jnp forward: a Python loop over time (no scan, no hoisted projection)."""
    h, c, hs = h0, c0, []
    for x_t in jnp.split(x, x.shape[1], axis=1):
        h, c = step(h, c, x_t[:, 0], w_x, w_h, b)
        hs.append(h)
    return jnp.stack(hs, axis=1), (h, c)


def make_args(b, t, d, hidden, dtype=np.float64, seed=0):
    r = np.random.default_rng(seed)
    shapes = [
        ((b, t, d), 1.0),
        ((b, hidden), 1.0),
        ((b, hidden), 1.0),
        ((d, 4 * hidden), 0.5),
        ((hidden, 4 * hidden), 0.4),
        ((4 * hidden,), 0.1),
    ]
    return tuple(jnp.asarray((s * r.standard_normal(shape)).astype(dtype)) for shape, s in shapes)


def random_cotangents(out, seed=2):
    r = np.random.default_rng(seed)
    return jax.tree.map(lambda o: jnp.asarray(r.standard_normal(o.shape), o.dtype), out)


# ------------------------------------------------------------------ the rule, three ways
@pytest.mark.x64
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPE_PARAMS)
def test_three_way_check(shape, dtype):
    """Random cotangents on hs, h_T and c_T; autodiff with the rule stripped, float64 finite
    differences and the reference loop all agree with the hand rule."""
    args = make_args(*shape, dtype=dtype)
    check_vjp(F.lstm, *args, reference=ref_lstm, name="lstm").raise_if_failed()
    hs, (h_T, c_T) = F.lstm(*args)
    assert hs.shape == shape[:2] + (shape[3],) and h_T.shape == c_T.shape == (shape[0], shape[3])
    assert hs.dtype == h_T.dtype == c_T.dtype == np.dtype(dtype)


@ALSO_IN_CATALOGUE
@pytest.mark.x64
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_three_way_check_long_sequence(dtype):
    """T = 64: check_vjp does (a) autodiff and (b) finite differences; (c) compares with the
    reference loop outside check_vjp, run eagerly with a jitted step -- the same loop
    unrolled into one program takes minutes to compile."""
    args = make_args(*LONG, dtype=dtype)
    check_vjp(F.lstm, *args, name="lstm").raise_if_failed()
    out, vjp = jax.vjp(F.lstm, *args)
    out_r, vjp_r = jax.vjp(functools.partial(ref_lstm, step=jax.jit(ref_step)), *args)
    cts = random_cotangents(out)
    tol = TOLERANCES[np.dtype(dtype).name]["reference"]
    for mine, ref in zip(jax.tree.leaves((out, vjp(cts))), jax.tree.leaves((out_r, vjp_r(cts)))):
        assert mine.dtype == ref.dtype == np.dtype(dtype)
        assert np.linalg.norm(mine - ref) <= tol * np.linalg.norm(ref)


@pytest.mark.parametrize("dtype", [np.float16, jnp.bfloat16])
@pytest.mark.parametrize(
    "shape", [pytest.param(SHAPES[0], id=SHAPE_IDS[0], marks=ALSO_IN_CATALOGUE), pytest.param(LONG, id="T64")]
)
def test_three_way_check_low_precision(shape, dtype):
    """Against float16/bfloat16 tolerances (finite differences still in float64); the reference
    only for short T (compile time, see above)."""
    ref = ref_lstm if shape[1] <= 12 else None
    check_vjp(F.lstm, *make_args(*shape, dtype=dtype), reference=ref, name="lstm").raise_if_failed()


@pytest.mark.x64
def test_each_output_cotangent_alone():
    """A cotangent on one output only (the others zero) reaches every argument as autodiff says:
    the final-state cotangents seed the reverse carry (eh, ec), hs feeds every step."""
    args = make_args(3, 6, 4, 5)

    @jax.jit
    def both(ct):
        return jax.vjp(F.lstm, *args)[1](ct), jax.vjp(strip_custom_vjp(F.lstm), *args)[1](ct)

    hs, (h_T, c_T) = random_cotangents(F.lstm(*args))
    zero = jnp.zeros_like
    for ct in [(hs, (zero(h_T), zero(c_T))), (zero(hs), (h_T, zero(c_T))), (zero(hs), (zero(h_T), c_T))]:
        hand, auto = both(ct)
        for g_hand, g_auto in zip(hand, auto):
            np.testing.assert_allclose(g_hand, g_auto, rtol=1e-10, atol=1e-12)
            assert np.any(g_hand != 0)  # every argument influences every output


def test_uses_its_custom_rule():
    args = make_args(2, 5, 3, 4, dtype=np.float32)
    assert custom_vjp_count(F.lstm, *args) == 1
    assert custom_vjp_count(strip_custom_vjp(F.lstm), *args) == 0
    assert custom_vjp_count(jax.jit(jax.vmap(F.lstm)), *(a[None] for a in args)) == 1


# ------------------------------------------------------------------ reverse over reverse
def _scalarized(fn, args, seed=1):
    """<v, fn(args)> with fixed random cotangents v on hs, h_T and c_T."""
    vs = jax.tree.leaves(random_cotangents(fn(*args), seed))
    return lambda *a: sum(jnp.sum(v * o) for v, o in zip(vs, jax.tree.leaves(fn(*a))))


@ALSO_IN_CATALOGUE
@pytest.mark.x64
def test_grad_of_grad():
    """Reverse-over-reverse through the hand rule: numerically right (check_grads order 2) and
    equal to autodiff-over-autodiff of the same forward with the rule bypassed."""
    shape = (2, 3, 3, 4)
    args = make_args(*shape)
    f = _scalarized(F.lstm, args)
    check_grads(jax.jit(f), args, order=2, modes=["rev"], eps=1e-5)
    plain = _scalarized(strip_custom_vjp(F.lstm), args)
    u = make_args(*shape, seed=5)
    argnums = tuple(range(len(args)))

    def hvp(fun):  # grad of <grad fun, u>: a Hessian-vector product
        def gdotu(*a):
            return sum(jnp.sum(g * w) for g, w in zip(jax.grad(fun, argnums)(*a), u))

        return jax.jit(jax.grad(gdotu, argnums))(*args)

    for a, b in zip(hvp(f), hvp(plain)):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10)


# ------------------------------------------------------------------ jit / vmap
def _close(tol=1e-12):
    return lambda p, q: np.testing.assert_allclose(p, q, rtol=tol, atol=tol)


@pytest.mark.x64
def test_jit_and_vmap_agree():
    a0, a1 = make_args(3, 6, 4, 5, seed=0), make_args(3, 6, 4, 5, seed=1)
    close = _close()
    eager0, eager1 = F.lstm(*a0), F.lstm(*a1)
    jax.tree.map(close, jax.jit(F.lstm)(*a0), eager0)
    batched = jax.jit(jax.vmap(F.lstm))(*(jnp.stack(p) for p in zip(a0, a1)))
    jax.tree.map(lambda b, e: close(b[0], e), batched, eager0)
    jax.tree.map(lambda b, e: close(b[1], e), batched, eager1)


@pytest.mark.x64
def test_per_example_gradients():
    """vmap(grad) over argument sets equals a loop of grads, through the hand rule."""
    sets = [make_args(2, 4, 3, 3, seed=s) for s in range(3)]
    loss = _scalarized(F.lstm, sets[0])
    grad_fn = jax.jit(jax.grad(loss, argnums=tuple(range(6))))
    batched = jax.jit(jax.vmap(grad_fn))(*(jnp.stack(p) for p in zip(*sets)))
    for k, args in enumerate(sets):
        for gb, gl in zip(batched, grad_fn(*args)):
            np.testing.assert_allclose(gb[k], gl, rtol=1e-10, atol=1e-12)


@pytest.mark.x64
def test_windows_with_carried_state_equal_one_long_run():
    """Truncated-BPTT use: two windows, the second started from the first's (h_T, c_T), give
    the same states and weight gradients as one run; gradients cross the border through the
    final-state cotangents and dh0/dc0."""
    x, h0, c0, w_x, w_h, b = make_args(2, 9, 3, 4)

    def split(w_x, w_h, b):
        hs1, (h1, c1) = F.lstm(x[:, :4], h0, c0, w_x, w_h, b)
        hs2, (h2, c2) = F.lstm(x[:, 4:], h1, c1, w_x, w_h, b)
        return jnp.concatenate([hs1, hs2], axis=1), (h2, c2)

    def whole(w_x, w_h, b):
        return F.lstm(x, h0, c0, w_x, w_h, b)

    @functools.partial(jax.jit, static_argnums=0)
    def outputs_and_grads(fn, cts):
        out, vjp = jax.vjp(fn, w_x, w_h, b)
        return out, vjp(cts)

    cts = random_cotangents(whole(w_x, w_h, b))
    jax.tree.map(_close(), outputs_and_grads(split, cts), outputs_and_grads(whole, cts))


def test_structure_zero_cotangent_and_determinism():
    args = make_args(2, 5, 3, 4, dtype=np.float32)
    out, vjp = jax.vjp(F.lstm, *args)
    cts = random_cotangents(out)
    g1, g2 = vjp(cts), vjp(cts)
    assert len(g1) == 6
    for a, g in zip(args, g1):
        assert g.shape == a.shape and g.dtype == a.dtype
    for p, q in zip(g1, g2):
        np.testing.assert_array_equal(p, q)
    for g in vjp(jax.tree.map(jnp.zeros_like, out)):
        np.testing.assert_array_equal(g, np.zeros_like(g))


# ------------------------------------------------------------------ values and layout
@pytest.mark.x64
def test_gate_layout_known_values():
    """x = h0 = 0 so z = b: each block of b drives exactly one gate, in the order i, f, g, o."""
    b_i, b_f, b_g, b_o, c_in = 0.3, -1.2, 0.7, 2.0, 0.9

    def sigmoid(v):
        return 1 / (1 + math.exp(-v))

    c1 = sigmoid(b_f) * c_in + sigmoid(b_i) * math.tanh(b_g)
    h1 = sigmoid(b_o) * math.tanh(c1)
    b = jnp.array([b_i, b_f, b_g, b_o], jnp.float64)
    hs, (h_T, c_T) = F.lstm(
        jnp.zeros((1, 1, 2)), jnp.zeros((1, 1)), jnp.full((1, 1), c_in), jnp.ones((2, 4)), jnp.ones((1, 4)), b
    )
    np.testing.assert_allclose([float(hs[0, 0, 0]), float(h_T[0, 0]), float(c_T[0, 0])], [h1, h1, c1], rtol=1e-14)


@pytest.mark.parametrize("dtype", [np.float16, jnp.bfloat16])
def test_low_precision_forward_close_to_float32(dtype):
    args = make_args(4, 20, 6, 8, dtype=dtype)
    low = F.lstm(*args)
    full = F.lstm(*(a.astype(np.float32) for a in args))  # the same (rounded) inputs
    tol = {np.dtype(np.float16): 1e-2, np.dtype(jnp.bfloat16): 5e-2}[np.dtype(dtype)]
    for lo, hi in zip(jax.tree.leaves(low), jax.tree.leaves(full)):
        assert lo.dtype == np.dtype(dtype)
        np.testing.assert_allclose(np.asarray(lo, np.float32), hi, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [np.float16, jnp.bfloat16])
def test_low_precision_sums_over_time_accumulate_in_float32(dtype):
    """With i = f = o = 1 the cell state is a plain running sum c_T = c_0 + sum_t g_t. Summed in
    float16 it would stall once its spacing exceeds g (at c = 8 for g = 0.003; bfloat16 far
    earlier); summed in float32 it reaches T g. Likewise dW_x, db = sum over all T steps of
    dz_g = 1 (a float16 sum of ones stops at 2048), and the backward carry ec: with g = 0 (so
    c = tanh(c) = 0) a cotangent of 1 on every h_t adds 1 to ec per step, dc_0 = T."""
    t = 4096
    big = 12.0  # sigmoid(12) rounds to 1
    x = jnp.ones((1, t, 1), dtype)
    h0, c0 = jnp.zeros((1, 1), dtype), jnp.zeros((1, 1), dtype)
    w_x, w_h = jnp.zeros((1, 4), dtype), jnp.zeros((1, 4), dtype)
    b = jnp.asarray([big, big, 0.003, big], dtype)
    g = float(jnp.tanh(b[2]))  # g in the input dtype
    hs, (h_T, c_T) = F.lstm(x, h0, c0, w_x, w_h, b)
    np.testing.assert_allclose(float(c_T[0, 0]), t * g, rtol=2e-3)
    _, vjp = jax.vjp(F.lstm, x, h0, c0, w_x, w_h, b)
    _, _, dc0, dw_x, _, db = vjp((jnp.zeros_like(hs), (jnp.zeros_like(h_T), jnp.ones_like(c_T))))
    np.testing.assert_allclose(float(db[2]), t, rtol=1e-3)
    np.testing.assert_allclose(float(dw_x[0, 2]), t, rtol=1e-3)
    assert float(dc0[0, 0]) == 1.0  # dc_0 = gc_T * prod f = 1
    b0 = jnp.asarray([big, big, 0.0, big], dtype)
    out, vjp = jax.vjp(F.lstm, x, h0, c0, w_x, w_h, b0)
    dc0 = vjp((jnp.ones_like(out[0]), jax.tree.map(jnp.zeros_like, out[1])))[2]
    np.testing.assert_allclose(float(dc0[0, 0]), t, rtol=1e-3)


# ------------------------------------------------------------------ bad input
def _ok(**over):
    a = {
        "x": jnp.ones((2, 5, 3)),
        "h0": jnp.ones((2, 4)),
        "c0": jnp.ones((2, 4)),
        "w_x": jnp.ones((3, 16)),
        "w_h": jnp.ones((4, 16)),
        "b": jnp.ones(16),
        **over,
    }
    return lambda: F.lstm(**a)


BAD_INPUTS = [
    (_ok(x=jnp.ones((2, 3))), ValueError, r"x must have rank 3 \(B, T, D\)"),
    (_ok(x=jnp.ones((2, 0, 3))), ValueError, r"x must hold at least one time step \(T >= 1\)"),
    (_ok(w_h=jnp.ones((4, 4))), ValueError, r"w_h must have shape \(4, 16\) \(\(H, 4H\)"),
    (_ok(w_x=jnp.ones((2, 16))), ValueError, r"w_x must have shape \(3, 16\)"),
    (_ok(w_x=jnp.ones((3, 12))), ValueError, r"w_x must have shape \(3, 16\)"),
    (_ok(b=jnp.ones(4)), ValueError, r"b must have shape \(16,\)"),
    (_ok(b=jnp.ones((1, 16))), ValueError, r"b must have rank 1 \(4H,\)"),
    (_ok(h0=jnp.ones((3, 4))), ValueError, r"h0 must have shape \(2, 4\)"),
    (_ok(c0=jnp.ones((2, 5))), ValueError, r"c0 must have shape \(2, 4\)"),
    (_ok(c0=jnp.ones(4)), ValueError, r"c0 must have rank 2 \(B, H\)"),
    (_ok(x=jnp.ones((2, 5, 3), jnp.int32)), TypeError, "x must have a floating-point dtype"),
    (_ok(c0=np.ones((2, 4), np.uint8)), TypeError, "c0 must have a floating-point dtype"),
    (_ok(w_h=jnp.ones((4, 16), jnp.float16)), TypeError, "share one floating dtype.*w_h: float16"),
    (_ok(x="abc"), TypeError, "x must be a floating-point array"),
]


@pytest.mark.parametrize("call, exc, match", BAD_INPUTS, ids=[str(i) for i in range(len(BAD_INPUTS))])
def test_bad_input_is_refused_naming_the_argument(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
