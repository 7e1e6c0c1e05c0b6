"""Pointwise activations, each with its derivative written beside it.

For a pointwise ``y = f(x)`` the VJP is ``dL/dx = g * f'(x)``; each rule saves
whatever makes ``f'`` cheapest (the output for sigmoid/tanh, a mask for ReLU).

=============  =====================================  ==================================
op             forward                                 derivative f'(x)
=============  =====================================  ==================================
relu           max(x, 0)                               1[x > 0]   (0 at the kink x = 0)
leaky_relu     x if x > 0 else a x                     1 if x > 0 else a
sigmoid        1 / (1 + e^-x)                          y (1 - y)
tanh           tanh x                                  1 - y^2
gelu (exact)   x Phi(x)                                Phi(x) + x phi(x)
gelu (tanh)    x/2 (1 + tanh u),  u = c (x + k x^3)    1/2 (1 + t) + x/2 (1 - t^2) c (1 + 3k x^2)
step           1[x > 0]                                0 everywhere (a.e.)
=============  =====================================  ==================================

with ``Phi``/``phi`` the standard normal CDF/density, ``c = sqrt(2/pi)``,
``k = 0.044715``, ``t = tanh u``.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from .._checks import float_array, static_bool, static_float


# ---------------------------------------------------------------- relu
@jax.custom_vjp
def _relu(x):
    return jnp.maximum(x, 0)


def _relu_fwd(x):
    return _relu(x), x > 0  # mask; the subgradient at 0 is taken as 0


def _relu_bwd(positive, g):
    return (jnp.where(positive, g, 0),)


_relu.defvjp(_relu_fwd, _relu_bwd)


def relu(x):
    """``max(x, 0)``; gradient ``g * 1[x > 0]`` (0 at exactly ``x = 0``)."""
    return _relu(float_array("x", x))


# ---------------------------------------------------------------- leaky relu
@partial(jax.custom_vjp, nondiff_argnums=(1,))
def _leaky_relu(x, slope):
    return jnp.where(x > 0, x, slope * x)


def _leaky_relu_fwd(x, slope):
    return _leaky_relu(x, slope), x > 0


def _leaky_relu_bwd(slope, positive, g):
    return (jnp.where(positive, g, slope * g),)


_leaky_relu.defvjp(_leaky_relu_fwd, _leaky_relu_bwd)


def leaky_relu(x, negative_slope: float = 0.01):
    """``x`` for ``x > 0`` else ``negative_slope * x``; gradient 1 or ``negative_slope``."""
    return _leaky_relu(float_array("x", x), static_float("negative_slope", negative_slope))


# ---------------------------------------------------------------- sigmoid
@jax.custom_vjp
def _sigmoid(x):
    # lax.logistic is the numerically stable 1 / (1 + exp(-x)) (no overflow for x << 0).
    return lax.logistic(x)


def _sigmoid_fwd(x):
    y = _sigmoid(x)
    return y, y


def _sigmoid_bwd(y, g):
    return (g * y * (1 - y),)  # sigma' = sigma (1 - sigma)


_sigmoid.defvjp(_sigmoid_fwd, _sigmoid_bwd)


def sigmoid(x):
    """Logistic ``1 / (1 + exp(-x))``; gradient ``g * y * (1 - y)``."""
    return _sigmoid(float_array("x", x))


# ---------------------------------------------------------------- tanh
@jax.custom_vjp
def _tanh(x):
    return jnp.tanh(x)


def _tanh_fwd(x):
    y = jnp.tanh(x)
    return y, y


def _tanh_bwd(y, g):
    return (g * (1 - y * y),)  # tanh' = 1 - tanh^2


_tanh.defvjp(_tanh_fwd, _tanh_bwd)


def tanh(x):
    """Hyperbolic tangent; gradient ``g * (1 - y^2)``."""
    return _tanh(float_array("x", x))


# ---------------------------------------------------------------- gelu
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_GELU_K = 0.044715


def _gelu_forward(x, approximate):
    if approximate:
        return 0.5 * x * (1 + jnp.tanh(_SQRT_2_OVER_PI * (x + _GELU_K * x**3)))
    return 0.5 * x * (1 + lax.erf(x * _INV_SQRT_2))  # x Phi(x)


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def _gelu(x, approximate):
    return _gelu_forward(x, approximate)


def _gelu_fwd(x, approximate):
    return _gelu_forward(x, approximate), x


def _gelu_bwd(approximate, x, g):
    if approximate:
        t = jnp.tanh(_SQRT_2_OVER_PI * (x + _GELU_K * x**3))
        du = _SQRT_2_OVER_PI * (1 + 3 * _GELU_K * x * x)
        d = 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * du
    else:
        cdf = 0.5 * (1 + lax.erf(x * _INV_SQRT_2))  # Phi(x)
        pdf = _INV_SQRT_2PI * jnp.exp(-0.5 * x * x)  # phi(x)
        d = cdf + x * pdf
    return (g * d,)


_gelu.defvjp(_gelu_fwd, _gelu_bwd)


def gelu(x, approximate: bool = False):
    """Gaussian error linear unit ``x Phi(x)`` (``approximate=True``: the tanh form).

    The default is the *exact* erf form, as PyTorch's ``nn.GELU()``; note that
    ``jax.nn.gelu`` and Flax's ``nn.gelu`` default to the tanh approximation
    (``approximate=True``): pass it explicitly when matching them (the two
    differ by up to ~5e-4). ``approximate`` is a static Python bool (a traced
    value is refused). Exact derivative ``Phi(x) + x phi(x)``; the tanh form's
    derivative is in the module table.
    """
    return _gelu(float_array("x", x), static_bool("approximate", approximate))


# ---------------------------------------------------------------- step
@jax.custom_vjp
def _step(x):
    return (x > 0).astype(x.dtype)


def _step_fwd(x):
    return _step(x), None


def _step_bwd(_, g):
    return (jnp.zeros_like(g),)


_step.defvjp(_step_fwd, _step_bwd)


def step(x):
    """Heaviside step ``1[x > 0]`` (``step(0) = 0``), the perceptron's activation.

    Its derivative is zero everywhere except at 0, where it does not exist, so
    the gradient returned is exactly zero: no gradient-based learning passes
    through a step. (The perceptron learning rule does not use gradients.)
    """
    return _step(float_array("x", x))
