"""Tests for jdlfs.gradcheck: the checker must accept right rules and reject wrong ones."""

from __future__ import annotations

import argparse
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jdlfs.functional as F
from jdlfs.cli import build_parser
from jdlfs.gradcheck import (
    TOLERANCES,
    VJPReport,
    check_vjp,
    custom_vjp_count,
    format_table,
    strip_custom_vjp,
)

pytestmark = pytest.mark.x64  # float64 checks and finite differences

# ---------------------------------------------------------------------------
# Hand-written custom_vjp ops used as fixtures (correct and deliberately wrong)
# ---------------------------------------------------------------------------


def make_sin(scale: float = 1.0):
    """sin with a hand VJP multiplied by ``scale`` (scale=1: correct)."""

    @jax.custom_vjp
    def sin(x):
        return jnp.sin(x)

    def fwd(x):
        return jnp.sin(x), jnp.cos(x)

    def bwd(cos_x, g):
        return (scale * g * cos_x,)

    sin.defvjp(fwd, bwd)
    return sin


def make_mul(drop_w: bool = False):
    """y = x * w with w broadcast over the leading axis; x: (n, d), w: (d,)."""

    @jax.custom_vjp
    def mul(x, w):
        return x * w

    def fwd(x, w):
        return x * w, (x, w)

    def bwd(res, g):
        x, w = res
        gw = jnp.zeros_like(w) if drop_w else jnp.sum(g * x, axis=0)
        return g * w, gw

    mul.defvjp(fwd, bwd)
    return mul


def make_norm(wrong_mean_cotangent: bool = False):
    """Batch-norm-style normalization returning a tuple (y, mean, var).

    y = (x - m) / sqrt(v + eps), m = mean(x, 0), v = var(x, 0).  The wrong
    variant ignores the cotangent of the *second* output (mean) only.
    """
    eps = 1e-3

    @jax.custom_vjp
    def norm(x):
        m = jnp.mean(x, axis=0)
        v = jnp.var(x, axis=0)
        return (x - m) * lax.rsqrt(v + eps), m, v

    def fwd(x):
        m = jnp.mean(x, axis=0)
        v = jnp.var(x, axis=0)
        rstd = lax.rsqrt(v + eps)
        xhat = (x - m) * rstd
        return (xhat, m, v), (xhat, rstd, x - m)

    def bwd(res, cts):
        xhat, rstd, xc = res
        gy, gm, gv = cts
        n = xhat.shape[0]
        gx = rstd * (gy - jnp.mean(gy, axis=0) - xhat * jnp.mean(gy * xhat, axis=0))
        if not wrong_mean_cotangent:
            gx = gx + gm / n
        gx = gx + gv * 2.0 * xc / n
        return (gx,)

    norm.defvjp(fwd, bwd)
    return norm


def make_center(bug: str | None = None):
    """Batch-norm-style centering y = x - mean(x).

    bug=None: correct rule ``g - mean(g)``; "return_g": the rule forgets the
    ``- mean(g)`` term; "zero": the rule returns 0 ("centering has no
    gradient").
    """

    @jax.custom_vjp
    def center(x):
        return x - jnp.mean(x)

    def fwd(x):
        return center(x), None

    def bwd(_, g):
        if bug == "return_g":
            return (g,)
        if bug == "zero":
            return (jnp.zeros_like(g),)
        return (g - jnp.mean(g),)

    center.defvjp(fwd, bwd)
    return center


def make_standardize(drop_projection: bool = False):
    """y = (x - mean(x)) / std(x) over axis 0 (batch norm without affine/eps).

    The buggy rule forgets the ``- xhat * mean(g * xhat)`` projection term.
    """

    @jax.custom_vjp
    def standardize(x):
        xc = x - jnp.mean(x, axis=0)
        return xc * lax.rsqrt(jnp.mean(xc * xc, axis=0))

    def fwd(x):
        xc = x - jnp.mean(x, axis=0)
        rstd = lax.rsqrt(jnp.mean(xc * xc, axis=0))
        return xc * rstd, (xc * rstd, rstd)

    def bwd(res, g):
        xhat, rstd = res
        gx = g - jnp.mean(g, axis=0)
        if not drop_projection:
            gx = gx - xhat * jnp.mean(g * xhat, axis=0)
        return (rstd * gx,)

    standardize.defvjp(fwd, bwd)
    return standardize


@jax.custom_vjp
def nll(logits, labels):
    """Mean negative log-likelihood; integer labels get a None cotangent."""
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1))


def _nll_fwd(logits, labels):
    p = jax.nn.softmax(logits)
    return nll(logits, labels), (p, labels)


def _nll_bwd(res, g):
    p, labels = res
    onehot = jax.nn.one_hot(labels, p.shape[1], dtype=p.dtype)
    return (g * (p - onehot) / p.shape[0], None)


nll.defvjp(_nll_fwd, _nll_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def dropout(x, key, rate):
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0)


def _dropout_fwd(x, key, rate):
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0), keep


def _dropout_bwd(rate, keep, g):
    return (jnp.where(keep, g / (1.0 - rate), 0.0), None)


dropout.defvjp(_dropout_fwd, _dropout_bwd)


def _inputs(dtype, *shapes, seed=0):
    # numpy RNG: no per-shape XLA compilation of jax.random, keeps the suite fast
    rng = np.random.default_rng(seed)
    return [jnp.asarray(rng.standard_normal(s), dtype) for s in shapes]


DTYPES = ["float32", "float64"]


@pytest.fixture(params=DTYPES)
def dtype(request):
    """Run the test body at this dtype, with x64 enabled for float64."""
    with jax.enable_x64(request.param == "float64"):
        yield jnp.dtype(request.param)


# ---------------------------------------------------------------------------
# Correct rules pass
# ---------------------------------------------------------------------------


def test_correct_sin_passes(dtype):
    (x,) = _inputs(dtype, (3, 5))
    sin = make_sin()
    assert custom_vjp_count(sin, x) == 1
    r = check_vjp(sin, x, reference=jnp.sin, name="sin")
    r.raise_if_failed()
    assert r.args[0].dtype == dtype.name
    assert r.args[0].autodiff_ok and r.args[0].fd_ok and r.args[0].reference_ok
    assert r.worst["fd"] < TOLERANCES["fd"]
    assert r.worst["autodiff"] <= TOLERANCES[dtype.name]["autodiff"]


def test_correct_broadcasting_mul_passes(dtype):
    x, w = _inputs(dtype, (4, 3), (3,))
    r = check_vjp(make_mul(), x, w, reference=lambda x, w: x * w)
    r.raise_if_failed()
    assert [a.kind for a in r.args] == ["float", "float"]
    assert all(a.fd_ok for a in r.args)


def test_correct_tuple_output_passes(dtype):
    (x,) = _inputs(dtype, (6, 3))

    def ref(x):
        m = jnp.mean(x, axis=0)
        v = jnp.var(x, axis=0)
        return (x - m) / jnp.sqrt(v + 1e-3), m, v

    r = check_vjp(make_norm(), x, reference=ref, name="norm")
    r.raise_if_failed()
    assert len(r.outputs) == 3
    assert all(o.stripped_ok and o.reference_ok for o in r.outputs)


def test_pytree_output_with_integer_leaf():
    @jax.custom_vjp
    def top1(x):
        return {"value": jnp.max(x, axis=-1), "index": jnp.argmax(x, axis=-1)}

    def fwd(x):
        out = top1(x)
        return out, (out["index"], x.shape[-1])

    def bwd(res, g):
        index, n = res
        return (jax.nn.one_hot(index, n, dtype=g["value"].dtype) * g["value"][:, None],)

    top1.defvjp(fwd, bwd)
    (x,) = _inputs(jnp.float32, (3, 5))
    r = check_vjp(top1, x, reference=lambda x: {"value": x.max(-1), "index": x.argmax(-1)})
    r.raise_if_failed()
    assert sorted(o.path for o in r.outputs) == ["['index']", "['value']"]


def test_low_precision_dtypes_use_their_tolerances():
    for dt in (jnp.float16, jnp.bfloat16):
        (x,) = _inputs(dt, (8,))
        r = check_vjp(make_sin(), x, reference=jnp.sin)
        r.raise_if_failed()
        assert r.args[0].dtype == jnp.dtype(dt).name


# ---------------------------------------------------------------------------
# Wrong rules fail (a) and (b), and the report names the failing argument
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scale, dtype",
    [(-1.0, "float32"), (1.001, "float32"), (1.001, "float64")],
    ids=["wrong-sign-f32", "factor-1.001-f32", "factor-1.001-f64"],
)
def test_wrong_sin_fails(scale, dtype):
    with jax.enable_x64(dtype == "float64"):
        _check_wrong_sin(scale, jnp.dtype(dtype))


def _check_wrong_sin(scale, dtype):
    (x,) = _inputs(dtype, (3, 5))
    r = check_vjp(make_sin(scale), x, reference=jnp.sin)
    assert not r.passed
    a = r.args[0]
    assert a.autodiff_ok is False and a.fd_ok is False and a.reference_ok is False
    assert a.autodiff_rel == pytest.approx(abs(scale - 1.0), rel=1e-2)
    # the forward itself is right
    assert all(o.stripped_ok and o.reference_ok for o in r.outputs)
    assert "argument 0 FAILED" in str(r)
    with pytest.raises(AssertionError, match="argument 0 FAILED"):
        r.raise_if_failed()


def test_dropped_gradient_for_second_arg_fails_and_names_it():
    x, w = _inputs(jnp.float32, (4, 3), (3,))
    r = check_vjp(make_mul(drop_w=True), x, w)
    assert not r.passed
    assert r.args[0].passed  # the gradient w.r.t. x is right
    assert r.args[1].autodiff_ok is False and r.args[1].fd_ok is False
    s = str(r)
    assert "argument 1 FAILED" in s and "argument 0 FAILED" not in s


def test_wrong_only_in_second_output_cotangent_fails():
    (x,) = _inputs(jnp.float32, (6, 3))
    r = check_vjp(make_norm(wrong_mean_cotangent=True), x)
    assert not r.passed
    assert r.args[0].autodiff_ok is False and r.args[0].fd_ok is False
    # with a cotangent on y only, the wrong rule would be indistinguishable
    norm_wrong, norm_ok = make_norm(True), make_norm(False)
    gy = jax.random.normal(jax.random.key(3), x.shape, x.dtype)
    cts = (gy, jnp.zeros(3, x.dtype), jnp.zeros(3, x.dtype))
    chex.assert_trees_all_close(jax.vjp(norm_wrong, x)[1](cts), jax.vjp(norm_ok, x)[1](cts), rtol=1e-5, atol=0)


def test_nan_gradient_fails():
    @jax.custom_vjp
    def f(x):
        return 2.0 * x

    f.defvjp(lambda x: (2.0 * x, None), lambda _, g: (g * jnp.nan,))
    r = check_vjp(f, jnp.ones(3))
    assert not r.passed and r.args[0].autodiff_ok is False and r.args[0].fd_ok is False
    assert "nan" in str(r)


def test_zero_gradient_op_passes_exactly():
    """A constant-almost-everywhere op (Heaviside step with zero gradient):
    FD of a piecewise-constant phi is exactly 0, so the errors are 0, not 0/0."""

    @jax.custom_vjp
    def step(x):
        return (x > 0).astype(x.dtype)

    step.defvjp(lambda x: (step(x), None), lambda _, g: (jnp.zeros_like(g),))
    x = jnp.asarray([-1.5, -0.5, 0.5, 1.5], jnp.float32)
    r = check_vjp(step, x)
    r.raise_if_failed()
    assert r.args[0].fd_rel == 0.0 and r.args[0].autodiff_rel == 0.0


def test_tolerance_override():
    (x,) = _inputs(jnp.float32, (5,))
    loose = {"autodiff": 1e-2, "fd": 1e-2}
    assert check_vjp(make_sin(1.001), x, tolerances=loose).passed
    assert check_vjp(make_sin(1.001), x, tolerances={"float32": {"autodiff": 1e-2}, "fd": 1e-2}).passed
    assert TOLERANCES["float32"]["autodiff"] == 1e-5  # defaults untouched


# ---------------------------------------------------------------------------
# Reference check (c)
# ---------------------------------------------------------------------------


def test_reference_with_different_forward_is_detected():
    (x,) = _inputs(jnp.float32, (3, 5))
    r = check_vjp(make_sin(), x, reference=lambda x: jnp.sin(x) + 1e-3)
    assert not r.passed
    assert r.outputs[0].stripped_ok  # fn's own forward is consistent ...
    assert r.outputs[0].reference_ok is False  # ... but disagrees with the reference
    assert r.args[0].autodiff_ok and r.args[0].fd_ok and r.args[0].reference_ok

    r2 = check_vjp(make_sin(), x, reference=lambda x: jnp.sin(1.01 * x))
    assert not r2.passed and r2.args[0].reference_ok is False


def test_reference_with_different_structure_is_an_error():
    (x,) = _inputs(jnp.float32, (6, 3))
    r = check_vjp(make_norm(), x, reference=lambda x: x)
    assert not r.passed and r.errors


# ---------------------------------------------------------------------------
# strip_custom_vjp / custom_vjp_count
# ---------------------------------------------------------------------------


def test_strip_custom_vjp_nested_in_jit_and_scan():
    bad_sin = make_sin(scale=-3.0)  # deliberately wrong bwd

    def fn(x):
        y = jax.jit(bad_sin)(x)  # inside jit

        def body(c, xi):
            return c + bad_sin(xi), None  # inside scan

        c, _ = lax.scan(body, jnp.zeros((), x.dtype), x)
        return jnp.sum(y * x) + c

    def plain(x):
        return jnp.sum(jnp.sin(x) * x) + jnp.sum(jnp.sin(x))

    x = jnp.linspace(0.1, 1.0, 5)
    analytic = jnp.cos(x) * x + jnp.sin(x) + jnp.cos(x)
    np.testing.assert_allclose(jax.grad(strip_custom_vjp(fn))(x), analytic, rtol=1e-6)
    np.testing.assert_allclose(jax.grad(plain)(x), analytic, rtol=1e-6)
    assert not np.allclose(jax.grad(fn)(x), analytic)  # the bad rule is really used
    np.testing.assert_allclose(strip_custom_vjp(fn)(x), fn(x), rtol=1e-6)

    assert custom_vjp_count(plain, x) == 0
    assert custom_vjp_count(fn, x) == 2
    assert custom_vjp_count(strip_custom_vjp(fn), x) == 0
    # and check_vjp sees through both levels of nesting
    r = check_vjp(fn, x)
    assert r.custom_vjp_calls == 2 and r.unstripped_custom_vjp_calls == 0
    assert not r.passed


def test_strip_custom_vjp_cond_remat_custom_jvp_and_nested_custom_vjp():
    bad_sin = make_sin(scale=-1.0)

    @jax.custom_vjp
    def outer(x):  # custom op whose primal calls another custom op
        return 2.0 * bad_sin(x)

    outer.defvjp(lambda x: (outer(x), None), lambda _, g: (g,))

    @jax.custom_jvp
    def cj(x):
        return bad_sin(x)

    cj.defjvp(lambda p, t: (cj(p[0]), t[0]))

    def fn(x):
        a = lax.cond(x[0] > 0, bad_sin, lambda v: v, x)
        b = jax.checkpoint(bad_sin)(x)
        return a + b + outer(x) + cj(x) + jax.nn.relu(x)

    x = jnp.linspace(0.1, 1.0, 5)
    assert custom_vjp_count(fn, x) == 5
    assert custom_vjp_count(strip_custom_vjp(fn), x) == 0
    expected = 5.0 * jnp.cos(x) + 1.0
    np.testing.assert_allclose(jax.grad(lambda v: jnp.sum(strip_custom_vjp(fn)(v)))(x), expected, rtol=1e-6)
    # the stripped function composes with jit and vmap
    np.testing.assert_allclose(jax.jit(strip_custom_vjp(fn))(x), fn(x), rtol=1e-6)
    np.testing.assert_allclose(jax.vmap(strip_custom_vjp(fn))(x[None])[0], fn(x), rtol=1e-6)


def test_strip_custom_vjp_preserves_pytrees_and_static_args():
    def fn(d, n):
        return {"y": make_sin()(d["x"]) * n, "n": n}, [d["x"]]

    d = {"x": jnp.ones(3)}
    out = strip_custom_vjp(fn)(d, 3)
    ref = fn(d, 3)
    chex.assert_trees_all_close(out, ref)  # same structure, same leaves
    assert custom_vjp_count(fn, d, 3) == 1


# ---------------------------------------------------------------------------
# Non-differentiable arguments
# ---------------------------------------------------------------------------


def test_integer_labels_are_held_fixed():
    (logits,) = _inputs(jnp.float32, (4, 5))
    labels = jnp.array([0, 3, 1, 4], dtype=jnp.int32)

    def ref(logits, labels):
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(4), labels])

    r = check_vjp(nll, logits, labels, reference=ref)
    r.raise_if_failed()
    lab = r.args[1]
    assert lab.kind == "int" and lab.zero_cotangent_ok is True
    assert lab.autodiff_rel is None and lab.fd_rel is None  # not differentiated
    assert "held fixed" in str(r)


def test_prng_key_and_static_args_are_held_fixed():
    (x,) = _inputs(jnp.float32, (4, 6))
    for key in (jax.random.key(1), jax.random.PRNGKey(1)):
        r = check_vjp(dropout, x, key, 0.5)
        r.raise_if_failed()
        assert [a.kind for a in r.args] == ["float", "key" if key.ndim == 0 else "int", "static"]
        assert r.args[1].zero_cotangent_ok is True


def test_pytree_argument_is_rejected():
    with pytest.raises(TypeError, match="pytree"):
        check_vjp(lambda t: make_sin()(t[0]), (jnp.ones(3),))


# ---------------------------------------------------------------------------
# The sum(out) pitfall
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make_wrong, make_right, shape",
    [
        (lambda: make_center("zero"), make_center, (6,)),
        (lambda: make_standardize(drop_projection=True), make_standardize, (5, 3)),
    ],
    ids=["center-zero-grad", "standardize-no-projection"],
)
def test_random_cotangents_avoid_the_sum_pitfall(make_wrong, make_right, shape):
    (x,) = _inputs(jnp.float32, shape)
    wrong, right = make_wrong(), make_right()
    # A naive check with cotangent = ones (i.e. grad of sum(out)) is fooled:
    # the true gradient of sum(out) is zero and so is the wrong rule's.
    ones = jnp.ones(shape, jnp.float32)
    g_wrong = jax.vjp(wrong, x)[1](ones)[0]
    g_auto = jax.vjp(strip_custom_vjp(wrong), x)[1](ones)[0]
    np.testing.assert_allclose(g_auto, 0.0, atol=1e-5)
    np.testing.assert_allclose(g_wrong, g_auto, atol=1e-5)
    # random cotangents catch it; the correct rule passes
    check_vjp(right, x).raise_if_failed()
    r = check_vjp(wrong, x)
    assert not r.passed and r.args[0].autodiff_ok is False and r.args[0].fd_ok is False


def test_centering_rule_missing_mean_term_is_caught():
    # Note: this bug is *not* hidden by cotangent = ones (the wrong rule gives
    # ones where the truth is zero); the hidden variants are tested above.
    x = jnp.linspace(-1.0, 2.0, 6)
    r = check_vjp(make_center("return_g"), x)
    assert not r.passed and r.args[0].autodiff_ok is False and r.args[0].fd_ok is False
    check_vjp(make_center(), x).raise_if_failed()


# ---------------------------------------------------------------------------
# Report rendering
# ---------------------------------------------------------------------------


def test_as_row_and_format_table():
    (x,) = _inputs(jnp.float32, (3,))
    good = check_vjp(make_sin(), x, reference=jnp.sin, name="sin", config="n=3")
    bad = check_vjp(make_sin(-1.0), x, name="bad_sin", config="n=3")
    row = good.as_row()
    assert set(row) == {"op", "config", "vs_autodiff", "vs_fd", "vs_reference", "passed"}
    assert row["op"] == "sin" and row["config"] == "n=3" and row["passed"] is True
    assert bad.as_row()["vs_reference"] is None and bad.as_row()["passed"] is False
    assert isinstance(good, VJPReport)

    table = format_table([good, bad])
    lines = table.splitlines()
    assert len(lines) == 4
    assert "op" in lines[0] and "configuration" in lines[0] and "reference" in lines[0]
    assert lines[2].split()[0] == "sin" and lines[2].rstrip().endswith("pass")
    assert lines[3].split()[0] == "bad_sin" and lines[3].rstrip().endswith("FAIL")
    assert "-" in lines[3].split()  # no reference
    assert f"{bad.worst['autodiff']:.1e}" in lines[3]
    assert len({len(line) for line in lines[:2]}) == 1  # aligned header/rule
    # the float64 finite-difference check leaves the global x64 flag as it was
    assert jnp.ones(1).dtype == (jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)


def test_ill_conditioned_float32_gradient_is_judged_by_accuracy_not_relative_error():
    """A 1x1 RNN weight: its gradient is a short sum cancelling to ~1e-3, so
    every float32 implementation is off by ~1e-5 relative. The rule (exact in
    float64, per finite differences) passes on accuracy vs the float64 truth;
    a rule with a small wrong factor still fails."""
    import jdlfs.functional as F
    from jdlfs.op_cases import _ref_rnn

    rng = np.random.default_rng(0)
    arr = lambda shape, scale=1.0: jnp.asarray(scale * rng.standard_normal(shape), jnp.float32)  # noqa: E731
    args = (arr((2, 2, 1)), arr((2, 1)), arr((1, 1), 0.5), arr((1, 1), 0.4), arr((1,), 0.1))
    report = check_vjp(F.rnn, *args, reference=_ref_rnn)
    assert report.args[2].autodiff_rel > 1e-5  # the plain relative test would fail
    assert report.args[2].accepted_by_accuracy  # ... accepted on accuracy instead
    assert report.passed and "accepted: as accurate vs float64" in str(report)

    @jax.custom_vjp
    def matmul(x, w):
        return x @ w

    matmul.defvjp(lambda x, w: (x @ w, (x, w)), lambda res, g: (g @ res[1].T, (res[0].T @ g) * 1.00003))
    bad = check_vjp(matmul, arr((4, 3)), arr((3, 2)))
    assert not bad.passed and not bad.args[1].accepted_by_accuracy


# ---------------------------------------------------------------------------
# A real op's rule under jax.jit and without (chex variants)
# ---------------------------------------------------------------------------


def _batch_norm_reference(x, gamma, beta, eps=1e-5):
    """Training-mode batch norm in plain jnp (differentiated by JAX's autodiff)."""
    mean, var = jnp.mean(x, axis=0), jnp.var(x, axis=0)
    return (x - mean) / jnp.sqrt(var + eps) * gamma + beta, mean, var


class BatchNormRuleUnderJitTest(chex.TestCase):
    """``F.batch_norm``'s hand rule gives the autodiff gradient traced under ``jax.jit`` and run eagerly.

    ``chex.variants`` runs the test body twice, with ``self.variant`` = ``jax.jit`` and = no jit.
    """

    @chex.variants(with_jit=True, without_jit=True)
    def test_batch_norm_gradient_same_with_and_without_jit(self):
        rng = np.random.default_rng(0)
        x, gamma, beta = (jnp.asarray(rng.standard_normal(s), jnp.float32) for s in [(16, 5), (5,), (5,)])
        # one random cotangent per output (y, mean, var): every term of the rule counts
        cts = tuple(jnp.asarray(rng.standard_normal(s), jnp.float32) for s in [(16, 5), (5,), (5,)])

        def loss(bn):
            return lambda x, g, b: sum(jnp.vdot(c, o) for c, o in zip(cts, bn(x, g, b)))

        assert custom_vjp_count(loss(F.batch_norm), x, gamma, beta) == 1  # jax.grad runs the hand rule
        hand = jax.grad(loss(F.batch_norm), argnums=(0, 1, 2))
        grads = self.variant(hand)(x, gamma, beta)
        expected = jax.grad(loss(_batch_norm_reference), argnums=(0, 1, 2))(x, gamma, beta)
        chex.assert_trees_all_close(grads, expected, rtol=1e-4, atol=1e-5)
        chex.assert_trees_all_close(grads, hand(x, gamma, beta), rtol=1e-6, atol=1e-6)  # jit == eager
        chex.assert_tree_all_finite(grads)


# ---------------------------------------------------------------------------
# The `jdlfs check` command line
# ---------------------------------------------------------------------------


def test_cli_help_documents_every_option_and_states_each_default_once():
    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for p in [parser, *commands.choices.values()]:
        for action in p._actions:
            assert action.help, f"{p.prog} {action.option_strings or action.dest}: no help text"
            shown = action.help % dict(vars(action), prog=p.prog)  # as argparse expands it
            assert shown.count("default") <= 1, f"{p.prog} {action.option_strings}: {shown!r}"
        text = p.format_help()
        assert "(default: None)" not in text and "%(default)" not in text
    check_help = " ".join(commands.choices["check"].format_help().split())  # undo line wrapping
    assert check_help.count("(default: both)") == 1 and check_help.count("(default: 0)") == 1
    args = parser.parse_args(["check", "--op", "linear", "--op", "relu", "--dtype", "float32"])
    assert args.op == ["linear", "relu"] and args.dtype == "float32" and args.seed == 0
