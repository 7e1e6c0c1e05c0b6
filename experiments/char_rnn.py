"""Character language model on Reuters-21578: vanilla RNN and LSTM, exploding and vanishing gradients.

Model (``jdlfs.models.rnn_lm``): embedding -> ``rnn`` (``--cell rnn``) or ``lstm``
(``--cell lstm``) -> linear readout, every piece a ``jdlfs.functional`` op with a
hand-written backward pass. Data: the bodies of the Reuters-21578 LEWISSPLIT
``train`` documents joined by ``"\\n"`` into one character stream (10.46 M
characters, 89 distinct + the 4 special ids); held out: the ``test`` documents
the same way (4.12 M characters), encoded with the vocabulary of the training
stream (``chars.json`` in the run folder).

Training: truncated backpropagation through time, through ``jdlfs.train.fit``.
``lm_windows`` cuts the stream into ``--batch-size`` parallel streams of
consecutive ``--window``-character windows, ``(K, B, W)``, flattened to ``K * B``
examples so that with ``shuffle=False`` fit's step ``k`` takes examples ``k*B ..
k*B + B - 1``: window ``k`` of every stream, row ``b`` continuing row ``b`` of
step ``k - 1``. The carried hidden state is fit's model *state*: the objective
(``train.sequence`` over ``rnn_lm.apply``) returns the state at the end of the
window, fit hands it to the next step, and ``apply`` stops the gradient where a
window starts. At an epoch border row ``b`` jumps from the end of its stream back
to its start with the state of the end: stale context, as at every document
border inside the stream, and harmless. Optimizer: Adam with a warm-up + cosine
schedule and ``optax.clip_by_global_norm(--clip)``; a first link in the chain
records the global norm of every step's raw gradient in the optimizer state
(so it is checkpointed, and plotted per step).

Held-out bits per character: the whole test stream, cut into ``--eval-rows``
contiguous rows (the last one padded with PAD, which carries no loss), each row
evaluated window by window carrying its state -- every character after the
first is predicted exactly once. This is fit's per-epoch evaluation (a custom
``eval_fn`` scanning the windows); ``train.sequence``'s ``bits_per_token``
gives the training curve.

Exploding gradients (``--explode-steps``, on by default for the vanilla RNN):
the same model from the same initial parameters, on the first windows of the
same stream, trained with plain SGD at ``--explode-lr`` (1.0) once without
clipping and once with ``clip_by_global_norm(--clip)``; ``explode.png`` shows
the global gradient norm of each step and the training loss of both. Plain SGD
makes the point cleanly: its step is lr times the raw gradient, so one gradient
of norm 10^5 moves the weights by 10^5 * lr. (Adam divides by a running RMS of
the gradients, which hides the spikes' size, not their damage.)

Measured with the default demonstration (SGD lr 1.0, 200 steps each, first
windows of the full training streams; the full default run of 2026-11-24):
without clipping the raw gradient norm peaks at 141 at step 6 and training is
wrecked (6.76 bpc at step 1, 101 averaged over the last 20 steps, median norm
16); with clipping the largest raw norm is 7.7 and training goes 6.76 -> 2.74
bpc.

Vanishing gradients: for the trained model, ``||dL_T / dh_t||`` (the gradient of
the loss at the last position of a ``--distance``-character stretch with respect
to the hidden state ``t`` steps earlier, mean over 64 held-out stretches whose
state was warmed up on the 128 characters before) against the distance ``T - t``,
on a log axis, at initialisation and after training: stored in ``results.json``
and drawn in ``grad_vs_distance.png``. The gradient is taken through
``rnn_lm.recur`` one step at a time with a zero perturbation added to each
``h_t``; the gradient with respect to that perturbation is ``dL_T / dh_t``.

Comparison: run each cell into a folder of one parent, e.g. ``<study>/rnn`` and
``<study>/lstm``. Every run, when it finishes, rebuilds in the parent
``comparison.json``, ``comparison.md`` (a vanilla vs LSTM table) and
``grad_vs_distance.png`` (every cell's curve) from the finished char_rnn runs it
finds beside it: for each cell the most recently finished one with the same
``--quick`` setting.

Samples: ``jdlfs.decode.sample`` over ``rnn_lm.step_fn`` (one embedding + cell
step + readout, the state as the cache), after the state is warmed on
``--prompt``, at temperatures ``--temperatures``.

Outputs in the run folder: ``results.json``, ``chars.json`` (the vocabulary),
``curves.png`` (training and held-out bpc, gradient norm per step),
``grad_vs_distance.png``, ``explode.png`` (when the demonstration ran). fit
checkpoints the main run under ``<out>/checkpoint/main`` after every epoch (and
each demonstration run under ``checkpoint/explode-*``): rerun with the same
``--out`` to resume a stopped run. Resume with the same flags: ``--epochs`` is
part of the run (the learning-rate schedule and the per-step gradient-norm
record span all epochs), and a checkpoint made with other epochs is refused.

Default configuration (both cells: embedding 64, batch 64 streams, window 128,
2 epochs = 20.9 M training characters, Adam with clipping at 1.0): vanilla RNN
hidden 512, lr 2e-3 (349,085 parameters with the 93-symbol vocabulary); LSTM
hidden 256, lr 5e-3 (358,557 parameters) -- the same recurrent weight count (262,144) and about the same
cost per character, so the table compares like with like. Chosen from short
pilots on the first 3 M training characters (366 steps, 2-core CPU shared
with a CIFAR run, so their timings are pessimistic): vanilla RNN 512 with
Adam 2e-3 reached 2.09 training bpc at step 366 (constant lr) where SGD 1.0 +
clipping reached 2.40 and SGD 0.2 without clipping 2.90; LSTM 256 reached
2.69 held-out bpc with Adam 2e-3 and 2.34 with 5e-3 (one-epoch schedule).
Measured on the idle 2-core CPU (full default runs): vanilla run 10.4 min
(42,500 training / 194,000 evaluation characters per second, held-out 1.764
bpc), LSTM run 10.6 min (36,500 / 159,000 characters per second, 1.806 bpc).

Usage::

    python experiments/char_rnn.py --data-dir ../shared/data --cell rnn --out runs/char_rnn/study/rnn
    python experiments/char_rnn.py --data-dir ../shared/data --cell lstm --out runs/char_rnn/study/lstm
"""

from __future__ import annotations

import functools
import json
import math
import sys
import time
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from jdlfs import decode, runs, train
from jdlfs import functional as F
from jdlfs.models import rnn_lm
from jdlfs.text import PAD_ID, CharVocab, CorpusNotFoundError, lm_windows, load_reuters

LABELS = {"rnn": "vanilla RNN", "lstm": "LSTM"}
GOAL_BPC = {"rnn": 2.3, "lstm": 2.0}
#: Per-cell defaults of the options whose default is None.
CELL_DEFAULTS = {
    "rnn": {"hidden": 512, "lr": 2e-3, "explode_steps": 200},
    "lstm": {"hidden": 256, "lr": 5e-3, "explode_steps": 0},
}
QUICK = {
    "hidden": 32,
    "embed": 16,
    "batch_size": 8,
    "window": 32,
    "eval_rows": 4,
    "eval_window": 64,
    "distance": 24,
    "sample_length": 40,
    "log_every": 5,
}
QUICK_TRAIN_CHARS, QUICK_TEST_CHARS, QUICK_EXPLODE_STEPS, QUICK_EPOCHS = 8 * 32 * 10 + 1, 4000, 8, 2
WARMUP_CHARS, DISTANCE_SEQUENCES = 128, 64
FIGURES = {"curves": "curves.png", "distance": "grad_vs_distance.png", "explode": "explode.png"}


# ---------------------------------------------------------------- data
def load_streams(args) -> tuple[CharVocab, np.ndarray, np.ndarray, dict]:
    """Training and held-out character streams, the vocabulary, and a description.

    ``--quick`` reads only ``reut2-000.sgm`` (all LEWISSPLIT train documents):
    its first 90% of documents train, the rest stand in for the test split.
    """
    try:
        if args.quick:
            docs = [d.body for d in load_reuters(args.data_dir, split="train", num_files=1) if d.body]
            cut = int(0.9 * len(docs))
            train_docs, test_docs = docs[:cut], docs[cut:]
            held_out = "quick: the last 10% of the train documents of reut2-000.sgm"
        else:
            train_docs = [d.body for d in load_reuters(args.data_dir, split="train") if d.body]
            test_docs = [d.body for d in load_reuters(args.data_dir, split="test") if d.body]
            held_out = "the LEWISSPLIT test documents"
    except CorpusNotFoundError as e:
        raise runs.UsageError(f"{e}\n(pass --data-dir <dir> holding reuters21578/, or set $JDLFS_DATA_DIR)") from None
    train_text, test_text = "\n".join(train_docs), "\n".join(test_docs)
    if args.quick:
        train_text, test_text = train_text[:QUICK_TRAIN_CHARS], test_text[:QUICK_TEST_CHARS]
    elif args.train_chars is not None:
        train_text = train_text[: args.train_chars]
    vocab = CharVocab.build([train_text])
    train_ids, test_ids = vocab.encode_array(train_text), vocab.encode_array(test_text)
    info = {
        "source": "Reuters-21578 bodies (title excluded), documents joined by a newline",
        "train": "the LEWISSPLIT train documents" if not args.quick else "quick: reut2-000.sgm, first 90% of documents",
        "held_out": held_out,
        "train_chars": len(train_ids),
        "test_chars": len(test_ids),
        "vocab_size": vocab.vocab_size,
        "test_unknown_chars": int(np.sum(test_ids == vocab.unk_id)),
    }
    return vocab, train_ids, test_ids, info


def train_windows(stream: np.ndarray, batch_size: int, window: int) -> tuple[np.ndarray, np.ndarray]:
    """``(inputs, targets)`` int32 ``(K * B, W)``: example ``k * B + b`` is window ``k`` of stream ``b``,
    so fit with ``shuffle=False`` takes window ``k`` of every stream at step ``k``."""
    inputs, targets = lm_windows(stream, batch_size, window)  # (K, B, W)
    return inputs.reshape(-1, window), targets.reshape(-1, window)


def stream_rows(stream: np.ndarray, rows: int, window: int) -> tuple[np.ndarray, np.ndarray]:
    """The whole stream as ``rows`` contiguous rows for the held-out evaluation.

    Returns ``(inputs, targets)`` int32 ``(rows, L)``, ``L`` a multiple of
    ``window``: position ``r * L + t`` of the flattened arrays holds input
    ``stream[i]`` and target ``stream[i + 1]`` with ``i = r * L + t``; the
    ``rows * L - (len(stream) - 1)`` positions past the end have target PAD_ID
    (no loss, not counted), so every character after the first is a target
    exactly once.
    """
    stream = np.asarray(stream, np.int32)
    n = len(stream) - 1
    if n < 1:
        raise ValueError("the held-out stream needs at least 2 characters")
    length = -(-n // rows)
    length = -(-length // window) * window
    inputs = np.full(rows * length, PAD_ID, np.int32)
    targets = np.full(rows * length, PAD_ID, np.int32)
    inputs[:n], targets[:n] = stream[:-1], stream[1:]
    return inputs.reshape(rows, length), targets.reshape(rows, length)


# ---------------------------------------------------------------- evaluation
def stream_eval_fn(config: rnn_lm.Config, window: int):
    """``eval_fn(params, state, batch, *, weights=None) -> sums`` for fit's evaluator: each row
    of ``batch = (inputs, targets)`` ``(R, L)`` is run window by window (``lax.scan``) from a zero
    state, carrying the state from window to window. Sums as ``train.sequence``'s: ``loss``
    (nats), ``accuracy``, ``bits_per_token`` (times the count) and ``count`` (targets that are not
    PAD). The training state (fit passes it) is not used."""

    def eval_fn(params, state, batch, *, weights=None):
        del state
        inputs, targets = batch
        rows, length = inputs.shape
        n = length // window
        w = jnp.ones((rows,), jnp.float32) if weights is None else weights.astype(jnp.float32)
        xs = inputs.reshape(rows, n, window).swapaxes(0, 1)  # (n, R, W)
        ys = targets.reshape(rows, n, window).swapaxes(0, 1)

        def body(carry, xy):
            st, acc = carry
            x, y = xy
            logits, st = rnn_lm.apply(params, st, x, config=config)
            mask = (y != PAD_ID).astype(jnp.float32) * w[:, None]
            count = jnp.sum(mask)
            nats = F.softmax_cross_entropy(logits, y, mask=mask).astype(jnp.float32) * count
            correct = jnp.sum(mask * (jnp.argmax(logits, -1) == y))
            return (st, acc + jnp.stack([nats, correct, count])), None

        start = rnn_lm.init_state(config, rows, params["readout"]["w"].dtype)
        (_, acc), _ = lax.scan(body, (start, jnp.zeros((3,), jnp.float32)), (xs, ys))
        nats, correct, count = acc[0], acc[1], acc[2]
        return {"loss": nats, "accuracy": correct, "bits_per_token": nats / math.log(2.0), "count": count}

    return eval_fn


@functools.partial(jax.jit, static_argnames=("config", "warmup"))
def grad_vs_distance(params, config: rnn_lm.Config, ids, *, warmup: int):
    """``||dL_T / dh_t||`` against the distance ``T - t``, mean over the rows of ``ids``.

    ``ids (N, warmup + T + 1)``: the state is warmed on the first ``warmup`` characters
    (no gradient), then the cell runs ``T`` steps, one at a time, with a zero
    perturbation ``e_t`` added to each hidden state ``h_t``; ``L_T`` is the
    cross-entropy of the prediction from ``h_T`` (the last target), summed over the
    rows so each row's gradient is its own. ``dL_T/de_t = dL_T/dh_t``.

    Returns float32 ``(T,)``: entry ``d`` is the mean over rows of ``||dL_T/dh_{T-d}||_2``.
    """
    n = ids.shape[0]
    steps = ids.shape[1] - warmup - 1
    state = rnn_lm.init_state(config, n, params["readout"]["w"].dtype)
    if warmup:
        _, state = rnn_lm.apply(params, state, ids[:, :warmup], config=config)
    x = rnn_lm.embed(params, ids[:, warmup : warmup + steps])  # (N, T, E)
    target = ids[:, -1]

    def loss_of(eps):  # eps (T, N, H)
        def step(st, inp):
            x_t, e_t = inp
            _, st = rnn_lm.recur(params, st, x_t[:, None, :], config=config)
            st = {**st, "h": st["h"] + e_t}
            return st, None

        last, _ = lax.scan(step, state, (jnp.swapaxes(x, 0, 1), eps))
        logits = rnn_lm.readout(params, last["h"])  # (N, V)
        return F.softmax_cross_entropy(logits, target) * n

    eps = jnp.zeros((steps, n, config.hidden), state["h"].dtype)
    g = jax.grad(loss_of)(eps)  # (T, N, H): g[t] = dL_T / dh_{t+1}
    norms = jnp.mean(jnp.sqrt(jnp.sum(jnp.square(g.astype(jnp.float32)), axis=-1)), axis=1)  # (T,)
    return norms[::-1]  # index = distance T - t


def distance_ids(stream: np.ndarray, steps: int) -> np.ndarray:
    """``DISTANCE_SEQUENCES`` stretches of ``WARMUP_CHARS + steps + 1`` characters, evenly spaced."""
    span = WARMUP_CHARS + steps + 1
    if len(stream) < span:
        raise runs.UsageError(f"--distance {steps} needs a held-out stream of at least {span} characters")
    starts = np.linspace(0, len(stream) - span, DISTANCE_SEQUENCES).astype(np.int64)
    return np.stack([stream[s : s + span] for s in starts]).astype(np.int32)


# ---------------------------------------------------------------- sampling
@functools.partial(jax.jit, static_argnames=("config", "max_len", "temperatures"))
def generate(params, config: rnn_lm.Config, prompt, key, *, max_len: int, temperatures: tuple):
    """For each temperature, ``jdlfs.decode.sample`` of ``max_len`` ids after the prompt:
    ``prompt (N, P)`` warms the state on its first ``P - 1`` ids and its last id is the start
    token. Returns int32 ``(len(temperatures), N, max_len)``; temperature ``i`` uses
    ``fold_in(key, i)``."""
    state = rnn_lm.init_state(config, prompt.shape[0], params["readout"]["w"].dtype)
    if prompt.shape[1] > 1:
        _, state = rnn_lm.apply(params, state, prompt[:, :-1], config=config)
    step = rnn_lm.step_fn(params, config)
    return jnp.stack(
        [
            decode.sample(step, state, prompt[:, -1], jax.random.fold_in(key, i), max_len=max_len, temperature=t)
            for i, t in enumerate(temperatures)
        ]
    )


# ---------------------------------------------------------------- optimizers
class GradNormRecord(NamedTuple):
    count: jax.Array  # int32 scalar: steps seen
    norms: jax.Array  # float32 (num_steps,): global gradient norm of step i


def record_grad_norm(num_steps: int) -> optax.GradientTransformation:
    """An identity transformation that writes the global L2 norm of each step's incoming
    gradients (float32) into its state, ``norms[step]``; steps past ``num_steps`` are not
    recorded. First in a chain, it records the raw gradients, before any clipping."""

    def init(params):
        del params
        return GradNormRecord(jnp.zeros((), jnp.int32), jnp.zeros((num_steps,), jnp.float32))

    def update(updates, state, params=None):
        del params
        norm = jnp.sqrt(sum(jnp.sum(jnp.square(u.astype(jnp.float32))) for u in jax.tree.leaves(updates)))
        return updates, GradNormRecord(state.count + 1, state.norms.at[state.count].set(norm, mode="drop"))

    return optax.GradientTransformation(init, update)


def make_optimizer(kind: str, lr: float, clip: float, total_steps: int) -> optax.GradientTransformation:
    """``record_grad_norm`` -> ``clip_by_global_norm(clip)`` (``clip > 0``) -> the optimizer.

    ``kind="adam"``: Adam with a linear warm-up over the first 2% of the steps (at most 200) and
    a cosine decay to lr/10; ``kind="sgd"``: plain SGD at a constant ``lr`` (the exploding-gradient
    demonstration: the step is exactly ``-lr`` times the (clipped) gradient).
    """
    if kind == "adam":
        warmup = max(1, min(200, total_steps // 50))
        schedule = optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(total_steps, warmup + 1), lr / 10)
        base = optax.adam(schedule)
    elif kind == "sgd":
        base = optax.sgd(lr)
    else:
        raise ValueError(f"kind must be 'adam' or 'sgd', got {kind!r}")
    clipping = [optax.clip_by_global_norm(clip)] if clip > 0 else []
    return optax.chain(record_grad_norm(total_steps), *clipping, base)


def recorded_norms(opt_state) -> np.ndarray:
    """The per-step gradient norms recorded by :func:`record_grad_norm` (the chain's first state)."""
    record = opt_state[0]
    return np.asarray(record.norms)[: int(record.count)]


# ---------------------------------------------------------------- logging
def log_epoch(label: str, window: int):
    def log(h: dict) -> None:
        test = f", held-out {h['test_bits_per_token']:.3f} bpc" if "test_bits_per_token" in h else ""
        print(
            f"[{label}] epoch {h['epoch']}: train {h['train_bits_per_token']:.3f} bpc{test}, "
            f"{h['train_seconds']:.0f} s ({h['train_examples_per_second'] * window:,.0f} chars/s)",
            file=sys.stderr,
            flush=True,
        )

    return log


# ---------------------------------------------------------------- figures
def _finite(values) -> np.ndarray:
    a = np.asarray(values, np.float64)
    return np.where(np.isfinite(a), a, np.nan)


def plot_curves(result, window: int, batch_size: int, norms: np.ndarray, label: str):
    fig, (a1, a2) = runs.plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"wspace": 0.3})
    chars = batch_size * window
    pts = [c for c in result.curve if "train_bits_per_token" in c]
    a1.plot([c["step"] * chars / 1e6 for c in pts], [c["train_bits_per_token"] for c in pts], "-", label="train")
    a1.plot(
        [h["step"] * chars / 1e6 for h in result.history],
        [h["test_bits_per_token"] for h in result.history],
        "s-",
        label="held-out (whole test stream)",
    )
    a1.set(xlabel="training characters (millions)", ylabel="bits per character", title=f"{label}: bpc")
    a2.plot(np.arange(1, len(norms) + 1), _finite(norms), lw=0.6)
    a2.set_yscale("log")
    a2.set(xlabel="step", ylabel="global gradient norm (before clipping)", title=f"{label}: gradient norm per step")
    for a in (a1, a2):
        a.grid(alpha=0.3, which="both")
    a1.legend()
    return fig


def plot_explode(demo: dict):
    fig, (a1, a2) = runs.plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"wspace": 0.3})
    for name, color in (("no_clip", "tab:red"), ("clipped", "tab:blue")):
        run = demo[name]
        steps = np.arange(1, len(run["grad_norm"]) + 1)
        label = "no clipping" if name == "no_clip" else f"clip_by_global_norm({demo['clip_threshold']:g})"
        a1.plot(steps, _finite(run["grad_norm"]), color=color, lw=0.8, label=label)
        a2.plot(steps, _finite(run["train_bpc"]), color=color, lw=0.8, label=label)
    a1.axhline(demo["clip_threshold"], color="k", ls=":", lw=0.8, label="clip threshold")
    a1.set_yscale("log")
    a2.set_yscale("log")
    a1.set(xlabel="step", ylabel="global gradient norm (raw)", title=f"SGD lr {demo['lr']:g}: gradient norm per step")
    a2.set(xlabel="step", ylabel="training bits per character", title="training loss per step")
    for a in (a1, a2):
        a.grid(alpha=0.3, which="both")
        a.legend(fontsize=8)
    return fig


def plot_distance(curves: dict):
    """``curves``: label -> {"trained": [...], "init": [...] or None}; log y."""
    fig, ax = runs.plt.subplots(figsize=(7, 4.2))
    colors = iter(("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"))
    for label, c in curves.items():
        color = next(colors)
        d = np.arange(len(c["trained"]))
        ax.plot(d, _finite(c["trained"]), color=color, label=f"{label}, trained")
        if c.get("init") is not None:
            ax.plot(d, _finite(c["init"]), color=color, ls="--", lw=0.8, label=f"{label}, at initialisation")
    ax.set_yscale("log")
    ax.set(
        xlabel="distance T - t (characters)",
        ylabel="mean ||dL_T / dh_t||",
        title="vanishing gradients: gradient of the last loss w.r.t. earlier hidden states",
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return fig


# ---------------------------------------------------------------- comparison across cells
def _plain(obj):
    """``obj`` as plain JSON values (numpy / jax arrays and scalars converted), as results.json holds it."""

    def convert(o):
        if isinstance(o, (np.ndarray, jax.Array, np.generic)):
            return np.asarray(o).tolist()
        raise TypeError(f"not JSON serialisable: {type(o)}")

    return json.loads(json.dumps(obj, default=convert))


def _distance_at(curve, fraction: float):
    """The first distance where the norm falls below ``fraction`` of its value at distance 0 (None: never)."""
    c = np.asarray(curve, np.float64)
    below = np.nonzero(c < fraction * c[0])[0]
    return int(below[0]) if below.size else None


def comparison_rows(records: dict) -> list[dict]:
    rows = []
    for cell, (folder, r) in records.items():
        curve = r["grad_vs_distance"]["trained"]
        rows.append(
            {
                "cell": cell,
                "run": folder,
                "hidden": r["model"]["hidden"],
                "params": r["param_count"],
                "epochs": r["epochs"],
                "train_chars_seen": r["train_chars_seen"],
                "test_bpc": r["test_bpc"],
                "goal_bpc": r["goal_bpc"],
                "train_chars_per_second": r["train_chars_per_second"],
                "eval_chars_per_second": r["eval_chars_per_second"],
                "wall_minutes": r.get("wall_seconds", float("nan")) / 60,
                "grad_ratio": {str(d): curve[d] / curve[0] for d in (10, 50, 100, len(curve) - 1) if d < len(curve)},
                "distance_to_1e-3": _distance_at(curve, 1e-3),
            }
        )
    return rows


def comparison_table(rows: list[dict]) -> str:
    def fmt(v, spec):
        return "-" if v is None else format(v, spec)

    lines = [
        "| cell | hidden | params | epochs | train chars | held-out bpc (goal) | train chars/s | eval chars/s | "
        "wall min | dL/dh at 50 / at 0 | at 100 / at 0 | distance to 1e-3 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = r["grad_ratio"]
        lines.append(
            f"| {LABELS.get(r['cell'], r['cell'])} | {r['hidden']} | {r['params']:,} | {r['epochs']} | "
            f"{r['train_chars_seen'] / 1e6:.1f} M | {r['test_bpc']:.3f} (< {r['goal_bpc']}) | "
            f"{r['train_chars_per_second']:,.0f} | {r['eval_chars_per_second']:,.0f} | {r['wall_minutes']:.1f} | "
            f"{fmt(ratio.get('50'), '.2e')} | {fmt(ratio.get('100'), '.2e')} | {fmt(r['distance_to_1e-3'], 'd')} |"
        )
    return "\n".join(lines) + "\n"


def write_comparison(out: Path, current: dict) -> Path:
    """Rebuild ``comparison.json``, ``comparison.md`` and ``grad_vs_distance.png`` in the parent of
    ``out`` from the finished char_rnn runs beside it (the most recently finished one per cell
    with the same ``quick`` setting) and ``current``, this run's results (not written yet)."""
    parent = out.parent
    found: dict[str, tuple[str, dict]] = {}
    for path in sorted(parent.glob(f"*/{runs.RESULTS}")):
        if path.parent.resolve() == out.resolve():
            continue
        try:
            r = json.loads(path.read_text())
        except (OSError, ValueError):
            print(f"[char_rnn] comparison: skipping unreadable {path}", file=sys.stderr)
            continue
        if not isinstance(r, dict) or r.get("experiment") != "char_rnn" or r.get("status") != "finished":
            continue
        if bool(r.get("quick")) != bool(current["quick"]) or "grad_vs_distance" not in r:
            continue
        cell = r.get("model", {}).get("cell")
        if cell in LABELS and (cell not in found or r.get("finished", "") > found[cell][1].get("finished", "")):
            found[cell] = (path.parent.name, r)
    found[current["model"]["cell"]] = (out.name, current)  # this run is the newest of its cell
    records = {c: found[c] for c in LABELS if c in found}
    rows = comparison_rows(records)
    table = comparison_table(rows)
    runs.write_json(parent / "comparison.json", {"runs": rows, "table": table})
    (parent / "comparison.md").write_text(table)
    curves = {
        f"{LABELS[c]} ({records[c][0]})": {
            "trained": r["grad_vs_distance"]["trained"],
            "init": r["grad_vs_distance"].get("init"),
        }
        for c, (_, r) in records.items()
    }
    runs.save_figure(plot_distance(curves), parent, FIGURES["distance"])
    print(table, file=sys.stderr)
    return parent / "comparison.json"


# ---------------------------------------------------------------- the demonstration
def explode_demo(args, config, params, state, train_data, out: Path) -> dict:
    """Plain SGD at ``--explode-lr`` without and with clipping, from the same parameters, on the
    first ``--explode-steps`` windows of the training streams; per-step norm and loss."""
    steps = args.explode_steps
    n = steps * args.batch_size
    data = (train_data[0][:n], train_data[1][:n])
    task = train.sequence(rnn_lm.model(config), vocab_size=config.vocab_size)
    demo = {"optimizer": "sgd", "lr": args.explode_lr, "clip_threshold": args.clip, "steps": steps}
    for name, clip in (("no_clip", 0.0), ("clipped", args.clip)):
        r = train.fit(
            task,
            params,
            state,
            make_optimizer("sgd", args.explode_lr, clip, steps),
            data,
            epochs=1,
            batch_size=args.batch_size,
            key=jax.random.key(args.seed),
            log_every=1,
            checkpoint=out / runs.CHECKPOINT / f"explode-{name}",
            devices=runs.local_devices(args, args.batch_size),
            shuffle=False,
            progress=not args.no_progress,
            desc=f"explode {name}",
        )
        norms = recorded_norms(r.train_state.opt_state)
        bpc = [c["train_bits_per_token"] for c in r.curve]
        tail = np.asarray(bpc[-max(1, steps // 10) :], np.float64)
        demo[name] = {
            "grad_norm": norms,
            "train_bpc": bpc,
            "max_grad_norm": float(np.nanmax(_finite(norms))) if np.isfinite(norms).any() else float("inf"),
            "median_grad_norm": float(np.nanmedian(_finite(norms))) if np.isfinite(norms).any() else float("inf"),
            "steps_with_norm_over_clip": int(np.sum(~(norms <= args.clip))),
            "final_bpc": float(np.mean(tail)) if np.all(np.isfinite(tail)) else float("nan"),
            "first_bpc": bpc[0],
            "non_finite_steps": int(np.sum(~np.isfinite(np.asarray(bpc, np.float64)))),
        }
        print(
            f"[explode {name}] max grad norm {demo[name]['max_grad_norm']:.3g}, "
            f"bpc {bpc[0]:.2f} -> {demo[name]['final_bpc']:.2f} (mean of the last {len(tail)} steps)",
            file=sys.stderr,
        )
    return demo


# ---------------------------------------------------------------- main
def _positive(args, *names):
    for name in names:
        v = getattr(args, name)
        if v is not None and v < 1:
            raise runs.UsageError(f"--{name.replace('_', '-')} must be >= 1, got {v}")


def parse_args(argv):
    p = runs.experiment_parser("char_rnn", __doc__.split("\n\n")[0])
    p.add_argument("--cell", choices=sorted(rnn_lm.CELLS), default="rnn", help="recurrent cell")
    p.add_argument("--hidden", type=int, default=None, help="hidden units; default 512 (rnn), 256 (lstm)")
    p.add_argument("--embed", type=int, default=64, help="embedding width")
    p.add_argument("--batch-size", type=int, default=64, help="parallel streams (rows of a batch)")
    p.add_argument("--window", type=int, default=128, help="truncated-BPTT window (characters per step)")
    p.add_argument("--epochs", type=int, default=2, help="passes over the training stream (--quick: at most 2)")
    p.add_argument("--lr", type=float, default=None, help="peak Adam learning rate; default 2e-3 (rnn), 5e-3 (lstm)")
    p.add_argument("--clip", type=float, default=1.0, help="clip_by_global_norm threshold; 0: no clipping")
    p.add_argument(
        "--train-chars", type=int, default=None, help="train on the first N characters of the stream; default all"
    )
    p.add_argument("--eval-rows", type=int, default=128, help="parallel rows of the held-out evaluation")
    p.add_argument("--eval-window", type=int, default=256, help="characters per evaluation window")
    p.add_argument("--log-every", type=int, default=50, help="steps between points of the training curve")
    p.add_argument(
        "--explode-steps",
        type=int,
        default=None,
        help="steps of each exploding-gradient run (SGD, no clip / clip); 0: skip; default 200 (rnn), 0 (lstm)",
    )
    p.add_argument("--explode-lr", type=float, default=1.0, help="SGD learning rate of the exploding-gradient runs")
    p.add_argument("--distance", type=int, default=200, help="longest distance T - t of the gradient measurement")
    p.add_argument("--prompt", default="The company said", help="text the samples continue")
    p.add_argument("--temperatures", default="0.5,1.0", help="comma-separated sampling temperatures")
    p.add_argument("--samples", type=int, default=2, help="samples per temperature")
    p.add_argument("--sample-length", type=int, default=400, help="characters per sample")
    args = p.parse_args(argv)
    for k, v in CELL_DEFAULTS[args.cell].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.quick:
        for k, v in QUICK.items():
            setattr(args, k, v)
        args.epochs = min(args.epochs, QUICK_EPOCHS)
        args.explode_steps = min(args.explode_steps, QUICK_EXPLODE_STEPS)
    _positive(args, "hidden", "embed", "batch_size", "window", "epochs", "eval_rows", "eval_window")
    _positive(args, "log_every", "distance", "samples", "sample_length", "train_chars")
    if args.explode_steps < 0:
        raise runs.UsageError(f"--explode-steps must be >= 0, got {args.explode_steps}")
    for name in ("lr", "explode_lr"):
        if not getattr(args, name) > 0:
            raise runs.UsageError(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    if not args.clip >= 0:
        raise runs.UsageError(f"--clip must be >= 0 (0: no clipping), got {args.clip}")
    if args.explode_steps and not args.clip > 0:
        raise runs.UsageError(
            "the exploding-gradient runs compare with clipping: pass --clip > 0 (or --explode-steps 0)"
        )
    try:
        args.temperature_list = tuple(float(t) for t in args.temperatures.split(","))
    except ValueError:
        raise runs.UsageError(f"--temperatures must be comma-separated numbers, got {args.temperatures!r}") from None
    if not args.temperature_list or not all(t > 0 for t in args.temperature_list):
        raise runs.UsageError(f"--temperatures must be positive numbers, got {args.temperatures!r}")
    if not args.prompt:
        raise runs.UsageError("--prompt must hold at least one character")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    devices = runs.local_devices(args, args.batch_size)
    out = runs.start(args)
    t_start = time.perf_counter()
    vocab, train_ids, test_ids, data_info = load_streams(args)
    vocab_path = out / "chars.json"
    if vocab_path.is_file() and CharVocab.load(vocab_path) != vocab:
        raise runs.UsageError(f"{vocab_path} holds another vocabulary than this data gives: use a new --out folder")
    vocab.save(vocab_path)
    if len(train_ids) < args.batch_size * args.window + 1:
        raise runs.UsageError(
            f"the training stream ({len(train_ids)} characters) is shorter than one batch "
            f"(--batch-size {args.batch_size} x --window {args.window} + 1)"
        )
    train_data = train_windows(train_ids, args.batch_size, args.window)
    steps_per_epoch = len(train_data[0]) // args.batch_size
    if args.explode_steps > steps_per_epoch:
        raise runs.UsageError(f"--explode-steps {args.explode_steps} exceeds the {steps_per_epoch} windows per stream")
    test_data = stream_rows(test_ids, args.eval_rows, args.eval_window)
    config = rnn_lm.Config(vocab.vocab_size, args.embed, args.hidden, args.cell)
    label = LABELS[args.cell]
    root = jax.random.key(args.seed)
    init_key, train_key, sample_key = jax.random.split(root, 3)
    params = rnn_lm.init(init_key, config)
    state = rnn_lm.init_state(config, args.batch_size)
    dist_ids = jnp.asarray(distance_ids(test_ids, args.distance))
    print(
        f"[char_rnn] {label}, hidden {args.hidden}, {rnn_lm.param_count(params):,} parameters; "
        f"{len(train_ids):,} training / {len(test_ids):,} held-out characters, {steps_per_epoch} steps per epoch",
        file=sys.stderr,
    )

    # ---- exploding gradients: SGD without / with clipping
    demo = explode_demo(args, config, params, state, train_data, out) if args.explode_steps else None

    # ---- the main run
    total_steps = args.epochs * steps_per_epoch
    task = train.sequence(rnn_lm.model(config), vocab_size=config.vocab_size)
    trained_now = []
    result = train.fit(
        task,
        params,
        state,
        make_optimizer("adam", args.lr, args.clip, total_steps),
        train_data,
        epochs=args.epochs,
        batch_size=args.batch_size,
        key=train_key,
        test_data=test_data,
        eval_fn=stream_eval_fn(config, args.eval_window),
        eval_batch_size=args.eval_rows,
        log_every=args.log_every,
        checkpoint=out / runs.CHECKPOINT / "main",
        devices=devices,
        shuffle=False,
        progress=not args.no_progress,
        desc=args.cell,
        on_epoch=lambda h: (trained_now.append(h), log_epoch(args.cell, args.window)(h)),
    )
    final = result.test_metrics
    norms = recorded_norms(result.train_state.opt_state)
    history = result.history
    later = history[1:] or history
    train_cps = float(np.median([h["train_examples_per_second"] for h in later])) * args.window
    eval_seconds = float(history[-1]["test_seconds"])
    print(f"[{args.cell}] held-out {final['bits_per_token']:.3f} bpc (goal < {GOAL_BPC[args.cell]})", file=sys.stderr)

    # ---- vanishing gradients, samples
    distance = {
        "trained": grad_vs_distance(result.params, config, dist_ids, warmup=WARMUP_CHARS),
        "init": grad_vs_distance(params, config, dist_ids, warmup=WARMUP_CHARS),
    }
    distance = {k: np.asarray(v).tolist() for k, v in distance.items()}
    prompt = jnp.asarray(np.tile(vocab.encode_array(args.prompt), (args.samples, 1)))
    ids = np.asarray(
        generate(
            result.params,
            config,
            prompt,
            sample_key,
            max_len=args.sample_length,
            temperatures=args.temperature_list,
        )
    )
    samples = {
        f"{t:g}": [args.prompt + vocab.decode(row) for row in ids[i]] for i, t in enumerate(args.temperature_list)
    }
    for t, texts in samples.items():
        print(f"[{args.cell}] sample at temperature {t}: {texts[0]!r}", file=sys.stderr)

    # ---- figures
    figures = [FIGURES["curves"], FIGURES["distance"]]
    runs.save_figure(plot_curves(result, args.window, args.batch_size, norms, label), out, FIGURES["curves"])
    runs.save_figure(plot_distance({label: distance}), out, FIGURES["distance"])
    if demo is not None:
        runs.save_figure(plot_explode(demo), out, FIGURES["explode"])
        figures.append(FIGURES["explode"])

    results = {
        "model": {"cell": args.cell, "vocab_size": config.vocab_size, "embed": args.embed, "hidden": args.hidden},
        "param_count": rnn_lm.param_count(params),
        "data": data_info,
        "recipe": {
            "optimizer": "adam, linear warm-up + cosine decay to lr/10",
            "lr": args.lr,
            "clip_by_global_norm": args.clip,
            "batch_size": args.batch_size,
            "window": args.window,
            "epochs": args.epochs,
            "state": "carried across windows (fit's model state, shuffle=False), gradient stopped at window borders",
        },
        "test_bpc": final["bits_per_token"],
        "test_loss": final["loss"],
        "test_accuracy": final["accuracy"],
        "test_chars_evaluated": final["count"],
        "goal_bpc": GOAL_BPC[args.cell],
        "goal_met": bool(final["bits_per_token"] < GOAL_BPC[args.cell]),
        "epochs": args.epochs,
        "steps": total_steps,
        "train_chars_seen": total_steps * args.batch_size * args.window,
        "train_chars_per_second": train_cps,
        "eval_chars_per_second": final["count"] / eval_seconds,
        "eval_seconds": eval_seconds,
        "train_seconds": float(sum(h["train_seconds"] for h in history)),
        **runs.epoch_timing(history),
        "history": history,
        "curve": result.curve,
        "grad_norm_per_step": norms,
        "grad_norm_max": float(np.max(norms)) if len(norms) else None,
        "grad_vs_distance": {
            "sequences": DISTANCE_SEQUENCES,
            "warmup_chars": WARMUP_CHARS,
            "index": "distance T - t (0 = the last hidden state)",
            **distance,
        },
        "prompt": args.prompt,
        "samples": samples,
        "epochs_trained_this_run": len(trained_now),
        "figures": figures,
    }
    if demo is not None:
        results["explode"] = demo
    results["comparison"] = str(out.parent / "comparison.json")
    record = {**results, "quick": bool(args.quick), "wall_seconds": time.perf_counter() - t_start}
    write_comparison(out, _plain(record))
    return runs.finish(args, results)


if __name__ == "__main__":
    runs.run_main(main)
