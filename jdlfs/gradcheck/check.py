"""check_vjp: run checks (a) autodiff, (b) finite differences, (c) reference, and grade them."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from .numerical import (
    _TINY,
    _compare,
    _dtype_tol,
    _fd_check,
    _fwd_compare,
    _fwd_tol,
    _is_float0,
    _np64,
    _random_cotangent,
    _resolve_tolerances,
    _rounding_envelope,
    _within,
    _zero_cotangent,
)
from .report import ArgResult, OutputResult, VJPReport, _fmt_aval
from .strip import _is_dynamic_leaf, custom_vjp_count, strip_custom_vjp


def _classify(i: int, a) -> str:
    if _is_dynamic_leaf(a):
        dt = a.dtype
        if jax.dtypes.issubdtype(dt, jax.dtypes.prng_key):
            return "key"
        if jnp.issubdtype(dt, jnp.floating):
            return "float"
        if jnp.issubdtype(dt, jnp.integer) or jnp.issubdtype(dt, jnp.bool_):
            return "int"
        raise NotImplementedError(f"check_vjp: argument {i} has unsupported dtype {dt}")
    if not any(_is_dynamic_leaf(x) for x in jax.tree_util.tree_leaves(a)):
        return "static"
    raise TypeError(
        f"check_vjp: argument {i} is a pytree ({type(a).__name__}) containing arrays; only "
        "positional array arguments are supported -- flatten it or bind it with functools.partial"
    )


def _default_name(fn) -> str:
    while isinstance(fn, functools.partial):
        fn = fn.func
    return getattr(fn, "__name__", type(fn).__name__)


def _default_config(args) -> str:
    parts = []
    for a in args:
        if _is_dynamic_leaf(a):
            parts.append(_fmt_aval(np.shape(a), a.dtype))
        else:
            parts.append(repr(a))
    return ", ".join(parts)


def _tree_paths(tree) -> list[str]:
    leaves_with_path, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [jax.tree_util.keystr(p) or "" for p, _ in leaves_with_path]


def check_vjp(
    fn: Callable,
    *args,
    reference: Callable | None = None,
    seed: int = 0,
    num_directions: int = 3,
    fd_eps: float = 1e-4,
    tolerances: dict | None = None,
    name: str | None = None,
    config: str | None = None,
) -> VJPReport:
    """Check the hand-written VJP(s) inside ``fn`` at the point ``args``.

    Args:
      fn: the function to check; any number of ``custom_vjp`` calls inside.
        Returns an array or a pytree of arrays.  Bind configuration with
        ``functools.partial``/lambda.
      *args: positional arguments.  Floating arrays are differentiated;
        integer/bool/PRNG-key arrays and Python values are held fixed.
      reference: optional independent forward with the same signature (check c).
      seed: seed for the random cotangents and FD directions.
      num_directions: random unit directions per argument for check (b);
        ``0`` skips the finite-difference check.
      fd_eps: finite-difference step h along a unit-norm direction (float64,
        fourth-order central stencil); inputs must be smooth within 2h.
      tolerances: overrides merged into :data:`TOLERANCES`.
      name, config: labels for the report / table (defaults: function name,
        argument shapes).

    Returns:
      a :class:`VJPReport`; call ``.raise_if_failed()`` in tests.
    """
    tol = _resolve_tolerances(tolerances)
    kinds = [_classify(i, a) for i, a in enumerate(args)]
    # Canonicalize arrays (e.g. numpy float64 -> float32 when x64 is off) so the
    # recorded dtype is the one the computation actually runs at.
    args = tuple(jnp.asarray(a) if k != "static" else a for a, k in zip(args, kinds))
    dyn_idx = [i for i, k in enumerate(kinds) if k != "static"]
    primals = [args[i] for i in dyn_idx]

    def f(*dyn):
        full = list(args)
        for i, x in zip(dyn_idx, dyn):
            full[i] = x
        return fn(*full)

    report = VJPReport(
        name=name if name is not None else _default_name(fn),
        config=config if config is not None else _default_config(args),
        args=[
            ArgResult(
                index=i,
                kind=k,
                shape=tuple(np.shape(a)) if k != "static" else None,
                dtype=str(a.dtype) if k != "static" else type(a).__name__,
            )
            for i, (a, k) in enumerate(zip(args, kinds))
        ],
        outputs=[],
        tolerances=tol,
        custom_vjp_calls=custom_vjp_count(f, *primals),
        has_reference=reference is not None,
    )
    by_dyn = [report.args[i] for i in dyn_idx]
    is_float_arg = [r.kind == "float" for r in by_dyn]

    # Output structure (trace only).  Integer/bool/key outputs get a float0
    # (symbolic zero) cotangent; every floating output leaf a random one.
    out_shape = jax.eval_shape(f, *primals)
    out_avals, out_tree = jax.tree_util.tree_flatten(out_shape)
    paths = _tree_paths(out_shape)
    for o in out_avals:
        if jnp.issubdtype(o.dtype, jnp.complexfloating):
            raise NotImplementedError("check_vjp: complex outputs are not supported")
    float_out = [bool(jnp.issubdtype(o.dtype, jnp.floating)) for o in out_avals]
    if not any(float_out):
        report.notes.append("fn has no floating outputs; nothing to differentiate")
    report.outputs = [OutputResult(j, paths[j], tuple(o.shape), str(o.dtype)) for j, o in enumerate(out_avals)]

    ref = None
    if reference is not None:

        def ref(*dyn):
            full = list(args)
            for i, x in zip(dyn_idx, dyn):
                full[i] = x
            return reference(*full)

        ref_avals, ref_tree = jax.tree_util.tree_flatten(jax.eval_shape(ref, *primals))
        if ref_tree != out_tree:
            report.errors.append(f"reference returns structure {ref_tree}, fn returns {out_tree}")
            ref = None
        elif [a.shape for a in ref_avals] != [o.shape for o in out_avals]:
            report.errors.append(
                f"reference output shapes {[a.shape for a in ref_avals]} differ from fn's "
                f"{[o.shape for o in out_avals]}"
            )
            ref = None

    ct_key, dir_key = jax.random.split(jax.random.key(seed))
    stripped = strip_custom_vjp(f)
    report.unstripped_custom_vjp_calls = custom_vjp_count(stripped, *primals)

    # ---- (a) hand VJP vs autodiff, (c) vs reference: one compiled program ----
    # Random cotangents are drawn outside the compiled program (eager
    # jax.random calls are cached per shape; threefry inside every program
    # would dominate compile time).
    ct = _random_cotangent(ct_key, out_shape)

    def vjps(ct, *primals):
        out_h, vjp_h = jax.vjp(f, *primals)
        res = {"out_h": out_h, "g_h": vjp_h(ct)}
        res["out_s"], vjp_s = jax.vjp(stripped, *primals)
        res["g_s"] = vjp_s(ct)
        if ref is not None:
            res["out_r"], vjp_r = jax.vjp(ref, *primals)
            ct_r = jax.tree_util.tree_map(lambda c, o: c if _is_float0(c) else c.astype(o.dtype), ct, res["out_r"])
            res["g_r"] = vjp_r(ct_r)
        return res

    res = jax.jit(vjps)(ct, *primals)
    leaves = lambda t: jax.tree_util.tree_leaves(t)  # noqa: E731
    for o, oh, os_ in zip(report.outputs, leaves(res["out_h"]), leaves(res["out_s"])):
        o.stripped_max_abs, o.stripped_rel = _fwd_compare(oh, os_)
        o.stripped_ok = _within(o.stripped_rel, _fwd_tol(tol, oh.dtype, "autodiff"))
    for r, gh in zip(by_dyn, res["g_h"]):
        if r.kind != "float":
            r.zero_cotangent_ok = _zero_cotangent(gh)
    _grade_gradients(by_dyn, res["g_h"], res["g_s"], tol, "autodiff")
    if ref is not None:
        for o, oh, orf in zip(report.outputs, leaves(res["out_h"]), leaves(res["out_r"])):
            o.reference_max_abs, o.reference_rel = _fwd_compare(oh, orf)
            o.reference_ok = _within(o.reference_rel, _fwd_tol(tol, oh.dtype, "reference"))
        _grade_gradients(by_dyn, res["g_h"], res["g_r"], tol, "reference")

    # ---- (b) finite differences in float64 ------------------------------------
    if num_directions > 0 and any(is_float_arg) and any(float_out):
        ct_leaves = jax.tree_util.tree_leaves(ct)
        truth, grad_at = _fd_check(f, primals, by_dyn, ct_leaves, float_out, dir_key, num_directions, fd_eps, tol["fd"])
        _as_accurate_as_autodiff(by_dyn, res, truth, grad_at, primals, jax.random.fold_in(dir_key, 7))

    return report


def _grade_gradients(by_dyn, hand, other, tol, check: str) -> None:
    """Fill ``<check>_max_abs``, ``<check>_rel``, ``<check>_ok`` of every float argument."""
    for r, gh, go in zip(by_dyn, hand, other):
        if r.kind == "float":
            max_abs, rel = _compare(gh, go)
            setattr(r, f"{check}_max_abs", max_abs)
            setattr(r, f"{check}_rel", rel)
            setattr(r, f"{check}_ok", _within(rel, _dtype_tol(tol, r.dtype, check)))


def _as_accurate_as_autodiff(by_dyn, res, truth, grad_at, primals, key) -> None:
    """Second opinion for low-precision (a)/(c) failures: compare accuracies.

    A gradient entry that is a sum of large terms cancelling to a small value
    (e.g. dL/dW of a 1x1 weight) carries float32 rounding error far above
    1e-5 *relative to itself*, in the hand rule and in autodiff alike; a
    relative tolerance cannot tell that from a wrong rule. The float64 hand
    VJP is the truth here once finite differences have verified it (fd_ok).
    The rounding envelope at this point is measured two ways: autodiff of the
    *same* forward in the same dtype (one summation order; the reference
    cannot serve, as it may be a different function), and the movement of the
    exact gradient under a one-rounding relative perturbation of the inputs
    (``_rounding_envelope``: condition number times eps, which no summation
    order beats reliably). A failed (a) or (c) is accepted iff
    ``e_hand <= 4 max(e_autodiff, e_condition) + 4 eps``, distances relative
    to ``||truth||``: the hand rule is as accurate as float32 allows here (its
    exactness is (b)'s job). For (c) the reference must satisfy the same
    bound, because a wrong primal would move the float64 truth along with the
    hand rule.
    """
    needs = [
        k
        for k, r in enumerate(by_dyn)
        if r.kind == "float"
        and k in truth
        and r.fd_ok is True
        and r.dtype != "float64"
        and (r.autodiff_ok is False or r.reference_ok is False)
    ]
    condition = _rounding_envelope(grad_at, primals, by_dyn, truth, key) if needs else {}
    for k, r in enumerate(by_dyn):
        if r.kind != "float" or k not in truth or r.fd_ok is not True or r.dtype == "float64":
            continue
        t = truth[k]
        scale = max(float(np.linalg.norm(t.ravel())), _TINY)

        def dist(g, t=t, scale=scale):
            return float(np.linalg.norm(_np64(g).ravel() - t.ravel())) / scale

        floor = 4 * float(jnp.finfo(jnp.dtype(r.dtype)).eps)
        e_hand = dist(res["g_h"][k])
        others = {"autodiff": res["g_s"][k]}
        if "g_r" in res:
            others["reference"] = res["g_r"][k]
        r.vs_float64 = {"hand": e_hand, **{name: dist(g) for name, g in others.items()}}
        if k in condition:
            r.vs_float64["condition"] = condition[k]
        bound = 4 * max(r.vs_float64["autodiff"], condition.get(k, 0.0)) + floor
        for name in others:
            # (c) also guards against a wrong primal, which would make the float64
            # "truth" wrong too: the reference itself must sit inside the envelope.
            inside = e_hand <= bound and (name == "autodiff" or r.vs_float64[name] <= bound)
            if getattr(r, f"{name}_ok") is False and inside:
                setattr(r, f"{name}_ok", True)
                r.accepted_by_accuracy.append(name)
