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

Layers inside :func:`serial` have names (``"conv1"``, ``"fc2"``, or automatic
``"linear1"``, ``"relu2"``, ...): parameters and state are dicts keyed by those
names (``params["fc1"]["w"]``), never positions, and
:func:`intermediates` returns every named layer's output (optionally with a
"tap" added to it, so ``jax.grad`` with respect to the taps gives the gradient
with respect to each activation).

Output shapes are never written by hand: :func:`output_shape` runs the layer's
own ``apply`` under ``jax.eval_shape`` (no FLOPs), so ``serial`` can chain
layers of any kind.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import functional as F
from . import init as initializers
from ._checks import static_bool

Params = Any
State = Any


class Layer(NamedTuple):
    init: Callable[..., tuple[Params, State]]  # (key, input_shape) -> (params, state)
    apply: Callable[..., tuple[jax.Array, State]]  # (params, state, x, *, key, train) -> (y, state)
    name: str  # a description, e.g. "Linear(128)"
    layers: tuple = ()  # a combinator's named sub-layers: ((name, Layer), ...)
    run: Callable | None = None  # serial only: apply that also returns every activation


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


def Conv2d(
    out_channels: int,
    kernel_size=3,
    *,
    stride=1,
    padding="SAME",
    use_bias: bool = True,
    impl: str = "lax",
    w_init="he_normal",
    b_init="zeros",
) -> Layer:
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
    statistics (:func:`jdlfs.functional.batch_norm_inference`). The running
    statistics are float32 whatever the activation dtype. Training on an empty
    batch is an error.

    Conventions, for readers coming from other libraries: ``momentum=0.9`` here
    is PyTorch's ``momentum=0.1`` (PyTorch weights the *new* batch by its
    momentum) and Flax's ``momentum=0.9`` (Flax's default is 0.99); the running
    variance is the unbiased one, as in PyTorch (Flax keeps the biased one).
    """

    def init(key, input_shape):
        c = input_shape[-1]
        params = {"gamma": jnp.ones((c,), jnp.float32), "beta": jnp.zeros((c,), jnp.float32)}
        state = {"mean": jnp.zeros((c,), jnp.float32), "var": jnp.ones((c,), jnp.float32)}
        return params, state

    def apply(params, state, x, *, key=None, train=False):
        if not train:
            return F.batch_norm_inference(
                x, params["gamma"], params["beta"], state["mean"], state["var"], eps=eps
            ), state
        m = math.prod(x.shape[:-1])
        if m == 0:
            raise ValueError(
                f"BatchNorm in training needs a non-empty batch, got x of shape {tuple(x.shape)}: "
                "batch statistics of zero values are undefined (and would turn the running "
                "statistics into NaN)"
            )
        y, mean, var = F.batch_norm(x, params["gamma"], params["beta"], eps=eps)
        # Running statistics stay float32 whatever the activation dtype (a float16 variance overflows at 65,504).
        mean = jax.lax.stop_gradient(mean).astype(jnp.float32)
        var = jax.lax.stop_gradient(var).astype(jnp.float32) * (m / max(m - 1, 1))
        new_state = {
            "mean": momentum * state["mean"] + (1 - momentum) * mean,
            "var": momentum * state["var"] + (1 - momentum) * var,
        }
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
    w_init = initializers.normal(dim**-0.5) if w_init is None else initializers.get(w_init)

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
        train = static_bool("train", train)
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
    """``(N, ...) -> (N, prod(...))`` (a reshape; its VJP is the inverse reshape).
    An empty batch (N = 0) gives an empty ``(0, prod(...))``."""
    return _stateless("Flatten", lambda x: x.reshape(x.shape[0], math.prod(x.shape[1:])))


Relu = lambda: _stateless("Relu", F.relu)  # noqa: E731
Sigmoid = lambda: _stateless("Sigmoid", F.sigmoid)  # noqa: E731
Tanh = lambda: _stateless("Tanh", F.tanh)  # noqa: E731
Gelu = lambda approximate=False: _stateless("Gelu", lambda x: F.gelu(x, approximate))  # noqa: E731
LeakyRelu = lambda slope=0.01: _stateless("LeakyRelu", lambda x: F.leaky_relu(x, slope))  # noqa: E731
Step = lambda: _stateless("Step", F.step)  # noqa: E731

ACTIVATIONS = {"relu": Relu, "sigmoid": Sigmoid, "tanh": Tanh, "gelu": Gelu, "leaky_relu": LeakyRelu, "step": Step}


def activation(name: str) -> Layer:
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; known: {sorted(ACTIVATIONS)}") from None


# ---------------------------------------------------------------- combinators
def _kind(layer: Layer) -> str:
    """``"Conv2d(32, 3x3, ...)"`` -> ``"conv2d"``: the stem of an automatic layer name."""
    return layer.name.split("(")[0].strip().lower().replace(" ", "_") or "layer"


def _named(layers) -> tuple[tuple[str, Layer], ...]:
    """Give every layer a name: ``(name, layer)`` pairs are kept, bare layers get
    ``<kind><n>`` (``linear1``, ``relu2``: n counts layers of that kind)."""
    named, counts = [], {}
    for item in layers:
        if isinstance(item, Layer):
            kind = _kind(item)
            counts[kind] = counts.get(kind, 0) + 1
            named.append((f"{kind}{counts[kind]}", item))
        elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str) and isinstance(item[1], Layer):
            named.append(item)
        else:
            raise TypeError(f"serial takes layers or (name, layer) pairs, got {item!r}")
    names = [n for n, _ in named]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"serial: layer names must be unique, got {dupes} more than once in {names}")
    return tuple(named)


def serial(*layers, name: str = "serial") -> Layer:
    """Compose layers left to right.

    Each argument is a :class:`Layer` or a ``(name, layer)`` pair; unnamed
    layers are named ``<kind><n>`` (``linear1``, ``relu1``, ``linear2``).
    Params and state are dicts keyed by those names; ``key`` is split so every
    stochastic layer gets its own.
    """
    if not layers:
        raise ValueError("serial needs at least one layer")
    named = _named(layers)
    names = [n for n, _ in named]

    def init(key, input_shape):
        params, states, shape = {}, {}, tuple(input_shape)
        for (n, layer), k in zip(named, jax.random.split(key, len(named))):
            params[n], states[n] = layer.init(k, shape)
            shape = output_shape(layer, params[n], states[n], shape)
        return params, states

    def apply(params, state, x, *, key=None, train=False):
        return _run(params, state, x, key=key, train=train)[:2]

    def _run(params, state, x, *, key=None, train=False, taps=None):
        for what, tree in (("params", params), ("state", state)):
            if not isinstance(tree, dict) or sorted(tree) != sorted(names):
                got = sorted(tree) if isinstance(tree, dict) else type(tree).__name__
                raise ValueError(
                    f"{name}: {what} must hold one entry per layer, keyed {names}; got {got}. "
                    "Were they made by this model's init?"
                )
        keys = jax.random.split(key, len(named)) if key is not None else [None] * len(named)
        new_states, acts = {}, {}
        for (n, layer), k in zip(named, keys):
            x, new_states[n] = layer.apply(params[n], state[n], x, key=k, train=train)
            if taps is not None and n in taps:
                x = x + taps[n]
            acts[n] = x
        return x, new_states, acts

    return Layer(init, apply, name, named, _run)


def intermediates(model: Layer, params, state, x, *, key=None, train=False, taps=None):
    """Run a :func:`serial` model and also return every layer's output.

    Returns ``(y, new_state, activations)`` with ``activations[name]`` the
    output of layer ``name``. ``taps`` (optional) maps layer names to arrays
    added to those outputs: with zero taps the result is unchanged, and
    ``jax.grad`` with respect to a tap is the gradient of the loss with
    respect to that layer's output (how ``experiments/init_schemes.py``
    measures dL/dh per layer).
    """
    if model.run is None:
        raise TypeError(f"intermediates needs a model built by serial, got {model.name!r}")
    if taps is not None:
        unknown = sorted(set(taps) - {n for n, _ in model.layers})
        if unknown:
            raise ValueError(f"taps names unknown layers {unknown}; layers are {[n for n, _ in model.layers]}")
    return model.run(params, state, x, key=key, train=train, taps=taps)


# ---------------------------------------------------------------- utilities
def param_count(params) -> int:
    """Total number of scalar parameters in a pytree."""
    return int(sum(np.prod(np.shape(p)) for p in jax.tree.leaves(params)))


def summary(model: Layer, params, state, input_shape) -> str:
    """A table: layer, output shape, parameter count (one row per sub-layer of
    a ``serial`` model)."""
    rows, shape = [("input", str(tuple(input_shape)), "")], tuple(input_shape)
    if model.layers:
        parts = [(f"{n}: {layer.name}", layer, params[n], state[n]) for n, layer in model.layers]
    else:
        parts = [(model.name, model, params, state)]
    for title, layer, p, s in parts:
        shape = output_shape(layer, p, s, shape)
        rows.append((title, str(shape), f"{param_count(p):,}"))
    rows.append(("total", "", f"{param_count(params):,}"))
    head = ("layer", "output shape", "params")
    w = [max(len(r[i]) for r in rows + [head]) for i in range(3)]
    fmt = lambda r: f"{r[0]:<{w[0]}}  {r[1]:<{w[1]}}  {r[2]:>{w[2]}}"  # noqa: E731
    return "\n".join([fmt(head), "-" * (sum(w) + 4)] + [fmt(r) for r in rows])
