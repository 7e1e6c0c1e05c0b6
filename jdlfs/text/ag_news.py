"""AG News (version 3) CSV reader.

``train.csv`` / ``test.csv`` are headerless CSV files with three
double-quoted columns: class index 1-4, title, description (internal quotes
doubled). Only ``test.csv`` (7,600 rows) is in this project's data folder.
``classes.txt`` names the classes: World, Sports, Business, Sci/Tech.

The dataset's own escapes, undone by :func:`clean_ag_news_text` (``clean=True``):

* a backslash stands for a line break of the original article (the readme
  says ``\\n``, but the files hold a bare ``\\``; ``\\\\`` is a paragraph
  break); ``\\$`` is an escaped dollar sign;
* HTML character references whose ``&`` was turned into a space:
  `` #39;`` -> ``'``, `` #36;`` -> ``$``, `` quot;`` -> ``"``, `` amp;`` ->
  ``&`` (also ``#151;`` and friends, mapped as HTML does: an em dash);
* ordinary references (``&lt;b&gt;``), then HTML tags (``<b>``, ``<A
  HREF=...>``) are removed;
* whitespace is collapsed to single spaces.

``clean=False`` returns the fields exactly as the CSV module reads them.

Labels are 0-based: ``label = class index - 1`` (:data:`AG_NEWS_CLASSES`).
Malformed rows (not three fields, a class index outside 1-4, bad quoting,
invalid UTF-8) are a :class:`~jdlfs.text.TextFormatError` naming the file and
line.
"""

from __future__ import annotations

import csv
import html
import io
import os
import re
from dataclasses import dataclass

from jdlfs.text.errors import TextFormatError
from jdlfs.text.files import find_corpus_dir, read_text, require_file

__all__ = ["AG_NEWS_CLASSES", "AG_NEWS_SPLITS", "NewsArticle", "clean_ag_news_text", "load_ag_news", "read_ag_news_csv"]

#: Class names, label ``i`` is ``AG_NEWS_CLASSES[i]`` (class index ``i + 1`` in the file).
AG_NEWS_CLASSES = ("World", "Sports", "Business", "Sci/Tech")
#: Valid ``split`` arguments.
AG_NEWS_SPLITS = ("train", "test")

SUBDIRS = ("ag_news", "ag_news_csv", "ag-news")


@dataclass(frozen=True)
class NewsArticle:
    """One AG News row.

    Attributes:
      label: 0-based class (0 World, 1 Sports, 2 Business, 3 Sci/Tech).
      title, description: the two text fields (cleaned unless ``clean=False``).
      line: the 1-based line of the file the row starts on.
    """

    label: int
    title: str
    description: str
    line: int


_BROKEN_REFERENCE = re.compile(r" (#\d+|quot|amp|lt|gt|apos|hellip);")
_TAG = re.compile(r"</?[A-Za-z!][^<>]*>")


def clean_ag_news_text(text: str) -> str:
    """Undo the dataset's escapes (see the module docstring) and collapse whitespace."""
    text = text.replace("\\$", "$").replace("\\", "\n")
    text = _BROKEN_REFERENCE.sub(lambda m: html.unescape(f"&{m.group(1)};"), text)
    text = _TAG.sub(" ", html.unescape(text))
    return " ".join(text.split())


def read_ag_news_csv(path: str | os.PathLike[str], *, clean: bool = True) -> list[NewsArticle]:
    """Parse an AG News CSV file (UTF-8).

    Raises:
      FileNotFoundError: ``path`` does not exist.
      TextFormatError: a malformed row (names the file and line), or no rows.
    """
    text = read_text(path, "utf-8")
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows: list[NewsArticle] = []
    start = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raise TextFormatError(path, f"bad CSV ({e})", line=start) from None
        if row:  # csv gives [] for a blank line
            if len(row) != 3:
                raise TextFormatError(
                    path, f"expected 3 fields (class index, title, description), got {len(row)}", line=start
                )
            index, title, description = row
            if index.strip() not in ("1", "2", "3", "4"):
                raise TextFormatError(path, f"class index {index!r} is not one of 1, 2, 3, 4", line=start)
            if clean:
                title, description = clean_ag_news_text(title), clean_ag_news_text(description)
            rows.append(NewsArticle(int(index) - 1, title, description, start))
        start = reader.line_num + 1
    if not rows:
        raise TextFormatError(path, "no rows")
    return rows


def load_ag_news(
    split: str = "test", data_dir: str | os.PathLike[str] | None = None, *, clean: bool = True
) -> list[NewsArticle]:
    """Read ``<split>.csv`` of AG News.

    Args:
      split: ``"train"`` or ``"test"`` (this project's data holds only ``test``).
      data_dir: the data directory (``None``: ``$JDLFS_DATA_DIR``); the file is
        looked for in ``<dir>/ag_news``, ``<dir>/ag_news_csv``, ``<dir>/ag-news``
        and ``<dir>``.
      clean: undo the dataset's escapes (see the module docstring).

    Raises:
      CorpusNotFoundError: (a ``FileNotFoundError``) the file is missing.
      TextFormatError: a malformed row.
      ValueError: a bad ``split``.
    """
    if split not in AG_NEWS_SPLITS:
        raise ValueError(f"split must be one of {AG_NEWS_SPLITS}, got {split!r}")
    name = f"{split}.csv"
    note = (
        "The shared data folder holds only the test split (its README: train.csv could not be obtained)."
        if split == "train"
        else ""
    )
    directory = find_corpus_dir("ag_news", SUBDIRS, (name,), data_dir, note=note)
    return read_ag_news_csv(require_file("ag_news", directory, (name,)), clean=clean)
