"""Overfitting a handful of MNIST images: the sanity check every model should pass.

A network that cannot drive the training loss to ~0 on 1, 4, 16 or 64
examples has a bug (in the model, the loss or the backward pass), so this is
the first experiment to run after writing hand-made gradients. A 784-128-10
ReLU MLP (He normal init) is trained full-batch with Adam (lr 1e-3, 300
steps, ``train.full_batch``) on the first n images of a key-shuffled MNIST training
set (nested subsets: the 4 contain the 1, the 16 the 4, ...), for n = 1, 4,
16, 64; the final loss must be below 1e-2 for every n
(``all_below_threshold``). Small sets are memorised faster: the step at which
the loss first drops below the threshold grows with n.

It also counts dead ReLUs: hidden units whose output is 0 for every one of
1000 held-out test images (such a unit passes no gradient back for those
inputs and, if it stays dead, never learns again). With He init and a small
Adam lr very few die; the fraction is reported for the initial and for each
trained network. The memorised networks do not generalise: their test
accuracy (on all 10,000 test images) is reported beside the loss.

Measured, default run ``python experiments/overfit.py --data-dir
../shared/data`` (seed 0, 2-core CPU, 8.5 s wall):

====  ==========  ====================  ===========  =============
n     final loss  steps to loss < 1e-2  dead ReLUs   test accuracy
====  ==========  ====================  ===========  =============
1     0.0         5                     0 / 128      12.5%
4     8.8e-6      5                     0 / 128      20.2%
16    1.0e-4      13                    1 / 128      36.1%
64    4.3e-4      28                    2 / 128      60.3%
====  ==========  ====================  ===========  =============

(0 of 128 units dead at initialization.)

Figure: ``loss.png``, training loss vs step for the four sizes (log scale,
the 1e-2 threshold dashed; a curve that leaves the plot has reached exactly
0.0 in float32: every wrong-class probability underflowed).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jdlfs import data, models, runs, train
from jdlfs import layers as L


def dead_relu_fraction(model, params, state, x) -> float:
    """Fraction of first-layer ReLU units that output 0 for every row of ``x``."""
    _, _, acts = L.intermediates(model, params, state, x)
    return float(jnp.mean(jnp.all(acts["relu1"] == 0, axis=0)))


def main(argv=None) -> dict:
    p = runs.experiment_parser("overfit", __doc__.split("\n\n")[0] + " (single-device: --devices is ignored)")
    p.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 16, 64], help="training-set sizes")
    p.add_argument("--hidden", type=int, default=128, help="hidden units of the MLP")
    p.add_argument("--steps", type=int, default=300, help="full-batch Adam steps per size")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--threshold", type=float, default=1e-2, help="final loss every size must reach")
    p.add_argument("--held-out", type=int, default=1000, help="test images for the dead-ReLU count")
    args = p.parse_args(argv)
    out = runs.start(args)
    if args.quick:
        args.steps = min(args.steps, 100)

    x_train, y_train, x_test, y_test = runs.load_dataset(args, "mnist", quick_train=60000, quick_test=10000)
    norm = data.fit_normalizer(x_train)
    flat = lambda x: norm.apply(jnp.asarray(x)).reshape(x.shape[0], -1)  # noqa: E731
    k_subset, k_held, k_init = jax.random.split(jax.random.key(args.seed), 3)
    order = np.asarray(jax.random.permutation(k_subset, len(y_train)))[: max(args.sizes)]
    held = np.asarray(jax.random.choice(k_held, len(y_test), (args.held_out,), replace=False))
    x_held = flat(x_test[held])

    model = models.mlp((784, args.hidden, 10), "relu", w_init="he_normal")
    params0, state = model.init(k_init, (1, 784))
    optimizer = optax.adam(args.lr)
    task = train.classification(model)  # full-batch Adam on already-flattened inputs
    evaluate = train.make_evaluate(model, num_classes=10, preprocess=lambda x: norm.apply(x).reshape(x.shape[0], -1))
    results = {"dead_relu_fraction_init": dead_relu_fraction(model, params0, state, x_held)}
    curves = {}
    for n in args.sizes:
        idx = order[:n]
        x, y = flat(x_train[idx]), jnp.asarray(y_train[idx])
        ts, losses = train.full_batch(task, params0, state, optimizer, (x, y), steps=args.steps, key=k_init)
        params = ts.params
        final = train.evaluate(task.evaluate, params, state, (x, y))["loss"]  # after the last step
        below = np.flatnonzero(losses < args.threshold)
        curves[n] = losses
        results[f"final_loss_{n}"] = float(final) + 0.0  # + 0.0: no "-0.0" in the JSON
        results[f"steps_to_threshold_{n}"] = int(below[0]) + 1 if below.size else None
        results[f"dead_relu_fraction_{n}"] = dead_relu_fraction(model, params, state, x_held)
        results[f"test_accuracy_{n}"] = evaluate(params, state, x_test, y_test)["accuracy"]
        print(
            f"n={n:>3}: final loss {float(final):.2e}, below {args.threshold:g} after "
            f"{results[f'steps_to_threshold_{n}']} steps, dead ReLUs "
            f"{100 * results[f'dead_relu_fraction_{n}']:.1f}%, test accuracy "
            f"{100 * results[f'test_accuracy_{n}']:.1f}%"
        )
    results["all_below_threshold"] = bool(all(results[f"final_loss_{n}"] < args.threshold for n in args.sizes))

    fig, ax = runs.plt.subplots(figsize=(6.5, 4.2))
    for n, losses in curves.items():
        ax.plot(
            np.arange(1, len(losses) + 1), losses, label=f"{n} example{'s' if n > 1 else ''}: final {losses[-1]:.1e}"
        )
    ax.axhline(args.threshold, color="k", ls="--", lw=1, label=f"threshold {args.threshold:g}")
    ax.set(
        yscale="log",
        xlabel="full-batch Adam step",
        ylabel="training cross-entropy",
        title=f"overfitting MLP 784-{args.hidden}-10 on n MNIST images",
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    runs.save_figure(fig, out, "loss.png")

    results.update(
        {
            "sizes": args.sizes,
            "steps": args.steps,
            "lr": args.lr,
            "threshold": args.threshold,
            "hidden": args.hidden,
            "held_out": args.held_out,
        }
    )
    return runs.finish(args, results)


if __name__ == "__main__":
    runs.run_main(main)
