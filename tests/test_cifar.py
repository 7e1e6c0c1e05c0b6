"""CIFAR-10 study: the JAX augmentation (``jdlfs.data.augment``) and the
``experiments/cifar_cnn.py`` quick run (every figure and result key, and a
rerun with the same ``--out`` resuming instead of retraining)."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdlfs import data

ROOT = Path(__file__).resolve().parents[1]


def _images(dtype=jnp.uint8, n=16, h=8, w=10, c=3, seed=0):
    """Images with no zero pixel (values 1..200), so zeros mark padding."""
    x = np.random.default_rng(seed).integers(1, 200, (n, h, w, c))
    return jnp.asarray(x, dtype)


# ---------------------------------------------------------------- augmentation
@pytest.mark.parametrize("fn", [data.random_crop, data.random_flip, data.crop_and_flip])
@pytest.mark.parametrize("dtype", [jnp.uint8, jnp.int32, jnp.float32, jnp.bfloat16, jnp.float16])
def test_augment_keeps_shape_and_dtype(fn, dtype):
    x = _images(dtype)
    y = jax.jit(fn)(jax.random.key(0), x)
    assert y.shape == x.shape and y.dtype == x.dtype


@pytest.mark.parametrize("fn", [data.random_crop, data.random_flip, data.crop_and_flip])
def test_augment_same_key_same_result_other_key_differs(fn):
    x = _images()
    a, b = fn(jax.random.key(3), x), fn(jax.random.key(3), x)
    np.testing.assert_array_equal(a, b)
    c = fn(jax.random.key(4), x)
    assert not np.array_equal(a, c)


def test_flip_mirrors_exactly_the_width_axis():
    x = _images()
    np.testing.assert_array_equal(data.random_flip(jax.random.key(0), x, prob=1.0), x[:, :, ::-1])
    np.testing.assert_array_equal(data.random_flip(jax.random.key(0), x, prob=0.0), x)
    y = np.asarray(data.random_flip(jax.random.key(1), x))
    flipped = [np.array_equal(y[i], np.asarray(x)[i, :, ::-1]) for i in range(len(x))]
    kept = [np.array_equal(y[i], np.asarray(x)[i]) for i in range(len(x))]
    assert all(f or k for f, k in zip(flipped, kept))  # per image: mirrored left-right or untouched
    assert any(flipped) and any(kept)  # decided per image, not per batch


def test_crop_is_a_window_of_the_zero_padded_image():
    x = np.asarray(_images(n=64))
    p = 4
    padded = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    y = np.asarray(data.random_crop(jax.random.key(2), x, padding=p))
    h, w = x.shape[1:3]
    offsets = set()
    for i in range(len(x)):
        hits = [
            (dy, dx)
            for dy in range(2 * p + 1)
            for dx in range(2 * p + 1)
            if np.array_equal(y[i], padded[i, dy : dy + h, dx : dx + w])
        ]
        assert hits, f"image {i} is not a window of its padded image"
        offsets.add(hits[0])
        zero_rows = np.all(y[i] == 0, axis=(1, 2))
        zero_cols = np.all(y[i] == 0, axis=(0, 2))
        assert zero_rows.sum() <= p and zero_cols.sum() <= p  # at most `padding` zero rows / columns
    assert len(offsets) > 10  # offsets drawn per image


def test_crop_and_flip_composes_a_crop_and_a_mirror():
    x = np.asarray(_images(n=32))
    p = 4
    padded = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    y = np.asarray(data.crop_and_flip(jax.random.key(5), x))
    h, w = x.shape[1:3]
    for i in range(len(x)):
        windows = [padded[i, dy : dy + h, dx : dx + w] for dy in range(2 * p + 1) for dx in range(2 * p + 1)]
        assert any(np.array_equal(y[i], win) or np.array_equal(y[i], win[:, ::-1]) for win in windows)


def test_augment_refuses_bad_input():
    with pytest.raises(ValueError, match="images must be a batch NHWC"):
        data.random_crop(jax.random.key(0), jnp.zeros((8, 8, 3)))
    with pytest.raises(ValueError, match="padding"):
        data.random_crop(jax.random.key(0), jnp.zeros((2, 8, 8, 3)), padding=-1)
    with pytest.raises(ValueError, match="prob"):
        data.random_flip(jax.random.key(0), jnp.zeros((2, 8, 8, 3)), prob=1.5)


# ---------------------------------------------------------------- the experiment
def _data_dir() -> str:
    d = os.environ.get("JDLFS_DATA_DIR")
    if not d or not (Path(d) / "cifar10").is_dir():
        pytest.skip("CIFAR-10 not found: needs ../shared/data/cifar10 (or $JDLFS_DATA_DIR/cifar10)")
    return d


def _script():
    spec = importlib.util.spec_from_file_location("cifar_cnn", ROOT / "experiments" / "cifar_cnn.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


FIGURES = ("curves.png", "lr_sweep.png", "grad_norms.png", "per_class.png", "confusion.png", "filters.png")
KEYS = (
    "test_accuracy_bn",
    "test_accuracy_plain",
    "bn_minus_plain_points",
    "lr_sweep",
    "grad_norms",
    "per_class_accuracy",
    "largest_confusion",
    "confusion_matrix",
    "history",
    "timing",
    "recipe",
    "data",
)


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory):
    """One --quick study, then the same command again on its folder."""
    data_dir = _data_dir()
    out = tmp_path_factory.mktemp("cifar") / "run"
    argv = ["--quick", "--no-progress", "--data-dir", data_dir, "--out", str(out)]
    script = _script()
    first = script.main(argv)
    second = script.main(argv)
    return out, first, second


def test_quick_run_writes_every_figure_and_result(quick_runs):
    out, first, _ = quick_runs
    for name in FIGURES:
        assert (out / name).is_file() and (out / name).stat().st_size > 1000, name
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["status"] == "finished" and on_disk["quick"] is True
    for key in KEYS:
        assert key in first and key in on_disk, key
    for m in ("bn", "plain"):
        assert set(first["grad_norms"][m]) == {"init", "trained"}
        assert set(first["grad_norms"][m]["init"]) == {"conv1", "conv2", "conv3", "fc1", "fc2"}
        assert all(np.isfinite(v) and v > 0 for v in first["grad_norms"][m]["init"].values())
        assert list(first["per_class_accuracy"][m]) == list(data.CIFAR10_CLASSES)
        assert len(first["lr_sweep"]["accuracy"][m]) == 2
        assert np.asarray(first["confusion_matrix"][m]).sum() == first["test_examples"]
    assert first["largest_confusion"]["bn"]["true"] in data.CIFAR10_CLASSES
    assert "JPEG" in first["data"]
    assert all(v == 1 for v in first["epochs_trained_this_run"].values())  # quick: 1 epoch each


def test_quick_run_resumes_without_retraining(quick_runs):
    out, first, second = quick_runs
    assert second["resumed"] is True
    assert second["epochs_trained_this_run"] == {k: 0 for k in ("main-bn", "main-plain")}  # sweep: not even fit
    assert second["history"] == first["history"]
    assert second["lr_sweep"] == first["lr_sweep"]
    assert second["test_accuracy_bn"] == first["test_accuracy_bn"]
    assert second["grad_norms"] == first["grad_norms"]
