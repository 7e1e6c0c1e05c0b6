"""The classic MLPs and CNNs, as :func:`jdlfs.layers.serial` stacks of named
layers; each is a :class:`~jdlfs.layers.Layer` (an init/apply pair), so
``model.init(key, input_shape)`` and ``model.apply(params, state, x, key=...,
train=...)`` as for any layer, with ``params["fc1"]["w"]``-style access."""

from __future__ import annotations

from collections.abc import Sequence

from .. import layers as L


def perceptron(*, w_init="zeros") -> L.Layer:
    """Rosenblatt's perceptron: ``step(x w + b)``, one output unit (layers
    ``fc``, ``step``). The step has zero gradient; train it with the
    perceptron rule (experiments/xor.py)."""
    return L.serial(("fc", L.Linear(1, w_init=w_init)), ("step", L.Step()), name="perceptron")


def mlp(sizes: Sequence[int], activation: str = "relu", *, w_init="he_normal") -> L.Layer:
    """Fully connected network ``sizes[0] -> sizes[1] -> ... -> sizes[-1]``
    (e.g. ``(784, 128, 10)``), ``activation`` between layers, none after the
    last (it returns logits). Layers ``fc1, <activation>1, fc2, ...``
    (``fc1, relu1, fc2`` for ``(784, 128, 10)``). ``sizes[0]`` is checked
    against the input at init."""
    sizes = tuple(int(s) for s in sizes)
    if len(sizes) < 2:
        raise ValueError(f"mlp needs at least (in, out) sizes, got {sizes}")
    act = L.activation(activation)  # validates the name
    parts = []
    for i, n in enumerate(sizes[1:], start=1):
        parts.append((f"fc{i}", L.Linear(n, w_init=w_init)))
        if i < len(sizes) - 1:
            parts.append((f"{activation}{i}", L.activation(activation) if i > 1 else act))
    body = L.serial(*parts, name="mlp-" + "-".join(map(str, sizes)))

    def init(key, input_shape):
        if input_shape[-1] != sizes[0]:
            raise ValueError(f"mlp{sizes} expects {sizes[0]} input features, got input_shape {tuple(input_shape)}")
        return body.init(key, input_shape)

    return body._replace(init=init)


def lenet() -> L.Layer:
    """The small LeNet of the MNIST studies: Conv 1->4 5x5 (VALID), ReLU,
    MaxPool 2, Flatten, Linear 576->32, ReLU, Linear 32->10. Input (N, 28, 28, 1).
    Layers ``conv1, relu1, pool1, flatten, fc1, relu2, fc2``."""
    return L.serial(
        ("conv1", L.Conv2d(4, 5, padding="VALID")),
        ("relu1", L.Relu()),  # (N, 24, 24, 4)
        ("pool1", L.MaxPool2d(2)),  # (N, 12, 12, 4)
        ("flatten", L.Flatten()),  # (N, 576)
        ("fc1", L.Linear(32)),
        ("relu2", L.Relu()),
        ("fc2", L.Linear(10)),  # (N, 10)
        name="lenet",
    )


def cifar_cnn(*, batch_norm: bool = True, dropout: float = 0.5, impl: str = "lax") -> L.Layer:
    """Conv32 -> Conv64 -> Conv128 (3x3 SAME, each [BatchNorm] ReLU MaxPool 2),
    then FC256 ReLU [Dropout] -> FC10. Input (N, 32, 32, 3).

    Layers ``conv1, [bn1,] relu1, pool1, conv2, ..., pool3, flatten, fc1,
    relu4, [dropout,] fc2``.
    """
    parts = []
    for i, width in enumerate((32, 64, 128), start=1):  # 32 -> 16 -> 8 -> 4 pixels
        parts.append((f"conv{i}", L.Conv2d(width, 3, use_bias=not batch_norm, impl=impl)))
        if batch_norm:
            parts.append((f"bn{i}", L.BatchNorm()))
        parts += [(f"relu{i}", L.Relu()), (f"pool{i}", L.MaxPool2d(2))]
    parts += [("flatten", L.Flatten()), ("fc1", L.Linear(256)), ("relu4", L.Relu())]  # (N, 2048) -> (N, 256)
    if dropout:
        parts.append(("dropout", L.Dropout(dropout)))
    parts.append(("fc2", L.Linear(10)))
    return L.serial(*parts, name=f"cifar_cnn(batch_norm={batch_norm}, dropout={dropout})")
