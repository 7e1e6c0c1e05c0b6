"""Character vocabulary for the character-level models.

Ids 0-3 are the specials of :mod:`jdlfs.text.specials` (PAD 0, BOS 1, EOS 2,
UNK 3); the characters of the vocabulary follow, from id 4, in code-point
order. Built from training text only; any other character encodes as UNK
(and UNK decodes as U+FFFD, the replacement character)::

    train = "\\n".join(d.body for d in load_reuters(split="train") if d.body)
    vocab = CharVocab.build([train])          # build from the exact stream, separators included
    stream = vocab.encode_array(train)        # int32 ids, one per character
    vocab.save(run_dir / "chars.json"); vocab = CharVocab.load(run_dir / "chars.json")

(Build the vocabulary from the text as it will be encoded: bodies loaded with
the default ``whitespace="collapse"`` hold no newline, so a ``"\\n"`` used to
join them must be seen by :meth:`CharVocab.build`, or it encodes as UNK.)

The JSON file holds the format name, the special ids and the character list;
loading checks all three (a corrupt file is a TextFormatError naming it).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jdlfs.text.errors import TextFormatError
from jdlfs.text.specials import BOS_ID, EOS_ID, NUM_SPECIALS, PAD_ID, UNK_ID, id_rows, strip_specials

__all__ = ["CharVocab"]

_FORMAT = "jdlfs.text.CharVocab"
_VERSION = 1
_SPECIALS = {"pad": PAD_ID, "bos": BOS_ID, "eos": EOS_ID, "unk": UNK_ID}
#: What UNK decodes to.
UNK_CHAR = "\ufffd"


class CharVocab:
    """Characters <-> ids, with the fixed special ids.

    Attributes:
      chars: the vocabulary's characters in id order (id ``4 + i`` is ``chars[i]``).
      vocab_size: ``4 + len(chars)``.
      pad_id, bos_id, eos_id, unk_id: 0, 1, 2, 3.
    """

    pad_id = PAD_ID
    bos_id = BOS_ID
    eos_id = EOS_ID
    unk_id = UNK_ID

    def __init__(self, chars: Iterable[str]) -> None:
        chars = tuple(chars)
        for i, c in enumerate(chars):
            if not isinstance(c, str) or len(c) != 1:
                raise ValueError(f"chars[{i}] must be a single character, got {c!r}")
        if len(set(chars)) != len(chars):
            dup = next(c for c in chars if chars.count(c) > 1)
            raise ValueError(f"chars holds {dup!r} more than once")
        self.chars = chars
        self._index = {c: NUM_SPECIALS + i for i, c in enumerate(chars)}
        codes = np.array([ord(c) for c in chars], dtype=np.int64)
        order = np.argsort(codes, kind="stable")
        self._sorted_codes = codes[order]
        self._sorted_ids = (order + NUM_SPECIALS).astype(np.int32)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharVocab) and other.chars == self.chars

    def __hash__(self) -> int:
        return hash(self.chars)

    def __repr__(self) -> str:
        return f"CharVocab({len(self.chars)} chars, vocab_size={self.vocab_size})"

    @property
    def vocab_size(self) -> int:
        return NUM_SPECIALS + len(self.chars)

    # ------------------------------------------------------------------ building

    @classmethod
    def build(cls, texts: Sequence[str], *, min_count: int = 1, max_size: int | None = None) -> CharVocab:
        """The characters of ``texts`` (the training split).

        Args:
          texts: training texts.
          min_count: keep characters seen at least this often.
          max_size: keep at most this many characters, the most frequent
            (ties: lower code point first); ``None``: no limit.

        Raises:
          TypeError: ``texts`` not a list of strings.
          ValueError: bad ``min_count`` / ``max_size``, or no character kept.
        """
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise TypeError(f"texts must be a list of strings, got {type(texts).__name__}")
        if not isinstance(min_count, int) or min_count < 1:
            raise ValueError(f"min_count must be an int >= 1, got {min_count!r}")
        if max_size is not None and (not isinstance(max_size, int) or max_size < 1):
            raise ValueError(f"max_size must be None or an int >= 1, got {max_size!r}")
        counts: Counter[str] = Counter()
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}] must be a str, got {type(t).__name__}")
            counts.update(t)
        kept = sorted((c for c, n in counts.items() if n >= min_count), key=lambda c: (-counts[c], ord(c)))
        if max_size is not None:
            kept = kept[:max_size]
        if not kept:
            raise ValueError(f"no character occurs at least min_count={min_count} times in texts")
        return cls(sorted(kept))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the vocabulary as JSON (atomically); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"format": _FORMAT, "version": _VERSION, "special_ids": _SPECIALS, "chars": list(self.chars)}
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CharVocab:
        """Read a vocabulary written by :meth:`save`.

        Raises:
          FileNotFoundError: no such file.
          TextFormatError: not valid JSON, not a CharVocab file, other special
            ids, or a bad character list (names the file, and the line for
            JSON syntax errors).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(2, f"character vocabulary not found: {path}", str(path))
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            raise TextFormatError(path, f"not UTF-8 text ({e.reason})") from None
        except json.JSONDecodeError as e:
            raise TextFormatError(path, f"not valid JSON ({e.msg}, column {e.colno})", line=e.lineno) from None
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise TextFormatError(path, f'not a character vocabulary (expected "format": "{_FORMAT}")')
        if data.get("version") != _VERSION:
            raise TextFormatError(path, f"unsupported version {data.get('version')!r} (this jdlfs reads {_VERSION})")
        if data.get("special_ids") != _SPECIALS:
            raise TextFormatError(path, f"special ids {data.get('special_ids')!r}, expected {_SPECIALS}")
        chars = data.get("chars")
        if not isinstance(chars, list):
            raise TextFormatError(path, '"chars" must be a list of single characters')
        try:
            return cls(chars)
        except ValueError as e:
            raise TextFormatError(path, str(e)) from None

    # ------------------------------------------------------------------ using

    def encode(
        self, text: str | Sequence[str], *, add_bos: bool = False, add_eos: bool = False
    ) -> list[int] | list[list[int]]:
        """Ids of one text (a list of ints) or of each text of a list; unknown characters -> UNK."""
        if isinstance(text, str):
            ids = [self._index.get(c, UNK_ID) for c in text]
            return ([BOS_ID] if add_bos else []) + ids + ([EOS_ID] if add_eos else [])
        if not isinstance(text, Sequence):
            raise TypeError(f"text must be a str or a list of str, got {type(text).__name__}")
        for i, t in enumerate(text):
            if not isinstance(t, str):
                raise TypeError(f"text[{i}] must be a str, got {type(t).__name__}")
        return [self.encode(t, add_bos=add_bos, add_eos=add_eos) for t in text]

    def encode_array(self, text: str) -> np.ndarray:
        """Ids of ``text`` as an int32 array; vectorised, for long streams (millions of characters)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        pos = np.clip(np.searchsorted(self._sorted_codes, codes), 0, max(len(self._sorted_codes) - 1, 0))
        found = self._sorted_codes[pos] == codes
        return np.where(found, self._sorted_ids[pos], UNK_ID).astype(np.int32)

    def decode(self, ids: Any) -> str | list[str]:
        """Text of one id sequence (a str) or of each row of a batch (a list of str).

        Stops at the first EOS, drops PAD and BOS, UNK -> U+FFFD. ``ids``:
        list(s) of ints or a 1-D / 2-D array of any integer dtype.

        Raises:
          TypeError: non-integer ids. ValueError: ids outside the vocabulary.
        """
        rows, batched = id_rows(ids, self.vocab_size)
        table = ("", "", "", UNK_CHAR) + self.chars
        texts = ["".join(table[i] for i in strip_specials(r)) for r in rows]
        return texts if batched else texts[0]
