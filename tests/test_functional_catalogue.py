"""Every catalogued op configuration, checked three ways and for the contract
every hand-written rule must keep (jit, vmap, per-example grads, grad-of-grad,
gradient structure, zero cotangent, determinism, custom rule in use)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jdlfs.functional as F
from jdlfs.gradcheck import check_vjp, custom_vjp_count, strip_custom_vjp
from jdlfs.op_cases import CASES

pytestmark = pytest.mark.x64  # float64 checks and finite differences

IDS = [c.name for c in CASES]
# The contract tests below (jit/vmap, per-example, grad-of-grad, structure) run on
# the first configuration of each op; the three-way check covers every configuration.
ONE_PER_OP = list({c.op: c for c in reversed(CASES)}.values())[::-1]
OP_IDS = [c.name for c in ONE_PER_OP]
RULELESS = {"split_heads", "merge_heads", "causal_mask"}  # reshapes / constants, no rule


def _args(case, dtype=np.float64, seed=0):
    return tuple(jnp.asarray(a) for a in case.make_args(np.random.default_rng(seed), np.dtype(dtype)))


def _is_float(a):
    return jnp.issubdtype(a.dtype, jnp.floating)


def _scalarized(case, args, seed=1):
    """(float args) -> <v, fn(args)> with a fixed random cotangent v; other args closed over."""
    fidx = [i for i, a in enumerate(args) if _is_float(a)]
    outs = jax.tree.leaves(case.fn(*args))
    rng = np.random.default_rng(seed)
    vs = [jnp.asarray(rng.standard_normal(o.shape), o.dtype) for o in outs]

    def full(fargs, fn=case.fn):
        a = list(args)
        for i, x in zip(fidx, fargs):
            a[i] = x
        return sum(jnp.sum(v * o) for v, o in zip(vs, jax.tree.leaves(fn(*a))))

    return full, [args[i] for i in fidx]


def test_catalogue_covers_every_public_op():
    assert set(F.__all__) - RULELESS == {c.op for c in CASES}


@pytest.mark.parametrize(
    "case, dtype",
    [
        # the float64 long sequence (T=32, ~15 s) is slow; its float32 twin and every other case run by default
        pytest.param(
            c, d, id=f"{i}-{np.dtype(d).name}", marks=pytest.mark.slow if "long" in i and d is np.float64 else ()
        )
        for d in (np.float32, np.float64)
        for c, i in zip(CASES, IDS)
    ],
)
def test_three_way_check(case, dtype):
    args = _args(case, dtype)
    report = check_vjp(case.fn, *args, reference=case.reference, name=case.name)
    report.raise_if_failed()
    for out in jax.tree.leaves(case.fn(*args)):
        assert out.dtype == np.dtype(dtype), f"{case.name} changed dtype to {out.dtype}"


@pytest.mark.parametrize("dtype", [np.float16, jnp.bfloat16])
@pytest.mark.parametrize("case", ONE_PER_OP, ids=OP_IDS)
def test_three_way_check_low_precision(case, dtype):
    """float16/bfloat16 against their own (looser) tolerances; FD still in float64."""
    args = _args(case, dtype)
    check_vjp(case.fn, *args, reference=case.reference, name=case.name).raise_if_failed()


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_uses_its_custom_rule(case):
    assert custom_vjp_count(case.fn, *_args(case)) >= 1


@pytest.mark.parametrize("case", ONE_PER_OP, ids=OP_IDS)
def test_jit_and_vmap_agree(case):
    a0, a1 = _args(case, seed=0), _args(case, seed=1)
    eager = case.fn(*a0)
    close = lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-12)  # noqa: E731
    jax.tree.map(close, jax.jit(case.fn)(*a0), eager)
    stacked = tuple(jnp.stack([x, y]) for x, y in zip(a0, a1))
    batched = jax.vmap(case.fn)(*stacked)
    jax.tree.map(lambda b, e: close(b[0], e), batched, eager)
    jax.tree.map(lambda b, e: close(b[1], e), batched, case.fn(*a1))


@pytest.mark.parametrize("case", ONE_PER_OP, ids=OP_IDS)
def test_per_example_gradients(case):
    """vmap(grad) over a batch of argument sets equals a loop of grads."""
    sets = [_args(case, seed=s) for s in range(3)]
    full0, _ = _scalarized(case, sets[0])
    fidx = [i for i, a in enumerate(sets[0]) if _is_float(a)]

    def loss(*args):
        f, fa = _scalarized(case, args)
        return f(fa)

    grad_fn = jax.jit(jax.grad(loss, argnums=tuple(fidx)))
    batched = jax.jit(jax.vmap(grad_fn))(*(jnp.stack(xs) for xs in zip(*sets)))
    for k, args in enumerate(sets):
        for gb, gl in zip(batched, grad_fn(*args)):
            np.testing.assert_allclose(gb[k], gl, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", ONE_PER_OP, ids=OP_IDS)
def test_grad_of_grad(case):
    """Reverse-over-reverse: numerically right (check_grads order 2) and equal
    to autodiff-over-autodiff of the same forward with the rule bypassed.
    (Forward mode is impossible through a custom_vjp.)"""
    args = _args(case)
    f, fargs = _scalarized(case, args)
    check_grads(jax.jit(lambda *a: f(a)), fargs, order=2, modes=["rev"], eps=1e-5)
    plain, _ = _scalarized(case, args)
    stripped = strip_custom_vjp(case.fn)
    g_hand = lambda *a: jax.grad(lambda b: f(b))(a)  # noqa: E731
    g_auto = lambda *a: jax.grad(lambda b: plain(b, fn=stripped))(a)  # noqa: E731
    u = [jnp.asarray(np.random.default_rng(5).standard_normal(a.shape)) for a in fargs]
    argnums = tuple(range(len(fargs)))
    hv_hand = jax.jit(jax.grad(lambda *a: sum(jnp.sum(x * y) for x, y in zip(g_hand(*a), u)), argnums=argnums))(*fargs)
    hv_auto = jax.jit(jax.grad(lambda *a: sum(jnp.sum(x * y) for x, y in zip(g_auto(*a), u)), argnums=argnums))(*fargs)
    for a, b in zip(hv_hand, hv_auto):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("case", ONE_PER_OP, ids=OP_IDS)
def test_gradient_structure_zero_cotangent_and_determinism(case):
    args = _args(case, np.float32)
    out, vjp = jax.vjp(case.fn, *args)
    cts = jax.tree.map(lambda o: jnp.asarray(np.random.default_rng(2).standard_normal(o.shape), o.dtype), out)
    g1, g2 = vjp(cts), vjp(cts)
    assert len(g1) == len(args)
    for a, g in zip(args, g1):
        if _is_float(a):
            assert g.shape == a.shape and g.dtype == a.dtype
        else:  # ids / labels / masks: no cotangent
            assert g.dtype == jax.dtypes.float0 and g.shape == a.shape
    for x, y in zip(g1, g2):  # two backward passes, bit-identical
        np.testing.assert_array_equal(x, y)
    zeros = vjp(jax.tree.map(jnp.zeros_like, out))
    for a, g in zip(args, zeros):
        if _is_float(a):
            np.testing.assert_array_equal(g, np.zeros_like(g))
