"""MNIST MLP 784-128-10: hand-written backward passes, verified in training.

The classic from-scratch result: a 784-128-10 ReLU network, He initialization,
plain SGD (lr 0.1, batch 64), 10 epochs, inputs standardised with the training
set's mean/std. Target: >= 97.6% test accuracy.

Every gradient here comes from jdlfs's hand-written rules (linear, relu,
softmax_cross_entropy). To show those rules are right *in training*, not only
in unit tests, the script then trains the identical model a second time with
``jax.grad`` autodiff of a plain-jnp forward (``x @ w + b``, ``jax.nn.relu``,
optax's cross-entropy), from the same key, on the same batches, and reports
the largest parameter difference between the two runs, both accuracies and
both wall times. It also compares the two gradients at the same parameters
on one batch, evaluated eagerly (relative difference ~1e-7: float32 rounding
of differently ordered arithmetic).

Measured (seed 0, 2-core CPU, jax 0.10.2): 97.97% test accuracy for both
runs, 0.52 s per epoch for both while a CIFAR-10 run shared the two cores
(0.28 s on an idle machine with the earlier scanned epoch); inside the compiled training step XLA reduces
the hand-written rules and autodiff of the plain forward to the same
arithmetic, so the final parameters are bit-identical (max difference 0.0).
Any rounding difference, had there been one, would grow over 9,380 SGD steps
(an earlier version of the loss rule, equal up to rounding, ended 3.7e-2 apart
with the same accuracy), so the per-step gradient comparison is the sharper test.

Usage::

    python experiments/mnist_mlp.py --data-dir ../shared/data
"""

from __future__ import annotations

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jdlfs import data, layers, models, runs, train
from jdlfs import functional as F


def plain_apply(params, state, x, *, key=None, train=False):
    """The same MLP with no custom rules: autodiff differentiates it."""
    h = jax.nn.relu(x @ params["fc1"]["w"] + params["fc1"]["b"])
    return h @ params["fc2"]["w"] + params["fc2"]["b"], state


def plain_loss(logits, labels, mask=None):
    per = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    if mask is None:
        return jnp.mean(per)
    m = mask.astype(per.dtype)
    return jnp.sum(per * m) / jnp.maximum(jnp.sum(m), 1)


def main(argv=None) -> dict:
    p = runs.experiment_parser("mnist_mlp", __doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=10, help="training epochs (--quick: at most 2)")
    p.add_argument("--batch-size", type=int, default=64, help="examples per SGD step")
    p.add_argument("--lr", type=float, default=0.1, help="SGD learning rate")
    p.add_argument("--hidden", type=int, default=128, help="hidden units")
    p.add_argument("--no-autodiff-baseline", action="store_true", help="skip the jax.grad comparison run")
    args = p.parse_args(argv)
    out = runs.start(args)

    x_train, y_train, x_test, y_test = runs.load_dataset(args, "mnist", quick_train=4096)
    if args.quick:
        args.epochs = min(args.epochs, 2)
    norm = data.fit_normalizer(x_train)
    preprocess = lambda x: norm.apply(x).reshape(x.shape[0], -1)  # noqa: E731  uint8 (B,28,28,1) -> (B,784)

    sizes = (784, args.hidden, 10)
    model = models.mlp(sizes, "relu", w_init="he_normal")
    init_key, train_key = jax.random.split(jax.random.key(args.seed))
    params, state = model.init(init_key, (1, 784))
    print(layers.summary(model, params, state, (1, 784)), file=sys.stderr)
    optimizer = optax.sgd(args.lr)
    common = dict(
        epochs=args.epochs,
        batch_size=args.batch_size,
        key=train_key,
        test_data=(x_test, y_test),
        progress=not args.no_progress,
        devices=runs.local_devices(args, args.batch_size),
    )

    t0 = time.perf_counter()
    task = train.classification(model, preprocess=preprocess)
    ours = train.fit(
        task,
        params,
        state,
        optimizer,
        (x_train, y_train),
        desc="hand-written VJPs",
        checkpoint=out / runs.CHECKPOINT / "hand",
        **common,
    )
    jax.block_until_ready(ours.params)
    ours_seconds = time.perf_counter() - t0
    final = ours.test_metrics

    results = {
        "test_accuracy": final["accuracy"],
        "test_loss": final["loss"],
        "train_accuracy_last_epoch": ours.history[-1]["train_accuracy"],
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "sizes": list(sizes),
        "param_count": layers.param_count(params),
        "wall_seconds_hand": ours_seconds,
        **runs.epoch_timing(ours.history),
        "history": ours.history,
        "confusion_matrix": final["confusion"],
    }

    if not args.no_autodiff_baseline:
        # Same parameters, same batch: hand-written gradient vs jax.grad of the plain forward.
        xb, yb = preprocess(jnp.asarray(x_train[: args.batch_size])), jnp.asarray(y_train[: args.batch_size])
        grad_of = lambda apply, loss: jax.grad(  # noqa: E731
            lambda q: loss(apply(q, state, xb)[0], yb)
        )(params)
        g_hand, g_auto = grad_of(model.apply, F.softmax_cross_entropy), grad_of(plain_apply, plain_loss)
        results["gradient_relative_difference_at_init"] = max(
            float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))
            for a, b in zip(jax.tree.leaves(g_hand), jax.tree.leaves(g_auto))
        )
        t0 = time.perf_counter()
        auto = train.fit(
            train.classification(plain_apply, preprocess=preprocess, loss_fn=plain_loss),
            params,
            state,
            optimizer,
            (x_train, y_train),
            desc="jax.grad autodiff",
            checkpoint=out / runs.CHECKPOINT / "autodiff",
            **common,
        )
        jax.block_until_ready(auto.params)
        auto_seconds = time.perf_counter() - t0
        auto_eval = auto.test_metrics
        diffs = jax.tree.leaves(
            jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))), ours.params, auto.params)
        )
        scale = max(float(np.max(np.abs(np.asarray(a)))) for a in jax.tree.leaves(ours.params))
        results.update(
            {
                "autodiff_test_accuracy": auto_eval["accuracy"],
                "accuracy_difference": abs(final["accuracy"] - auto_eval["accuracy"]),
                "max_param_abs_difference": max(diffs),
                "max_param_relative_difference": max(diffs) / scale,
                "wall_seconds_autodiff": auto_seconds,
                "autodiff_seconds_per_epoch": runs.epoch_timing(auto.history)["seconds_per_epoch"],
            }
        )
        results["speed_ratio_autodiff_over_hand"] = results["autodiff_seconds_per_epoch"] / results["seconds_per_epoch"]

    runs.save_figure(runs.plot_history(ours.history, "MNIST MLP 784-128-10"), out, "curves.png")
    runs.save_figure(runs.plot_confusion(final["confusion"], final["accuracy"]), out, "confusion.png")
    return runs.finish(args, results)


if __name__ == "__main__":
    runs.run_main(main)
