"""Where corpus files are looked for, and reading them with errors that name the file and line.

Data-directory convention (the one :mod:`jdlfs.data` uses): functions take a
``data_dir`` argument; ``None`` means ``$JDLFS_DATA_DIR`` (an empty variable
counts as unset). A corpus is looked for in ``<dir>/<subdir>`` for each of its
folder names, then in ``<dir>`` itself. In this project the corpora live in
``../shared/data`` beside the repository (``reuters21578/``, ``multi30k/``,
``ag_news/``; see the README there).
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

from jdlfs.text.errors import CorpusNotFoundError, TextFormatError

__all__ = ["candidate_dirs", "data_root", "find_corpus_dir", "read_text", "require_file"]

#: Where the README puts the shared datasets: ``../shared/data`` beside the repository.
SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def data_root(data_dir: str | os.PathLike[str] | None) -> Path | None:
    """``data_dir`` if given, else ``$JDLFS_DATA_DIR``, else ``None``."""
    base = data_dir if data_dir is not None else (os.environ.get("JDLFS_DATA_DIR") or None)
    return None if base is None else Path(base).expanduser()


def candidate_dirs(subdirs: tuple[str, ...], data_dir: str | os.PathLike[str] | None) -> list[Path]:
    """``<dir>/<subdir>`` for each of ``subdirs``, then ``<dir>``; empty if no data directory is set."""
    root = data_root(data_dir)
    return [] if root is None else [root / sub for sub in subdirs] + [root]


def _hint(subdir: str, data_dir: str | os.PathLike[str] | None) -> str:
    lines = []
    if data_root(data_dir) is None:
        lines.append("No data directory was given (the data_dir argument or the JDLFS_DATA_DIR environment variable).")
    lines.append(
        f"Pass data_dir=<dir> (scripts: --data-dir <dir>) or set JDLFS_DATA_DIR=<dir>, where "
        f"<dir>/{subdir}/ holds the files."
    )
    root = data_root(data_dir)
    given = None if root is None else root.resolve()
    if (SHARED_DATA / subdir).is_dir() and given != SHARED_DATA.resolve():
        lines.append(
            f"A copy is in {SHARED_DATA / subdir} (see {SHARED_DATA / 'README.md'}): use <dir> = {SHARED_DATA}."
        )
    return "\n".join(lines)


def find_corpus_dir(
    corpus: str,
    subdirs: tuple[str, ...],
    marker: tuple[str, ...],
    data_dir: str | os.PathLike[str] | None,
    note: str = "",
) -> Path:
    """The first candidate directory holding one of the ``marker`` file names.

    Raises:
      CorpusNotFoundError: no candidate directory holds any of them; the
        error names the first path tried, lists all of them, says how to set
        the data directory and ends with ``note``.
    """
    looked = []
    for d in candidate_dirs(subdirs, data_dir):
        for name in marker:
            looked.append(str(d / name))
            if (d / name).is_file():
                return d
    missing = looked[0] if looked else str(Path(subdirs[0]) / marker[0])
    hint = _hint(subdirs[0], data_dir) + (f"\n{note}" if note else "")
    raise CorpusNotFoundError(corpus, missing, tuple(looked), hint)


def require_file(corpus: str, directory: Path, names: tuple[str, ...], hint: str = "") -> Path:
    """``directory / name`` for the first of ``names`` that exists.

    Raises:
      CorpusNotFoundError: none exists; the error names ``directory / names[0]``
        and ends with ``hint``.
    """
    for name in names:
        if (directory / name).is_file():
            return directory / name
    looked = tuple(str(directory / n) for n in names)
    raise CorpusNotFoundError(corpus, directory / names[0], looked, hint)


def _line_at(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def read_text(path: str | os.PathLike[str], encoding: str = "utf-8") -> str:
    """Read a whole text file, gunzipping it if its name ends in ``.gz``.

    Args:
      path: the file.
      encoding: its character encoding (``"utf-8"``, ``"latin-1"``, ...).
        Line endings are left as they are (no universal-newline translation).

    Raises:
      FileNotFoundError: ``path`` does not exist (the error's ``filename``).
      TextFormatError: a corrupt or truncated gzip stream, or bytes that are
        not valid ``encoding`` (the error names the line).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(2, f"file not found: {path}", str(path))
    if path.suffix == ".gz":
        try:
            with gzip.open(path, "rb") as f:
                data = f.read()
        except (OSError, EOFError, zlib.error) as e:
            raise TextFormatError(path, f"not a valid gzip file or truncated ({type(e).__name__}: {e})") from None
    else:
        data = path.read_bytes()
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        raise TextFormatError(
            path, f"bytes {data[e.start : e.end]!r} are not valid {encoding} ({e.reason})", line=_line_at(data, e.start)
        ) from None
