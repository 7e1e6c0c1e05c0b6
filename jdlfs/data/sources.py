"""Which datasets exist, where their files are looked for, and how each is decoded.

:func:`find_source` turns ``(name, split, data_dir)`` into a :class:`Source`:
the on-disk format and the files to read, found by checking a fixed list of
candidate directories in order and, in each, a fixed list of file layouts
(:func:`iter_sources` yields all candidates, best first).
:func:`source_key` fingerprints a source for the cache and
:func:`decode_source` reads it. :func:`load_from_tfds` is the last resort: it
reads a copy tensorflow-datasets has already prepared and never downloads.
:func:`not_found_error` builds the error raised when all of these fail.

Candidate directories (``<dir>`` = the ``data_dir`` argument, else
``$JDLFS_DATA_DIR``):

* mnist:          ``<dir>/mnist``, ``<dir>``
* fashion_mnist:  ``<dir>/fashion_mnist``, ``<dir>/fashion-mnist``, ``<dir>``,
  then ``/usr/share/datasets/fashion-mnist`` (Debian package
  ``dataset-fashion-mnist``) even without a ``<dir>``
* cifar10:        ``<dir>/cifar10``, ``<dir>/cifar-10``, ``<dir>``

Layouts, checked in this order within each directory:

* MNIST / Fashion-MNIST: ``train-images-idx3-ubyte.gz`` +
  ``train-labels-idx1-ubyte.gz`` (test: ``t10k-...``), each also accepted
  without ``.gz``.
* CIFAR-10: ``cifar-10-batches-bin/`` (binary batches),
  ``cifar-10-binary.tar.gz``, ``cifar-10-batches-py/`` (pickled batches),
  ``cifar-10-python.tar.gz``, an image-folder directory (``train/<class>/``,
  ``test/<class>/``), an image-folder zip: any ``*.zip`` in a folder named
  ``cifar10`` or ``cifar-10``, only ``cifar*.zip`` elsewhere (so unrelated
  archives next to the datasets are not opened).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jdlfs.data import cache, cifar, idx, imagefolder
from jdlfs.data.errors import DataFormatError, DatasetNotFoundError

__all__ = [
    "DATASETS",
    "SPLITS",
    "DatasetInfo",
    "Source",
    "candidate_dirs",
    "complete_source",
    "decode_source",
    "find_source",
    "iter_sources",
    "load_from_tfds",
    "not_found_error",
    "source_key",
    "tfds_data_dir",
]

#: Valid ``split`` arguments.
SPLITS = ("train", "test")

#: Where Debian's ``dataset-fashion-mnist`` package installs the IDX files.
SYSTEM_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset.

    Attributes:
      name: the ``load`` name.
      image_shape: ``(H, W, C)`` of one image.
      class_names: label ``i`` is ``class_names[i]``.
      subdirs: folder names looked for under the data directory.
      urls: where the original files can be downloaded (for error messages).
    """

    name: str
    image_shape: tuple[int, int, int]
    class_names: tuple[str, ...]
    subdirs: tuple[str, ...]
    urls: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        """Number of classes (10 for all three datasets)."""
        return len(self.class_names)


_MNIST_URLS = (
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)

#: The datasets :func:`jdlfs.data.load` knows, by name.
DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo("mnist", (28, 28, 1), tuple(str(d) for d in range(10)), ("mnist",), _MNIST_URLS),
    "fashion_mnist": DatasetInfo(
        "fashion_mnist",
        (28, 28, 1),
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        ("fashion_mnist", "fashion-mnist"),
        (
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://github.com/zalandoresearch/fashion-mnist (data/fashion/)",
        ),
    ),
    "cifar10": DatasetInfo(
        "cifar10",
        (32, 32, 3),
        cifar.CIFAR10_CLASSES,
        ("cifar10", "cifar-10"),
        (
            "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
            "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        ),
    ),
}

# Source formats.
IDX = "idx"
CIFAR_BINARY = "cifar-binary"
CIFAR_BINARY_TAR = "cifar-binary-tar"
CIFAR_PYTHON = "cifar-python"
CIFAR_PYTHON_TAR = "cifar-python-tar"
IMAGE_FOLDER = "image-folder"
IMAGE_ZIP = "image-zip"


@dataclass(frozen=True)
class Source:
    """One split of a dataset located on disk.

    Attributes:
      name, split: what was asked for.
      format: one of ``"idx"``, ``"cifar-binary"``, ``"cifar-binary-tar"``,
        ``"cifar-python"``, ``"cifar-python-tar"``, ``"image-folder"``,
        ``"image-zip"``.
      paths: the files to read: ``(images, labels)`` for IDX, the batch files
        in order for CIFAR batches, ``(archive,)`` for tar/zip, ``(root,)`` for
        an image-folder directory.
      listing: for image folders, the located images; for image zips
        ``None`` until :func:`complete_source` has read the member list.
    """

    name: str
    split: str
    format: str
    paths: tuple[Path, ...]
    listing: imagefolder.ImageFolderListing | None = field(default=None, compare=False)

    def describe(self) -> str:
        """Human-readable one-liner, e.g. ``idx files /data/mnist/train-images-idx3-ubyte.gz, ...``."""
        return f"{self.format} " + ", ".join(map(str, self.paths))


def candidate_dirs(name: str, data_dir: str | os.PathLike[str] | None) -> list[Path]:
    """Directories searched for ``name``, in order (see the module docstring).

    ``data_dir`` wins over ``$JDLFS_DATA_DIR``; an empty variable counts as unset.
    """
    info = DATASETS[name]
    base = data_dir if data_dir is not None else (os.environ.get("JDLFS_DATA_DIR") or None)
    dirs: list[Path] = []
    if base is not None:
        base = Path(base).expanduser()
        dirs += [base / sub for sub in info.subdirs] + [base]
    if name == "fashion_mnist":
        dirs.append(SYSTEM_FASHION_MNIST_DIR)
    return dirs


def _first_existing(d: Path, names: tuple[str, ...]) -> Path | None:
    for n in names:
        if (d / n).is_file():
            return d / n
    return None


def idx_file_names(split: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Accepted (images, labels) IDX file names for ``split``, gzipped names first."""
    stem = "train" if split == "train" else "t10k"
    images, labels = f"{stem}-images-idx3-ubyte", f"{stem}-labels-idx1-ubyte"
    return (images + ".gz", images), (labels + ".gz", labels)


def _idx_candidates(name: str, split: str, d: Path, notes: list[str]) -> Iterator[Source]:
    image_names, label_names = idx_file_names(split)
    images = _first_existing(d, image_names)
    labels = _first_existing(d, label_names)
    if images and labels:
        yield Source(name, split, IDX, (images, labels))
    elif images or labels:
        missing = label_names if images else image_names
        notes.append(f"found {(images or labels).name} but not {missing[0]} (or {missing[1]})")


def _cifar_candidates(name: str, split: str, d: Path, is_base: bool, notes: list[str]) -> Iterator[Source]:
    for folder, files, fmt, tar_name in (
        ("cifar-10-batches-bin", cifar.BINARY_FILES[split], CIFAR_BINARY, "cifar-10-binary.tar.gz"),
        ("cifar-10-batches-py", cifar.PYTHON_FILES[split], CIFAR_PYTHON, "cifar-10-python.tar.gz"),
    ):
        batch_dir = d / folder
        if batch_dir.is_dir():
            missing = [f for f in files if not (batch_dir / f).is_file()]
            if not missing:
                yield Source(name, split, fmt, tuple(batch_dir / f for f in files))
            else:
                notes.append(f"{folder}/ lacks {', '.join(missing)}")
        if (d / tar_name).is_file():
            yield Source(name, split, fmt + "-tar", (d / tar_name,))
    if (d / split).is_dir():
        listing = imagefolder.list_image_folder(d, split, class_order=cifar.CIFAR10_CLASSES)
        yield Source(name, split, IMAGE_FOLDER, (d,), listing)
    zips = sorted(p for p in d.iterdir() if p.suffix.lower() == ".zip" and p.is_file())
    if is_base:
        zips = [p for p in zips if p.name.lower().startswith("cifar")]
    for z in zips:
        yield Source(name, split, IMAGE_ZIP, (z,))  # listed lazily, see complete_source


def iter_sources(name: str, split: str, data_dir: str | os.PathLike[str] | None, looked: list[str]) -> Iterator[Source]:
    """Yield the candidate sources for ``split`` of ``name``, best first.

    Every candidate but an image zip is complete: its files exist. Image zips
    are yielded *unlisted* (``listing=None``): reading a zip's directory of
    60,000 entries costs a noticeable fraction of a second, and a cache hit on
    the zip's checksum makes it unnecessary. Pass them through
    :func:`complete_source` before decoding.

    Appends to ``looked`` one line per directory that yielded nothing (or
    something incomplete), saying what was missing there, for error messages.
    """
    for d in candidate_dirs(name, data_dir):
        if not d.is_dir():
            looked.append(f"{d}: does not exist")
            continue
        notes: list[str] = []
        if name == "cifar10":
            # Any *.zip in a folder named like the dataset; only cifar*.zip elsewhere.
            is_base = d.name.lower() not in DATASETS[name].subdirs
            candidates = _cifar_candidates(name, split, d, is_base, notes)
        else:
            candidates = _idx_candidates(name, split, d, notes)
        yielded = False
        for source in candidates:
            yielded = True
            yield source
        if notes or not yielded:
            looked.append(f"{d}: " + ("; ".join(notes) if notes else "no matching files"))


def complete_source(source: Source, looked: list[str] | None = None) -> Source | None:
    """Return ``source`` ready to decode, or ``None`` if it turns out unusable.

    Only unlisted image zips need work: their member list is read; a zip
    without the image-folder layout gives ``None`` (and a line in ``looked``).

    Raises:
      DataFormatError: the zip is unreadable (bad or truncated archive).
    """
    if source.format != IMAGE_ZIP or source.listing is not None:
        return source
    listing = imagefolder.list_image_zip(source.paths[0], source.split, class_order=cifar.CIFAR10_CLASSES)
    if listing is None:
        if looked is not None:
            looked.append(f"{source.paths[0]}: no train/<class>/, test/<class>/ image folders")
        return None
    return dataclasses.replace(source, listing=listing)


def find_source(name: str, split: str, data_dir: str | os.PathLike[str] | None) -> tuple[Source | None, list[str]]:
    """Find ``split`` of dataset ``name`` on disk.

    Returns:
      ``(source, looked)``: the first usable, complete :class:`Source` (or
      ``None``) and the lines describing what was missing where, for error
      messages.

    Raises:
      DataFormatError: a candidate archive exists but is unreadable (e.g. a
        file named ``*.zip`` that is not a zip).
    """
    looked: list[str] = []
    for candidate in iter_sources(name, split, data_dir, looked):
        source = complete_source(candidate, looked)
        if source is not None:
            return source, looked
    return None, looked


def source_key(source: Source) -> str:
    """Cache key of ``source``: sha256 over its files' sha256 (see :mod:`jdlfs.data.cache`).

    Files are hashed by content; an image-folder *directory* by the relative
    path, size and mtime of each image (:func:`cache.tree_fingerprint`).
    """
    parts: dict[str, object] = {"name": source.name, "split": source.split, "format": source.format}
    if source.format == IDX:
        parts["files"] = {role: cache.file_sha256(p) for role, p in zip(("images", "labels"), source.paths)}
    elif source.format in (CIFAR_BINARY, CIFAR_PYTHON):
        parts["files"] = [[p.name, cache.file_sha256(p)] for p in source.paths]
    elif source.format in (CIFAR_BINARY_TAR, CIFAR_PYTHON_TAR, IMAGE_ZIP):
        parts["archive"] = cache.file_sha256(source.paths[0])
    elif source.format == IMAGE_FOLDER:
        assert source.listing is not None
        parts["tree"] = cache.tree_fingerprint(source.paths[0], source.listing.files)
        # The class list comes from the folder names, which the tree covers,
        # but include it so that a change of the class-order rule shows up.
        parts["classes"] = list(source.listing.classes)
    else:  # pragma: no cover - formats are produced by iter_sources only
        raise ValueError(f"unknown source format {source.format!r}")
    return cache.cache_key(**parts)


def _decode_idx(source: Source) -> tuple[np.ndarray, np.ndarray]:
    images_path, labels_path = source.paths
    images = idx.read_idx_images(images_path)
    labels = idx.read_idx_labels(labels_path)
    h, w, _ = DATASETS[source.name].image_shape
    if images.shape[1:] != (h, w):
        raise DataFormatError(
            images_path, f"images are {images.shape[1]}x{images.shape[2]}, expected {h}x{w} for {source.name}"
        )
    if len(images) != len(labels):
        raise DataFormatError(
            labels_path,
            f"label/image count mismatch: {len(labels)} labels but {len(images)} images in {images_path}",
        )
    return images[..., None], labels


def decode_source(source: Source) -> tuple[np.ndarray, np.ndarray]:
    """Read and decode ``source``.

    Returns:
      ``(images, labels)``: uint8 ``(N, H, W, C)`` and int32 ``(N,)`` with
      labels checked to lie in ``0 .. num_classes - 1``.

    Raises:
      DataFormatError: any corrupt, truncated or inconsistent file.
    """
    info = DATASETS[source.name]
    fmt = source.format
    if fmt == IDX:
        images, labels = _decode_idx(source)
    elif fmt == CIFAR_BINARY:
        images, labels = cifar.read_cifar_binary(source.paths)
    elif fmt == CIFAR_PYTHON:
        images, labels = cifar.read_cifar_python(source.paths)
    elif fmt in (CIFAR_BINARY_TAR, CIFAR_PYTHON_TAR):
        kind = "binary" if fmt == CIFAR_BINARY_TAR else "python"
        images, labels = cifar.read_cifar_tar(source.paths[0], source.split, kind=kind)
    elif fmt in (IMAGE_FOLDER, IMAGE_ZIP):
        completed = complete_source(source)
        if completed is None:
            raise DataFormatError(source.paths[0], "zip has no train/<class>/, test/<class>/ image folders")
        source = completed
        assert source.listing is not None
        classes = source.listing.classes
        if len(classes) != info.num_classes:
            raise DataFormatError(
                source.paths[0],
                f"found {len(classes)} class folders {list(classes)}, expected {info.num_classes} "
                f"({', '.join(info.class_names)})",
            )
        decode = imagefolder.decode_folder_listing if fmt == IMAGE_FOLDER else imagefolder.decode_zip_listing
        images, labels = decode(source.paths[0], source.listing, info.image_shape[:2])
    else:  # pragma: no cover
        raise ValueError(f"unknown source format {fmt!r}")
    labels = np.asarray(labels)
    bad = np.flatnonzero((labels < 0) | (labels >= info.num_classes))
    if bad.size:
        where = source.paths[-1]
        raise DataFormatError(
            where,
            f"label {int(labels[bad[0]])} at index {int(bad[0])} is out of range 0..{info.num_classes - 1} "
            f"({bad.size} bad labels in total)",
        )
    return images, labels.astype(np.int32)


def tfds_data_dir() -> str | None:
    """The folder tensorflow-datasets reads prepared copies from: ``$TFDS_DATA_DIR``, else tfds's default.

    Read at call time (tfds itself reads the variable once, at import).
    """
    return os.environ.get("TFDS_DATA_DIR") or None


@contextlib.contextmanager
def _quiet_absl() -> Iterator[None]:
    """Silence tfds's absl warnings (e.g. ``Variant folder ... has no dataset_info.json``) for a block."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def load_from_tfds(name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Read a split from a copy tensorflow-datasets has already prepared; never download.

    Reads through ``builder.as_data_source`` (ArrayRecord files; no
    TensorFlow needed) from ``$TFDS_DATA_DIR`` or tfds's default folder
    (``~/tensorflow_datasets``). Nothing is downloaded or prepared: on a
    machine without the data that would mean minutes of network retries and
    log output, and preparing MNIST or CIFAR-10 needs TensorFlow, which jdlfs
    does not depend on. Reading needs neither TensorFlow nor
    ``importlib_resources`` (tensorflow-datasets 4.9.10 imports that
    undeclared package only to prepare a dataset: tensorflow/datasets#11212).
    tensorflow_datasets is imported here, lazily: it is slow to import and only
    needed when no local copy exists. Its absl warnings are silenced.

    Returns:
      ``(images, labels)``: uint8 ``(N, H, W, C)``, int32 ``(N,)``.

    Raises:
      FileNotFoundError: tfds has no prepared copy (the message names its folder).
      ImportError: tensorflow-datasets, or a module it needs, cannot be imported.
      DataFormatError: the prepared copy holds labels outside the class range.
    """
    info = DATASETS[name]
    with _quiet_absl():
        import tensorflow_datasets as tfds

        builder = tfds.builder(name, data_dir=tfds_data_dir())
        try:
            source = builder.as_data_source(split=split)
        except Exception:
            if builder.is_prepared():
                raise
            raise FileNotFoundError(
                f"tensorflow-datasets has no prepared copy in {builder.data_dir} (jdlfs reads its copies, "
                f"never downloads; `tfds build {name} --file_format=array_record` prepares one, with TensorFlow)"
            ) from None
        image_key, label_key = builder.info.supervised_keys
        examples = list(source)
    images = (
        np.stack([np.asarray(ex[image_key]) for ex in examples])
        if examples
        else np.zeros((0, *info.image_shape), np.uint8)
    )
    labels = np.asarray([ex[label_key] for ex in examples], dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= info.num_classes):
        raise DataFormatError(
            f"tensorflow-datasets {name}/{split} in {builder.data_dir}",
            f"labels span {labels.min()}..{labels.max()}, expected 0..{info.num_classes - 1}",
        )
    return images, labels.astype(np.int32)


def _expected_files(name: str, split: str) -> list[str]:
    if name == "cifar10":
        return [
            "cifar-10-batches-bin/" + ", ".join(cifar.BINARY_FILES[split]),
            "cifar-10-binary.tar.gz",
            "cifar-10-batches-py/" + ", ".join(cifar.PYTHON_FILES[split]),
            "cifar-10-python.tar.gz",
            f"image folders {split}/<class>/*.png|jpg|jpeg, as a directory or inside a *.zip",
        ]
    image_names, label_names = idx_file_names(split)
    return [f"{image_names[0]} (or {image_names[1]})", f"{label_names[0]} (or {label_names[1]})"]


def _known_copies(name: str, data_dir: str | os.PathLike[str] | None) -> list[Path]:
    """Data folders holding ``name`` in the README's place (``../shared/data``) but not the one given."""
    given = data_dir if data_dir is not None else (os.environ.get("JDLFS_DATA_DIR") or None)
    given = Path(given).expanduser().resolve() if given is not None else None
    repo = Path(__file__).resolve().parents[2]
    found: list[Path] = []
    for root in (repo.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"):
        root = root.resolve()
        if root != given and root not in found and any((root / sub).is_dir() for sub in DATASETS[name].subdirs):
            found.append(root)
    return found


def _tfds_note(error: BaseException) -> str:
    brief = (str(error).strip().splitlines() or [""])[0][:300]
    if isinstance(error, FileNotFoundError):
        return brief
    if isinstance(error, ImportError):
        return f"tensorflow-datasets is not usable here ({type(error).__name__}: {brief})."
    return f"The tensorflow-datasets fallback failed too: {type(error).__name__}: {brief}"


def not_found_error(
    name: str,
    split: str,
    data_dir: str | os.PathLike[str] | None,
    looked: list[str],
    tfds_error: BaseException,
) -> DatasetNotFoundError:
    """The :class:`DatasetNotFoundError` raised when neither the disk nor tensorflow-datasets has the split."""
    info = DATASETS[name]
    hints = []
    if name == "fashion_mnist":
        hints.append(
            f"On Debian/Ubuntu, `apt-get install dataset-fashion-mnist` installs them in {SYSTEM_FASHION_MNIST_DIR}."
        )
    hints += [f"A copy is in {root}: use <dir> = {root}." for root in _known_copies(name, data_dir)]
    return DatasetNotFoundError(
        name,
        split,
        expected=tuple(_expected_files(name, split)),
        looked=tuple(looked),
        dir_given=data_dir is not None or bool(os.environ.get("JDLFS_DATA_DIR")),
        tfds_note=_tfds_note(tfds_error),
        sources=info.urls,
        hints=tuple(hints),
        subdir=info.subdirs[0],
    )
