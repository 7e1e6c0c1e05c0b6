"""Exceptions raised by :mod:`jdlfs.data`."""

from __future__ import annotations

import os

__all__ = ["DataFormatError"]


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
