"""Weight initialization: zeros, N(0, 0.01^2), Xavier and He, side by side.

Four schemes from :mod:`jdlfs.init` (``zeros``, ``normal`` = N(0, 0.01^2),
``xavier_normal`` = N(0, 2 / (fan_in + fan_out)), ``he_normal`` =
N(0, 2 / fan_in)), three views:

(a) Weight statistics of one 256x256 hidden layer: sample mean and std
    against the theoretical std (0, 0.01, 0.0625, 0.0884), and the
    histogram of the weights with the theoretical density on top
    (``weights.png``).

(b) Signal propagation through a deep ReLU MLP, 784 -> 256 x 10 -> 10, on a
    batch of real (standardised) MNIST training images: the std of every
    hidden layer's ReLU output going forward, and of the loss gradient with
    respect to it (dL/dh, collected with zero "probes" added to each
    activation) and to each weight matrix (dL/dW) going backward
    (``depth.png``, log scale). Theory for a ReLU layer of fan-in n with
    weight variance v: the activation variance is multiplied by n v / 2 per
    layer. He (v = 2/n) keeps it at 1; Xavier (v = 2/(n + n) = 1/n) halves
    it, std x 0.71 per layer; N(0, 0.01^2) multiplies the std by
    0.01 sqrt(256/2) = 0.11 per layer, so it vanishes geometrically; zeros
    gives exactly 0 after the first layer, forward and backward (zero std
    cannot be drawn on a log axis; the panels say so).

(c) Training a 784-256-256-256-10 ReLU MLP with plain SGD (lr 0.1, batch 64,
    2 epochs) from each scheme, same init key, same batches
    (``training.png``: loss per step and test accuracy). With zeros the
    hidden units are identical and receive zero gradient (their inputs are
    zero and the weights above them are zero), so only the output bias
    learns: the net predicts the most frequent class, 11.35% test accuracy
    ("1"), and the hidden weights stay exactly 0
    (``zeros_hidden_weights_max_abs`` = 0.0). N(0, 0.01^2) starts with
    vanishing signals and gradients and sits on a plateau at ~11% before it
    escapes; Xavier and He train at once.

Measured, default run ``python experiments/init_schemes.py --data-dir
../shared/data`` (seed 0, 2-core CPU shared with other jobs, 35 s wall):

* weights of the 256x256 layer: std 0 / 0.0100 / 0.0626 / 0.0885 against
  theory 0 / 0.0100 / 0.0625 / 0.0884 (zeros / normal / Xavier / He); every
  mean within 2e-4 of 0.
* forward std of h, hidden layer 1 -> 10: zeros 0 -> 0; normal 0.164 ->
  4.8e-10 (x0.11 per layer); Xavier 0.72 -> 0.031 (x0.71 per layer); He
  0.83 -> 0.81 (flat).
* backward std of dL/dh, layer 1 -> 10: zeros 0; normal 2.8e-14 -> 9.7e-6;
  Xavier 3.6e-6 -> 8.4e-5 (the gradient fades toward the input); He 9.1e-5
  at every layer.
* test accuracy after 2 epochs (1874 SGD steps, batches drawn by
  ``train.fit``): zeros 11.35%; normal 96.14% (11.35% at steps 100 and 200,
  21% at 300, 61% at 400); Xavier 97.10%; He 96.90% (both ~90% after 100
  steps; which of the two ends ahead after 2 epochs changes with the batch
  order -- the earlier hand-rolled loop's order gave Xavier 96.79%, He 97.01%).
"""

from __future__ import annotations

import math
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jdlfs import data, models, runs, train
from jdlfs import functional as F
from jdlfs import init as initializers
from jdlfs import layers as L

SCHEMES = {"zeros": "zeros", "normal": "normal", "xavier": "xavier_normal", "he": "he_normal"}
LABELS = {"zeros": "zeros", "normal": "N(0, 0.01²)", "xavier": "Xavier normal", "he": "He normal"}
COLORS = {"zeros": "tab:gray", "normal": "tab:orange", "xavier": "tab:blue", "he": "tab:green"}


def theoretical_std(scheme: str, shape) -> float:
    fan_in, fan_out = initializers.fans(shape)
    return {"zeros": 0.0, "normal": 0.01, "xavier": math.sqrt(2 / (fan_in + fan_out)), "he": math.sqrt(2 / fan_in)}[
        scheme
    ]


# ---------------------------------------------------------------- (b) depth study
def layer_statistics(model, params, state, x, y):
    """Per hidden layer: std of the ReLU output, of dL/d(that output), and per
    Linear layer the std of dL/dW. All math through the model's own layers;
    dL/dh_l is the gradient with respect to a zero "tap" added to the output
    of layer ``relu<l>`` (``layers.intermediates``)."""
    relus = [n for n, _ in model.layers if n.startswith("relu")]
    linears = [n for n, _ in model.layers if n.startswith("fc")]

    def loss_fn(params, taps):
        logits, _, acts = L.intermediates(model, params, state, x, taps=taps)
        return F.softmax_cross_entropy(logits, y), [acts[n] for n in relus]

    _, _, acts = L.intermediates(model, params, state, x)
    taps = {n: jnp.zeros_like(acts[n]) for n in relus}
    (_, hs), (g_params, g_taps) = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True))(params, taps)
    return {
        "forward_std": [float(jnp.std(a)) for a in hs],
        "backward_std": [float(jnp.std(g_taps[n])) for n in relus],
        "weight_grad_std": [float(jnp.std(g_params[n]["w"])) for n in linears],
    }


# ---------------------------------------------------------------- (c) training
def train_curve(
    model,
    params,
    state,
    train_xy,
    test_xy,
    preprocess,
    *,
    key,
    epochs,
    batch_size,
    lr,
    eval_every,
    progress,
    desc,
    devices,
):
    """Plain SGD through ``train.fit``; the training loss of every step
    (``log_every=1``) and the test accuracy every ``eval_every`` steps."""
    result = train.fit(
        train.classification(model, preprocess=preprocess),
        params,
        state,
        optax.sgd(lr),
        train_xy,
        epochs=epochs,
        batch_size=batch_size,
        key=key,
        test_data=test_xy,
        eval_every=eval_every,
        log_every=1,
        progress=progress,
        desc=desc,
        devices=devices,
    )
    losses = np.asarray([c["train_loss"] for c in result.curve if "train_loss" in c])
    evals = [c for c in result.curve if "test_accuracy" in c]
    return result.params, losses, [c["step"] for c in evals], [c["test_accuracy"] for c in evals]


# ---------------------------------------------------------------- figures
def plot_weights(weights, shape, out):
    plt = runs.plt
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.4), layout="constrained")
    for ax, (name, w) in zip(axes, weights.items()):
        w = np.asarray(w).ravel()
        sd = theoretical_std(name, shape)
        if sd == 0:
            ax.axvline(0, color=COLORS[name], lw=3, label=f"all {w.size:,} weights = 0")
            ax.set(xlim=(-0.3, 0.3))
        else:
            ax.hist(w, bins=120, density=True, color=COLORS[name], alpha=0.6, label="sampled")
            t = np.linspace(-4.5 * sd, 4.5 * sd, 300)
            ax.plot(
                t, np.exp(-(t**2) / (2 * sd**2)) / (sd * math.sqrt(2 * math.pi)), "k-", lw=1.2, label=f"N(0, {sd:.4f}²)"
            )
        ax.set_title(f"{LABELS[name]}\nstd {w.std():.4f} (theory {sd:.4f})\nmean {w.mean():+.1e}", fontsize=10)
        ax.set(xlabel="weight", ylabel="density")
        ax.legend(fontsize=8)
    fig.suptitle(f"weights of one {shape[0]}x{shape[1]} hidden layer", y=1.1)
    return runs.save_figure(fig, out, "weights.png")


def plot_depth(stats, out):
    plt = runs.plt
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    panels = [
        ("forward_std", "forward: std of ReLU output h_l", "hidden layer l"),
        ("backward_std", "backward: std of dL/dh_l", "hidden layer l"),
        ("weight_grad_std", "backward: std of dL/dW_l", "linear layer l"),
    ]
    for ax, (key, title, xlabel) in zip(axes, panels):
        for name, s in stats.items():
            v = np.asarray(s[key], dtype=float)
            ax.plot(np.arange(1, len(v) + 1), np.where(v > 0, v, np.nan), "o-", color=COLORS[name], label=LABELS[name])
        zero = [LABELS[n] for n, s in stats.items() if max(s[key]) == 0]
        if zero:
            ax.text(0.02, 0.02, f"{', '.join(zero)}: exactly 0 everywhere", transform=ax.transAxes, fontsize=8)
        ax.set(yscale="log", title=title, xlabel=xlabel, ylabel="std")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle("deep ReLU MLP 784-256x10-10 at initialization, one batch of MNIST", y=1.02)
    return runs.save_figure(fig, out, "depth.png")


def plot_training(curves, out):
    plt = runs.plt
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4))
    for name, c in curves.items():
        losses = c["losses"]
        w = max(1, min(25, len(losses) // 20))
        smooth = np.convolve(losses, np.ones(w) / w, mode="valid")
        a1.plot(np.arange(w, len(losses) + 1), smooth, color=COLORS[name], label=LABELS[name])
        a2.plot(
            c["acc_steps"],
            [100 * a for a in c["accs"]],
            "o-",
            ms=3,
            color=COLORS[name],
            label=f"{LABELS[name]} ({100 * c['accs'][-1]:.1f}%)",
        )
    a1.set(xlabel="SGD step", ylabel="training loss (running mean)", title="784-256-256-256-10 ReLU, SGD")
    a2.set(xlabel="SGD step", ylabel="test accuracy (%)", title="test accuracy", ylim=(0, 100))
    for a in (a1, a2):
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    return runs.save_figure(fig, out, "training.png")


def main(argv=None) -> dict:
    p = runs.experiment_parser("init_schemes", __doc__.split("\n\n")[0])
    p.add_argument("--depth", type=int, default=10, help="hidden layers of the deep MLP (part b)")
    p.add_argument("--width", type=int, default=256, help="hidden units per layer of the deep MLP (part b)")
    p.add_argument("--probe-batch", type=int, default=1000, help="MNIST images in the depth study")
    p.add_argument("--epochs", type=int, default=2, help="training epochs (part c)")
    p.add_argument("--batch-size", type=int, default=64, help="examples per SGD step (part c)")
    p.add_argument("--lr", type=float, default=0.1, help="SGD learning rate (part c)")
    p.add_argument("--eval-every", type=int, default=100, help="steps between test evaluations")
    args = p.parse_args(argv)
    out = runs.start(args)

    x_train, y_train, x_test, y_test = runs.load_dataset(args, "mnist", quick_train=4096)
    if args.quick:  # a few hundred steps on a subset
        args.epochs, args.eval_every, args.probe_batch = 4, min(args.eval_every, 32), 256
    norm = data.fit_normalizer(x_train)
    preprocess = lambda x: norm.apply(x).reshape(x.shape[0], -1)  # noqa: E731
    k_batch, k_deep, k_init, k_train = jax.random.split(jax.random.key(args.seed), 4)
    results = {}

    # (a) + (b): the deep network, one init per scheme from the same key
    idx = jax.random.choice(k_batch, len(y_train), (args.probe_batch,), replace=False)
    xb, yb = preprocess(jnp.asarray(x_train[np.asarray(idx)])), jnp.asarray(y_train[np.asarray(idx)])
    deep_sizes = (784,) + (args.width,) * args.depth + (10,)
    weights, stats = {}, {}
    for name, init_name in SCHEMES.items():
        model = models.mlp(deep_sizes, "relu", w_init=init_name)
        params, state = model.init(k_deep, (1, 784))
        w = params["fc2"]["w"]  # second Linear: width x width
        weights[name] = w
        sd = theoretical_std(name, w.shape)
        results[f"weight_mean_{name}"] = float(jnp.mean(w))
        results[f"weight_std_{name}"] = float(jnp.std(w))
        results[f"weight_std_theory_{name}"] = sd
        stats[name] = layer_statistics(model, params, state, xb, yb)
        for k, v in stats[name].items():
            results[f"{k}_{name}"] = v
        print(
            f"{name:>6}: weight std {float(jnp.std(w)):.4f} (theory {sd:.4f}); forward std "
            f"layer 1 {stats[name]['forward_std'][0]:.3g} -> layer {args.depth} "
            f"{stats[name]['forward_std'][-1]:.3g}; dL/dh std {stats[name]['backward_std'][0]:.3g} "
            f"-> {stats[name]['backward_std'][-1]:.3g}",
            file=sys.stderr,
        )
    plot_weights(weights, weights["he"].shape, out)
    plot_depth(stats, out)

    # (c): short training runs of a 3-hidden-layer MLP
    sizes = (784, 256, 256, 256, 10)
    curves = {}
    for name, init_name in SCHEMES.items():
        model = models.mlp(sizes, "relu", w_init=init_name)
        params, state = model.init(k_init, (1, 784))
        final_params, losses, acc_steps, accs = train_curve(
            model,
            params,
            state,
            (x_train, y_train),
            (x_test, y_test),
            preprocess,
            key=k_train,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            eval_every=args.eval_every,
            progress=not args.no_progress,
            desc=f"SGD from {name}",
            devices=runs.local_devices(args, args.batch_size),
        )
        curves[name] = {"losses": losses, "acc_steps": acc_steps, "accs": accs}
        results[f"accuracy_{name}"] = accs[-1]
        results[f"final_train_loss_{name}"] = float(np.mean(losses[-50:]))
        results[f"test_accuracy_curve_{name}"] = {"steps": acc_steps, "accuracy": accs}
        if name == "zeros":  # symmetry never breaks: hidden weights get exactly zero gradient
            hidden = [final_params[f"fc{i}"]["w"] for i in (1, 2, 3, 4)]
            results["zeros_hidden_weights_max_abs"] = float(max(jnp.max(jnp.abs(w)) for w in hidden))
    plot_training(curves, out)

    results.update(
        {
            "deep_sizes": list(deep_sizes),
            "train_sizes": list(sizes),
            "epochs": args.epochs,
            "steps": len(curves["he"]["losses"]),
            "batch_size": args.batch_size,
            "lr": args.lr,
            "probe_batch": args.probe_batch,
        }
    )
    return runs.finish(args, results)


if __name__ == "__main__":
    runs.run_main(main)
