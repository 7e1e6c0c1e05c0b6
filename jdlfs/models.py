"""Models built from :mod:`jdlfs.layers`; each is a :class:`~jdlfs.layers.Layer`
(an init/apply pair), so ``model.init(key, input_shape)`` and
``model.apply(params, state, x, key=..., train=...)`` as for any layer."""

from __future__ import annotations

from collections.abc import Sequence

from . import layers as L


def perceptron(*, w_init="zeros") -> L.Layer:
    """Rosenblatt's perceptron: ``step(x w + b)``, one output unit. The step has
    zero gradient; train it with the perceptron rule (experiments/xor.py)."""
    return L.serial(L.Linear(1, w_init=w_init), L.Step(), name="perceptron")


def mlp(sizes: Sequence[int], activation: str = "relu", *, w_init="he_normal") -> L.Layer:
    """Fully connected network ``sizes[0] -> sizes[1] -> ... -> sizes[-1]``
    (e.g. ``(784, 128, 10)``), ``activation`` between layers, none after the
    last (it returns logits). ``sizes[0]`` is checked against the input at init."""
    sizes = tuple(int(s) for s in sizes)
    if len(sizes) < 2:
        raise ValueError(f"mlp needs at least (in, out) sizes, got {sizes}")
    parts = []
    for i, n in enumerate(sizes[1:]):
        parts.append(L.Linear(n, w_init=w_init))
        if i < len(sizes) - 2:
            parts.append(L.activation(activation))
    body = L.serial(*parts, name="mlp-" + "-".join(map(str, sizes)))

    def init(key, input_shape):
        if input_shape[-1] != sizes[0]:
            raise ValueError(f"mlp{sizes} expects {sizes[0]} input features, got input_shape {tuple(input_shape)}")
        return body.init(key, input_shape)

    return L.Layer(init, body.apply, body.name, body.layers)


def lenet() -> L.Layer:
    """The small LeNet of the MNIST studies: Conv 1->4 5x5 (VALID), ReLU,
    MaxPool 2, Flatten, Linear 576->32, ReLU, Linear 32->10. Input (N, 28, 28, 1)."""
    return L.serial(
        L.Conv2d(4, 5, padding="VALID"), L.Relu(), L.MaxPool2d(2),     # (N, 24, 24, 4) -> (N, 12, 12, 4)
        L.Flatten(),                                                     # (N, 576)
        L.Linear(32), L.Relu(), L.Linear(10),                            # (N, 10)
        name="lenet")


def cifar_cnn(*, batch_norm: bool = True, dropout: float = 0.5, impl: str = "lax") -> L.Layer:
    """Conv32 -> Conv64 -> Conv128 (3x3 SAME, each [BatchNorm] ReLU MaxPool 2),
    then FC256 ReLU [Dropout] -> FC10. Input (N, 32, 32, 3)."""
    parts = []
    for width in (32, 64, 128):                                          # 32 -> 16 -> 8 -> 4 pixels
        parts.append(L.Conv2d(width, 3, use_bias=not batch_norm, impl=impl))
        if batch_norm:
            parts.append(L.BatchNorm())
        parts += [L.Relu(), L.MaxPool2d(2)]
    parts += [L.Flatten(), L.Linear(256), L.Relu()]                      # (N, 2048) -> (N, 256)
    if dropout:
        parts.append(L.Dropout(dropout))
    parts.append(L.Linear(10))
    name = f"cifar_cnn(batch_norm={batch_norm}, dropout={dropout})"
    return L.serial(*parts, name=name)
