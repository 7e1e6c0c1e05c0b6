"""The jaxpr interpreter behind check (a): run a function with every ``jax.custom_vjp`` bypassed.

:func:`strip_custom_vjp` traces a function to a jaxpr and evaluates it with
each ``custom_vjp_call`` replaced by its primal, so ``jax.vjp`` of the result
is JAX's own autodiff of the same forward; :func:`custom_vjp_count` counts the
custom rules a function really calls.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.extend import core as _jcore

# --------------------------------------------------------------------------
# Internal-JAX helpers.  Everything that touches jaxpr internals (Jaxpr /
# ClosedJaxpr / Literal structure, eqn.primitive.bind, source-info contexts)
# lives in these few functions so that a JAX upgrade has one place to fix.
# Tested against jax 0.10.2.
# --------------------------------------------------------------------------

_CUSTOM_VJP = "custom_vjp_call"
_CUSTOM_JVP = "custom_jvp_call"
# Call-like primitives whose sub-jaxpr is semantically just "call this
# function": when the sub-jaxpr contains a custom_vjp we inline its stripped
# evaluation (dropping the jit / remat boundary, which does not change values).
_INLINE_PARAM = {
    "jit": "jaxpr",
    "pjit": "jaxpr",
    "closed_call": "call_jaxpr",
    "core_call": "call_jaxpr",
    "remat2": "jaxpr",
    "checkpoint": "jaxpr",
    "remat": "jaxpr",
    # custom_jvp: if its primal contains a custom_vjp, the custom JVP rule is
    # bypassed as well (plain autodiff of the primal).  Without a custom_vjp
    # inside, the eqn is left untouched so library rules (jax.nn.relu, ...)
    # keep their JVPs.
    _CUSTOM_JVP: "call_jaxpr",
}


def _is_jaxpr(v) -> bool:
    return isinstance(v, (_jcore.Jaxpr, _jcore.ClosedJaxpr))


def _open(j) -> tuple[Any, list]:
    """(Jaxpr, consts) of a Jaxpr or ClosedJaxpr."""
    if isinstance(j, _jcore.ClosedJaxpr):
        return j.jaxpr, list(j.consts)
    return j, []


def _sub_jaxprs(params: dict):
    """All Jaxpr/ClosedJaxpr values in an eqn's params (incl. tuples of them)."""
    for val in params.values():
        vals = val if isinstance(val, (tuple, list)) else (val,)
        for v in vals:
            if _is_jaxpr(v):
                yield v


def _bind_eqn(eqn, invals: Sequence, params: dict) -> list:
    """Bind ``eqn.primitive`` on ``invals`` like ``jax.core.eval_jaxpr`` does."""
    try:
        from jax._src import source_info_util as siu  # internal

        user_ctx = siu.user_context(
            eqn.source_info.traceback,
            name_stack=siu.current_name_stack() + eqn.source_info.name_stack,
        )
    except Exception:  # pragma: no cover - older/newer internals
        user_ctx = contextlib.nullcontext()
    eqn_ctx = getattr(getattr(eqn, "ctx", None), "manager", contextlib.nullcontext())
    bind_params = eqn.primitive.get_bind_params(params)
    subfuns: Sequence = ()
    if isinstance(bind_params, tuple):  # older JAX: (subfuns, params)
        subfuns, bind_params = bind_params
    with user_ctx, eqn_ctx:
        out = eqn.primitive.bind(*subfuns, *invals, **bind_params)
    return list(out) if eqn.primitive.multiple_results else [out]


def _retrace(f: Callable, like) -> Any:
    """Trace ``f`` to a ClosedJaxpr with exactly ``like``'s input avals."""
    return jax.make_jaxpr(f)(*like.in_avals)


# --------------------------------------------------------------------------
# strip_custom_vjp
# --------------------------------------------------------------------------


def _count_in_jaxpr(j) -> int:
    jaxpr, _ = _open(j)
    n = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == _CUSTOM_VJP:
            n += 1
        for sub in _sub_jaxprs(eqn.params):
            n += _count_in_jaxpr(sub)
    return n


def _eval_stripped(j, *args) -> list:
    """Evaluate a (Closed)Jaxpr with every custom_vjp_call replaced by its primal."""
    jaxpr, consts = _open(j)
    env: dict = {}

    def read(v):
        return v.val if isinstance(v, _jcore.Literal) else env[v]

    if len(args) != len(jaxpr.invars):
        raise ValueError(f"jaxpr expects {len(jaxpr.invars)} inputs, got {len(args)}")
    for var, val in zip(jaxpr.constvars, consts):
        env[var] = val
    for var, val in zip(jaxpr.invars, args):
        env[var] = val
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        outs = _eval_eqn_stripped(eqn, invals)
        if len(outs) != len(eqn.outvars):
            raise AssertionError(f"{eqn.primitive.name}: arity mismatch after stripping")
        for var, val in zip(eqn.outvars, outs):
            env[var] = val
    return [read(v) for v in jaxpr.outvars]


def _eval_eqn_stripped(eqn, invals: list) -> list:
    name = eqn.primitive.name
    params = eqn.params
    if name == _CUSTOM_VJP:
        # call_jaxpr takes (closure consts..., args...) exactly like the eqn.
        return _eval_stripped(params["call_jaxpr"], *invals)
    subs = list(_sub_jaxprs(params))
    if not subs or all(_count_in_jaxpr(s) == 0 for s in subs):
        return _bind_eqn(eqn, invals, params)  # nothing to strip inside
    if name in _INLINE_PARAM and _is_jaxpr(params.get(_INLINE_PARAM[name])):
        return _eval_stripped(params[_INLINE_PARAM[name]], *invals)
    # Generic higher-order primitive (scan, cond, while, ...): rewrite every
    # sub-jaxpr param into its stripped version and re-bind.
    try:
        new_params = {k: _strip_param(v) for k, v in params.items()}
    except _CannotStrip as e:
        warnings.warn(
            f"strip_custom_vjp: cannot strip custom_vjp inside primitive {name!r} "
            f"({e}); it is left bound with its custom rule",
            RuntimeWarning,
            stacklevel=2,
        )
        return _bind_eqn(eqn, invals, params)
    return _bind_eqn(eqn, invals, new_params)


class _CannotStrip(Exception):
    pass


def _strip_param(v):
    if isinstance(v, (tuple, list)) and any(_is_jaxpr(x) for x in v):
        return type(v)(_strip_param(x) for x in v)
    if not _is_jaxpr(v) or _count_in_jaxpr(v) == 0:
        return v
    if isinstance(v, _jcore.Jaxpr) and v.constvars:
        raise _CannotStrip("open sub-jaxpr with constvars")
    closed = v if isinstance(v, _jcore.ClosedJaxpr) else _jcore.ClosedJaxpr(v, [])
    new = _retrace(lambda *a: _eval_stripped(closed, *a), closed)
    old_out = [(a.shape, a.dtype, getattr(a, "weak_type", False)) for a in closed.out_avals]
    new_out = [(a.shape, a.dtype, getattr(a, "weak_type", False)) for a in new.out_avals]
    if old_out != new_out:
        raise _CannotStrip(f"output types changed: {old_out} -> {new_out}")
    if isinstance(v, _jcore.Jaxpr):
        if new.consts:
            raise _CannotStrip("stripped open sub-jaxpr captured constants")
        return new.jaxpr
    return new


def _is_dynamic_leaf(x) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic))


def _trace(fn: Callable, args: tuple, kwargs: dict):
    """make_jaxpr of fn; non-array leaves of (args, kwargs) are static."""
    leaves, treedef = jax.tree_util.tree_flatten((args, kwargs))
    dyn_idx = [i for i, x in enumerate(leaves) if _is_dynamic_leaf(x)]

    def flat_fn(*dyn):
        full = list(leaves)
        for i, x in zip(dyn_idx, dyn):
            full[i] = x
        a, k = jax.tree_util.tree_unflatten(treedef, full)
        return fn(*a, **k)

    dyn = [leaves[i] for i in dyn_idx]
    closed, out_shape = jax.make_jaxpr(flat_fn, return_shape=True)(*dyn)
    return closed, out_shape, dyn


def strip_custom_vjp(fn: Callable) -> Callable:
    """Return ``fn`` with every ``jax.custom_vjp`` replaced by its primal.

    The returned function computes the same forward as ``fn``, but every
    ``custom_vjp`` call inside it (at any depth: inside ``jit``, ``remat``,
    ``lax.scan``/``cond``/``while_loop`` bodies, the primal of a
    ``custom_jvp``, or the primal of another ``custom_vjp``) is evaluated as
    its undecorated primal, so ``jax.vjp(strip_custom_vjp(fn), ...)`` is
    plain JAX autodiff of the same forward.

    Works by tracing ``fn`` to a jaxpr at call time (array leaves of the
    arguments are traced; Python scalars/strings/None are static) and
    evaluating it with a small interpreter:

    * ``custom_vjp_call`` -> evaluate its ``call_jaxpr`` (recursively stripped);
    * ``jit``/``pjit``/``closed_call``/``core_call``/``remat``/``checkpoint``
      and ``custom_jvp_call`` containing a custom_vjp -> inline the stripped
      sub-jaxpr (for custom_jvp this bypasses its JVP rule too);
    * any other primitive with sub-jaxpr params (``scan``, ``cond``,
      ``while``, ...) -> re-bind with stripped sub-jaxprs.  If that is not
      possible (e.g. the output types change, or an open sub-jaxpr would
      need constants) a ``RuntimeWarning`` is emitted and the eqn is left
      bound with its custom rule; :func:`custom_vjp_count` on the stripped
      function shows what remains;
    * everything else is re-bound unchanged (``custom_jvp`` rules of library
      functions such as ``jax.nn.relu`` are kept).

    ``fn`` is re-traced on every call (no caching); Python side effects in
    ``fn`` run at each call.
    """

    @functools.wraps(fn)
    def stripped(*args, **kwargs):
        closed, out_shape, dyn = _trace(fn, args, kwargs)
        outs = _eval_stripped(closed, *dyn)
        return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(out_shape), outs)

    return stripped


def custom_vjp_count(fn: Callable, *args, **kwargs) -> int:
    """Number of ``custom_vjp`` calls in the jaxpr of ``fn(*args, **kwargs)``.

    Counts statically (a custom_vjp in a ``scan`` body counts once), recursing
    into every sub-jaxpr, including ``jit``/``scan``/``cond``/``while`` bodies
    and the primal of a ``custom_vjp`` itself (a custom op whose primal calls
    another custom op counts 2).  Non-array leaves of the arguments are static.
    """
    closed, _, _ = _trace(fn, args, kwargs)
    return _count_in_jaxpr(closed)
