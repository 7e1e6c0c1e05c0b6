"""Datasets and input pipeline: MNIST, Fashion-MNIST and CIFAR-10.

Loading (:func:`load`) returns numpy arrays, images uint8 NHWC and labels
int32::

    from jdlfs.data import load
    x_train, y_train = load("mnist", "train")   # (60000, 28, 28, 1) uint8, (60000,) int32
    x_test, y_test = load("cifar10", "test")    # (10000, 32, 32, 3) uint8, (10000,) int32

Files are found under ``data_dir`` / ``$JDLFS_DATA_DIR`` in their original
on-disk forms (IDX gzip files; CIFAR-10 binary or python batches, their
tarballs, or an image-folder directory / zip), decoded once and cached as
``.npz`` under ``cache_dir`` / ``$JDLFS_CACHE_DIR`` / ``~/.cache/jdlfs``, keyed
by a checksum of the source files. Without a local copy, a copy that
tensorflow-datasets has already prepared is read (offline: nothing is
downloaded); failing that, :class:`DatasetNotFoundError` (a
``FileNotFoundError``) explains what was looked for, where, and how to get
the files. Corrupt files raise :class:`DataFormatError` (a ``ValueError``)
naming the file. ``load`` never prints and never exits: scripts turn these
errors into one message (:func:`jdlfs.runs.run_main`).

Pipeline utilities take explicit ``jax.random`` keys: :func:`fit_normalizer` /
:class:`Normalizer`, :func:`shuffle`, :func:`batches`, :func:`epoch_arrays`
(stacked batches for a ``lax.scan`` epoch) and :func:`train_val_split`.

Modules: :mod:`~jdlfs.data.loader` (``load``), :mod:`~jdlfs.data.sources`
(where files are looked for, dataset facts), :mod:`~jdlfs.data.idx`,
:mod:`~jdlfs.data.cifar`, :mod:`~jdlfs.data.imagefolder` (format readers),
:mod:`~jdlfs.data.cache` (the ``.npz`` cache), :mod:`~jdlfs.data.pipeline`.
"""

from jdlfs.data.augment import crop_and_flip, random_crop, random_flip
from jdlfs.data.cifar import CIFAR10_CLASSES
from jdlfs.data.errors import DataFormatError, DatasetNotFoundError
from jdlfs.data.loader import load
from jdlfs.data.pipeline import Normalizer, batches, epoch_arrays, fit_normalizer, shuffle, train_val_split
from jdlfs.data.sources import DATASETS, SPLITS, DatasetInfo

__all__ = [
    "CIFAR10_CLASSES",
    "DATASETS",
    "SPLITS",
    "DataFormatError",
    "DatasetNotFoundError",
    "DatasetInfo",
    "Normalizer",
    "batches",
    "crop_and_flip",
    "epoch_arrays",
    "fit_normalizer",
    "load",
    "random_crop",
    "random_flip",
    "shuffle",
    "train_val_split",
]
