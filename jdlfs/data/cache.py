"""On-disk ``.npz`` cache of decoded datasets, keyed by a checksum of the source.

Decoding 60,000 JPEGs takes seconds; reading back an uncompressed ``.npz``
takes a fraction of that. Each cache entry is one split of one dataset::

    <cache_dir>/<name>-<split>-<key[:24]>.npz   with arrays "images", "labels"

where ``key`` is the sha256 of a JSON description of the source: the cache
format version, dataset name, split, source format, and a fingerprint of every
source file (see :func:`file_sha256` and :func:`tree_fingerprint`). Absolute
paths are *not* part of the key, so moving the data keeps the cache valid,
while any change to the source bytes produces a new key and a fresh decode.
Stale entries are not deleted automatically; the cache directory can be
removed at any time.

Entries are written atomically (temporary file in the same directory, then
:func:`os.replace`), so a crash never leaves a half-written entry under the
final name. An entry that cannot be read back (truncated, corrupt, wrong
arrays) is ignored with a warning and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np

__all__ = [
    "CACHE_FORMAT_VERSION",
    "cache_key",
    "cache_path",
    "default_cache_dir",
    "file_sha256",
    "read_cache",
    "tree_fingerprint",
    "write_cache",
]

#: Bump when decoding changes so that old cache entries are no longer used.
CACHE_FORMAT_VERSION = 1

_CHUNK = 1 << 20


def default_cache_dir() -> Path:
    """The cache directory used when none is passed: ``$JDLFS_CACHE_DIR``, else ``~/.cache/jdlfs``."""
    env = os.environ.get("JDLFS_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "jdlfs"


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks (the 63 MB CIFAR zip takes ~0.1 s)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def tree_fingerprint(root: str | os.PathLike[str], relpaths: Iterable[str]) -> str:
    """Hex sha256 over ``(relative path, size, mtime_ns)`` of files under ``root``.

    Used for image-folder *directories*, which may hold tens of thousands of
    small files: hashing their metadata instead of their contents keeps a cache
    hit cheap. Adding, removing, renaming or rewriting a file (which updates its
    mtime) changes the fingerprint; an edit that preserves both size and mtime
    would go unnoticed.
    """
    root = Path(root)
    h = hashlib.sha256()
    for rel in sorted(relpaths):
        st = (root / rel).stat()
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def cache_key(**parts: object) -> str:
    """Hex sha256 of the JSON of ``parts`` plus :data:`CACHE_FORMAT_VERSION`."""
    blob = json.dumps({"version": CACHE_FORMAT_VERSION, **parts}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def cache_path(cache_dir: str | os.PathLike[str], name: str, split: str, key: str) -> Path:
    """Path of the cache entry for ``(name, split)`` with source key ``key``."""
    return Path(cache_dir) / f"{name}-{split}-{key[:24]}.npz"


def read_cache(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """Return ``(images, labels)`` from a cache entry, or ``None`` if absent or unreadable.

    An unreadable entry (corrupt file, missing arrays, wrong dtypes: uint8
    images ``(N, ...)`` and int32 labels ``(N,)`` expected) triggers a
    :class:`RuntimeWarning` and is treated as a miss.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            images, labels = npz["images"], npz["labels"]
        if (
            images.dtype != np.uint8
            or labels.dtype != np.int32
            or labels.ndim != 1
            or images.ndim < 1
            or images.shape[0] != labels.shape[0]
        ):
            raise ValueError(
                f"unexpected arrays images {images.dtype}{images.shape}, labels {labels.dtype}{labels.shape}"
            )
    except Exception as e:  # zipfile/np.load raise many types on a corrupt file
        warnings.warn(
            f"ignoring unreadable cache file {path} ({type(e).__name__}: {e}); rebuilding it",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    return images, labels


def write_cache(path: str | os.PathLike[str], images: np.ndarray, labels: np.ndarray) -> None:
    """Atomically write ``images`` and ``labels`` to the uncompressed ``.npz`` ``path``.

    Creates the parent directory. A failure to write (read-only disk, full
    disk) only warns: the cache is an optimisation, never a requirement.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, images=images, labels=labels)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        warnings.warn(f"could not write cache file {path} ({e})", RuntimeWarning, stacklevel=3)
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
