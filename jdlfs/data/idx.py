"""Reader for the IDX file format used by MNIST and Fashion-MNIST.

An IDX file is a big-endian header followed by the raw array::

    bytes 0-1   zero
    byte  2     element type: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
                0x0D float32, 0x0E float64
    byte  3     number of dimensions d
    4*d bytes   the size of each dimension, big-endian uint32
    ...         prod(sizes) elements, row-major, big-endian

so MNIST image files start with the magic number ``0x00000803`` (uint8, three
dimensions: count, rows, cols) and label files with ``0x00000801`` (uint8, one
dimension: count). Files may be gzip-compressed (the usual ``.gz``
distribution); compression is detected from the gzip magic bytes, not from the
file name.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from jdlfs.data.errors import DataFormatError

__all__ = ["read_idx", "read_idx_images", "read_idx_labels", "IMAGES_MAGIC", "LABELS_MAGIC"]

#: Magic number of an IDX file holding uint8 images ``(count, rows, cols)``.
IMAGES_MAGIC = 0x00000803
#: Magic number of an IDX file holding uint8 labels ``(count,)``.
LABELS_MAGIC = 0x00000801

_GZIP_MAGIC = b"\x1f\x8b"

# IDX element type code -> numpy dtype (big-endian where it matters).
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_bytes(path: Path) -> bytes:
    """Return the (decompressed) contents of ``path``; gzip is auto-detected."""
    with open(path, "rb") as f:
        raw = f.read()
    if not raw.startswith(_GZIP_MAGIC):
        if path.suffix == ".gz":
            raise DataFormatError(
                path,
                f"name ends in .gz but the file is not gzip data (starts with {raw[:2]!r}, expected {_GZIP_MAGIC!r})",
            )
        return raw
    try:
        return gzip.decompress(raw)
    except EOFError as e:
        raise DataFormatError(path, f"truncated gzip stream ({e})") from e
    except (OSError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise DataFormatError(path, f"corrupt gzip data ({e})") from e


def read_idx(path: str | os.PathLike[str], *, expected_magic: int | None = None) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed) into a numpy array.

    Args:
      path: the ``.idx*-ubyte`` or ``.idx*-ubyte.gz`` file.
      expected_magic: if given, the 32-bit magic number the file must start
        with, e.g. :data:`IMAGES_MAGIC`.

    Returns:
      The array with the shape given by the header, in native byte order
      (uint8 for MNIST files).

    Raises:
      DataFormatError: truncated/corrupt gzip, bad magic number, unknown
        element type, or a header whose sizes disagree with the number of
        bytes that follow (truncated file or trailing garbage).
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataFormatError(path, f"only {len(data)} bytes, too short for an IDX header")
    magic = int.from_bytes(data[:4], "big")
    if expected_magic is not None and magic != expected_magic:
        raise DataFormatError(path, f"bad magic number 0x{magic:08X}, expected 0x{expected_magic:08X}")
    if data[0] != 0 or data[1] != 0:
        raise DataFormatError(path, f"bad magic number 0x{magic:08X}: IDX files start with two zero bytes")
    type_code, ndim = data[2], data[3]
    if type_code not in _IDX_DTYPES:
        raise DataFormatError(path, f"bad magic number 0x{magic:08X}: unknown IDX element type 0x{type_code:02X}")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise DataFormatError(
            path, f"truncated header: {ndim} dimensions need {header_len} header bytes, file has {len(data)}"
        )
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_DTYPES[type_code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual = len(data) - header_len
    if actual != expected:
        what = "truncated" if actual < expected else "trailing bytes"
        raise DataFormatError(
            path,
            f"header says shape {shape} ({expected} bytes of {dtype.name}) "
            f"but {actual} bytes follow the header ({what})",
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header_len).reshape(shape)
    # astype copies: the result is writable and in native byte order.
    return arr.astype(dtype.newbyteorder("="))


def read_idx_images(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX image file (magic ``0x00000803``): uint8 ``(N, rows, cols)``."""
    return read_idx(path, expected_magic=IMAGES_MAGIC)


def read_idx_labels(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX label file (magic ``0x00000801``): uint8 ``(N,)``."""
    return read_idx(path, expected_magic=LABELS_MAGIC)
