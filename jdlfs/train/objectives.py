"""Objectives: what one training step minimises and what evaluation counts.

An **objective** is ``objective(params, state, batch, key) -> (loss, (new_state,
metrics))``: ``batch`` is any pytree of arrays with a leading batch axis,
``loss`` the scalar that is differentiated, ``metrics`` a dict of **sums** plus
a ``"count"`` (the Flax WMT convention: means are taken only when a number is
reported, by :func:`summarize`, so sums from several batches or devices simply
add). An **eval function** is ``eval_fn(params, state, batch, *, weights=None)
-> metric sums``; ``weights`` is a per-example float weight (1 for a real
example, 0 for the padding the evaluator adds to fill the last batch), passed
explicitly by the trainer, never guessed from a signature.

A :class:`Task` pairs the two (and an optional host-side ``check`` of the data).
Two tasks cover the models of this project:

* :func:`classification` -- ``batch = (inputs, labels)``, integer labels ``(B,)``:
  loss, accuracy and (in evaluation) the confusion matrix.
* :func:`sequence` -- ``batch = (inputs, labels)``, integer labels ``(B, T)``
  with an optional ``pad_id``: per-token cross-entropy over the real tokens,
  token accuracy and bits per token. A character language model, a
  Transformer with teacher forcing (``inputs = (src, tgt_in)``,
  ``labels = tgt_out``) need nothing else.

``model`` is a :class:`~jdlfs.layers.Layer` or any function with its apply
signature ``apply(params, state, inputs, *, key=None, train=False) -> (logits,
new_state)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from .. import functional as F
from ..layers import Layer

Objective = Callable[..., tuple[jax.Array, tuple[Any, dict]]]
EvalFn = Callable[..., dict]


class Task(NamedTuple):
    """An objective, its evaluation, and an optional host-side data check.

    ``check(data, name)`` is called by :func:`jdlfs.train.fit` on the training
    and test data before anything is compiled (e.g. labels in range) and
    raises ``ValueError`` naming ``name``.
    """

    objective: Objective
    evaluate: EvalFn | None = None
    check: Callable[[Any, str], None] | None = None


def summarize(sums: dict) -> dict:
    """Metric sums -> reported values: every scalar divided by ``count``
    (``loss``, ``accuracy``, ``bits_per_token`` become means), arrays (the
    confusion matrix) kept as totals, ``count`` kept."""
    sums = jax.device_get(sums)
    count = float(sums["count"])
    out = {}
    for k, v in sums.items():
        v = np.asarray(v)
        if k == "count":
            out[k] = int(v) if float(v).is_integer() else float(v)
        elif v.ndim == 0:
            out[k] = float(v) / count if count else float("nan")
        else:
            out[k] = v
    return out


def _apply_fn(model) -> Callable:
    if isinstance(model, Layer):
        return model.apply
    if callable(model):
        return model
    raise TypeError(f"model must be a jdlfs.layers.Layer or an apply function, got {type(model).__name__}")


def _static_float(name: str, v: float) -> float:
    if isinstance(v, jax.Array) or not isinstance(v, (int, float)) or isinstance(v, bool):
        raise TypeError(f"{name} must be a Python float (static configuration), got {type(v).__name__}")
    return float(v)


def _label_leaf(data, name: str):
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise ValueError(f"{name} must be a pair (inputs, labels), got {type(data).__name__}")
    return np.asarray(data[1]) if not isinstance(data[1], jax.Array) else data[1]


def _check_labels(num_classes: int | None, ndim: int, what: str, pad_id: int | None = None):
    def check(data, name):
        labels = _label_leaf(data, name)
        if not jnp.issubdtype(labels.dtype, jnp.integer):
            raise TypeError(f"{name} labels must be integer {what}, got dtype {labels.dtype}")
        if labels.ndim != ndim:
            raise ValueError(
                f"{name} labels must have shape {'(N,)' if ndim == 1 else '(N, T)'} ({what}), got {tuple(labels.shape)}"
            )
        if not labels.size:
            return
        values = np.asarray(labels)
        real = values if pad_id is None else values[values != pad_id]
        bad = (real < 0) if num_classes is None else ((real < 0) | (real >= num_classes))
        if np.any(bad):
            span = "[0, inf)" if num_classes is None else f"[0, {num_classes})"
            extra = "" if pad_id is None else f" (pad_id {pad_id} aside)"
            raise ValueError(
                f"{name} has {int(np.sum(bad))} labels outside {span}{extra} "
                f"(min {int(real.min())}, max {int(real.max())})"
            )

    return check


# ---------------------------------------------------------------- classification
def classification(
    model,
    *,
    num_classes: int | None = None,
    preprocess: Callable | None = None,
    augment: Callable | None = None,
    label_smoothing: float = 0.0,
    loss_fn: Callable | None = None,
) -> Task:
    """Classification with integer labels: ``batch = (inputs, labels)``.

    * ``preprocess(inputs)`` maps raw inputs (e.g. uint8 images) to the model's
      input inside the compiled step (training and evaluation).
    * ``augment(key, inputs)`` (training only) is applied to the raw inputs
      before ``preprocess``, with its own key split from the step's key.
    * ``loss_fn(logits, labels, *, mask)`` -> mean loss; default
      :func:`jdlfs.functional.softmax_cross_entropy` with ``label_smoothing``.

    Training metrics: ``loss`` (the minimised loss), ``accuracy``, ``count``.
    Evaluation metrics: ``loss`` (plain cross-entropy, no smoothing),
    ``accuracy``, ``confusion`` (``K x K``, rows true class, columns
    predicted), ``count``. ``num_classes`` defaults to the model's output width
    and is checked against it; the host-side ``check`` refuses labels outside
    ``[0, num_classes)`` (they would add zero loss and could not be placed in
    the confusion matrix).
    """
    apply = _apply_fn(model)
    label_smoothing = _static_float("label_smoothing", label_smoothing)
    if loss_fn is not None and label_smoothing:
        raise ValueError("label_smoothing applies to the default loss; pass either loss_fn or label_smoothing")
    prep = preprocess if preprocess is not None else (lambda x: x)

    def train_loss(logits, labels, mask):
        if loss_fn is not None:
            return loss_fn(logits, labels, mask=mask)
        return F.softmax_cross_entropy(logits, labels, mask=mask, label_smoothing=label_smoothing)

    def eval_loss(logits, labels, mask):
        if loss_fn is not None:
            return loss_fn(logits, labels, mask=mask)
        return F.softmax_cross_entropy(logits, labels, mask=mask)

    def _logits(params, state, inputs, key, train):
        logits, new_state = apply(params, state, prep(inputs), key=key, train=train)
        chex.assert_rank(logits, 2, custom_message="classification expects the model to output logits (B, K)")
        if num_classes is not None and logits.shape[-1] != num_classes:
            raise ValueError(f"the model outputs {logits.shape[-1]} logits but num_classes={num_classes}")
        return logits, new_state

    def _sums(loss, logits, labels, weights):
        w = jnp.ones(labels.shape, jnp.float32) if weights is None else weights.astype(jnp.float32)
        count = jnp.sum(w)
        correct = jnp.sum(w * (jnp.argmax(logits, -1) == labels))
        return {"loss": loss.astype(jnp.float32) * count, "accuracy": correct, "count": count}, w

    def objective(params, state, batch, key, *, weights=None):
        inputs, labels = batch
        if augment is not None:
            key, k_aug = jax.random.split(key)
            inputs = augment(k_aug, inputs)
        logits, new_state = _logits(params, state, inputs, key, True)
        loss = train_loss(logits, labels, weights)
        return loss, (new_state, _sums(loss, logits, labels, weights)[0])

    def evaluate(params, state, batch, *, weights=None):
        inputs, labels = batch
        logits, _ = _logits(params, state, inputs, None, False)
        k = logits.shape[-1]
        valid = (labels >= 0) & (labels < k)
        sums, w = _sums(eval_loss(logits, labels, weights), logits, labels, weights)
        pred = jnp.argmax(logits, -1)
        conf = (
            jnp.zeros((k, k), jnp.int32)
            .at[jnp.where(valid, labels, 0), pred]
            .add(jnp.where(valid, w, 0).astype(jnp.int32))
        )
        return {**sums, "confusion": conf}

    return Task(objective, evaluate, _check_labels(num_classes, 1, "class ids"))


# ---------------------------------------------------------------- sequences
def sequence(
    model,
    *,
    pad_id: int | None = None,
    vocab_size: int | None = None,
    label_smoothing: float = 0.0,
    preprocess: Callable | None = None,
) -> Task:
    """Per-token classification: ``batch = (inputs, labels)`` with labels
    ``(B, T)`` token ids and logits ``(B, T, V)``.

    Positions whose label is ``pad_id`` carry no loss and no gradient and do
    not count; the loss is the mean over the real tokens of the batch. The
    host-side ``check`` refuses labels outside ``[0, vocab_size)`` (negative
    ones when ``vocab_size`` is not given), ``pad_id`` aside: such a label
    would add zero loss yet count, making the loss look better than it is.
    Metrics (training and evaluation): ``loss`` (nats per token; evaluation
    without label smoothing), ``accuracy`` (token accuracy),
    ``bits_per_token`` (= loss / ln 2: bits per character for a character
    model), ``count`` (real tokens).
    """
    apply = _apply_fn(model)
    label_smoothing = _static_float("label_smoothing", label_smoothing)
    if pad_id is not None and (isinstance(pad_id, bool) or not isinstance(pad_id, (int, np.integer))):
        raise TypeError(f"pad_id must be a Python int or None, got {type(pad_id).__name__}")
    prep = preprocess if preprocess is not None else (lambda x: x)

    def _run(params, state, batch, key, train, weights, smoothing):
        inputs, labels = batch
        logits, new_state = apply(params, state, prep(inputs), key=key, train=train)
        chex.assert_rank([logits, labels], [3, 2], custom_message="sequence expects logits (B, T, V), labels (B, T)")
        chex.assert_equal_shape_prefix(
            [logits, labels], 2, custom_message="sequence: logits (B, T, V) must match labels (B, T)"
        )
        mask = jnp.ones(labels.shape, jnp.float32)
        if pad_id is not None:
            mask = mask * (labels != pad_id)
        if weights is not None:
            mask = mask * weights.astype(jnp.float32)[:, None]
        loss = F.softmax_cross_entropy(logits, labels, mask=mask, label_smoothing=smoothing)
        count = jnp.sum(mask)
        nll = loss if smoothing == 0.0 else jax.lax.stop_gradient(F.softmax_cross_entropy(logits, labels, mask=mask))
        sums = {
            "loss": loss.astype(jnp.float32) * count,
            "accuracy": jnp.sum(mask * (jnp.argmax(logits, -1) == labels)),
            "bits_per_token": nll.astype(jnp.float32) * count / math.log(2.0),
            "count": count,
        }
        return loss, new_state, sums

    def objective(params, state, batch, key, *, weights=None):
        loss, new_state, sums = _run(params, state, batch, key, True, weights, label_smoothing)
        return loss, (new_state, sums)

    def evaluate(params, state, batch, *, weights=None):
        return _run(params, state, batch, None, False, weights, 0.0)[2]

    return Task(objective, evaluate, _check_labels(vocab_size, 2, "token ids", pad_id))
