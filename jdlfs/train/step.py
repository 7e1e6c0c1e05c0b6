"""The train step: ``jax.value_and_grad`` of an objective, then an optax update.

The gradient flows only through :mod:`jdlfs.functional`'s hand-written rules
(the model and the loss are built from them); optax turns gradients into
updates. A frozen part of a model (a linear probe on a frozen encoder) is a
matter of which parameters the optimizer updates -- e.g.
``optax.multi_transform({"train": optax.adam(1e-3), "frozen": optax.set_to_zero()},
labels)`` -- not of a second training loop: with ``set_to_zero`` the frozen
parameters stay bit-identical and XLA drops their unused gradients.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class TrainState(NamedTuple):
    params: Any
    state: Any  # model state (batch-norm running statistics, ...)
    opt_state: Any
    step: jax.Array  # int32 scalar, number of updates so far


def init_train_state(params, state, optimizer: optax.GradientTransformation) -> TrainState:
    return TrainState(params, state, optimizer.init(params), jnp.zeros((), jnp.int32))


def make_train_step(objective: Callable, optimizer: optax.GradientTransformation) -> Callable:
    """``step(ts, batch, key) -> (ts, metrics)``, pure (jit it, or let
    :func:`jdlfs.train.fit` do it): one ``value_and_grad`` of
    ``objective(params, state, batch, key)`` and one optimizer update."""
    update = make_update(objective, optimizer)

    def train_step(ts: TrainState, batch, key):
        ts, _, metrics = update(ts, batch, key)
        return ts, metrics

    return train_step


def make_update(objective: Callable, optimizer: optax.GradientTransformation) -> Callable:
    """Like :func:`make_train_step` but ``update(ts, batch, key) -> (ts, loss,
    metrics)``, with the loss the objective returned (before the update)."""

    def update(ts: TrainState, batch, key):
        def loss_of(params):
            return objective(params, ts.state, batch, key)

        (loss, (new_state, metrics)), grads = jax.value_and_grad(loss_of, has_aux=True)(ts.params)
        updates, opt_state = optimizer.update(grads, ts.opt_state, ts.params)
        params = optax.apply_updates(ts.params, updates)
        return TrainState(params, new_state, opt_state, ts.step + 1), loss, metrics

    return update


def make_scan_steps(train_step: Callable) -> Callable:
    """Jitted ``run(ts, batches, key) -> (ts, metrics)``: ``train_step`` over
    stacked batches (every leaf ``(steps, B, ...)``, e.g. from
    :func:`jdlfs.data.epoch_arrays`) in one ``lax.scan``, step key
    ``fold_in(key, ts.step)``; ``metrics`` stacked per step.

    :func:`jdlfs.train.fit` does not use it: XLA:CPU runs convolutions 20-60x
    slower inside a while loop (``scripts/bench_train.py`` measures both).
    It is here for models where a scan measures faster, and as the reference
    the benchmark compares against.
    """

    @jax.jit
    def run(ts, batches, key):
        def body(ts, batch):
            return train_step(ts, batch, jax.random.fold_in(key, ts.step))

        return jax.lax.scan(body, ts, batches)

    return run
