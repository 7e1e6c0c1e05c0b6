"""Jitted training: the train step, scanned epochs, evaluation, checkpoints.

The gradient of the loss flows only through :mod:`jdlfs.functional`'s
hand-written rules (the model and the loss are built from them); optax turns
gradients into updates.

An epoch is a handful of compiled programs, not thousands of dispatches: the
shuffled epoch is laid out on the device as ``(steps, batch, ...)``
(:func:`jdlfs.data.epoch_arrays`) and ``lax.scan`` runs the train step over it.
The scan is cut into ``chunks`` pieces only so the progress bar can move.

Randomness: epoch ``e`` uses ``fold_in(key, e)`` for its shuffle and its
dropout keys, so a run resumed from a checkpoint after epoch ``e`` continues
with exactly the keys an uninterrupted run would use: same final parameters.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import functional as F
from .data import epoch_arrays
from .layers import Layer

# (logits, labels, *, mask=None) -> scalar mean loss; ``mask`` (bool, per example)
# is needed by evaluation, which pads the last batch (softmax_cross_entropy has it).
LossFn = Callable[..., jax.Array]


class TrainState(NamedTuple):
    params: Any
    state: Any            # model state (batch-norm running statistics)
    opt_state: Any
    step: jax.Array       # int32 scalar, number of updates so far


def init_train_state(params, state, optimizer: optax.GradientTransformation) -> TrainState:
    return TrainState(params, state, optimizer.init(params), jnp.zeros((), jnp.int32))


def make_train_step(model: Layer, optimizer: optax.GradientTransformation, *,
                    loss_fn: LossFn = F.softmax_cross_entropy,
                    preprocess: Callable = lambda x: x):
    """``step(ts, x, y, key) -> (ts, (loss, num_correct))`` (pure; jit it or scan it).

    ``preprocess`` maps a raw batch (e.g. uint8 images) to model input inside
    the compiled step.
    """
    def train_step(ts: TrainState, x, y, key):
        def objective(params):
            logits, new_state = model.apply(params, ts.state, preprocess(x), key=key, train=True)
            return loss_fn(logits, y), (new_state, logits)

        (loss, (new_state, logits)), grads = jax.value_and_grad(objective, has_aux=True)(ts.params)
        updates, opt_state = optimizer.update(grads, ts.opt_state, ts.params)
        params = optax.apply_updates(ts.params, updates)
        correct = jnp.sum(jnp.argmax(logits, -1) == y)
        return TrainState(params, new_state, opt_state, ts.step + 1), (loss, correct)

    return train_step


def make_scan_steps(train_step):
    """Jitted ``run(ts, xs, ys, key) -> (ts, losses, corrects)`` over stacked batches;
    the step's key is ``fold_in(key, ts.step)``."""
    @jax.jit
    def run(ts, xs, ys, key):
        def body(ts, batch):
            x, y = batch
            ts, (loss, correct) = train_step(ts, x, y, jax.random.fold_in(key, ts.step))
            return ts, (loss, correct)

        ts, (losses, corrects) = jax.lax.scan(body, ts, (xs, ys))
        return ts, losses, corrects

    return run


# ---------------------------------------------------------------- evaluation
def make_evaluate(model: Layer, *, num_classes: int, loss_fn: LossFn = F.softmax_cross_entropy,
                  preprocess: Callable = lambda x: x, batch_size: int = 1000):
    """``evaluate(params, state, images, labels) -> dict`` with ``accuracy``,
    ``loss`` (mean over examples) and the ``confusion`` matrix (rows: true class,
    columns: predicted). Every example counts; the last batch is padded and masked,
    so ``loss_fn`` must accept ``mask=``."""
    import inspect

    try:
        sig = inspect.signature(loss_fn).parameters
    except (TypeError, ValueError):                      # no Python signature to inspect
        sig = None
    if sig is not None and "mask" not in sig and not any(p.kind is p.VAR_KEYWORD for p in sig.values()):
        raise ValueError(f"loss_fn {getattr(loss_fn, '__name__', loss_fn)} must accept a mask= keyword "
                         "(evaluation pads the last batch and masks the padding out)")

    @jax.jit
    def _run(params, state, xs, ys, valid):
        def body(carry, batch):
            x, y, m = batch
            logits, _ = model.apply(params, state, preprocess(x), train=False)
            if logits.shape[-1] != num_classes:
                raise ValueError(f"the model outputs {logits.shape[-1]} logits but num_classes={num_classes}")
            loss = loss_fn(logits, y, mask=m) * jnp.sum(m)          # masked sum of losses
            pred = jnp.argmax(logits, -1)
            conf = jnp.zeros((num_classes, num_classes), jnp.int32).at[y, pred].add(m.astype(jnp.int32))
            return (carry[0] + loss, carry[1] + conf), None

        init = (jnp.zeros((), jnp.float32), jnp.zeros((num_classes, num_classes), jnp.int32))
        (loss, conf), _ = jax.lax.scan(body, init, (xs, ys, valid))
        return loss, conf

    def evaluate(params, state, images, labels):
        n = len(labels)
        b = min(batch_size, n)
        pad = (-n) % b
        xs = jnp.concatenate([jnp.asarray(images), jnp.zeros((pad, *images.shape[1:]), images.dtype)])
        ys = jnp.concatenate([jnp.asarray(labels), jnp.zeros((pad,), labels.dtype)])
        valid = jnp.arange(n + pad) < n
        shape = lambda a: a.reshape(-1, b, *a.shape[1:])  # noqa: E731
        loss, conf = _run(params, state, shape(xs), shape(ys), shape(valid))
        conf = np.asarray(conf)
        return {"accuracy": float(np.trace(conf) / n), "loss": float(loss) / n, "confusion": conf}

    return evaluate


# ---------------------------------------------------------------- checkpoints
def save_checkpoint(path: str | os.PathLike, ts: TrainState, epoch: int, history: list) -> None:
    """Write ``(ts, epoch, history)`` atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"train_state": jax.device_get(ts), "epoch": epoch, "history": history}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".ckpt-")
    with os.fdopen(fd, "wb") as f:
        pickle.dump(payload, f)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike) -> tuple[TrainState, int, list]:
    with open(path, "rb") as f:
        payload = pickle.load(f)
    ts = jax.tree.map(jnp.asarray, payload["train_state"])
    return TrainState(*ts), payload["epoch"], payload["history"]


# ---------------------------------------------------------------- fit
@dataclass
class FitResult:
    params: Any
    state: Any
    history: list[dict] = field(default_factory=list)
    train_state: TrainState | None = None


def fit(model: Layer, params, state, optimizer: optax.GradientTransformation, train_data, *,
        epochs: int, batch_size: int, key: jax.Array, test_data=None, num_classes: int = 10,
        loss_fn: LossFn = F.softmax_cross_entropy, preprocess: Callable = lambda x: x,
        checkpoint: str | os.PathLike | None = None, progress: bool = True, chunks: int = 10,
        desc: str = "train", train_step: Callable | None = None) -> FitResult:
    """Train ``model`` for ``epochs`` over ``train_data = (images, labels)``.

    Each epoch: shuffle with ``fold_in(key, epoch)``, run the scanned steps, then
    evaluate on ``test_data`` if given. ``history`` holds one dict per epoch
    (train_loss, train_accuracy, test_loss, test_accuracy, seconds). With
    ``checkpoint`` set, the state is saved after every epoch and a run that
    finds the file resumes from it (bit-identical to an uninterrupted run).
    ``train_step`` overrides the step built by :func:`make_train_step` (e.g. an
    autodiff baseline with the same signature).
    """
    from tqdm.auto import tqdm

    x_train, y_train = (jax.device_put(jnp.asarray(a)) for a in train_data)
    step = train_step or make_train_step(model, optimizer, loss_fn=loss_fn, preprocess=preprocess)
    run = make_scan_steps(step)
    evaluate = make_evaluate(model, num_classes=num_classes, loss_fn=loss_fn, preprocess=preprocess)

    ts, start, history = init_train_state(params, state, optimizer), 0, []
    if checkpoint is not None and Path(checkpoint).exists():
        ts, start, history = load_checkpoint(checkpoint)

    steps = len(y_train) // batch_size
    bounds = np.linspace(0, steps, min(chunks, steps) + 1).astype(int)
    bar = tqdm(total=(epochs - start) * steps, desc=desc, disable=not progress, unit="step",
               dynamic_ncols=True)
    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        ek = jax.random.fold_in(key, epoch)
        shuffle_key, dropout_key = jax.random.split(ek)
        xs, ys = epoch_arrays(shuffle_key, x_train, y_train, batch_size)
        loss_sum, correct = 0.0, 0
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            ts, losses, corrects = run(ts, xs[lo:hi], ys[lo:hi], dropout_key)
            loss_sum += float(jnp.sum(losses))
            correct += int(jnp.sum(corrects))
            bar.update(int(hi - lo))
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss_sum / hi:.4f}",
                            acc=f"{correct / (hi * batch_size):.4f}")
        record = {"epoch": epoch + 1, "train_loss": loss_sum / steps,
                  "train_accuracy": correct / (steps * batch_size)}
        record["train_seconds"] = time.perf_counter() - t0
        if test_data is not None:
            ev = evaluate(ts.params, ts.state, *test_data)
            record.update(test_loss=ev["loss"], test_accuracy=ev["accuracy"])
            bar.set_postfix(epoch=epoch + 1, loss=f"{record['train_loss']:.4f}",
                            test_acc=f"{ev['accuracy']:.4f}")
        history.append(record)
        if checkpoint is not None:
            save_checkpoint(checkpoint, ts, epoch + 1, history)
    bar.close()
    return FitResult(ts.params, ts.state, history, ts)


def write_json(path: str | os.PathLike, obj) -> None:
    """Write ``obj`` as indented JSON (numpy scalars/arrays converted)."""
    def default(o):
        if isinstance(o, (np.generic,)):
            return o.item()
        if isinstance(o, (np.ndarray, jax.Array)):
            return np.asarray(o).tolist()
        raise TypeError(f"not JSON serialisable: {type(o)}")

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(obj, indent=2, default=default) + "\n")
