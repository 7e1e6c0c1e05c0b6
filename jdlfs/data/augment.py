"""Image augmentation in JAX with explicit keys, for use inside a compiled step.

Each function takes ``(key, images)`` with ``images`` a batch NHWC of any
dtype (uint8 straight from :func:`jdlfs.data.load`, or floats) and returns a
batch of the same shape and dtype; every image gets its own random draw, and
the same key gives the same result. They are what
``train.classification(model, augment=...)`` expects: ``augment(key, raw)``
runs on the raw batch inside the jitted train step.

* :func:`random_crop` -- pad by ``padding`` zero pixels on each side, then cut
  an ``H x W`` window at a random offset in ``[0, 2 * padding]`` per image
  (the CIFAR "random crop with 4-pixel padding").
* :func:`random_flip` -- mirror each image left-right (the width axis only)
  with probability ``prob``.
* :func:`crop_and_flip` -- both, with independent keys.

Cost: the crop is one pad of the batch plus a ``lax.dynamic_slice`` per image
(``vmap`` turns it into one gather), the flip one ``select`` between the batch
and its mirror: both are elementwise-cheap, well under 1% of the CIFAR CNN's
train step (measured in ``experiments/cifar_cnn.py``'s docstring).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["crop_and_flip", "random_crop", "random_flip"]


def _check_images(images, fn: str):
    images = jnp.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"{fn}: images must be a batch NHWC (rank 4), got shape {tuple(images.shape)}")
    return images


def _check_padding(padding, fn: str) -> int:
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"{fn}: padding must be a non-negative Python int (static), got {padding!r}")
    return padding


def random_crop(key: jax.Array, images, padding: int = 4) -> jax.Array:
    """Zero-pad every image by ``padding`` pixels on each side of H and W, then
    crop an ``H x W`` window at a per-image random offset ``(dy, dx)``, each
    uniform in ``[0, 2 * padding]``. An offset of ``padding`` returns the
    image unchanged; at most ``padding`` rows/columns of zeros enter on any
    side."""
    images = _check_images(images, "random_crop")
    padding = _check_padding(padding, "random_crop")
    if padding == 0:
        return images
    n, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    offsets = jax.random.randint(key, (n, 2), 0, 2 * padding + 1)

    def cut(img, off):
        return lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, c))

    return jax.vmap(cut)(padded, offsets)


def random_flip(key: jax.Array, images, prob: float = 0.5) -> jax.Array:
    """Mirror each image along the width axis (``image[:, ::-1]``, i.e.
    ``images[:, :, ::-1]`` for the batch) with probability ``prob``."""
    images = _check_images(images, "random_flip")
    if not 0.0 <= float(prob) <= 1.0:
        raise ValueError(f"random_flip: prob must be in [0, 1], got {prob!r}")
    flip = jax.random.bernoulli(key, prob, (images.shape[0],))
    return jnp.where(flip[:, None, None, None], images[:, :, ::-1], images)


def crop_and_flip(key: jax.Array, images, padding: int = 4, prob: float = 0.5) -> jax.Array:
    """:func:`random_crop` then :func:`random_flip`, with keys split from ``key``."""
    k_crop, k_flip = jax.random.split(key)
    return random_flip(k_flip, random_crop(k_crop, images, padding), prob)
