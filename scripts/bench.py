"""The project's benchmark: hand-written backward passes vs JAX autodiff vs Flax, time and memory.

**Ops.** For each op of :mod:`jdlfs.functional` at a realistic training size,
one jitted program computes the forward and the backward (``jax.vjp`` of the
op, pulled back along a fixed random cotangent) twice: through the
hand-written ``custom_vjp`` rules, and through JAX's autodiff of the very
same forward with every rule stripped (:func:`jdlfs.gradcheck.strip_custom_vjp`).

**Checked before timed.** An entry whose variants do not compute the same thing is refused
(:class:`CheckFailed`, naming it) before it is timed: an op whose hand and autodiff outputs and
gradients differ by more than :func:`rel_tolerance` (1e-4 relative in float32), an op or model
without a hand rule or with one left after stripping, a model whose first train-step losses of
hand rules and autodiff differ, a Flax twin that differs (below).

**Against a library kernel (GPU).** Our ``attention`` (forward + backward, B=32, H=4, T=128,
d=64, with and without the causal mask, bfloat16) against ``jax.nn.dot_product_attention(...,
implementation="cudnn")`` (cuDNN flash attention), interleaved as above; ratio library / hand.
Each side gets its inputs and cotangent in its own layout (ours (B, H, T, d), jax.nn's
(B, T, N, H)), converted on the host before timing, so only the kernels are timed; outputs and
gradients are checked equal (bfloat16 tolerance) first. cuDNN runs only on jax's gpu backend:
elsewhere the rows are listed as not measured, with the reason (``--library-impl xla`` runs the
comparison against jax.nn's XLA implementation on any backend: a check of the comparison itself).

**Models.** One jitted train step (loss, gradient, optax update; parameters,
model state and optimizer state donated, as in a training loop) three ways:
the model through the hand rules, the same model with the rules stripped, and
an independent Flax (``flax.linen``) implementation of the identical model
written here, started from the same parameters (copied over) and checked to
give the same loss (evaluation mode and training mode without dropout), the
same gradient and the same updated model state (batch-norm running statistics,
with Flax's biased running variance converted from our unbiased one; recurrent
carries) before it is timed. The memory of each compiled step is XLA's own
account (``compiled.memory_analysis()``): temporaries (what the saved
residuals and intermediate gradients cost) and arguments.

**Timing.** Every program is compiled once, called ``--warmup`` times, then
called in rounds, each round calling every variant once in a rotating order
(so all see the same machine load), each call synchronised with
``block_until_ready``; at least ``--repeats`` rounds and until ``--budget``
seconds have passed. Reported: the median and the interquartile range of the
per-call times, and the median (IQR) of the per-round ratios other / hand
(> 1: the hand rules are faster). ``--quick`` runs every entry at tiny sizes,
5 rounds, compiled without XLA's backend optimisations (3x faster compiles):
a smoke test whose times are not comparable with a full run.

    python scripts/bench.py                         # everything, realistic sizes
    python scripts/bench.py --filter max_pool       # entries whose name contains a text
    python scripts/bench.py --quick --json b.json   # CI sizes, seconds
    python scripts/bench.py --from-json b.json --markdown scripts/BENCH.md

The README's benchmark sections are generated: ``--readme README.md`` replaces what lies between
its lines ``<!-- bench:begin -->`` and ``<!-- bench:end -->`` (the CPU run) or, with ``--section gpu``,
between ``<!-- gpu:begin -->`` and ``<!-- gpu:end -->`` (a GPU run, with the library table) with the
machine line and the tables, from the run just measured or, with ``--from-json``, from a committed
result; a result from the other backend is refused:

    python scripts/bench.py --json scripts/bench_cpu.json --readme README.md   # measure, save, regenerate
    python scripts/bench.py --from-json scripts/bench_cpu.json --readme README.md  # regenerate only
    python scripts/bench.py --json scripts/bench_gpu.json --readme README.md --section gpu  # on a GPU

Flax is the optional ``bench`` extra (``pip install -e ".[bench]"``); without
it the Flax column is skipped. Adding a model is one :class:`ModelEntry`: a
``setup(quick)`` giving parameters, state, a batch, the loss and the
optimizer, and (optionally) a ``twin(setup)`` giving the Flax parameters and
loss plus the maps from our parameters (and updated state) to Flax's.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jdlfs.functional as F
from jdlfs import models
from jdlfs.gradcheck import custom_vjp_count, strip_custom_vjp

try:  # the optional `bench` extra
    import flax
    from flax import linen as nn
except ImportError:  # pragma: no cover - exercised where flax is not installed
    flax = nn = None


# ================================================================ timing
class Timing(NamedTuple):
    warmup: int = 3
    repeats: int = 15  # minimum rounds
    budget: float = 8.0  # keep going until this many seconds have passed ...
    max_repeats: int = 200  # ... or this many rounds


def interleaved(calls: dict[str, Callable[[], Any]], timing: Timing) -> dict[str, list[float]]:
    """Seconds per call of each no-argument callable (each must block until its
    result is ready), called in rounds with the order rotated every round."""
    names = list(calls)
    for _ in range(timing.warmup):
        for n in names:
            calls[n]()
    times = {n: [] for n in names}
    start, r = time.perf_counter(), 0
    while r < timing.max_repeats and (r < timing.repeats or time.perf_counter() - start < timing.budget):
        for n in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            calls[n]()
            times[n].append(time.perf_counter() - t0)
        r += 1
    return times


def _stats_ms(seconds: list[float]) -> dict:
    ms = 1e3 * np.asarray(seconds)
    q25, med, q75 = np.percentile(ms, [25, 50, 75])
    return {"median_ms": med, "q25_ms": q25, "q75_ms": q75, "min_ms": ms.min(), "max_ms": ms.max(), "n": ms.size}


def _ratio(other: list[float], hand: list[float]) -> dict:
    """Per-round ratios other / hand (the two were measured in the same round)."""
    r = np.asarray(other) / np.asarray(hand)
    q25, med, q75 = np.percentile(r, [25, 50, 75])
    return {"median": med, "q25": q25, "q75": q75}


def _memory(compiled) -> dict:
    """XLA's memory account of a compiled program, in bytes."""
    m = compiled.memory_analysis()
    if m is None:  # pragma: no cover - a backend without the analysis
        return {}
    keys = ("temp", "argument", "output", "alias")
    out = {k: int(getattr(m, f"{k}_size_in_bytes")) for k in keys}
    peak = getattr(m, "peak_memory_in_bytes", 0)
    if peak:
        out["peak"] = int(peak)
    return out


def _compile(fn, args, quick: bool, **jit_kwargs):
    """``jax.jit(fn, **jit_kwargs)`` compiled for ``args``; with ``quick``, at XLA's backend
    optimisation level 0 without the expensive LLVM passes (compiles 3x faster; the times are
    then only a smoke test)."""
    lowered = jax.jit(fn, **jit_kwargs).lower(*args)
    fast = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
    return lowered.compile(fast if quick else None)


def draw_like(tree, seed: int = 0):
    """Values for an abstract pytree of parameters/state (``jax.eval_shape`` of an init),
    drawn with numpy, so building a model compiles nothing: scales (``gamma``, ``scale``)
    and variances (``var``) 1, biases/shifts/means 0, every other array LeCun-normal
    (std ``fan_in**-0.5``, fan-in = all axes but the last; embedding tables ``dim**-0.5``).
    The values do not change the work a step does; both sides of a comparison get the same."""
    rng = np.random.default_rng(seed)

    def leaf(path, s):
        name = str(getattr(path[-1], "key", "")) if path else ""
        if name in ("gamma", "scale", "var"):
            return jnp.asarray(np.ones(s.shape, s.dtype))
        if name in ("b", "bias", "beta", "mean") or len(s.shape) < 2:
            return jnp.asarray(np.zeros(s.shape, s.dtype))
        fan_in = s.shape[-1] if name in ("table", "embedding") else int(np.prod(s.shape[:-1]))
        return jnp.asarray(rng.normal(0.0, fan_in**-0.5, s.shape), s.dtype)

    return jax.tree_util.tree_map_with_path(leaf, tree)


def _normal(rng, shape, scale=1.0, dtype=jnp.float32):
    """Benchmark inputs come from numpy: no compilation per shape, as eager ``jax.random`` would."""
    return jnp.asarray(scale * rng.standard_normal(shape), dtype)


def _zeros(*shape):
    return jnp.asarray(np.zeros(shape, np.float32))


def _ones(*shape):
    return jnp.asarray(np.ones(shape, np.float32))


def _ints(rng, shape, high):
    return jnp.asarray(rng.integers(0, high, shape), jnp.int32)


def _size(full, quick, q: bool):
    return quick if q else full


# ================================================================ per-op benchmark
class OpCase(NamedTuple):
    shape: str  # what the sizes are, for the table
    fn: Callable  # fn(*diff, *extra) -> outputs (any pytree)
    diff: tuple  # arrays the backward differentiates
    extra: tuple = ()  # arrays it does not (labels, ids, masks, keys)


class OpEntry(NamedTuple):
    name: str
    build: Callable[[bool], OpCase]  # quick -> case


def _rng(seed=0):
    return np.random.default_rng(seed)


def _conv(stride):
    def build(q):
        k = _rng()
        n, hw, c = _size((128, 32, 64), (4, 8, 8), q)
        x, w = _normal(k, (n, hw, hw, c)), _normal(k, (3, 3, c, c), (9 * c) ** -0.5)
        if stride == 1:
            return OpCase(f"{n}x{hw}x{hw}x{c} -> {c}, 3x3 SAME", lambda x, w, b: F.conv2d(x, w, b), (x, w, _zeros(c)))
        return OpCase(f"{n}x{hw}x{hw}x{c} -> {c}, 3x3/2 SAME", lambda x, w: F.conv2d(x, w, stride=2), (x, w))

    return build


def _pool(fn, label):
    def build(q):
        n, hw, c = _size((128, 32, 64), (4, 8, 8), q)
        return OpCase(f"{n}x{hw}x{hw}x{c} {label}", fn, (_normal(_rng(), (n, hw, hw, c)),))

    return build


def _batch_norm(q):
    k = _rng()
    n, hw, c = _size((128, 32, 64), (4, 8, 8), q)
    x = _normal(k, (n, hw, hw, c))
    return OpCase(f"{n}x{hw}x{hw}x{c} NHWC", lambda x, g, b: F.batch_norm(x, g, b)[0], (x, _ones(c), _zeros(c)))


def _layer_norm(q):
    b, t, d = _size((32, 128, 256), (2, 8, 16), q)
    x = _normal(_rng(), (b, t, d))
    return OpCase(f"{b}x{t}x{d}", F.layer_norm, (x, _ones(d), _zeros(d)))


def _attention(causal):
    def build(q):
        k = _rng()
        b, h, t, d = _size((32, 4, 128, 64), (2, 2, 8, 4), q)
        qkv = tuple(_normal(k, (b, h, t, d)) for _ in range(3))
        shape = f"B={b} H={h} T={t} d={d}"
        if not causal:
            return OpCase(shape, lambda q, k, v: F.attention(q, k, v), qkv)
        return OpCase(
            shape + " causal",
            lambda q, k, v, m: F.attention(q, k, v, mask=m),
            qkv,
            (jnp.asarray(np.tril(np.ones((t, t), bool))),),
        )

    return build


def _xent(full, quick):
    def build(q):
        k = _rng()
        n, c = _size(full, quick, q)
        z, y = _normal(k, (n, c)), _ints(k, (n,), c)
        return OpCase(f"{n}x{c}", lambda z, y: F.softmax_cross_entropy(z, y), (z,), (y,))

    return build


def _recurrent(cell):
    def build(q):
        k = _rng()
        b, t, d, h = _size((64, 100, 64, 256), (2, 5, 4, 8), q)
        g = 4 if cell == "lstm" else 1
        x, h0 = _normal(k, (b, t, d)), _normal(k, (b, h), 0.1)
        w_x, w_h = _normal(k, (d, g * h), d**-0.5), _normal(k, (h, g * h), h**-0.5)
        shape = f"B={b} T={t} in={d} H={h}"
        if cell == "rnn":
            return OpCase(shape, F.rnn, (x, h0, w_x, w_h, _zeros(h)))
        return OpCase(shape, F.lstm, (x, h0, _normal(k, (b, h), 0.1), w_x, w_h, _zeros(4 * h)))

    return build


def _embedding(q):
    k = _rng()
    v, d, b, t = _size((8000, 256, 64, 128), (50, 8, 2, 4), q)
    ids = _ints(k, (b, t), v)
    return OpCase(f"{v}x{d} table, {b}x{t} ids", F.embedding, (_normal(k, (v, d)),), (ids,))


def _linear(q):
    k = _rng()
    m, i, o = _size((4096, 256, 1024), (8, 4, 8), q)
    return OpCase(f"{m}x{i} @ {i}x{o}", F.linear, (_normal(k, (m, i)), _normal(k, (i, o)), _zeros(o)))


def _pointwise(fn, extra_key=False):
    def build(q):
        k = _rng()
        m, d = _size((4096, 1024), (8, 8), q)
        x = _normal(k, (m, d))
        if extra_key:
            return OpCase(f"{m}x{d}", lambda x, key: fn(key, x), (x,), (jax.random.key(1),))
        return OpCase(f"{m}x{d}", fn, (x,))

    return build


OPS: list[OpEntry] = [
    OpEntry("linear", _linear),
    OpEntry("conv2d 3x3", _conv(1)),
    OpEntry("conv2d 3x3 stride 2", _conv(2)),
    OpEntry("max_pool2d 2x2", _pool(F.max_pool2d, "2x2")),
    OpEntry("max_pool2d 3x3/2 SAME", _pool(lambda x: F.max_pool2d(x, 3, 2, "SAME"), "3x3/2 SAME")),
    OpEntry("avg_pool2d 2x2", _pool(F.avg_pool2d, "2x2")),
    OpEntry("batch_norm", _batch_norm),
    OpEntry("layer_norm", _layer_norm),
    OpEntry("attention", _attention(causal=False)),
    OpEntry("attention causal", _attention(causal=True)),
    OpEntry("softmax_cross_entropy 1024x10", _xent((1024, 10), (8, 10))),
    OpEntry("softmax_cross_entropy 4096x8000", _xent((4096, 8000), (8, 50))),
    OpEntry("rnn", _recurrent("rnn")),
    OpEntry("lstm", _recurrent("lstm")),
    OpEntry("embedding", _embedding),
    OpEntry("relu", _pointwise(F.relu)),
    OpEntry("gelu", _pointwise(F.gelu)),
    OpEntry("softmax", _pointwise(F.softmax)),
    OpEntry("dropout 0.1", _pointwise(lambda key, x: F.dropout(key, x, 0.1), extra_key=True)),
]


def _fwd_bwd(fn):
    """The benchmarked program: outputs and the VJP of ``fn`` along ``ct``."""

    def run(diff, extra, ct):
        y, vjp = jax.vjp(lambda *d: fn(*d, *extra), *diff)
        return y, vjp(ct)

    return run


def _rel_diff(a, b) -> float:
    """max over leaves of ||a - b|| / max(||a||, tiny) (NaN anywhere: NaN, which no check passes)."""
    diffs = [0.0]
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        diffs.append(np.linalg.norm(x - y) / max(np.linalg.norm(x), 1e-30))
    return float(np.max(diffs))  # np.max propagates a NaN


class CheckFailed(AssertionError):
    """A benchmark entry whose variants do not compute the same thing: refused before it is timed."""


def rel_tolerance(dtype) -> float:
    """Largest relative difference (:func:`_rel_diff`) accepted between two programs computing the same
    forward and gradient in ``dtype`` in a different order. float32: 1e-4, ~200x the largest difference a
    full-size run measured (5.5e-7, rnn/lstm: a long chain of matmuls; most ops 0-2e-7) and ~1000x float32's
    epsilon, while a wrong or missing term of a rule moves the gradient by far more (percent, typically O(1)).
    bfloat16/float16 (the library comparison): 2e-2, ~5x bfloat16's epsilon 2**-8 (both sides round their
    outputs, gradients and the T x T weights to 8 bits). float64: 1e-10."""
    dtype = jnp.dtype(dtype)
    if dtype == jnp.float64:
        return 1e-10
    return 1e-4 if dtype == jnp.float32 else 2e-2


def _check_close(name: str, what: str, diff: float, dtype) -> None:
    tol = rel_tolerance(dtype)
    if not diff <= tol:  # NaN fails too
        raise CheckFailed(
            f"{name}: {what} differ by {diff:.3g} (relative), more than the {tol:g} allowed for "
            f"{jnp.dtype(dtype).name}: the two programs do not compute the same thing, so timing them compares "
            f"nothing; fix the rule (or the entry) first"
        )


def bench_op(entry: OpEntry, quick: bool, timing: Timing) -> dict:
    """Time one op entry, hand rules vs autodiff of the stripped forward. Refused (:class:`CheckFailed`,
    naming the entry) before timing when the op calls no rule, when stripping leaves one, or when the two
    programs' outputs and gradients differ by more than :func:`rel_tolerance`."""
    case = entry.build(quick)
    out = jax.eval_shape(case.fn, *case.diff, *case.extra)
    rng = _rng(9)
    ct = jax.tree.map(lambda s: _normal(rng, s.shape, dtype=s.dtype), out)
    args = (case.diff, case.extra, ct)
    auto_fn = strip_custom_vjp(case.fn)
    n_rules = custom_vjp_count(case.fn, *case.diff, *case.extra)
    n_left = custom_vjp_count(auto_fn, *case.diff, *case.extra)
    if n_rules < 1 or n_left != 0:
        raise CheckFailed(
            f"{entry.name}: expected hand rules in the op and none once stripped, found {n_rules} and {n_left}"
        )
    compiled = {"hand": _compile(_fwd_bwd(case.fn), args, quick), "autodiff": _compile(_fwd_bwd(auto_fn), args, quick)}
    results = {k: c(*args) for k, c in compiled.items()}
    diff = _rel_diff(results["hand"], results["autodiff"])
    dtype = jnp.result_type(*case.diff)
    _check_close(entry.name, "the hand rule's and autodiff's outputs and gradients", diff, dtype)
    times = interleaved({k: (lambda c=c: jax.block_until_ready(c(*args))) for k, c in compiled.items()}, timing)
    return {
        "name": entry.name,
        "shape": case.shape,
        "custom_vjp_calls": n_rules,
        "grad_rel_diff": diff,
        **{k: _stats_ms(v) for k, v in times.items()},
        "autodiff_over_hand": _ratio(times["autodiff"], times["hand"]),
        "memory": {k: _memory(c) for k, c in compiled.items()},
    }


# ================================================================ per op vs a library kernel (GPU)
class LibraryCase(NamedTuple):
    ours: OpCase  # our op, in our layout
    library: Callable  # library(*ours.diff in the library's layout) -> outputs in the library's layout
    to_library: Callable  # an array in our layout -> the same values in the library's layout (host copy)
    from_library: Callable  # the inverse, for checking the library's outputs and gradients against ours


class LibraryEntry(NamedTuple):
    name: str
    library: str  # what the op is compared with, for the table
    build: Callable[[bool, str], LibraryCase]  # (quick, implementation) -> case
    implementation: str = "cudnn"  # jax.nn's `implementation=`; "xla" runs on any backend (the CPU check)


_NEEDS_BACKEND = {"cudnn": "gpu"}  # implementation -> the only jax backend it runs on


def _swap_heads_and_time(a):
    """(B, H, T, d) <-> (B, T, H, d), through the host: ours is the split-heads layout of
    :func:`jdlfs.functional.split_heads`, jax.nn's is (B, T, N, H). Done outside the timed programs (each
    side gets its inputs and cotangent in its own layout), so the table compares the attention kernels only."""
    return jnp.asarray(np.swapaxes(np.asarray(a), 1, 2))


def _attention_vs_jax_nn(causal: bool) -> Callable:
    def build(q, implementation):
        rng = _rng()
        b, h, t, d = _size((32, 4, 128, 64), (2, 2, 16, 8), q)  # cuDNN needs the head dim a multiple of 8
        qkv = tuple(_normal(rng, (b, h, t, d), dtype=jnp.bfloat16) for _ in range(3))  # cuDNN: fp16/bf16 only
        shape = f"B={b} H={h} T={t} d={d} bf16" + (" causal" if causal else "")
        if causal:
            ours = OpCase(shape, lambda q, k, v, m: F.attention(q, k, v, mask=m), qkv, (F.causal_mask(t),))
        else:
            ours = OpCase(shape, lambda q, k, v: F.attention(q, k, v), qkv)

        def library(q, k, v):
            return jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation=implementation)

        return LibraryCase(ours, library, _swap_heads_and_time, _swap_heads_and_time)

    return build


LIBRARY: list[LibraryEntry] = [
    LibraryEntry("attention vs jax.nn", "jax.nn.dot_product_attention", _attention_vs_jax_nn(causal=False)),
    LibraryEntry("attention causal vs jax.nn", "jax.nn.dot_product_attention", _attention_vs_jax_nn(causal=True)),
]


def bench_library(entry: LibraryEntry, quick: bool, timing: Timing, implementation: str | None = None) -> dict:
    """Time our op against a library kernel (``implementation``, default the entry's: cuDNN flash
    attention), forward + backward along the same cotangent, interleaved as :func:`bench_op`; ratio
    library / hand. Where the implementation cannot run (cuDNN off the GPU backend) the row says so
    (``skipped``) and nothing is measured. Refused (:class:`CheckFailed`) before timing when the two
    outputs and gradients, brought to one layout, differ by more than :func:`rel_tolerance` of the dtype."""
    impl = implementation or entry.implementation
    row: dict = {"name": entry.name, "library_name": f"{entry.library} (implementation={impl!r})"}
    backend, needs = jax.default_backend(), _NEEDS_BACKEND.get(impl)
    if needs is not None and backend != needs:
        return row | {
            "skipped": f"needs a GPU: implementation={impl!r} runs only on jax's {needs!r} backend, "
            f"this run's is {backend!r}"
        }
    case = entry.build(quick, impl)
    ours = case.ours
    out = jax.eval_shape(ours.fn, *ours.diff, *ours.extra)
    rng = _rng(9)
    ct = jax.tree.map(lambda s: _normal(rng, s.shape, dtype=s.dtype), out)
    args = {
        "hand": (ours.diff, ours.extra, ct),
        "library": (tuple(case.to_library(a) for a in ours.diff), (), jax.tree.map(case.to_library, ct)),
    }
    fns = {"hand": _fwd_bwd(ours.fn), "library": _fwd_bwd(case.library)}
    compiled = {k: _compile(fns[k], args[k], quick) for k in fns}
    results = {k: c(*args[k]) for k, c in compiled.items()}
    diff = _rel_diff(results["hand"], jax.tree.map(case.from_library, results["library"]))
    dtype = jnp.result_type(*ours.diff)
    _check_close(entry.name, f"our op's and {row['library_name']}'s outputs and gradients", diff, dtype)
    times = interleaved({k: (lambda k=k: jax.block_until_ready(compiled[k](*args[k]))) for k in compiled}, timing)
    return row | {
        "shape": ours.shape,
        "dtype": jnp.dtype(dtype).name,
        "rel_diff": diff,
        **{k: _stats_ms(v) for k, v in times.items()},
        "library_over_hand": _ratio(times["library"], times["hand"]),
        "memory": {k: _memory(c) for k, c in compiled.items()},
    }


# ================================================================ per-model benchmark
class Setup(NamedTuple):
    """One model to train: ``loss(params, state, batch, key, train, dropout) -> (loss, new_state)``
    (``train``: training mode, e.g. batch statistics; ``dropout``: dropout on, only meaningful
    with ``train``; both static Python bools)."""

    shape: str
    params: Any
    state: Any
    batch: Any
    loss: Callable
    optimizer: optax.GradientTransformation
    config: Any = None  # the model's configuration, for its twin


class Twin(NamedTuple):
    """The Flax implementation: its parameters/state, a loss of :class:`Setup`'s signature,
    ``convert`` mapping a pytree shaped like our parameters (or gradients) to Flax's, and
    ``convert_state(new, old, batch)`` mapping our updated model state (after one training-mode
    forward from ``old`` on ``batch``) to the state the Flax twin should hold then (None: the two
    states are the same pytree)."""

    params: Any
    state: Any
    loss: Callable
    convert: Callable
    convert_state: Callable | None = None


class ModelEntry(NamedTuple):
    name: str
    setup: Callable[[bool], Setup]  # quick -> setup
    twin: Callable[[Setup], Twin] | None = None


class TwinMismatch(CheckFailed):
    """The Flax twin does not compute the same loss, gradient or updated state as our model."""


def _loss_and_grad(loss: Callable, params, state, batch, key):
    """``(eval loss, train loss, train gradient, updated state)`` of ``loss``, dropout off."""
    evaluation = loss(params, state, batch, key, False, False)[0]
    train_loss = lambda p: loss(p, state, batch, key, True, False)
    (train, new_state), grad = jax.value_and_grad(train_loss, has_aux=True)(params)
    return evaluation, train, grad, new_state


def twin_outputs(setup: Setup, twin: Twin, *, quick: bool = False) -> tuple:
    """``(ours, theirs)``: :func:`_loss_and_grad` of our model and of its Flax twin, one compiled program."""

    def both(ours, theirs, batch, key):
        return _loss_and_grad(setup.loss, *ours, batch, key), _loss_and_grad(twin.loss, *theirs, batch, key)

    args = ((setup.params, setup.state), (twin.params, twin.state), setup.batch, jax.random.key(3))
    return _compile(both, args, quick)(*args)


def compare_twin(
    setup: Setup,
    twin: Twin,
    ours,
    theirs,
    *,
    rtol: float = 1e-4,
    grad_rtol: float = 1e-3,
    state_rtol: float = 1e-5,
) -> dict:
    """Refuse (:class:`TwinMismatch`) a twin whose :func:`twin_outputs` differ from ours: the loss (evaluation
    mode, and training mode with dropout off), the gradient (after ``twin.convert``) or the updated model state
    (batch-norm running statistics, recurrent carries; after ``twin.convert_state``); returns the differences."""
    found = {}
    for i, what in enumerate(("eval_loss", "train_loss")):
        lh, lf = float(ours[i]), float(theirs[i])
        found[what] = {"hand": lh, "flax": lf}
        if not (np.isfinite(lh) and abs(lh - lf) <= rtol * max(abs(lh), 1e-3)):
            raise TwinMismatch(f"{what.replace('_', ' ')}: ours {lh!r}, Flax twin {lf!r}")
    found["grad_rel_diff"] = diff = _rel_diff(twin.convert(ours[2]), theirs[2])
    if not diff <= grad_rtol:
        raise TwinMismatch(f"gradient: relative difference {diff:.3g} between ours and the Flax twin")
    if jax.tree.leaves(ours[3]):
        expected = ours[3] if twin.convert_state is None else twin.convert_state(ours[3], setup.state, setup.batch)
        if jax.tree.structure(expected) != jax.tree.structure(theirs[3]):
            raise TwinMismatch(
                f"updated state: ours (converted) is {jax.tree.structure(expected)}, "
                f"the Flax twin's {jax.tree.structure(theirs[3])}"
            )
        found["state_rel_diff"] = diff = _rel_diff(expected, theirs[3])
        if not diff <= state_rtol:
            raise TwinMismatch(f"updated state: relative difference {diff:.3g} between ours and the Flax twin")
    return found


def check_twin(setup: Setup, twin: Twin, *, quick: bool = False, **tolerances) -> dict:
    """:func:`compare_twin` of :func:`twin_outputs`: refuse a twin that differs from our model."""
    return compare_twin(setup, twin, *twin_outputs(setup, twin, quick=quick), **tolerances)


def make_step(loss: Callable, optimizer: optax.GradientTransformation) -> Callable:
    """``step(params, state, opt_state, batch, key) -> (params, state, opt_state, loss)``: one
    ``value_and_grad`` of the training loss (dropout on) and one optax update."""

    def step(params, state, opt_state, batch, key):
        def train_loss(p):
            return loss(p, state, batch, key, True, True)

        (value, new_state), grads = jax.value_and_grad(train_loss, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_state, opt_state, value

    return step


def _strip_loss(loss: Callable) -> Callable:
    """``loss`` with every custom_vjp stripped (train/dropout stay static)."""
    stripped = {}

    def auto(params, state, batch, key, train, dropout):
        if (train, dropout) not in stripped:
            stripped[train, dropout] = strip_custom_vjp(lambda p, s, b, k: loss(p, s, b, k, train, dropout))
        return stripped[train, dropout](params, state, batch, key)

    return auto


def _copy(tree):
    """Fresh device buffers (via the host: an eager jnp.copy would compile a program per shape)."""
    return jax.tree.map(lambda a: jnp.asarray(np.array(a)), tree)


def _optimizer_state(optimizer, params):
    """``optimizer.init(params)`` built from its shapes: every optax state used here (SGD, momentum,
    Adam, AdamW: counts and moment estimates) starts at zero. Eagerly, ``init`` would compile a
    small program per parameter shape."""
    return jax.tree.map(lambda s: jnp.asarray(np.zeros(s.shape, s.dtype)), jax.eval_shape(optimizer.init, params))


def bench_model(entry: ModelEntry, quick: bool, timing: Timing, with_flax: bool = True) -> dict:
    """Time one model's train step three ways. Refused (:class:`CheckFailed`, naming the entry) before
    timing when the model calls no hand rule, when the stripped (autodiff) variant still calls one, when
    the Flax twin differs (:func:`check_twin`), or when the first step's loss of hand and autodiff (same
    parameters, same key, so the same dropout masks) differ by more than :func:`rel_tolerance`."""
    setup = entry.setup(quick)
    key = jax.random.key(1)
    auto_loss = _strip_loss(setup.loss)
    probe = (setup.params, setup.state, setup.batch, key, True, True)  # the training step's loss
    n_rules, n_left = custom_vjp_count(setup.loss, *probe), custom_vjp_count(auto_loss, *probe)
    if n_rules < 1 or n_left != 0:
        raise CheckFailed(
            f"{entry.name}: expected hand rules in the model's loss and none once stripped, "
            f"found {n_rules} and {n_left}"
        )
    variants = {
        "hand": (setup.loss, setup.params, setup.state),
        "autodiff": (auto_loss, setup.params, setup.state),
    }
    row: dict = {"name": entry.name, "shape": setup.shape}
    row["params"] = int(sum(np.size(p) for p in jax.tree.leaves(setup.params)))
    if entry.twin is not None and with_flax and nn is not None:
        twin = entry.twin(setup)
        row["twin_check"] = check_twin(setup, twin, quick=quick)
        variants["flax"] = (twin.loss, twin.params, twin.state)
    compiled, carries = {}, {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*donated buffers.*")
        for k, (loss, params, state) in variants.items():
            carry = (_copy(params), _copy(state), _optimizer_state(setup.optimizer, params))
            step = make_step(loss, setup.optimizer)
            compiled[k] = _compile(step, (*carry, setup.batch, key), quick, donate_argnums=(0, 1, 2))
            carries[k] = carry

    def call(k):
        *carries[k], value = compiled[k](*carries[k], setup.batch, key)
        jax.block_until_ready((carries[k], value))
        return value

    first = {k: float(call(k)) for k in compiled}
    row["first_loss"] = first
    dtype = jnp.result_type(*jax.tree.leaves(setup.params))
    diff = abs(first["autodiff"] - first["hand"]) / max(abs(first["hand"]), 1e-30)
    _check_close(entry.name, "the first train-step losses of hand rules and autodiff", diff, dtype)
    times = interleaved({k: (lambda k=k: call(k)) for k in compiled}, timing)
    row.update({k: _stats_ms(v) for k, v in times.items()})
    for k in compiled:
        if k != "hand":
            row[f"{k}_over_hand"] = _ratio(times[k], times["hand"])
    row["memory"] = {k: _memory(c) for k, c in compiled.items()}
    return row


# ---------------------------------------------------------------- Flax helpers
_FLAX_LEAF = {"w": "kernel", "b": "bias", "gamma": "scale", "beta": "bias", "table": "embedding"}


def flax_names(tree):
    """Our nested parameter dict renamed Flax's way (w -> kernel, gamma -> scale, ...; a list
    ``layers`` -> ``layers_0, layers_1, ...``, linen's names for submodules in a list); layers
    without parameters (empty dicts) dropped. Arrays are shared, not copied."""
    if not isinstance(tree, dict):
        return tree
    out = {}
    for k, v in tree.items():
        if isinstance(v, list):
            out.update({f"{k}_{i}": flax_names(x) for i, x in enumerate(v)})
            continue
        v = flax_names(v)
        if isinstance(v, dict) and not v:
            continue
        out[_FLAX_LEAF.get(k, k) if not isinstance(v, dict) else k] = v
    return out


def _xent_optax(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _linen_classifier_loss(module) -> Callable:
    """Loss of a linen classifier ``module(x, train, dropout)`` with batch-norm
    statistics in the ``batch_stats`` collection (the model state)."""

    def loss(params, state, batch, key, train, dropout):
        x, y = batch
        variables = {"params": params, **({"batch_stats": state} if state else {})}
        rngs = {"dropout": key}
        if train and state:
            logits, updated = module.apply(variables, x, train, dropout, rngs=rngs, mutable=["batch_stats"])
            return _xent_optax(logits, y), updated["batch_stats"]
        return _xent_optax(module.apply(variables, x, train, dropout, rngs=rngs), y), state

    return loss


if nn is not None:

    class FlaxMLP(nn.Module):
        sizes: tuple

        @nn.compact
        def __call__(self, x, train=False, dropout=False):
            for i, n in enumerate(self.sizes[1:], start=1):
                x = nn.Dense(n, name=f"fc{i}")(x)
                if i < len(self.sizes) - 1:
                    x = nn.relu(x)
            return x

    class FlaxLeNet(nn.Module):
        @nn.compact
        def __call__(self, x, train=False, dropout=False):
            x = nn.max_pool(nn.relu(nn.Conv(4, (5, 5), padding="VALID", name="conv1")(x)), (2, 2), (2, 2))
            x = nn.relu(nn.Dense(32, name="fc1")(x.reshape(x.shape[0], -1)))
            return nn.Dense(10, name="fc2")(x)

    class FlaxCifarCNN(nn.Module):
        batch_norm: bool
        rate: float = 0.5

        @nn.compact
        def __call__(self, x, train=False, dropout=False):
            for i, width in enumerate((32, 64, 128), start=1):
                x = nn.Conv(width, (3, 3), padding="SAME", use_bias=not self.batch_norm, name=f"conv{i}")(x)
                if self.batch_norm:
                    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=f"bn{i}")(x)
                x = nn.max_pool(nn.relu(x), (2, 2), (2, 2))
            x = nn.relu(nn.Dense(256, name="fc1")(x.reshape(x.shape[0], -1)))
            x = nn.Dropout(self.rate, deterministic=not (train and dropout))(x)
            return nn.Dense(10, name="fc2")(x)


# ---------------------------------------------------------------- classic models (jdlfs.models.classic)
def _classic(make_model: Callable[[bool], Any], input_shape, batch: int, optimizer, quick_batch: int) -> Callable:
    """Setup for a :func:`jdlfs.layers.serial` classifier; ``make_model(dropout)``
    builds it with or without its dropout layer (same parameters otherwise)."""

    def setup(quick):
        n = quick_batch if quick else batch
        model, no_drop = make_model(True), make_model(False)
        params, state = draw_like(jax.eval_shape(lambda k: model.init(k, (1, *input_shape)), jax.random.key(0)))
        keep = [name for name, _ in no_drop.layers]
        k = _rng(1)
        x, y = _normal(k, (n, *input_shape)), _ints(k, (n,), 10)

        def loss(params, state, batch, key, train, dropout):
            if train and dropout:
                logits, new_state = model.apply(params, state, batch[0], key=key, train=True)
            else:  # the same layers without the dropout layer
                sub = ({n: params[n] for n in keep}, {n: state[n] for n in keep})
                logits, new_sub = no_drop.apply(*sub, batch[0], key=key, train=train)
                new_state = {**state, **new_sub}
            return F.softmax_cross_entropy(logits, batch[1]), new_state

        return Setup(f"batch {n}, input {tuple(input_shape)}", params, state, (x, y), loss, optimizer)

    return setup


def _classic_twin(make_module: Callable[[], Any], batch_norm_sizes: dict | None = None) -> Callable:
    """Twin of a classic model: the linen module ``make_module()`` with our parameters renamed. With
    ``batch_norm_sizes`` (batch-norm layer -> the height = width of its input), the check compares the
    updated running statistics with Flax's convention for the variance (:func:`_flax_running_stats`)."""

    def twin(setup: Setup) -> Twin:
        params, state = _copy(flax_names(setup.params)), _copy(flax_names(setup.state))
        convert_state = _flax_running_stats(batch_norm_sizes) if batch_norm_sizes else _renamed_state
        return Twin(params, state, _linen_classifier_loss(make_module()), flax_names, convert_state)

    return twin


def _renamed_state(new, old, batch):
    return flax_names(new)


def _flax_running_stats(sizes: dict, momentum: float = 0.9) -> Callable:
    """Our updated batch-norm running statistics as Flax's ``BatchNorm`` holds them. The running means
    agree; the running variances do not, by convention: ours (as PyTorch) moves towards the unbiased batch
    variance ``var_u = sum (x - mean)^2 / (m - 1)``, Flax's towards the biased ``var_b = var_u (m - 1) / m``
    (m = N H W values per channel). From ``new = momentum old + (1 - momentum) var_u`` Flax's is
    ``momentum old + (new - momentum old) (m - 1) / m``. Without this correction the check refuses the twin
    (the difference, ``(1 - momentum) var_u / m``, is 4e-4 relative for the 8x8 third layer at batch 4)."""

    def convert(new, old, batch):
        n = batch[0].shape[0]
        out = dict(new)
        for layer, hw in sizes.items():
            m, prev = n * hw * hw, np.asarray(old[layer]["var"], np.float64)
            var = momentum * prev + (np.asarray(new[layer]["var"], np.float64) - momentum * prev) * (m - 1) / m
            out[layer] = {**new[layer], "var": var}
        return flax_names(out)

    return convert


def _cifar(batch_norm):
    return _classic(
        lambda drop: models.cifar_cnn(batch_norm=batch_norm, dropout=0.5 if drop else 0.0),
        (32, 32, 3),
        128,
        optax.sgd(0.01, momentum=0.9, nesterov=True),
        quick_batch=4,
    )


# ---------------------------------------------------------------- character language models (jdlfs.models.rnn_lm)
def _char_lm(cell: str) -> Callable:
    def setup(quick):
        from jdlfs.models import rnn_lm

        b, t, v, e, h = _size((64, 128, 96, 64, 512 if cell == "rnn" else 256), (2, 6, 11, 4, 8), quick)
        config = rnn_lm.Config(vocab_size=v, embed_dim=e, hidden=h, cell=cell)
        params = draw_like(jax.eval_shape(lambda k: rnn_lm.init(k, config), jax.random.key(0)))
        k = _rng(1)
        ids = _ints(k, (b, t + 1), v)

        def loss(params, state, batch, key, train, dropout):
            logits, new_state = rnn_lm.apply(params, state, batch[0], config=config, key=key, train=train)
            return F.softmax_cross_entropy(logits, batch[1]), new_state

        state = jax.tree.map(
            lambda a: jnp.asarray(0.1 * k.standard_normal(a.shape), a.dtype),
            jax.eval_shape(lambda: rnn_lm.init_state(config, b)),
        )
        batch = (ids[:, :-1], ids[:, 1:])
        return Setup(f"batch {b}x{t}, V={v} E={e} H={h}", params, state, batch, loss, optax.adam(2e-3), config)

    return setup


def _char_lm_twin(setup: Setup) -> Twin:
    cell, v, e, h = setup.config.cell, setup.config.vocab_size, setup.config.embed_dim, setup.config.hidden

    class FlaxCharLM(nn.Module):
        @nn.compact
        def __call__(self, ids, carry):
            x = nn.Embed(v, e, name="embed")(ids)
            flax_cell = nn.SimpleCell(h, name="cell") if cell == "rnn" else nn.OptimizedLSTMCell(h, name="cell")
            carry, hs = nn.RNN(flax_cell, name="rnn")(x, initial_carry=carry, return_carry=True)
            return nn.Dense(v, name="readout")(hs), carry

    def convert(p):  # our fused gate matrices -> Flax's per-gate Dense layers (a linear map: also for gradients)
        c = p["cell"]
        if cell == "rnn":
            flax_cell = {"i": {"kernel": c["w_x"], "bias": c["b"]}, "h": {"kernel": c["w_h"]}}
        else:
            split = lambda a: np.split(np.asarray(a), 4, axis=-1)  # gates i, f, g, o
            flax_cell = {f"i{g}": {"kernel": k} for g, k in zip("ifgo", split(c["w_x"]))}
            flax_cell |= {f"h{g}": {"kernel": k, "bias": b} for g, k, b in zip("ifgo", split(c["w_h"]), split(c["b"]))}
        return {
            "embed": {"embedding": p["embed"]["table"]},
            "cell": flax_cell,
            "readout": {"kernel": p["readout"]["w"], "bias": p["readout"]["b"]},
        }

    module = FlaxCharLM()

    def loss(params, state, batch, key, train, dropout):
        carry = state["h"] if cell == "rnn" else (state["c"], state["h"])
        logits, carry = module.apply({"params": params}, batch[0], carry)
        new_state = {"h": carry} if cell == "rnn" else {"h": carry[1], "c": carry[0]}
        return _xent_optax(logits, batch[1]), new_state

    return Twin(_copy(convert(setup.params)), setup.state, loss, convert)


# ---------------------------------------------------------------- Transformer (jdlfs.models.transformer)
def _transformer(quick):
    import dataclasses

    from jdlfs.models import transformer

    b, t, v, d, heads, layers, ff = _size((32, 64, 8000, 256, 4, 3, 1024), (2, 6, 23, 8, 2, 1, 16), quick)
    config = transformer.Config(
        src_vocab=v, tgt_vocab=v, d_model=d, num_heads=heads, num_layers=layers, d_ff=ff, dropout=0.1,
        max_len=t, share_embeddings=True,
    )  # fmt: skip
    quiet = dataclasses.replace(config, dropout=0.0)
    params = draw_like(jax.eval_shape(lambda k: transformer.init(k, config), jax.random.key(0)))
    k = _rng(1)

    def padded(length):  # ids in [1, V), then padding (id 0) after a random length >= t/2
        ids = k.integers(1, v, (b, length))
        ids[np.arange(length)[None, :] >= k.integers(length // 2, length + 1, (b, 1))] = 0
        return jnp.asarray(ids, jnp.int32)

    tgt = padded(t + 1)

    def loss(params, state, batch, key, train, dropout):
        src, tgt_in, tgt_out = batch
        cfg = config if (train and dropout) else quiet
        logits = transformer.apply(params, cfg, src, tgt_in, key=key, train=train)
        return F.softmax_cross_entropy(logits, tgt_out, mask=tgt_out != 0, label_smoothing=0.1), state

    shape = f"batch {b}x{t}, V={v} D={d} H={heads} L={layers}+{layers} d_ff={ff}"
    return Setup(shape, params, {}, (padded(t), tgt[:, :-1], tgt[:, 1:]), loss, optax.adam(1e-3), config)


def _sinusoids(t, d) -> np.ndarray:
    """``(t, d)`` sinusoidal positions: sin at even features, cos at odd, wavelengths ``10000^(2i/d)``."""
    pos, i = np.arange(t)[:, None], np.arange(d)[None, :]
    angle = pos / 10000.0 ** ((i - i % 2) / d)
    return np.where(i % 2 == 0, np.sin(angle), np.cos(angle))


def _positions(t, d):
    return jnp.asarray(_sinusoids(t, d), jnp.float32)


def _transformer_twin(setup: Setup) -> Twin:
    cfg = setup.config
    v, d, heads, rate, ff = cfg.tgt_vocab, cfg.d_model, cfg.num_heads, cfg.dropout, cfg.d_ff

    def attention(q, k, v, mask):  # (B, T, D) each -> (B, Tq, D), linen's attention over heads
        split = lambda x: x.reshape(*x.shape[:2], heads, -1)
        o = nn.dot_product_attention(split(q), split(k), split(v), mask=mask)
        return o.reshape(*o.shape[:2], -1)

    class Block(nn.Module):
        cross: bool

        @nn.compact
        def __call__(self, x, memory, self_mask, cross_mask, deterministic):
            drop = nn.Dropout(rate, deterministic=deterministic)
            ln = lambda name: nn.LayerNorm(epsilon=1e-5, name=name)
            h = ln("ln1")(x)
            q, k_, v_ = jnp.split(nn.Dense(3 * d, name="qkv")(h), 3, axis=-1)
            name = "self_attn" if self.cross else "attn"
            x = x + drop(nn.Dense(d, name=f"{name}_proj")(attention(q, k_, v_, self_mask)))
            if self.cross:
                h = ln("ln2")(x)
                k_, v_ = jnp.split(nn.Dense(2 * d, name="kv")(memory), 2, axis=-1)
                x = x + drop(nn.Dense(d, name="cross_proj")(attention(nn.Dense(d, name="q")(h), k_, v_, cross_mask)))
            h = ln("ln3" if self.cross else "ln2")(x)
            return x + drop(nn.Dense(d, name="fc2")(nn.relu(nn.Dense(ff, name="fc1")(h))))

    class FlaxTransformer(nn.Module):
        @nn.compact
        def __call__(self, src, tgt, deterministic):
            embed = nn.Embed(v, d, name="embed")
            pe = _positions(max(src.shape[1], tgt.shape[1]), d)
            drop = nn.Dropout(rate, deterministic=deterministic)
            real = (src != 0)[:, None, None, :]
            causal = jnp.tril(jnp.ones((tgt.shape[1], tgt.shape[1]), bool))
            x = drop(embed(src) * np.sqrt(d) + pe[: src.shape[1]])
            for i in range(cfg.num_layers):
                x = Block(False, name=f"enc_{i}")(x, None, real, None, deterministic)
            memory = nn.LayerNorm(epsilon=1e-5, name="enc_ln_f")(x)
            y = drop(embed(tgt) * np.sqrt(d) + pe[: tgt.shape[1]])
            for i in range(cfg.decoder_layers):
                y = Block(True, name=f"dec_{i}")(y, memory, causal, real, deterministic)
            y = nn.LayerNorm(epsilon=1e-5, name="dec_ln_f")(y)
            return embed.attend(y) + self.param("out_bias", nn.initializers.zeros, (v,))

    def lin(p):
        return {"kernel": p["w"], "bias": p["b"]}

    def ln(p):
        return {"scale": p["gamma"], "bias": p["beta"]}

    def block(p, cross):
        a = p["self_attn" if cross else "attn"]
        out = {"ln1": ln(p["ln1"]), "qkv": lin(a["qkv"]), ("self_attn" if cross else "attn") + "_proj": lin(a["proj"])}
        out |= {"fc1": lin(p["mlp"]["fc1"]), "fc2": lin(p["mlp"]["fc2"])}
        if cross:
            c = p["cross_attn"]
            out |= {"ln2": ln(p["ln2"]), "ln3": ln(p["ln3"]), "q": lin(c["q"]), "kv": lin(c["kv"])}
            out["cross_proj"] = lin(c["proj"])
        else:
            out["ln2"] = ln(p["ln2"])
        return out

    def convert(p):
        out = {"embed": {"embedding": p["embed"]["table"]}, "out_bias": p["out"]["b"]}
        out |= {f"enc_{i}": block(b, False) for i, b in enumerate(p["encoder"]["layers"])}
        out |= {f"dec_{i}": block(b, True) for i, b in enumerate(p["decoder"]["layers"])}
        out |= {"enc_ln_f": ln(p["encoder"]["ln_f"]), "dec_ln_f": ln(p["decoder"]["ln_f"])}
        return out

    module = FlaxTransformer()

    def loss(params, state, batch, key, train, dropout):
        src, tgt_in, tgt_out = batch
        logits = module.apply({"params": params}, src, tgt_in, not (train and dropout), rngs={"dropout": key})
        target = optax.smooth_labels(jax.nn.one_hot(tgt_out, v), 0.1)
        mask = (tgt_out != 0).astype(logits.dtype)
        return jnp.sum(optax.softmax_cross_entropy(logits, target) * mask) / jnp.sum(mask), state

    return Twin(_copy(convert(setup.params)), {}, loss, convert)


# ---------------------------------------------------------------- masked autoencoder (jdlfs.models.mae)
def _decay_matrices(params):
    """AdamW weight decay on matrices only (not biases, LayerNorm, the mask token), as experiments/mae_cifar.py."""
    return jax.tree.map(lambda a: a.ndim >= 2, params)


def _mae(quick):
    """The pretraining step of experiments/mae_cifar.py's default model: 4x4 patches of 32x32x3 images, 75% of the
    64 hidden, the encoder (D=128, 4 blocks, 4 heads, d_ff 512) sees the 16 visible, the decoder (64, 2, 4, 256)
    predicts every patch, MSE on the hidden ones with per-patch normalised targets; AdamW b2=0.95, decay 0.05 on
    matrices. The masks are drawn inside the step from its key (as in training); the images are standardised
    floats (the experiment's uint8 -> float standardisation and random flips are data, not model)."""
    from jdlfs.models import mae

    n, size, patch, d, depth, heads, ff, dd, d_depth, d_heads, d_ff = _size(
        (256, 32, 4, 128, 4, 4, 512, 64, 2, 4, 256), (2, 8, 2, 8, 1, 2, 16, 8, 1, 2, 16), quick
    )
    config = mae.Config(
        image_size=size, patch_size=patch, d_model=d, depth=depth, num_heads=heads, d_ff=ff,
        decoder_d_model=dd, decoder_depth=d_depth, decoder_num_heads=d_heads, decoder_d_ff=d_ff,
        mask_ratio=0.75, positions="sincos", norm_pix_loss=True,
    )  # fmt: skip
    params = draw_like(jax.eval_shape(lambda k: mae.init(k, config), jax.random.key(0)))
    k = _rng(1)
    params["decoder"]["mask_token"] = _normal(k, (dd,), 0.02)  # as mae.init (draw_like would give a 1-D array 0)
    images = _normal(k, (n, size, size, config.channels))  # standardised pixels

    def loss(params, state, batch, key, train, dropout):  # no dropout in the MAE; key: the masks
        return mae.loss(params, config, batch, key), state

    optimizer = optax.adamw(1.5e-3, b1=0.9, b2=0.95, weight_decay=0.05, mask=_decay_matrices)
    shape = (
        f"batch {n}, {size}x{size}x{config.channels}, {patch}x{patch} patches, {config.num_keep}/"
        f"{config.num_patches} visible; enc D={d} L={depth} H={heads} d_ff={ff}, dec {dd}/{d_depth}/{d_heads}/{d_ff}"
    )
    return Setup(shape, params, {}, images, loss, optimizer, config)


def _mae_twin(setup: Setup) -> Twin:
    """The MAE in linen as the paper's code writes it: masks from uniform noise and ``argsort`` (the same key
    gives the same masks), ``take_along_axis`` gathers, targets normalised by each patch's mean and unbiased
    variance (torch's ``var``), loss = per-patch MSE weighted by the 0/1 mask."""
    cfg = setup.config
    if cfg.positions != "sincos":
        raise ValueError(f"the MAE twin implements positions='sincos' only, got {cfg.positions!r}")
    p, grid, length, keep = cfg.patch_size, cfg.grid, cfg.num_patches, cfg.num_keep
    act = nn.relu if cfg.activation == "relu" else (lambda x: nn.gelu(x, approximate=False))

    def sincos_2d(dim):  # patch (i, j): the first dim/2 features encode row i, the last dim/2 column j
        pe = _sinusoids(grid, dim // 2)
        return jnp.asarray(np.concatenate([np.repeat(pe, grid, axis=0), np.tile(pe, (grid, 1))], axis=1), jnp.float32)

    def patches(x):  # (N, H, W, C) -> (N, L, p*p*C): row-major patches, each flattened (pi, pj, c)
        n, h, w, c = x.shape
        x = x.reshape(n, h // p, p, w // p, p, c)
        return jnp.einsum("nhpwqc->nhwpqc", x).reshape(n, length, p * p * c)

    class Block(nn.Module):  # pre-LN ViT block
        width: int
        heads: int
        ff: int

        @nn.compact
        def __call__(self, x):
            ln = lambda name: nn.LayerNorm(epsilon=cfg.ln_eps, name=name)
            q, k, v = jnp.split(nn.Dense(3 * self.width, name="qkv")(ln("ln1")(x)), 3, axis=-1)
            heads = lambda a: a.reshape(*a.shape[:2], self.heads, -1)
            o = nn.dot_product_attention(heads(q), heads(k), heads(v))
            x = x + nn.Dense(self.width, name="proj")(o.reshape(x.shape))
            return x + nn.Dense(self.width, name="fc2")(act(nn.Dense(self.ff, name="fc1")(ln("ln2")(x))))

    class FlaxMAE(nn.Module):
        @nn.compact
        def __call__(self, images, ids_keep, ids_restore):
            d, dd = cfg.d_model, cfg.decoder_d_model
            x = nn.Dense(d, name="patch_embed")(patches(images)) + sincos_2d(d)
            x = jnp.take_along_axis(x, ids_keep[..., None], axis=1)  # the visible tokens only
            for i in range(cfg.depth):
                x = Block(d, cfg.num_heads, cfg.d_ff, name=f"enc_{i}")(x)
            x = nn.Dense(dd, name="dec_embed")(nn.LayerNorm(epsilon=cfg.ln_eps, name="enc_ln_f")(x))
            token = self.param("mask_token", nn.initializers.normal(0.02), (dd,))
            x = jnp.concatenate([x, jnp.broadcast_to(token, (x.shape[0], length - keep, dd))], axis=1)
            x = jnp.take_along_axis(x, ids_restore[..., None], axis=1) + sincos_2d(dd)  # unshuffle
            for i in range(cfg.decoder_depth):
                x = Block(dd, cfg.decoder_num_heads, cfg.decoder_d_ff, name=f"dec_{i}")(x)
            x = nn.LayerNorm(epsilon=cfg.ln_eps, name="dec_ln_f")(x)
            return nn.Dense(cfg.patch_dim, name="pred")(x)

    module = FlaxMAE()

    def loss(params, state, images, key, train, dropout):
        ids_shuffle = jnp.argsort(jax.random.uniform(key, (images.shape[0], length)), axis=1)
        ids_restore = jnp.argsort(ids_shuffle, axis=1)
        pred = module.apply({"params": params}, images, ids_shuffle[:, :keep], ids_restore)
        target = patches(images)
        if cfg.norm_pix_loss:
            # the paper's torch `target.var(dim=-1)`: the unbiased variance
            mean, var = target.mean(axis=-1, keepdims=True), target.var(axis=-1, keepdims=True, ddof=1)
            target = (target - mean) / (var + 1e-6) ** 0.5
        hidden = (ids_restore >= keep).astype(pred.dtype)  # 1 where the patch is hidden
        return jnp.sum(jnp.mean(jnp.square(pred - target), axis=-1) * hidden) / jnp.sum(hidden), state

    def lin(q):
        return {"kernel": q["w"], "bias": q["b"]}

    def ln(q):
        return {"scale": q["gamma"], "bias": q["beta"]}

    def block(b):
        out = {"ln1": ln(b["ln1"]), "qkv": lin(b["attn"]["qkv"]), "proj": lin(b["attn"]["proj"])}
        return out | {"ln2": ln(b["ln2"]), "fc1": lin(b["mlp"]["fc1"]), "fc2": lin(b["mlp"]["fc2"])}

    def convert(q):
        dec = q["decoder"]
        out = {"patch_embed": lin(q["patch_embed"]), "enc_ln_f": ln(q["encoder"]["ln_f"])}
        out |= {f"enc_{i}": block(b) for i, b in enumerate(q["encoder"]["layers"])}
        out |= {"dec_embed": lin(dec["embed"]), "mask_token": dec["mask_token"], "dec_ln_f": ln(dec["ln_f"])}
        out |= {f"dec_{i}": block(b) for i, b in enumerate(dec["layers"])}
        return out | {"pred": lin(dec["pred"])}

    return Twin(_copy(convert(setup.params)), {}, loss, convert)


MODELS: list[ModelEntry] = [
    ModelEntry(
        "MNIST MLP 784-128-10",
        _classic(lambda drop: models.mlp((784, 128, 10)), (784,), 64, optax.sgd(0.1), quick_batch=8),
        _classic_twin(lambda: FlaxMLP((784, 128, 10))),
    ),
    ModelEntry(
        "LeNet",
        _classic(lambda drop: models.lenet(), (28, 28, 1), 64, optax.adamw(1e-3, weight_decay=0.1), quick_batch=4),
        _classic_twin(lambda: FlaxLeNet()),
    ),
    ModelEntry(
        "CIFAR CNN + BN",
        _cifar(True),
        _classic_twin(lambda: FlaxCifarCNN(batch_norm=True), batch_norm_sizes={"bn1": 32, "bn2": 16, "bn3": 8}),
    ),
    ModelEntry("CIFAR CNN plain", _cifar(False), _classic_twin(lambda: FlaxCifarCNN(batch_norm=False))),
    ModelEntry("char RNN", _char_lm("rnn"), _char_lm_twin),
    ModelEntry("char LSTM", _char_lm("lstm"), _char_lm_twin),
    ModelEntry("Transformer", _transformer, _transformer_twin),
    ModelEntry("MAE", _mae, _mae_twin),
]


# ================================================================ report
def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    dev = jax.devices()[0]
    return {
        "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M"),
        "backend": jax.default_backend(),
        "device": getattr(dev, "device_kind", str(dev)),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "jax": jax.__version__,
        "flax": getattr(flax, "__version__", None),
        "optax": optax.__version__,
    }


def _num(v: float) -> str:
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}" if v >= 1 else f"{v:.3f}"


def _ms(s: dict) -> str:
    return f"{_num(s['median_ms'])} ({_num(s['q25_ms'])}-{_num(s['q75_ms'])})"


def _x(r: dict | None) -> str:
    if r is None:
        return "-"
    flag = "" if r["median"] >= 1.0 else (" ~" if r["q75"] >= 1.0 else " !")
    return f"{r['median']:.2f} ({r['q25']:.2f}-{r['q75']:.2f}){flag}"


def _mb(mem: dict, key: str) -> str:
    return f"{mem[key] / 2**20:.2f}" if mem and key in mem else "-"


def tables(result: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of the op, model and memory tables."""
    out = []
    if result["ops"]:
        rows = [
            [r["name"], r["shape"], _ms(r["hand"]), _ms(r["autodiff"]), _x(r["autodiff_over_hand"])]
            for r in result["ops"]
        ]
        head = ["op", "size", "hand ms", "autodiff ms", "autodiff / hand"]
        out.append(("Per op: jitted forward + backward, median (IQR)", head, rows))
    measured = [r for r in result.get("library", []) if "skipped" not in r]
    if measured:
        rows = [
            [
                r["name"],
                r["shape"],
                r["library_name"],
                _ms(r["hand"]),
                _ms(r["library"]),
                _x(r["library_over_hand"]),
                _mb(r["memory"]["hand"], "temp"),
                _mb(r["memory"]["library"], "temp"),
            ]
            for r in measured
        ]
        head = ["op", "size", "library", "hand ms", "library ms", "library / hand", "temp hand", "temp library"]
        out.append(("Per op vs a library kernel: jitted forward + backward, median (IQR); temporaries MiB", head, rows))
    if result["models"]:
        rows = [
            [
                r["name"],
                r["shape"],
                _ms(r["hand"]),
                _ms(r["autodiff"]),
                _ms(r["flax"]) if "flax" in r else "-",
                _x(r["autodiff_over_hand"]),
                _x(r.get("flax_over_hand")),
            ]
            for r in result["models"]
        ]
        head = ["model", "size", "hand ms", "autodiff ms", "Flax ms", "autodiff / hand", "Flax / hand"]
        out.append(("Per model: one jitted train step, median (IQR)", head, rows))
        rows = []
        for r in result["models"]:
            m = r["memory"]
            rows.append(
                [r["name"]]
                + [_mb(m.get(v), "temp") for v in ("hand", "autodiff", "flax")]
                + [_mb(m.get(v), "argument") for v in ("hand", "autodiff", "flax")]
            )
        head = ["model", "temp hand", "temp autodiff", "temp Flax", "args hand", "args autodiff", "args Flax"]
        out.append(("Memory of the compiled train step (XLA memory_analysis, MiB)", head, rows))
    return out


def not_measured(result: dict) -> list[str]:
    """One line per library comparison the run listed but could not measure, with the reason."""
    rows = result.get("library", [])
    return [f"{r['name']} (vs {r['library_name']}): {r['skipped']}" for r in rows if "skipped" in r]


def _describe(result: dict) -> str:
    m = result["machine"]
    load = ", ".join(f"{x:.1f}" for x in m["load_average"] or [])
    return (
        f"{m['backend']} backend ({m['device']}; {m['cpu']}, {m['cpu_count']} cores, load average "
        f"{load} at the start), jax {m['jax']}, flax {m['flax']}, {m['date_utc']} UTC"
        + (" -- QUICK sizes" if result.get("quick") else "")
    )


def text_tables(result: dict) -> str:
    lines = [_describe(result)]
    for title, head, rows in tables(result):
        w = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
        lines += ["", title, "  ".join(h.ljust(n) for h, n in zip(head, w))]
        lines += ["  ".join(str(c).ljust(n) for c, n in zip(row, w)) for row in rows]
    lines += ["", *(f"not measured: {line}" for line in not_measured(result))] if not_measured(result) else []
    lines.append("\nratio > 1: the hand rules are faster; ~ below 1 within the IQR; ! slower beyond the IQR")
    return "\n".join(lines)


def markdown(result: dict) -> str:
    lines = [f"Measured on {_describe(result)}.", ""]
    for title, head, rows in tables(result):
        lines += [f"**{title}**", "", "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        lines.append("")
    for line in not_measured(result):
        lines += [f"Not measured: {line}.", ""]
    lines.append("Ratios other / hand: > 1 the hand rules are faster; `~` below 1 but within the IQR, `!` beyond it.")
    return "\n".join(lines) + "\n"


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return x


def selected(entries, pattern: str):
    """Entries whose name contains one of the comma-separated, case-insensitive ``pattern`` texts."""
    wanted = [p.strip().lower() for p in pattern.split(",") if p.strip()]
    return [e for e in entries if not wanted or any(p in e.name.lower() for p in wanted)]


def run(
    *,
    quick=False,
    pattern="",
    timing: Timing | None = None,
    with_flax=True,
    library_implementation: str | None = None,
    log=sys.stderr,
) -> dict:
    if timing is None:
        timing = Timing(warmup=1, repeats=5, budget=0.0) if quick else Timing()
    result = {"machine": machine(), "quick": quick, "timing": timing._asdict(), "ops": [], "library": [], "models": []}
    for e in selected(OPS, pattern):
        result["ops"].append(bench_op(e, quick, timing))
        print(f"  {e.name}: {_x(result['ops'][-1]['autodiff_over_hand'])}", file=log, flush=True)
    for e in selected(LIBRARY, pattern):
        r = bench_library(e, quick, timing, library_implementation)
        result["library"].append(r)
        print(f"  {e.name}: {r['skipped'] if 'skipped' in r else _x(r['library_over_hand'])}", file=log, flush=True)
    for e in selected(MODELS, pattern):
        r = bench_model(e, quick, timing, with_flax)
        result["models"].append(r)
        print(f"  {e.name}: {_x(r['autodiff_over_hand'])}, Flax {_x(r.get('flax_over_hand'))}", file=log, flush=True)
    return _jsonable(result)


# ================================================================ the README's benchmark section
class ReadmeError(ValueError):
    """A file without the markers of the benchmark section (or with them twice, or out of order)."""


def markers(section: str = "bench") -> tuple[str, str]:
    """The comment lines around a generated section: ``<!-- bench:begin -->`` ... ``<!-- bench:end -->``."""
    return f"<!-- {section}:begin -->", f"<!-- {section}:end -->"


def _section_span(text: str, path, section: str) -> tuple[int, int]:
    """Offsets of what lies between the section's two markers in ``text`` (the contents of ``path``)."""
    begin, end = markers(section)
    n_begin, n_end = text.count(begin), text.count(end)
    if n_begin != 1 or n_end != 1 or text.index(begin) > text.index(end):
        order = " (the end line first)" if n_begin == n_end == 1 else ""
        raise ReadmeError(
            f"{path}: the generated benchmark section must lie between one line {begin} and, after it, one line "
            f"{end}; found {n_begin} and {n_end}{order}. Add the two lines where the tables belong."
        )
    return text.index(begin) + len(begin), text.index(end)


def section_backend_mismatch(section: str, backend: str) -> str | None:
    """Why a result measured on jax's ``backend`` does not belong in the README section ``section``
    (None if it does): ``gpu`` holds GPU runs only, ``bench`` (the CPU section) no GPU run; other
    sections take any."""
    if section == "gpu" and backend != "gpu":
        return f"--section gpu takes a result measured on the gpu backend, this one is from {backend!r}"
    if section == "bench" and backend == "gpu":
        return "the bench section holds the CPU tables: put a gpu-backend result in --section gpu"
    return None


def check_readme(path, section: str = "bench") -> None:
    """Raise (naming ``path``) unless ``path`` can take the section: run before a long measurement."""
    _section_span(Path(path).read_text(encoding="utf-8"), path, section)


def update_readme(path, result: dict, source: str, section: str = "bench") -> None:
    """Replace what lies between the section's markers in ``path`` with :func:`markdown` of ``result``,
    under a comment saying where it came from (``source``); the rest of the file is kept byte for byte."""
    text = Path(path).read_text(encoding="utf-8")
    start, stop = _section_span(text, path, section)
    note = f"<!-- generated by scripts/bench.py from {source}; regenerate it (--readme), do not edit it here -->"
    Path(path).write_text(f"{text[:start]}\n{note}\n\n{markdown(result)}\n{text[stop:]}", encoding="utf-8")


def load_result(path) -> dict:
    """An earlier ``--json`` result; a file that is not one is refused with an error naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            result = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not a JSON file ({e})") from None
    if not (isinstance(result, dict) and {"machine", "ops", "models"} <= result.keys()):
        raise ValueError(f"{path}: not a result of scripts/bench.py --json (it needs the keys machine, ops, models)")
    try:
        markdown(result)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ValueError(f"{path}: an incomplete scripts/bench.py result ({type(e).__name__}: {e})") from None
    return result


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="tiny CI sizes and few repetitions (seconds)")
    p.add_argument("--filter", default="", help="only entries whose name contains this text (comma: any of several)")
    p.add_argument("--json", default=None, help="write the results to this JSON file")
    p.add_argument("--markdown", default=None, help="write the tables as Markdown to this file")
    p.add_argument(
        "--readme",
        default=None,
        help="replace the text between the lines <!-- SECTION:begin --> and <!-- SECTION:end --> of this file "
        "(e.g. README.md) with the machine and the tables as Markdown",
    )
    p.add_argument("--section", default="bench", help="the SECTION name of the --readme markers")
    p.add_argument(
        "--from-json", default=None, help="measure nothing: print (and --markdown, --readme) an earlier --json run"
    )
    p.add_argument("--repeats", type=int, default=None, help="minimum interleaved rounds per entry")
    p.add_argument("--budget", type=float, default=None, help="seconds of rounds per entry (at least --repeats)")
    p.add_argument("--no-flax", action="store_true", help="skip the Flax twins")
    p.add_argument(
        "--library-impl",
        choices=("cudnn", "xla"),
        default=None,
        help="jax.nn.dot_product_attention implementation the library rows compare against (default cudnn, "
        "measured only on a GPU; xla runs anywhere: a check of the comparison itself)",
    )
    args = p.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        p.error(f"--repeats must be >= 1 (rounds per entry), got {args.repeats}")
    if args.budget is not None and not 0 <= args.budget < math.inf:
        p.error(f"--budget must be a finite number of seconds >= 0, got {args.budget}")
    for flag in ("json", "markdown"):  # before measuring: a long run must not end in a file it cannot write
        path = getattr(args, flag)
        if path and path != args.from_json:
            parent = Path(path).resolve().parent
            if not parent.is_dir():
                p.error(f"--{flag} {path}: the directory {parent} does not exist")
            if Path(path).is_dir() or not os.access(parent, os.W_OK):
                p.error(f"--{flag} {path}: cannot write a file there")
    if args.readme:  # before measuring: a long run must not end in a README it cannot write
        try:
            check_readme(args.readme, args.section)
        except OSError as e:
            p.error(f"--readme {args.readme}: {e.strerror or e}")
        except ReadmeError as e:
            p.error(str(e))
        if not args.from_json and (why := section_backend_mismatch(args.section, jax.default_backend())):
            p.error(f"--readme {args.readme}: {why}")
    if args.from_json:
        measuring = {
            "--quick": args.quick,
            "--filter": args.filter,
            "--no-flax": args.no_flax,
            "--repeats": args.repeats is not None,
            "--budget": args.budget is not None,
            "--library-impl": args.library_impl is not None,
        }
        measuring = [flag for flag, given in measuring.items() if given]
        if measuring:
            p.error(f"--from-json renders an earlier run and measures nothing: drop {', '.join(measuring)}")
        try:
            result = load_result(args.from_json)
        except OSError as e:
            p.error(f"--from-json {args.from_json}: {e.strerror or e}")
        except ValueError as e:
            p.error(str(e))
        if args.readme and (why := section_backend_mismatch(args.section, result["machine"].get("backend"))):
            p.error(f"--readme {args.readme}: {args.from_json}: {why}")
        source = args.from_json
    else:
        timing = Timing(warmup=1, repeats=5, budget=0.0) if args.quick else Timing()
        if args.repeats is not None:
            timing = timing._replace(repeats=args.repeats)
        if args.budget is not None:
            timing = timing._replace(budget=args.budget)
        if not (selected(OPS, args.filter) or selected(LIBRARY, args.filter) or selected(MODELS, args.filter)):
            p.error(f"--filter {args.filter!r} matches no op, library comparison or model")
        result = run(
            quick=args.quick,
            pattern=args.filter,
            timing=timing,
            with_flax=not args.no_flax,
            library_implementation=args.library_impl,
        )
        source = args.json or "a run not saved as JSON"
    print(text_tables(result))
    if args.json and args.json != args.from_json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
            f.write("\n")
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write(markdown(result))
    if args.readme:
        update_readme(args.readme, result, source, args.section)
        print(f"updated the {args.section} section of {args.readme}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
