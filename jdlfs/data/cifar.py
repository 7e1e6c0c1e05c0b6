"""Readers for the two original CIFAR-10 distributions.

Both hold 50,000 training images in five batches and 10,000 test images in one,
each image stored channel-first: 1024 red bytes, then 1024 green, then 1024
blue, each plane row-major 32x32.

* **Binary** (``cifar-10-binary.tar.gz`` -> ``cifar-10-batches-bin/``):
  ``data_batch_1.bin`` .. ``data_batch_5.bin`` and ``test_batch.bin``, each a
  sequence of 3073-byte records ``<1 label byte><3072 pixel bytes>``.
* **Python** (``cifar-10-python.tar.gz`` -> ``cifar-10-batches-py/``):
  ``data_batch_1`` .. ``data_batch_5`` and ``test_batch``, each a pickled dict
  with ``b"data"`` (uint8 ``(10000, 3072)``) and ``b"labels"`` (list of ints).
  The pickles are read with an unpickler that only accepts the handful of
  numpy/builtin constructors those files need, so a malicious pickle cannot run
  arbitrary code.

Every reader returns ``(images, labels)``: uint8 ``(N, 32, 32, 3)`` (NHWC) and
int32 ``(N,)`` with values in ``0..9``.
"""

from __future__ import annotations

import functools
import io
import os
import pickle
import tarfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from jdlfs.data.errors import DataFormatError

__all__ = [
    "CIFAR10_CLASSES",
    "BINARY_FILES",
    "PYTHON_FILES",
    "parse_cifar_binary",
    "parse_cifar_python",
    "read_cifar_binary",
    "read_cifar_python",
    "read_cifar_tar",
]

#: The CIFAR-10 class names; label ``i`` is ``CIFAR10_CLASSES[i]``.
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

_SIDE = 32
_PIXELS = 3 * _SIDE * _SIDE  # 3072
_RECORD = 1 + _PIXELS  # 3073

#: Batch file names of the binary distribution, per split.
BINARY_FILES = {
    "train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
    "test": ("test_batch.bin",),
}
#: Batch file names of the python (pickle) distribution, per split.
PYTHON_FILES = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}


def _chw_to_nhwc(flat: np.ndarray) -> np.ndarray:
    """uint8 ``(N, 3072)`` channel-first rows -> contiguous uint8 ``(N, 32, 32, 3)``."""
    return np.ascontiguousarray(flat.reshape(-1, 3, _SIDE, _SIDE).transpose(0, 2, 3, 1))


def _check_labels(labels: np.ndarray, source: str) -> np.ndarray:
    """Return labels as int32, raising if any lies outside ``0..9``."""
    labels = np.asarray(labels)
    bad = np.flatnonzero((labels < 0) | (labels >= len(CIFAR10_CLASSES)))
    if bad.size:
        i = int(bad[0])
        raise DataFormatError(
            source,
            f"label {int(labels[i])} at record {i} is out of range 0..{len(CIFAR10_CLASSES) - 1} "
            f"({bad.size} bad labels in total)",
        )
    return labels.astype(np.int32)


def parse_cifar_binary(data: bytes, source: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Decode the bytes of one binary batch file (``data_batch_1.bin`` etc.).

    Args:
      data: the file contents, a whole number of 3073-byte records.
      source: file name used in error messages.

    Returns:
      ``(images, labels)``: uint8 ``(N, 32, 32, 3)``, int32 ``(N,)``.

    Raises:
      DataFormatError: empty file, size not a multiple of 3073 (truncated
        record), or a label byte outside ``0..9``.
    """
    source = os.fspath(source)
    if len(data) == 0:
        raise DataFormatError(source, "empty file, expected 3073-byte CIFAR-10 records")
    if len(data) % _RECORD:
        raise DataFormatError(
            source,
            f"size {len(data)} bytes is not a multiple of the {_RECORD}-byte CIFAR-10 record "
            f"({len(data) // _RECORD} whole records + {len(data) % _RECORD} stray bytes: truncated?)",
        )
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, _RECORD)
    labels = _check_labels(records[:, 0], source)
    return _chw_to_nhwc(records[:, 1:]), labels


def read_cifar_binary(paths: Sequence[str | os.PathLike[str]]) -> tuple[np.ndarray, np.ndarray]:
    """Read and concatenate binary batch files, in the order given.

    Returns ``(images, labels)``: uint8 ``(N, 32, 32, 3)``, int32 ``(N,)``.
    """
    parts = []
    for p in paths:
        with open(p, "rb") as f:
            parts.append(parse_cifar_binary(f.read(), p))
    return _concat(parts)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals a pickled numpy array needs."""

    @staticmethod
    @functools.cache
    def _allowed() -> dict[tuple[str, str], object]:
        import codecs

        try:  # numpy >= 2
            from numpy._core import multiarray, numeric
        except ImportError:  # pragma: no cover - numpy 1.x
            from numpy.core import multiarray, numeric  # type: ignore[no-redef]
        allowed: dict[tuple[str, str], object] = {
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
            ("_codecs", "encode"): codecs.encode,
        }
        # Pickles written by numpy 1.x name numpy.core, numpy 2.x numpy._core.
        for pkg in ("numpy.core", "numpy._core"):
            allowed[(f"{pkg}.multiarray", "_reconstruct")] = multiarray._reconstruct
            allowed[(f"{pkg}.multiarray", "scalar")] = multiarray.scalar
            if hasattr(numeric, "_frombuffer"):
                allowed[(f"{pkg}.numeric", "_frombuffer")] = numeric._frombuffer
        return allowed

    def find_class(self, module: str, name: str) -> object:
        try:
            return self._allowed()[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: CIFAR-10 pickles only contain numpy arrays"
            ) from None


def parse_cifar_python(data: bytes, source: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Decode the bytes of one pickled batch (``data_batch_1`` etc.).

    The pickle must be a dict with ``b"data"`` (uint8 ``(N, 3072)``, channel
    first) and ``b"labels"`` (``N`` ints in ``0..9``); ``str`` keys are accepted
    too.

    Returns ``(images, labels)``: uint8 ``(N, 32, 32, 3)``, int32 ``(N,)``.

    Raises:
      DataFormatError: not a (safe) pickle, missing keys, wrong data shape or
        dtype, label count different from image count, labels out of range.
    """
    source = os.fspath(source)
    try:
        obj = _NumpyOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as e:  # pickle raises many types on garbage input
        raise DataFormatError(source, f"not a readable CIFAR-10 pickle ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict):
        raise DataFormatError(source, f"expected a pickled dict, got {type(obj).__name__}")

    def get(key: str) -> object:
        for k in (key.encode(), key):
            if k in obj:
                return obj[k]
        keys = sorted(map(repr, obj))
        raise DataFormatError(source, f"pickled dict has no {key.encode()!r} entry (keys: {keys})")

    raw = get("data")
    flat = np.asarray(raw)
    if flat.dtype != np.uint8 or flat.ndim != 2 or flat.shape[1] != _PIXELS:
        raise DataFormatError(source, f"b'data' is {flat.dtype} {flat.shape}, expected uint8 (N, {_PIXELS})")
    try:
        labels = np.asarray(get("labels"), dtype=np.int64)
    except (TypeError, ValueError) as e:
        raise DataFormatError(source, f"b'labels' is not a list of integers ({e})") from e
    if labels.shape != (flat.shape[0],):
        raise DataFormatError(source, f"{labels.size} labels for {flat.shape[0]} images (label/image count mismatch)")
    return _chw_to_nhwc(flat), _check_labels(labels, source)


def read_cifar_python(paths: Sequence[str | os.PathLike[str]]) -> tuple[np.ndarray, np.ndarray]:
    """Read and concatenate pickled batch files, in the order given.

    Returns ``(images, labels)``: uint8 ``(N, 32, 32, 3)``, int32 ``(N,)``.
    """
    parts = []
    for p in paths:
        with open(p, "rb") as f:
            parts.append(parse_cifar_python(f.read(), p))
    return _concat(parts)


def read_cifar_tar(tar_path: str | os.PathLike[str], split: str, *, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Read one split straight from an original CIFAR-10 tarball.

    Args:
      tar_path: ``cifar-10-binary.tar.gz`` (``kind="binary"``) or
        ``cifar-10-python.tar.gz`` (``kind="python"``).
      split: ``"train"`` or ``"test"``.
      kind: ``"binary"`` or ``"python"``.

    Members are matched by base name (``data_batch_1.bin`` ...), wherever they
    sit inside the archive.

    Returns ``(images, labels)``: uint8 ``(N, 32, 32, 3)``, int32 ``(N,)``.

    Raises:
      DataFormatError: not a tar archive, truncated/corrupt compression, a
        batch file missing from the archive, or a corrupt batch.
    """
    names = {"binary": BINARY_FILES, "python": PYTHON_FILES}[kind][split]
    parse = parse_cifar_binary if kind == "binary" else parse_cifar_python
    tar_path = Path(tar_path)
    parts = []
    try:
        with tarfile.open(tar_path, "r:*") as tar:
            members = {}
            for m in tar.getmembers():
                if m.isfile():
                    members.setdefault(Path(m.name).name, m)
            for name in names:
                if name not in members:
                    raise DataFormatError(tar_path, f"archive has no member named {name!r}")
                member = members[name]
                f = tar.extractfile(member)
                assert f is not None  # regular file
                parts.append(parse(f.read(), f"{tar_path}:{member.name}"))
    except DataFormatError:
        raise
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise DataFormatError(tar_path, f"unreadable tar archive ({type(e).__name__}: {e})") from e
    return _concat(parts)


def _concat(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    if len(parts) == 1:
        return parts[0]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
