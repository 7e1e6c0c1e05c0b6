"""The character language model (jdlfs.models.rnn_lm) and experiments/char_rnn.py: shapes and the
carried state, the stop-gradient at window borders, fit carrying the state row by row, clipping,
sampling, bits per character on a known case, and the script end to end (--quick, resume, bad
flags). The script runs need Reuters-21578 (``$JDLFS_DATA_DIR/reuters21578``) and are skipped
without it; --quick reads one SGML file and trains for seconds."""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jdlfs import decode, runs, train
from jdlfs.models import rnn_lm

SCRIPT = Path(__file__).resolve().parent.parent / "experiments" / "char_rnn.py"
CELLS = ["rnn", "lstm"]


def load_script():
    spec = importlib.util.spec_from_file_location("experiment_char_rnn", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cr = load_script()
apply = jax.jit(rnn_lm.apply, static_argnames="config")  # one compile per shape instead of many eager ones


def tiny(cell, vocab=11, embed=5, hidden=7, seed=0):
    config = rnn_lm.Config(vocab, embed, hidden, cell)
    return config, rnn_lm.init(jax.random.key(seed), config)


def random_ids(shape, vocab=11, seed=1):
    return jnp.asarray(np.random.default_rng(seed).integers(0, vocab, shape), jnp.int32)


# ------------------------------------------------------------------ the model
@pytest.mark.parametrize("cell", CELLS)
def test_shapes_and_parameter_layout(cell):
    config, params = tiny(cell)
    g = 4 if cell == "lstm" else 1
    shapes = jax.tree.map(lambda a: a.shape, params)
    assert shapes == {
        "embed": {"table": (11, 5)},
        "cell": {"w_x": (5, 7 * g), "w_h": (7, 7 * g), "b": (7 * g,)},
        "readout": {"w": (7, 11), "b": (11,)},
    }
    state = rnn_lm.init_state(config, 3)
    assert sorted(state) == (["h"] if cell == "rnn" else ["c", "h"])
    logits, new = apply(params, state, random_ids((3, 6)), config=config)
    assert logits.shape == (3, 6, 11) and jax.tree.map(jnp.shape, new) == jax.tree.map(jnp.shape, state)
    if cell == "lstm":
        np.testing.assert_array_equal(params["cell"]["b"][7:14], 1.0)  # forget gate bias
        np.testing.assert_array_equal(params["cell"]["b"][:7], 0.0)
    w_h = np.asarray(params["cell"]["w_h"][:, :7])
    np.testing.assert_allclose(w_h.T @ w_h, np.eye(7), atol=1e-5)  # orthogonal recurrent block


@pytest.mark.parametrize("cell", CELLS)
def test_carried_state_continues_the_sequence(cell):
    """Two windows with the state carried give exactly the logits of one pass over both, and the
    decoding step function run one character at a time gives them too."""
    config, params = tiny(cell)
    ids = random_ids((2, 10))
    zero = rnn_lm.init_state(config, 2)
    whole, end = apply(params, zero, ids, config=config)
    first, mid = apply(params, zero, ids[:, :4], config=config)
    second, end2 = apply(params, mid, ids[:, 4:], config=config)
    np.testing.assert_allclose(jnp.concatenate([first, second], 1), whole, rtol=1e-5, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), end, end2)
    step, cache = jax.jit(rnn_lm.step_fn(params, config)), zero
    for t in range(10):
        logits, cache = step(ids[:, t], jnp.int32(t), cache)
        np.testing.assert_allclose(logits, whole[:, t], rtol=1e-5, atol=1e-6)
    # a fresh state is not the carried one: the carry matters
    fresh, _ = apply(params, zero, ids[:, 4:], config=config)
    assert np.max(np.abs(np.asarray(fresh - second))) > 1e-3


@pytest.mark.parametrize("dtype", [np.int8, np.uint16, np.uint64])
def test_ids_of_every_integer_dtype(dtype):
    config, params = tiny("rnn")
    ids = np.asarray(random_ids((2, 5)))
    ref, _ = apply(params, rnn_lm.init_state(config, 2), ids, config=config)
    got, _ = rnn_lm.apply(params, rnn_lm.init_state(config, 2), ids.astype(dtype), config=config)  # eager: numpy ids
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16, jnp.float64])
def test_float_dtypes(dtype):
    config = rnn_lm.Config(11, 5, 7, "lstm")
    with jax.enable_x64(dtype == jnp.float64):
        params = rnn_lm.init(jax.random.key(0), config, dtype)
        logits, state = apply(params, rnn_lm.init_state(config, 2, dtype), random_ids((2, 4)), config=config)
        assert logits.dtype == dtype and state["h"].dtype == dtype and bool(jnp.all(jnp.isfinite(logits)))


def test_bad_input_is_refused_clearly():
    config, params = tiny("lstm")
    with pytest.raises(ValueError, match="cell must be one of"):
        rnn_lm.Config(11, cell="gru")
    with pytest.raises(ValueError, match="hidden must be a positive int"):
        rnn_lm.Config(11, hidden=0)
    with pytest.raises(TypeError, match="rnn_lm.Config"):
        rnn_lm.init(jax.random.key(0), {"vocab_size": 11})
    with pytest.raises(ValueError, match=r"keys \['h', 'c'\]"):
        rnn_lm.apply(params, {"h": jnp.zeros((2, 7))}, random_ids((2, 3)), config=config)
    with pytest.raises(ValueError, match=r"state\[\"h\"\] must have shape \(B, H\) = \(2, 7\)"):
        rnn_lm.apply(params, rnn_lm.init_state(config, 3), random_ids((2, 3)), config=config)
    with pytest.raises(ValueError, match=r"ids must be integer token ids of shape \(B, T\)"):
        rnn_lm.apply(params, rnn_lm.init_state(config, 2), random_ids((6,)), config=config)
    with pytest.raises(TypeError, match="integer"):
        rnn_lm.apply(params, rnn_lm.init_state(config, 2), jnp.zeros((2, 3)), config=config)


# ------------------------------------------------------------------ truncated BPTT
@pytest.mark.parametrize("cell", CELLS)
def test_stop_gradient_at_the_window_border(cell):
    """A window's loss sends no gradient into the carried state: d loss / d state is exactly zero,
    and the parameter gradient of window 2 is the same whether the state came out of window 1 as
    a function of the parameters or as a constant. Without the stop-gradient (``recur``) both differ."""
    config, params = tiny(cell)
    ids = random_ids((3, 12))
    w1, w2, targets = ids[:, :6], ids[:, 6:11], ids[:, 7:12]
    zero = rnn_lm.init_state(config, 3)

    def loss_from(p, state):
        logits, _ = apply(p, state, w2, config=config)
        return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

    def loss_no_stop(p, state):  # the same model with the gradient flowing into the past
        hs, _ = rnn_lm.recur(p, state, rnn_lm.embed(p, w2), config=config)
        return optax.softmax_cross_entropy_with_integer_labels(rnn_lm.readout(p, hs), targets).mean()

    @jax.jit
    def gradients(p):
        carried = rnn_lm.apply(p, zero, w1, config=config)[1]
        return {
            "d_state": jax.grad(loss_from, argnums=1)(p, carried),
            "through": jax.grad(lambda q: loss_from(q, rnn_lm.apply(q, zero, w1, config=config)[1]))(p),
            "constant": jax.grad(loss_from)(p, carried),
            "d_state_no_stop": jax.grad(loss_no_stop, argnums=1)(p, carried),
            "leaky": jax.grad(lambda q: loss_no_stop(q, rnn_lm.apply(q, zero, w1, config=config)[1]))(p),
        }

    g = gradients(params)
    jax.tree.map(lambda x: np.testing.assert_array_equal(x, 0.0), g["d_state"])
    jax.tree.map(np.testing.assert_array_equal, g["through"], g["constant"])
    assert float(optax.tree.norm(g["d_state_no_stop"])) > 1e-4
    assert float(optax.tree.norm(jax.tree.map(jnp.subtract, g["leaky"], g["constant"]))) > 1e-4


def test_train_windows_rows_continue_their_stream():
    stream = np.arange(1000, dtype=np.int32)
    inputs, targets = cr.train_windows(stream, 4, 10)  # K = 24 windows per stream
    assert inputs.shape == (96, 10)
    for k in range(23):
        for b in range(4):
            row, nxt = k * 4 + b, (k + 1) * 4 + b
            assert inputs[nxt, 0] == targets[row, -1] == inputs[row, -1] + 1


@pytest.mark.parametrize("cell", CELLS)
def test_fit_carries_the_state_row_by_row(cell):
    """fit with shuffle=False and a zero learning rate ends holding, for each row, the state of
    running that row's whole stream in one pass: the state really is carried, per row."""
    config, params = tiny(cell)
    stream = np.asarray(random_ids((4 * 5 * 6 + 1,), seed=3))
    data = cr.train_windows(stream, 4, 6)  # 4 streams, 5 windows of 6
    r = train.fit(
        train.sequence(rnn_lm.model(config)),
        params,
        rnn_lm.init_state(config, 4),
        optax.sgd(0.0),
        data,
        epochs=1,
        batch_size=4,
        key=jax.random.key(0),
        shuffle=False,
        progress=False,
    )
    streams = stream[:-1].reshape(4, 30)
    _, expect = apply(params, rnn_lm.init_state(config, 4), streams, config=config)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), r.state, expect)


# ------------------------------------------------------------------ clipping
def test_clipping_bounds_the_update_and_the_raw_norm_is_recorded():
    params = {"a": jnp.zeros((3, 4)), "b": jnp.zeros((5,))}
    grads = {"a": jnp.full((3, 4), 100.0), "b": jnp.full((5,), -50.0)}
    raw = float(optax.tree.norm(grads))
    for clip in (0.0, 1.0, 5.0):
        opt = cr.make_optimizer("sgd", 0.5, clip, total_steps=3)
        updates, state = jax.jit(opt.update)(grads, opt.init(params), params)
        norm = float(optax.tree.norm(updates))
        expect = 0.5 * (raw if clip == 0 else clip)
        assert norm == pytest.approx(expect, rel=1e-5)
        np.testing.assert_allclose(cr.recorded_norms(state), [raw], rtol=1e-6)
    small = cr.make_optimizer("sgd", 1.0, 1.0, total_steps=2)
    state, update = small.init(params), jax.jit(small.update)
    for _ in range(3):  # steps past total_steps are not recorded (no out-of-range write)
        _, state = update(grads, state, params)
    assert state[0].norms.shape == (2,) and int(state[0].count) == 3
    np.testing.assert_allclose(cr.recorded_norms(state), [raw, raw], rtol=1e-6)


# ------------------------------------------------------------------ sampling
def test_sampling_is_deterministic_and_follows_the_temperature():
    config, params = tiny("lstm", vocab=6, hidden=8)
    n, temperatures = 12000, (1e-4, 0.5, 1.0, 3.0)
    start = jnp.full((n, 1), 4, jnp.int32)
    a = cr.generate(params, config, start, jax.random.key(7), max_len=3, temperatures=temperatures)
    b = cr.generate(params, config, start, jax.random.key(7), max_len=3, temperatures=temperatures)
    c = cr.generate(params, config, start, jax.random.key(8), max_len=3, temperatures=temperatures)
    assert a.shape == (4, n, 3)
    np.testing.assert_array_equal(a, b)  # same key, same text
    assert not np.array_equal(a[2], c[2])
    greedy = jax.jit(
        lambda p: decode.greedy(rnn_lm.step_fn(p, config), rnn_lm.init_state(config, n), start[:, 0], max_len=3)
    )
    np.testing.assert_array_equal(a[0], greedy(params))  # a tiny temperature is greedy decoding
    # first-token frequencies follow softmax(logits / T); hotter is flatter
    logits = apply(params, rnn_lm.init_state(config, 1), start[:1], config=config)[0][0, 0]
    entropies = []
    for t, ids in zip(temperatures[1:], np.asarray(a[1:, :, 0])):
        p = np.asarray(jax.nn.softmax(logits / t))
        np.testing.assert_allclose(np.bincount(ids, minlength=6) / n, p, atol=0.015)
        entropies.append(-np.sum(p * np.log(np.maximum(p, 1e-12))))
    assert entropies[0] < entropies[1] < entropies[2]


# ------------------------------------------------------------------ bits per character
def test_bits_per_character_on_a_known_case():
    """A readout with zero weights predicts p = softmax(b) whatever came before: the held-out bpc
    of a stream is then mean(-log2 p[next char]), over every character after the first exactly
    once, however the stream is cut into rows and windows (the padding of the last row not counted)."""
    p = np.array([1 / 16, 1 / 16, 1 / 16, 1 / 16, 1 / 4, 1 / 2])  # bits per id: 4 4 4 4 2 1
    config, params = tiny("rnn", vocab=6)
    params["readout"] = {"w": jnp.zeros((7, 6)), "b": jnp.asarray(np.log(p), jnp.float32)}
    stream = np.array([5, 4, 5, 5, 3, 5, 4, 4, 5, 5, 5, 1, 5, 4], np.int32)
    # targets 4 5 5 3 5 4 4 5 5 5 1 5 4 -> bits 2 1 1 4 1 2 2 1 1 1 4 1 2: 23 bits over 13 characters
    for rows, window in ((1, 13), (4, 3)):
        data = cr.stream_rows(stream, rows, window)
        assert data[0].shape[0] == rows and data[0].shape[1] % window == 0
        got = train.evaluate(cr.stream_eval_fn(config, window), params, None, data, batch_size=rows)
        assert got["count"] == 13
        assert got["bits_per_token"] == pytest.approx(23 / 13, rel=1e-6)
        assert got["loss"] == pytest.approx(23 / 13 * math.log(2), rel=1e-6)
        assert got["accuracy"] == pytest.approx(7 / 13)  # the argmax is id 5, the target 7 times


@pytest.mark.parametrize("cell", CELLS)
def test_stream_evaluation_carries_the_state_across_windows(cell):
    """Window by window with the state carried equals one pass over each whole row."""
    config, params = tiny(cell)
    stream = np.asarray(random_ids((50,), seed=5)) % 10 + 1  # no PAD
    inputs, targets = cr.stream_rows(stream, 2, 5)  # rows of 25, the last padded
    got = train.evaluate(cr.stream_eval_fn(config, 5), params, None, (inputs, targets), batch_size=2)
    logits, _ = apply(params, rnn_lm.init_state(config, 2), inputs, config=config)
    nll = np.asarray(optax.softmax_cross_entropy_with_integer_labels(logits, targets))
    mask = targets != 0
    assert got["count"] == 49
    assert got["bits_per_token"] == pytest.approx(float(nll[mask].mean() / math.log(2)), rel=1e-5)


# ------------------------------------------------------------------ the script
def _have_reuters() -> bool:
    d = os.environ.get("JDLFS_DATA_DIR")
    return bool(d) and (Path(d) / "reuters21578" / "reut2-000.sgm").is_file()


needs_reuters = pytest.mark.skipif(not _have_reuters(), reason="needs $JDLFS_DATA_DIR/reuters21578")


def run_quick(out: Path, *extra: str) -> dict:
    results = cr.main(["--quick", "--no-progress", "--out", str(out), *extra])
    on_disk = json.loads((out / "results.json").read_text())
    assert set(results) == set(on_disk) and on_disk["status"] == "finished" and on_disk["quick"] is True
    return on_disk


@pytest.fixture(scope="module")
def quick_rnn(tmp_path_factory):
    if not _have_reuters():
        pytest.skip("needs $JDLFS_DATA_DIR/reuters21578")
    out = tmp_path_factory.mktemp("study") / "rnn"
    return out, run_quick(out)


def assert_png(path: Path):
    assert path.is_file(), f"missing {path}"
    assert path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@needs_reuters
def test_quick_run_writes_every_figure_and_result(quick_rnn):
    out, r = quick_rnn
    for key in (
        "model",
        "param_count",
        "data",
        "recipe",
        "test_bpc",
        "test_chars_evaluated",
        "goal_bpc",
        "goal_met",
        "train_chars_per_second",
        "eval_chars_per_second",
        "history",
        "curve",
        "grad_norm_per_step",
        "grad_vs_distance",
        "samples",
        "explode",
        "figures",
        "comparison",
    ):
        assert key in r, key
    assert r["model"]["cell"] == "rnn" and r["goal_bpc"] == 2.3
    assert r["test_chars_evaluated"] == r["data"]["test_chars"] - 1  # the whole held-out stream
    assert len(r["history"]) == r["epochs"] == 2 and r["test_bpc"] == r["history"][-1]["test_bits_per_token"]
    assert r["test_bpc"] < math.log2(r["data"]["vocab_size"])  # it learned something
    assert len(r["grad_norm_per_step"]) == r["steps"] and min(r["grad_norm_per_step"]) > 0
    assert r["train_chars_per_second"] > 0 and r["eval_chars_per_second"] > 0
    d = r["grad_vs_distance"]
    assert len(d["trained"]) == len(d["init"]) == 24 and all(v > 0 for v in d["trained"])
    assert set(r["samples"]) == {"0.5", "1"}
    for texts in r["samples"].values():
        assert len(texts) == 2 and all(t.startswith("The company said") for t in texts)
    e = r["explode"]
    for name in ("no_clip", "clipped"):
        assert len(e[name]["grad_norm"]) == len(e[name]["train_bpc"]) == e["steps"] == 8
    # both runs start from the same parameters on the same batch: the same first gradient
    assert e["no_clip"]["grad_norm"][0] == pytest.approx(e["clipped"]["grad_norm"][0], rel=1e-6)
    assert r["figures"] == ["curves.png", "grad_vs_distance.png", "explode.png"]
    for name in r["figures"]:
        assert_png(out / name)
    assert (out / "chars.json").is_file() and (out / "checkpoint" / "main").is_dir()
    parent = out.parent
    assert_png(parent / "grad_vs_distance.png")
    comparison = json.loads((parent / "comparison.json").read_text())
    assert [row["cell"] for row in comparison["runs"]] == ["rnn"]
    assert "vanilla RNN" in (parent / "comparison.md").read_text()


@pytest.mark.slow  # 10 s; resuming a stopped experiment is tested by default in tests/test_experiments.py
@needs_reuters
def test_a_stopped_lstm_run_resumes_and_joins_the_comparison(quick_rnn, monkeypatch):
    """An LSTM run stopped after epoch 1 (Ctrl-C right after the epoch's checkpoint): the same
    command with the same --out trains only epoch 2; both cells then appear in the comparison."""
    rnn_out, _ = quick_rnn
    out = rnn_out.parent / "lstm"
    log_epoch = cr.log_epoch

    def stop_after_first(label, window):
        log = log_epoch(label, window)

        def on_epoch(h):
            log(h)
            if h["epoch"] == 1:
                raise KeyboardInterrupt

        return on_epoch

    monkeypatch.setattr(cr, "log_epoch", stop_after_first)
    with pytest.raises(KeyboardInterrupt):
        cr.main(["--quick", "--no-progress", "--out", str(out), "--cell", "lstm"])
    assert json.loads((out / "results.json").read_text())["status"] == "running"
    monkeypatch.setattr(cr, "log_epoch", log_epoch)
    r = run_quick(out, "--cell", "lstm")
    assert r["resumed"] is True and r["epochs_trained_this_run"] == 1 and len(r["history"]) == 2
    assert r["model"]["cell"] == "lstm" and r["goal_bpc"] == 2.0 and "explode" not in r
    assert len(r["grad_norm_per_step"]) == r["steps"]  # the record survived the stop
    comparison = json.loads((rnn_out.parent / "comparison.json").read_text())
    rows = {row["cell"]: row for row in comparison["runs"]}
    assert set(rows) == {"rnn", "lstm"} and rows["lstm"]["test_bpc"] == r["test_bpc"]
    table = (rnn_out.parent / "comparison.md").read_text()
    assert "vanilla RNN" in table and "LSTM" in table
    assert_png(rnn_out.parent / "grad_vs_distance.png")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--cell", "gru"], "invalid choice"),
        (["--window", "0"], "--window must be >= 1"),
        (["--temperatures", "hot"], "--temperatures must be comma-separated numbers"),
        (["--temperatures", "0.5,-1"], "--temperatures must be positive"),
        (["--clip", "0"], "pass --clip > 0"),
        (["--lr", "0"], "--lr must be > 0"),
    ],
)
def test_bad_flags_exit_2(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        runs.run_main(cr.main, [*argv, "--out", str(tmp_path / "run"), "--no-progress"])
    assert e.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_missing_corpus_is_one_message_and_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        runs.run_main(cr.main, ["--quick", "--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "reuters21578" in err and "--data-dir" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # nothing but results.json was written: removed
