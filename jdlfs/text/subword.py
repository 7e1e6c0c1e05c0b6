"""Subword tokenization with sentencepiece (the tokenizer of the Flax WMT example).

Train on the training split only -- the API takes the texts, the caller picks
the split -- save the model file with the run, reload it for evaluation::

    src, tgt = load_multi30k("train")
    tok = SubwordTokenizer.train(src + tgt, run_dir / "spm.model", vocab_size=8000)
    ids = tok.encode("Ein Hund rennt.", add_eos=True)     # [..., 2]
    tok.decode(ids)                                        # 'Ein Hund rennt.'
    tok = SubwordTokenizer.load(run_dir / "spm.model")     # later, for evaluation

Special ids are fixed (:mod:`jdlfs.text.specials`): PAD 0, BOS 1, EOS 2,
UNK 3, passed to sentencepiece as ``pad_id``/``bos_id``/``eos_id``/``unk_id``;
:meth:`SubwordTokenizer.load` refuses a model with other ids.

Training is deterministic: one thread, no sentence sampling or shuffling
(``input_sentence_size=0``), sentencepiece's random generator seeded with
``seed``, and ``max_sentence_length`` raised to the longest text so no text
is silently skipped. The same texts and options give a byte-identical model
file. The vocabulary size is exact (sentencepiece's ``hard_vocab_limit``): a
corpus too small for it is a ValueError saying the largest size possible.

Text is normalised by sentencepiece's ``nmt_nfkc`` rule by default (NFKC,
whitespace runs -- newlines included -- become one space); ``decode`` returns
normalised, detokenised text, ready for sacrebleu / rouge-score. UNK decodes
as `` ⁇ ``.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sentencepiece as spm

from jdlfs.text.errors import TextFormatError
from jdlfs.text.specials import BOS_ID, EOS_ID, PAD_ID, UNK_ID, id_rows, strip_specials

__all__ = ["MODEL_TYPES", "SubwordTokenizer"]

#: sentencepiece model types accepted by :meth:`SubwordTokenizer.train`.
MODEL_TYPES = ("unigram", "bpe", "char", "word")


def _texts(texts: Any, name: str = "texts") -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise TypeError(f"{name} must be a list of strings, got {type(texts).__name__}")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"{name}[{i}] must be a str, got {type(t).__name__}")
    return list(texts)


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class SubwordTokenizer:
    """A trained sentencepiece model with jdlfs's fixed special ids.

    Build one with :meth:`train` or :meth:`load`. Attributes: ``path`` (the
    model file it was saved to / loaded from), ``model_proto`` (the model
    file's bytes), ``vocab_size``, ``pad_id``, ``bos_id``, ``eos_id``,
    ``unk_id``.
    """

    pad_id = PAD_ID
    bos_id = BOS_ID
    eos_id = EOS_ID
    unk_id = UNK_ID

    def __init__(self, model_proto: bytes, path: str | os.PathLike[str] | None = None) -> None:
        where = os.fspath(path) if path is not None else "<sentencepiece model bytes>"
        self.model_proto = bytes(model_proto)
        self.path = None if path is None else Path(path)
        try:
            self._sp = spm.SentencePieceProcessor(model_proto=self.model_proto)
        except (RuntimeError, OSError, ValueError) as e:
            raise TextFormatError(where, f"not a sentencepiece model ({str(e).strip() or type(e).__name__})") from None
        found = (self._sp.pad_id(), self._sp.bos_id(), self._sp.eos_id(), self._sp.unk_id())
        if found != (PAD_ID, BOS_ID, EOS_ID, UNK_ID):
            raise TextFormatError(
                where,
                f"the model has pad/bos/eos/unk ids {found}; jdlfs requires "
                f"{(PAD_ID, BOS_ID, EOS_ID, UNK_ID)} (train it with SubwordTokenizer.train)",
            )

    def __reduce__(self):
        return type(self), (self.model_proto, self.path)

    def __repr__(self) -> str:
        return f"SubwordTokenizer(vocab_size={self.vocab_size}, path={os.fspath(self.path) if self.path else None!r})"

    # ------------------------------------------------------------------ building

    @classmethod
    def train(
        cls,
        texts: Sequence[str],
        path: str | os.PathLike[str],
        *,
        vocab_size: int = 8000,
        model_type: str = "unigram",
        character_coverage: float = 1.0,
        normalization: str = "nmt_nfkc",
        seed: int = 0,
    ) -> SubwordTokenizer:
        """Train a model on ``texts`` and save it to ``path``.

        Args:
          texts: the training texts, one sentence or document per string
            (pass the training split only).
          path: where to write the model file (parent folders are created;
            written atomically). Conventionally ``*.model``.
          vocab_size: exact number of pieces, the 4 special ids included.
          model_type: one of :data:`MODEL_TYPES`.
          character_coverage: fraction of characters covered by single-char
            pieces (1.0 for small-alphabet languages; rarer characters -> UNK).
          normalization: sentencepiece normalisation rule (``"nmt_nfkc"``,
            ``"nfkc"``, ``"identity"``, ...).
          seed: sentencepiece's random seed.

        Raises:
          TypeError: ``texts`` not a list of strings.
          ValueError: no non-empty text, bad options, or a vocabulary size the
            corpus cannot fill (the message gives the largest possible).
        """
        texts = _texts(texts)
        if not any(t.strip() for t in texts):
            raise ValueError("texts holds no non-empty string to train on")
        if not isinstance(vocab_size, int) or vocab_size <= 4:
            raise ValueError(f"vocab_size must be an int > 4 (4 ids are special), got {vocab_size!r}")
        if model_type not in MODEL_TYPES:
            raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {model_type!r}")
        if not 0.0 < character_coverage <= 1.0:
            raise ValueError(f"character_coverage must be in (0, 1], got {character_coverage!r}")
        longest = max(len(t.encode("utf-8")) for t in texts)
        out = io.BytesIO()
        spm.set_random_generator_seed(int(seed))
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(texts),
                model_writer=out,
                vocab_size=vocab_size,
                model_type=model_type,
                character_coverage=character_coverage,
                normalization_rule_name=normalization,
                pad_id=PAD_ID,
                bos_id=BOS_ID,
                eos_id=EOS_ID,
                unk_id=UNK_ID,
                num_threads=1,
                input_sentence_size=0,
                shuffle_input_sentence=False,
                max_sentence_length=max(4192, longest + 1),
                minloglevel=2,
            )
        except RuntimeError as e:
            raise ValueError(f"sentencepiece training failed: {str(e).strip()}") from None
        tok = cls(out.getvalue())
        tok.save(path)
        return tok

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SubwordTokenizer:
        """Load a model file written by :meth:`train` / :meth:`save`.

        Raises:
          FileNotFoundError: no such file.
          TextFormatError: not a sentencepiece model, or other special ids.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(2, f"sentencepiece model not found: {path}", str(path))
        return cls(path.read_bytes(), path)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the model file to ``path`` (atomically); returns the path."""
        path = Path(path)
        _write_atomic(path, self.model_proto)
        self.path = path
        return path

    # ------------------------------------------------------------------ using

    @property
    def vocab_size(self) -> int:
        """Number of ids, specials included."""
        return self._sp.get_piece_size()

    def encode(
        self, text: str | Sequence[str], *, add_bos: bool = False, add_eos: bool = False
    ) -> list[int] | list[list[int]]:
        """Token ids of one text (a list of ints) or of each text of a list (a list of lists).

        ``add_bos`` / ``add_eos`` put BOS first / EOS last.
        """
        if isinstance(text, str):
            return self._sp.encode(text, add_bos=add_bos, add_eos=add_eos)
        return self._sp.encode(_texts(text, "text"), add_bos=add_bos, add_eos=add_eos)

    def decode(self, ids: Any) -> str | list[str]:
        """Text of one id sequence (a str), or of each row of a batch (a list of str).

        Decoding stops at the first EOS; PAD and BOS are dropped. ``ids``: a
        list of ints, a list of lists (ragged is fine), or a 1-D / 2-D array
        of any integer dtype (numpy or jax).

        Raises:
          TypeError: non-integer ids. ValueError: ids outside the vocabulary.
        """
        rows, batched = id_rows(ids, self.vocab_size)
        texts = [self._sp.decode(strip_specials(r)) for r in rows]
        return texts if batched else texts[0]

    def encode_pieces(self, text: str) -> list[str]:
        """The pieces of ``text`` as strings (``'▁'`` marks a word start), e.g. for plot labels."""
        return self._sp.encode(text, out_type=str)

    def id_to_piece(self, i: int) -> str:
        """The piece of id ``i`` (``'<pad>'``, ``'<s>'``, ``'</s>'``, ``'<unk>'`` for the specials)."""
        if not 0 <= int(i) < self.vocab_size:
            raise ValueError(f"id {i} is outside 0..{self.vocab_size - 1}")
        return self._sp.id_to_piece(int(i))
