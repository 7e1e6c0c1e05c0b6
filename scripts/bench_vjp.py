"""Benchmark: hand-written backward passes vs JAX autodiff of the same forward.

For each op (at realistic training sizes) and for whole training steps, times
the jitted ``value_and_grad`` of ``<v, f(args)>`` twice: once through the
hand-written ``custom_vjp`` rules, once through autodiff of the very same
forward with every rule stripped (:func:`jdlfs.gradcheck.strip_custom_vjp`).
Prints milliseconds and the ratio autodiff / hand (> 1: the hand rule is faster).

    python scripts/bench_vjp.py            # all ops and models
    python scripts/bench_vjp.py --only conv --repeats 50

Timing: compile and warm up first, then ``--repeats`` rounds that call the
hand and the autodiff version alternately (so both see the same load on a
shared machine), each synchronised with ``block_until_ready``; the best time
of each is reported (the least-disturbed run).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import jdlfs.functional as F
from jdlfs import models
from jdlfs.gradcheck import strip_custom_vjp


def _normal(key, shape, scale=1.0):
    return scale * jax.random.normal(key, shape, jnp.float32)


def op_benchmarks():
    """(name, fn, args) with realistic sizes; fn takes positional arrays."""
    k = iter(jax.random.split(jax.random.key(0), 64))
    n = lambda *s, scale=1.0: _normal(next(k), s, scale)  # noqa: E731
    mask = jnp.tril(jnp.ones((128, 128), bool))
    ids = jax.random.randint(next(k), (64, 128), 0, 10000)
    labels = jax.random.randint(next(k), (256,), 0, 10)
    return [
        ("linear (256x784 @ 784x128)", F.linear, (n(256, 784), n(784, 128), n(128))),
        (
            "conv2d lax (64x32x32x32, 3x3x32x64)",
            lambda x, w, b: F.conv2d(x, w, b),
            (n(64, 32, 32, 32), n(3, 3, 32, 64), n(64)),
        ),
        ("conv2d lax stride 2", lambda x, w: F.conv2d(x, w, stride=2), (n(64, 32, 32, 32), n(3, 3, 32, 64))),
        (
            "conv2d_im2col (64x32x32x32, 3x3x32x64)",
            lambda x, w, b: F.conv2d_im2col(x, w, b),
            (n(64, 32, 32, 32), n(3, 3, 32, 64), n(64)),
        ),
        ("max_pool2d 2x2 (64x32x32x64)", F.max_pool2d, (n(64, 32, 32, 64),)),
        ("max_pool2d 3x3/2 SAME", lambda x: F.max_pool2d(x, 3, 2, "SAME"), (n(64, 32, 32, 64),)),
        ("avg_pool2d 2x2", F.avg_pool2d, (n(64, 32, 32, 64),)),
        ("relu (256x4096)", F.relu, (n(256, 4096),)),
        ("gelu (256x4096)", F.gelu, (n(256, 4096),)),
        ("sigmoid (256x4096)", F.sigmoid, (n(256, 4096),)),
        ("softmax (256x4096)", F.softmax, (n(256, 4096),)),
        ("log_softmax (256x4096)", F.log_softmax, (n(256, 4096),)),
        ("softmax_cross_entropy (256x10)", lambda z: F.softmax_cross_entropy(z, labels), (n(256, 10),)),
        ("batch_norm (64x32x32x64)", lambda x, g, b: F.batch_norm(x, g, b)[0], (n(64, 32, 32, 64), n(64), n(64))),
        ("layer_norm (64x128x512)", F.layer_norm, (n(64, 128, 512), n(512), n(512))),
        ("embedding (10000x256, 64x128 ids)", lambda t: F.embedding(t, ids), (n(10000, 256),)),
        (
            "attention causal (16x8x128x64)",
            lambda q, kk, v: F.attention(q, kk, v, mask=mask),
            (n(16, 8, 128, 64), n(16, 8, 128, 64), n(16, 8, 128, 64)),
        ),
        (
            "rnn (B=64 T=50 in=64 H=128)",
            lambda *a: F.rnn(*a)[0],
            (n(64, 50, 64), n(64, 128), n(64, 128, scale=0.1), n(128, 128, scale=0.1), n(128)),
        ),
        ("dropout 0.5 (256x4096)", lambda x: F.dropout(jax.random.key(1), x, 0.5), (n(256, 4096),)),
    ]


def model_benchmarks():
    """Whole training steps: loss + gradient of every parameter."""
    out = []
    for name, model, shape, batch in [
        ("MLP 784-128-10 train step (batch 64)", models.mlp((784, 128, 10)), (1, 784), 64),
        ("LeNet train step (batch 64)", models.lenet(), (1, 28, 28, 1), 64),
        ("CIFAR CNN + BN + dropout train step (batch 128)", models.cifar_cnn(), (1, 32, 32, 3), 128),
    ]:
        params, state = model.init(jax.random.key(0), shape)
        x = _normal(jax.random.key(1), (batch,) + shape[1:])
        y = jnp.arange(batch) % 10

        def loss(params, x, model=model, state=state, y=y):
            logits, _ = model.apply(params, state, x, key=jax.random.key(2), train=True)
            return F.softmax_cross_entropy(logits, y)

        out.append((name, loss, (params, x)))
    return out


def _time_pair(f_hand, f_auto, args, repeats):
    """Best-of-``repeats`` seconds for each function, measured alternately
    (hand, autodiff, hand, ...) so both see the same machine load."""
    for f in (f_hand, f_auto):
        for _ in range(3):  # compile + warm up
            jax.block_until_ready(f(*args))
    best = [float("inf"), float("inf")]
    for _ in range(repeats):
        for i, f in enumerate((f_hand, f_auto)):
            t0 = time.perf_counter()
            jax.block_until_ready(f(*args))
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


def bench(name, fn, args, repeats, scalar=False):
    if scalar:
        hand, auto = fn, strip_custom_vjp(fn)
        grad_hand = jax.jit(jax.value_and_grad(hand))
        grad_auto = jax.jit(jax.value_and_grad(auto))
    else:
        v = jax.tree.map(lambda o: jnp.ones_like(o) * 0.5, jax.eval_shape(fn, *args))
        v = jax.tree.map(lambda s: jax.random.normal(jax.random.key(9), s.shape, s.dtype), v)

        def make(f):
            return jax.jit(
                jax.value_and_grad(
                    lambda *a: sum(jnp.vdot(c, o) for c, o in zip(jax.tree.leaves(v), jax.tree.leaves(f(*a)))),
                    argnums=tuple(range(len(args))),
                )
            )

        grad_hand, grad_auto = make(fn), make(strip_custom_vjp(fn))
    t_hand, t_auto = _time_pair(grad_hand, grad_auto, args, repeats)
    return {"name": name, "hand_ms": 1e3 * t_hand, "autodiff_ms": 1e3 * t_auto, "ratio": t_auto / t_hand}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--only", default="", help="substring filter on benchmark names")
    p.add_argument("--json", help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    rows = []
    for name, fn, fargs in op_benchmarks():
        if args.only in name:
            rows.append(bench(name, fn, fargs, args.repeats))
            print(
                f"{rows[-1]['name']:<48} hand {rows[-1]['hand_ms']:8.2f} ms  "
                f"autodiff {rows[-1]['autodiff_ms']:8.2f} ms  "
                f"ratio {rows[-1]['ratio']:5.2f}",
                file=sys.stderr,
            )
    for name, fn, fargs in model_benchmarks():
        if args.only in name:
            rows.append(bench(name, fn, fargs, args.repeats, scalar=True))
            print(
                f"{rows[-1]['name']:<48} hand {rows[-1]['hand_ms']:8.2f} ms  "
                f"autodiff {rows[-1]['autodiff_ms']:8.2f} ms  "
                f"ratio {rows[-1]['ratio']:5.2f}",
                file=sys.stderr,
            )
    print(
        f"\nbackend: {jax.default_backend()} ({jax.devices()[0].device_kind}), jax {jax.__version__}, "
        f"best of {args.repeats}, interleaved; ratio = autodiff / hand (> 1: hand-written is faster)"
    )
    print(f"{'benchmark':<50} {'hand ms':>9} {'autodiff ms':>12} {'ratio':>6}")
    for r in rows:
        print(f"{r['name']:<50} {r['hand_ms']:9.2f} {r['autodiff_ms']:12.2f} {r['ratio']:6.2f}")
    ratios = [r["ratio"] for r in rows]
    print(
        f"geometric mean ratio {float(np.exp(np.mean(np.log(ratios)))):.2f}; "
        f"slowest hand rule {min(rows, key=lambda r: r['ratio'])['name']} ({min(ratios):.2f})"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
