"""init/apply layers and models: shapes, state, keys, and gradients that come
from the hand-written rules and equal autodiff."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdlfs import functional as F
from jdlfs import init, models
from jdlfs import layers as L
from jdlfs.gradcheck import custom_vjp_count, strip_custom_vjp

KEY = jax.random.key(0)


@pytest.mark.parametrize(
    "model, shape, out, count",
    [
        (models.mlp((784, 128, 10)), (1, 784), (1, 10), 784 * 128 + 128 + 128 * 10 + 10),
        (models.lenet(), (1, 28, 28, 1), (1, 10), 5 * 5 * 4 + 4 + 576 * 32 + 32 + 32 * 10 + 10),
        (
            models.cifar_cnn(),
            (1, 32, 32, 3),
            (1, 10),
            27 * 32 + 64 + 288 * 64 + 128 + 576 * 128 + 256 + 2048 * 256 + 256 + 2570,
        ),
        (
            models.cifar_cnn(batch_norm=False, dropout=0.0),
            (1, 32, 32, 3),
            (1, 10),
            27 * 32 + 32 + 288 * 64 + 64 + 576 * 128 + 128 + 2048 * 256 + 256 + 2570,
        ),
        (models.perceptron(), (1, 2), (1, 1), 3),
    ],
)
def test_model_shapes_and_parameter_counts(model, shape, out, count):
    params, state = model.init(KEY, shape)
    assert L.param_count(params) == count
    y, _ = model.apply(params, state, jnp.ones((3,) + shape[1:], jnp.float32), key=KEY, train=True)
    assert y.shape == (3,) + out[1:]
    text = L.summary(model, params, state, shape)
    assert f"{count:,}" in text and "output shape" in text


def test_mlp_checks_input_size():
    with pytest.raises(ValueError, match="expects 784 input features"):
        models.mlp((784, 10)).init(KEY, (1, 100))


def test_serial_rejects_parameters_of_another_model():
    small = models.mlp((784, 10)).init(KEY, (1, 784))
    with pytest.raises(ValueError, match="one entry per layer"):
        models.mlp((784, 32, 10)).apply(*small, jnp.ones((2, 784), jnp.float32))


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: L.Linear(0), "out_features must be a positive int"),
        (lambda: L.Conv2d(-1), "out_channels must be a positive int"),
        (lambda: L.Dropout(1.5), r"Dropout rate must be in \[0, 1\)"),
        (lambda: models.mlp((784,)), "at least"),
    ],
)
def test_layer_construction_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_dropout_needs_a_key_in_training_only():
    model = models.cifar_cnn()
    params, state = model.init(KEY, (1, 32, 32, 3))
    x = jnp.ones((2, 32, 32, 3), jnp.float32)
    with pytest.raises(ValueError, match="Dropout needs a PRNG key"):
        model.apply(params, state, x, train=True)
    y1, _ = model.apply(params, state, x)  # eval: no key needed
    y2, _ = model.apply(params, state, x)
    np.testing.assert_array_equal(y1, y2)
    a, _ = model.apply(params, state, x, key=jax.random.key(1), train=True)
    b, _ = model.apply(params, state, x, key=jax.random.key(1), train=True)
    c, _ = model.apply(params, state, x, key=jax.random.key(2), train=True)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_serial_gives_each_stochastic_layer_its_own_key():
    model = L.serial(L.Dropout(0.5), L.Dropout(0.5))
    params, state = model.init(KEY, (1, 1000))
    y, _ = model.apply(params, state, jnp.ones((1, 1000), jnp.float32), key=KEY, train=True)
    kept = float(jnp.mean(y != 0))
    assert 0.2 < kept < 0.3  # 0.5 * 0.5, not 0.5 (same mask twice)


def test_batchnorm_running_statistics():
    bn = L.BatchNorm(momentum=0.9)
    params, state = bn.init(KEY, (1, 4, 4, 3))
    x = 5.0 + 2.0 * jax.random.normal(KEY, (8, 4, 4, 3), jnp.float32)
    y, new = bn.apply(params, state, x, train=True)
    m = 8 * 4 * 4
    np.testing.assert_allclose(new["mean"], 0.1 * np.asarray(x).mean((0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(new["var"], 0.9 + 0.1 * np.asarray(x).var((0, 1, 2)) * m / (m - 1), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(y).mean((0, 1, 2)), 0, atol=1e-5)
    y_eval, same = bn.apply(params, new, x, train=False)
    assert same is new
    expected = (np.asarray(x) - np.asarray(new["mean"])) / np.sqrt(np.asarray(new["var"]) + 1e-5)
    np.testing.assert_allclose(y_eval, expected, rtol=1e-4, atol=1e-5)


def test_conv_layer_impls_agree():
    x = jax.random.normal(KEY, (2, 9, 9, 3), jnp.float32)
    a, b = L.Conv2d(5, 3, stride=2, impl="lax"), L.Conv2d(5, 3, stride=2, impl="im2col")
    p, s = a.init(KEY, x.shape)
    np.testing.assert_allclose(a.apply(p, s, x)[0], b.apply(p, s, x)[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="impl must be"):
        L.Conv2d(5, impl="fft")


@pytest.mark.parametrize(
    "model, shape",
    [
        (models.mlp((12, 16, 16, 5), "tanh"), (4, 12)),
        (models.lenet(), (2, 28, 28, 1)),
        (
            L.serial(
                L.Conv2d(4, 3, stride=2),
                L.BatchNorm(),
                L.Relu(),
                L.AvgPool2d(2, 1),
                L.Flatten(),
                L.LayerNorm(),
                L.Dropout(0.3),
                L.Linear(5),
                name="mixed",
            ),
            (3, 9, 9, 2),
        ),
    ],
)
@pytest.mark.x64
def test_training_gradients_are_hand_written_and_equal_autodiff(model, shape):
    """The gradient of a model's loss uses the custom rules and equals plain
    autodiff of the same forward (float64)."""
    params, state = model.init(KEY, shape)
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    state = jax.tree.map(lambda a: a.astype(jnp.float64), state)
    x = jax.random.normal(jax.random.key(1), shape, jnp.float64)
    y = jnp.arange(shape[0]) % 5

    def loss(params):
        logits, _ = model.apply(params, state, x, key=jax.random.key(2), train=True)
        return F.softmax_cross_entropy(logits, y)

    assert custom_vjp_count(loss, params) >= len(jax.tree.leaves(params)) // 2
    g_hand = jax.grad(loss)(params)
    g_auto = jax.grad(strip_custom_vjp(loss))(params)
    for a, b in zip(jax.tree.leaves(g_hand), jax.tree.leaves(g_auto)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("shape", [(300, 200), (5, 5, 16, 32)])
@pytest.mark.parametrize(
    "name, std",
    [
        ("he_normal", lambda fi, fo: np.sqrt(2 / fi)),
        ("he_uniform", lambda fi, fo: np.sqrt(2 / fi)),
        ("xavier_normal", lambda fi, fo: np.sqrt(2 / (fi + fo))),
        ("xavier_uniform", lambda fi, fo: np.sqrt(2 / (fi + fo))),
        ("normal", lambda fi, fo: 0.01),
        ("zeros", lambda fi, fo: 0.0),
    ],
)
def test_initializer_statistics(shape, name, std):
    fan_in, fan_out = init.fans(shape)
    receptive = int(np.prod(shape[:-2]))
    assert (fan_in, fan_out) == (receptive * shape[-2], receptive * shape[-1])
    w = np.asarray(init.get(name)(KEY, shape))
    assert w.shape == shape
    np.testing.assert_allclose(w.std(), std(fan_in, fan_out), rtol=0.05, atol=1e-12)
    assert abs(w.mean()) < 0.01 + 1e-12
    if name.endswith("uniform"):
        assert np.abs(w).max() <= np.sqrt(3) * std(fan_in, fan_out) * (1 + 1e-6)


def test_unknown_initializer_and_activation():
    with pytest.raises(ValueError, match="unknown initializer"):
        init.get("orthogonal_magic")
    with pytest.raises(ValueError, match="unknown activation"):
        L.activation("swishy")


# ---------------------------------------------------------------- names, intermediates
def test_layers_have_names_not_positions():
    params, state = models.cifar_cnn().init(KEY, (1, 32, 32, 3))
    assert {"conv1", "bn1", "conv2", "conv3", "fc1", "fc2", "dropout"} <= set(params)
    assert params["conv1"]["w"].shape == (3, 3, 3, 32) and state["bn2"]["var"].shape == (64,)
    auto = L.serial(L.Linear(4), L.Relu(), L.Linear(2), L.Relu())
    p, _ = auto.init(KEY, (1, 3))
    assert list(p) == ["linear1", "relu1", "linear2", "relu2"]
    p, _ = L.serial(("enc", L.Linear(4)), L.Relu(), ("head", L.Linear(2))).init(KEY, (1, 3))
    assert list(p) == ["enc", "relu1", "head"]
    with pytest.raises(ValueError, match="unique"):
        L.serial(("a", L.Linear(4)), ("a", L.Linear(2)))
    with pytest.raises(TypeError, match="layers or \\(name, layer\\) pairs"):
        L.serial("relu")


def test_intermediates_and_taps_give_activation_gradients():
    model = models.mlp((6, 5, 4, 3))
    params, state = model.init(KEY, (1, 6))
    x = jax.random.normal(KEY, (7, 6))
    y, _, acts = L.intermediates(model, params, state, x)
    np.testing.assert_array_equal(y, model.apply(params, state, x)[0])
    assert list(acts) == ["fc1", "relu1", "fc2", "relu2", "fc3"]
    np.testing.assert_array_equal(acts["fc3"], y)

    def loss(taps):
        out, _, _ = L.intermediates(model, params, state, x, taps=taps)
        return jnp.sum(jnp.sin(out))

    g = jax.grad(loss)({"relu2": jnp.zeros((7, 4))})["relu2"]
    h2 = acts["relu2"]  # by hand: d/dh2 sum(sin(h2 W3 + b3))
    expected = jnp.cos(h2 @ params["fc3"]["w"] + params["fc3"]["b"]) @ params["fc3"]["w"].T
    np.testing.assert_allclose(g, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="unknown layers"):
        L.intermediates(model, params, state, x, taps={"relu9": 0.0})
    with pytest.raises(TypeError, match="built by serial"):
        L.intermediates(L.Relu(), {}, {}, x)


# ---------------------------------------------------------------- dtypes and empty batches
def test_batchnorm_running_statistics_stay_float32_for_float16_activations():
    bn = L.BatchNorm(momentum=0.9)
    params, state = bn.init(KEY, (1, 8))
    params = jax.tree.map(lambda a: a.astype(jnp.float16), params)
    x = (1000.0 * jax.random.normal(KEY, (64, 8))).astype(jnp.float16)  # variance ~1e6 > float16 max
    _, new = bn.apply(params, state, x, train=True)
    assert new["mean"].dtype == new["var"].dtype == jnp.float32
    assert np.all(np.isfinite(new["var"]))
    ref = 0.9 + 0.1 * np.var(np.asarray(x, np.float64), axis=0) * 64 / 63
    np.testing.assert_allclose(new["var"], ref, rtol=2e-3)


@pytest.mark.parametrize(
    "make, shape",
    [(models.lenet, (0, 28, 28, 1)), (models.cifar_cnn, (0, 32, 32, 3)), (lambda: models.mlp((5, 3)), (0, 5))],
)
def test_empty_batch_evaluates_to_empty_logits(make, shape):
    model = make()
    params, state = model.init(KEY, (1,) + shape[1:])
    y, _ = model.apply(params, state, jnp.zeros(shape, jnp.float32))
    assert y.shape[0] == 0


def test_batchnorm_refuses_to_train_on_an_empty_batch():
    model = models.cifar_cnn()
    params, state = model.init(KEY, (1, 32, 32, 3))
    with pytest.raises(ValueError, match="non-empty batch"):
        model.apply(params, state, jnp.zeros((0, 32, 32, 3)), key=KEY, train=True)


def test_dropout_refuses_a_traced_train_flag():
    layer = L.Dropout(0.5)
    with pytest.raises(TypeError, match="train is static configuration"):
        jax.jit(lambda t: layer.apply({}, {}, jnp.ones(4), key=KEY, train=t))(True)
