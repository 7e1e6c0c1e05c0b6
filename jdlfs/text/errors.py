"""Exceptions raised by :mod:`jdlfs.text`.

* :class:`TextFormatError` -- a corpus or tokenizer file exists but is
  malformed (an unterminated SGML tag, a CSV row with the wrong number of
  fields, line counts of two aligned files that differ, invalid UTF-8, a
  truncated gzip stream, a corrupt vocabulary). It names the file and, where
  one applies, the 1-based line. It subclasses
  :class:`jdlfs.data.DataFormatError`, so ``except ValueError`` and
  ``except DataFormatError`` both catch it.
* :class:`CorpusNotFoundError` -- a corpus file is missing. A
  :class:`FileNotFoundError` whose ``filename`` is the missing path and whose
  message says where it was looked for and how to point jdlfs at the data.
"""

from __future__ import annotations

import os

from jdlfs.data.errors import DataFormatError

__all__ = ["CorpusNotFoundError", "TextFormatError"]


class TextFormatError(DataFormatError):
    """A text corpus or tokenizer file is malformed.

    Attributes:
      path: the offending file (a string).
      line: the 1-based line the problem was found at, or ``None`` when the
        problem concerns the file as a whole (e.g. two aligned files whose
        line counts differ, a truncated gzip stream).
      problem: what is wrong, without the location.

    ``str(error)`` is ``"<path>, line <line>: <problem>"`` (``"<path>:
    <problem>"`` without a line).
    """

    def __init__(self, path: str | os.PathLike[str], problem: str, line: int | None = None) -> None:
        self.line = line
        where = os.fspath(path) if line is None else f"{os.fspath(path)}, line {line}"
        super().__init__(path, problem)
        # DataFormatError formats "<path>: <problem>"; add the line.
        self.args = (f"{where}: {problem}",)

    def __str__(self) -> str:
        return self.args[0]

    def __reduce__(self):
        return type(self), (self.path, self.problem, self.line)


class CorpusNotFoundError(FileNotFoundError):
    """A corpus file is missing.

    Attributes:
      filename: the missing path (as for any :class:`FileNotFoundError`).
      corpus: the corpus name (``"reuters21578"``, ``"multi30k"``, ``"ag_news"``).
      looked: the paths that were tried, in order.
    """

    def __init__(self, corpus: str, path: str | os.PathLike[str], looked: tuple[str, ...], hint: str) -> None:
        self.corpus = corpus
        self.looked = tuple(looked)
        self.hint = hint
        message = f"{corpus}: file not found: {os.fspath(path)}"
        if len(self.looked) > 1:
            message += "\nLooked for it at:\n" + "\n".join(f"  {p}" for p in self.looked)
        if hint:
            message += "\n" + hint
        super().__init__(2, message, os.fspath(path))  # errno.ENOENT, message, filename

    def __str__(self) -> str:
        return self.strerror

    def __reduce__(self):
        return type(self), (self.corpus, self.filename, self.looked, self.hint)
