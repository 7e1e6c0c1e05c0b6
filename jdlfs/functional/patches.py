"""Patch and token plumbing for the masked autoencoder.

patchify: ``(N, H, W, C) -> (N, L, p*p*C)`` with ``L = (H/p)(W/p)`` patches in
row-major order, each flattened as ``(pi, pj, c)``. It only moves entries, so
its VJP is the inverse move: ``dL/dimages = unpatchify(g)`` (and vice versa).

take_tokens: ``y[n, j] = x[n, idx[n, j]]`` (gather K of L tokens per example).
Its VJP scatters back: ``dL/dx[n, l] = sum_{j : idx[n, j] = l} g[n, j]`` —
untaken tokens get 0, a token taken twice gets both rows.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from .._checks import float_array, index_array, static_int


def _to_patches(images, p):
    n, h, w, c = images.shape
    x = images.reshape(n, h // p, p, w // p, p, c)  # (N, gh, p, gw, p, C)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(n, (h // p) * (w // p), p * p * c)


def _to_images(patches, p, hw):
    n = patches.shape[0]
    (h, w), c = hw, patches.shape[-1] // (p * p)
    x = patches.reshape(n, h // p, w // p, p, p, c)  # (N, gh, gw, p, p, C)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(n, h, w, c)


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def _patchify(images, p):
    return _to_patches(images, p)


def _patchify_fwd(images, p):
    return _to_patches(images, p), images.shape[1:3]


def _patchify_bwd(p, hw, g):
    return (_to_images(g, p, hw),)


_patchify.defvjp(_patchify_fwd, _patchify_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _unpatchify(patches, p, hw):
    return _to_images(patches, p, hw)


def _unpatchify_fwd(patches, p, hw):
    return _to_images(patches, p, hw), None


def _unpatchify_bwd(p, hw, _, g):
    return (_to_patches(g, p),)


_unpatchify.defvjp(_unpatchify_fwd, _unpatchify_bwd)


def patchify(images, patch: int):
    """``(N, H, W, C) -> (N, (H/p)(W/p), p*p*C)``; H and W must be multiples of ``patch``."""
    images = float_array("images", images, rank=4, layout="(N, H, W, C)")
    p = static_int("patch", patch, minimum=1)
    if images.shape[1] % p or images.shape[2] % p:
        raise ValueError(f"image size {images.shape[1:3]} is not divisible by patch={p}")
    return _patchify(images, p)


def unpatchify(patches, patch: int, image_shape):
    """Inverse of :func:`patchify`: ``(N, L, p*p*C) -> (N, H, W, C)`` for
    ``image_shape = (H, W, C)``."""
    patches = float_array("patches", patches, rank=3, layout="(N, L, p*p*C)")
    p = static_int("patch", patch, minimum=1)
    if len(tuple(image_shape)) != 3:
        raise ValueError(f"image_shape must be (H, W, C), got {tuple(image_shape)}")
    h, w, c = (int(s) for s in image_shape)
    if h % p or w % p:
        raise ValueError(f"image_shape {tuple(image_shape)} is not divisible by patch={p}")
    expected = (patches.shape[0], (h // p) * (w // p), p * p * c)
    if patches.shape != expected:
        raise ValueError(
            f"patches must have shape {expected} for image_shape {tuple(image_shape)} "
            f"and patch={p}, got {patches.shape}"
        )
    return _unpatchify(patches, p, (h, w))


@jax.custom_vjp
def _take_tokens(x, idx):
    return jnp.take_along_axis(x, idx[..., None], axis=1)  # idx already in [0, L)


def _take_tokens_fwd(x, idx):
    return _take_tokens(x, idx), (idx, x.shape)


def _take_tokens_bwd(res, g):
    idx, (n, length, d) = res
    rows = jnp.arange(n)[:, None]  # (N, 1)
    dx = jnp.zeros((n, length, d), g.dtype).at[rows, idx].add(g)
    return dx, None


_take_tokens.defvjp(_take_tokens_fwd, _take_tokens_bwd)


def take_tokens(x, idx):
    """Gather tokens per example: ``x (N, L, D)``, ``idx (N, K)`` int -> ``(N, K, D)``.
    Backward scatters the cotangent back (repeated indices accumulate). Indices
    of any integer dtype give what int32 indices give; those outside [0, L) are
    clipped to the nearest token, in both passes alike."""
    x = float_array("x", x, rank=3, layout="(N, L, D)")
    if x.shape[1] == 0:
        raise ValueError(f"x must hold at least one token (L >= 1) to take from, got shape {x.shape}")
    idx = index_array("idx", idx, x.shape[1], out_of_range="clip", rank=2, layout="(N, K)")
    if idx.shape[0] != x.shape[0]:
        raise ValueError(f"idx must have the batch size {x.shape[0]} of x, got shape {idx.shape}")
    return _take_tokens(x, idx)
