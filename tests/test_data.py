"""Tests for jdlfs.data: readers, source resolution, cache, errors, pipeline.

Small files in the original on-disk formats are written to ``tmp_path`` and
read back exactly. tensorflow-datasets is replaced by a failing stub in every
test (autouse fixture), except the tests of the real tfds code path, which run
on ``tfds.testing.mock_data`` or an empty tfds folder with network connections
made an error: no test can reach the network.

Two tests read the real datasets and run when they are found
(``$JDLFS_DATA_DIR``, else ``../shared/data``: see ``conftest.py``); the
CIFAR-10 one is also ``slow``: add ``-m slow``.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import sys
import tarfile
import time
import types
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import jdlfs.data as data
from jdlfs.data import DataFormatError, cache, idx, imagefolder, sources

# Captured before the autouse fixture below clears them for the other tests.
REAL_DATA_DIR = os.environ.get("JDLFS_DATA_DIR") or None
REAL_CACHE_DIR = cache.default_cache_dir()

REAL_LOAD_FROM_TFDS = sources.load_from_tfds  # before the fixture stubs it out

CLASSES = data.CIFAR10_CLASSES


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """No ambient data dir, a private cache dir, no system dir, no tfds."""
    monkeypatch.delenv("JDLFS_DATA_DIR", raising=False)
    monkeypatch.setenv("JDLFS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(sources, "SYSTEM_FASHION_MNIST_DIR", tmp_path / "no-system-dir")

    def no_tfds(name, split):
        raise RuntimeError("tensorflow-datasets disabled in tests")

    monkeypatch.setattr(sources, "load_from_tfds", no_tfds)


# ----------------------------------------------------------------- writers


def idx_bytes(arr: np.ndarray, magic: int | None = None) -> bytes:
    """IDX encoding of a uint8 array (magic 0x0000 08 <ndim> unless given)."""
    magic = (0x0800 | arr.ndim) if magic is None else magic
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def write_idx(path: Path, arr: np.ndarray, *, gz: bool = True) -> Path:
    raw = idx_bytes(arr)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def make_mnist(folder: Path, *, gz: bool = True, n_train: int = 5, n_test: int = 3, seed: int = 0):
    """Write the four IDX files; return {split: (images (N,28,28,1), labels)}."""
    rng = np.random.default_rng(seed)
    out = {}
    suffix = ".gz" if gz else ""
    for split, stem, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n).astype(np.uint8)
        write_idx(folder / f"{stem}-images-idx3-ubyte{suffix}", images, gz=gz)
        write_idx(folder / f"{stem}-labels-idx1-ubyte{suffix}", labels, gz=gz)
        out[split] = (images[..., None], labels.astype(np.int32))
    return out


def random_cifar(rng, n: int):
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int32)


def cifar_record_bytes(images: np.ndarray, labels: np.ndarray) -> bytes:
    """Binary CIFAR records: label byte + R plane + G plane + B plane."""
    chw = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    return np.concatenate([labels.astype(np.uint8)[:, None], chw], axis=1).tobytes()


def cifar_pickle_bytes(images: np.ndarray, labels: np.ndarray) -> bytes:
    chw = np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), -1))
    return pickle.dumps({b"batch_label": b"test batch", b"labels": labels.tolist(), b"data": chw}, protocol=2)


def cifar_batches(seed: int = 0, per_batch: int = 2):
    """{file stem: (images, labels)} for the 5 train batches and the test batch."""
    rng = np.random.default_rng(seed)
    return {
        stem: random_cifar(rng, per_batch + (1 if stem == "test_batch" else 0))
        for stem in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    }


def expected_split(batches, split):
    stems = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    return (np.concatenate([batches[s][0] for s in stems]), np.concatenate([batches[s][1] for s in stems]))


def write_cifar_dir(folder: Path, batches, kind: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for stem, (x, y) in batches.items():
        if kind == "binary":
            (folder / f"{stem}.bin").write_bytes(cifar_record_bytes(x, y))
        else:
            (folder / stem).write_bytes(cifar_pickle_bytes(x, y))


def write_cifar_tar(path: Path, batches, kind: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    top = "cifar-10-batches-bin" if kind == "binary" else "cifar-10-batches-py"
    with tarfile.open(path, "w:gz") as tar:
        for stem, (x, y) in batches.items():
            blob = cifar_record_bytes(x, y) if kind == "binary" else cifar_pickle_bytes(x, y)
            info = tarfile.TarInfo(f"{top}/{stem}.bin" if kind == "binary" else f"{top}/{stem}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))


def png_bytes(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def image_tree(seed: int = 0, n_train: int = 2, n_test: int = 1, classes=CLASSES):
    """{relative path: image} for an image-folder layout, plus expected arrays per split.

    File names are deliberately not zero padded (img2 < img10 only in natural
    order) and the dict is built in a scrambled order.
    """
    rng = np.random.default_rng(seed)
    files, expected = {}, {}
    for split, n in (("train", n_train), ("test", n_test)):
        xs, ys = [], []
        for label, cls in enumerate(classes):
            numbers = sorted([2, 10, 1, 33][:n])  # numeric order = expected load order
            for number in numbers:
                img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                files[f"{split}/{cls}/img{number}.png"] = img
                xs.append(img)
                ys.append(label)
        expected[split] = (np.stack(xs), np.asarray(ys, np.int32))
    scrambled = dict(sorted(files.items(), key=lambda kv: hash(kv[0]) % 97))
    return scrambled, expected


def write_image_folder(root: Path, files) -> None:
    for rel, img in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(png_bytes(img))


def write_image_zip(path: Path, files, prefix: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for rel, img in files.items():
            zf.writestr(prefix + rel, png_bytes(img))


def assert_split(result, expected, shape):
    images, labels = result
    assert images.dtype == np.uint8 and images.shape == (len(expected[0]), *shape)
    assert labels.dtype == np.int32 and labels.shape == (len(expected[0]),)
    np.testing.assert_array_equal(images, expected[0])
    np.testing.assert_array_equal(labels, expected[1])


# ----------------------------------------------------------------- loading: round trips


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("sub", ["mnist", ""])
def test_mnist_idx_roundtrip(tmp_path, gz, sub):
    expected = make_mnist(tmp_path / "data" / sub, gz=gz)
    for split in ("train", "test"):
        assert_split(data.load("mnist", split, data_dir=tmp_path / "data"), expected[split], (28, 28, 1))


@pytest.mark.parametrize("sub", ["fashion_mnist", "fashion-mnist"])
def test_fashion_mnist_subdirs(tmp_path, sub):
    expected = make_mnist(tmp_path / "data" / sub, seed=3)
    assert_split(data.load("fashion_mnist", "test", data_dir=tmp_path / "data"), expected["test"], (28, 28, 1))


def test_fashion_mnist_system_dir_without_data_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "SYSTEM_FASHION_MNIST_DIR", tmp_path / "usr-share")
    expected = make_mnist(tmp_path / "usr-share", seed=4)
    assert_split(data.load("fashion_mnist", "train"), expected["train"], (28, 28, 1))


def test_env_var_and_explicit_data_dir_precedence(tmp_path, monkeypatch):
    env_data = make_mnist(tmp_path / "env" / "mnist", seed=1)
    arg_data = make_mnist(tmp_path / "arg" / "mnist", seed=2)
    monkeypatch.setenv("JDLFS_DATA_DIR", str(tmp_path / "env"))
    assert_split(data.load("mnist", "train"), env_data["train"], (28, 28, 1))
    assert_split(data.load("mnist", "train", data_dir=tmp_path / "arg"), arg_data["train"], (28, 28, 1))


@pytest.mark.parametrize("kind", ["binary", "python"])
@pytest.mark.parametrize("packed", [False, True])
def test_cifar_original_distributions_roundtrip(tmp_path, kind, packed):
    batches = cifar_batches(seed=5)
    base = tmp_path / "data" / "cifar-10"
    if packed:
        write_cifar_tar(base / f"cifar-10-{kind}.tar.gz", batches, kind)
    else:
        folder = "cifar-10-batches-bin" if kind == "binary" else "cifar-10-batches-py"
        write_cifar_dir(base / folder, batches, kind)
    for split in ("train", "test"):
        result = data.load("cifar10", split, data_dir=tmp_path / "data")
        assert_split(result, expected_split(batches, split), (32, 32, 3))


def test_cifar_binary_channel_layout(tmp_path):
    """Record bytes 1..1024 are the red plane, row-major: pixel (0, 1) is byte 2."""
    record = np.zeros(3073, np.uint8)
    record[0] = 7
    record[1 + 1] = 200  # red, row 0, col 1
    record[1 + 1024 + 32] = 100  # green, row 1, col 0
    record[1 + 2048 + 1023] = 50  # blue, row 31, col 31
    folder = tmp_path / "cifar10" / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    (folder / "test_batch.bin").write_bytes(record.tobytes())
    images, labels = data.load("cifar10", "test", data_dir=tmp_path)
    assert labels.tolist() == [7]
    assert images[0, 0, 1, 0] == 200 and images[0, 1, 0, 1] == 100 and images[0, 31, 31, 2] == 50
    assert int(images.sum()) == 350


def test_cifar_image_folder_roundtrip(tmp_path):
    files, expected = image_tree(seed=6)
    write_image_folder(tmp_path / "cifar10", files)
    (tmp_path / "cifar10" / "train" / "cat" / "notes.txt").write_text("ignored")
    for split in ("train", "test"):
        assert_split(data.load("cifar10", split, data_dir=tmp_path), expected[split], (32, 32, 3))


@pytest.mark.parametrize("prefix", ["", "cifar10/"])
def test_cifar_image_zip_roundtrip(tmp_path, prefix):
    files, expected = image_tree(seed=7)
    # In the data dir itself only cifar*.zip is considered; other zips are left alone.
    write_image_zip(tmp_path / "cifar10-png.zip", files, prefix)
    (tmp_path / "unrelated.zip").write_bytes(b"not a zip, and never opened")
    for split in ("train", "test"):
        assert_split(data.load("cifar10", split, data_dir=tmp_path), expected[split], (32, 32, 3))


def test_zip_without_layout_is_skipped(tmp_path):
    """A zip with other contents is not a source; a later candidate dir is used."""
    (tmp_path / "cifar10").mkdir()
    with zipfile.ZipFile(tmp_path / "cifar10" / "other.zip", "w") as zf:
        zf.writestr("readme.txt", "hello")
    batches = cifar_batches(seed=8)
    write_cifar_dir(tmp_path / "cifar-10-batches-bin", batches, "binary")
    assert_split(data.load("cifar10", "test", data_dir=tmp_path), expected_split(batches, "test"), (32, 32, 3))


def test_image_folder_class_order_and_natural_sort(tmp_path):
    rng = np.random.default_rng(9)
    imgs = {name: rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for name in ("b2", "b10", "a1", "c1")}
    write_image_folder(
        tmp_path,
        {
            "train/beta/img2.png": imgs["b2"],
            "train/beta/img10.png": imgs["b10"],
            "train/alpha/x.png": imgs["a1"],
            "test/gamma/y.png": imgs["c1"],
        },
    )
    # Class names are the union over both splits; not the preferred set -> sorted.
    x, y, classes = imagefolder.read_image_folder(tmp_path, "train", class_order=("gamma", "beta"))
    assert classes == ("alpha", "beta", "gamma")
    assert y.tolist() == [0, 1, 1]
    np.testing.assert_array_equal(x, np.stack([imgs["a1"], imgs["b2"], imgs["b10"]]))
    # Exactly the preferred set (any case) -> preferred order.
    x, y, classes = imagefolder.read_image_folder(tmp_path, "train", class_order=("Gamma", "beta", "ALPHA"))
    assert classes == ("gamma", "beta", "alpha") and y.tolist() == [1, 1, 2]
    np.testing.assert_array_equal(x, np.stack([imgs["b2"], imgs["b10"], imgs["a1"]]))


def test_image_folder_converts_grayscale_to_rgb(tmp_path):
    gray = np.arange(32 * 32, dtype=np.uint16).reshape(32, 32).astype(np.uint8)
    (tmp_path / "train" / "a").mkdir(parents=True)
    Image.fromarray(gray, mode="L").save(tmp_path / "train" / "a" / "0.png")
    x, y, _ = imagefolder.read_image_folder(tmp_path, "train")
    assert x.shape == (1, 32, 32, 3)
    np.testing.assert_array_equal(x[0], np.repeat(gray[..., None], 3, axis=-1))


# ----------------------------------------------------------------- cache


def test_cache_hit_skips_decoding(tmp_path, monkeypatch):
    expected = make_mnist(tmp_path / "mnist")
    calls = []
    real_read_idx = idx.read_idx
    monkeypatch.setattr(idx, "read_idx", lambda *a, **k: calls.append(a) or real_read_idx(*a, **k))
    first = data.load("mnist", "train", data_dir=tmp_path)
    assert len(calls) == 2  # images + labels
    assert len(list((tmp_path / "cache").glob("mnist-train-*.npz"))) == 1
    assert not [p for p in (tmp_path / "cache").iterdir() if p.suffix != ".npz"]  # no temp files left

    def fail(*a, **k):
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(idx, "read_idx", fail)
    second = data.load("mnist", "train", data_dir=tmp_path)
    assert_split(second, expected["train"], (28, 28, 1))
    assert_split(first, expected["train"], (28, 28, 1))


def test_cache_hit_does_not_even_list_the_zip(tmp_path, monkeypatch):
    files, expected = image_tree(seed=10, n_train=1)
    write_image_zip(tmp_path / "cifar10" / "anything.zip", files, "top/")
    data.load("cifar10", "test", data_dir=tmp_path)

    def fail(*a, **k):
        raise AssertionError("zip read although cached")

    monkeypatch.setattr(imagefolder, "list_image_zip", fail)
    monkeypatch.setattr(imagefolder, "decode_image", fail)
    assert_split(data.load("cifar10", "test", data_dir=tmp_path), expected["test"], (32, 32, 3))


def test_cache_invalidated_when_source_changes(tmp_path, monkeypatch):
    make_mnist(tmp_path / "mnist")
    images, labels = data.load("mnist", "test", data_dir=tmp_path)
    new_labels = (labels + 1) % 10
    write_idx(tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz", new_labels.astype(np.uint8))
    images2, labels2 = data.load("mnist", "test", data_dir=tmp_path)
    np.testing.assert_array_equal(labels2, new_labels)
    np.testing.assert_array_equal(images2, images)
    assert len(list((tmp_path / "cache").glob("mnist-test-*.npz"))) == 2


def test_cache_invalidated_when_image_folder_changes(tmp_path):
    files, expected = image_tree(seed=11, n_train=1)
    write_image_folder(tmp_path / "cifar10", files)
    assert_split(data.load("cifar10", "test", data_dir=tmp_path), expected["test"], (32, 32, 3))
    new = np.full((32, 32, 3), 9, np.uint8)
    (tmp_path / "cifar10" / "test" / "truck" / "img99.png").write_bytes(png_bytes(new))
    images, labels = data.load("cifar10", "test", data_dir=tmp_path)
    assert len(images) == len(expected["test"][0]) + 1
    np.testing.assert_array_equal(images[-1], new)
    assert labels[-1] == 9


def test_corrupt_cache_is_ignored_and_rebuilt(tmp_path):
    expected = make_mnist(tmp_path / "mnist")
    data.load("mnist", "train", data_dir=tmp_path)
    (entry,) = (tmp_path / "cache").glob("mnist-train-*.npz")
    entry.write_bytes(entry.read_bytes()[:100])  # truncated
    with pytest.warns(RuntimeWarning, match="unreadable cache"):
        result = data.load("mnist", "train", data_dir=tmp_path)
    assert_split(result, expected["train"], (28, 28, 1))
    assert_split(cache.read_cache(entry), expected["train"], (28, 28, 1))  # rewritten whole


def test_explicit_cache_dir_argument(tmp_path):
    make_mnist(tmp_path / "mnist")
    data.load("mnist", "test", data_dir=tmp_path, cache_dir=tmp_path / "mine")
    assert len(list((tmp_path / "mine").glob("mnist-test-*.npz"))) == 1
    assert not (tmp_path / "cache").exists()


# ----------------------------------------------------------------- corrupt files


def _mnist_with(tmp_path, filename: str, content: bytes) -> Path:
    make_mnist(tmp_path / "mnist")
    target = tmp_path / "mnist" / filename
    target.write_bytes(content)
    return target


def test_truncated_gzip(tmp_path):
    raw = gzip.compress(idx_bytes(np.zeros((5, 28, 28), np.uint8)))
    target = _mnist_with(tmp_path, "train-images-idx3-ubyte.gz", raw[: len(raw) // 2])
    with pytest.raises(DataFormatError, match="truncated gzip") as e:
        data.load("mnist", "train", data_dir=tmp_path)
    assert str(target) in str(e.value)


def test_gz_name_but_not_gzip(tmp_path):
    target = _mnist_with(tmp_path, "train-labels-idx1-ubyte.gz", idx_bytes(np.zeros(5, np.uint8)))
    with pytest.raises(DataFormatError, match="not gzip") as e:
        data.load("mnist", "train", data_dir=tmp_path)
    assert str(target) in str(e.value)


def test_wrong_magic(tmp_path):
    # A label file where the image file should be.
    target = _mnist_with(tmp_path, "t10k-images-idx3-ubyte.gz", gzip.compress(idx_bytes(np.zeros(3, np.uint8))))
    with pytest.raises(DataFormatError, match=r"bad magic number 0x00000801, expected 0x00000803") as e:
        data.load("mnist", "test", data_dir=tmp_path)
    assert str(target) in str(e.value)


def test_header_count_vs_bytes(tmp_path):
    raw = idx_bytes(np.zeros((5, 28, 28), np.uint8))[:-784]  # header says 5, holds 4
    target = _mnist_with(tmp_path, "train-images-idx3-ubyte.gz", gzip.compress(raw))
    with pytest.raises(DataFormatError, match=r"header says shape \(5, 28, 28\).*truncated") as e:
        data.load("mnist", "train", data_dir=tmp_path)
    assert str(target) in str(e.value)


def test_label_image_count_mismatch(tmp_path):
    target = _mnist_with(tmp_path, "train-labels-idx1-ubyte.gz", gzip.compress(idx_bytes(np.zeros(4, np.uint8))))
    with pytest.raises(DataFormatError, match="4 labels but 5 images") as e:
        data.load("mnist", "train", data_dir=tmp_path)
    assert str(target) in str(e.value)


def test_labels_out_of_range(tmp_path):
    labels = gzip.compress(idx_bytes(np.array([1, 12, 3], np.uint8)))
    target = _mnist_with(tmp_path, "t10k-labels-idx1-ubyte.gz", labels)
    with pytest.raises(DataFormatError, match="label 12 at index 1 is out of range") as e:
        data.load("mnist", "test", data_dir=tmp_path)
    assert str(target) in str(e.value)


def test_wrong_image_size_idx(tmp_path):
    images = gzip.compress(idx_bytes(np.zeros((3, 27, 28), np.uint8)))
    target = _mnist_with(tmp_path, "t10k-images-idx3-ubyte.gz", images)
    with pytest.raises(DataFormatError, match="27x28, expected 28x28") as e:
        data.load("mnist", "test", data_dir=tmp_path)
    assert str(target) in str(e.value)


def test_truncated_cifar_binary(tmp_path):
    batches = cifar_batches(seed=12)
    folder = tmp_path / "cifar10" / "cifar-10-batches-bin"
    write_cifar_dir(folder, batches, "binary")
    target = folder / "data_batch_3.bin"
    target.write_bytes(target.read_bytes()[:-10])
    with pytest.raises(DataFormatError, match="not a multiple of the 3073-byte") as e:
        data.load("cifar10", "train", data_dir=tmp_path)
    assert str(target) in str(e.value)


def test_cifar_binary_bad_label(tmp_path):
    x, y = random_cifar(np.random.default_rng(0), 2)
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    (folder / "test_batch.bin").write_bytes(cifar_record_bytes(x, np.array([3, 10])))
    with pytest.raises(DataFormatError, match="label 10 at record 1 is out of range") as e:
        data.load("cifar10", "test", data_dir=tmp_path)
    assert "test_batch.bin" in str(e.value)


def test_cifar_pickle_errors(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    x, y = random_cifar(np.random.default_rng(0), 3)
    target = folder / "test_batch"
    good = pickle.loads(cifar_pickle_bytes(x, y))
    target.write_bytes(pickle.dumps({**good, b"labels": [1, 2]}))
    with pytest.raises(DataFormatError, match="2 labels for 3 images") as e:
        data.load("cifar10", "test", data_dir=tmp_path)
    assert str(target) in str(e.value)
    target.write_bytes(pickle.dumps({b"labels": [1, 2, 3]}))
    with pytest.raises(DataFormatError, match="no b'data' entry"):
        data.load("cifar10", "test", data_dir=tmp_path)
    # A pickle naming any global other than numpy's array machinery is refused.
    target.write_bytes(pickle.dumps(types.SimpleNamespace()))
    with pytest.raises(DataFormatError, match="refusing to load global types.SimpleNamespace"):
        data.load("cifar10", "test", data_dir=tmp_path)


def test_truncated_cifar_tarball(tmp_path):
    target = tmp_path / "cifar-10-binary.tar.gz"
    write_cifar_tar(target, cifar_batches(seed=13), "binary")
    target.write_bytes(target.read_bytes()[:-200])
    with pytest.raises(DataFormatError) as e:
        data.load("cifar10", "test", data_dir=tmp_path)
    assert str(target) in str(e.value)


def test_bad_zip(tmp_path):
    target = tmp_path / "cifar10" / "cifar10-jpeg.zip"
    target.parent.mkdir()
    target.write_bytes(b"PK\x03\x04 this is not really a zip file" * 10)
    with pytest.raises(DataFormatError, match="not a readable zip") as e:
        data.load("cifar10", "train", data_dir=tmp_path)
    assert str(target) in str(e.value)


def test_truncated_zip(tmp_path):
    files, _ = image_tree(seed=14, n_train=1)
    target = tmp_path / "cifar10" / "images.zip"
    write_image_zip(target, files)
    target.write_bytes(target.read_bytes()[:-100])
    with pytest.raises(DataFormatError, match="not a readable zip") as e:
        data.load("cifar10", "train", data_dir=tmp_path)
    assert str(target) in str(e.value)


def test_undecodable_and_wrong_size_images(tmp_path):
    files, _ = image_tree(seed=15, n_train=1)
    root = tmp_path / "cifar10"
    write_image_folder(root, files)
    bad = root / "train" / "dog" / "img1.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataFormatError, match="cannot decode image") as e:
        data.load("cifar10", "train", data_dir=tmp_path)
    assert "train/dog/img1.png" in str(e.value)
    bad.write_bytes(png_bytes(np.zeros((32, 31, 3), np.uint8)))
    with pytest.raises(DataFormatError, match=r"image is 32x31 \(HxW\), expected 32x32") as e:
        data.load("cifar10", "train", data_dir=tmp_path)
    assert "train/dog/img1.png" in str(e.value)


def test_wrong_number_of_classes(tmp_path):
    files, _ = image_tree(seed=16, n_train=1, classes=("cat", "dog"))
    write_image_zip(tmp_path / "cifar10" / "x.zip", files)
    with pytest.raises(DataFormatError, match=r"found 2 class folders \['cat', 'dog'\], expected 10"):
        data.load("cifar10", "train", data_dir=tmp_path)


# ----------------------------------------------------------------- not found / tfds / arguments


def test_nothing_found_lists_paths_and_tfds_error(tmp_path, monkeypatch):
    # The real fallback, with tensorflow_datasets made unimportable.
    monkeypatch.setattr(sources, "load_from_tfds", REAL_LOAD_FROM_TFDS)
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    (tmp_path / "mnist").mkdir()
    write_idx(tmp_path / "mnist" / "train-images-idx3-ubyte.gz", np.zeros((1, 28, 28), np.uint8))
    with pytest.raises(data.DatasetNotFoundError) as e:
        data.load("mnist", "train", data_dir=tmp_path)
    assert isinstance(e.value, FileNotFoundError)
    msg = str(e.value)
    for part in (
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        str(tmp_path / "mnist"),
        "found train-images-idx3-ubyte.gz but not train-labels-idx1-ubyte.gz",
        "JDLFS_DATA_DIR",
        "data_dir=<dir>",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "tensorflow-datasets is not usable here",
        "tensorflow_datasets",
    ):
        assert part in msg, part
    # One error, not a chain: the tfds failure is summed up in the message.
    assert e.value.__cause__ is None and e.value.__suppress_context__
    assert e.value.looked[0].startswith(str(tmp_path / "mnist"))


def test_not_found_error_describe_and_pickle(tmp_path):
    with pytest.raises(data.DatasetNotFoundError) as e:
        data.load("mnist", "test", data_dir=tmp_path)
    err = e.value
    cli = err.describe("--data-dir", "pass --data-dir <dir>")
    assert "--data-dir <dir>" in cli and "data_dir=" not in cli and "JDLFS_DATA_DIR" in cli
    assert cli.splitlines()[1:3] == str(err).splitlines()[1:3]  # same facts, other wording
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is data.DatasetNotFoundError and str(again) == str(err) and again.looked == err.looked


def test_nothing_found_fashion_mentions_apt_and_all_dirs(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        data.load("fashion_mnist", "test", data_dir=tmp_path / "nowhere")
    msg = str(e.value)
    for d in ("fashion_mnist", "fashion-mnist", ""):
        assert f"{tmp_path / 'nowhere' / d}: does not exist" in msg
    assert "t10k-images-idx3-ubyte.gz" in msg and "apt-get install dataset-fashion-mnist" in msg
    assert "tensorflow-datasets disabled in tests" in msg


def test_nothing_found_cifar_without_any_dir():
    with pytest.raises(FileNotFoundError) as e:
        data.load("cifar10", "train")
    msg = str(e.value)
    assert "No data directory was given" in msg
    assert "cifar-10-binary.tar.gz" in msg and "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in msg


# The real tensorflow-datasets code path, offline. tfds reads copies it has
# prepared (ArrayRecord, no TensorFlow needed) and never downloads.


@pytest.fixture
def real_tfds(tmp_path, monkeypatch):
    """The real fallback, tfds's data folder empty, and any network connection an error."""
    import socket

    pytest.importorskip("tensorflow_datasets")
    monkeypatch.setattr(sources, "load_from_tfds", REAL_LOAD_FROM_TFDS)
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))

    def no_network(*args, **kwargs):
        raise AssertionError("jdlfs.data tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    return tmp_path / "tfds"


@pytest.mark.parametrize("name, shape", [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_tfds_branch_with_mock_data(real_tfds, tmp_path, monkeypatch, name, shape):
    import tensorflow_datasets as tfds

    # tensorflow-datasets 4.9.10 imports importlib_resources, which it does not
    # declare, when it prepares a dataset; the read-only path must not need it.
    monkeypatch.setitem(sys.modules, "importlib_resources", None)
    with tfds.testing.mock_data(num_examples=6):
        x, y = data.load(name, "test", data_dir=tmp_path / "empty")
    assert x.dtype == np.uint8 and x.shape == (6, *shape)
    assert y.dtype == np.int32 and y.shape == (6,) and 0 <= y.min() and y.max() <= 9
    assert len(np.unique(x.reshape(6, -1), axis=0)) > 1  # random examples, not one repeated


def test_tfds_not_prepared_is_one_quiet_error(real_tfds, tmp_path, capfd):
    with pytest.raises(data.DatasetNotFoundError) as e:
        data.load("mnist", "train", data_dir=tmp_path / "nowhere")
    msg = str(e.value)
    assert f"tensorflow-datasets has no prepared copy in {real_tfds / 'mnist'}" in msg
    assert "never downloads" in msg and "JDLFS_DATA_DIR" in msg
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # no download announcement, no absl warnings
    assert not real_tfds.exists()  # nothing written either


def test_tfds_labels_out_of_range_are_a_format_error(real_tfds, tmp_path):
    import tensorflow_datasets as tfds

    bad = [{"image": np.zeros((28, 28, 1), np.uint8), "label": np.int64(label)} for label in (3, 12)]
    with (
        tfds.testing.mock_data(as_data_source_fn=lambda builder, split, **kwargs: bad),
        pytest.raises(DataFormatError, match=r"tensorflow-datasets mnist/test.*expected 0\.\.9"),
    ):
        data.load("mnist", "test", data_dir=tmp_path / "empty")


def test_unknown_name_or_split():
    with pytest.raises(ValueError, match=r"unknown dataset name 'cifar100'.*'cifar10', 'fashion_mnist', 'mnist'"):
        data.load("cifar100", "train")
    with pytest.raises(ValueError, match=r"unknown split 'val'.*'train', 'test'"):
        data.load("mnist", "val")


# ----------------------------------------------------------------- pipeline


def test_fit_normalizer_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (37, 5, 4, 3), dtype=np.uint8)
    x[..., 2] //= 4  # make the channels differ
    norm = data.fit_normalizer(x, chunk_rows=100)  # several chunks
    ref = x.astype(np.float64) / 255.0
    assert norm.mean.dtype == np.float32 and norm.mean.shape == (3,) and norm.std.shape == (3,)
    np.testing.assert_allclose(norm.mean, ref.mean(axis=(0, 1, 2)), rtol=1e-6)
    np.testing.assert_allclose(norm.std, ref.std(axis=(0, 1, 2)), rtol=1e-6)
    test = rng.integers(0, 256, (4, 5, 4, 3), dtype=np.uint8)
    out = norm.apply(test)
    assert out.dtype == np.float32 and isinstance(out, np.ndarray)
    expected = (test / 255.0 - ref.mean(axis=(0, 1, 2))) / ref.std(axis=(0, 1, 2))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    # jax input, inside jit, with the normalizer passed as a pytree argument.
    out_jit = jax.jit(lambda n, t: n.apply(t))(norm, jnp.asarray(test))
    assert out_jit.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out_jit), out, rtol=1e-6, atol=1e-6)
    # Standardised training data has mean 0 and std 1 per channel.
    z = norm.apply(x)
    np.testing.assert_allclose(z.mean(axis=(0, 1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=(0, 1, 2)), 1, atol=1e-5)


def test_fit_normalizer_rejects_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        data.fit_normalizer(np.zeros((2, 3, 3, 1), np.float32))
    with pytest.raises(ValueError, match="constant"):
        data.fit_normalizer(np.full((2, 3, 3, 1), 7, np.uint8))
    norm = data.fit_normalizer(np.arange(24, dtype=np.uint8).reshape(2, 2, 2, 3))
    with pytest.raises(ValueError, match="1 channels"):
        norm.apply(np.zeros((1, 2, 2, 1), np.uint8))


def _toy(n=23):
    images = np.arange(n * 2 * 2, dtype=np.uint8).reshape(n, 2, 2, 1)
    return images, np.arange(n, dtype=np.int32)


def test_shuffle_is_key_determined_and_consistent():
    x, y = _toy()
    a = data.shuffle(jax.random.key(0), x, y)
    b = data.shuffle(jax.random.key(0), x, y)
    c = data.shuffle(jax.random.key(1), x, y)
    assert isinstance(a[0], np.ndarray)
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])
    assert sorted(a[1].tolist()) == list(range(len(y)))
    np.testing.assert_array_equal(a[0], x[a[1]])  # same permutation for both arrays
    (only,) = data.shuffle(jax.random.key(0), jnp.asarray(y))
    np.testing.assert_array_equal(np.asarray(only), a[1])
    with pytest.raises(ValueError, match="leading dimension"):
        data.shuffle(jax.random.key(0), x, y[:-1])


@pytest.mark.parametrize("to_jax", [False, True])
def test_batches_cover_epoch_once(to_jax):
    x, y = _toy()
    if to_jax:
        x, y = jnp.asarray(x), jnp.asarray(y)
    full = list(data.batches(jax.random.key(3), (x, y), 5, drop_remainder=False))
    assert [len(b[1]) for b in full] == [5, 5, 5, 5, 3]
    seen = np.concatenate([np.asarray(b[1]) for b in full])
    assert sorted(seen.tolist()) == list(range(23))
    for bx, by in full:
        np.testing.assert_array_equal(np.asarray(bx), np.asarray(x)[np.asarray(by)])
    dropped = list(data.batches(jax.random.key(3), (x, y), 5))
    assert [len(b[1]) for b in dropped] == [5, 5, 5, 5]
    np.testing.assert_array_equal(np.concatenate([np.asarray(b[1]) for b in dropped]), seen[:20])
    other = np.concatenate([np.asarray(b[1]) for b in data.batches(jax.random.key(4), (x, y), 5)])
    assert not np.array_equal(other, seen[:20])
    ordered = np.concatenate([np.asarray(b[1]) for b in data.batches(None, (x, y), 5, drop_remainder=False)])
    np.testing.assert_array_equal(ordered, np.arange(23))
    with pytest.raises(ValueError, match="batch_size"):
        next(data.batches(None, (x, y), 0))


def test_epoch_arrays_shapes_and_determinism():
    x, y = _toy()
    xd, yd = jax.device_put(x), jax.device_put(y)
    bx, by = data.epoch_arrays(jax.random.key(5), (xd, yd), 4)
    assert bx.shape == (5, 4, 2, 2, 1) and bx.dtype == jnp.uint8
    assert by.shape == (5, 4) and by.dtype == jnp.int32
    flat = np.asarray(by).ravel()
    assert len(set(flat.tolist())) == 20  # each example at most once, 20 used
    np.testing.assert_array_equal(np.asarray(bx).reshape(20, 2, 2, 1), x[flat])
    bx2, by2 = data.epoch_arrays(jax.random.key(5), (x, y), 4)  # numpy input works too
    np.testing.assert_array_equal(np.asarray(by2), np.asarray(by))
    _, by3 = data.epoch_arrays(jax.random.key(6), (xd, yd), 4)
    assert not np.array_equal(np.asarray(by3), np.asarray(by))
    _, unshuffled = data.epoch_arrays(None, (xd, yd), 4)
    np.testing.assert_array_equal(np.asarray(unshuffled).ravel(), np.arange(20))

    # Usable inside a jitted training epoch with a traced key.
    def epoch_sum(key, images, labels):
        xb, yb = data.epoch_arrays(key, (images, labels), 4)
        total, _ = jax.lax.scan(lambda c, b: (c + b[1].sum(), None), 0, (xb, yb))
        return total

    assert int(jax.jit(epoch_sum)(jax.random.key(5), xd, yd)) == int(flat.sum())
    with pytest.raises(ValueError, match="batch_size must be in 1..23"):
        data.epoch_arrays(jax.random.key(0), (xd, yd), 24)


def test_batches_and_epoch_arrays_take_any_batch_pytree():
    x, y = _toy()
    tree = {"image": x, "label": y, "pair": (y, y * 2)}
    got = list(data.batches(jax.random.key(3), tree, 5))
    assert len(got) == 4 and set(got[0]) == {"image", "label", "pair"}
    for b in got:
        np.testing.assert_array_equal(b["image"], x[b["label"]])
        np.testing.assert_array_equal(b["pair"][1], 2 * b["label"])
    stacked = data.epoch_arrays(jax.random.key(3), tree, 5)
    assert stacked["image"].shape == (4, 5, 2, 2, 1) and stacked["pair"][0].shape == (4, 5)
    np.testing.assert_array_equal(np.asarray(stacked["pair"][1]), 2 * np.asarray(stacked["label"]))
    single = data.epoch_arrays(None, jnp.asarray(y), 5)  # a single array is a pytree too
    np.testing.assert_array_equal(np.asarray(single), y[:20].reshape(4, 5))
    with pytest.raises(ValueError, match="leading dimension"):
        next(data.batches(None, (x, y[:-1]), 5))


def test_train_val_split():
    x, y = _toy(20)
    (tx, ty), (vx, vy) = data.train_val_split(jax.random.key(7), x, y, 0.25)
    assert len(ty) == 15 and len(vy) == 5
    assert sorted(np.concatenate([ty, vy]).tolist()) == list(range(20))
    np.testing.assert_array_equal(tx, x[ty])
    np.testing.assert_array_equal(vx, x[vy])
    (_, ty2), (_, vy2) = data.train_val_split(jax.random.key(7), x, y, 0.25)
    np.testing.assert_array_equal(vy2, vy)
    (_, _), (_, vy3) = data.train_val_split(jax.random.key(8), x, y, 0.25)
    assert not np.array_equal(vy3, vy)
    for bad in (0.0, 1.0, 0.01):
        with pytest.raises(ValueError, match="val_fraction"):
            data.train_val_split(jax.random.key(7), x, y, bad)


# ----------------------------------------------------------------- real data


def _real_has(*parts: str) -> bool:
    return REAL_DATA_DIR is not None and Path(REAL_DATA_DIR, *parts).exists()


@pytest.mark.skipif(not _real_has("mnist"), reason="set JDLFS_DATA_DIR to a folder with mnist/ to run")
def test_real_mnist():
    x, y = data.load("mnist", "train", data_dir=REAL_DATA_DIR, cache_dir=REAL_CACHE_DIR)
    xt, yt = data.load("mnist", "test", data_dir=REAL_DATA_DIR, cache_dir=REAL_CACHE_DIR)
    assert x.shape == (60000, 28, 28, 1) and x.dtype == np.uint8 and y.dtype == np.int32
    assert xt.shape == (10000, 28, 28, 1) and yt.shape == (10000,)
    assert y.min() == 0 and y.max() == 9 and yt.min() == 0 and yt.max() == 9
    assert np.bincount(y, minlength=10).sum() == 60000
    # Well-known facts about MNIST: the first digits are 5, 0, 4 / 7, 2, 1,
    # and the training set has 5923 zeros and 6742 ones.
    assert y[:3].tolist() == [5, 0, 4] and yt[:3].tolist() == [7, 2, 1]
    assert np.bincount(y)[:2].tolist() == [5923, 6742]
    assert x.max() == 255 and x[0, 0, 0, 0] == 0


@pytest.mark.slow
@pytest.mark.skipif(not _real_has("cifar10"), reason="set JDLFS_DATA_DIR to a folder with cifar10/ to run")
def test_real_cifar10():
    t0 = time.perf_counter()
    x, y = data.load("cifar10", "train", data_dir=REAL_DATA_DIR, cache_dir=REAL_CACHE_DIR)
    xt, yt = data.load("cifar10", "test", data_dir=REAL_DATA_DIR, cache_dir=REAL_CACHE_DIR)
    print(f"cifar10 train+test load: {time.perf_counter() - t0:.2f}s")
    assert x.shape == (50000, 32, 32, 3) and x.dtype == np.uint8 and y.dtype == np.int32
    assert xt.shape == (10000, 32, 32, 3) and yt.shape == (10000,)
    assert np.bincount(y, minlength=10).tolist() == [5000] * 10
    assert np.bincount(yt, minlength=10).tolist() == [1000] * 10
    # Image-folder order is class then file name: labels are sorted.
    assert np.all(np.diff(y) >= 0) and np.all(np.diff(yt) >= 0)
    # Real photos: every channel spans (almost) the full range, mean near 120.
    mean = x.reshape(-1, 3).mean(axis=0)
    assert np.all((100 < mean) & (mean < 140)), mean
