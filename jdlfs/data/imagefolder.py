"""Reader for the "image folder" layout, as a directory or as a zip archive.

Layout (``<root>`` is the directory, or the zip's top level, or the single
top-level folder inside the zip)::

    <root>/train/<class>/<image>.png|.jpg|.jpeg
    <root>/test/<class>/<image>.png|.jpg|.jpeg

Ordering is deterministic: images are ordered by class, then by file name
within a class ("natural" order, so ``img2.png`` < ``img10.png``; for
zero-padded names such as ``0000.jpg`` this is plain lexical order). Class
names are the union of the class folders of *both* splits, so ``train`` and
``test`` always share one label mapping; label ``i`` is ``classes[i]`` where
``classes`` is the preferred ``class_order`` (e.g. the canonical CIFAR-10
list) when the folder names are exactly that set (ignoring case), else the
sorted folder names.

Files with other extensions and hidden files (``.DS_Store``, ``__MACOSX/``) are
ignored. Images are decoded with Pillow; non-RGB images (grayscale, palette,
RGBA: alpha is dropped) are converted to RGB; an image of the wrong size is an
error, never silently resized.
"""

from __future__ import annotations

import io
import os
import re
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from jdlfs.data.errors import DataFormatError

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageFolderListing",
    "decode_folder_listing",
    "decode_image",
    "decode_zip_listing",
    "list_image_folder",
    "list_image_zip",
    "read_image_folder",
    "read_image_zip",
]

#: File extensions (lower case) recognised as images.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
_SPLIT_DIRS = ("train", "test")


@dataclass(frozen=True)
class ImageFolderListing:
    """The images of one split, located but not yet decoded.

    Attributes:
      classes: class names; label ``i`` is ``classes[i]``.
      files: per image, its path relative to the layout root (a zip member
        name for zips), in load order.
      labels: int32 ``(N,)``, the label of each entry of ``files``.
      prefix: for zips, the top-level folder prefix (``"cifar10/"`` or ``""``)
        that member names start with; ``""`` for directories.
    """

    classes: tuple[str, ...]
    files: tuple[str, ...]
    labels: np.ndarray
    prefix: str = ""


def _natural_key(name: str) -> tuple[object, ...]:
    """Sort key splitting digit runs out as integers: ``a2`` < ``a10``."""
    # re.split with a capture group alternates str (even) / digit-run (odd).
    parts = re.split(r"(\d+)", name)
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts)) + (name,)


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _class_list(found: set[str], class_order: Sequence[str] | None) -> tuple[str, ...]:
    """``found`` in ``class_order`` (matched case-insensitively) if it is that set, else sorted."""
    if class_order is not None:
        rank = {c.lower(): i for i, c in enumerate(class_order)}
        if len(found) == len(rank) and {c.lower() for c in found} == set(rank):
            return tuple(sorted(found, key=lambda c: rank[c.lower()]))
    return tuple(sorted(found))


def _listing(
    tree: dict[str, dict[str, list[str]]],
    split: str,
    class_order: Sequence[str] | None,
    source: str | os.PathLike[str],
    prefix: str = "",
) -> ImageFolderListing:
    """Build the listing of ``split`` from ``tree[split][class] = [relpaths]``."""
    per_class = tree.get(split, {})
    classes = _class_list({c for s in tree.values() for c in s}, class_order)
    files: list[str] = []
    labels: list[int] = []
    for label, cls in enumerate(classes):
        names = sorted(per_class.get(cls, []), key=lambda p: _natural_key(p.rsplit("/", 1)[-1]))
        files.extend(names)
        labels.extend([label] * len(names))
    if not files:
        raise DataFormatError(source, f"no {'/'.join(IMAGE_EXTENSIONS)} images under {prefix}{split}/<class>/")
    return ImageFolderListing(classes, tuple(files), np.asarray(labels, dtype=np.int32), prefix)


def list_image_folder(
    root: str | os.PathLike[str], split: str, *, class_order: Sequence[str] | None = None
) -> ImageFolderListing:
    """Locate (without decoding) the images of ``split`` under directory ``root``.

    Args:
      root: directory containing ``train/`` and/or ``test/``.
      split: ``"train"`` or ``"test"``.
      class_order: preferred class order, used when the class folder names
        (union over both splits) are exactly this set.

    Raises:
      DataFormatError: ``root/split`` holds no images.
    """
    root = Path(root)
    tree: dict[str, dict[str, list[str]]] = {}
    for s in _SPLIT_DIRS:
        split_dir = root / s
        if not split_dir.is_dir():
            continue
        tree[s] = {}
        for cls_dir in split_dir.iterdir():
            if cls_dir.is_dir() and not cls_dir.name.startswith("."):
                tree[s][cls_dir.name] = [
                    f"{s}/{cls_dir.name}/{f.name}" for f in cls_dir.iterdir() if _is_image_name(f.name) and f.is_file()
                ]
    return _listing(tree, split, class_order, root)


def list_image_zip(
    zip_path: str | os.PathLike[str], split: str, *, class_order: Sequence[str] | None = None
) -> ImageFolderListing | None:
    """Locate the images of ``split`` inside an image-folder zip.

    Members must be ``train|test/<class>/<file>``, optionally all below one
    top-level folder (``cifar10/train/airplane/0000.jpg``).

    Returns:
      The listing, or ``None`` when the zip does not have the image-folder
      layout at all (so it is not a candidate source).

    Raises:
      DataFormatError: not a readable zip (bad or truncated archive), several
        competing top-level folders, or the layout exists but ``split`` holds
        no images.
    """
    zip_path = Path(zip_path)
    try:
        with zipfile.ZipFile(zip_path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise DataFormatError(zip_path, f"not a readable zip archive ({e})") from e
    trees: dict[str, dict[str, dict[str, list[str]]]] = {}
    for name in names:
        parts = name.split("/")
        if name.endswith("/") or any(p.startswith(".") or p == "__MACOSX" for p in parts):
            continue
        if len(parts) == 3 and parts[0] in _SPLIT_DIRS:
            prefix = ""
        elif len(parts) == 4 and parts[1] in _SPLIT_DIRS:
            prefix, parts = parts[0] + "/", parts[1:]
        else:
            continue
        if _is_image_name(parts[2]):
            split_tree = trees.setdefault(prefix, {}).setdefault(parts[0], {})
            split_tree.setdefault(parts[1], []).append("/".join(parts))
    if not trees:
        return None
    if len(trees) > 1:
        raise DataFormatError(
            zip_path,
            f"ambiguous image-folder layout: train/ or test/ found under several top-level "
            f"folders {sorted(p or '<root>' for p in trees)}",
        )
    ((prefix, tree),) = trees.items()
    return _listing(tree, split, class_order, zip_path, prefix)


def decode_image(data: bytes, source: str, size: tuple[int, int]) -> np.ndarray:
    """Decode one PNG/JPEG file's bytes to uint8 ``(height, width, 3)`` RGB.

    Args:
      data: the encoded file.
      source: name used in error messages.
      size: required ``(height, width)``.

    Raises:
      DataFormatError: undecodable data or an image of another size.
    """
    try:
        with Image.open(io.BytesIO(data)) as im:
            if (im.height, im.width) != tuple(size):
                raise DataFormatError(source, f"image is {im.height}x{im.width} (HxW), expected {size[0]}x{size[1]}")
            if im.mode != "RGB":
                im = im.convert("RGB")
            return np.asarray(im)
    except DataFormatError:
        raise
    except Exception as e:  # Pillow raises OSError, ValueError, SyntaxError, ...
        raise DataFormatError(source, f"cannot decode image ({type(e).__name__}: {e})") from e


def _decode_all(
    listing: ImageFolderListing, read: Callable[[str], bytes], source: str, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    # Serial on purpose: measured on 2 cores, a thread pool over Pillow's
    # small-JPEG decode is slower than this loop (~70 us per 32x32 JPEG).
    images = np.empty((len(listing.files), *size, 3), dtype=np.uint8)
    for i, rel in enumerate(listing.files):
        images[i] = decode_image(read(rel), f"{source}:{rel}", size)
    return images, listing.labels


def decode_folder_listing(
    root: str | os.PathLike[str], listing: ImageFolderListing, size: tuple[int, int] = (32, 32)
) -> tuple[np.ndarray, np.ndarray]:
    """Decode the images of a :func:`list_image_folder` listing: uint8 ``(N, H, W, 3)``, int32 ``(N,)``."""
    root = Path(root)
    return _decode_all(listing, lambda rel: (root / rel).read_bytes(), str(root), size)


def decode_zip_listing(
    zip_path: str | os.PathLike[str], listing: ImageFolderListing, size: tuple[int, int] = (32, 32)
) -> tuple[np.ndarray, np.ndarray]:
    """Decode the images of a :func:`list_image_zip` listing: uint8 ``(N, H, W, 3)``, int32 ``(N,)``.

    Raises:
      DataFormatError: corrupt archive or member (CRC error), undecodable or
        wrongly sized image; the message names the zip and member.
    """
    zip_path = Path(zip_path)
    try:
        with zipfile.ZipFile(zip_path) as zf:
            return _decode_all(listing, lambda rel: zf.read(listing.prefix + rel), str(zip_path), size)
    except DataFormatError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise DataFormatError(zip_path, f"corrupt zip archive ({type(e).__name__}: {e})") from e


def read_image_folder(
    root: str | os.PathLike[str],
    split: str,
    *,
    class_order: Sequence[str] | None = None,
    size: tuple[int, int] = (32, 32),
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Decode the ``split`` images of an image-folder directory.

    Returns:
      ``(images, labels, classes)``: uint8 ``(N, H, W, 3)``, int32 ``(N,)``,
      and the class names indexed by label. See the module docstring for the
      ordering rules.

    Raises:
      DataFormatError: no images, an undecodable image, or one whose size is
        not ``size``; the message names the image file.
    """
    listing = list_image_folder(root, split, class_order=class_order)
    images, labels = decode_folder_listing(root, listing, size)
    return images, labels, listing.classes


def read_image_zip(
    zip_path: str | os.PathLike[str],
    split: str,
    *,
    class_order: Sequence[str] | None = None,
    size: tuple[int, int] = (32, 32),
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Decode the ``split`` images of an image-folder zip.

    Returns:
      ``(images, labels, classes)``: uint8 ``(N, H, W, 3)``, int32 ``(N,)``,
      and the class names indexed by label.

    Raises:
      DataFormatError: bad/truncated zip, no image-folder layout, a corrupt
        member (CRC error), an undecodable image or one of the wrong size;
        messages name the zip (and member).
    """
    listing = list_image_zip(zip_path, split, class_order=class_order)
    if listing is None:
        raise DataFormatError(zip_path, "zip has no train/<class>/ or test/<class>/ image folders")
    images, labels = decode_zip_listing(zip_path, listing, size)
    return images, labels, listing.classes
