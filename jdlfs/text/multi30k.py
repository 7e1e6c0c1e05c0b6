"""Multi30k (task 1, English-German) reader: line-aligned gzip text files.

The corpus is one file per split and language, ``<split>.<lang>.gz`` (gzip,
UTF-8, LF line endings, raw untokenised text; the English files are ASCII):

=====================  =========  ==========================================
split                  sentences  files
=====================  =========  ==========================================
``train``              29,000     ``train.en.gz``, ``train.de.gz``
``val``                1,014      ``val.en.gz``, ``val.de.gz``
``test_2016_flickr``   1,000      ``test_2016_flickr.{en,de}.gz``
``test_2017_flickr``   1,000      ``test_2017_flickr.{en,de}.gz``
``test_2017_mscoco``   461        ``test_2017_mscoco.{en,de}.gz``
=====================  =========  ==========================================

Line ``i`` of ``<split>.en.gz`` translates line ``i`` of ``<split>.de.gz``.
An uncompressed ``<split>.<lang>`` is accepted too (the ``.gz`` is preferred).

Each line is stripped of surrounding whitespace (44 lines of the official
files end in a space). Trailing empty lines at the end of a file are
ignored (the older WMT16 release ends each file with one); any other empty
line, invalid UTF-8, a corrupt gzip stream, or two files of a split with
different line counts is a :class:`~jdlfs.text.TextFormatError` naming the
file(s) and line -- never a silently shorter corpus.

Usage (German -> English)::

    src, tgt = load_multi30k("train")                  # 29,000 German, 29,000 English sentences
    src, tgt = load_multi30k("val", source="en", target="de")
"""

from __future__ import annotations

import os
from pathlib import Path

from jdlfs.text.errors import TextFormatError
from jdlfs.text.files import find_corpus_dir, read_text, require_file

__all__ = ["MULTI30K_LANGUAGES", "MULTI30K_LINES", "MULTI30K_SPLITS", "load_multi30k", "read_aligned", "read_lines"]

#: Valid ``split`` arguments, in the order of the table above.
MULTI30K_SPLITS = ("train", "val", "test_2016_flickr", "test_2017_flickr", "test_2017_mscoco")
#: Line counts of the official files (for checks; :func:`load_multi30k` does not enforce them).
MULTI30K_LINES = {
    "train": 29000,
    "val": 1014,
    "test_2016_flickr": 1000,
    "test_2017_flickr": 1000,
    "test_2017_mscoco": 461,
}
#: Valid ``source`` / ``target`` languages.
MULTI30K_LANGUAGES = ("de", "en")

SUBDIRS = ("multi30k", "multi30k-dataset", "Multi30k")


def read_lines(path: str | os.PathLike[str]) -> list[str]:
    """The lines of a UTF-8 text file (gunzipped if its name ends in ``.gz``), stripped.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      TextFormatError: corrupt gzip, invalid UTF-8, or an empty line before
        the end of the file (names the line).
    """
    text = read_text(path, "utf-8")
    lines = [line.strip() for line in text.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    for number, line in enumerate(lines, start=1):
        if not line:
            raise TextFormatError(path, "empty line (every line must hold one sentence)", line=number)
    return lines


def read_aligned(path_a: str | os.PathLike[str], path_b: str | os.PathLike[str]) -> tuple[list[str], list[str]]:
    """Two line-aligned files (:func:`read_lines` each); their line counts must match.

    Raises:
      TextFormatError: the files have different numbers of lines (the error
        names both files and both counts), or either is malformed.
    """
    a, b = read_lines(path_a), read_lines(path_b)
    if len(a) != len(b):
        raise TextFormatError(
            path_a,
            f"misaligned parallel files: {os.fspath(path_a)} has {len(a)} lines but {os.fspath(path_b)} "
            f"has {len(b)} (line {min(len(a), len(b)) + 1} has no counterpart)",
        )
    return a, b


def load_multi30k(
    split: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    source: str = "de",
    target: str = "en",
) -> tuple[list[str], list[str]]:
    """Read one split of Multi30k as aligned (source, target) sentence lists.

    Args:
      split: one of :data:`MULTI30K_SPLITS`.
      data_dir: the data directory (``None``: ``$JDLFS_DATA_DIR``); the files
        are looked for in ``<dir>/multi30k``, ``<dir>/multi30k-dataset``,
        ``<dir>/Multi30k`` and ``<dir>``.
      source, target: languages, ``"de"`` and ``"en"`` (either order).

    Returns:
      ``(source_sentences, target_sentences)``, equally long lists of str.

    Raises:
      CorpusNotFoundError: (a ``FileNotFoundError``) a file is missing.
      TextFormatError: malformed or misaligned files.
      ValueError: a bad ``split`` or language.
    """
    if split not in MULTI30K_SPLITS:
        raise ValueError(f"split must be one of {MULTI30K_SPLITS}, got {split!r}")
    if source not in MULTI30K_LANGUAGES or target not in MULTI30K_LANGUAGES or source == target:
        raise ValueError(f"source and target must be 'de' and 'en' in either order, got {source!r}, {target!r}")
    marker = (f"{split}.{source}.gz", f"{split}.{source}")
    directory = find_corpus_dir("multi30k", SUBDIRS, marker, data_dir)
    src_path = require_file("multi30k", directory, marker)
    tgt_path = require_file(
        "multi30k",
        directory,
        (f"{split}.{target}.gz", f"{split}.{target}"),
        f"{Path(src_path).name} was found but not its {target!r} counterpart.",
    )
    return read_aligned(src_path, tgt_path)
