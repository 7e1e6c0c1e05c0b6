"""The numbers behind the checks: tolerances, error measures, random cotangents and the float64
finite-difference check (b)."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# --------------------------------------------------------------------------
# Tolerances
# --------------------------------------------------------------------------

#: Default pass/fail thresholds (relative errors).  Per-dtype entries apply to
#: the autodiff (a) and reference (c) comparisons (gradients at the argument's
#: dtype, forward outputs at the output's dtype); ``"fd"`` applies to the
#: float64 finite-difference check (b).  See the :mod:`jdlfs.gradcheck` docstring
#: for the rationale.
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
            f"no {check!r} tolerance for dtype {name}; pass tolerances={{{name!r}: {{{check!r}: ...}}}}"
        ) from None


# --------------------------------------------------------------------------
# Comparisons
# --------------------------------------------------------------------------


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


# --------------------------------------------------------------------------
# Random cotangents and directions
# --------------------------------------------------------------------------


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


# --------------------------------------------------------------------------
# Finite differences (check b)
# --------------------------------------------------------------------------


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
        phi_jit = jax.jit(jax.value_and_grad(phi, argnums=tuple(1 + k for k in float_idx), has_aux=True))
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

    def grad_at(points):
        """The float64 hand VJP at other float64 values of the float arguments."""
        with jax.enable_x64(True):
            point = list(p64)
            for k, x in points.items():
                point[k] = x
            return dict(zip(float_idx, (_np64(g) for g in phi_jit(v_float, *point)[1])))

    return dict(zip(float_idx, grads)), grad_at


def _rounding_envelope(grad_at, primals, by_dyn, truth, key, draws: int = 2) -> dict:
    """How far the exact gradient moves when the inputs move by one rounding.

    Every float argument x is replaced by ``x (1 + eps s)`` (eps of its own
    dtype, s random signs) and the float64 hand VJP recomputed: the largest
    ``||g(x') - g(x)|| / ||g(x)||`` over ``draws`` draws, per argument. This is
    the condition number of the gradient map times eps: the error a
    backward-stable float32 computation may carry at this point whatever its
    summation order. It complements the autodiff envelope, which is a single
    float32 summation order and can be lucky (a 4-term sum that cancels to
    1e-3 of its terms came out 7x closer to the truth in autodiff than in an
    equally exact hand rule).
    """
    float_idx = [k for k, r in enumerate(by_dyn) if r.kind == "float"]
    worst = dict.fromkeys(truth, 0.0)
    for d in range(draws):
        points = {}
        for k in float_idx:
            x = _np64(primals[k])
            eps = float(jnp.finfo(jnp.dtype(by_dyn[k].dtype)).eps)
            s = np.sign(_normal(jax.random.fold_in(key, k * 1_000 + d), x.shape, np.float64))
            points[k] = x * (1.0 + eps * s)
        moved = grad_at(points)
        for k, t in truth.items():
            scale = max(float(np.linalg.norm(t.ravel())), _TINY)
            worst[k] = max(worst[k], float(np.linalg.norm((moved[k] - t).ravel())) / scale)
    return worst
