"""Padded batches of token ids with few distinct shapes, and windows for truncated BPTT.

* :func:`pad_to` -- a list of id sequences -> one ``(N, length)`` int32 array.
* :func:`bucket_batches` -- length-bucketed, padded, shuffled batches: every
  batch is ``(batch_size, L)`` with ``L`` one of ``bucket_lengths``, so a
  jitted step compiles at most ``len(bucket_lengths)`` times. Parallel
  fields (source and target sentences) are bucketed together.
* :func:`lm_windows` -- one long id stream -> ``batch_size`` parallel streams
  cut into consecutive windows, for a language model trained with truncated
  backpropagation through time that carries its hidden state from window
  ``k`` to window ``k + 1``.

All outputs are numpy int32 arrays (``jnp.asarray`` / ``jax.device_put``
them); all randomness comes from an explicit ``jax.random`` key.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import numpy as np

from jdlfs.text.specials import PAD_ID

__all__ = ["DEFAULT_BUCKETS", "bucket_batches", "bucket_of", "lm_windows", "pad_to"]

#: Default bucket lengths of :func:`bucket_batches`.
DEFAULT_BUCKETS = (16, 32, 64, 128)
_INT32 = np.iinfo(np.int32)


def _int_seq(seq: Any, what: str) -> np.ndarray:
    a = np.asarray(seq)
    if a.ndim != 1:
        raise ValueError(f"{what} must be a 1-D sequence of ids, got shape {a.shape}")
    if a.size == 0:
        return np.zeros(0, np.int32)
    if a.dtype == bool or a.dtype.kind not in "iu":
        raise TypeError(f"{what} must hold integer ids, got dtype {a.dtype}")
    if a.min() < _INT32.min or a.max() > _INT32.max:
        raise ValueError(f"{what} holds ids outside the int32 range")
    return a.astype(np.int32)


def _int_arg(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _pad_id(pad_id: Any) -> int:
    if isinstance(pad_id, bool) or not isinstance(pad_id, (int, np.integer)) or not _INT32.min <= pad_id <= _INT32.max:
        raise ValueError(f"pad_id must be an int32 integer, got {pad_id!r}")
    return int(pad_id)


def _sequences(seqs: Any, name: str) -> list[np.ndarray]:
    if isinstance(seqs, (str, bytes)) or not isinstance(seqs, Sequence) and not hasattr(seqs, "__len__"):
        raise TypeError(f"{name} must be a list of id sequences, got {type(seqs).__name__}")
    return [_int_seq(s, f"{name}[{i}]") for i, s in enumerate(seqs)]


def pad_to(seqs: Sequence[Sequence[int]], length: int, pad_id: int = PAD_ID, *, truncate: bool = False) -> np.ndarray:
    """Stack id sequences into a fixed-length, right-padded int32 array.

    Args:
      seqs: ``N`` sequences of integer ids (lists or 1-D arrays, any integer dtype).
      length: the output's second dimension (>= 0).
      pad_id: the fill value.
      truncate: cut longer sequences to ``length`` instead of refusing them.

    Returns:
      int32 ``(N, length)``: row ``i`` is ``seqs[i]`` followed by ``pad_id``.

    Raises:
      ValueError: a sequence longer than ``length`` (without ``truncate``),
        bad ``length`` / ``pad_id``. TypeError: non-integer ids.
    """
    length = _int_arg("length", length, 0)
    pad_id = _pad_id(pad_id)
    rows = _sequences(seqs, "seqs")
    out = np.full((len(rows), length), pad_id, np.int32)
    for i, r in enumerate(rows):
        if len(r) > length and not truncate:
            raise ValueError(f"seqs[{i}] has {len(r)} ids, more than length={length} (pass truncate=True to cut)")
        n = min(len(r), length)
        out[i, :n] = r[:n]
    return out


def bucket_of(length: int, bucket_lengths: Sequence[int] = DEFAULT_BUCKETS) -> int | None:
    """The smallest bucket length >= ``length``, or ``None`` if it exceeds them all."""
    for b in bucket_lengths:
        if length <= b:
            return b
    return None


def _check_buckets(bucket_lengths: Any) -> tuple[int, ...]:
    try:
        buckets = tuple(bucket_lengths)
    except TypeError:
        raise ValueError(f"bucket_lengths must be increasing positive ints, got {bucket_lengths!r}") from None
    positive = all(not isinstance(b, bool) and isinstance(b, (int, np.integer)) and b >= 1 for b in buckets)
    if not buckets or not positive or any(a >= b for a, b in itertools.pairwise(buckets)):
        raise ValueError(f"bucket_lengths must be strictly increasing positive ints, got {bucket_lengths!r}")
    return tuple(int(b) for b in buckets)


def bucket_batches(
    key: jax.Array | None,
    sequences: Sequence[Sequence[int]] | tuple[Sequence[Sequence[int]], ...],
    batch_size: int,
    bucket_lengths: Sequence[int] = DEFAULT_BUCKETS,
    pad_id: int = PAD_ID,
    *,
    overflow: str = "error",
    remainder: str = "pad",
    return_indices: bool = False,
) -> Iterator[Any]:
    """One epoch of length-bucketed, padded batches.

    Each example goes to the smallest bucket length ``L >= `` its length (for
    several fields: the longest of its fields), and is padded to ``L`` with
    ``pad_id``. Batches hold examples of one bucket only.

    Args:
      key: ``jax.random`` key: the examples are permuted (so each bucket's
        batches are random) and the order of all batches is permuted; the same
        key gives the same epoch. ``None``: no shuffling -- buckets in
        increasing length, examples in input order (evaluation).
      sequences: a list of ``N`` id sequences, or a **tuple** of such lists
        (parallel fields of ``N`` examples each, e.g. ``(src, tgt)``), which
        are bucketed together and padded to the same ``L``.
      batch_size: rows per batch (> 0).
      bucket_lengths: strictly increasing padded lengths.
      pad_id: the fill value (:data:`~jdlfs.text.PAD_ID` = 0 by default).
      overflow: what to do with an example longer than the largest bucket:
        ``"error"`` (default) raises a ValueError naming it; ``"truncate"``
        cuts every field to the largest bucket length (keeping the head).
      remainder: the last, partial batch of each bucket: ``"pad"`` (default)
        fills it up with rows of ``pad_id`` (index -1), so every batch is
        exactly ``(batch_size, L)``; ``"drop"`` leaves its examples out of
        this epoch (a different subset each epoch when shuffled); ``"keep"``
        yields it smaller (``(n, L)``, more shapes).
      return_indices: also yield the int32 ``(rows,)`` positions of the
        batch's examples in ``sequences`` (-1 for fill rows), e.g. to put
        decoded outputs back in corpus order.

    Yields:
      ``batch`` -- an int32 ``(rows, L)`` array -- for a single field, or a
      tuple of them (one per field, same ``L``); ``(batch, indices)`` with
      ``return_indices``. Every example appears exactly once per epoch
      (unless ``remainder="drop"``), and every ``L`` is one of
      ``bucket_lengths``.

    Raises:
      ValueError: fields of different lengths, an over-long example with
        ``overflow="error"``, bad sizes or options. TypeError: non-integer ids
        or a tuple whose items are not lists of sequences.
    """
    batch_size = _int_arg("batch_size", batch_size, 1)
    buckets = _check_buckets(bucket_lengths)
    pad_id = _pad_id(pad_id)
    if overflow not in ("error", "truncate"):
        raise ValueError(f"overflow must be 'error' or 'truncate', got {overflow!r}")
    if remainder not in ("pad", "drop", "keep"):
        raise ValueError(f"remainder must be 'pad', 'drop' or 'keep', got {remainder!r}")
    single = not isinstance(sequences, tuple)
    fields_in = (sequences,) if single else sequences
    if not fields_in:
        raise ValueError("sequences is an empty tuple: pass a list of sequences or a tuple of such lists")
    fields = []
    for f, field in enumerate(fields_in):
        name = "sequences" if single else f"sequences[{f}]"
        if not single and len(field) and np.ndim(field[0]) == 0:
            raise TypeError(
                f"{name}[0] is a single id, not a sequence: a tuple passed as `sequences` means "
                "parallel fields, each a list of sequences (pass one field as a list)"
            )
        fields.append(_sequences(field, name))
    n = len(fields[0])
    if any(len(f) != n for f in fields):
        raise ValueError(f"the fields of sequences hold different numbers of examples: {[len(f) for f in fields]}")
    lengths = np.array([max(len(f[i]) for f in fields) for i in range(n)], dtype=np.int64)
    too_long = np.flatnonzero(lengths > buckets[-1])
    if too_long.size and overflow == "error":
        i = int(too_long[0])
        raise ValueError(
            f"example {i} has {int(lengths[i])} ids, more than the largest bucket {buckets[-1]} "
            f"({too_long.size} such examples; pass overflow='truncate' or a larger bucket)"
        )
    bucket_index = np.searchsorted(np.array(buckets), np.minimum(lengths, buckets[-1]))

    if key is None:
        order, batch_key = np.arange(n), None
    else:
        perm_key, batch_key = jax.random.split(key)
        order = np.asarray(jax.random.permutation(perm_key, n))
    plan: list[tuple[int, np.ndarray]] = []  # (bucket length, example indices)
    for b, length in enumerate(buckets):
        members = order[bucket_index[order] == b]
        for start in range(0, len(members), batch_size):
            chunk = members[start : start + batch_size]
            if len(chunk) < batch_size and remainder == "drop":
                continue
            plan.append((length, chunk))
    if batch_key is not None and plan:
        plan = [plan[i] for i in np.asarray(jax.random.permutation(batch_key, len(plan)))]

    for length, chunk in plan:
        rows = batch_size if remainder == "pad" else len(chunk)
        indices = np.full(rows, -1, np.int32)
        indices[: len(chunk)] = chunk
        arrays = []
        for field in fields:
            a = np.full((rows, length), pad_id, np.int32)
            for r, i in enumerate(chunk):
                seq = field[i][:length]
                a[r, : len(seq)] = seq
            arrays.append(a)
        batch = arrays[0] if single else tuple(arrays)
        yield (batch, indices) if return_indices else batch


def lm_windows(ids: Any, batch_size: int, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut one id stream into ``batch_size`` parallel streams of consecutive windows.

    With ``K = (len(ids) - 1) // (batch_size * window)`` windows per stream,
    stream ``b`` is ``ids[b*K*W : (b+1)*K*W + 1]``: the streams are
    contiguous, consecutive pieces of the input, and the last
    ``len(ids) - 1 - batch_size*K*W`` ids are not used. Window ``k`` of stream
    ``b`` continues window ``k - 1`` of the same stream, so an RNN can carry
    its hidden state (row ``b``) from batch ``k - 1`` to batch ``k``
    (stopping the gradient at the border) -- truncated BPTT.

    Args:
      ids: a 1-D sequence of integer ids (list or array, any integer dtype).
      batch_size: number of parallel streams ``B`` (> 0).
      window: BPTT length ``W`` (> 0).

    Returns:
      ``(inputs, targets)``, int32 ``(K, B, W)`` each, with
      ``inputs[k, b, t] = ids[b*K*W + k*W + t]`` and ``targets[k, b, t] =
      ids[b*K*W + k*W + t + 1]`` (the next id).

    Raises:
      ValueError: fewer than ``batch_size * window + 1`` ids, bad sizes.
      TypeError: non-integer ids.
    """
    batch_size = _int_arg("batch_size", batch_size, 1)
    window = _int_arg("window", window, 1)
    stream = _int_seq(ids, "ids")
    k = (len(stream) - 1) // (batch_size * window)
    if k < 1:
        raise ValueError(
            f"ids has {len(stream)} ids; batch_size={batch_size} streams of window={window} "
            f"need at least batch_size * window + 1 = {batch_size * window + 1}"
        )
    span = k * window
    starts = np.arange(batch_size) * span  # (B,)
    offsets = np.arange(span)  # (K*W,)
    idx = starts[:, None] + offsets[None, :]  # (B, K*W)
    inputs = stream[idx].reshape(batch_size, k, window).transpose(1, 0, 2)  # (K, B, W)
    targets = stream[idx + 1].reshape(batch_size, k, window).transpose(1, 0, 2)
    return np.ascontiguousarray(inputs), np.ascontiguousarray(targets)
