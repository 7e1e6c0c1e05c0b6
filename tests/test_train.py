"""The trainer: objectives, learning, determinism, exact resume, evaluation,
frozen parameters, data parallelism, and the errors a user can run into."""

import json
import os
import subprocess
import sys
import textwrap
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jdlfs import functional as F
from jdlfs import layers as L
from jdlfs import models, train


def blobs(n, seed=0, classes=3):
    """Gaussian blobs in 8-D: an easy, real learning problem."""
    centers = np.random.default_rng(123).normal(size=(classes, 8)) * 3  # fixed across splits
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n).astype(np.int32)
    x = (centers[y] + rng.normal(size=(n, 8))).astype(np.float32)
    return x, y


def _fit(epochs, key=1, checkpoint=None, model=None, data=None, optimizer=None, **kw):
    model = model or models.mlp((8, 32, 3))
    params, state = model.init(jax.random.key(0), (1, 8))
    return train.fit(
        model,
        params,
        state,
        optimizer or optax.sgd(0.05, momentum=0.9),
        data or blobs(512),
        epochs=epochs,
        batch_size=32,
        key=jax.random.key(key),
        test_data=blobs(256, 1),
        progress=False,
        checkpoint=checkpoint,
        **kw,
    )


def _leaves_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ---------------------------------------------------------------- learning and determinism
def test_fit_learns_and_records_history():
    r = _fit(4)
    assert len(r.history) == 4
    assert r.history[-1]["train_loss"] < r.history[0]["train_loss"]
    assert r.history[-1]["test_accuracy"] > 0.95
    assert set(r.history[0]) >= {
        "epoch",
        "step",
        "train_loss",
        "train_accuracy",
        "test_loss",
        "test_accuracy",
        "train_seconds",
        "train_examples_per_second",
        "test_seconds",
    }
    assert [h["step"] for h in r.history] == [16, 32, 48, 64]
    assert r.test_metrics["confusion"].sum() == 256 and int(r.train_state.step) == 64


def test_same_key_bit_identical_different_key_differs():
    a, b, c = _fit(2), _fit(2), _fit(2, key=2)
    _leaves_equal(a.params, b.params)
    assert any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(c.params)))


def test_fit_does_not_consume_the_callers_arrays():
    model = models.mlp((8, 32, 3))
    params, state = model.init(jax.random.key(0), (1, 8))
    before = jax.tree.map(np.asarray, params)
    train.fit(
        model, params, state, optax.sgd(0.1), blobs(64), epochs=1, batch_size=32, key=jax.random.key(0), progress=False
    )
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, params), before)  # still alive, unchanged


def test_training_metrics_are_exact_sums():
    """The epoch's train_loss is the mean of the per-step losses (sums / count)."""
    model = models.mlp((8, 16, 3))
    params, state = model.init(jax.random.key(0), (1, 8))
    x, y = blobs(96)
    task = train.classification(model)
    opt = optax.sgd(0.1)
    r = train.fit(
        task, params, state, opt, (x, y), epochs=1, batch_size=32, key=jax.random.key(5), progress=False, shuffle=False
    )
    ts, losses, correct = train.init_train_state(params, state, opt), [], 0
    step = jax.jit(train.make_train_step(task.objective, opt))
    shuffle_key, step_key = jax.random.split(jax.random.fold_in(jax.random.key(5), 0))
    for i in range(3):
        batch = (x[32 * i : 32 * (i + 1)], y[32 * i : 32 * (i + 1)])
        ts, m = step(ts, batch, jax.random.fold_in(step_key, i))
        losses.append(float(m["loss"]) / 32)
        correct += float(m["accuracy"])
    assert r.history[0]["train_loss"] == pytest.approx(np.mean(losses), rel=1e-6)
    assert r.history[0]["train_accuracy"] == pytest.approx(correct / 96)
    chex.assert_trees_all_close(r.params, ts.params, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------- objectives
def test_custom_objective_without_labels_trains():
    """Any objective: an autoencoder-style MSE on unlabeled vectors, batch = one array."""
    model = L.serial(L.Linear(4), L.Tanh(), L.Linear(8))
    params, state = model.init(jax.random.key(0), (1, 8))
    x, _ = blobs(256)

    def objective(params, state, batch, key):
        out, state = model.apply(params, state, batch, key=key, train=True)
        loss = F.mse(out, batch)
        return loss, (state, {"loss": loss * batch.shape[0], "count": jnp.float32(batch.shape[0])})

    def eval_fn(params, state, batch, *, weights=None):
        out, _ = model.apply(params, state, batch)
        per = jnp.mean((out - batch) ** 2, axis=-1)
        return {"loss": jnp.sum(weights * per), "count": jnp.sum(weights)}

    r = train.fit(
        objective,
        params,
        state,
        optax.adam(1e-2),
        x,
        epochs=5,
        batch_size=32,
        key=jax.random.key(1),
        test_data=x[:100],
        eval_fn=eval_fn,
        progress=False,
    )
    assert r.history[-1]["train_loss"] < 0.5 * r.history[0]["train_loss"]
    out, _ = model.apply(r.params, r.state, x[:100])
    assert r.test_metrics["loss"] == pytest.approx(float(jnp.mean((out - x[:100]) ** 2)), rel=1e-5)
    assert r.test_metrics["count"] == 100


def test_sequence_objective_masks_padding_and_reports_bits():
    vocab, pad = 7, 0
    table = jax.random.normal(jax.random.key(0), (vocab, vocab))

    def apply(params, state, ids, *, key=None, train=False):
        return F.embedding(params["table"], ids), state

    ids = jax.random.randint(jax.random.key(1), (5, 6), 1, vocab)
    labels = jnp.roll(ids, -1, axis=1).at[:, -2:].set(pad)  # 2 padded positions per row
    task = train.sequence(apply, pad_id=pad)
    loss, (_, m) = task.objective({"table": table}, {}, (ids, labels), jax.random.key(2))
    logits = table[ids]
    per = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    real = labels != pad
    expected = float(jnp.sum(per * real) / jnp.sum(real))
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert float(m["count"]) == 20
    s = train.summarize(m)
    assert s["bits_per_token"] == pytest.approx(expected / np.log(2), rel=1e-5)
    assert s["accuracy"] == pytest.approx(float(jnp.sum((jnp.argmax(logits, -1) == labels) * real)) / 20)
    # evaluation with padded examples (weight 0) ignores them entirely
    full = train.evaluate(task.evaluate, {"table": table}, {}, (ids, labels), batch_size=5)
    split = train.evaluate(task.evaluate, {"table": table}, {}, (ids, labels), batch_size=3)  # 3 + 2 (+1 pad)
    assert full["count"] == split["count"] == 20
    assert split["loss"] == pytest.approx(full["loss"], rel=1e-6) and full["loss"] == pytest.approx(expected, rel=1e-5)


def test_label_smoothing_changes_training_loss_not_evaluation():
    model = models.mlp((8, 16, 3))
    params, state = model.init(jax.random.key(0), (1, 8))
    x, y = blobs(64)
    plain, smooth = train.classification(model), train.classification(model, label_smoothing=0.1)
    l0 = plain.objective(params, state, (x, y), jax.random.key(0))[0]
    l1 = smooth.objective(params, state, (x, y), jax.random.key(0))[0]
    assert float(l1) != pytest.approx(float(l0))
    e0, e1 = (train.evaluate(t.evaluate, params, state, (x, y)) for t in (plain, smooth))
    assert e0["loss"] == pytest.approx(e1["loss"])


def test_frozen_parameters_stay_bit_identical():
    """A probe on a frozen body: which params the optimizer sees, no second loop."""
    model = models.mlp((8, 32, 3))
    params, state = model.init(jax.random.key(0), (1, 8))
    labels = {name: ("train" if name == "fc2" else "frozen") for name in params}
    opt = optax.multi_transform({"train": optax.sgd(0.1), "frozen": optax.set_to_zero()}, labels)
    r = train.fit(model, params, state, opt, blobs(256), epochs=2, batch_size=32, key=jax.random.key(0), progress=False)
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, r.params["fc1"]), jax.tree.map(np.asarray, params["fc1"]))
    assert not np.array_equal(r.params["fc2"]["w"], params["fc2"]["w"])


def test_on_epoch_sees_every_record():
    seen = []
    r = _fit(3, on_epoch=seen.append)
    assert seen == r.history


def test_eval_every_and_log_every_build_a_curve():
    r = _fit(2, eval_every=8, log_every=4)
    steps = [c["step"] for c in r.curve]
    assert steps == [0, 4, 8, 12, 16, 20, 24, 28, 32]
    assert "test_accuracy" in r.curve[0] and "train_loss" not in r.curve[0]
    assert all("test_accuracy" in c for c in r.curve if c["step"] % 8 == 0)
    assert all("test_accuracy" not in c and "train_loss" in c for c in r.curve if c["step"] % 8)
    assert r.curve[-1]["test_accuracy"] == r.history[-1]["test_accuracy"]


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_low_precision_training_keeps_float32_statistics(dtype):
    """Parameters and activations in float16/bfloat16 train through fit; batch-norm
    running statistics and metric sums stay float32; uint8 labels work."""
    model = L.serial(L.Conv2d(4, 3), L.BatchNorm(), L.Relu(), L.Flatten(), L.Linear(3))
    params, state = model.init(jax.random.key(0), (1, 6, 6, 2))
    params = jax.tree.map(lambda a: a.astype(dtype), params)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (96, 6, 6, 2)).astype(np.uint8)
    y = (x.mean((1, 2, 3)) > 127).astype(np.uint8)
    task = train.classification(model, preprocess=lambda b: (b / 255.0).astype(dtype))
    # SGD: Adam's eps=1e-8 underflows to 0 in float16 (optax keeps the moments in the params' dtype)
    r = train.fit(
        task,
        params,
        state,
        optax.sgd(0.1, momentum=0.9),
        (x, y),
        epochs=3,
        batch_size=32,
        key=jax.random.key(1),
        test_data=(x, y),
        progress=False,
    )
    assert all(leaf.dtype == dtype for leaf in jax.tree.leaves(r.params))
    assert r.state["batchnorm1"]["var"].dtype == jnp.float32
    assert np.isfinite(r.history[-1]["train_loss"]) and r.history[-1]["train_loss"] < r.history[0]["train_loss"]


# ---------------------------------------------------------------- evaluation
def test_evaluate_counts_every_example_and_builds_confusion():
    model = models.mlp((8, 16, 3))
    params, state = model.init(jax.random.key(0), (1, 8))
    x, y = blobs(1037)  # not a multiple of the batch size
    ev = train.make_evaluate(model, num_classes=3, batch_size=100)(params, state, x, y)
    logits, _ = model.apply(params, state, jnp.asarray(x))
    pred = np.asarray(jnp.argmax(logits, -1))
    assert ev["confusion"].sum() == 1037 and ev["count"] == 1037
    np.testing.assert_array_equal(ev["confusion"].sum(1), np.bincount(y, minlength=3))
    assert ev["accuracy"] == pytest.approx(np.mean(pred == y))
    ref_loss = float(optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(y)).mean())
    assert ev["loss"] == pytest.approx(ref_loss, rel=1e-5)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.uint16, np.int64, np.uint32])
def test_evaluate_any_integer_label_dtype(dtype):
    model = models.mlp((8, 16, 3))
    params, state = model.init(jax.random.key(0), (1, 8))
    x, y = blobs(100)
    ref = train.make_evaluate(model)(params, state, x, y)
    got = train.make_evaluate(model)(params, state, x, y.astype(dtype))
    assert got["accuracy"] == ref["accuracy"] and got["loss"] == pytest.approx(ref["loss"], rel=1e-6)


# ---------------------------------------------------------------- user errors
@pytest.mark.parametrize(
    "labels, message",
    [
        (np.array([0, 1, -1, 2]), r"test_data has 1 labels outside \[0, 3\)"),
        (np.array([0, 1, 3, 2]), r"test_data has 1 labels outside \[0, 3\)"),
    ],
)
def test_out_of_range_test_labels_are_refused(labels, message):
    model = models.mlp((8, 16, 3))
    params, state = model.init(jax.random.key(0), (1, 8))
    task = train.classification(model, num_classes=3)
    with pytest.raises(ValueError, match=message):
        train.fit(
            task,
            params,
            state,
            optax.sgd(0.1),
            blobs(64),
            epochs=1,
            batch_size=32,
            key=jax.random.key(0),
            test_data=(np.zeros((4, 8), np.float32), labels),
            progress=False,
        )


def test_user_errors_are_clear():
    model = models.mlp((8, 16, 3))
    params, state = model.init(jax.random.key(0), (1, 8))
    x, y = blobs(64)
    common = dict(epochs=1, key=jax.random.key(0), progress=False)
    with pytest.raises(ValueError, match="fewer than batch_size=128"):
        train.fit(model, params, state, optax.sgd(0.1), (x, y), batch_size=128, **common)
    with pytest.raises(ValueError, match="test_data has 0 examples"):
        train.fit(model, params, state, optax.sgd(0.1), (x, y), batch_size=32, test_data=(x[:0], y[:0]), **common)
    with pytest.raises(ValueError, match="same leading"):
        train.fit(model, params, state, optax.sgd(0.1), (x, y[:10]), batch_size=8, **common)
    with pytest.raises(ValueError, match="outputs 3 logits but num_classes=10"):
        train.fit(model, params, state, optax.sgd(0.1), (x, y), batch_size=32, num_classes=10, **common)
    with pytest.raises(ValueError, match="epochs must be a positive int"):
        train.fit(model, params, state, optax.sgd(0.1), (x, y), batch_size=32, epochs=0, key=jax.random.key(0))
    with pytest.raises(ValueError, match="devices=3 but 1 device"):
        train.fit(model, params, state, optax.sgd(0.1), (x, y), batch_size=32, devices=3, **common)
    with pytest.raises(TypeError, match="integer class ids"):
        train.fit(model, params, state, optax.sgd(0.1), (x, y.astype(np.float32)), batch_size=32, **common)


# ---------------------------------------------------------------- speed (a regression guard, not a benchmark)
def test_fit_epoch_is_not_much_slower_than_a_bare_loop_for_a_conv_model():
    """The scanned epoch was 20-60x slower than a loop of jitted steps for
    convolutions on CPU; fit must stay within 2x of the bare loop (the
    benchmark, scripts/bench_train.py, holds it to 10%)."""
    model = L.serial(L.Conv2d(8, 3), L.Relu(), L.MaxPool2d(2), L.Flatten(), L.Linear(10))
    params, state = model.init(jax.random.key(0), (1, 16, 16, 3))
    steps, b = 24, 32
    rng = np.random.default_rng(0)
    x = rng.normal(size=(steps * b, 16, 16, 3)).astype(np.float32)
    y = rng.integers(0, 10, steps * b).astype(np.int32)
    task, opt = train.classification(model), optax.sgd(0.01)
    step = jax.jit(train.make_train_step(task.objective, opt), donate_argnums=0)
    batches = [(jnp.asarray(x[i * b : (i + 1) * b]), jnp.asarray(y[i * b : (i + 1) * b])) for i in range(steps)]

    def bare():
        ts = jax.tree.map(jnp.copy, train.init_train_state(params, state, opt))
        t0 = time.perf_counter()
        for i, batch in enumerate(batches):
            ts, _ = step(ts, batch, jax.random.key(i))
        jax.block_until_ready(ts)
        return time.perf_counter() - t0

    def fitted():
        r = train.fit(task, params, state, opt, (x, y), epochs=2, batch_size=b, key=jax.random.key(0), progress=False)
        return r.history[-1]["train_seconds"]

    bare(), fitted()
    ratios = sorted(fitted() / bare() for _ in range(5))
    assert ratios[2] < 2.0, f"fit epoch / bare loop time ratios {ratios}"


# ---------------------------------------------------------------- several devices
_MULTI = textwrap.dedent("""
    import json, os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax, numpy as np, optax
    from jdlfs import models, train
    assert len(jax.devices()) == 8
    rng = np.random.default_rng(0)
    out = {}
    for name, model, shape, b in [("mlp", models.mlp((20, 32, 10)), (20,), 32),
                                  ("cifar_cnn_bn", models.cifar_cnn(batch_norm=True), (32, 32, 3), 16)]:
        n = 3 * b
        x = rng.normal(size=(n, *shape)).astype(np.float32)
        y = rng.integers(0, 10, n).astype(np.int32)
        p, s = model.init(jax.random.key(0), (1, *shape))
        res = {d: train.fit(model, p, s, optax.sgd(0.05, momentum=0.9), (x, y), epochs=2, batch_size=b,
                            key=jax.random.key(1), devices=d, progress=False, test_data=(x[:13], y[:13]))
               for d in (1, 8)}
        worst = 0.0
        for a, c in zip(jax.tree.leaves((res[1].params, res[1].state)), jax.tree.leaves((res[8].params, res[8].state))):
            a, c = np.asarray(a), np.asarray(c)
            worst = max(worst, float(np.max(np.abs(a - c)) / max(np.max(np.abs(a)), 1e-6)))
        ev1 = train.evaluate(train.classification(model).evaluate, res[8].params, res[8].state, (x[:13], y[:13]),
                             devices=1)                           # 8-device results evaluated on one device
        out[name] = {"worst_relative": worst, "sharding": str(jax.tree.leaves(res[8].params)[0].sharding),
                     "eval_one_device_matches": ev1["accuracy"] == res[8].test_metrics["accuracy"],
                     "test_count": res[8].test_metrics["count"],
                     "same_test_accuracy": res[1].history[-1]["test_accuracy"] == res[8].history[-1]["test_accuracy"]}
    try:
        train.fit(models.mlp((20, 32, 10)), *models.mlp((20, 32, 10)).init(jax.random.key(0), (1, 20)),
                  optax.sgd(0.1), (x[:, :20] if x.ndim == 2 else rng.normal(size=(48, 20)).astype(np.float32),
                  y[:48]), epochs=1, batch_size=12, key=jax.random.key(0), devices=8, progress=False)
    except ValueError as e:
        out["error"] = str(e)
    print(json.dumps(out))
""")


def test_eight_devices_train_like_one():
    proc = subprocess.run(
        [sys.executable, "-c", _MULTI],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for name in ("mlp", "cifar_cnn_bn"):
        assert out[name]["worst_relative"] < 1e-4, out
        assert "'data': 8" in out[name]["sharding"] and out[name]["test_count"] == 13
        assert out[name]["same_test_accuracy"] and out[name]["eval_one_device_matches"]
    assert "batch_size=12 is not divisible by the 8 devices" in out["error"]


# ---------------------------------------------------------------- checkpoints
def test_checkpoint_resume_is_exact(tmp_path):
    # dropout + batch norm: keys and running state must both resume exactly
    model = L.serial(L.Linear(32), L.BatchNorm(), L.Relu(), L.Dropout(0.3), L.Linear(3))
    straight = _fit(3, model=model, eval_every=8)
    ckpt = tmp_path / "ckpt"
    _fit(2, model=model, checkpoint=ckpt, eval_every=8)  # "interrupted" after 2 epochs
    resumed = _fit(3, model=model, checkpoint=ckpt, eval_every=8)  # picks up at epoch 3
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    _leaves_equal((straight.params, straight.state), (resumed.params, resumed.state))
    assert int(resumed.train_state.step) == 3 * (512 // 32)
    assert [c["step"] for c in resumed.curve] == [c["step"] for c in straight.curve]
    assert resumed.history[-1]["test_accuracy"] == straight.history[-1]["test_accuracy"]
    assert not list(tmp_path.glob("*.pkl")) and not list(ckpt.rglob("*.pkl"))


def test_resume_refuses_another_optimizer_model_or_key(tmp_path):
    ckpt = tmp_path / "ckpt"
    _fit(1, checkpoint=ckpt)
    with pytest.raises(ValueError, match=str(ckpt)):  # adam's state is not sgd-momentum's
        _fit(2, checkpoint=ckpt, optimizer=optax.adam(1e-3))
    with pytest.raises(ValueError, match=str(ckpt)):
        _fit(2, checkpoint=ckpt, model=models.mlp((8, 16, 3)))
    with pytest.raises(ValueError, match="key"):
        _fit(2, checkpoint=ckpt, key=7)
    assert len(_fit(2, checkpoint=ckpt).history) == 2  # the matching run still resumes


def test_resume_from_a_corrupted_checkpoint_names_the_file(tmp_path):
    ckpt = tmp_path / "ckpt"
    _fit(1, checkpoint=ckpt)
    files = sorted(p for p in ckpt.rglob("*") if p.is_file() and p.stat().st_size > 64)
    victim = max(files, key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    with pytest.raises(ValueError, match=str(ckpt)):
        _fit(2, checkpoint=ckpt)


def test_curve_windows_cross_epoch_borders_and_resume_exactly(tmp_path):
    """5 examples, batch 1, log every 3 steps: windows straddle the epoch border
    (steps 4-6 = examples 3, 4 of epoch 1 and 0 of epoch 2), also across a resume."""
    xs = np.arange(5, dtype=np.float32)[:, None]

    def objective(params, state, batch, key):
        loss = jnp.sum(params["w"] * batch)
        return loss, (state, {"x": jnp.sum(batch), "count": jnp.float32(batch.shape[0])})

    common = dict(batch_size=1, key=jax.random.key(0), shuffle=False, log_every=3, progress=False)
    r = train.fit(objective, {"w": jnp.zeros(())}, {}, optax.sgd(0.0), xs, epochs=3, **common)
    assert [c["step"] for c in r.curve] == [3, 6, 9, 12, 15]
    assert [c["train_x"] for c in r.curve] == pytest.approx([1.0, 7 / 3, 2.0, 5 / 3, 3.0])
    ckpt = tmp_path / "c"
    train.fit(objective, {"w": jnp.zeros(())}, {}, optax.sgd(0.0), xs, epochs=1, checkpoint=ckpt, **common)
    resumed = train.fit(objective, {"w": jnp.zeros(())}, {}, optax.sgd(0.0), xs, epochs=3, checkpoint=ckpt, **common)
    assert resumed.curve == r.curve


def test_a_damaged_or_foreign_checkpoint_is_refused_before_training(tmp_path):
    ckpt = tmp_path / "ckpt"
    _fit(1, checkpoint=ckpt)
    (ckpt / "manifest.json").write_text((ckpt / "manifest.json").read_text()[:50])
    with pytest.raises(ValueError, match="ckpt"):
        _fit(3, checkpoint=ckpt)
    pickle_path = tmp_path / "old.pkl"
    pickle_path.write_bytes(b"\x80\x04K\x01.")  # a pickle where a checkpoint should be
    with pytest.raises(ValueError, match="old.pkl"):
        _fit(1, checkpoint=pickle_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert len(_fit(1, checkpoint=empty).history) == 1  # an empty directory is a fresh start


def test_resume_refuses_fewer_epochs_than_the_checkpoint(tmp_path):
    ckpt = tmp_path / "ckpt"
    _fit(2, checkpoint=ckpt)
    with pytest.raises(ValueError, match="holds 2 epochs, more than epochs=1"):
        _fit(1, checkpoint=ckpt)


def test_save_and_load_checkpoint_helpers(tmp_path):
    model = models.mlp((8, 4, 3))
    params, state = model.init(jax.random.key(0), (1, 8))
    ts = train.init_train_state(params, state, optax.adam(1e-3))
    train.save_checkpoint(tmp_path / "c", ts, 3, [{"epoch": 3}])
    back, epoch, history = train.load_checkpoint(tmp_path / "c", ts)
    assert epoch == 3 and history == [{"epoch": 3}]
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, back), jax.tree.map(np.asarray, ts))
    with pytest.raises(ValueError, match="holds 14 arrays, the model has 5"):  # adam's state is not sgd's
        train.load_checkpoint(tmp_path / "c", train.init_train_state(params, state, optax.sgd(0.1)))


def test_make_scan_steps_matches_the_loop():
    model = models.mlp((8, 16, 3))
    params, state = model.init(jax.random.key(0), (1, 8))
    x, y = blobs(96)
    task, opt = train.classification(model), optax.sgd(0.1)
    step = train.make_train_step(task.objective, opt)
    run = train.make_scan_steps(step)
    ts, metrics = run(
        train.init_train_state(params, state, opt), (x.reshape(3, 32, 8), y.reshape(3, 32)), jax.random.key(1)
    )
    ref = train.init_train_state(params, state, opt)
    for i in range(3):
        ref, _ = step(
            ref, (x[32 * i : 32 * (i + 1)], y[32 * i : 32 * (i + 1)]), jax.random.fold_in(jax.random.key(1), i)
        )
    chex.assert_trees_all_close(ts.params, ref.params, rtol=1e-6)
    assert metrics["count"].shape == (3,)


def test_objective_mistakes_get_clear_messages():
    model = models.mlp((8, 16, 3))
    params, state = model.init(jax.random.key(0), (1, 8))
    x, y = blobs(64)
    common = dict(epochs=1, batch_size=32, key=jax.random.key(0), progress=False)
    with pytest.raises(ValueError, match="'count'"):
        train.fit(
            lambda p, s, b, k: (jnp.float32(0), (s, {"loss": jnp.float32(0)})),
            params,
            state,
            optax.sgd(0.1),
            (x, y),
            **common,
        )
    with pytest.raises(TypeError, match=r"must return \(loss, \(new_state, metrics\)\)"):
        train.fit(lambda p, s, b, k: jnp.float32(0), params, state, optax.sgd(0.1), (x, y), **common)
    with pytest.raises(TypeError, match="train.classification"):
        train.fit(model.apply, params, state, optax.sgd(0.1), (x, y), **common)
    with pytest.raises(TypeError, match="key must be a single PRNG key"):
        train.fit(model, params, state, optax.sgd(0.1), (x, y), epochs=1, batch_size=32, key=0, progress=False)
    ok = train.fit(
        lambda p, s, b, k: (jnp.float32(0) * p["fc1"]["w"].sum(), (s, {"count": 4})),
        params,
        state,
        optax.sgd(0.1),
        (x, y),
        **common,
    )  # a Python int count is fine
    assert ok.history[0]["step"] == 2


def test_sequence_labels_are_range_checked_except_padding():
    task = train.sequence(lambda p, s, x, key=None, train=False: (p, s), pad_id=0, vocab_size=5)
    task.check((np.zeros((2, 3), np.int32), np.array([[1, 4, 0], [0, 0, 2]])), "train_data")
    with pytest.raises(ValueError, match=r"train_data has 1 labels outside \[0, 5\) \(pad_id 0 aside\)"):
        task.check((np.zeros((2, 3), np.int32), np.array([[1, 7, 0], [0, 0, 2]])), "train_data")
    with pytest.raises(ValueError, match="labels outside"):
        train.sequence(lambda *a, **k: None).check((None, np.array([[1, -1]])), "test_data")


def test_resume_refuses_an_optimizer_with_the_same_leaves_but_another_structure(tmp_path):
    """adam and adamw keep the same arrays; only the state's tree nodes differ."""
    ckpt = tmp_path / "ckpt"
    _fit(1, checkpoint=ckpt, optimizer=optax.adam(1e-3))
    with pytest.raises(ValueError, match="optimizer_state"):
        _fit(2, checkpoint=ckpt, optimizer=optax.adamw(1e-3))
