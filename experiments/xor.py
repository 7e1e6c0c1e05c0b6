"""XOR: a single perceptron cannot separate it; a 2-2-1 sigmoid MLP can.

(a) Rosenblatt's perceptron, ``y = step(x w + b)`` (``models.perceptron()``,
zero initial weights), trained on the four XOR points with the perceptron
learning rule, one example at a time in the fixed order (0,0), (0,1), (1,0),
(1,1):

    w += lr * (t - y) * x,      b += lr * (t - y)

run by ``train.fit`` (batch 1, no shuffling) as SGD on the perceptron
criterion ``-(t - y) (x w + b)`` with ``y`` held constant, whose gradient step
is exactly that rule.

Why not gradient descent? The step's derivative is 0 everywhere (undefined
at 0), so ``jax.grad`` of any loss through ``F.step`` is exactly zero: the
script checks it (``perceptron_grad_norm`` = 0.0). The rule above is an
error-correction update, not a gradient. From zero weights every weight is
an integer multiple of ``lr``, so ``lr`` only rescales ``(w, b)`` and never
changes a prediction: the run is fully deterministic. A line splits the plane
into two half-planes and XOR's positives (0,1), (1,0) sit diagonally opposite
each other, so no ``(w, b)`` gets more than 3 of the 4 points; the rule never
converges. Here it falls into a 4-update cycle whose accuracies are 50%, 25%,
50%, 50%: best 50%, final (end of every epoch) 50%.

(b) A 2-2-1 MLP (``models.mlp((2, 2, 1), "sigmoid", w_init="xavier_normal")``:
a sigmoid hidden layer, a logit output fed to
``F.binary_cross_entropy_with_logits``), full-batch gradient descent through
the hand-written rules (lr 5.0, 3000 steps, ``train.full_batch``). Two hidden
units are just enough (e.g. an OR unit and a NAND unit ANDed by the output),
and a 2-2-1 net has genuine local minima: some initializations stall at loss
ln(2)/2 = 0.347 (two points fit, the other two left at probability 0.5: 50%
accuracy) or at loss 0.478 with 75% accuracy, and more steps do not help
(at lr 2, 10000 steps stall on 24 of 100 seeds, as 3000 do). A run that
does not reach 100% is restarted from a fresh key ``fold_in(mlp_key, restart)``;
``restarts`` says how many were needed. Measured over seeds 0..99 (lr 5,
3000 steps): 16 of 100 first attempts got stuck (over all attempts 16
stalled at 0.347 and 2 at 0.478), none needed more than 2 restarts. Other
settings stall more often: xavier_normal lr 2: 24 of 100; he_normal lr 2:
34; N(0, 1) lr 5: 25.

Measured, default run ``python experiments/xor.py`` (seed 0, 2-core CPU):
perceptron best 50% / final 50%, MLP 100% accuracy, final loss 0.0006 after
0 restarts, 3.0 s wall time (4.3 s with interpreter start-up).

Figures: ``decision_boundaries.png`` (perceptron and MLP, side by side),
``mlp_loss.png`` (loss per step; stuck attempts dashed), ``perceptron.png``
(accuracy after every perceptron update).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jdlfs import functional as F
from jdlfs import layers as L
from jdlfs import models, runs, train

X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32)
T = np.array([0, 1, 1, 0], np.float32)


# ---------------------------------------------------------------- (a) perceptron
def perceptron_task(model):
    """The perceptron rule as an objective, so ``train.fit`` runs it.

    With ``z = x w + b`` (the ``fc`` layer's output), ``y = step(z)`` and the
    perceptron criterion ``L = -(t - y) z`` (``y`` held constant), ``dL/dw =
    -(t - y) x`` and ``dL/db = -(t - y)``: one SGD step of size ``lr`` on one
    example *is* the rule ``w += lr (t - y) x``, ``b += lr (t - y)``.
    Evaluation: accuracy of ``step(z)`` on the points, per example."""

    def objective(params, state, batch, key):
        x, t = batch
        y, _, acts = L.intermediates(model, params, state, x)
        err = t - jax.lax.stop_gradient(y[:, 0])
        loss = -jnp.mean(err * acts["fc"][:, 0])
        return loss, (state, {"loss": loss * x.shape[0], "count": jnp.float32(x.shape[0])})

    def evaluate(params, state, batch, *, weights=None):
        x, t = batch
        y, _ = model.apply(params, state, x)
        w = jnp.ones(t.shape, jnp.float32) if weights is None else weights
        correct = (y[:, 0] > 0.5) == (t > 0.5)
        return {"accuracy": jnp.sum(w * correct), "count": jnp.sum(w)}

    return train.Task(objective, evaluate)


def train_perceptron(key, epochs: int, lr: float, progress: bool):
    """Perceptron rule, online (batch 1), the 4 points in their fixed order each
    epoch (``shuffle=False``). Returns model, params, state, the accuracy on all
    4 points after every update, and |grad| through the step."""
    model = models.perceptron()  # zero weights: the classic start
    params, state = model.init(key, (1, 2))
    x, t = jnp.asarray(X), jnp.asarray(T)
    result = train.fit(
        perceptron_task(model),
        params,
        state,
        optax.sgd(lr),
        (X, T),
        epochs=epochs,
        batch_size=1,
        key=key,
        shuffle=False,
        test_data=(X, T),
        eval_every=1,
        progress=progress,
        desc="perceptron rule",
        devices=1,
    )  # one example per step: one device
    accs = [c["test_accuracy"] for c in result.curve[1:]]  # after every update (curve[0]: before any)
    params = result.params

    # The step has zero gradient: jax.grad through our rule gives exactly 0.
    grads = jax.grad(lambda p: F.mse(model.apply(p, state, x)[0][:, 0], t))(params)
    grad_norm = float(sum(jnp.sum(g**2) for g in jax.tree.leaves(grads)) ** 0.5)
    return model, params, state, accs, grad_norm


# ---------------------------------------------------------------- (b) 2-2-1 MLP
def train_mlp(key, steps: int, lr: float, w_init: str):
    """Full-batch gradient descent on the 4 points (``train.full_batch``)."""
    model = models.mlp((2, 2, 1), "sigmoid", w_init=w_init)
    params, state = model.init(key, (1, 2))
    x, t = jnp.asarray(X), jnp.asarray(T)[:, None]

    def loss_fn(p):
        logits, _ = model.apply(p, state, x)
        return F.binary_cross_entropy_with_logits(logits, t)

    def objective(p, s, batch, key):
        loss = loss_fn(p)  # hand-written VJPs end to end
        return loss, (s, {"loss": loss, "count": jnp.float32(1)})

    ts, losses = train.full_batch(objective, params, state, optax.sgd(lr), (x, t), steps=steps, key=key)
    params = ts.params
    logits, _ = model.apply(params, state, x)
    acc = float(jnp.mean((logits[:, 0] > 0) == (t[:, 0] > 0.5)))
    return model, params, state, losses, float(loss_fn(params)), acc


# ---------------------------------------------------------------- figures
def plot_boundaries(percep, mlp, out):
    plt = runs.plt
    g = np.linspace(-0.5, 1.5, 201, dtype=np.float32)
    gx, gy = np.meshgrid(g, g)
    grid = jnp.asarray(np.stack([gx.ravel(), gy.ravel()], 1))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4))
    (pm, pp, ps, pacc), (mm, mp, ms, macc) = percep, mlp
    z_p = np.asarray(pm.apply(pp, ps, grid)[0][:, 0]).reshape(gx.shape)
    z_m = np.asarray(F.sigmoid(mm.apply(mp, ms, grid)[0])[:, 0]).reshape(gx.shape)
    panels = [
        (axes[0], z_p, f"perceptron (step), final acc {100 * pacc:.0f}%"),
        (axes[1], z_m, f"2-2-1 sigmoid MLP, acc {100 * macc:.0f}%"),
    ]
    for ax, z, title in panels:
        cf = ax.contourf(gx, gy, z, levels=np.linspace(0, 1, 11), cmap="RdBu_r", alpha=0.75)
        ax.contour(gx, gy, z, levels=[0.5], colors="k", linewidths=1.5)
        for cls, marker in ((0, "o"), (1, "s")):
            pts = X[T == cls]
            ax.scatter(
                pts[:, 0],
                pts[:, 1],
                c="red" if cls else "blue",
                marker=marker,
                s=120,
                edgecolors="k",
                label=f"target {cls}",
                zorder=3,
            )
        ax.set(xlim=(-0.5, 1.5), ylim=(-0.5, 1.5), xlabel="$x_1$", ylabel="$x_2$", title=title, aspect="equal")
        ax.legend(loc="upper center", fontsize=8)
    fig.colorbar(cf, ax=axes, label="output (step / sigmoid probability)", shrink=0.85)
    return runs.save_figure(fig, out, "decision_boundaries.png")


def main(argv=None) -> dict:
    p = runs.experiment_parser("xor", __doc__.split("\n\n")[0] + " (single-device: --devices is ignored)")
    p.add_argument("--perceptron-epochs", type=int, default=50, help="passes of the perceptron rule over the 4 points")
    p.add_argument(
        "--perceptron-lr",
        type=float,
        default=1.0,
        help="perceptron learning rate (from zero weights it only rescales w, b)",
    )
    p.add_argument("--steps", type=int, default=3000, help="MLP full-batch gradient-descent steps per attempt")
    p.add_argument("--lr", type=float, default=5.0, help="MLP learning rate")
    p.add_argument("--w-init", default="xavier_normal", help="MLP weight initializer (jdlfs.init name)")
    p.add_argument(
        "--max-restarts",
        type=int,
        default=20,
        help="fresh MLP initializations to try when one stalls in a local minimum",
    )
    args = p.parse_args(argv)
    out = runs.start(args)
    if args.quick:
        args.perceptron_epochs = min(args.perceptron_epochs, 20)

    perceptron_key, mlp_key = jax.random.split(jax.random.key(args.seed))
    pm, pp, ps, accs, grad_norm = train_perceptron(
        perceptron_key, args.perceptron_epochs, args.perceptron_lr, not args.no_progress
    )
    print(f"perceptron: best {max(accs):.2f}, final {accs[-1]:.2f} (|grad through step| = {grad_norm})")

    attempts = []
    for restart in range(args.max_restarts + 1):
        mm, mp, ms, losses, final_loss, acc = train_mlp(
            jax.random.fold_in(mlp_key, restart), args.steps, args.lr, args.w_init
        )
        attempts.append({"restart": restart, "accuracy": acc, "final_loss": final_loss, "losses": losses})
        print(f"mlp attempt {restart}: accuracy {acc:.2f}, loss {final_loss:.4f}")
        if acc == 1.0:
            break
    restarts = len(attempts) - 1

    plot_boundaries((pm, pp, ps, accs[-1]), (mm, mp, ms, acc), out)
    fig, ax = runs.plt.subplots(figsize=(6, 4))
    for a in attempts:
        ok = a["accuracy"] == 1.0
        ax.plot(
            a["losses"],
            "-" if ok else "--",
            alpha=1.0 if ok else 0.6,
            label=f"attempt {a['restart']}: acc {100 * a['accuracy']:.0f}%",
        )
    ax.set(
        yscale="log", xlabel="gradient-descent step", ylabel="binary cross-entropy", title="2-2-1 sigmoid MLP on XOR"
    )
    ax.grid(alpha=0.3)
    ax.legend()
    runs.save_figure(fig, out, "mlp_loss.png")
    fig, ax = runs.plt.subplots(figsize=(6, 3.5))
    ax.plot(np.arange(1, len(accs) + 1) / 4, [100 * a for a in accs], "o-", ms=3)
    ax.set(
        xlabel="epoch (4 updates each)",
        ylabel="accuracy on the 4 points (%)",
        ylim=(0, 100),
        title="perceptron rule on XOR: it never converges",
    )
    ax.grid(alpha=0.3)
    runs.save_figure(fig, out, "perceptron.png")

    results = {
        "perceptron_accuracy": accs[-1],
        "perceptron_best_accuracy": max(accs),
        "perceptron_accuracy_per_update": accs,
        "perceptron_grad_norm": grad_norm,
        "mlp_accuracy": acc,
        "mlp_final_loss": final_loss,
        "restarts": restarts,
        "mlp_attempts": [{k: v for k, v in a.items() if k != "losses"} for a in attempts],
        "mlp_steps": args.steps,
        "mlp_lr": args.lr,
        "mlp_w_init": args.w_init,
    }
    return runs.finish(args, results)


if __name__ == "__main__":
    runs.run_main(main)
