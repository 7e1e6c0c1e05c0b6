"""The trainer: learning, determinism, exact resume, evaluation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jdlfs import layers as L, models, train


def blobs(n, seed=0):
    """Three Gaussian blobs in 8-D: an easy, real learning problem."""
    centers = np.random.default_rng(123).normal(size=(3, 8)) * 3     # fixed across splits
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n).astype(np.int32)
    x = (centers[y] + rng.normal(size=(n, 8))).astype(np.float32)
    return x, y


def _fit(epochs, key=1, checkpoint=None, model=None, data=None):
    model = model or models.mlp((8, 32, 3))
    params, state = model.init(jax.random.key(0), (1, 8))
    return train.fit(model, params, state, optax.sgd(0.05, momentum=0.9), data or blobs(512),
                     epochs=epochs, batch_size=32, key=jax.random.key(key), test_data=blobs(256, 1),
                     num_classes=3, progress=False, checkpoint=checkpoint, chunks=3)


def test_fit_learns_and_records_history():
    r = _fit(4)
    assert len(r.history) == 4
    assert r.history[-1]["train_loss"] < r.history[0]["train_loss"]
    assert r.history[-1]["test_accuracy"] > 0.95
    assert set(r.history[0]) >= {"epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "train_seconds"}


def test_same_key_bit_identical_different_key_differs():
    a, b, c = _fit(2), _fit(2), _fit(2, key=2)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(c.params)))


def test_checkpoint_resume_is_exact(tmp_path):
    # dropout + batch norm: keys and running state must both resume exactly
    model = L.serial(L.Linear(32), L.BatchNorm(), L.Relu(), L.Dropout(0.3), L.Linear(3))
    straight = _fit(3, model=model)
    ckpt = tmp_path / "ckpt.pkl"
    _fit(2, model=model, checkpoint=ckpt)                # "interrupted" after 2 epochs
    resumed = _fit(3, model=model, checkpoint=ckpt)      # picks up at epoch 3
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    for x, y in zip(jax.tree.leaves((straight.params, straight.state)),
                    jax.tree.leaves((resumed.params, resumed.state))):
        np.testing.assert_array_equal(x, y)
    assert int(resumed.train_state.step) == 3 * (512 // 32)


def test_evaluate_counts_every_example_and_builds_confusion():
    model = models.mlp((8, 16, 3))
    params, state = model.init(jax.random.key(0), (1, 8))
    x, y = blobs(1037)                                   # not a multiple of the batch size
    ev = train.make_evaluate(model, num_classes=3, batch_size=100)(params, state, x, y)
    logits, _ = model.apply(params, state, jnp.asarray(x))
    pred = np.asarray(jnp.argmax(logits, -1))
    assert ev["confusion"].sum() == 1037
    np.testing.assert_array_equal(ev["confusion"].sum(1), np.bincount(y, minlength=3))
    assert ev["accuracy"] == pytest.approx(np.mean(pred == y))
    ref_loss = float(optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(y)).mean())
    assert ev["loss"] == pytest.approx(ref_loss, rel=1e-5)


def test_evaluate_rejects_wrong_num_classes_and_maskless_loss():
    model = models.mlp((8, 16, 3))
    params, state = model.init(jax.random.key(0), (1, 8))
    x, y = blobs(10)
    with pytest.raises(ValueError, match="outputs 3 logits but num_classes=10"):
        train.make_evaluate(model, num_classes=10)(params, state, x, y)
    with pytest.raises(ValueError, match="must accept a mask= keyword"):
        train.make_evaluate(model, num_classes=3, loss_fn=lambda logits, labels: 0.0)


def test_write_json_handles_numpy(tmp_path):
    train.write_json(tmp_path / "r.json", {"a": np.float32(1.5), "m": np.eye(2, dtype=np.int32), "j": jnp.ones(2)})
    import json
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": 1.5, "m": [[1, 0], [0, 1]], "j": [1.0, 1.0]}
