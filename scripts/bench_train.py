"""Benchmark: ``train.fit``'s epoch loop vs the same jitted step in a bare loop.

For each model (MNIST MLP 784-128-10 at batch 64, LeNet at batch 32, the CIFAR
CNN with and without batch norm at batch 128) and the same train step
(:func:`jdlfs.train.make_train_step` of the classification objective, SGD):

* **bare loop** -- the batches pre-sliced on the device, then
  ``for b in batches: ts, m = step(ts, b, key)`` with ``step`` jitted and
  buffer-donating, synchronised once at the end;
* **fit** -- ``train.fit`` on the same number of examples: the epoch time
  ``fit`` records itself (its loop gathers each batch from the
  device-resident dataset inside the step and accumulates the metric sums on
  the device);
* **scan** -- the old design: one ``lax.scan`` over the stacked batches of the
  epoch (what ``fit`` did before), for reference.

Each configuration is compiled first; then ``--repeats`` rounds run the three
variants one after the other (interleaved, so all see the same machine
load), and the median and the spread (min-max) of images per second are
printed, with the ratio fit / bare loop (1.0 = no overhead).

    python scripts/bench_train.py             # all models
    python scripts/bench_train.py --quick     # fewer steps (CI-sized)
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jdlfs import models, train


def configs(quick: bool):
    s = 4 if quick else 1
    return [
        ("MNIST MLP 784-128-10", models.mlp((784, 128, 10)), (784,), 64, 400 // s),
        ("LeNet", models.lenet(), (28, 28, 1), 32, 200 // s),
        ("CIFAR CNN + BN", models.cifar_cnn(batch_norm=True), (32, 32, 3), 128, 12 // s + 2),
        ("CIFAR CNN plain", models.cifar_cnn(batch_norm=False), (32, 32, 3), 128, 12 // s + 2),
    ]


def bench_model(name, model, shape, batch_size, steps, repeats):
    rng = np.random.default_rng(0)
    n = steps * batch_size
    x = rng.normal(size=(n, *shape)).astype(np.float32)
    y = rng.integers(0, 10, n).astype(np.int32)
    params, state = model.init(jax.random.key(0), (1, *shape))
    opt = optax.sgd(0.01, momentum=0.9)
    task = train.classification(model)
    step = jax.jit(train.make_train_step(task.objective, opt), donate_argnums=0)
    xs, ys = jnp.asarray(x).reshape(steps, batch_size, *shape), jnp.asarray(y).reshape(steps, batch_size)
    batches = [(xs[i], ys[i]) for i in range(steps)]
    keys = list(jax.random.split(jax.random.key(1), steps))

    def bare():
        ts = jax.tree.map(jnp.copy, train.init_train_state(params, state, opt))
        jax.block_until_ready(ts)
        t0 = time.perf_counter()
        for b, k in zip(batches, keys):
            ts, _ = step(ts, b, k)
        jax.block_until_ready(ts)
        return n / (time.perf_counter() - t0)

    scan_step = train.make_train_step(task.objective, opt)

    @jax.jit
    def scanned(ts, xs, ys, key):
        def body(ts, b):
            ts, m = scan_step(ts, (b[0], b[1]), jax.random.fold_in(key, ts.step))
            return ts, m["loss"]

        return jax.lax.scan(body, ts, (xs, ys))

    def scan():
        ts = train.init_train_state(params, state, opt)
        jax.block_until_ready(ts)
        t0 = time.perf_counter()
        jax.block_until_ready(scanned(ts, xs, ys, keys[0]))
        return n / (time.perf_counter() - t0)

    def fit():
        r = train.fit(
            task, params, state, opt, (x, y), epochs=2, batch_size=batch_size, key=jax.random.key(1), progress=False
        )
        return r.history[-1]["train_examples_per_second"]  # epoch 2: compiled, as in a real run

    bare(), scan(), fit()  # compile / warm up
    rows = {"bare": [], "fit": [], "scan": []}
    for _ in range(repeats):
        rows["bare"].append(bare())
        rows["fit"].append(fit())
        rows["scan"].append(scan())
    med = {k: float(np.median(v)) for k, v in rows.items()}
    ratio = [f / b for f, b in zip(rows["fit"], rows["bare"])]
    return {
        "model": name,
        "batch_size": batch_size,
        "steps": steps,
        **{f"{k}_images_per_s": med[k] for k in rows},
        **{f"{k}_spread": [float(min(v)), float(max(v))] for k, v in rows.items()},
        "fit_over_bare": float(np.median(ratio)),
        "fit_over_bare_spread": [min(ratio), max(ratio)],
    }


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="fewer steps per measurement (CI-sized)")
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds per model")
    p.add_argument("--filter", default="", help="only models whose name contains this text")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    rows = []
    print(
        f"{'model':<22} {'batch':>5} {'bare img/s':>11} {'fit img/s':>10} {'scan img/s':>11} {'fit/bare (min-max)':>22}"
    )
    for cfg in configs(args.quick):
        if args.filter.lower() not in cfg[0].lower():
            continue
        r = bench_model(*cfg, args.repeats)
        rows.append(r)
        lo, hi = r["fit_over_bare_spread"]
        print(
            f"{r['model']:<22} {r['batch_size']:>5} {r['bare_images_per_s']:>11.0f} {r['fit_images_per_s']:>10.0f} "
            f"{r['scan_images_per_s']:>11.0f} {r['fit_over_bare']:>9.3f} ({lo:.3f}-{hi:.3f})",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": str(jax.devices()[0]), "backend": jax.default_backend(), "rows": rows}, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
