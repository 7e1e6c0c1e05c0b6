"""Layers as ``init``/``apply`` pairs with explicit parameters, state and keys.

A :class:`Layer` is a pair of pure functions (the ``stax`` idea, plus state as
in Equinox's BatchNorm):

    params, state = layer.init(key, input_shape)
    y, new_state  = layer.apply(params, state, x, key=None, train=False)

* ``input_shape`` is the shape of one batch, batch axis included, e.g.
  ``(1, 28, 28, 1)``; the batch size itself does not matter.
* ``params`` are what the optimizer trains; ``state`` is what the forward pass
  updates (batch-norm running statistics) and is ``{}`` where there is none.
  Both are plain pytrees (dicts / tuples of arrays).
* ``key`` feeds stochastic layers (dropout) and is only used when
  ``train=True``; a stochastic layer in training without a key is an error.
* All math goes through :mod:`jdlfs.functional`, so every gradient comes from
  a hand-written rule.

Output shapes are never written by hand: :func:`output_shape` runs the layer's
own ``apply`` under ``jax.eval_shape`` (no FLOPs), so ``serial`` can chain
layers of any kind.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import functional as F
from . import init as initializers

Params = Any
State = Any


class Layer(NamedTuple):
    init: Callable[..., tuple[Params, State]]     # (key, input_shape) -> (params, state)
    apply: Callable[..., tuple[jax.Array, State]]  # (params, state, x, *, key, train) -> (y, state)
    name: str
    layers: tuple = ()                             # sub-layers of a combinator (for summary)


def output_shape(layer: Layer, params, state, input_shape, dtype=jnp.float32) -> tuple[int, ...]:
    """Shape of ``layer.apply(params, state, x)[0]`` for ``x`` of ``input_shape`` (eval mode)."""
    x = jax.ShapeDtypeStruct(tuple(input_shape), dtype)
    return tuple(jax.eval_shape(lambda p, s, x: layer.apply(p, s, x)[0], params, state, x).shape)


def _stateless(name: str, fn: Callable[[jax.Array], jax.Array]) -> Layer:
    """A layer with no parameters and no state: ``y = fn(x)``."""
    def init(key, input_shape):
        return {}, {}

    def apply(params, state, x, *, key=None, train=False):
        return fn(x), state

    return Layer(init, apply, name)


def _positive(name: str, n) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"{name} must be a positive int, got {n!r}")


# ---------------------------------------------------------------- parameterised layers
def Linear(out_features: int, *, use_bias: bool = True, w_init="he_normal", b_init="zeros") -> Layer:
    """``y = x W + b`` on the last axis; W ``(in, out)``."""
    _positive("out_features", out_features)
    w_init, b_init = initializers.get(w_init), initializers.get(b_init)

    def init(key, input_shape):
        kw, kb = jax.random.split(key)
        params = {"w": w_init(kw, (input_shape[-1], out_features), jnp.float32)}
        if use_bias:
            params["b"] = b_init(kb, (out_features,), jnp.float32)
        return params, {}

    def apply(params, state, x, *, key=None, train=False):
        return F.linear(x, params["w"], params.get("b")), state

    return Layer(init, apply, f"Linear({out_features})")


def Conv2d(out_channels: int, kernel_size=3, *, stride=1, padding="SAME", use_bias: bool = True,
           impl: str = "lax", w_init="he_normal", b_init="zeros") -> Layer:
    """2-D convolution, NHWC in and out, kernel HWIO. ``impl``: ``"lax"`` (fast)
    or ``"im2col"`` (explicit patches + matmul); both are hand-differentiated."""
    _positive("out_channels", out_channels)
    if impl not in ("lax", "im2col"):
        raise ValueError(f"impl must be 'lax' or 'im2col', got {impl!r}")
    conv = F.conv2d if impl == "lax" else F.conv2d_im2col
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    w_init, b_init = initializers.get(w_init), initializers.get(b_init)

    def init(key, input_shape):
        if len(input_shape) != 4:
            raise ValueError(f"Conv2d expects input_shape (N, H, W, C), got {tuple(input_shape)}")
        k_w, k_b = jax.random.split(key)
        params = {"w": w_init(k_w, (kh, kw, input_shape[-1], out_channels), jnp.float32)}
        if use_bias:
            params["b"] = b_init(k_b, (out_channels,), jnp.float32)
        return params, {}

    def apply(params, state, x, *, key=None, train=False):
        return conv(x, params["w"], params.get("b"), stride=stride, padding=padding), state

    return Layer(init, apply, f"Conv2d({out_channels}, {kh}x{kw}, stride={stride}, {padding}, {impl})")


def BatchNorm(*, momentum: float = 0.9, eps: float = 1e-5) -> Layer:
    """Batch normalization over every axis but the last (per channel).

    Training: normalise with the batch statistics and update the running ones,
    ``running = momentum * running + (1 - momentum) * batch`` (the running
    variance uses the unbiased ``m / (m - 1)`` batch variance, as PyTorch does;
    the statistics carry no gradient). Evaluation: normalise with the running
    statistics (:func:`jdlfs.functional.batch_norm_inference`).
    """
    def init(key, input_shape):
        c = input_shape[-1]
        params = {"gamma": jnp.ones((c,), jnp.float32), "beta": jnp.zeros((c,), jnp.float32)}
        state = {"mean": jnp.zeros((c,), jnp.float32), "var": jnp.ones((c,), jnp.float32)}
        return params, state

    def apply(params, state, x, *, key=None, train=False):
        if not train:
            return F.batch_norm_inference(x, params["gamma"], params["beta"], state["mean"], state["var"],
                                          eps=eps), state
        y, mean, var = F.batch_norm(x, params["gamma"], params["beta"], eps=eps)
        m = x.size // x.shape[-1]
        mean, var = jax.lax.stop_gradient(mean), jax.lax.stop_gradient(var * (m / max(m - 1, 1)))
        new_state = {"mean": momentum * state["mean"] + (1 - momentum) * mean,
                     "var": momentum * state["var"] + (1 - momentum) * var}
        return y, new_state

    return Layer(init, apply, f"BatchNorm(momentum={momentum})")


def LayerNorm(*, eps: float = 1e-5) -> Layer:
    """Layer normalization over the last axis, learned ``gamma``/``beta``."""
    def init(key, input_shape):
        d = input_shape[-1]
        return {"gamma": jnp.ones((d,), jnp.float32), "beta": jnp.zeros((d,), jnp.float32)}, {}

    def apply(params, state, x, *, key=None, train=False):
        return F.layer_norm(x, params["gamma"], params["beta"], eps=eps), state

    return Layer(init, apply, "LayerNorm")


def Embedding(vocab_size: int, dim: int, *, w_init=None) -> Layer:
    """Integer ids ``(...)`` -> vectors ``(..., dim)``; table ``N(0, 1/dim)`` by default."""
    w_init = initializers.normal(dim ** -0.5) if w_init is None else initializers.get(w_init)

    def init(key, input_shape):
        return {"table": w_init(key, (vocab_size, dim), jnp.float32)}, {}

    def apply(params, state, ids, *, key=None, train=False):
        return F.embedding(params["table"], ids), state

    return Layer(init, apply, f"Embedding({vocab_size}, {dim})")


def Dropout(rate: float) -> Layer:
    """Inverted dropout; active only with ``train=True``, which then needs ``key``."""
    if not 0.0 <= float(rate) < 1.0:
        raise ValueError(f"Dropout rate must be in [0, 1), got {rate}")
    def init(key, input_shape):
        return {}, {}

    def apply(params, state, x, *, key=None, train=False):
        if train and rate > 0 and key is None:
            raise ValueError("Dropout needs a PRNG key when train=True: apply(..., key=key, train=True)")
        return F.dropout(key, x, rate, deterministic=not train), state

    return Layer(init, apply, f"Dropout({rate})")


# ---------------------------------------------------------------- stateless layers
def MaxPool2d(window=2, stride=None, padding="VALID") -> Layer:
    return _stateless(f"MaxPool2d({window})", lambda x: F.max_pool2d(x, window, stride, padding))


def AvgPool2d(window=2, stride=None, padding="VALID") -> Layer:
    return _stateless(f"AvgPool2d({window})", lambda x: F.avg_pool2d(x, window, stride, padding))


def GlobalAvgPool() -> Layer:
    return _stateless("GlobalAvgPool", F.global_avg_pool)


def Flatten() -> Layer:
    """``(N, ...) -> (N, prod(...))`` (a reshape; its VJP is the inverse reshape)."""
    return _stateless("Flatten", lambda x: x.reshape(x.shape[0], -1))


Relu = lambda: _stateless("Relu", F.relu)                                    # noqa: E731
Sigmoid = lambda: _stateless("Sigmoid", F.sigmoid)                           # noqa: E731
Tanh = lambda: _stateless("Tanh", F.tanh)                                    # noqa: E731
Gelu = lambda approximate=False: _stateless("Gelu", lambda x: F.gelu(x, approximate))  # noqa: E731
LeakyRelu = lambda slope=0.01: _stateless("LeakyRelu", lambda x: F.leaky_relu(x, slope))  # noqa: E731
Step = lambda: _stateless("Step", F.step)                                    # noqa: E731

ACTIVATIONS = {"relu": Relu, "sigmoid": Sigmoid, "tanh": Tanh, "gelu": Gelu,
               "leaky_relu": LeakyRelu, "step": Step}


def activation(name: str) -> Layer:
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; known: {sorted(ACTIVATIONS)}") from None


# ---------------------------------------------------------------- combinators
def serial(*layers: Layer, name: str = "serial") -> Layer:
    """Compose layers left to right. Params and state are tuples, one entry per
    layer; ``key`` is split so every stochastic layer gets its own."""
    if not layers:
        raise ValueError("serial needs at least one layer")

    def init(key, input_shape):
        params, states, shape = [], [], tuple(input_shape)
        for layer, k in zip(layers, jax.random.split(key, len(layers))):
            p, s = layer.init(k, shape)
            params.append(p)
            states.append(s)
            shape = output_shape(layer, p, s, shape)
        return tuple(params), tuple(states)

    def apply(params, state, x, *, key=None, train=False):
        if len(params) != len(layers) or len(state) != len(layers):
            raise ValueError(f"{name}: params and state must hold one entry per layer ({len(layers)}), "
                             f"got {len(params)} and {len(state)}; were they made by this model's init?")
        keys = jax.random.split(key, len(layers)) if key is not None else [None] * len(layers)
        new_states = []
        for layer, p, s, k in zip(layers, params, state, keys):
            x, s = layer.apply(p, s, x, key=k, train=train)
            new_states.append(s)
        return x, tuple(new_states)

    return Layer(init, apply, name, tuple(layers))


# ---------------------------------------------------------------- utilities
def param_count(params) -> int:
    """Total number of scalar parameters in a pytree."""
    return int(sum(np.prod(np.shape(p)) for p in jax.tree.leaves(params)))


def summary(model: Layer, params, state, input_shape) -> str:
    """A table: layer, output shape, parameter count (one row per sub-layer of
    a ``serial`` model)."""
    rows, shape = [("input", str(tuple(input_shape)), "")], tuple(input_shape)
    parts = zip(model.layers, params, state) if model.layers else [(model, params, state)]
    for layer, p, s in parts:
        shape = output_shape(layer, p, s, shape)
        rows.append((layer.name, str(shape), f"{param_count(p):,}"))
    rows.append(("total", "", f"{param_count(params):,}"))
    head = ("layer", "output shape", "params")
    w = [max(len(r[i]) for r in rows + [head]) for i in range(3)]
    fmt = lambda r: f"{r[0]:<{w[0]}}  {r[1]:<{w[1]}}  {r[2]:>{w[2]}}"  # noqa: E731
    return "\n".join([fmt(head), "-" * (sum(w) + 4)] + [fmt(r) for r in rows])
