"""Max, average and global-average pooling over NHWC images.

Max pooling
    y[n, i, j, c] = max_{(a, b) in window} xp[n, s_h i + a, s_w j + b, c]
    (xp: x padded with -inf, so padding never wins)
  The max is piecewise the identity on one element, so
    dL/dx[p] = sum over the windows whose selected element is p of g[window]
  Overlapping windows (stride < window) that select the same pixel add up.
  Tie policy: when several entries of one window equal the max, the *first* in
  row-major window order (smallest a, then smallest b) receives the whole
  gradient, the others 0 (PyTorch's choice; XLA's select-and-scatter also
  takes the first). This is one valid subgradient; the total is preserved.

Average pooling
    y[n, i, j, c] = (1 / count[i, j]) sum_{(a, b) in window} xp[n, s_h i + a, s_w j + b, c]
  with ``count`` the number of *real* (non-padding) pixels in the window
  (TensorFlow's "SAME" convention; equals kh * kw without padding). Linear, so
    dL/dx[p] = sum over the windows containing p of g[window] / count[window]

Both backward passes are written as a sum over the kh * kw window offsets of
the cotangent placed back at its strided positions (``place_view``, a pad with
interior padding — col2im without a scatter).

Global average pooling: ``y[n, c] = mean_{h, w} x[n, h, w, c]``,
``dL/dx[n, h, w, c] = g[n, c] / (H W)``.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .._checks import float_array
from ._windows import crop_hw, pad_hw, place_view, window_geometry, window_views


def _pool_geometry(x, window, stride, padding):
    x = float_array("x", x, rank=4, layout="(N, H, W, C) (NHWC)")
    stride = window if stride is None else stride
    window, stride, pads, out_hw = window_geometry(x.shape, window, stride, padding)
    for (lo, hi), k in zip(pads, window):
        if lo >= k or hi >= k:
            raise ValueError(f"padding {pads} must be smaller than the window {window} on every "
                             "side, or some windows would hold only padding")
    return x, window, stride, pads, out_hw


def _reduce_window(x, init: float, op, window, stride, pads):
    # ``init`` must stay a Python scalar: lax then emits the dedicated
    # reduce_window_max / reduce_window_sum primitives (fast, differentiable);
    # an array init value gives the generic reduce_window, which is neither.
    return lax.reduce_window(x, init, op, (1, *window, 1), (1, *stride, 1), ((0, 0), *pads, (0, 0)))


# ================================================================ max pool
@partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x, window, stride, pads):
    return _reduce_window(x, -float("inf"), lax.max, window, stride, pads)


def _max_pool_fwd(x, window, stride, pads):
    y = _max_pool(x, window, stride, pads)
    return y, (x, y)


def _max_pool_bwd(window, stride, pads, res, g):
    x, y = res
    xp = pad_hw(x, pads, -jnp.inf)
    padded_hw = xp.shape[1:3]
    taken = jnp.zeros(y.shape, bool)          # has this window already given its gradient away?
    dxp = jnp.zeros(xp.shape, g.dtype)
    for offset, view in window_views(xp, window, stride, y.shape[1:3]):
        chosen = (view == y) & ~taken         # first maximum in row-major order wins ties
        taken = taken | chosen
        dxp = dxp + place_view(jnp.where(chosen, g, 0), offset, stride, padded_hw)
    return (crop_hw(dxp, pads, x.shape[1:3]),)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool2d(x, window=2, stride=None, padding="VALID"):
    """Max pooling of ``(N, H, W, C)`` over ``window`` (int or pair), ``stride``
    (default: ``window``), ``padding`` ('VALID', 'SAME', int or explicit pairs;
    padded entries are -inf). Gradient to the argmax of each window, first one
    on ties; overlapping windows accumulate (module docstring)."""
    x, window, stride, pads, _ = _pool_geometry(x, window, stride, padding)
    return _max_pool(x, window, stride, pads)


# ================================================================ average pool
def _window_counts(in_hw, window, stride, pads) -> np.ndarray:
    """Static (1, Ho, Wo, 1) count of real (non-padding) pixels in each window."""
    ones = np.pad(np.ones(in_hw), pads)
    (kh, kw), (sh, sw) = window, stride
    ho = (ones.shape[0] - kh) // sh + 1
    wo = (ones.shape[1] - kw) // sw + 1
    counts = np.zeros((ho, wo))
    for a in range(kh):
        for b in range(kw):
            counts += ones[a:a + sh * (ho - 1) + 1:sh, b:b + sw * (wo - 1) + 1:sw]
    return counts[None, :, :, None]


@partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _avg_pool(x, window, stride, pads):
    counts = _window_counts(x.shape[1:3], window, stride, pads).astype(x.dtype)
    return _reduce_window(x, 0.0, lax.add, window, stride, pads) / counts


def _avg_pool_fwd(x, window, stride, pads):
    return _avg_pool(x, window, stride, pads), x.shape


def _avg_pool_bwd(window, stride, pads, x_shape, g):
    counts = _window_counts(x_shape[1:3], window, stride, pads).astype(g.dtype)
    share = g / counts                                       # each pixel's share of g
    padded_hw = (x_shape[1] + sum(pads[0]), x_shape[2] + sum(pads[1]))
    dxp = sum(place_view(share, (a, b), stride, padded_hw)
              for a in range(window[0]) for b in range(window[1]))
    return (crop_hw(dxp, pads, x_shape[1:3]),)


_avg_pool.defvjp(_avg_pool_fwd, _avg_pool_bwd)


def avg_pool2d(x, window=2, stride=None, padding="VALID"):
    """Average pooling of ``(N, H, W, C)``; padding is excluded from the average
    (divide by the number of real pixels in the window). Gradient ``g / count``
    to every pixel of each window (module docstring)."""
    x, window, stride, pads, _ = _pool_geometry(x, window, stride, padding)
    return _avg_pool(x, window, stride, pads)


# ================================================================ global average pool
@jax.custom_vjp
def _global_avg_pool(x):
    return jnp.mean(x, axis=(1, 2))                           # (N, C)


def _global_avg_pool_fwd(x):
    return _global_avg_pool(x), x.shape


def _global_avg_pool_bwd(x_shape, g):
    n, h, w, c = x_shape
    return (jnp.broadcast_to((g / (h * w))[:, None, None, :], x_shape),)


_global_avg_pool.defvjp(_global_avg_pool_fwd, _global_avg_pool_bwd)


def global_avg_pool(x):
    """Mean over the spatial axes: ``(N, H, W, C) -> (N, C)``; gradient ``g / (H W)``."""
    return _global_avg_pool(float_array("x", x, rank=4, layout="(N, H, W, C) (NHWC)"))
