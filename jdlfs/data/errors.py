"""Exceptions raised by :mod:`jdlfs.data`."""

from __future__ import annotations

import os

__all__ = ["DataFormatError", "DatasetNotFoundError"]


class DataFormatError(ValueError):
    """A data file exists but its contents are not what its format promises.

    Raised for corrupt or truncated files: a bad magic number, a header whose
    item count disagrees with the bytes that follow, an image file and a label
    file with different counts, labels outside the class range, a truncated
    gzip stream, a file that is not a zip or tar archive, an image that cannot
    be decoded or has the wrong size. The message always names the offending
    file (``path``) and says what was expected, so no garbage arrays ever leave
    the loader.

    Being a :class:`ValueError`, it is caught by ``except ValueError``.
    """

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):
        return type(self), (self.path, self.problem)


class DatasetNotFoundError(FileNotFoundError):
    """No copy of a dataset split was found: none on disk, none prepared by tensorflow-datasets.

    ``str(error)`` is written for callers of :func:`jdlfs.data.load` (it says
    ``data_dir=``); :meth:`describe` words the same facts for another front
    end, e.g. a script whose option is ``--data-dir``.

    Attributes:
      name, split: what was asked for.
      expected: the file names / layouts looked for.
      looked: one line per directory searched, saying what was missing there.
      dir_given: whether a data directory was given at all (argument or
        ``$JDLFS_DATA_DIR``).
      tfds_note: one line on why tensorflow-datasets could not provide it.
      sources: where the original files can be downloaded.
      hints: further lines on how to get the data (system packages, a copy
        found in a well-known place).
    """

    def __init__(
        self,
        name: str,
        split: str,
        *,
        expected: tuple[str, ...] = (),
        looked: tuple[str, ...] = (),
        dir_given: bool = False,
        tfds_note: str = "",
        sources: tuple[str, ...] = (),
        hints: tuple[str, ...] = (),
        subdir: str | None = None,
    ) -> None:
        self.name, self.split = name, split
        self.expected, self.looked = tuple(expected), tuple(looked)
        self.dir_given, self.tfds_note = dir_given, tfds_note
        self.sources, self.hints = tuple(sources), tuple(hints)
        self.subdir = subdir or name
        super().__init__(self.describe())

    def __reduce__(self):
        return _rebuild_not_found, (type(self), self.__dict__.copy())

    def describe(self, option: str = "data_dir", usage: str = "pass data_dir=<dir> to load()") -> str:
        """The message, naming the data-directory setting as ``option`` and how to pass it as ``usage``."""
        lines = [f"could not find the {self.name!r} {self.split!r} split."]
        if self.expected:
            lines.append("Looked for: " + "; ".join(self.expected))
        if self.looked:
            lines.append("In these directories:")
            lines += [f"  {line}" for line in self.looked]
        if not self.dir_given:
            lines.append(f"No data directory was given ({option} or the JDLFS_DATA_DIR environment variable).")
        if self.tfds_note:
            lines.append(self.tfds_note)
        lines.append(f"To fix: put the files in <dir>/{self.subdir}/ and {usage}, or set JDLFS_DATA_DIR=<dir>.")
        if self.sources:
            lines.append("Original files: " + ", ".join(self.sources) + ".")
        lines += list(self.hints)
        return "\n".join(lines)


def _rebuild_not_found(cls, state):
    err = cls.__new__(cls)
    err.__dict__.update(state)
    FileNotFoundError.__init__(err, err.describe())
    return err
