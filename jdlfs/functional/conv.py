"""2-D convolution (cross-correlation), NHWC images and HWIO kernels.

Forward (stride s, padded input xp = pad(x))
    y[n, i, j, o] = sum_{a, b, c} xp[n, s_h i + a, s_w j + b, c] w[a, b, c, o] + b[o]

Backward, with g = dL/dy of shape (N, Ho, Wo, Cout):

* input gradient — every xp[n, p, q, c] is touched by the outputs with
  ``p = s_h i + a``:
      dxp[n, p, q, c] = sum_{i, j, a, b : s_h i + a = p, s_w j + b = q} g[n, i, j, o] w[a, b, c, o]
  Split p by its phase r = p mod s_h (p = s_h u + r) and a likewise: the taps
  with a = r + s_h m meet the outputs i = u - m, so each phase is a *full*
  stride-1 convolution of g with the sub-kernel w[r::s_h, ::] (flipped,
  channels swapped):
      dxp[n, s_h u + r, s_w v + t, c] = sum_{m, l, o} g[n, u - m, v - l, o] w[r + s_h m, t + s_w l, c, o]
  The s_h s_w phase results are interleaved back (a reshape) and the padding
  cropped; rows no tap reaches (stride > kernel, or rows past the last window)
  get 0. This "sub-pixel" form needs no ``lhs_dilation``: the usual
  ``conv(g dilated by s, flip(w))`` makes XLA's algebraic simplifier abort the
  process (SIGABRT, jaxlib 0.10.2) for some geometries, e.g. x 8x8, kernel
  5x2, stride 2, padding 1 — plain ``jax.grad`` of ``lax.conv_general_dilated``
  aborts there too. It also multiplies no inserted zeros.
* weight gradient — a correlation of the input with the cotangent, the batch
  axis contracted:
      dw[a, b, c, o] = sum_{n, i, j} xp[n, s_h i + a, s_w j + b, c] g[n, i, j, o]
  i.e. a convolution with the input's channels as the batch, its batch as the
  feature, and g (dilated by s) as the kernel.
* bias — ``db[o] = sum_{n, i, j} g[n, i, j, o]``.

Rows/columns of the padded input that no strided window reads (the last
``(H + top + bottom - kh) mod s_h`` ones) are dropped before the forward and
weight-gradient convolutions: first from the bottom/right padding, then by
cropping x (whose dropped rows get zero gradient). So no convolution this
module emits has negative padding or unread trailing input (interior rows
between windows stay unread when the kernel is smaller than the stride; that
case does not trigger the abort). For stride 1 the input gradient is one
convolution with padding ``(kh - 1 - top, kh - 1 - bottom)`` (used when the
padding is smaller than the kernel, so it is never negative).

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
from ._windows import crop_hw, output_hw, pad_hw, place_view, window_geometry, window_views

_DN = ("NHWC", "HWIO", "NHWC")


def _validate(x, w, b, stride, padding):
    x = float_array("x", x, rank=4, layout="(N, H, W, C) (NHWC)")
    w = float_array("w", w, rank=4, layout="(kh, kw, Cin, Cout) (HWIO)")
    if x.shape[3] != w.shape[2]:
        raise ValueError(
            f"conv2d: x has {x.shape[3]} channels (x shape {x.shape}, NHWC) but w "
            f"expects Cin={w.shape[2]} (w shape {w.shape}, HWIO)"
        )
    if b is not None:
        b = float_array("b", b, rank=1, layout="(Cout,)")
        shape_is("b", b, (w.shape[3],), "one bias per output channel")
    same_dtype(x=x, w=w, b=b)
    _, stride, pads, _ = window_geometry(x.shape, w.shape[:2], stride, padding)  # validates sizes
    return x, w, b, stride, pads


# ================================================================ lax path
def _read_region(in_hw, window, stride, pads):
    """``(kept_hw, pads)``: the padded input cut to the rows/columns the strided
    windows read. The unread tail is taken off the bottom/right padding first,
    then off x itself (x is cropped to ``kept_hw``)."""
    kept, trimmed = [], []
    for n, k, s, (lo, hi) in zip(in_hw, window, stride, pads):
        extent = (n + lo + hi - k) // s * s + k  # padded rows read: (out - 1) s + k
        hi_read = extent - n - lo  # < 0: x's own last rows are unread
        kept.append(max(n + min(hi_read, 0), 0))  # 0: the windows read padding only
        trimmed.append((min(lo, extent), max(hi_read, 0)))
    return tuple(kept), tuple(trimmed)


def _conv_forward(x, w, b, stride, pads):
    (h, wd), read_pads = _read_region(x.shape[1:3], w.shape[:2], stride, pads)
    if h == 0 or wd == 0:  # every window lies in the padding
        ho, wo = output_hw(x.shape[1:3], w.shape[:2], stride, pads)
        y = jnp.zeros((x.shape[0], ho, wo, w.shape[3]), x.dtype)
    else:
        y = lax.conv_general_dilated(x[:, :h, :wd], w, stride, read_pads, dimension_numbers=_DN)
    return y if b is None else y + b


@partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _conv2d(x, w, b, stride, pads):
    return _conv_forward(x, w, b, stride, pads)


def _conv2d_fwd(x, w, b, stride, pads):
    return _conv_forward(x, w, b, stride, pads), (x, w, b is None)


def _input_grad(g, w, x_shape, stride, pads):
    """dL/dx phase by phase (module docstring): no lhs dilation, no negative padding."""
    cin, (sh, sw) = w.shape[2], stride
    n, ho, wo, _ = g.shape
    (top, bottom), (left, right) = pads
    kh, kw = w.shape[:2]
    if (sh, sw) == (1, 1) and max(top, bottom) < kh and max(left, right) < kw:
        # One phase: the full convolution restricted to the unpadded rows, i.e. padding (k-1-lo, k-1-hi).
        return lax.conv_general_dilated(
            g,
            w[::-1, ::-1],
            (1, 1),
            ((kh - 1 - top, kh - 1 - bottom), (kw - 1 - left, kw - 1 - right)),
            dimension_numbers=("NHWC", "HWOI", "NHWC"),
        )
    hp, wp = x_shape[1] + sum(pads[0]), x_shape[2] + sum(pads[1])
    qh, qw = -(-hp // sh), -(-wp // sw)  # padded rows per phase (rounded up)
    phases = []  # [r][t] -> (N, qh, qw, Cin)
    for r in range(sh):
        row = []
        for t in range(sw):
            sub = w[r::sh, t::sw]  # taps a = r + sh m, b = t + sw l
            mh, mw = sub.shape[:2]
            if mh == 0 or mw == 0:  # no tap lands on this phase
                row.append(jnp.zeros((n, qh, qw, cin), g.dtype))
                continue
            row.append(
                lax.conv_general_dilated(  # full conv: out[u] = sum_m g[u - m] sub[m]
                    g,
                    sub[::-1, ::-1],
                    (1, 1),
                    ((mh - 1, qh - ho), (mw - 1, qw - wo)),
                    dimension_numbers=("NHWC", "HWOI", "NHWC"),
                )
            )
        phases.append(jnp.stack(row, axis=3))  # (N, qh, qw, sw, Cin)
    dxp = jnp.stack(phases, axis=2).reshape(n, qh * sh, qw * sw, cin)  # row s_h u + r <- phase r
    return crop_hw(dxp, pads, x_shape[1:3])


def _weight_grad(x, g, kernel_hw, stride, pads):
    """dL/dw: correlate x with g, batch contracted (x as CHWN, g as IHWO, out HWNC = HWIO)."""
    (h, wd), pads = _read_region(x.shape[1:3], kernel_hw, stride, pads)
    if h == 0 or wd == 0:  # every window lies in the padding
        return jnp.zeros((*kernel_hw, x.shape[3], g.shape[3]), g.dtype)
    return lax.conv_general_dilated(
        x[:, :h, :wd], g, (1, 1), pads, rhs_dilation=stride, dimension_numbers=("CHWN", "IHWO", "HWNC")
    )  # (kh, kw, Cin, Cout)


def _conv2d_bwd(stride, pads, res, g):
    x, w, no_bias = res
    dx = _input_grad(g, w, x.shape, stride, pads)  # (N, H, W, Cin)
    dw = _weight_grad(x, g, w.shape[:2], stride, pads)  # (kh, kw, Cin, Cout)
    db = None if no_bias else jnp.sum(g, axis=(0, 1, 2))  # (Cout,)
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

    Backward: input gradient phase by phase (sub-pixel: one stride-1
    convolution of the output gradient per stride phase with the matching
    taps of the flipped kernel, interleaved; a single convolution for stride
    1), never a stride-dilated gradient; weight gradient as a correlation of
    the input with the output gradient (derivation in the module docstring).
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
    dxp = sum(place_view(dcols[:, :, :, a * kw + b], (a, b), stride, padded_hw) for a in range(kh) for b in range(kw))
    return crop_hw(dxp, pads, (h, w))


def _im2col_forward(x, w, b, stride, pads):
    kh, kw, cin, cout = w.shape
    out_hw = ((x.shape[1] + sum(pads[0]) - kh) // stride[0] + 1, (x.shape[2] + sum(pads[1]) - kw) // stride[1] + 1)
    cols = _im2col(x, (kh, kw), stride, pads, out_hw)  # (N, Ho, Wo, K)
    y = jnp.matmul(cols, w.reshape(kh * kw * cin, cout))  # (N, Ho, Wo, Cout)
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
    w2 = w.reshape(kh * kw * cin, cout)  # (K, Cout)
    g2 = g.reshape(-1, cout)  # (N Ho Wo, Cout)
    dcols = jnp.matmul(g2, w2.T).reshape(cols.shape)  # (N, Ho, Wo, K)
    dx = _col2im(dcols, x_shape, (kh, kw), stride, pads)  # (N, H, W, Cin)
    dw = jnp.matmul(cols.reshape(-1, kh * kw * cin).T, g2).reshape(w.shape)  # (kh, kw, Cin, Cout)
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
