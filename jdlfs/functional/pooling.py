"""Max, average and global-average pooling over NHWC images.

Max pooling
    y[n, i, j, c] = max_{(a, b) in window} xp[n, s_h i + a, s_w j + b, c]
    (xp: x padded with -inf; every window holds at least one real pixel, as
    padding must be smaller than the window, so y is the max of the real pixels)
  The max is piecewise the identity on one element, so
    dL/dx[p] = sum over the windows whose selected element is p of g[window]
  Overlapping windows (stride < window) that select the same pixel add up.
  Selection: the gradient of each window goes to the *first* real pixel (in
  row-major window order: smallest a, then smallest b) that equals the max.
  - Ties: the first of the equal entries receives the whole gradient, the
    others 0 (PyTorch's choice; XLA's select-and-scatter also takes the first).
    This is one valid subgradient; the total is preserved.
  - Padding never receives gradient: an all ``-inf`` window (every real pixel
    is -inf) outputs -inf and routes its gradient to its first real -inf pixel,
    not to a -inf padding entry.
  - NaN propagates: a window containing NaN outputs NaN (as XLA's max does)
    and its gradient goes to the first NaN in it, the entry the output came
    from; it is not dropped. (lax autodiff of ``reduce_window`` max sends it to
    a non-NaN entry picked by comparisons that NaN fails.)

Average pooling
    y[n, i, j, c] = (1 / count[i, j]) sum_{(a, b) in window} xp[n, s_h i + a, s_w j + b, c]
  with ``count`` the number of *real* (non-padding) pixels in the window
  (TensorFlow's "SAME" convention; equals kh * kw without padding). Linear, so
    dL/dx[p] = sum over the windows containing p of g[window] / count[window]
  Note: Flax's ``avg_pool`` default ``count_include_pad=True`` (and PyTorch's
  ``AvgPool2d`` default) divide by kh * kw, padding included, so SAME/padded
  border outputs differ from ours; Flax's ``count_include_pad=False`` and
  TensorFlow's SAME agree with ours.

Both backward passes are written as a sum over the kh * kw window offsets of
the cotangent placed back at its strided positions (``place_view``, a pad with
interior padding — col2im without a scatter).

Global average pooling: ``y[n, c] = mean_{h, w} x[n, h, w, c]``,
``dL/dx[n, h, w, c] = g[n, c] / (H W)``.

Precision: window sums, means and the divisions by counts run in float32 for
float16/bfloat16 input (``_precision``; a float16 count H W = 65,536 would be
``inf``); results are cast back to the input dtype.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .._checks import float_array
from ._precision import upcast
from ._windows import crop_hw, pad_hw, place_view, window_geometry, window_views


def _pool_geometry(x, window, stride, padding):
    x = float_array("x", x, rank=4, layout="(N, H, W, C) (NHWC)")
    stride = window if stride is None else stride
    window, stride, pads, out_hw = window_geometry(x.shape, window, stride, padding)
    for (lo, hi), k in zip(pads, window):
        if lo >= k or hi >= k:
            raise ValueError(
                f"padding {pads} must be smaller than the window {window} on every "
                "side, or some windows would hold only padding"
            )
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


def _real_views(in_hw, window, stride, pads, out_hw) -> dict:
    """Static (1, Ho, Wo, 1) bool per window offset: is that entry a real pixel (not padding)?"""
    real = np.pad(np.ones(in_hw, bool), pads)
    (kh, kw), (sh, sw), (ho, wo) = window, stride, out_hw
    return {
        (a, b): real[a : a + sh * (ho - 1) + 1 : sh, b : b + sw * (wo - 1) + 1 : sw][None, :, :, None]
        for a in range(kh)
        for b in range(kw)
    }


def _max_pool_bwd(window, stride, pads, res, g):
    x, y = res
    xp = pad_hw(x, pads, -jnp.inf)
    padded_hw = xp.shape[1:3]
    real = _real_views(x.shape[1:3], window, stride, pads, y.shape[1:3])
    y_nan = jnp.isnan(y)
    taken = jnp.zeros(y.shape, bool)  # has this window already given its gradient away?
    dxp = jnp.zeros(xp.shape, g.dtype)
    for offset, view in window_views(xp, window, stride, y.shape[1:3]):
        is_max = jnp.where(y_nan, jnp.isnan(view), view == y) & real[offset]
        chosen = is_max & ~taken  # first real maximum (or NaN) in row-major order wins
        taken = taken | chosen
        dxp = dxp + place_view(jnp.where(chosen, g, 0), offset, stride, padded_hw)
    return (crop_hw(dxp, pads, x.shape[1:3]),)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool2d(x, window=2, stride=None, padding="VALID"):
    """Max pooling of ``(N, H, W, C)`` over ``window`` (int or pair), ``stride``
    (default: ``window``), ``padding`` ('VALID', 'SAME', int or explicit pairs,
    each side smaller than the window; padded entries are -inf and never win).
    Gradient to the first real pixel of each window equal to its max (ties:
    first wins; all -inf window: its first real pixel); a window holding NaN
    outputs NaN and sends its gradient to its first NaN; overlapping windows
    accumulate (module docstring)."""
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
            counts += ones[a : a + sh * (ho - 1) + 1 : sh, b : b + sw * (wo - 1) + 1 : sw]
    return counts[None, :, :, None]


@partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _avg_pool(x, window, stride, pads):
    counts = _window_counts(x.shape[1:3], window, stride, pads)
    xa = upcast(x)  # window sums in float32 or wider
    return (_reduce_window(xa, 0.0, lax.add, window, stride, pads) / counts.astype(xa.dtype)).astype(x.dtype)


def _avg_pool_fwd(x, window, stride, pads):
    return _avg_pool(x, window, stride, pads), x.shape


def _avg_pool_bwd(window, stride, pads, x_shape, g):
    counts = _window_counts(x_shape[1:3], window, stride, pads)
    share = (upcast(g) / counts).astype(g.dtype)  # each pixel's share of g
    padded_hw = (x_shape[1] + sum(pads[0]), x_shape[2] + sum(pads[1]))
    dxp = sum(place_view(share, (a, b), stride, padded_hw) for a in range(window[0]) for b in range(window[1]))
    return (crop_hw(dxp, pads, x_shape[1:3]),)


_avg_pool.defvjp(_avg_pool_fwd, _avg_pool_bwd)


def avg_pool2d(x, window=2, stride=None, padding="VALID"):
    """Average pooling of ``(N, H, W, C)``; padding is excluded from the average
    (divide by the number of real pixels in the window). Gradient ``g / count``
    to every pixel of each window (module docstring).

    Unlike Flax's ``avg_pool`` (default ``count_include_pad=True``) and
    PyTorch's ``AvgPool2d``, a SAME/padded border window is *not* diluted by its
    padding zeros: equal to Flax with ``count_include_pad=False`` and TensorFlow's SAME."""
    x, window, stride, pads, _ = _pool_geometry(x, window, stride, padding)
    return _avg_pool(x, window, stride, pads)


# ================================================================ global average pool
@jax.custom_vjp
def _global_avg_pool(x):
    return jnp.mean(upcast(x), axis=(1, 2)).astype(x.dtype)  # (N, C)


def _global_avg_pool_fwd(x):
    return _global_avg_pool(x), x.shape


def _global_avg_pool_bwd(x_shape, g):
    n, h, w, c = x_shape
    share = (upcast(g) / (h * w)).astype(g.dtype)  # H W may exceed float16's range
    return (jnp.broadcast_to(share[:, None, None, :], x_shape),)


_global_avg_pool.defvjp(_global_avg_pool_fwd, _global_avg_pool_bwd)


def global_avg_pool(x):
    """Mean over the spatial axes: ``(N, H, W, C) -> (N, C)``; gradient ``g / (H W)``."""
    return _global_avg_pool(float_array("x", x, rank=4, layout="(N, H, W, C) (NHWC)"))
