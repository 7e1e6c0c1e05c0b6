"""``fit`` and ``evaluate``: the epoch loop, on one device or many.

**Why a Python loop and not ``lax.scan``.** Each training step is one call of
a jitted, buffer-donating function that gathers its own batch from the
device-resident dataset (``take`` by a per-epoch permutation, indexed by the
step counter), runs the train step, and adds the step's metric sums to an
on-device accumulator: no host-to-device copy and no host sync per step, and
dispatch is asynchronous, so the host stays ahead of the device. The host
reads the accumulator only for the progress bar (about once a second), at
``log_every``/``eval_every`` points, and at the end of the epoch.

Measured on the 2-core CPU (jax 0.10.2, ``scripts/bench_train.py``): a
``lax.scan`` over the steps of an epoch runs XLA:CPU's convolutions inside a
while loop, which is 20-60x slower than the same convolutions outside one
(upstream jax-ml/jax#12868): CIFAR CNN + BN 26 images/s scanned vs 596 in a loop
of jitted steps. The loop does cost the MLP (a ~0.4 ms step, so dispatch
shows): a scan runs it 1.4x faster. ``scripts/bench_train.py`` measures fit's epoch
against a bare loop of the same jitted step and against a scan (2-core CPU,
images/s, median of 5 interleaved rounds): MNIST MLP bare 167,614 / fit
149,476 / scan 237,904; LeNet 15,845 / 17,512 / 17,200; CIFAR CNN + BN
596 / 604 / 26; CIFAR CNN plain 771 / 771 / 26.

**Metric sums** are accumulated on the device in float32 and moved into
float64 host sums every 32 steps, at every curve point and at the epoch end
(a fixed schedule, so a rerun or a resumed run reports the same numbers),
so counts stay exact and long epochs do not drift.

**Randomness.** Epoch ``e`` uses ``fold_in(key, e)``, split into the shuffle
key and the step key; step ``s`` uses ``fold_in(step_key, s)``. A run resumed
from a checkpoint after epoch ``e`` therefore continues with exactly the keys
an uninterrupted run uses: the same final parameters, bit for bit.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from .. import checkpoint as ckpt
from ..data.pipeline import num_examples
from ..layers import Layer
from . import parallel
from .objectives import Task, classification, summarize
from .step import TrainState, init_train_state, make_train_step, make_update


# ---------------------------------------------------------------- data helpers
def _sum_zeros(shapes) -> dict:
    """Zero accumulators for metric sums: floats accumulate in float32 or wider."""

    def zero(s):
        dtype = s.dtype if jnp.issubdtype(s.dtype, jnp.integer) else jnp.promote_types(s.dtype, jnp.float32)
        return jnp.zeros(s.shape, dtype)

    return jax.tree.map(zero, shapes)


def _add(acc, new):
    return jax.tree.map(lambda a, b: a + jnp.asarray(b).astype(a.dtype), acc, new)


def _batch_like(data, batch_size: int):
    """Shape/dtype stand-ins for one batch of ``data`` (for ``jax.eval_shape``)."""
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct((batch_size, *a.shape[1:]), a.dtype), data)


def _take(data, idx, sharding):
    batch = jax.tree.map(lambda a: jnp.take(a, idx, axis=0), data)
    return lax.with_sharding_constraint(batch, sharding)


# ---------------------------------------------------------------- evaluation
@functools.lru_cache(maxsize=64)
def _eval_runner(eval_fn: Callable, mesh):
    sharding = parallel.batch_sharded(mesh)

    @functools.partial(jax.jit, donate_argnums=(2,))
    def run(params, state, acc, data, order, weights, i):
        w = lax.with_sharding_constraint(weights[i], sharding)
        return _add(acc, eval_fn(params, state, _take(data, order[i], sharding), weights=w))

    return run


class Evaluator:
    """``eval_fn`` over a fixed dataset: the data is placed on the devices once,
    the last batch padded (with real examples, weight 0) to a full batch, and
    ``evaluator(params, state)`` returns the metric sums of every example."""

    def __init__(self, eval_fn: Callable, data, *, batch_size: int = 1000, mesh=None, name: str = "test_data"):
        if eval_fn is None:
            raise ValueError(f"{name} was given but there is no eval_fn to evaluate it with")
        self.mesh = mesh if mesh is not None else parallel.make_mesh(1)
        n = num_examples(data, name)
        if n == 0:
            raise ValueError(f"{name} has 0 examples: nothing to evaluate")
        if int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"eval batch_size must be a positive int, got {batch_size!r}")
        d = self.mesh.size
        b = -(-min(int(batch_size), n) // d) * d  # a multiple of the device count
        nb = -(-n // b)
        idx = np.arange(nb * b)
        self.n, self.batch_size, self.num_batches = n, b, nb
        rep = parallel.replicated(self.mesh)
        self.data = jax.device_put(data, rep)
        self.order = jax.device_put(np.where(idx < n, idx, 0).reshape(nb, b).astype(np.int32), rep)
        self.weights = jax.device_put((idx < n).reshape(nb, b).astype(np.float32), rep)
        self.run = _eval_runner(eval_fn, self.mesh)
        self.eval_fn = eval_fn

    def __call__(self, params, state) -> dict:
        shapes = jax.eval_shape(
            lambda p, s, b, w: self.eval_fn(p, s, b, weights=w),
            params,
            state,
            _batch_like(self.data, self.batch_size),
            self.weights[0],
        )
        rep = parallel.replicated(self.mesh)
        params, state = jax.device_put((params, state), rep)
        acc = jax.device_put(_sum_zeros(shapes), rep)
        for i in range(self.num_batches):
            acc = self.run(params, state, acc, self.data, self.order, self.weights, np.int32(i))
        return jax.device_get(acc)


def evaluate(eval_fn, params, state, data, *, batch_size: int = 1000, devices=None) -> dict:
    """Evaluate ``eval_fn`` over every example of ``data`` and return the
    reported values (:func:`summarize`: means, the confusion matrix, count)."""
    ev = Evaluator(eval_fn, data, batch_size=batch_size, mesh=parallel.make_mesh(devices), name="data")
    return summarize(ev(params, state))


def make_evaluate(
    model: Layer,
    *,
    num_classes: int | None = None,
    preprocess: Callable | None = None,
    batch_size: int = 1000,
    devices=None,
):
    """``evaluate(params, state, images, labels) -> {"accuracy", "loss", "confusion", "count"}``
    for a classifier (a shortcut for :func:`evaluate` with
    :func:`~jdlfs.train.classification`)."""
    task = classification(model, num_classes=num_classes, preprocess=preprocess)

    def run(params, state, images, labels):
        task.check((images, labels), "data")
        return evaluate(task.evaluate, params, state, (images, labels), batch_size=batch_size, devices=devices)

    return run


# ---------------------------------------------------------------- training
@functools.lru_cache(maxsize=64)
def _order_fn(n: int, steps: int, batch_size: int, shuffle: bool):
    @jax.jit
    def order(key):
        idx = jax.random.permutation(key, n) if shuffle else jnp.arange(n)
        return idx[: steps * batch_size].reshape(steps, batch_size).astype(jnp.int32)

    return order


def _epoch_step(step: Callable, mesh):
    sharding = parallel.batch_sharded(mesh)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def run(ts, acc, data, order, key, start):
        batch = _take(data, lax.dynamic_index_in_dim(order, ts.step - start, keepdims=False), sharding)
        ts, metrics = step(ts, batch, jax.random.fold_in(key, ts.step))
        return ts, _add(acc, metrics)

    return run


@dataclass
class FitResult:
    params: Any
    state: Any
    history: list[dict] = field(default_factory=list)  # one record per epoch
    train_state: TrainState | None = None
    curve: list[dict] = field(default_factory=list)  # one record per log_every / eval_every point
    test_metrics: dict | None = None  # the last evaluation (incl. the confusion matrix)


def _resolve_task(task, num_classes, preprocess, eval_fn) -> Task:
    if isinstance(task, Layer):
        task = classification(task, num_classes=num_classes, preprocess=preprocess)
    elif num_classes is not None or preprocess is not None:
        raise ValueError(
            "num_classes= and preprocess= apply when fit is given a model (a Layer); "
            "pass them to train.classification(...) instead"
        )
    elif isinstance(task, Task):
        pass
    elif callable(task):
        task = Task(task)
    else:
        raise TypeError(f"fit needs a Task, an objective function or a model (Layer), got {type(task).__name__}")
    if eval_fn is not None:
        task = task._replace(evaluate=eval_fn)
    return task


def _flat(prefix: str, summary: dict) -> dict:
    return {f"{prefix}_{k}": v for k, v in summary.items() if k != "count" and np.ndim(v) == 0}


def _positive_int(name, v, allow_none=False):
    if v is None and allow_none:
        return
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{name} must be a positive int{' or None' if allow_none else ''}, got {v!r}")


def fit(
    task,
    params,
    state,
    optimizer: optax.GradientTransformation,
    train_data,
    *,
    epochs: int,
    batch_size: int,
    key: jax.Array,
    test_data=None,
    eval_fn: Callable | None = None,
    eval_batch_size: int = 1000,
    eval_every: int | None = None,
    log_every: int | None = None,
    num_classes: int | None = None,
    preprocess: Callable | None = None,
    checkpoint: str | os.PathLike | None = None,
    devices=None,
    shuffle: bool = True,
    progress: bool = True,
    desc: str = "train",
    on_epoch: Callable[[dict], None] | None = None,
) -> FitResult:
    """Train for ``epochs`` epochs over ``train_data`` (a pytree of arrays with
    a leading example axis, e.g. ``(images, labels)``).

    Args:
      task: a :class:`~jdlfs.train.Task` (objective + evaluation, e.g.
        ``train.classification(model)`` or ``train.sequence(model, pad_id=0)``),
        a bare objective ``(params, state, batch, key) -> (loss, (state,
        metric_sums))``, or a model (:class:`~jdlfs.layers.Layer`), which means
        ``classification(model, num_classes=num_classes, preprocess=preprocess)``.
      params, state: the model's initial parameters and state (not modified).
      optimizer: an optax transformation (a frozen part: ``optax.multi_transform``
        with ``optax.set_to_zero()``).
      epochs, batch_size: each epoch shuffles (``shuffle=True``) with
        ``fold_in(key, epoch)`` and runs ``N // batch_size`` full batches (a
        different random remainder is left out each epoch).
      key: the run's PRNG key (shuffling, dropout, augmentation).
      test_data: evaluated with the task's ``evaluate`` (or ``eval_fn``) after
        every epoch and every ``eval_every`` steps; every example counts once
        (the last batch is padded and weighted 0).
      eval_every, log_every: steps between points of ``result.curve``
        (training metrics over the window since the last point; test metrics
        every ``eval_every``; a step-0 test point is recorded first).
      checkpoint: a directory; the train state, history and curve are saved
        (:mod:`jdlfs.checkpoint`, no pickle) after every epoch, and a run that
        finds a checkpoint there resumes after its last epoch, bit-identical
        to an uninterrupted run (the curve's window across an epoch border
        included). A checkpoint that cannot be read, or that was made with
        another model or optimizer state structure, key, batch size, dataset
        size or shuffling, is refused with a ``CheckpointError`` naming it (the
        optimizer's hyperparameters and the data's values are not recorded:
        keep them the same). A checkpoint with more epochs than ``epochs`` is
        refused too.
      on_epoch: called with each epoch's history record (after its
        evaluation and checkpoint), e.g. to log one line per epoch.
      devices: ``None`` (all devices), a count, or a list: data parallelism
        over a 1-D mesh (:mod:`jdlfs.train.parallel`); ``batch_size`` must be
        divisible by the device count. The training and test data are
        replicated on every device; the result's arrays live on the mesh.

    Returns a :class:`FitResult`: final params/state, ``history`` (per epoch:
    ``train_<metric>``, ``test_<metric>``, ``train_seconds`` (training only:
    the ``eval_every`` evaluations inside the epoch are not counted),
    ``train_examples_per_second``, ``test_seconds``), ``curve``,
    ``test_metrics`` (the last evaluation, with the confusion matrix for
    classification) and the final ``train_state``.
    """
    from tqdm.auto import tqdm

    task = _resolve_task(task, num_classes, preprocess, eval_fn)
    _positive_int("epochs", epochs)
    _positive_int("batch_size", batch_size)
    _positive_int("eval_every", eval_every, allow_none=True)
    _positive_int("log_every", log_every, allow_none=True)
    _check_key(key)
    log_every = log_every or eval_every
    mesh = parallel.make_mesh(devices)
    parallel.check_divisible(batch_size, mesh)
    n = num_examples(train_data, "train_data")
    if n < batch_size:
        raise ValueError(f"train_data has {n} examples, fewer than batch_size={batch_size}: no full batch to train on")
    if task.check is not None:
        task.check(train_data, "train_data")
        if test_data is not None:
            task.check(test_data, "test_data")
    evaluator = None
    if test_data is not None:
        evaluator = Evaluator(task.evaluate, test_data, batch_size=eval_batch_size, mesh=mesh, name="test_data")

    rep = parallel.replicated(mesh)
    data = jax.device_put(train_data, rep)
    steps = n // batch_size
    order_of = _order_fn(n, steps, batch_size, bool(shuffle))
    step = make_train_step(task.objective, optimizer)
    run = _epoch_step(step, mesh)

    ts = jax.device_put(_fresh_copy(init_train_state(params, state, optimizer)), rep)
    shapes = _metric_shapes(task.objective, step, ts, _batch_like(data, batch_size))
    start_epoch, history, curve = 0, [], []
    window = _host_zeros(shapes)  # training sums since the last curve point (crosses epochs)
    fingerprint = {
        "optimizer_state": str(jax.tree.structure(ts.opt_state)),  # adam vs adamw: same leaves, other nodes
        "key": np.asarray(jax.random.key_data(key)).tolist(),
        "batch_size": int(batch_size),
        "num_examples": int(n),
        "shuffle": bool(shuffle),
    }
    if checkpoint is not None and _checkpoint_present(checkpoint):
        restored, meta = ckpt.load(checkpoint, ts)  # raises CheckpointError naming the file
        for k, v in fingerprint.items():
            if meta.get("run", {}).get(k) != v:
                raise ckpt.CheckpointError(
                    checkpoint,
                    f"was made with {k}={meta.get('run', {}).get(k)!r}, this run "
                    f"has {k}={v!r}: resuming would not continue the same run (use a new "
                    "checkpoint directory)",
                )
        if int(meta["epoch"]) > epochs:
            raise ckpt.CheckpointError(
                checkpoint,
                f"holds {meta['epoch']} epochs, more than epochs={epochs}: "
                "pass epochs >= the checkpoint's to continue it, or use a new directory",
            )
        ts = jax.device_put(TrainState(*restored), rep)
        start_epoch, history, curve = int(meta["epoch"]), list(meta["history"]), list(meta.get("curve", []))
        window = jax.tree.map(lambda z, v: np.asarray(v, z.dtype), window, meta.get("window", window))

    test_metrics, test_step = None, None
    if evaluator is not None and eval_every and start_epoch == 0 and not curve:
        test_metrics, test_step = summarize(evaluator(ts.params, ts.state)), 0
        curve.append({"step": 0, "epoch": 0.0, **_flat("test", test_metrics)})

    bar = tqdm(
        total=max(epochs - start_epoch, 0) * steps, desc=desc, disable=not progress, unit="step", dynamic_ncols=True
    )
    for epoch in range(start_epoch, epochs):
        t0, eval_seconds = time.perf_counter(), 0.0
        shuffle_key, step_key = jax.random.split(jax.random.fold_in(key, epoch))
        order = jax.device_put(order_of(shuffle_key), rep)
        start = jax.device_put(jnp.int32(epoch * steps), rep)
        acc = jax.device_put(_sum_zeros(shapes), rep)
        epoch_sums, last_post = _host_zeros(shapes), time.monotonic()

        for i in range(steps):
            ts, acc = run(ts, acc, data, order, step_key, start)
            bar.update(1)
            s = epoch * steps + i + 1
            do_eval = evaluator is not None and eval_every is not None and s % eval_every == 0
            point = do_eval or (log_every is not None and s % log_every == 0)
            if point or (i + 1) % _FLUSH_EVERY == 0:  # a fixed schedule: the same sums on every rerun
                acc = _flush(acc, shapes, rep, epoch_sums, window)
                if progress and time.monotonic() - last_post > 1.0:
                    train_now = _flat("train", summarize(epoch_sums))
                    bar.set_postfix(epoch=epoch + 1, **{k: f"{v:.4f}" for k, v in train_now.items()})
                    last_post = time.monotonic()
                if point:
                    rec = {"step": s, "epoch": epoch + (i + 1) / steps, **_flat("train", summarize(window))}
                    window = _host_zeros(shapes)
                    if do_eval:
                        t1 = time.perf_counter()
                        test_metrics, test_step = summarize(evaluator(ts.params, ts.state)), s
                        eval_seconds += time.perf_counter() - t1
                        rec.update(_flat("test", test_metrics))
                    curve.append(rec)
        _flush(acc, shapes, rep, epoch_sums, window)
        seconds = time.perf_counter() - t0 - eval_seconds
        record = {
            "epoch": epoch + 1,
            "step": int((epoch + 1) * steps),
            **_flat("train", summarize(epoch_sums)),
            "train_seconds": seconds,
            "train_examples_per_second": steps * batch_size / seconds,
        }
        if evaluator is not None:
            t1 = time.perf_counter()
            if test_step != (epoch + 1) * steps:  # not evaluated at this very step already
                test_metrics, test_step = summarize(evaluator(ts.params, ts.state)), (epoch + 1) * steps
            record.update(_flat("test", test_metrics), test_seconds=time.perf_counter() - t1)
            bar.set_postfix(epoch=epoch + 1, **{k: f"{v:.4f}" for k, v in _flat("test", test_metrics).items()})
        history.append(record)
        if checkpoint is not None:
            ckpt.save(
                checkpoint,
                ts,
                metadata={
                    "epoch": epoch + 1,
                    "history": history,
                    "curve": curve,
                    "window": jax.tree.map(lambda a: a.tolist(), window),
                    "run": fingerprint,
                },
            )
        if on_epoch is not None:
            on_epoch(record)
    bar.close()
    if test_metrics is None and evaluator is not None:  # resumed after the last epoch
        test_metrics = summarize(evaluator(ts.params, ts.state))
    return FitResult(ts.params, ts.state, history, ts, curve, test_metrics)


_FLUSH_EVERY = 32  # steps between moves of the device's float32 metric sums into the float64 host sums


def _flush(acc, shapes, rep, *host_sums):
    """Add the on-device float32 metric sums into float64 host sums (exact counts, no float32 drift over
    long epochs) and return fresh zero device sums (the old buffer is donated to the next step)."""
    got = jax.device_get(acc)
    for tree in host_sums:
        jax.tree.map(lambda h, g: h.__iadd__(g), tree, got)
    return jax.device_put(_sum_zeros(shapes), rep)


def _check_key(key) -> None:
    ok = isinstance(key, jax.Array) and (
        jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) or (key.dtype == jnp.uint32 and key.shape == (2,))
    )
    if not ok or getattr(key, "shape", None) not in ((), (2,)):
        raise TypeError(f"key must be a single PRNG key such as jax.random.key(0), got {key!r:.80}")


def _checkpoint_present(path) -> bool:
    """Anything at ``path`` (or a half-replaced ``.<name>.old`` beside it) is a checkpoint to load or refuse;
    only a missing path or an empty directory starts a new run."""
    p = Path(path)
    if (p.parent / f".{p.name}.old").exists():
        return True
    if not p.exists():
        return False
    return not (p.is_dir() and not any(p.iterdir()))


def _fresh_copy(tree):
    """Copies of the caller's arrays: the jitted steps donate their inputs, which must not be the caller's."""
    return jax.tree.map(lambda a: jnp.array(a, copy=True), tree)


def _host_zeros(shapes):
    """float64 / int64 host accumulators for metric sums."""
    return jax.tree.map(
        lambda s: np.zeros(s.shape, np.int64 if jnp.issubdtype(s.dtype, jnp.integer) else np.float64), shapes
    )


def _metric_shapes(objective, step, ts, batch):
    """The metric sums' shapes, checking once what the objective returns (clear errors, not JAX internals)."""
    try:
        out = jax.eval_shape(objective, ts.params, ts.state, batch, jax.random.key(0))
    except TypeError as e:
        raise TypeError(
            f"calling the objective as objective(params, state, batch, key) failed: {e}. fit treats a "
            "plain function as an objective; for a model or its apply function use "
            "train.classification(model) or train.sequence(model)"
        ) from e
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], tuple) and len(out[1]) == 2):
        raise TypeError(f"an objective must return (loss, (new_state, metrics)); got {jax.tree.structure(out)}")
    loss, (_, metrics) = out
    if getattr(loss, "shape", None) != ():
        raise ValueError(f"the objective's loss must be a scalar, got shape {getattr(loss, 'shape', None)}")
    if not isinstance(metrics, dict) or "count" not in metrics:
        raise ValueError(
            "the objective's metrics must be a dict of sums with a 'count' entry (e.g. "
            "{'loss': loss * n, 'count': n}); got "
            f"{sorted(metrics) if isinstance(metrics, dict) else type(metrics).__name__}"
        )
    return jax.eval_shape(step, ts, batch, jax.random.key(0))[1]


# ---------------------------------------------------------------- checkpoints
def save_checkpoint(path: str | os.PathLike, ts: TrainState, epoch: int, history: list, **metadata) -> None:
    """Save a train state with its epoch and history (:func:`jdlfs.checkpoint.save`: atomic, no pickle)."""
    ckpt.save(path, ts, metadata={"epoch": int(epoch), "history": list(history), **metadata})


def load_checkpoint(path: str | os.PathLike, like: TrainState) -> tuple[TrainState, int, list]:
    """``(ts, epoch, history)`` from a checkpoint made by :func:`save_checkpoint` or :func:`fit`; ``like`` is a
    train state of the same model and optimizer (e.g. ``init_train_state(params, state, optimizer)``).
    Raises :class:`jdlfs.checkpoint.CheckpointError` naming the file for anything unreadable or mismatched."""
    tree, meta = ckpt.load(path, like)
    return TrainState(*tree), int(meta.get("epoch", 0)), list(meta.get("history", []))


# ---------------------------------------------------------------- full batch
def full_batch(
    task, params, state, optimizer: optax.GradientTransformation, batch, *, steps: int, key: jax.Array
) -> tuple[TrainState, np.ndarray]:
    """``steps`` updates on one fixed batch (XOR, overfitting a handful of
    images): returns the final :class:`TrainState` and the loss before each
    update (``(steps,)`` numpy). Step ``s`` uses ``fold_in(key, s)``. Same loop
    design as :func:`fit`: one jitted, donating call per step, the loss
    written into an on-device buffer, one sync at the end."""
    task = _resolve_task(task, None, None, None)
    _positive_int("steps", steps)
    update = make_update(task.objective, optimizer)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def one(ts, losses, batch, key):
        i = ts.step
        ts, loss, _ = update(ts, batch, jax.random.fold_in(key, i))
        return ts, losses.at[i].set(loss.astype(losses.dtype))

    ts = _fresh_copy(init_train_state(params, state, optimizer))
    batch = jax.tree.map(jnp.asarray, batch)
    losses = jnp.zeros((steps,), jnp.float32)
    for _ in range(steps):
        ts, losses = one(ts, losses, batch, key)
    return ts, np.asarray(losses)
