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

from .check import check_vjp
from .numerical import TOLERANCES
from .report import ArgResult, OutputResult, VJPReport, format_table
from .strip import custom_vjp_count, strip_custom_vjp

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
