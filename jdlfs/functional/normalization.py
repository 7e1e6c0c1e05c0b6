"""Batch normalization and layer normalization with closed-form backward.

Both normalise over a set of m entries S (batch norm: every axis but the last,
per channel; layer norm: the last axis, per position):
    mu = mean_S x,   var = mean_S (x - mu)^2   (biased),   r = 1 / sqrt(var + eps)
    xh = (x - mu) r,  y = gamma xh + beta

Backward (g = dL/dy; sums over S; dxh = g gamma):
    dL/dgamma = sum g xh           (over the normalised axes, per feature)
    dL/dbeta  = sum g
    dL/dx     = (r / m) (m dxh - sum dxh - xh sum(dxh xh))
The last line is the chain rule through mu and var collapsed: d xh_i / d x_j =
r (d_ij - 1/m - xh_i xh_j / m).

Batch norm's sums in dL/dx run over the same axes as dL/dgamma and dL/dbeta, and
gamma is constant along them, so sum dxh = gamma dL/dbeta and sum(dxh xh) = gamma
dL/dgamma:
    dL/dx = (gamma r / m) (m g - dL/dbeta - xh dL/dgamma)
two reductions of g in all, then one elementwise pass (no broadcast gamma
materialised: at 128x32x32x64 on XLA:CPU the four-reduction form took 2.6x as long,
scripts/bench.py).
Layer norm's parameter sums run over the other axes, so it uses the general line.

batch_norm also returns (mu, var) so a layer can update running statistics.
If those outputs are differentiated too, their cotangents (gm, gv) add
    dL/dx += gm / m + gv 2 (x - mu) / m
so the rule is exact for every output, not only y.

Numerical choices, made here:
* eps is added to the variance inside the square root: r = 1/sqrt(var + eps).
* Statistics are computed in float32 (or float64 for float64 input) even when
  x is float16/bfloat16; y is cast back to x's dtype, but batch_norm returns
  (mu, var) in that float32 (float64) statistics dtype: a float16 batch
  variance above 65,504 (activation std above ~256) would otherwise come back
  ``inf`` and poison running statistics. Keep running statistics in float32.
* The variance is the two-pass mean((x - mu)^2), never E[x^2] - mu^2, which
  cancels catastrophically when var << mu^2 (near-constant features).

Conventions of the functional batch norm (vs PyTorch / Flax):
* ``batch_norm`` is the training-mode op only: it normalises with the batch
  statistics and *returns* them (biased variance, divided by m, as both
  frameworks normalise with); it keeps no running statistics and has no
  momentum (``torch.nn.functional.batch_norm`` updates running buffers in place).
  Running averages are the caller's: ``jdlfs.layers.BatchNorm`` keeps them with
  momentum 0.9 = PyTorch's 0.1 = Flax's 0.9 (Flax's default is 0.99), and with
  the unbiased m / (m - 1) variance as PyTorch does (Flax keeps the biased one).
* ``batch_norm_inference`` normalises with given statistics, which may be
  float32 for float16/bfloat16 x (it computes in float32 then).
* Normalisation is over every axis but the last (NHWC, channels last; PyTorch
  normalises NCHW's axis 1). The default eps = 1e-5 is both frameworks' default.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from .._checks import float_array, same_dtype, shape_is, static_float
from ._precision import acc_dtype, upcast


def _normalize(x, axes, eps):
    """Returns (xh, mu, var, r) in the statistics dtype; mu/var keep dims."""
    xf = upcast(x)
    mu = jnp.mean(xf, axis=axes, keepdims=True)
    var = jnp.mean(jnp.square(xf - mu), axis=axes, keepdims=True)
    r = jax.lax.rsqrt(var + eps)
    return (xf - mu) * r, mu, var, r


def _norm_input_grad(g_xh, xh, r, axes, m):
    """dL/dx = (r / m) (m dxh - sum dxh - xh sum(dxh xh)), sums over ``axes``."""
    sum_d = jnp.sum(g_xh, axis=axes, keepdims=True)
    sum_dx = jnp.sum(g_xh * xh, axis=axes, keepdims=True)
    return (r / m) * (m * g_xh - sum_d - xh * sum_dx)


# ================================================================ batch norm (training)
def _bn_forward(x, gamma, beta, eps):
    axes = tuple(range(x.ndim - 1))
    xh, mu, var, r = _normalize(x, axes, eps)
    y = (xh * gamma + beta).astype(x.dtype)
    return (y, mu.reshape(-1), var.reshape(-1)), (xh, r)  # statistics stay float32+


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def _batch_norm(x, gamma, beta, eps):
    return _bn_forward(x, gamma, beta, eps)[0]


def _batch_norm_fwd(x, gamma, beta, eps):
    out, (xh, r) = _bn_forward(x, gamma, beta, eps)
    return out, (xh, r, gamma)


def _batch_norm_bwd(eps, res, cts):
    xh, r, gamma = res
    g, g_mean, g_var = cts
    axes = tuple(range(xh.ndim - 1))
    m = xh.size // xh.shape[-1]
    gf = g.astype(xh.dtype)
    dgamma = jnp.sum(gf * xh, axis=axes)  # (C,)
    dbeta = jnp.sum(gf, axis=axes)  # (C,)
    dx = (r * gamma / m) * (m * gf - dbeta - xh * dgamma)  # via y: sum dxh = gamma dbeta, sum dxh xh = gamma dgamma
    # via the returned statistics: d mu/dx = 1/m, d var/dx = 2 (x - mu)/m = 2 xh / (r m)
    dx = dx + (g_mean.astype(xh.dtype) + 2 * g_var.astype(xh.dtype) * xh / r) / m
    return dx.astype(g.dtype), dgamma.astype(gamma.dtype), dbeta.astype(gamma.dtype)


_batch_norm.defvjp(_batch_norm_fwd, _batch_norm_bwd)


def _check_affine(x, gamma, beta):
    c = x.shape[-1]
    gamma = float_array("gamma", gamma, rank=1, layout="(C,)")
    beta = float_array("beta", beta, rank=1, layout="(C,)")
    shape_is("gamma", gamma, (c,), "one scale per feature (last axis of x)")
    shape_is("beta", beta, (c,), "one shift per feature (last axis of x)")
    same_dtype(x=x, gamma=gamma, beta=beta)
    return gamma, beta


def batch_norm(x, gamma, beta, *, eps: float = 1e-5):
    """Training-mode batch normalization over every axis but the last.

    Args:
      x: ``(..., C)`` with at least one batch axis (``(N, C)`` or ``(N, H, W, C)``).
      gamma, beta: ``(C,)``.
      eps: added to the variance inside the square root.
    Returns:
      ``(y, batch_mean, batch_var)``: y like x; the batch mean and the biased
      batch variance ``(C,)`` in float32 for float16/bfloat16/float32 x (float64
      for float64), so a float16 variance above 65,504 stays finite. No running
      statistics and no momentum here (module docstring: PyTorch/Flax conventions).
    """
    x = float_array("x", x, min_rank=2, layout="(N, ..., C)")
    gamma, beta = _check_affine(x, gamma, beta)
    return _batch_norm(x, gamma, beta, static_float("eps", eps))


# ================================================================ batch norm (inference)
@partial(jax.custom_vjp, nondiff_argnums=(5,))
def _bn_inference(x, gamma, beta, mean, var, eps):
    r = jax.lax.rsqrt(upcast(var) + eps)
    return ((upcast(x) - mean) * (r * gamma) + beta).astype(x.dtype)


def _bn_inference_fwd(x, gamma, beta, mean, var, eps):
    return _bn_inference(x, gamma, beta, mean, var, eps), (x, gamma, mean, var)


def _bn_inference_bwd(eps, res, g):
    # y = (x - mean) r gamma + beta is affine in x with fixed statistics:
    #   dx = g r gamma; dgamma = sum g (x - mean) r; dbeta = sum g;
    #   dmean = -sum g r gamma; dvar = sum g (x - mean) gamma (-1/2) r^3.
    # Computed (and summed) in float32 or wider, each cast to its argument's dtype.
    x, gamma, mean, var = res
    axes = tuple(range(x.ndim - 1))
    ga = upcast(g)
    r = jax.lax.rsqrt(upcast(var) + eps)
    dx = ga * (r * gamma)
    gxc = jnp.sum(ga * (upcast(x) - mean), axis=axes)
    dgamma = gxc * r
    dbeta = jnp.sum(ga, axis=axes)
    dmean = -jnp.sum(dx, axis=axes)
    dvar = gxc * gamma * (-0.5) * r**3
    return (
        dx.astype(x.dtype),
        dgamma.astype(gamma.dtype),
        dbeta.astype(gamma.dtype),
        dmean.astype(mean.dtype),
        dvar.astype(var.dtype),
    )


_bn_inference.defvjp(_bn_inference_fwd, _bn_inference_bwd)


def batch_norm_inference(x, gamma, beta, mean, var, *, eps: float = 1e-5):
    """Evaluation-mode batch norm with given (running) ``mean`` and ``var`` ``(C,)``:
    ``(x - mean) / sqrt(var + eps) * gamma + beta``. Differentiable in all five arrays.

    ``mean``/``var`` have x's dtype, float32 or float64 (running statistics are
    best kept in float32: a float16 variance overflows above 65,504). The map
    is computed in the wider of float32, x's and the statistics' dtype, and y
    is returned in x's dtype."""
    x = float_array("x", x, min_rank=1, layout="(..., C)")
    gamma, beta = _check_affine(x, gamma, beta)
    mean = float_array("mean", mean, rank=1, layout="(C,)")
    var = float_array("var", var, rank=1, layout="(C,)")
    shape_is("mean", mean, gamma.shape)
    shape_is("var", var, gamma.shape)
    same_dtype(mean=mean, var=var)
    if mean.dtype not in (x.dtype, jnp.dtype(jnp.float32), jnp.dtype(jnp.float64)):
        raise TypeError(
            f"mean and var must have x's dtype {x.dtype}, float32 or float64 (running statistics are kept in "
            f"float32 or wider), got {mean.dtype}"
        )
    work = jnp.promote_types(acc_dtype(x.dtype), mean.dtype)  # float32 statistics with float64 x: float64 math
    return _bn_inference(x, gamma, beta, mean.astype(work), var.astype(work), static_float("eps", eps))


# ================================================================ layer norm
def _ln_forward(x, gamma, beta, eps):
    xh, _, _, r = _normalize(x, (-1,), eps)
    return (xh * gamma + beta).astype(x.dtype), (xh, r)


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def _layer_norm(x, gamma, beta, eps):
    return _ln_forward(x, gamma, beta, eps)[0]


def _layer_norm_fwd(x, gamma, beta, eps):
    y, (xh, r) = _ln_forward(x, gamma, beta, eps)
    return y, (xh, r, gamma)


def _layer_norm_bwd(eps, res, g):
    xh, r, gamma = res
    gf = g.astype(xh.dtype)
    batch_axes = tuple(range(xh.ndim - 1))
    dgamma = jnp.sum(gf * xh, axis=batch_axes)
    dbeta = jnp.sum(gf, axis=batch_axes)
    dx = _norm_input_grad(gf * gamma, xh, r, (-1,), xh.shape[-1])
    return dx.astype(g.dtype), dgamma.astype(gamma.dtype), dbeta.astype(gamma.dtype)


_layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


def layer_norm(x, gamma, beta, *, eps: float = 1e-5):
    """Layer normalization over the last axis: ``x (..., D)``, ``gamma, beta (D,)``."""
    x = float_array("x", x, min_rank=1, layout="(..., D)")
    gamma, beta = _check_affine(x, gamma, beta)
    return _layer_norm(x, gamma, beta, static_float("eps", eps))
