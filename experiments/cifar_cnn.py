"""CIFAR-10 CNN study: the seed Conv32-64-128 net with and without BatchNorm.

Trains ``models.cifar_cnn(batch_norm=True)`` and ``cifar_cnn(batch_norm=False)``
(Conv32 -> Conv64 -> Conv128, 3x3 SAME, each [BN] ReLU MaxPool 2, FC256 ReLU
Dropout 0.5, FC10) on CIFAR-10 through ``jdlfs.train.fit`` with the same
recipe, then reports: test accuracy of both (and the BN - plain difference),
a learning-rate sweep of both models, per-layer gradient L2 norms at
initialisation and after training, per-class accuracy, the confusion matrix
and its largest off-diagonal pair, the 32 first-layer filters, and training
curves. Numbers here were measured on the JPEG copy of CIFAR-10
(``../shared/data/cifar10/cifar10-jpeg.zip``), whose pixels are slightly
degraded against the original binary batches.

Recipe (default): inputs standardised per channel with the training set's
mean/std inside the step; augmentation (random crop with 4-pixel zero
padding + horizontal flip, ``jdlfs.data.crop_and_flip``) inside the
compiled step with the step's key (``--no-augment`` for the seed's plain
recipe); SGD + Nesterov momentum 0.9, weight decay 5e-4 (added to the
gradient), a one-cycle schedule (optax ``cosine_onecycle_schedule``: 15%
warm-up from peak/25, cosine down to peak/25e3) with peak lr 0.05, batch 128,
30 epochs, dropout 0.25 before fc2 (``--dropout``), label smoothing 0.1
(``--label-smoothing``), ``--optimizer adamw`` for AdamW. Both models get the
same recipe. An earlier 20-epoch recipe with dropout 0.5 ended with the BN
model's training accuracy (augmented, dropout on) at 80.0% and its loss still
falling: it was underfitting, so this recipe trains longer and regularises
less.

Learning-rate sweep: peak lr in ``--sweep-lrs`` (default 0.003 ... 1.0, six
values spanning 333x) for both models, each trained ``--sweep-epochs`` epochs
on a fixed random ``--sweep-train`` training images with the main recipe, and
evaluated on the whole test set; ``lr_sweep.png`` plots test accuracy against
lr on a log axis.

Tuning was done on a held-out slice of the training set, never on the test
split (``--validation 5000`` holds out 5,000 training images; the pilots
below used the same split). The CPU was shared with other jobs, so the
pilots were short: BN model, 2 epochs on 10,000 images (156 steps), one-cycle,
augmentation, validation accuracy: SGD peak lr 0.1 36.0%, SGD 0.03 41.0%,
AdamW 3e-3 40.9%; 3 epochs on 20,000 images, SGD 0.1: 43.9%. Peak lr 0.05
was chosen between the two SGD values, erring low so that the plain model
(no BN) trains stably under the same recipe.

Profile of one train step (BN model, batch 128, jax 0.10.2, 2-core CPU shared
with other jobs, load average ~5, so absolute numbers are pessimistic):
forward pass 102 ms, forward + backward + update 427 ms (300 images/s) with
augmentation and 531 ms without (the difference is load noise: the
augmentation itself, ``crop_and_flip`` jitted alone on a uint8 batch of
128, costs 0.76 ms, 0.2% of the step); plain model 412 ms; batch 64 354 ms
(181 images/s), batch 256 1404 ms (182 images/s): batch 128 is the fastest
per image; ``impl="im2col"`` convolutions 608 ms (211 images/s) against
``impl="lax"`` 427 ms, so ``lax`` stays. The backward pass is ~3x the
forward (two convolutions per conv layer: input and kernel gradients).

Outputs in the run folder: ``results.json``, ``curves.png`` (loss, train and
test accuracy per epoch, both models), ``lr_sweep.png``, ``grad_norms.png``,
``per_class.png``, ``confusion.png`` (BN model), ``filters.png`` (the BN
model's conv1 filters, each min-max normalised to RGB). Every fit
checkpoints under ``<out>/checkpoint/<run>`` after each epoch; a finished
sweep point writes ``<out>/checkpoint/<run>.json`` and is not trained again:
rerun with the same ``--out`` to resume a stopped study.

Usage::

    python experiments/cifar_cnn.py --data-dir ../shared/data
    python experiments/cifar_cnn.py --data-dir ../shared/data --validation 5000 --no-sweep   # tuning
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jdlfs import data, layers, models, runs, train

MODELS = {"bn": True, "plain": False}
LABELS = {"bn": "BatchNorm", "plain": "plain (no BN)"}
GRAD_LAYERS = ("conv1", "conv2", "conv3", "fc1", "fc2")


# ---------------------------------------------------------------- logging
def log_epoch(label: str):
    """One line per finished epoch (``fit`` itself is silent with ``--no-progress``)."""

    def log(h: dict) -> None:
        test = f", test acc {100 * h['test_accuracy']:.2f}%" if "test_accuracy" in h else ""
        print(
            f"[{label}] epoch {h['epoch']}: train loss {h['train_loss']:.4f}, "
            f"train acc {100 * h['train_accuracy']:.2f}%{test}, {h['train_seconds']:.1f} s "
            f"({h['train_examples_per_second']:.0f} img/s)",
            file=sys.stderr,
            flush=True,
        )

    return log


# ---------------------------------------------------------------- recipe
def make_optimizer(args, lr: float, total_steps: int) -> optax.GradientTransformation:
    schedule = optax.cosine_onecycle_schedule(total_steps, lr, pct_start=0.15, div_factor=25.0, final_div_factor=1e3)
    if args.optimizer == "adamw":
        return optax.adamw(schedule, weight_decay=args.weight_decay)
    return optax.chain(optax.add_decayed_weights(args.weight_decay), optax.sgd(schedule, momentum=0.9, nesterov=True))


def fit_one(
    args, name: str, batch_norm: bool, lr: float, epochs: int, train_data, test_data, preprocess, key, out: Path
):
    model = models.cifar_cnn(batch_norm=batch_norm, dropout=args.dropout)
    init_key, train_key = jax.random.split(key)
    params, state = model.init(init_key, (1, 32, 32, 3))
    total = epochs * (len(train_data[1]) // args.batch_size)
    task = train.classification(
        model,
        preprocess=preprocess,
        label_smoothing=args.label_smoothing,
        augment=None if args.no_augment else data.crop_and_flip,
    )
    ckpt = out / runs.CHECKPOINT / name
    trained = []
    result = train.fit(
        task,
        params,
        state,
        make_optimizer(args, lr, total),
        train_data,
        epochs=epochs,
        batch_size=args.batch_size,
        key=train_key,
        test_data=test_data,
        checkpoint=ckpt,
        devices=runs.local_devices(args, args.batch_size),
        progress=not args.no_progress,
        desc=name,
        on_epoch=lambda h: (trained.append(h), log_epoch(name)(h)),
    )
    TRAINED_NOW[name] = len(trained)
    return model, (params, state), result


TRAINED_NOW: dict = {}  # run name -> epochs trained by this process (0: all restored from its checkpoint)


def load_shuffled(args):
    """CIFAR-10 train and test splits, each in a fixed random order (seed 0,
    independent of ``--seed``): the JPEG copy is stored sorted by class, so
    "the first N images" (``--quick``, the sweep subset, the validation
    slice, the gradient batch) must come from a shuffled order to hold every
    class. ``--quick``: the first 768 / 500 of those orders."""
    x_train, y_train = data.load("cifar10", "train", data_dir=args.data_dir)
    x_test, y_test = data.load("cifar10", "test", data_dir=args.data_dir)
    rng = np.random.default_rng(0)
    tr, te = rng.permutation(len(y_train)), rng.permutation(len(y_test))
    if args.quick:
        tr, te = tr[:768], te[:500]
    return x_train[tr], y_train[tr], x_test[te], y_test[te]


# ---------------------------------------------------------------- measurements
def grad_norm_fn(model, preprocess, batch, key):
    """``norms(params, state) -> {layer: ||dL/dW||_2}`` for the conv1..fc2
    weights, on one fixed batch (training mode: batch statistics, the given
    dropout key; plain cross-entropy, no augmentation, no smoothing)."""
    objective = train.classification(model, preprocess=preprocess).objective

    @jax.jit
    def norms(params, state):
        g = jax.grad(lambda p: objective(p, state, batch, key)[0])(params)
        return {n: jnp.sqrt(jnp.sum(jnp.square(g[n]["w"].astype(jnp.float32)))) for n in GRAD_LAYERS}

    return lambda params, state: {k: float(v) for k, v in norms(params, state).items()}


def per_class(conf) -> list[float]:
    conf = np.asarray(conf, np.float64)
    return (np.diag(conf) / np.maximum(conf.sum(1), 1)).tolist()


def largest_confusion(conf, names) -> dict:
    conf = np.asarray(conf).copy()
    np.fill_diagonal(conf, -1)
    i, j = np.unravel_index(int(np.argmax(conf)), conf.shape)
    pair = np.asarray(conf)[[i, j], [j, i]]
    return {
        "true": names[i],
        "predicted": names[j],
        "count": int(conf[i, j]),
        "pair": f"{names[i]} <-> {names[j]}",
        "pair_count_both_ways": int(pair.sum()),
    }


# ---------------------------------------------------------------- figures
def plot_curves(histories: dict):
    fig, (a1, a2) = runs.plt.subplots(1, 2, figsize=(11, 4))
    for (name, hist), color in zip(histories.items(), ("tab:blue", "tab:orange")):
        ep = [h["epoch"] for h in hist]
        a1.plot(ep, [h["train_loss"] for h in hist], "-", color=color, label=f"{LABELS[name]} train")
        a1.plot(ep, [h["test_loss"] for h in hist], "--", color=color, label=f"{LABELS[name]} test")
        a2.plot(ep, [100 * h["train_accuracy"] for h in hist], "-", color=color, label=f"{LABELS[name]} train")
        a2.plot(ep, [100 * h["test_accuracy"] for h in hist], "--", color=color, label=f"{LABELS[name]} test")
    a1.set(xlabel="epoch", ylabel="cross-entropy", title="loss (train: with smoothing, augmented)")
    a2.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for a in (a1, a2):
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    return fig


def plot_sweep(sweep: dict, epochs: int, n_train: int):
    fig, ax = runs.plt.subplots(figsize=(6, 4))
    for name, points in sweep.items():
        lrs = sorted(points, key=float)
        ax.plot([float(x) for x in lrs], [100 * points[x] for x in lrs], "o-", label=LABELS[name])
    ax.set_xscale("log")
    ax.set(
        xlabel="peak learning rate (one-cycle)",
        ylabel="test accuracy (%)",
        title=f"learning-rate sweep ({epochs} epochs on {n_train} images)",
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return fig


def plot_grad_norms(norms: dict):
    fig, ax = runs.plt.subplots(figsize=(8, 4))
    groups = [(m, when) for m in norms for when in ("init", "trained")]
    width = 0.8 / len(groups)
    x = np.arange(len(GRAD_LAYERS))
    for i, (m, when) in enumerate(groups):
        ax.bar(
            x + (i - (len(groups) - 1) / 2) * width,
            [norms[m][when][n] for n in GRAD_LAYERS],
            width,
            label=f"{LABELS[m]}, {'at init' if when == 'init' else 'after training'}",
            hatch="" if when == "init" else "//",
        )
    ax.set_xticks(x, GRAD_LAYERS)
    ax.set_yscale("log")
    ax.set(ylabel="||dL/dW||_2", title="gradient L2 norm per layer (same batch)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return fig


def plot_per_class(accs: dict, names):
    fig, ax = runs.plt.subplots(figsize=(9, 3.8))
    x = np.arange(len(names))
    for i, (m, acc) in enumerate(accs.items()):
        ax.bar(x + (i - 0.5) * 0.4, [100 * a for a in acc], 0.4, label=LABELS[m])
    ax.set_xticks(x, names, rotation=30)
    ax.set(ylabel="test accuracy (%)", title="per-class test accuracy")
    ax.set_ylim(0, 100)
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    return fig


def plot_filters(w):
    """``w``: conv1 kernel (3, 3, 3, 32) HWIO; each filter min-max normalised to [0, 1] as RGB."""
    w = np.asarray(w, np.float32)
    fig, axes = runs.plt.subplots(4, 8, figsize=(8, 4.4))
    for i, ax in enumerate(axes.flat):
        f = w[:, :, :, i]
        f = (f - f.min()) / max(float(f.max() - f.min()), 1e-12)
        ax.imshow(f, interpolation="nearest")
        ax.set(xticks=[], yticks=[])
    fig.suptitle("conv1 filters of the trained BN model (3x3 RGB, each min-max normalised)")
    return fig


# ---------------------------------------------------------------- main
def main(argv=None) -> dict:
    p = runs.experiment_parser("cifar_cnn", __doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=30, help="epochs of each main run (--quick: 1)")
    p.add_argument("--batch-size", type=int, default=128, help="examples per step")
    p.add_argument(
        "--optimizer",
        choices=["sgd", "adamw"],
        default="sgd",
        help="SGD + Nesterov momentum 0.9 + weight decay, or AdamW",
    )
    p.add_argument("--lr", type=float, default=None, help="peak learning rate; default 0.05 (sgd), 3e-3 (adamw)")
    p.add_argument("--weight-decay", type=float, default=None, help="default 5e-4 (sgd), 0.05 (adamw)")
    p.add_argument("--label-smoothing", type=float, default=0.1, help="label smoothing of the training loss")
    p.add_argument("--dropout", type=float, default=0.25, help="dropout rate before fc2")
    p.add_argument("--no-augment", action="store_true", help="no random crop / flip (the seed's recipe)")
    p.add_argument("--models", default="bn,plain", help="comma-separated main runs: bn, plain")
    p.add_argument("--sweep-lrs", default="0.003,0.01,0.03,0.1,0.3,1.0", help="peak lrs of the sweep")
    p.add_argument("--sweep-epochs", type=int, default=3, help="epochs per sweep point (--quick: 1)")
    p.add_argument("--sweep-train", type=int, default=10000, help="training images per sweep point")
    p.add_argument("--no-sweep", action="store_true", help="skip the learning-rate sweep")
    p.add_argument(
        "--validation",
        type=int,
        default=0,
        help="hold out the last N training images and evaluate on them instead of the test set "
        "(for tuning); 0: evaluate on the test set",
    )
    args = p.parse_args(argv)
    if args.lr is None:
        args.lr = 0.05 if args.optimizer == "sgd" else 3e-3
    if args.weight_decay is None:
        args.weight_decay = 5e-4 if args.optimizer == "sgd" else 0.05
    chosen = [m.strip() for m in args.models.split(",") if m.strip()]
    if not chosen or any(m not in MODELS for m in chosen):
        raise runs.UsageError(f"--models takes a comma-separated subset of {sorted(MODELS)}, got {args.models!r}")
    try:
        sweep_lrs = [float(v) for v in args.sweep_lrs.split(",")]
    except ValueError:
        raise runs.UsageError(f"--sweep-lrs must be comma-separated numbers, got {args.sweep_lrs!r}") from None
    if args.quick:
        args.epochs, args.sweep_epochs, args.sweep_train = 1, 1, 256
        sweep_lrs = sweep_lrs[2:4] if len(sweep_lrs) >= 4 else sweep_lrs[:2]
    out = runs.start(args)
    TRAINED_NOW.clear()

    x_train, y_train, x_test, y_test = load_shuffled(args)
    if args.validation:
        if not 0 < args.validation < len(y_train) // 2:
            raise runs.UsageError(
                f"--validation {args.validation} must leave most of the {len(y_train)} training images for training"
            )
        x_test, y_test = x_train[-args.validation :], y_train[-args.validation :]
        x_train, y_train = x_train[: -args.validation], y_train[: -args.validation]
    evaluated_on = f"validation: last {args.validation} training images" if args.validation else "test split"
    norm = data.fit_normalizer(x_train)
    names = list(data.CIFAR10_CLASSES)
    root = jax.random.key(args.seed)
    grad_batch = (x_train[:256], y_train[:256])  # a random 256 (load_shuffled)
    grad_key = jax.random.fold_in(root, 99)

    # ---- main runs
    histories, finals, norms, per_cls, timing, finals_params = {}, {}, {}, {}, {}, {}
    t_main = time.perf_counter()
    for name in chosen:
        model, (p0, s0), r = fit_one(
            args,
            f"main-{name}",
            MODELS[name],
            args.lr,
            args.epochs,
            (x_train, y_train),
            (x_test, y_test),
            norm.apply,
            jax.random.fold_in(root, 0),
            out,
        )
        histories[name], finals[name], finals_params[name] = r.history, r.test_metrics, r.params
        measure = grad_norm_fn(model, norm.apply, grad_batch, grad_key)
        norms[name] = {"init": measure(p0, s0), "trained": measure(r.params, r.state)}
        per_cls[name] = per_class(r.test_metrics["confusion"])
        timing[name] = {
            **runs.epoch_timing(r.history),
            "train_images_per_second": float(
                np.median([h["train_examples_per_second"] for h in r.history[1:] or r.history])
            ),
            "eval_seconds": float(np.median([h["test_seconds"] for h in r.history])),
            "eval_images_per_second": len(y_test) / float(np.median([h["test_seconds"] for h in r.history])),
        }
        print(f"[main-{name}] {evaluated_on} accuracy {100 * r.test_metrics['accuracy']:.2f}%", file=sys.stderr)
    main_seconds = time.perf_counter() - t_main

    # ---- learning-rate sweep
    sweep: dict = {}
    t_sweep = time.perf_counter()
    if not args.no_sweep:
        n_sweep = min(args.sweep_train, len(y_train))
        eval_fns = {
            m: train.classification(
                models.cifar_cnn(batch_norm=MODELS[m], dropout=args.dropout), preprocess=norm.apply
            ).evaluate
            for m in chosen
        }
        for name in chosen:
            sweep[name] = {}
            for lr in sweep_lrs:
                run_name = f"sweep-{name}-lr{lr:g}-e{args.sweep_epochs}-n{n_sweep}"
                done = out / runs.CHECKPOINT / f"{run_name}.json"
                if done.is_file():
                    sweep[name][f"{lr:g}"] = json.loads(done.read_text())["test_accuracy"]
                    print(f"[{run_name}] finished earlier: {100 * sweep[name][f'{lr:g}']:.2f}%", file=sys.stderr)
                    continue
                _, _, r = fit_one(
                    args,
                    run_name,
                    MODELS[name],
                    lr,
                    args.sweep_epochs,
                    (x_train[:n_sweep], y_train[:n_sweep]),
                    None,
                    norm.apply,
                    jax.random.fold_in(root, 1),
                    out,
                )
                acc = train.evaluate(
                    eval_fns[name], r.params, r.state, (x_test, y_test), devices=runs.local_devices(args)
                )["accuracy"]
                runs.write_json(done, {"test_accuracy": acc, "lr": lr, "history": r.history})
                sweep[name][f"{lr:g}"] = acc
                print(f"[{run_name}] {evaluated_on} accuracy {100 * acc:.2f}%", file=sys.stderr)
    sweep_seconds = time.perf_counter() - t_sweep

    # ---- figures
    runs.save_figure(plot_curves(histories), out, "curves.png")
    runs.save_figure(plot_grad_norms(norms), out, "grad_norms.png")
    runs.save_figure(plot_per_class(per_cls, names), out, "per_class.png")
    head = "bn" if "bn" in finals else chosen[0]
    runs.save_figure(
        runs.plot_confusion(finals[head]["confusion"], finals[head]["accuracy"], names), out, "confusion.png"
    )
    if "bn" in finals_params:
        runs.save_figure(plot_filters(finals_params["bn"]["conv1"]["w"]), out, "filters.png")
    if sweep:
        runs.save_figure(plot_sweep(sweep, args.sweep_epochs, min(args.sweep_train, len(y_train))), out, "lr_sweep.png")

    results = {
        "data": "CIFAR-10, measured on the JPEG copy (../shared/data/cifar10/cifar10-jpeg.zip)",
        "evaluated_on": evaluated_on,
        "recipe": {
            "optimizer": args.optimizer + (" + nesterov 0.9" if args.optimizer == "sgd" else ""),
            "schedule": "optax.cosine_onecycle_schedule(pct_start=0.15, div_factor=25, final_div_factor=1e3)",
            "lr": args.lr,
            "weight_decay": args.weight_decay,
            "batch_size": args.batch_size,
            "epochs": args.epochs,
            "label_smoothing": args.label_smoothing,
            "dropout": args.dropout,
            "augment": "none" if args.no_augment else "random crop (4-pixel zero padding) + horizontal flip",
        },
        "train_examples": len(y_train),
        "test_examples": len(y_test),
        **{f"test_accuracy_{m}": finals[m]["accuracy"] for m in finals},
        **{f"test_loss_{m}": finals[m]["loss"] for m in finals},
        "param_count": {m: layers.param_count(finals_params[m]) for m in finals_params},
        "timing": timing,
        "main_seconds": main_seconds,
        "sweep_seconds": sweep_seconds,
        "grad_norms": norms,
        "grad_norms_batch": "a fixed random 256 training images, train mode, plain cross-entropy",
        "per_class_accuracy": {m: dict(zip(names, acc)) for m, acc in per_cls.items()},
        "largest_confusion": {m: largest_confusion(finals[m]["confusion"], names) for m in finals},
        "confusion_matrix": {m: finals[m]["confusion"] for m in finals},
        "history": histories,
        "epochs_trained_this_run": dict(TRAINED_NOW),
        "figures": ["curves.png", "grad_norms.png", "per_class.png", "confusion.png"]
        + (["filters.png"] if "bn" in finals_params else [])
        + (["lr_sweep.png"] if sweep else []),
    }
    if "bn" in finals and "plain" in finals:
        results["bn_minus_plain_points"] = 100 * (finals["bn"]["accuracy"] - finals["plain"]["accuracy"])
    if sweep:
        results["lr_sweep"] = {
            "lrs": sweep_lrs,
            "epochs": args.sweep_epochs,
            "train_examples": min(args.sweep_train, len(y_train)),
            "accuracy": sweep,
        }
    return runs.finish(args, results)


if __name__ == "__main__":
    runs.run_main(main)
