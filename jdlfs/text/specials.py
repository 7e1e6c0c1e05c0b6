"""The special token ids every jdlfs tokenizer uses, and id-sequence checks shared by the tokenizers.

=========  ====  =========  ==================================================
token      id    piece      meaning
=========  ====  =========  ==================================================
PAD        0     ``<pad>``  padding; masks are ``ids != PAD_ID``
BOS        1     ``<s>``    begin of sequence (the decoder's first input)
EOS        2     ``</s>``   end of sequence; decoding stops at the first one
UNK        3     ``<unk>``  anything the vocabulary does not hold
=========  ====  =========  ==================================================

Both :class:`~jdlfs.text.SubwordTokenizer` (sentencepiece, via its
``pad_id``/``bos_id``/``eos_id``/``unk_id`` options) and
:class:`~jdlfs.text.CharVocab` use these ids; ordinary tokens start at 4.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["BOS_ID", "EOS_ID", "NUM_SPECIALS", "PAD_ID", "SPECIAL_PIECES", "UNK_ID", "id_rows", "strip_specials"]

PAD_ID = 0
BOS_ID = 1
EOS_ID = 2
UNK_ID = 3
#: Pieces of ids 0..3, in id order.
SPECIAL_PIECES = ("<pad>", "<s>", "</s>", "<unk>")
#: Number of special ids; the first ordinary token has this id.
NUM_SPECIALS = 4


def _as_int_row(row: Any, vocab_size: int, what: str) -> np.ndarray:
    if isinstance(row, (str, bytes)):
        raise TypeError(f"{what} must be token ids, got {type(row).__name__}")
    a = np.asarray(row)
    if a.ndim != 1:
        raise ValueError(f"{what} must be a 1-D sequence of ids, got shape {a.shape}")
    if a.size == 0:
        return a.astype(np.int64)
    if a.dtype == bool or a.dtype.kind not in "iu":
        raise TypeError(f"{what} must hold integer token ids, got dtype {a.dtype}")
    bad = np.flatnonzero((a < 0) | (a >= vocab_size))
    if bad.size:
        raise ValueError(
            f"{what}: id {int(a[bad[0]])} at position {int(bad[0])} is outside 0..{vocab_size - 1} "
            f"(vocabulary size {vocab_size})"
        )
    return a.astype(np.int64)


def id_rows(ids: Any, vocab_size: int, name: str = "ids") -> tuple[list[np.ndarray], bool]:
    """Normalise ``ids`` to a list of 1-D int64 rows.

    Args:
      ids: one sequence (list of ints, 1-D array of any integer dtype) or a
        batch (list of such sequences, possibly ragged, or a 2-D array).
      vocab_size: ids must lie in ``0 .. vocab_size - 1``.
      name: the argument name for error messages.

    Returns:
      ``(rows, batched)``: ``batched`` says whether ``ids`` was a batch.

    Raises:
      TypeError: non-integer ids (floats, bools, strings).
      ValueError: ids out of range, or more than two dimensions.
    """
    if isinstance(ids, (str, bytes)):
        raise TypeError(f"{name} must be token ids, got {type(ids).__name__}")
    if hasattr(ids, "shape") and hasattr(ids, "dtype"):  # numpy / jax array
        a = np.asarray(ids)
        if a.ndim == 1:
            return [_as_int_row(a, vocab_size, name)], False
        if a.ndim == 2:
            return [_as_int_row(r, vocab_size, f"{name}[{i}]") for i, r in enumerate(a)], True
        raise ValueError(f"{name} must be 1-D (one sequence) or 2-D (a batch), got shape {a.shape}")
    if not isinstance(ids, Sequence):
        raise TypeError(f"{name} must be a sequence of ids or a batch of them, got {type(ids).__name__}")
    if len(ids) and all(isinstance(r, Sequence) or hasattr(r, "shape") and np.ndim(r) == 1 for r in ids):
        return [_as_int_row(r, vocab_size, f"{name}[{i}]") for i, r in enumerate(ids)], True
    return [_as_int_row(ids, vocab_size, name)], False


def strip_specials(row: np.ndarray) -> list[int]:
    """The ids before the first EOS, without PAD and BOS (UNK is kept)."""
    stop = np.flatnonzero(row == EOS_ID)
    if stop.size:
        row = row[: stop[0]]
    return [int(i) for i in row if i != PAD_ID and i != BOS_ID]
