"""Verify hand-written ``jax.custom_vjp`` backward passes.

Every layer in :mod:`jdlfs.functional` has a backward pass derived by hand and
installed with ``jax.custom_vjp``.  A wrong rule does not crash: it silently
trains a worse model.  :func:`check_vjp` proves a rule right (to floating-point
accuracy) with three independent checks, all of which compare full
vector-Jacobian products ``v^T J`` for a *random* output cotangent ``v``:

(a) **vs. autodiff** -- the hand VJP ``jax.vjp(fn, *args)`` is compared with
    ``jax.vjp(strip_custom_vjp(fn), *args)``, i.e. JAX's own reverse-mode
    autodiff of the *same forward computation* with every custom rule
    bypassed, at the arguments' own dtype.  The two forwards (the custom
    rule's ``fwd`` vs. the undecorated primal) are compared too.  This is the
    sharpest check (errors ~ a few ulps), but it trusts JAX's autodiff of the
    primal and the primal itself.

(b) **vs. finite differences, in float64** -- independent of JAX autodiff.
    All floating arguments are upcast to float64 (``jax.enable_x64`` is
    switched on for the duration, and restored after), and for each
    differentiable argument ``x`` and each of ``num_directions`` random unit
    directions ``u`` the directional derivative of ``phi(x) = <v, f(x)>``
    (summed over all floating output leaves) from the fourth-order central
    difference ``[8 (phi(x+hu) - phi(x-hu)) - (phi(x+2hu) - phi(x-2hu))] / 12h``
    (``h = fd_eps = 1e-4``) is compared with ``an = <vjp(v)_x, u>``.
    Relative error ``|fd - an| / max(|fd|, |an|, noise / tol_fd)``, where
    ``noise`` is the rounding-error bound of ``fd`` (so a direction nearly
    orthogonal to the gradient, where both numbers are rounding noise, is not
    a false alarm; an error above FD's own noise is always caught).
    Functions must be smooth within ``2h`` of the test point (keep inputs
    away from the kinks of relu/max-pool/abs, etc.).  PRNG-using functions
    (dropout) are deterministic given the key, so this works for them too.

(c) **vs. an independent reference** (optional ``reference=``) -- a second
    implementation of the forward with the same signature, written with
    ``lax`` / ``jax.nn`` / ``jnp``.  Both its forward outputs and its
    (autodiff) VJP are compared with ``fn``'s.  This catches a primal that is
    itself wrong, which (a) cannot see.

Why random cotangents and never ``sum(out)``: the VJP is only checked on the
cotangent you feed it.  For batch-norm-style normalization
``y = (x - mean(x)) / std(x)`` the gradient of ``sum(y)`` is identically
zero, so a rule that forgets the ``- xhat * mean(g * xhat)`` projection term
(or a centering rule that returns 0) still returns the right answer for
``g = ones``.  A standard-normal cotangent on every floating output leaf
(including auxiliary outputs such as batch_norm's ``(y, mean, var)``)
exercises every term of the rule.

Errors reported per argument: max absolute error and norm-wise relative error
``||a - b|| / max(||b||, tiny)`` for (a) and (c) (``b`` = autodiff /
reference), the worst relative error over directions for (b).  NaN or inf
anywhere is a failure.  Default tolerances (see :data:`TOLERANCES`):

==========  ========  =========  ===================================
dtype       autodiff  reference  rationale
==========  ========  =========  ===================================
float16     1e-2      1e-2       eps ~ 1e-3; reductions lose ~10 ulp
bfloat16    5e-2      5e-2       eps ~ 8e-3
float32     1e-5      1e-5       eps ~ 6e-8; leaves ~100x headroom
float64     1e-10     1e-10      eps ~ 1e-16
==========  ========  =========  ===================================

and ``fd = 1e-7`` (always float64).  The fourth-order stencil with
``h = 1e-4`` has truncation error O(h^4) ~ 1e-16 and rounding error
~ 1e-16 / h ~ 1e-12 times ``|phi| / |dphi|``, so correct rules land at
1e-12..1e-8 (worst seen over the jdlfs op catalogue: ~6e-9, softmax), while a
wrong factor as small as 1.001 gives 1e-3.  (The plain two-point stencil with
``h = 1e-6`` has ~1e-10 ``|phi| / |dphi|`` rounding error and produced
false failures at 1e-7 on softmax / batch norm / attention.)  Forward
comparisons use the same per-dtype numbers as the gradients.  Override per
call with ``tolerances={"float32": {"autodiff": 1e-4}, "fd": 1e-6}`` (nested, merged
into the defaults) or ``tolerances={"autodiff": 1e-4}`` (all dtypes).

A low-precision gradient that misses its tolerance is still accepted when it
is as accurate as autodiff: within 4x of autodiff's float32 distance to the
float64 hand VJP, once (b) has verified that VJP.
This covers ill-conditioned entries (a 1x1 weight whose gradient is a sum of
large terms cancelling to a small one), where every float32 implementation
is off by more than 1e-5 relative; the report says when it happened.

Checking your own layer::

    import jax, jax.numpy as jnp
    from jdlfs.gradcheck import check_vjp, custom_vjp_count

    @jax.custom_vjp
    def swish(x):
        return x * jax.nn.sigmoid(x)

    def swish_fwd(x):
        s = jax.nn.sigmoid(x)
        return x * s, (x, s)

    def swish_bwd(res, g):
        x, s = res
        return (g * (s + x * s * (1 - s)),)

    swish.defvjp(swish_fwd, swish_bwd)

    x = jax.random.normal(jax.random.key(0), (4, 8))
    assert custom_vjp_count(swish, x) == 1      # the custom rule is really used
    report = check_vjp(swish, x, reference=jax.nn.silu, name="swish")
    print(report)
    report.raise_if_failed()

Configuration (stride, axis, ...) must be bound by the caller with
``functools.partial`` or a lambda; only *positional* arguments are checked.
Positional array arguments with a floating dtype are differentiated; integer,
bool and PRNG-key arrays are held fixed (and their cotangent is checked to be
float0/zero); Python scalars, strings and ``None`` are held fixed as static
values.  Pytree (tuple/list/dict) arguments are rejected: flatten them or bind
them with a closure.  ``fn`` itself may return any pytree of arrays
(integer outputs such as argmax indices get a float0 cotangent and are
compared exactly in the forward checks).

Limitations:

* ``fn`` is traced with abstract values (``jax.jit`` / ``jax.make_jaxpr``),
  so it must be jit-compatible: no Python control flow on array *values*
  (of any argument, integer labels included).
* The integer-argument cotangent check is weak in practice: JAX itself
  replaces whatever a ``custom_vjp`` bwd returns for an integer input by a
  float0 zero, so the check only documents that the result is float0/zero.
* Finite differences need a smooth function near the test point and a
  computation that really runs in float64 (a layer that casts internally to
  float32 limits (b) to float32 accuracy).  Complex dtypes are not supported.
* :func:`strip_custom_vjp` recurses into jit/pjit/closed_call/core_call/
  remat/checkpoint (inlined), custom_jvp_call (inlined, only when it contains
  a custom_vjp) and scan/cond/while (sub-jaxprs rewritten and re-bound); any
  other higher-order primitive with sub-jaxpr params is rewritten generically
  and, if that fails, left bound with a ``RuntimeWarning``.
  ``VJPReport.unstripped_custom_vjp_calls`` reports any custom_vjp that
  survived stripping.  Note that ``while_loop`` is not reverse-differentiable
  in JAX at all, with or without custom rules.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import warnings
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as _jcore

__all__ = [
    "TOLERANCES",
    "ArgResult",
    "OutputResult",
    "VJPReport",
    "check_vjp",
    "custom_vjp_count",
    "format_table",
    "strip_custom_vjp",
]

# --------------------------------------------------------------------------
# Tolerances
# --------------------------------------------------------------------------

#: Default pass/fail thresholds (relative errors).  Per-dtype entries apply to
#: the autodiff (a) and reference (c) comparisons (gradients at the argument's
#: dtype, forward outputs at the output's dtype); ``"fd"`` applies to the
#: float64 finite-difference check (b).  See the module docstring for the
#: rationale.
TOLERANCES: dict[str, Any] = {
    "float16": {"autodiff": 1e-2, "reference": 1e-2},
    "bfloat16": {"autodiff": 5e-2, "reference": 5e-2},
    "float32": {"autodiff": 1e-5, "reference": 1e-5},
    "float64": {"autodiff": 1e-10, "reference": 1e-10},
    "fd": 1e-7,
}

_TINY = 1e-300  # denominator floor for relative errors


def _resolve_tolerances(overrides: dict | None) -> dict[str, Any]:
    tol = {k: (dict(v) if isinstance(v, dict) else v) for k, v in TOLERANCES.items()}
    if not overrides:
        return tol
    for key, val in overrides.items():
        if isinstance(val, dict):  # per-dtype: {"float32": {"autodiff": 1e-4}}
            tol.setdefault(key, {}).update(val)
        elif key == "fd":
            tol["fd"] = float(val)
        elif key in ("autodiff", "reference"):  # flat: applies to every dtype
            for entry in tol.values():
                if isinstance(entry, dict):
                    entry[key] = float(val)
        else:
            raise ValueError(f"unknown tolerance key {key!r}")
    return tol


def _dtype_tol(tol: dict, dtype, check: str) -> float:
    name = np.dtype(dtype).name
    try:
        return float(tol[name][check])
    except KeyError:
        raise KeyError(
            f"no {check!r} tolerance for dtype {name}; pass tolerances={{{name!r}: "
            f"{{{check!r}: ...}}}}"
        ) from None


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


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------


def _dtype_short(dtype) -> str:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        return str(dtype)
    short = {
        "float16": "f16", "bfloat16": "bf16", "float32": "f32", "float64": "f64",
        "int8": "i8", "int16": "i16", "int32": "i32", "int64": "i64",
        "uint8": "u8", "uint16": "u16", "uint32": "u32", "uint64": "u64", "bool": "bool",
    }
    return short.get(dt.name, dt.name)


def _fmt_aval(shape, dtype) -> str:
    if shape is None:
        return str(dtype)
    return f"{_dtype_short(dtype)}[{','.join(map(str, shape))}]"


def _fmt_err(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and math.isnan(x):
        return "nan"
    return f"{x:.1e}"


def _worst(values) -> float | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    if any(math.isnan(v) for v in vals):
        return float("nan")
    return max(vals)


@dataclasses.dataclass
class ArgResult:
    """Result for one positional argument of the checked function.

    ``kind`` is ``"float"`` (differentiated), ``"int"`` (integer/bool array,
    held fixed), ``"key"`` (PRNG key array, held fixed) or ``"static"``
    (Python value, held fixed).  Error fields are ``None`` when the check did
    not apply; the ``*_ok`` flags are ``None`` likewise.
    """

    index: int
    kind: str
    shape: tuple | None
    dtype: str
    autodiff_max_abs: float | None = None
    autodiff_rel: float | None = None
    autodiff_ok: bool | None = None
    fd_rel: float | None = None  # worst over directions
    fd_values: tuple | None = None  # (fd, analytic) of the worst direction
    fd_ok: bool | None = None
    reference_max_abs: float | None = None
    reference_rel: float | None = None
    reference_ok: bool | None = None
    zero_cotangent_ok: bool | None = None  # int/key args: hand cotangent is float0/zero
    # Low-precision args: relative distance of each gradient to the float64 hand
    # VJP (verified by FD), and the checks passed on that accuracy comparison.
    vs_float64: dict | None = None
    accepted_by_accuracy: list = dataclasses.field(default_factory=list)

    @property
    def passed(self) -> bool:
        flags = (self.autodiff_ok, self.fd_ok, self.reference_ok, self.zero_cotangent_ok)
        return all(f is not False for f in flags)


@dataclasses.dataclass
class OutputResult:
    """Forward comparison for one output leaf (hand ``fwd`` vs stripped primal,
    and vs reference)."""

    index: int
    path: str
    shape: tuple
    dtype: str
    stripped_max_abs: float | None = None
    stripped_rel: float | None = None
    stripped_ok: bool | None = None
    reference_max_abs: float | None = None
    reference_rel: float | None = None
    reference_ok: bool | None = None

    @property
    def passed(self) -> bool:
        return self.stripped_ok is not False and self.reference_ok is not False


@dataclasses.dataclass
class VJPReport:
    """Outcome of :func:`check_vjp`.

    ``worst`` maps ``"autodiff"``, ``"fd"`` and ``"reference"`` to the worst
    relative error of that check over all arguments and (for autodiff and
    reference) forward output leaves, or ``None`` if the check was not run.
    """

    name: str
    config: str
    args: list[ArgResult]
    outputs: list[OutputResult]
    tolerances: dict
    custom_vjp_calls: int
    unstripped_custom_vjp_calls: int = 0
    errors: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    has_reference: bool = False

    @property
    def passed(self) -> bool:
        return (
            not self.errors
            and all(a.passed for a in self.args)
            and all(o.passed for o in self.outputs)
        )

    @property
    def worst(self) -> dict[str, float | None]:
        return {
            "autodiff": _worst(
                [a.autodiff_rel for a in self.args] + [o.stripped_rel for o in self.outputs]
            ),
            "fd": _worst([a.fd_rel for a in self.args]),
            "reference": (
                _worst([a.reference_rel for a in self.args] + [o.reference_rel for o in self.outputs])
                if self.has_reference
                else None
            ),
        }

    def as_row(self) -> dict[str, Any]:
        w = self.worst
        return {
            "op": self.name,
            "config": self.config,
            "vs_autodiff": w["autodiff"],
            "vs_fd": w["fd"],
            "vs_reference": w["reference"],
            "passed": self.passed,
        }

    def raise_if_failed(self) -> None:
        if not self.passed:
            raise AssertionError(str(self))

    def __str__(self) -> str:
        ok = lambda f: "-" if f is None else ("ok" if f else "FAIL")  # noqa: E731
        status = "PASSED" if self.passed else "FAILED"
        title = self.name + (f" [{self.config}]" if self.config else "")
        lines = [f"check_vjp {title}: {status}  ({self.custom_vjp_calls} custom_vjp call(s))"]
        w = self.worst
        lines.append(
            "  worst rel. error: autodiff {}  fd {}  reference {}".format(
                _fmt_err(w["autodiff"]), _fmt_err(w["fd"]), _fmt_err(w["reference"])
            )
        )
        for o in self.outputs:
            s = f"  out{o.path:<8} {_fmt_aval(o.shape, o.dtype):<16} forward vs primal "
            s += f"rel {_fmt_err(o.stripped_rel)} (abs {_fmt_err(o.stripped_max_abs)}) {ok(o.stripped_ok)}"
            if o.reference_ok is not None:
                s += f" | vs reference rel {_fmt_err(o.reference_rel)} {ok(o.reference_ok)}"
            lines.append(s)
        for a in self.args:
            head = f"  arg {a.index:<6} {_fmt_aval(a.shape, a.dtype):<16}"
            if a.kind == "float":
                s = (
                    f"{head} autodiff rel {_fmt_err(a.autodiff_rel)} "
                    f"(abs {_fmt_err(a.autodiff_max_abs)}) {ok(a.autodiff_ok)}"
                )
                if a.fd_ok is not None:
                    s += f" | fd rel {_fmt_err(a.fd_rel)} {ok(a.fd_ok)}"
                    if a.fd_values is not None and not a.fd_ok:
                        s += " (fd {:.6e} vs analytic {:.6e})".format(*a.fd_values)
                if a.reference_ok is not None:
                    s += (
                        f" | reference rel {_fmt_err(a.reference_rel)} "
                        f"(abs {_fmt_err(a.reference_max_abs)}) {ok(a.reference_ok)}"
                    )
                if a.accepted_by_accuracy:
                    d = a.vs_float64
                    s += (f" | {'/'.join(a.accepted_by_accuracy)} accepted: as accurate vs float64 "
                          f"(hand {_fmt_err(d['hand'])}, "
                          + ", ".join(f"{k} {_fmt_err(v)}" for k, v in d.items() if k != "hand") + ")")
                if not a.passed:
                    s += f"   <-- argument {a.index} FAILED"
            elif a.kind in ("int", "key"):
                s = f"{head} held fixed; hand cotangent float0/zero {ok(a.zero_cotangent_ok)}"
                if not a.passed:
                    s += f"   <-- argument {a.index} FAILED"
            else:
                s = f"{head} static, held fixed"
            lines.append(s)
        if self.unstripped_custom_vjp_calls:
            lines.append(
                f"  note: {self.unstripped_custom_vjp_calls} custom_vjp call(s) could not be "
                "stripped; the autodiff check partly compares the custom rule with itself"
            )
        for n in self.notes:
            lines.append(f"  note: {n}")
        for e in self.errors:
            lines.append(f"  ERROR: {e}")
        t = self.tolerances
        dt = ", ".join(
            f"{k} {v['autodiff']:.0e}/{v['reference']:.0e}" for k, v in t.items() if isinstance(v, dict)
        )
        lines.append(f"  tolerances (autodiff/reference): {dt}; fd {t['fd']:.0e}")
        return "\n".join(lines)


def format_table(reports: Sequence[VJPReport]) -> str:
    """Render reports as an aligned text table (one row per report)."""
    header = ["op", "configuration", "rel. err vs autodiff", "vs finite diff.", "vs reference", "result"]
    rows = []
    for r in reports:
        row = r.as_row()
        rows.append(
            [
                str(row["op"]),
                str(row["config"]),
                _fmt_err(row["vs_autodiff"]),
                _fmt_err(row["vs_fd"]),
                _fmt_err(row["vs_reference"]),
                "pass" if row["passed"] else "FAIL",
            ]
        )
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    left = {0, 1}

    def fmt(cells):
        return "  ".join(
            c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    out = [fmt(header), "  ".join("-" * w for w in widths)]
    out += [fmt(row) for row in rows]
    return "\n".join(out)


# --------------------------------------------------------------------------
# check_vjp
# --------------------------------------------------------------------------


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


def _np64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def _compare(a, b) -> tuple[float, float]:
    """(max abs error, norm-wise relative error ||a-b|| / max(||b||, tiny)); NaN if non-finite."""
    a, b = _np64(a), _np64(b)
    if a.shape != b.shape:
        return float("inf"), float("inf")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return float("nan"), float("nan")
    if a.size == 0:
        return 0.0, 0.0
    d = a - b
    max_abs = float(np.max(np.abs(d)))
    rel = float(np.linalg.norm(d.ravel()) / max(float(np.linalg.norm(b.ravel())), _TINY))
    return max_abs, rel


def _within(err: float | None, tol: float) -> bool:
    return bool(err is not None and math.isfinite(err) and err <= tol)


def _is_float0(x) -> bool:
    return getattr(x, "dtype", None) == jax.dtypes.float0


def _zero_cotangent(g) -> bool:
    if g is None or _is_float0(g):
        return True
    try:
        return bool(np.all(np.asarray(g) == 0))
    except Exception:  # pragma: no cover
        return False


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
    report.outputs = [
        OutputResult(j, paths[j], tuple(o.shape), str(o.dtype)) for j, o in enumerate(out_avals)
    ]

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
            ct_r = jax.tree_util.tree_map(
                lambda c, o: c if _is_float0(c) else c.astype(o.dtype), ct, res["out_r"]
            )
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
        truth = _fd_check(f, primals, by_dyn, ct_leaves, float_out, dir_key, num_directions, fd_eps, tol["fd"])
        _as_accurate_as_autodiff(by_dyn, res, truth)

    return report


def _grade_gradients(by_dyn, hand, other, tol, check: str) -> None:
    """Fill ``<check>_max_abs``, ``<check>_rel``, ``<check>_ok`` of every float argument."""
    for r, gh, go in zip(by_dyn, hand, other):
        if r.kind == "float":
            max_abs, rel = _compare(gh, go)
            setattr(r, f"{check}_max_abs", max_abs)
            setattr(r, f"{check}_rel", rel)
            setattr(r, f"{check}_ok", _within(rel, _dtype_tol(tol, r.dtype, check)))


def _as_accurate_as_autodiff(by_dyn, res, truth) -> None:
    """Second opinion for low-precision (a)/(c) failures: compare accuracies.

    A gradient entry that is a sum of large terms cancelling to a small value
    (e.g. dL/dW of a 1x1 weight) carries float32 rounding error far above
    1e-5 *relative to itself*, in the hand rule and in autodiff alike; a
    relative tolerance cannot tell that from a wrong rule. The float64 hand
    VJP is the truth here once finite differences have verified it (fd_ok).
    Autodiff of the *same* forward in the same dtype measures the rounding
    envelope at this point (different summation orders scatter by a small
    factor around eps * condition); the reference cannot, as it may be a
    different function. A failed (a) or (c) is accepted iff
    ``e_hand <= 4 e_autodiff + 4 eps``, distances relative to ``||truth||``:
    the hand rule is as accurate as autodiff (its exactness is (b)'s job). For
    (c) the reference must satisfy the same bound, because a wrong primal
    would move the float64 truth along with the hand rule.
    """
    for k, r in enumerate(by_dyn):
        if r.kind != "float" or k not in truth or r.fd_ok is not True or r.dtype == "float64":
            continue
        t = truth[k]
        scale = max(float(np.linalg.norm(t.ravel())), _TINY)
        dist = lambda g: float(np.linalg.norm(_np64(g).ravel() - t.ravel())) / scale  # noqa: E731
        floor = 4 * float(jnp.finfo(jnp.dtype(r.dtype)).eps)
        e_hand = dist(res["g_h"][k])
        others = {"autodiff": res["g_s"][k]}
        if "g_r" in res:
            others["reference"] = res["g_r"][k]
        r.vs_float64 = {"hand": e_hand, **{name: dist(g) for name, g in others.items()}}
        bound = 4 * r.vs_float64["autodiff"] + floor
        for name in others:
            # (c) also guards against a wrong primal, which would make the float64
            # "truth" wrong too: the reference itself must sit inside the envelope.
            inside = e_hand <= bound and (name == "autodiff" or r.vs_float64[name] <= bound)
            if getattr(r, f"{name}_ok") is False and inside:
                setattr(r, f"{name}_ok", True)
                r.accepted_by_accuracy.append(name)


_CHUNK = 1 << 14


def _normal(key, shape, dtype) -> np.ndarray:
    """Standard-normal numpy array of ``shape``/``dtype`` drawn with ``jax.random``.

    Drawn in fixed-size float32 chunks so that ``jax.random.normal`` compiles
    once per process instead of once per shape (threefry compilation would
    otherwise dominate the cost of a check), then cast.
    """
    n = math.prod(shape)
    chunks = [
        np.asarray(jax.random.normal(jax.random.fold_in(key, i), (_CHUNK,), jnp.float32))
        for i in range(max(1, -(-n // _CHUNK)))
    ]
    return np.concatenate(chunks)[:n].reshape(shape).astype(dtype)


def _random_cotangent(key, out):
    """Standard-normal cotangent for every floating leaf of ``out``, float0 zeros otherwise."""
    out_leaves, tree = jax.tree_util.tree_flatten(out)
    cts = []
    for j, o in enumerate(out_leaves):
        if jnp.issubdtype(o.dtype, jnp.floating):
            cts.append(_normal(jax.random.fold_in(key, j), o.shape, o.dtype))
        else:
            cts.append(np.zeros(o.shape, dtype=jax.dtypes.float0))
    return jax.tree_util.tree_unflatten(tree, cts)


def _fwd_tol(tol, dtype, check) -> float:
    if jnp.issubdtype(dtype, jnp.floating):
        return _dtype_tol(tol, dtype, check)
    return 0.0  # integer outputs must match exactly


def _fwd_compare(a, b) -> tuple[float, float]:
    if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
        a, b = jax.random.key_data(a), jax.random.key_data(b)
    return _compare(a, b)


# Rounding-noise model of the finite difference: phi(x) = <v, f(x)> is
# computed with an absolute error of about _FD_NOISE_ULPS * eps64 * sum|v * f|,
# and the stencil divides the difference of such values by 12 h / 18.
_EPS64 = float(np.finfo(np.float64).eps)
_FD_NOISE_ULPS = 8.0


def _fd_check(f, primals, by_dyn, ct_leaves, float_out, dir_key, num_directions, h, fd_tol):
    """Check (b): directional derivative of phi(x) = <v, f(x)> in float64.

    Fourth-order central difference along a unit direction u::

        fd = [8 (phi(x + h u) - phi(x - h u)) - (phi(x + 2h u) - phi(x - 2h u))] / (12 h)

    (truncation error O(h^4); differences are taken before weighting so a
    constant phi gives exactly 0).  Compared with ``an = <vjp(v)_x, u>`` as
    ``|fd - an| / max(|fd|, |an|, noise / fd_tol)``, where ``noise`` is the
    rounding-error bound of ``fd`` (see ``_FD_NOISE_ULPS``): a direction that
    happens to be nearly orthogonal to the gradient, where both derivatives
    are at the rounding-noise level, is not reported as a failure, while any
    error FD can resolve (above its own noise) still is.

    One compiled program: phi and its gradient (= the float64 hand VJP).
    """
    float_idx = [k for k, r in enumerate(by_dyn) if r.kind == "float"]
    with jax.enable_x64(True):
        p64 = [_np64(p) if r.kind == "float" else p for p, r in zip(primals, by_dyn)]
        v_float = [_np64(c) for c, fl in zip(ct_leaves, float_out) if fl]

        def phi(v_float, *dyn):
            """(<v, f(x)>, sum |v * f(x)|) over the floating output leaves."""
            out_leaves = jax.tree_util.tree_leaves(f(*dyn))
            fl_leaves = [o.astype(jnp.float64) for o, fl in zip(out_leaves, float_out) if fl]
            value = sum(jnp.vdot(v, o) for v, o in zip(v_float, fl_leaves))
            magnitude = sum(jnp.sum(jnp.abs(v * o)) for v, o in zip(v_float, fl_leaves))
            return value, magnitude

        # grad phi = J^T v is exactly the hand VJP of f with cotangent v (the
        # custom rule is what jax.grad uses).  One compiled program serves both
        # the gradient at x and the values at the perturbed points (whose
        # gradients are simply ignored): one XLA compilation instead of two.
        phi_jit = jax.jit(
            jax.value_and_grad(phi, argnums=tuple(1 + k for k in float_idx), has_aux=True)
        )
        grads = [_np64(g) for g in phi_jit(v_float, *p64)[1]]

        def phi_at(k, x, t):
            point = list(p64)
            point[k] = x + t
            (value, magnitude), _ = phi_jit(v_float, *point)
            return float(value), float(magnitude)

        for k, g in zip(float_idx, grads):
            r = by_dyn[k]
            x = p64[k]
            trials = []  # (rel. error, fd, analytic) per direction
            for d in range(num_directions):
                # unit-norm random direction (float64, same shape as the arg)
                u = _normal(jax.random.fold_in(dir_key, k * 1_000 + d), x.shape, np.float64)
                u = u / max(float(np.linalg.norm(u.ravel())), _TINY)
                (p1, m1), (n1, mn1) = phi_at(k, x, h * u), phi_at(k, x, -h * u)
                (p2, m2), (n2, mn2) = phi_at(k, x, 2 * h * u), phi_at(k, x, -2 * h * u)
                fd = (8.0 * (p1 - n1) - (p2 - n2)) / (12.0 * h)
                noise = _FD_NOISE_ULPS * _EPS64 * (8.0 * (m1 + mn1) + (m2 + mn2)) / (12.0 * h)
                an = float(np.vdot(g, u))
                if math.isfinite(fd) and math.isfinite(an):
                    err = abs(fd - an) / max(abs(fd), abs(an), noise / fd_tol, _TINY)
                else:
                    err = float("nan")
                trials.append((err, fd, an))
            nan_trials = [t for t in trials if math.isnan(t[0])]
            worst, fd_w, an_w = nan_trials[0] if nan_trials else max(trials)
            r.fd_rel, r.fd_values = worst, (fd_w, an_w)
            r.fd_ok = _within(worst, fd_tol)
    return dict(zip(float_idx, grads))
