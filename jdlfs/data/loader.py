"""``load``: one split of MNIST, Fashion-MNIST or CIFAR-10 as numpy arrays.

Resolution order: local files (``data_dir`` argument, else
``$JDLFS_DATA_DIR``; see :mod:`jdlfs.data.sources` for the exact directories
and layouts), decoded once and cached as ``.npz`` (:mod:`jdlfs.data.cache`);
else a copy tensorflow-datasets has already prepared (read offline, never
downloaded: no network, no log output); else a :class:`DatasetNotFoundError`
(a ``FileNotFoundError``) that says what was looked for, where, and how to get
it.
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from jdlfs.data import cache, sources
from jdlfs.data.errors import DataFormatError

__all__ = ["load"]


def _check_arrays(images: np.ndarray, labels: np.ndarray, name: str, origin: str) -> None:
    """Raise DataFormatError unless the arrays have the documented shapes and dtypes."""
    info = sources.DATASETS[name]
    problems = []
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != info.image_shape:
        h, w, c = info.image_shape
        problems.append(f"images are {images.dtype}{images.shape}, expected uint8 (N, {h}, {w}, {c})")
    if labels.dtype != np.int32 or labels.shape != images.shape[:1]:
        problems.append(f"labels are {labels.dtype}{labels.shape}, expected int32 ({images.shape[0]},)")
    elif labels.size and (labels.min() < 0 or labels.max() >= info.num_classes):
        problems.append(f"labels span {labels.min()}..{labels.max()}, expected 0..{info.num_classes - 1}")
    if problems:
        raise DataFormatError(origin, "; ".join(problems))


def load(
    name: str,
    split: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Load one split of a dataset.

    Args:
      name: ``"mnist"``, ``"fashion_mnist"`` or ``"cifar10"``.
      split: ``"train"`` or ``"test"``.
      data_dir: directory holding the dataset files (in ``<data_dir>/<name>/``
        or directly in ``<data_dir>``); defaults to ``$JDLFS_DATA_DIR``.
      cache_dir: where decoded arrays are cached; defaults to
        ``$JDLFS_CACHE_DIR``, else ``~/.cache/jdlfs``.

    Returns:
      ``(images, labels)`` as numpy arrays: images uint8 NHWC, ``(N, 28, 28, 1)``
      for MNIST / Fashion-MNIST and ``(N, 32, 32, 3)`` for CIFAR-10; labels
      int32 ``(N,)`` in ``0..9``. Order is the dataset's canonical order
      (class-then-file-name for image folders).

    Raises:
      ValueError: unknown ``name`` or ``split``.
      DataFormatError: a found file is corrupt, truncated or inconsistent (a
        ``ValueError`` subclass; the message names the file).
      DatasetNotFoundError: no local copy and no prepared tensorflow-datasets
        copy (a ``FileNotFoundError`` subclass; the message lists the
        directories searched and how to get the files).
    """
    if name not in sources.DATASETS:
        raise ValueError(f"unknown dataset name {name!r}; expected one of {sorted(sources.DATASETS)}")
    if split not in sources.SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {list(sources.SPLITS)}")

    cache_root = cache.default_cache_dir() if cache_dir is None else cache_dir
    looked: list[str] = []
    for candidate in sources.iter_sources(name, split, data_dir, looked):
        # The key needs only the source's bytes, so a cache hit skips even
        # listing an image zip (complete_source).
        path = cache.cache_path(cache_root, name, split, sources.source_key(candidate))
        cached = cache.read_cache(path)
        if cached is not None:
            try:
                _check_arrays(*cached, name, str(path))
                return cached
            except DataFormatError as e:  # wrong shapes: as good as no entry, rebuild it
                warnings.warn(f"ignoring cache file with unexpected contents: {e}", RuntimeWarning, stacklevel=2)
        source = sources.complete_source(candidate, looked)
        if source is None:  # a zip without the image-folder layout: keep looking
            continue
        images, labels = sources.decode_source(source)
        _check_arrays(images, labels, name, source.describe())
        cache.write_cache(path, images, labels)
        return images, labels

    try:
        images, labels = sources.load_from_tfds(name, split)
    except DataFormatError:
        raise
    except Exception as e:  # not prepared, ImportError, tfds's own errors: all summed up in one line
        # `from None`: the message already names the tfds error; its traceback is noise.
        raise sources.not_found_error(name, split, data_dir, looked, e) from None
    _check_arrays(images, labels, name, f"tensorflow-datasets {name}/{split}")
    return images, labels
