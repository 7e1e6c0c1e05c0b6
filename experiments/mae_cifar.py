"""Masked autoencoder on CIFAR-10, and what its features are worth: linear probes at 1%, 10% and 100% of labels.

Pretrains ``jdlfs.models.mae`` (ViT encoder on 4x4 patches of the 32x32 images, 75% of the
64 patches hidden per image, the encoder sees the visible 16 only, a light decoder with
mask tokens predicts the hidden pixels, MSE on the hidden patches) on the 50,000 training
images **without their labels**, through ``jdlfs.train.fit`` with a custom objective
(inputs standardised per channel inside the step, random horizontal flips, AdamW
b2 = 0.95 with weight decay on matrices only, linear warm-up then cosine decay to 0).

Then the encoder is frozen and its features are measured by what a **linear probe** on
them gets right. The features are the issue's: every patch visible, the encoder output
(the final block's output after the encoder's final LayerNorm) mean-pooled to one
``d_model`` vector per image. (``--probe-blocks N`` is an extra for users: the mean-pooled
outputs of the last N blocks, concatenated; it is not the default and nothing here chose
it.) The comparison is a linear probe on the **raw pixels** (3,072 values per image on the
[0, 1] scale), at 1%, 10% and 100% of the training labels: class-balanced subsets drawn by
key, ``--draws`` draws at 1% and 10% (mean, standard deviation, min and max reported; the
per-draw paired ratio MAE / pixels at the smallest fraction too), one at 100% (the whole
set; its standard deviation is ``null``). Both probes **standardise each feature with the
mean and standard deviation of the probe's own labelled training subset** (per draw; while
the L2 strength is chosen, of the part the candidate probes are fitted on), never with
images outside it. A **supervised baseline** trains the same encoder (fresh, every patch
visible, mean-pooled, plus a linear head) from scratch on each 1% subset (random crop +
flip, AdamW).

The probes are multinomial logistic regression with an L2 penalty, trained **full-batch
with optax's L-BFGS** to convergence (gradient norm below ``--probe-tol`` or
``--probe-iters`` iterations): the features of even the 100% set fit in memory (50,000 x
3,072 floats for the pixels), the problem is convex so the probe is *the* minimiser (no
learning rate, no schedule, no epoch count to tune, and no minibatch noise to average
over), and L-BFGS reaches it in tens to a few hundred full passes, all inside one compiled
``while_loop``. The L2 strength is chosen per subset and per probe from ``--probe-l2`` by
accuracy on a class-balanced 20% of that subset's own labelled examples (the candidates
are fitted on the other 80%); the probe is then refit on the whole subset. No test label
is used for any choice.

``--probe-at-epochs E1,E2,...`` also probes the encoder at those pretraining epochs (the
1% probe, MAE vs pixels, on the same subsets), recorded as ``probe_vs_pretraining_epochs``
with the final epoch's: the pretraining runs in stages up to each of them (``fit`` resumes
its own checkpoint, bit-identical to one uninterrupted run; the learning-rate schedule is
always the one of the full ``--epochs``), and the encoder of each such epoch is kept under
``checkpoint/encoder-epoch<E>``. Cheap: only the 1% subsets' and the test images' features
are computed there.

Outputs in the run folder: ``results.json`` (the probe table, per-draw accuracies and
chosen L2 strengths, pretraining history, images per second, the 1% ratio against the
goal of 1.57x), ``transfer.md`` (the table), ``reconstruction.png`` (one test image of each
class: original / the visible 25% / the reconstruction with the visible patches pasted
back; with ``--norm-pix-loss`` the hidden patches are shown at the visible patches' mean
brightness and contrast, see ``reconstruction_display``), ``loss_curve.png`` (pretraining
loss on the hidden patches, train and a fixed test subset), ``transfer.png`` (test
accuracy vs label fraction, log axis). Checkpoints under ``<out>/checkpoint``: the
pretraining (``fit``'s, after every epoch, with the recipe it was made with), the
features, each probe and each supervised run, each stamped with what it was computed
from (solver settings, subset, features, recipe); rerun with the same ``--out`` to resume
a stopped run: a stamp that does not match is recomputed, a pretraining recipe that does
not match is refused.

Keys: one root ``--seed`` key, folded in per purpose (pretraining, label subsets, probe
hold-outs, supervised runs) and then per fraction and draw, so no two uses share a key.

Usage::

    python experiments/mae_cifar.py --data-dir ../shared/data
    python experiments/mae_cifar.py --data-dir ../shared/data --quick --out /tmp/mae_quick
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import math
import resource
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu
from jax import lax

from jdlfs import checkpoint, data, runs, train
from jdlfs import functional as F
from jdlfs.models import mae

GOAL_RATIO = 1.57  # MAE probe / raw-pixel probe at 1% of the labels (the from-scratch write-up)
GOAL_FRACTION = 0.01
FIGURE_CLASSES = data.CIFAR10_CLASSES  # every class, car, dog, horse, ship and bird among them
KINDS = ("mae", "pixels")
LABELS = {"mae": "MAE features (frozen)", "pixels": "raw pixels", "supervised": "same encoder, supervised from scratch"}
TRAIN_IMAGES = {False: 50_000, True: 1024}  # CIFAR-10's training split; --quick's subset of it
PURPOSES = {"pretrain": 0, "subset": 1, "probe": 2, "supervised": 3}
PROBE_VERSION = 2  # 2: features standardised with the probe's own training subset (1: with all 50,000 images)
PIXELS_STAMP = {"features": "pixels", "scale": "x / 255"}


# ---------------------------------------------------------------- small helpers
class EncoderUnavailable(Exception):
    """The encoder of an intermediate pretraining epoch can no longer be had (the run went past it unsaved)."""


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def log(msg: str) -> None:
    print(f"[mae_cifar] {msg}", file=sys.stderr, flush=True)


def comma_floats(name: str, text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise runs.UsageError(f"{name} must be comma-separated numbers, got {text!r}") from None
    if not values:
        raise runs.UsageError(f"{name} must name at least one number, got {text!r}")
    return values


def comma_epochs(text: str, epochs: int) -> list[int]:
    """``--probe-at-epochs``: sorted distinct epochs in ``[1, epochs)`` (``epochs`` itself is always probed)."""
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise runs.UsageError(f"--probe-at-epochs must be comma-separated epoch numbers, got {text!r}") from None
    bad = [v for v in values if not 1 <= v <= epochs]
    if bad:
        raise runs.UsageError(
            f"--probe-at-epochs {text!r}: every epoch must lie in [1, --epochs={epochs}], got {bad}; the final "
            "epoch is always probed"
        )
    return [v for v in values if v < epochs]


def check_flags(args, *, positive_ints=(), positive=(), nonnegative=()) -> None:
    """UsageError naming the first flag out of range (a negative learning rate would otherwise train nonsense)."""
    flag = lambda name: "--" + name.replace("_", "-")
    for name in positive_ints:
        if getattr(args, name) < 1:
            raise runs.UsageError(f"{flag(name)} must be >= 1, got {getattr(args, name)}")
    for name in positive:
        if not 0 < getattr(args, name) < math.inf:  # NaN and inf too
            raise runs.UsageError(f"{flag(name)} must be a finite number > 0, got {getattr(args, name)}")
    for name in nonnegative:
        if not 0 <= getattr(args, name) < math.inf:
            raise runs.UsageError(f"{flag(name)} must be a finite number >= 0, got {getattr(args, name)}")


def frac_key(f: float) -> str:
    return f"{f:g}"


def frac_code(f: float) -> int:
    """A fraction as the integer folded into its keys (parts per million)."""
    return int(round(f * 1_000_000))


def purpose_key(root, purpose: str, *data: int):
    """``fold_in(... fold_in(fold_in(root, PURPOSES[purpose]), data[0]) ..., data[-1])``: each purpose has its own
    key space, and within it each (fraction, draw) its own key."""
    key = jax.random.fold_in(root, PURPOSES[purpose])
    for d in data:
        key = jax.random.fold_in(key, d)
    return key


def key_stamp(key) -> list[int]:
    return np.asarray(jax.random.key_data(key)).ravel().tolist()


def digest(*arrays) -> str:
    """SHA-256 of arrays' values (as int64 or float64 bytes) and shapes: identifies a subset or a label vector."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.asarray(a)
        a = a.astype(np.int64 if np.issubdtype(a.dtype, np.integer) else np.float64)
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def jsonable(obj):
    """``obj`` as it reads back from JSON (tuples -> lists, numpy scalars -> Python), to compare stamps."""
    return json.loads(json.dumps(obj, default=lambda o: o.item() if isinstance(o, np.generic) else str(o)))


def goal_met(smallest_fraction: float, ratio: float) -> bool:
    """The goal: the smallest fraction studied is 1% and the MAE probe reaches >= 1.57x the pixel probe there
    (ratio of the mean accuracies over draws). A NaN ratio does not meet it."""
    return bool(np.isclose(smallest_fraction, GOAL_FRACTION, rtol=0, atol=1e-12) and ratio >= GOAL_RATIO)


# ---------------------------------------------------------------- pretraining
def decay_mask(params):
    """Weight decay on matrices only (not on biases, LayerNorm, the mask token), as the paper's code."""
    return jax.tree.map(lambda a: a.ndim >= 2, params)


def adamw(lr: float, weight_decay: float, total_steps: int, warmup_steps: int) -> optax.GradientTransformation:
    warmup_steps = max(warmup_steps, 1)
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, warmup_steps, max(total_steps, warmup_steps + 1))
    return optax.adamw(schedule, b1=0.9, b2=0.95, weight_decay=weight_decay, mask=decay_mask)


def pretrain_task(config: mae.Config, norm: data.Normalizer, flip: bool) -> train.Task:
    """The MAE objective for ``jdlfs.train.fit``: ``batch`` = uint8 images; standardise, flip, mask, reconstruct.

    Evaluation: the loss on the hidden patches of each image (a fixed mask key, so every
    evaluation hides the same patches), summed with the evaluator's per-example weights."""

    def objective(params, state, images, key):
        k_mask, k_flip = jax.random.split(key)
        if flip:
            images = data.random_flip(k_flip, images)
        loss = mae.loss(params, config, norm.apply(images), k_mask)
        n = jnp.float32(images.shape[0])
        return loss, (state, {"loss": loss.astype(jnp.float32) * n, "count": n})

    def evaluate(params, state, images, *, weights=None):
        x = norm.apply(images)
        pred, masking = mae.apply(params, config, x, jax.random.key(1234))
        target = mae.patch_targets(config, x)
        hidden = lambda a: jnp.take_along_axis(a, masking.masked[..., None], axis=1)
        per_image = jnp.mean(jnp.square(hidden(pred) - hidden(target)).astype(jnp.float32), axis=(1, 2))
        w = jnp.ones_like(per_image) if weights is None else weights.astype(jnp.float32)
        return {"loss": jnp.sum(w * per_image), "count": jnp.sum(w)}

    return train.Task(objective, evaluate)


def pretrain_recipe(args, config: mae.Config) -> dict:
    """Everything the pretraining's result depends on besides the data: a checkpoint made with another recipe
    is not the same run (``fit`` checks the key, batch and optimizer structure, not learning rates)."""
    return jsonable(
        {
            "model": dataclasses.asdict(config),
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "weight_decay": args.weight_decay,
            "warmup_epochs": args.warmup_epochs,
            "flip": not args.no_flip,
            "seed": args.seed,
        }
    )


def check_pretrain_recipe(path: Path, recipe: dict) -> None:
    """Record ``recipe`` at ``path``, or refuse (UsageError) a run folder whose pretraining used another one."""
    if path.is_file():
        try:
            held = json.loads(path.read_text())
        except ValueError:
            held = None
        if held is not None and held != recipe:
            diff = {k: (held.get(k), v) for k, v in recipe.items() if held.get(k) != v}
            changes = ", ".join(f"{k}: {a!r} then, {b!r} now" for k, (a, b) in diff.items())
            raise runs.UsageError(
                f"{path.parent.parent} was pretrained with another recipe ({changes}); pass the same flags to "
                "resume it, or use a new --out"
            )
    runs.write_json(path, recipe)


def pretrain(args, config, norm, x_train, x_eval, key, out: Path, *, until: int | None = None, on_epoch=None):
    """``fit`` up to epoch ``until`` (default ``--epochs``) of the run of ``--epochs`` epochs: the optimizer and
    its schedule are always the full run's, and ``fit`` resumes the run's checkpoint, so stopping at ``until``
    and continuing later is bit-identical to one uninterrupted run."""
    until = args.epochs if until is None else until
    steps_per_epoch = len(x_train) // args.batch_size
    total = args.epochs * steps_per_epoch
    optimizer = adamw(args.lr, args.weight_decay, total, int(args.warmup_epochs * steps_per_epoch))
    init_key, fit_key = jax.random.split(key)
    params = mae.init(init_key, config)
    trained = []

    def record(h):
        trained.append(h)
        if on_epoch is not None:
            on_epoch(h)

    t0, c0 = time.perf_counter(), cpu_seconds()
    result = train.fit(
        pretrain_task(config, norm, not args.no_flip),
        params,
        {},
        optimizer,
        x_train,
        epochs=until,
        batch_size=args.batch_size,
        key=fit_key,
        test_data=x_eval,
        eval_batch_size=500,
        log_every=max(1, steps_per_epoch // 4),
        checkpoint=out / runs.CHECKPOINT / "pretrain",
        devices=runs.local_devices(args, args.batch_size),
        progress=not args.no_progress,
        desc="pretrain",
        on_epoch=record,
    )
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    return result, {"epochs_trained_this_run": len(trained), "wall_seconds": seconds, "cpu_seconds": cpu}


def pretrained_epochs(path: Path) -> int:
    """Epochs held by the pretraining checkpoint at ``path`` (0 if none or unreadable)."""
    try:
        return int(json.loads((path / "manifest.json").read_text())["metadata"]["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


# ---------------------------------------------------------------- features
def batched(fn, x, batch: int) -> np.ndarray:
    """``fn`` over ``x`` in equal chunks of ``batch`` (the last one padded, so one compilation)."""
    outs = []
    for i in range(0, len(x), batch):
        chunk = x[i : i + batch]
        n = len(chunk)
        if n < batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - n, axis=0)])
        outs.append(np.asarray(fn(chunk))[:n])
    return np.concatenate(outs)


def mae_features(params, config, norm, images, batch: int, blocks: int) -> np.ndarray:
    fn = jax.jit(lambda x: mae.features(params, config, norm.apply(x), blocks=blocks))
    return batched(fn, images, batch)


def cached_features(path: Path, stamp: dict, shapes: dict, compute):
    """Features from ``path`` (a jdlfs checkpoint) when it was made for ``stamp``, else computed and saved there.

    Returns ``(train, test, from_checkpoint)``. A checkpoint of other features (another model or pretraining
    length) or one that cannot be read is a stale cache: it is recomputed and replaced."""
    if checkpoint.exists(path):
        like = {k: np.zeros(shape, np.float32) for k, shape in shapes.items()}
        try:
            tree, meta = checkpoint.load(path, like)
        except checkpoint.CheckpointError as e:
            log(f"recomputing the features: {e}")
        else:
            if meta.get("stamp") == jsonable(stamp):
                return np.asarray(tree["train"]), np.asarray(tree["test"]), True
    f_train, f_test = compute()
    checkpoint.save(path, {"train": f_train, "test": f_test}, metadata={"stamp": jsonable(stamp)})
    return f_train, f_test, False


def fit_standardizer(x: np.ndarray, chunk: int = 5000) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature ``(mean, std)`` over the rows of ``x`` (float64, two passes over chunks; a constant feature
    gets std 1, so it stays constant)."""
    n = len(x)
    if n == 0:
        raise ValueError("cannot standardise with the statistics of 0 rows")
    mean = sum(x[i : i + chunk].sum(0, dtype=np.float64) for i in range(0, n, chunk)) / n
    sq = sum(np.square(x[i : i + chunk] - mean).sum(0) for i in range(0, n, chunk))
    std = np.sqrt(sq / n)
    return mean, np.where(std > 0, std, 1.0)


def standardize(x: np.ndarray, stats: tuple[np.ndarray, np.ndarray], chunk: int = 5000) -> np.ndarray:
    """``(x - mean) / std`` as float32, with the ``stats`` of :func:`fit_standardizer` (of other rows, maybe)."""
    mean, std = stats
    if len(x) == 0:
        return np.zeros(x.shape, np.float32)
    return np.concatenate([((x[i : i + chunk] - mean) / std).astype(np.float32) for i in range(0, len(x), chunk)])


def pixels(x: np.ndarray) -> np.ndarray:
    """uint8 images -> float32 ``(N, H*W*C)`` on the [0, 1] scale."""
    return x.reshape(len(x), -1).astype(np.float32) / np.float32(255.0)


# ---------------------------------------------------------------- label subsets
def balanced_subset(key, labels: np.ndarray, fraction: float, num_classes: int = 10) -> np.ndarray:
    """Sorted indices of a class-balanced random subset: ``round(fraction * n_c)`` (at least 1) of each class
    ``c``, drawn by ``key`` (the same key, the same subset)."""
    picked = []
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        k = max(1, int(round(fraction * len(idx))))
        perm = np.asarray(jax.random.permutation(jax.random.fold_in(key, c), len(idx)))
        picked.append(idx[perm[:k]])
    return np.sort(np.concatenate(picked))


def holdout_split(key, labels: np.ndarray, fraction: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``(fit, held_out)`` into ``labels``: a class-balanced ``fraction`` held out (at least one per
    class that has two or more examples)."""
    held = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) < 2:
            continue
        k = min(len(idx) - 1, max(1, int(round(fraction * len(idx)))))
        perm = np.asarray(jax.random.permutation(jax.random.fold_in(key, int(c)), len(idx)))
        held.append(idx[perm[:k]])
    held = np.sort(np.concatenate(held)) if held else np.zeros((0,), np.int64)
    return np.setdiff1d(np.arange(len(labels)), held), held


def draw_subsets(root, labels: np.ndarray, fractions: list[float], draws: int) -> dict[str, list[np.ndarray]]:
    """``{frac_key: [indices per draw]}``: ``draws`` subsets per fraction below 1, the whole set at 1; draw ``i``
    of fraction ``f`` comes from ``purpose_key(root, "subset", frac_code(f), i)``."""
    return {
        frac_key(f): [
            balanced_subset(purpose_key(root, "subset", frac_code(f), i), labels, f)
            for i in range(1 if f == 1 else draws)
        ]
        for f in fractions
    }


# ---------------------------------------------------------------- the linear probe
def probe_loss(params, x, y, w, l2):
    """Softmax cross-entropy of ``x W + b`` averaged with the example weights ``w`` (0 for padding) plus
    ``l2 / 2 ||W||^2`` (the bias is not penalised)."""
    logits = F.linear(x, params["w"], params["b"])
    return F.softmax_cross_entropy(logits, y, mask=w) + 0.5 * l2 * jnp.sum(jnp.square(params["w"]))


@functools.partial(jax.jit, static_argnames=("num_classes", "max_iter"))
def fit_probes(x, y, w, l2s, *, num_classes: int, max_iter: int, tol: float):
    """One L2-penalised multinomial logistic regression per entry of ``l2s``, each solved by L-BFGS from zero
    until ``||grad|| < tol`` or ``max_iter`` iterations. Returns ``(params, iterations, grad norms)``, each with
    a leading axis over ``l2s``. The strengths are solved one after the other (``lax.map``), each stopping at
    its own convergence (a ``vmap`` would run every strength as long as the slowest one, and took 2x longer to
    compile)."""

    def solve(l2):
        fn = lambda p: probe_loss(p, x, y, w, l2)
        opt = optax.lbfgs()
        value_and_grad = optax.value_and_grad_from_state(fn)
        p0 = {"w": jnp.zeros((x.shape[1], num_classes), x.dtype), "b": jnp.zeros((num_classes,), x.dtype)}

        def step(carry):
            p, state, _ = carry
            value, grad = value_and_grad(p, state=state)
            updates, state = opt.update(grad, state, p, value=value, grad=grad, value_fn=fn)
            return optax.apply_updates(p, updates), state, otu.tree_norm(grad)

        def running(carry):
            _, state, gnorm = carry
            return (otu.tree_get(state, "count") < max_iter) & (gnorm >= tol)

        p, state, gnorm = lax.while_loop(running, step, (p0, opt.init(p0), jnp.asarray(jnp.inf, x.dtype)))
        return p, otu.tree_get(state, "count"), gnorm

    return lax.map(solve, l2s)


@jax.jit
def probe_accuracy(params, x, y):
    """Accuracy of every probe of a stacked ``params`` (leading l2 axis) on ``(x, y)``: ``(G,)``."""
    logits = jnp.einsum("nd,gdk->gnk", x, params["w"]) + params["b"][:, None, :]
    return jnp.mean(jnp.argmax(logits, -1) == y[None, :], axis=1)


def padded(x, y, rows: int):
    """``(x, y, w)`` as jax arrays with ``rows`` rows: the examples (weight 1), then copies of the first one
    (weight 0), so subsets of different sizes share one compiled solver."""
    n = len(y)
    pad = np.zeros(rows - n, np.int64)
    w = np.concatenate([np.ones(n, np.float32), np.zeros(rows - n, np.float32)])
    return jnp.asarray(np.concatenate([x, x[pad]])), jnp.asarray(np.concatenate([y, y[pad]])), jnp.asarray(w)


def run_probe(key, x, y, x_test, y_test, *, l2_values, max_iter: int, tol: float, rows: int | None = None) -> dict:
    """Choose the L2 strength on a held-out 20% of ``(x, y)``, refit on all of it, test: one result dict.

    ``x`` and ``x_test`` are raw (unstandardised) features. Every fit standardises its inputs with the statistics
    of the rows it is fitted on: the candidates of the L2 grid with those of the 80% fit part (applied to the
    held-out 20% too), the final probe with those of the whole subset ``x`` (applied to ``x_test``). Both fits
    are padded to ``rows`` rows (default ``len(y)``). A subset too small to hold anything out (one example per
    class) takes the middle of the grid."""
    rows = len(y) if rows is None else rows
    l2s = jnp.asarray(l2_values, jnp.float32)
    fit_idx, held = holdout_split(key, y)
    common = dict(num_classes=10, max_iter=max_iter, tol=tol)
    t0 = time.perf_counter()
    if len(held):
        stats = fit_standardizer(x[fit_idx])
        params, _, _ = fit_probes(*padded(standardize(x[fit_idx], stats), y[fit_idx], rows), l2s, **common)
        val = np.asarray(probe_accuracy(params, jnp.asarray(standardize(x[held], stats)), jnp.asarray(y[held])))
        best = int(np.argmax(val))  # ties: the smallest L2 of the grid (it is sorted)
    else:
        val, best = np.full(len(l2_values), np.nan), len(l2_values) // 2
    stats = fit_standardizer(x)
    params, final_iters, final_gnorm = fit_probes(
        *padded(standardize(x, stats), y, rows), l2s[best : best + 1], **common
    )
    acc = float(probe_accuracy(params, jnp.asarray(standardize(x_test, stats)), jnp.asarray(y_test))[0])
    return {
        "test_accuracy": acc,
        "l2": float(l2s[best]),
        "validation_accuracy_by_l2": {f"{v:g}": float(a) for v, a in zip(l2_values, val)},
        "validation_examples": int(len(held)),
        "train_examples": int(len(y)),
        "lbfgs_iterations": int(final_iters[0]),
        "final_grad_norm": float(final_gnorm[0]),
        "seconds": time.perf_counter() - t0,
    }


def summary(values: list[float]) -> dict:
    """Mean, sample standard deviation (``null`` for a single draw: one value has no spread), min, max, draws."""
    v = np.asarray(values, np.float64)
    return {
        "mean": float(v.mean()),
        "std": float(v.std(ddof=1)) if len(v) > 1 else None,
        "min": float(v.min()),
        "max": float(v.max()),
        "draws": v.tolist(),
    }


def paired_ratios(mae_acc: list[float], pixel_acc: list[float]) -> dict:
    """Per draw (the same subset and hold-out for both probes), MAE accuracy / pixel accuracy, summarised."""
    return summary([m / p if p > 0 else float("nan") for m, p in zip(mae_acc, pixel_acc)])


def done_or_run(path: Path, stamp: dict, fn, *args, **kwargs) -> dict:
    """The result saved at ``path`` by an earlier run when it carries the same ``stamp`` (what it was computed
    from), else ``fn(*args, **kwargs)``, saved there with the stamp. A damaged or stale record is recomputed."""
    stamp = jsonable(stamp)
    if path.is_file():
        try:
            held = json.loads(path.read_text())
        except ValueError:
            held = None  # a damaged record: compute it again
        if isinstance(held, dict) and held.get("stamp") == stamp:
            return held
        log(f"recomputing {path.name}: {'damaged' if held is None else 'computed from other inputs or settings'}")
    result = {**fn(*args, **kwargs), "stamp": stamp}
    runs.write_json(path, result)
    return result


def probe_stamp(kind: str, features: dict, solver: dict, key, idx, y_test) -> dict:
    return {
        "version": PROBE_VERSION,
        "kind": kind,
        "features": features,
        "solver": solver,
        "subset_sha256": digest(idx),
        "holdout_key": key_stamp(key),
        "test_labels_sha256": digest(y_test),
    }


# ---------------------------------------------------------------- supervised baseline
def supervised_model(config: mae.Config):
    """``apply(params, state, images, *, key, train) -> (logits, state)``: the MAE's encoder, every patch
    visible, mean-pooled, then a linear layer."""

    def apply(params, state, images, *, key=None, train=False):
        f = mae.features(params["vit"], config, images)
        return F.linear(f, params["head"]["w"], params["head"]["b"]), state

    return apply


def init_supervised(key, config: mae.Config, num_classes: int = 10) -> dict:
    k_vit, k_head = jax.random.split(key)
    w = 0.02 * jax.random.normal(k_head, (config.d_model, num_classes), jnp.float32)
    return {"vit": mae.init_encoder(k_vit, config), "head": {"w": w, "b": jnp.zeros((num_classes,), jnp.float32)}}


def supervised_batch(args, n: int) -> int:
    """Images per supervised step: ``--supervised-batch-size``, or the largest multiple of the device count that
    fits a subset of ``n`` images."""
    devices = len(runs.local_devices(args))
    batch = min(args.supervised_batch_size, n) // devices * devices
    if batch < 1:
        raise runs.UsageError(f"a supervised subset of {n} images cannot be split over {devices} devices")
    return batch


def supervised_recipe(args, n: int) -> dict:
    return {
        "epochs": args.supervised_epochs,
        "batch_size": supervised_batch(args, n),
        "lr": args.supervised_lr,
        "weight_decay": args.supervised_weight_decay,
        "warmup": "10% of the steps, then cosine decay to 0",
        "augment": "random crop (4-pixel zero padding) + horizontal flip",
    }


def supervised(args, config, norm, x, y, x_test, y_test, key, ckpt: Path) -> dict:
    model = supervised_model(config)
    task = train.classification(model, preprocess=norm.apply, augment=data.crop_and_flip)
    batch = supervised_batch(args, len(y))
    steps = args.supervised_epochs * (len(y) // batch)
    init_key, fit_key = jax.random.split(key)
    t0 = time.perf_counter()
    r = train.fit(
        task,
        init_supervised(init_key, config),
        {},
        adamw(args.supervised_lr, args.supervised_weight_decay, steps, steps // 10),
        (x, y),
        epochs=args.supervised_epochs,
        batch_size=batch,
        key=fit_key,
        checkpoint=ckpt,
        devices=runs.local_devices(args, batch),
        progress=not args.no_progress,
        desc="supervised",
    )
    seconds = time.perf_counter() - t0
    test = train.evaluate(
        task.evaluate, r.params, r.state, (x_test, y_test), batch_size=500, devices=runs.local_devices(args)
    )
    return {
        "test_accuracy": test["accuracy"],
        "final_train_loss": r.history[-1]["train_loss"],
        "final_train_accuracy": r.history[-1]["train_accuracy"],
        "train_examples": int(len(y)),
        "seconds": seconds,
    }


# ---------------------------------------------------------------- figures
def show(img, norm):
    return np.clip(np.asarray(img) * np.asarray(norm.std) + np.asarray(norm.mean), 0.0, 1.0)


def plot_reconstruction(originals, visible, recon, names, norm, loss_values, norm_pix: bool):
    n = len(names)
    fig, axes = runs.plt.subplots(3, n, figsize=(1.45 * n, 5.2))
    rows = ("original", "visible 25%", "reconstruction\n(visible pasted back)")
    for j in range(n):
        for i, img in enumerate((originals[j], visible[j], recon[j])):
            ax = axes[i, j]
            shown = show(img, norm)
            if i == 1:
                shown = np.where(np.all(np.asarray(img) == 0, axis=-1, keepdims=True), 0.5, shown)  # hidden: grey
            ax.imshow(shown, interpolation="nearest")
            ax.set(xticks=[], yticks=[])
            if i == 0:
                ax.set_title(names[j], fontsize=9)
            if j == 0:
                ax.set_ylabel(rows[i], fontsize=8)
        axes[2, j].set_xlabel(f"MSE {loss_values[j]:.3f}", fontsize=7)
    shown_as = (
        "hidden patches: predicted per-patch normalised pixels, shown at the mean brightness and contrast of the\n"
        "image's VISIBLE patches (the model does not predict a patch's own mean/std; no hidden pixel is used)"
        if norm_pix
        else "hidden patches: predicted pixels"
    )
    fig.suptitle(
        f"MAE reconstructions of test images (75% of the 4x4 patches hidden; MSE on hidden patches)\n{shown_as}",
        fontsize=8,
    )
    return fig


def plot_loss_curve(curve, history, target: str):
    fig, ax = runs.plt.subplots(figsize=(6.5, 4))
    ax.plot([c["epoch"] for c in curve], [c["train_loss"] for c in curve], "-", label="train (window mean)")
    ax.plot([h["epoch"] for h in history], [h["test_loss"] for h in history], "o--", label="test subset, fixed masks")
    ax.set(xlabel="epoch", ylabel=f"MSE on hidden patches ({target})", title="MAE pretraining loss")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def plot_transfer(table: dict, supervised_acc: list[float] | None, fractions: list[float]):
    fig, ax = runs.plt.subplots(figsize=(6.5, 4.3))
    for kind, style in (("mae", "o-"), ("pixels", "s-")):
        xs = [f for f in fractions if frac_key(f) in table[kind]]
        mean = np.array([100 * table[kind][frac_key(f)]["mean"] for f in xs])
        lo = np.maximum(mean - np.array([100 * table[kind][frac_key(f)]["min"] for f in xs]), 0)
        hi = np.maximum(np.array([100 * table[kind][frac_key(f)]["max"] for f in xs]) - mean, 0)
        ax.errorbar(
            [100 * f for f in xs], mean, yerr=[lo, hi], fmt=style, capsize=4, label=f"linear probe, {LABELS[kind]}"
        )
    if supervised_acc:
        s = summary(supervised_acc)
        ax.errorbar(
            [100 * fractions[0]],
            [100 * s["mean"]],
            yerr=[[max(100 * (s["mean"] - s["min"]), 0)], [max(100 * (s["max"] - s["mean"]), 0)]],
            fmt="D",
            color="tab:red",
            capsize=4,
            label=LABELS["supervised"],
        )
    ax.set_xscale("log")
    ax.set(
        xlabel="labelled training images (% of 50,000)",
        ylabel="test accuracy (%)",
        title="CIFAR-10: linear probes vs label fraction\n(mean over draws; bars: min to max)",
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return fig


def cell(s: dict) -> str:
    return f"{100 * s['mean']:.2f}%" + (
        f" ± {100 * s['std']:.2f} (n={len(s['draws'])})" if s["std"] is not None else " (n=1)"
    )


def markdown_table(table: dict, sup: dict | None, fractions: list[float], paired: dict, epochs: list[dict]) -> str:
    lines = [
        "| labels | MAE probe | raw-pixel probe | MAE / pixels | supervised from scratch |",
        "|---|---|---|---|---|",
    ]
    for i, f in enumerate(fractions):
        k = frac_key(f)
        m, p = table["mae"][k], table["pixels"][k]
        s = cell(sup) if (sup is not None and i == 0) else "-"
        lines.append(f"| {100 * f:g}% ({m_n(table, k)}) | {cell(m)} | {cell(p)} | {m['mean'] / p['mean']:.2f}x | {s} |")
    lines.append("")
    ratio = f"{paired['mean']:.2f}x" + (f" ± {paired['std']:.2f}" if paired["std"] is not None else "")
    lines.append(
        f"Paired ratio MAE / pixels per draw at {100 * fractions[0]:g}% (same subset and hold-out for both probes): "
        f"{ratio} (draws: {', '.join(f'{r:.2f}' for r in paired['draws'])})."
    )
    if len(epochs) > 1:
        lines += [
            "",
            f"Probe at {100 * fractions[0]:g}% vs pretraining length:",
            "",
            "| pretraining epochs | MAE probe | raw-pixel probe | MAE / pixels |",
            "|---|---|---|---|",
        ]
        for e in epochs:
            if "unavailable" in e:
                lines.append(f"| {e['epoch']} | unavailable | - | - |")
            else:
                lines.append(f"| {e['epoch']} | {cell(e['mae'])} | {cell(e['pixels'])} | {e['ratio']:.2f}x |")
    return "\n".join(lines) + "\n"


def m_n(table, k):
    return f"{table['train_examples'][k]:,} images"


# ---------------------------------------------------------------- main
def build_config(args) -> mae.Config:
    try:
        return mae.Config(
            d_model=args.d_model,
            depth=args.depth,
            num_heads=args.heads,
            d_ff=args.d_ff,
            decoder_d_model=args.decoder_d_model,
            decoder_depth=args.decoder_depth,
            decoder_num_heads=args.decoder_heads,
            decoder_d_ff=args.decoder_d_ff,
            mask_ratio=args.mask_ratio,
            positions=args.positions,
            norm_pix_loss=args.norm_pix_loss,
        )
    except (TypeError, ValueError) as e:
        raise runs.UsageError(f"bad model flags: {e}") from None


def build_parser() -> argparse.ArgumentParser:
    p = runs.experiment_parser("mae_cifar", __doc__.split("\n\n")[0])
    g = p.add_argument_group("model")
    g.add_argument("--d-model", type=int, default=128, help="encoder width")
    g.add_argument("--depth", type=int, default=4, help="encoder blocks")
    g.add_argument("--heads", type=int, default=4, help="encoder attention heads")
    g.add_argument("--d-ff", type=int, default=512, help="encoder feed-forward width")
    g.add_argument("--decoder-d-model", type=int, default=64, help="decoder width")
    g.add_argument("--decoder-depth", type=int, default=2, help="decoder blocks")
    g.add_argument("--decoder-heads", type=int, default=4, help="decoder attention heads")
    g.add_argument("--decoder-d-ff", type=int, default=256, help="decoder feed-forward width")
    g.add_argument("--mask-ratio", type=float, default=0.75, help="fraction of the 64 patches hidden per image")
    g.add_argument("--positions", choices=mae.POSITIONS, default="sincos", help="2-D sin-cos or learned positions")
    g.add_argument(
        "--norm-pix-loss",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="targets: each patch standardised by its own mean and unbiased variance (the paper's option)",
    )
    g = p.add_argument_group("pretraining")
    g.add_argument("--epochs", type=int, default=30, help="pretraining epochs over the 50,000 images (--quick: 2)")
    g.add_argument("--batch-size", type=int, default=256, help="images per pretraining step")
    g.add_argument("--lr", type=float, default=1.5e-3, help="peak AdamW learning rate")
    g.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay (matrices only)")
    g.add_argument("--warmup-epochs", type=float, default=2.0, help="linear warm-up, then cosine decay to 0")
    g.add_argument("--no-flip", action="store_true", help="no random horizontal flips while pretraining")
    g.add_argument("--eval-images", type=int, default=2000, help="test images whose loss is tracked every epoch")
    g = p.add_argument_group("probes")
    g.add_argument("--fractions", default="0.01,0.1,1", help="label fractions of the transfer study")
    g.add_argument("--draws", type=int, default=3, help="random class-balanced subsets per fraction below 1")
    g.add_argument("--probe-l2", default="1e-3,1e-2,0.1,0.3,1,3", help="L2 strengths to choose from")
    g.add_argument("--probe-iters", type=int, default=300, help="L-BFGS iterations at most")
    g.add_argument("--probe-tol", type=float, default=1e-3, help="L-BFGS stops when ||grad|| falls below this")
    g.add_argument(
        "--probe-blocks",
        type=int,
        default=1,
        help="probe features: 1 (the issue's) is the encoder output, mean-pooled; N > 1 is an extra, the "
        "mean-pooled outputs of the last N blocks concatenated (not selected on anything here)",
    )
    g.add_argument(
        "--probe-at-epochs",
        default="",
        help="also run the smallest fraction's probes (MAE vs pixels) at these pretraining epochs, e.g. 5,10,20 "
        "(the final epoch is always probed; --quick: 1)",
    )
    g.add_argument("--feature-batch", type=int, default=500, help="images per feature-extraction call")
    g = p.add_argument_group("supervised baseline (same encoder, from scratch, on each 1%% subset)")
    g.add_argument("--supervised-epochs", type=int, default=100, help="epochs over the subset (--quick: 1)")
    g.add_argument("--supervised-batch-size", type=int, default=50, help="images per step")
    g.add_argument("--supervised-lr", type=float, default=1e-3, help="peak AdamW learning rate")
    g.add_argument("--supervised-weight-decay", type=float, default=0.05, help="AdamW weight decay")
    g.add_argument(
        "--supervised-draws",
        type=int,
        default=None,
        help="how many of the smallest fraction's subsets; default --draws",
    )
    return p


def parse_args(argv):
    """Parsed and checked flags (``--quick`` applied), the sorted fractions, L2 grid and probe epochs; every
    mistake a UsageError before anything starts."""
    args = build_parser().parse_args(argv)
    fractions = sorted(set(comma_floats("--fractions", args.fractions)))
    if any(not 0 < f <= 1 for f in fractions):
        raise runs.UsageError(f"--fractions must lie in (0, 1], got {args.fractions!r}")
    if len({frac_key(f) for f in fractions}) < len(fractions) or len({frac_code(f) for f in fractions}) < len(
        fractions
    ):
        raise runs.UsageError(f"--fractions must differ in their first 6 digits, got {args.fractions!r}")
    check_flags(
        args,
        positive_ints=(
            "epochs",
            "batch_size",
            "draws",
            "probe_iters",
            "feature_batch",
            "supervised_epochs",
            "supervised_batch_size",
            "eval_images",
            "probe_blocks",
        ),
        positive=("lr", "supervised_lr"),
        nonnegative=("weight_decay", "supervised_weight_decay", "warmup_epochs", "probe_tol"),
    )
    if args.supervised_draws is None:
        args.supervised_draws = args.draws
    if not 0 <= args.supervised_draws <= args.draws:
        raise runs.UsageError(f"--supervised-draws must be in [0, --draws={args.draws}], got {args.supervised_draws}")
    if args.quick:
        args.epochs, args.supervised_epochs, args.batch_size = 2, 1, 128
        args.probe_at_epochs = args.probe_at_epochs or "1"
        args.d_model, args.depth, args.heads, args.d_ff = 32, 2, 2, 64
        args.probe_blocks = min(args.probe_blocks, 2)
        args.decoder_d_model, args.decoder_depth, args.decoder_heads, args.decoder_d_ff = 32, 1, 2, 64
        args.eval_images, args.probe_iters, args.feature_batch = 250, 50, 250
        args.probe_l2 = "0.01"
        args.warmup_epochs = 0.5
    l2_values = sorted(comma_floats("--probe-l2", args.probe_l2))
    if any(not 0 <= v < math.inf for v in l2_values):
        raise runs.UsageError(f"--probe-l2 strengths must be finite numbers >= 0, got {args.probe_l2!r}")
    probe_epochs = comma_epochs(args.probe_at_epochs, args.epochs)
    train_images = TRAIN_IMAGES[bool(args.quick)]
    if args.batch_size > train_images:
        raise runs.UsageError(
            f"--batch-size {args.batch_size} is larger than the {train_images:,} training images: no full batch "
            f"to train on; pass --batch-size <= {train_images}"
        )
    return args, fractions, l2_values, probe_epochs


def main(argv=None) -> dict:
    args, fractions, l2_values, probe_epochs = parse_args(argv)
    config = build_config(args)
    if args.probe_blocks > config.depth:
        raise runs.UsageError(f"--probe-blocks {args.probe_blocks} exceeds the encoder's {config.depth} blocks")
    runs.local_devices(args, args.batch_size)  # UsageError now, not after the data is loaded
    try:
        runs.local_devices(args, args.supervised_batch_size)
    except runs.UsageError as e:
        raise runs.UsageError(f"{e} (the supervised baseline's batch: --supervised-batch-size)") from None
    out = runs.start(args)
    t_start, c_start = time.perf_counter(), cpu_seconds()

    x_train, y_train, x_test, y_test = runs.load_dataset(args, "cifar10", quick_train=1024, quick_test=500)
    if args.batch_size > len(x_train):
        raise runs.UsageError(f"--batch-size {args.batch_size} is larger than the {len(x_train)} training images")
    norm = data.fit_normalizer(x_train)
    root = jax.random.key(args.seed)
    eval_idx = np.sort(np.asarray(jax.random.permutation(jax.random.key(0), len(y_test)))[: args.eval_images])
    ckpt_dir = out / runs.CHECKPOINT
    recipe = pretrain_recipe(args, config)
    check_pretrain_recipe(ckpt_dir / "pretrain-recipe.json", recipe)
    steps_per_epoch = len(x_train) // args.batch_size
    subsets = draw_subsets(root, y_train, fractions, args.draws)
    f0, f0k = fractions[0], frac_key(fractions[0])
    timing = {}
    probe_dir = ckpt_dir / "probes"
    solver = {"l2_values": l2_values, "max_iter": args.probe_iters, "tol": args.probe_tol}
    if args.quick:  # every subset padded to one size: one compiled solver per probe kind
        solver["rows"] = len(y_train)
    px_test = functools.cache(lambda: pixels(x_test))

    def features_stamp(epoch: int) -> dict:
        return {"epochs": epoch, "step": epoch * steps_per_epoch, "blocks": args.probe_blocks, "pretrain": recipe}

    def probe_draws(kind, f, feats_of, test_feats, features: dict, tag: str) -> list[dict]:
        """The probes of every draw of fraction ``f`` (each from disk when its stamp matches)."""
        one = lambda key, idx: run_probe(key, feats_of(idx), y_train[idx], test_feats(), y_test, **solver)
        fk, results = frac_key(f), []
        for i, idx in enumerate(subsets[fk]):
            key = purpose_key(root, "probe", frac_code(f), i)
            path = probe_dir / f"{tag}-f{fk}-d{i}.json"
            r = done_or_run(path, probe_stamp(kind, features, solver, key, idx, y_test), one, key, idx)
            results.append(r)
            log(f"probe {tag} {100 * f:g}% draw {i}: test {100 * r['test_accuracy']:.2f}% (l2 {r['l2']:g})")
        return results

    def pixel_draws(f):
        return probe_draws("pixels", f, lambda idx: pixels(x_train[idx]), px_test, PIXELS_STAMP, "pixels")

    # ---- pretraining (no labels), in stages when the encoder is probed along the way
    pre_timing = {"epochs_trained_this_run": 0, "wall_seconds": 0.0, "cpu_seconds": 0.0}

    def log_epoch(h):
        log(
            f"pretrain epoch {h['epoch']}/{args.epochs}: train loss {h['train_loss']:.4f}, test loss "
            f"{h['test_loss']:.4f}, {h['train_seconds']:.0f} s ({h['train_examples_per_second']:.0f} img/s)"
        )

    def pretrain_until(epoch: int):
        result, t = pretrain(
            args, config, norm, x_train, x_test[eval_idx], purpose_key(root, "pretrain"), out, until=epoch,
            on_epoch=log_epoch,
        )  # fmt: skip
        for k in pre_timing:
            pre_timing[k] += t[k]
        return result

    def encoder_at(epoch: int):
        """The encoder after ``epoch`` pretraining epochs: its snapshot, or the pretraining continued to there."""
        snap = ckpt_dir / f"encoder-epoch{epoch}"
        stamp = jsonable(features_stamp(epoch))
        like = jax.tree.map(
            lambda s: np.zeros(s.shape, s.dtype), jax.eval_shape(lambda k: mae.init_encoder(k, config), root)
        )
        if checkpoint.exists(snap):
            try:
                tree, meta = checkpoint.load(snap, like)
                if meta.get("stamp") == stamp:
                    return tree
            except checkpoint.CheckpointError as e:
                log(f"cannot use {snap}: {e}")
        held = pretrained_epochs(ckpt_dir / "pretrain")
        if held > epoch:
            raise EncoderUnavailable(
                f"the pretraining checkpoint already holds {held} epochs and no encoder snapshot of epoch {epoch} "
                f"matches this run (pass --probe-at-epochs before the pretraining passes an epoch)"
            )
        encoder = {k: v for k, v in pretrain_until(epoch).params.items() if k != "decoder"}
        checkpoint.save(snap, encoder, metadata={"stamp": stamp})
        return encoder

    def probe_stage(epoch: int) -> dict:
        """The smallest fraction's probes after ``epoch`` pretraining epochs: features of its subsets' images and
        of the test images only, computed only if some probe of that epoch is not on disk already."""
        union = np.unique(np.concatenate(subsets[f0k]))

        @functools.cache
        def stage_features():
            enc = encoder_at(epoch)
            return tuple(
                mae_features(enc, config, norm, x, args.feature_batch, args.probe_blocks)
                for x in (x_train[union], x_test)
            )

        try:
            maes = probe_draws(
                "mae",
                f0,
                lambda idx: stage_features()[0][np.searchsorted(union, idx)],
                lambda: stage_features()[1],
                features_stamp(epoch),
                f"mae-e{epoch}-b{args.probe_blocks}",
            )
        except EncoderUnavailable as e:
            log(f"no probe at epoch {epoch}: {e}")
            return {"epoch": epoch, "unavailable": str(e)}
        return epoch_entry(epoch, steps_per_epoch, f0, maes, pixel_draws(f0))

    t0, c0 = time.perf_counter(), cpu_seconds()
    probe_curve = [probe_stage(epoch) for epoch in probe_epochs]
    stage_seconds = {"wall_seconds": time.perf_counter() - t0, "cpu_seconds": cpu_seconds() - c0}

    pre_stage = dict(pre_timing)  # the pretraining done inside the stages (not probe time)
    result = pretrain_until(args.epochs)
    params, history = result.params, result.history
    ips = [h["train_examples_per_second"] for h in history[1:] or history]
    timing["pretrain"] = {
        **pre_timing,
        **runs.epoch_timing(history),
        "images_per_second": float(np.median(ips)),
    }
    log(f"pretraining: {timing['pretrain']['images_per_second']:.0f} images/s (median over epochs)")

    # ---- reconstructions: the first test image of each class
    picks = [int(np.flatnonzero(y_test == c)[0]) for c in range(len(FIGURE_CLASSES)) if np.any(y_test == c)]
    x_fig = norm.apply(jnp.asarray(x_test[picks]))
    visible, recon, masking = mae.reconstruct(params, config, x_fig, jax.random.key(7))
    pred, _ = mae.apply(params, config, x_fig, jax.random.key(7))
    target = mae.patch_targets(config, x_fig)
    hide = lambda a: np.take_along_axis(np.asarray(a), np.asarray(masking.masked)[..., None], axis=1)
    fig_losses = np.mean((hide(pred) - hide(target)) ** 2, axis=(1, 2))
    names = [FIGURE_CLASSES[int(y_test[i])] for i in picks]
    runs.save_figure(
        plot_reconstruction(x_fig, visible, recon, names, norm, fig_losses, config.norm_pix_loss),
        out,
        "reconstruction.png",
    )
    target_name = "per-patch normalised pixels" if config.norm_pix_loss else "standardised pixels"
    runs.save_figure(plot_loss_curve(result.curve, history, target_name), out, "loss_curve.png")

    # ---- features of the final encoder
    t0, c0 = time.perf_counter(), cpu_seconds()
    stamp = features_stamp(args.epochs)
    width = args.probe_blocks * config.d_model
    f_train, f_test, from_cache = cached_features(
        ckpt_dir / "features",
        stamp,
        {"train": (len(x_train), width), "test": (len(x_test), width)},
        lambda: tuple(
            mae_features(params, config, norm, x, args.feature_batch, args.probe_blocks) for x in (x_train, x_test)
        ),
    )
    timing["features"] = {
        "wall_seconds": time.perf_counter() - t0,
        "cpu_seconds": cpu_seconds() - c0,
        "from_checkpoint": from_cache,
        "images": len(y_train) + len(y_test),
    }

    # ---- probes: raw features of each subset; each probe standardises with its own training rows
    t0, c0 = time.perf_counter(), cpu_seconds()
    per_draw = {k: {} for k in KINDS}
    table = {k: {} for k in KINDS}
    table["train_examples"] = {}
    for f in fractions:
        fk = frac_key(f)
        table["train_examples"][fk] = int(len(subsets[fk][0]))
        per_draw["mae"][fk] = probe_draws(
            "mae", f, lambda idx: f_train[idx], lambda: f_test, stamp, f"mae-e{args.epochs}-b{args.probe_blocks}"
        )
        per_draw["pixels"][fk] = pixel_draws(f)
        for kind in KINDS:
            table[kind][fk] = summary([r["test_accuracy"] for r in per_draw[kind][fk]])
    timing["probes"] = {"wall_seconds": time.perf_counter() - t0, "cpu_seconds": cpu_seconds() - c0}
    stage_seconds["wall_seconds"] -= pre_stage["wall_seconds"]
    stage_seconds["cpu_seconds"] -= pre_stage["cpu_seconds"]
    timing["probes_at_epochs"] = {**stage_seconds, "epochs": probe_epochs, "pretraining_excluded": True}
    probe_curve.append(epoch_entry(args.epochs, steps_per_epoch, f0, per_draw["mae"][f0k], per_draw["pixels"][f0k]))

    # ---- supervised baseline on the smallest fraction's subsets
    t0, c0 = time.perf_counter(), cpu_seconds()
    sup_results = []
    for i, idx in enumerate(subsets[f0k][: args.supervised_draws]):
        key = purpose_key(root, "supervised", frac_code(f0), i)
        sup_stamp = jsonable(
            {
                "recipe": supervised_recipe(args, len(idx)),
                "model": dataclasses.asdict(config),
                "subset_sha256": digest(idx),
                "key": key_stamp(key),
                "test_labels_sha256": digest(y_test),
            }
        )
        tag = hashlib.sha256(json.dumps(sup_stamp, sort_keys=True).encode()).hexdigest()[:12]
        name = f"supervised-f{f0k}-d{i}"
        r = done_or_run(
            ckpt_dir / f"{name}.json",
            sup_stamp,
            supervised,
            args,
            config,
            norm,
            x_train[idx],
            y_train[idx],
            x_test,
            y_test,
            key,
            ckpt_dir / f"{name}-{tag}",  # another recipe never resumes this one's training
        )
        sup_results.append(r)
        log(f"supervised {100 * f0:g}% draw {i}: test {100 * r['test_accuracy']:.2f}%")
    sup = summary([r["test_accuracy"] for r in sup_results]) if sup_results else None
    timing["supervised"] = {"wall_seconds": time.perf_counter() - t0, "cpu_seconds": cpu_seconds() - c0}

    paired = paired_ratios(table["mae"][f0k]["draws"], table["pixels"][f0k]["draws"])
    runs.save_figure(plot_transfer(table, [r["test_accuracy"] for r in sup_results], fractions), out, "transfer.png")
    md = markdown_table(table, sup, fractions, paired, probe_curve)
    (out / "transfer.md").write_text(md)
    print(md, file=sys.stderr)

    ratio = table["mae"][f0k]["mean"] / table["pixels"][f0k]["mean"]
    timing["total_wall_seconds"] = time.perf_counter() - t_start
    timing["total_cpu_seconds"] = cpu_seconds() - c_start
    results = {
        "data": "CIFAR-10, JPEG copy (../shared/data/cifar10/cifar10-jpeg.zip); pretraining uses no labels",
        "model": dataclasses.asdict(config),
        "param_count": {
            "encoder": int(sum(np.size(a) for k, v in params.items() if k != "decoder" for a in jax.tree.leaves(v))),
            "decoder": int(sum(np.size(a) for a in jax.tree.leaves(params["decoder"]))),
        },
        "pretrain": {
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "weight_decay": args.weight_decay,
            "warmup_epochs": args.warmup_epochs,
            "flip": not args.no_flip,
            "train_images": len(x_train),
            "final_train_loss": history[-1]["train_loss"],
            "final_test_loss": history[-1]["test_loss"],
            "test_loss_images": len(eval_idx),
            "loss_target": target_name,
            "history": history,
            "curve": result.curve,
        },
        "pretrain_images_per_second": timing["pretrain"]["images_per_second"],
        "probe_features": {
            "mae": (
                "every patch visible; the encoder output (final block, after the final LayerNorm), mean-pooled: "
                f"{width} features"
                if args.probe_blocks == 1
                else f"every patch visible; the mean-pooled outputs of the last {args.probe_blocks} encoder blocks, "
                f"each through the encoder's final LayerNorm, concatenated: {width} features (--probe-blocks, an "
                "extra: the issue's features are --probe-blocks 1)"
            ),
            "pixels": "the 3,072 pixel values on the [0, 1] scale",
            "standardisation": "each feature to mean 0 / std 1 with the statistics of the probe's own labelled "
            "training subset (per draw; while choosing the L2 strength, of the 80% the candidates are fitted on)",
            "l2_selection": "per subset and probe, by accuracy on a class-balanced 20% of the subset's own labelled "
            "examples; then refit on the whole subset. No test label is used for any choice",
        },
        "probe_accuracy": {k: table[k] for k in KINDS},
        "probe_train_examples": table["train_examples"],
        "probe_details": per_draw,
        "probe_vs_pretraining_epochs": probe_curve,
        "supervised_accuracy": sup,
        "supervised_details": sup_results,
        "supervised_recipe": supervised_recipe(args, len(subsets[f0k][0])),
        "ratio_at_smallest_fraction": ratio,
        "paired_ratio_at_smallest_fraction": paired,
        "smallest_fraction": f0,
        "goal_ratio": GOAL_RATIO,
        "goal_met": goal_met(f0, ratio),
        "table_markdown": md,
        "reconstruction_classes": names,
        "reconstruction_mse": [float(v) for v in fig_losses],
        "reconstruction_display": mae.RECONSTRUCTION_DISPLAY[config.norm_pix_loss],
        "timing": timing,
        "figures": ["reconstruction.png", "loss_curve.png", "transfer.png"],
    }
    return runs.finish(args, results)


def epoch_entry(epoch: int, steps_per_epoch: int, fraction: float, maes: list[dict], pix: list[dict]) -> dict:
    """One point of ``probe_vs_pretraining_epochs``: the smallest fraction's probes after ``epoch`` epochs."""
    m = summary([r["test_accuracy"] for r in maes])
    p = summary([r["test_accuracy"] for r in pix])
    return {
        "epoch": epoch,
        "step": epoch * steps_per_epoch,
        "fraction": fraction,
        "mae": m,
        "pixels": p,
        "ratio": m["mean"] / p["mean"],
        "paired_ratio": paired_ratios(m["draws"], p["draws"]),
    }


if __name__ == "__main__":
    runs.run_main(main)
