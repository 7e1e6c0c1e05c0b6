"""2-D convolution (cross-correlation), NHWC images and HWIO kernels.

Forward (stride s, padded input xp = pad(x))
    y[n, i, j, o] = sum_{a, b, c} xp[n, s_h i + a, s_w j + b, c] w[a, b, c, o] + b[o]

Backward, with g = dL/dy of shape (N, Ho, Wo, Cout):

* input gradient — every xp[n, p, q, c] is touched by the outputs with
  ``p = s_h i + a``; collecting them gives a *full* convolution of the
  stride-dilated cotangent with the spatially flipped kernel, channels swapped:
      dxp[n, p, q, c] = sum_{a, b, o} gd[n, p - a, q - b, o] w[a, b, c, o]
  where ``gd`` is g with ``s - 1`` zeros between rows/columns. In lax terms:
  ``conv(g, flip(w) as (kh, kw, Cout, Cin), lhs_dilation=s)`` with padding
  ``(kh - 1 - top, H - 1 - (Ho - 1) s + top)`` per axis, which also crops the
  padding and restores rows the forward never read (they get 0).
* weight gradient — a correlation of the input with the cotangent, the batch
  axis contracted:
      dw[a, b, c, o] = sum_{n, i, j} xp[n, s_h i + a, s_w j + b, c] g[n, i, j, o]
  i.e. a convolution with the input's channels as the batch, its batch as the
  feature, and g (dilated by s) as the kernel.
* bias — ``db[o] = sum_{n, i, j} g[n, i, j, o]``.

The im2col path computes the same function as one matmul over explicit patches,
``cols (N Ho Wo, kh kw Cin) @ w (kh kw Cin, Cout)``; its backward is
``dcols = g W^T`` followed by col2im (each patch entry added back to the pixel
it came from) and ``dW = cols^T g``.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from .._checks import float_array, same_dtype, shape_is
from ._windows import crop_hw, pad_hw, place_view, window_geometry, window_views

_DN = ("NHWC", "HWIO", "NHWC")


def _validate(x, w, b, stride, padding):
    x = float_array("x", x, rank=4, layout="(N, H, W, C) (NHWC)")
    w = float_array("w", w, rank=4, layout="(kh, kw, Cin, Cout) (HWIO)")
    if x.shape[3] != w.shape[2]:
        raise ValueError(f"conv2d: x has {x.shape[3]} channels (x shape {x.shape}, NHWC) but w "
                         f"expects Cin={w.shape[2]} (w shape {w.shape}, HWIO)")
    if b is not None:
        b = float_array("b", b, rank=1, layout="(Cout,)")
        shape_is("b", b, (w.shape[3],), "one bias per output channel")
    same_dtype(x=x, w=w, b=b)
    _, stride, pads, _ = window_geometry(x.shape, w.shape[:2], stride, padding)   # validates sizes
    return x, w, b, stride, pads


# ================================================================ lax path
def _conv_forward(x, w, b, stride, pads):
    y = lax.conv_general_dilated(x, w, stride, pads, dimension_numbers=_DN)
    return y if b is None else y + b


@partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _conv2d(x, w, b, stride, pads):
    return _conv_forward(x, w, b, stride, pads)


def _conv2d_fwd(x, w, b, stride, pads):
    return _conv_forward(x, w, b, stride, pads), (x, w, b is None)


def _conv2d_bwd(stride, pads, res, g):
    x, w, no_bias = res
    (kh, kw), (h, wd) = w.shape[:2], x.shape[1:3]
    ho, wo = g.shape[1:3]
    (top, _), (left, _) = pads
    # dx: full convolution of the stride-dilated g with the flipped kernel (Cout <-> Cin).
    dx_pads = ((kh - 1 - top, h - 1 - (ho - 1) * stride[0] + top),
               (kw - 1 - left, wd - 1 - (wo - 1) * stride[1] + left))
    dx = lax.conv_general_dilated(
        g, w[::-1, ::-1], (1, 1), dx_pads, lhs_dilation=stride,
        dimension_numbers=("NHWC", "HWOI", "NHWC"))                      # (N, H, W, Cin)
    # dw: correlate x with g; batch contracted (x as CHWN, g as IHWO, out HWNC = (kh,kw,Cin,Cout)).
    dw_pads = ((top, kh - h - top + (ho - 1) * stride[0]),
               (left, kw - wd - left + (wo - 1) * stride[1]))
    dw = lax.conv_general_dilated(
        x, g, (1, 1), dw_pads, rhs_dilation=stride,
        dimension_numbers=("CHWN", "IHWO", "HWNC"))                      # (kh, kw, Cin, Cout)
    db = None if no_bias else jnp.sum(g, axis=(0, 1, 2))                  # (Cout,)
    return dx, dw, db


_conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def conv2d(x, w, b=None, *, stride=1, padding="SAME"):
    """2-D convolution on the fast ``lax.conv_general_dilated`` path.

    Args:
      x: ``(N, H, W, Cin)`` images (NHWC).
      w: ``(kh, kw, Cin, Cout)`` kernel (HWIO).
      b: optional ``(Cout,)`` bias.
      stride: int or ``(sh, sw)``.
      padding: ``"SAME"``, ``"VALID"``, an int, or ``((top, bottom), (left, right))``.
    Returns:
      ``(N, Ho, Wo, Cout)`` with ``Ho = floor((H + top + bottom - kh) / sh) + 1``.

    Backward: input gradient as a convolution of the stride-dilated output
    gradient with the flipped kernel; weight gradient as a correlation of the
    input with the output gradient (derivation in the module docstring).
    """
    x, w, b, stride, pads = _validate(x, w, b, stride, padding)
    return _conv2d(x, w, b, stride, pads)


# ================================================================ im2col path
def _im2col(x, window, stride, pads, out_hw):
    """(N, H, W, C) -> (N, Ho, Wo, kh*kw*C), patch entries ordered (a, b, c) like HWIO."""
    xp = pad_hw(x, pads)
    cols = jnp.stack([v for _, v in window_views(xp, window, stride, out_hw)], axis=3)
    n, ho, wo, kk, c = cols.shape
    return cols.reshape(n, ho, wo, kk * c)


def _col2im(dcols, x_shape, window, stride, pads):
    """Adjoint of :func:`_im2col`: add each patch entry back to the pixel it came from."""
    n, h, w, c = x_shape
    (kh, kw) = window
    ho, wo = dcols.shape[1:3]
    dcols = dcols.reshape(n, ho, wo, kh * kw, c)
    padded_hw = (h + pads[0][0] + pads[0][1], w + pads[1][0] + pads[1][1])
    dxp = sum(place_view(dcols[:, :, :, a * kw + b], (a, b), stride, padded_hw)
              for a in range(kh) for b in range(kw))
    return crop_hw(dxp, pads, (h, w))


def _im2col_forward(x, w, b, stride, pads):
    kh, kw, cin, cout = w.shape
    out_hw = ((x.shape[1] + sum(pads[0]) - kh) // stride[0] + 1,
              (x.shape[2] + sum(pads[1]) - kw) // stride[1] + 1)
    cols = _im2col(x, (kh, kw), stride, pads, out_hw)                   # (N, Ho, Wo, K)
    y = jnp.matmul(cols, w.reshape(kh * kw * cin, cout))                 # (N, Ho, Wo, Cout)
    return (y if b is None else y + b), cols


@partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _conv2d_im2col(x, w, b, stride, pads):
    return _im2col_forward(x, w, b, stride, pads)[0]


def _conv2d_im2col_fwd(x, w, b, stride, pads):
    y, cols = _im2col_forward(x, w, b, stride, pads)
    return y, (cols, w, x.shape, b is None)


def _conv2d_im2col_bwd(stride, pads, res, g):
    cols, w, x_shape, no_bias = res
    kh, kw, cin, cout = w.shape
    w2 = w.reshape(kh * kw * cin, cout)                                  # (K, Cout)
    g2 = g.reshape(-1, cout)                                             # (N Ho Wo, Cout)
    dcols = jnp.matmul(g2, w2.T).reshape(cols.shape)                     # (N, Ho, Wo, K)
    dx = _col2im(dcols, x_shape, (kh, kw), stride, pads)                 # (N, H, W, Cin)
    dw = jnp.matmul(cols.reshape(-1, kh * kw * cin).T, g2).reshape(w.shape)   # (kh, kw, Cin, Cout)
    db = None if no_bias else jnp.sum(g2, axis=0)
    return dx, dw, db


_conv2d_im2col.defvjp(_conv2d_im2col_fwd, _conv2d_im2col_bwd)


def conv2d_im2col(x, w, b=None, *, stride=1, padding="SAME"):
    """Same signature and result as :func:`conv2d`, computed as im2col + one matmul.

    Forward: extract every ``kh x kw x Cin`` patch into a row (im2col) and
    multiply by the kernel reshaped to ``(kh kw Cin, Cout)``. Backward:
    ``dW = cols^T g``; ``dcols = g W^T`` scattered back by col2im, where
    overlapping patches (stride < kernel) add up. Memory is ``kh kw`` times the
    input; use it to see convolution as a matmul, :func:`conv2d` for speed.
    """
    x, w, b, stride, pads = _validate(x, w, b, stride, padding)
    return _conv2d_im2col(x, w, b, stride, pads)
