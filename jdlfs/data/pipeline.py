"""Input pipeline: normalisation, key-driven shuffling, batching, splitting.

All randomness comes from an explicit ``jax.random`` key: the same key always
gives the same order, on any machine, and nothing here touches a global RNG.

Typical use::

    x_train, y_train = load("cifar10", "train")
    norm = fit_normalizer(x_train)                      # fit on train only
    (x_tr, y_tr), (x_val, y_val) = train_val_split(k_split, x_train, y_train, 0.1)
    x_tr, y_tr = jax.device_put(x_tr), jax.device_put(y_tr)   # once

    def body(params, batch):
        x, y = batch
        return step(params, norm.apply(x), y), None

    for epoch in range(epochs):
        xb, yb = epoch_arrays(jax.random.fold_in(k_data, epoch), (x_tr, y_tr), 128)
        params, _ = jax.lax.scan(body, params, (xb, yb))

Keeping images uint8 on the device and normalising each batch inside the
jitted step (``norm.apply`` works on traced arrays; :class:`Normalizer` is a
pytree) uses a quarter of the memory of normalising the whole set up front.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Normalizer", "batches", "epoch_arrays", "fit_normalizer", "shuffle", "train_val_split"]

ArrayLike = Any  # numpy array or jax array


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class Normalizer:
    """Per-channel standardisation ``(x / 255 - mean) / std``.

    Attributes:
      mean: float32 ``(C,)``, per-channel mean of the training pixels on the
        [0, 1] scale.
      std: float32 ``(C,)``, per-channel (population) standard deviation on
        the same scale.

    A registered pytree, so it can be passed into jitted functions.
    """

    mean: ArrayLike
    std: ArrayLike

    def apply(self, images: ArrayLike) -> ArrayLike:
        """Standardise ``images`` (uint8 ``(..., C)``, any leading shape).

        Returns float32 of the same shape: a numpy array for numpy input, a
        jax array for jax input (also inside ``jit``).
        """
        if images.shape[-1] != self.mean.shape[-1]:
            raise ValueError(
                f"images have {images.shape[-1]} channels (shape {images.shape}), "
                f"the normalizer was fitted on {self.mean.shape[-1]}"
            )
        xp = jnp if isinstance(images, jax.Array) else np
        x = xp.asarray(images).astype(xp.float32) / xp.float32(255.0)
        return (x - xp.asarray(self.mean, xp.float32)) / xp.asarray(self.std, xp.float32)


def fit_normalizer(images: ArrayLike, *, chunk_rows: int = 1 << 20) -> Normalizer:
    """Fit a :class:`Normalizer` on training images.

    Args:
      images: uint8 ``(N, H, W, C)`` (numpy or jax).
      chunk_rows: pixels processed per chunk; the statistics are computed in
        float64 in two passes (mean, then squared deviations) over chunks, so
        CIFAR-10's 150 M values never need a 1.2 GB float64 copy.

    Returns:
      A Normalizer with float32 ``mean`` and ``std`` of shape ``(C,)``,
      computed on the pixels scaled to [0, 1].

    Raises:
      ValueError: ``images`` not 4-D uint8, empty, or a channel with zero
        variance (standardising it would divide by zero).
    """
    x = np.asarray(images)
    if x.ndim != 4 or x.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (N, H, W, C), got {x.dtype}{x.shape}")
    if x.size == 0:
        raise ValueError(f"images is empty (shape {x.shape})")
    flat = x.reshape(-1, x.shape[-1])
    n = flat.shape[0]
    total = np.zeros(flat.shape[1], np.float64)
    for start in range(0, n, chunk_rows):
        total += np.sum(flat[start : start + chunk_rows], axis=0, dtype=np.float64)
    mean = total / n / 255.0
    sq = np.zeros_like(total)
    for start in range(0, n, chunk_rows):
        d = flat[start : start + chunk_rows].astype(np.float64) / 255.0 - mean
        sq += np.einsum("ij,ij->j", d, d)
    std = np.sqrt(sq / n)
    if np.any(std == 0):
        raise ValueError(f"channel(s) {np.flatnonzero(std == 0).tolist()} of images are constant: std is 0")
    return Normalizer(mean=mean.astype(np.float32), std=std.astype(np.float32))


def _length(arrays: tuple[ArrayLike, ...]) -> int:
    """Common leading dimension of ``arrays``; ValueError if none or they differ."""
    if not arrays:
        raise ValueError("expected at least one array")
    lengths = [a.shape[0] if a.ndim else None for a in arrays]
    if None in lengths or len(set(lengths)) != 1:
        raise ValueError(f"arrays must share their leading dimension, got shapes {[a.shape for a in arrays]}")
    return lengths[0]


def _take(a: ArrayLike, idx: ArrayLike) -> ArrayLike:
    """``a[idx]`` along axis 0, staying numpy for concrete numpy inputs."""
    if isinstance(a, jax.Array) or isinstance(idx, jax.core.Tracer):
        return jnp.take(a, idx, axis=0)
    return np.asarray(a)[np.asarray(idx)]


def shuffle(key: jax.Array, *arrays: ArrayLike) -> tuple[ArrayLike, ...]:
    """Permute several arrays with one shared permutation.

    Args:
      key: a ``jax.random`` key.
      *arrays: arrays with the same leading dimension ``N`` (numpy or jax).

    Returns:
      A tuple, one entry per input, each ``array[perm]`` with ``perm =
      jax.random.permutation(key, N)``; numpy inputs stay numpy.
    """
    n = _length(arrays)
    perm = jax.random.permutation(key, n)
    return tuple(_take(a, perm) for a in arrays)


def num_examples(data: Any, name: str = "data") -> int:
    """The common leading (example) dimension of every array in the pytree ``data``."""
    leaves = jax.tree.leaves(data)
    if not leaves:
        raise ValueError(f"{name} holds no arrays")
    sizes = {np.shape(a)[0] if np.ndim(a) else None for a in leaves}
    if None in sizes or len(sizes) != 1:
        shapes = [tuple(np.shape(a)) for a in leaves]
        raise ValueError(f"every array in {name} needs the same leading dimension (the example axis), got {shapes}")
    return sizes.pop()


def batches(
    key: jax.Array | None,
    data: Any,
    batch_size: int,
    *,
    drop_remainder: bool = True,
) -> Iterator[Any]:
    """Iterate over one epoch in minibatches.

    Args:
      key: ``jax.random`` key fixing the order, or ``None`` for the stored
        order (evaluation).
      data: a batch pytree of arrays sharing their leading dimension ``N``
        (e.g. ``(images, labels)``, ``{"src": ..., "tgt": ...}``, or one
        array); numpy or jax.
      batch_size: examples per batch (> 0).
      drop_remainder: drop the last ``N % batch_size`` examples (so every
        batch has the same shape) instead of yielding a smaller last batch.

    Yields:
      pytrees of the structure of ``data`` whose arrays have leading
      dimension ``B``, of the input's array type; each example appears at
      most once per epoch (exactly once unless dropped as remainder).
    """
    n = num_examples(data)
    if int(batch_size) != batch_size or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    stop = n - n % batch_size if drop_remainder else n
    order = None if key is None else np.asarray(jax.random.permutation(key, n))
    for start in range(0, stop, batch_size):
        end = min(start + batch_size, stop)
        if order is None:
            yield jax.tree.map(lambda a, s=start, e=end: a[s:e], data)
        else:
            idx = order[start:end]
            yield jax.tree.map(lambda a, i=idx: _take(a, i), data)


@functools.partial(jax.jit, static_argnames=("batch_size",))
def epoch_arrays(key: jax.Array | None, data: Any, batch_size: int) -> Any:
    """One shuffled epoch as stacked batches, ready for ``lax.scan``.

    One permutation, one gather, one reshape, jitted (``batch_size`` is static;
    each new ``N`` / ``batch_size`` compiles once). Pass arrays that already
    live on the device (``jax.device_put`` once) to avoid a host-to-device copy
    per epoch. (:func:`jdlfs.train.fit` does not scan its epoch -- XLA:CPU's
    convolutions are far slower inside a while loop -- but gathers each batch
    inside its step; this is for models where a scan measures faster.)

    Args:
      key: ``jax.random`` key for the order, or ``None`` for the stored order.
      data: a batch pytree of arrays ``(N, ...)`` (e.g. ``(images, labels)``),
        any dtype (keep uint8 and normalise per batch).
      batch_size: examples per batch; ``N % batch_size`` examples (a different
        random subset each epoch) are dropped.

    Returns:
      The pytree of ``data`` with every array reshaped to ``(N // batch_size,
      batch_size, ...)``, same dtypes as the inputs.

    Raises:
      ValueError: mismatched leading dimensions, or ``batch_size`` not in
        ``1..N``.
    """
    n = num_examples(data)
    if batch_size <= 0 or batch_size > n:
        raise ValueError(f"batch_size must be in 1..{n} (the number of examples), got {batch_size}")
    num_batches = n // batch_size
    used = num_batches * batch_size
    if key is None:
        picked = jax.tree.map(lambda a: a[:used], data)
    else:
        idx = jax.random.permutation(key, n)[:used]
        picked = jax.tree.map(lambda a: jnp.take(a, idx, axis=0), data)
    return jax.tree.map(lambda a: a.reshape(num_batches, batch_size, *a.shape[1:]), picked)


def train_val_split(
    key: jax.Array, images: ArrayLike, labels: ArrayLike, val_fraction: float
) -> tuple[tuple[ArrayLike, ArrayLike], tuple[ArrayLike, ArrayLike]]:
    """Randomly split off a validation set.

    Args:
      key: ``jax.random`` key for the split.
      images: ``(N, ...)``; labels: ``(N,)``; numpy or jax.
      val_fraction: fraction in (0, 1) of examples for validation; the count
        is ``round(N * val_fraction)``.

    Returns:
      ``((train_images, train_labels), (val_images, val_labels))``, disjoint,
      together a permutation of the input, same array types as the input.

    Raises:
      ValueError: ``val_fraction`` outside (0, 1) or leaving an empty side.
    """
    n = _length((images, labels))
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n_val = int(round(n * val_fraction))
    if n_val == 0 or n_val == n:
        raise ValueError(f"val_fraction={val_fraction} of {n} examples leaves an empty train or validation set")
    x, y = shuffle(key, images, labels)
    return (x[n_val:], y[n_val:]), (x[:n_val], y[:n_val])
