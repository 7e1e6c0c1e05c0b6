"""Sliding-window geometry shared by convolution and pooling.

Everything here is static (Python ints computed from shapes), so it runs at
trace time. Two primitives carry all the window arithmetic of the library:

* :func:`window_views` — the ``kh * kw`` strided views of a padded input, one
  per offset ``(a, b)`` inside the window: ``view[a, b][n, i, j, c] =
  xpad[n, a + s_h i, b + s_w j, c]``. Forward passes (im2col, pooling
  backward) read windows through these views.
* :func:`place_view` — the adjoint of taking one view: puts an ``(N, Ho, Wo,
  C)`` array back at rows ``a + s_h i`` and columns ``b + s_w j`` of a zero
  array of the padded shape. It is an ``lax.pad`` with interior padding
  ``s - 1`` (no scatter), so the sum over offsets fuses into one elementwise
  XLA loop. This is col2im.
"""

from __future__ import annotations

from jax import lax

from .._checks import static_pair

Pads = tuple[tuple[int, int], tuple[int, int]]


def resolve_padding(
    padding, in_hw: tuple[int, int], window: tuple[int, int], stride: tuple[int, int], *, name: str = "padding"
) -> Pads:
    """Normalise ``padding`` to ``((top, bottom), (left, right))``.

    * ``"VALID"``: no padding.
    * ``"SAME"``: output size ``ceil(n / s)``; total padding
      ``max((out - 1) s + k - n, 0)`` split with the extra row/column at the
      bottom/right (the TensorFlow / ``lax.padtype_to_pads`` convention).
    * an int ``p``: ``p`` on every side.
    * ``((top, bottom), (left, right))`` explicit.
    """
    if isinstance(padding, str):
        mode = padding.upper()
        if mode == "VALID":
            return ((0, 0), (0, 0))
        if mode == "SAME":
            pads = []
            for n, k, s in zip(in_hw, window, stride):
                out = -(-n // s)
                total = max((out - 1) * s + k - n, 0)
                pads.append((total // 2, total - total // 2))
            return tuple(pads)  # type: ignore[return-value]
        raise ValueError(f"{name} must be 'SAME', 'VALID', an int or ((top, bottom), (left, right)), got {padding!r}")
    if isinstance(padding, int) and not isinstance(padding, bool):
        if padding < 0:
            raise ValueError(f"{name} must be non-negative, got {padding}")
        return ((padding, padding), (padding, padding))
    try:
        (t, b), (l, r) = padding
        pads = ((int(t), int(b)), (int(l), int(r)))
    except (TypeError, ValueError):
        raise ValueError(
            f"{name} must be 'SAME', 'VALID', an int or ((top, bottom), (left, right)), got {padding!r}"
        ) from None
    if min(pads[0] + pads[1]) < 0:
        raise ValueError(f"{name} must be non-negative, got {padding!r}")
    return pads


def output_hw(in_hw, window, stride, pads: Pads, *, what: str = "input") -> tuple[int, int]:
    """``out = floor((n + lo + hi - k) / s) + 1`` per spatial dim; must be >= 1."""
    out = []
    for n, k, s, (lo, hi) in zip(in_hw, window, stride, pads):
        if n + lo + hi < k:
            raise ValueError(
                f"window {tuple(window)} does not fit the padded {what} of spatial size "
                f"{tuple(in_hw)} with padding {pads}"
            )
        out.append((n + lo + hi - k) // s + 1)
    return tuple(out)  # type: ignore[return-value]


def window_geometry(x_shape, window, stride, padding, *, name="padding"):
    """Static geometry of a 2-D sliding window over an NHWC input."""
    window = static_pair("window", window)
    stride = static_pair("stride", stride)
    in_hw = (x_shape[1], x_shape[2])
    pads = resolve_padding(padding, in_hw, window, stride, name=name)
    out = output_hw(in_hw, window, stride, pads)
    return window, stride, pads, out


def pad_hw(x, pads: Pads, value=0.0):
    """Pad the two spatial axes of an NHWC array with a constant."""
    cfg = ((0, 0, 0), (pads[0][0], pads[0][1], 0), (pads[1][0], pads[1][1], 0), (0, 0, 0))
    return lax.pad(x, lax.convert_element_type(value, x.dtype), cfg)


def crop_hw(xpad, pads: Pads, in_hw):
    """Inverse of :func:`pad_hw` on the spatial axes (drop the padding)."""
    (t, _), (l, _) = pads
    return xpad[:, t : t + in_hw[0], l : l + in_hw[1], :]


def window_views(xpad, window, stride, out_hw):
    """Yield ``((a, b), view)`` for every offset of the window; view is (N, Ho, Wo, C)."""
    (kh, kw), (sh, sw), (ho, wo) = window, stride, out_hw
    for a in range(kh):
        for b in range(kw):
            yield (
                (a, b),
                lax.slice(
                    xpad,
                    (0, a, b, 0),
                    (xpad.shape[0], a + sh * (ho - 1) + 1, b + sw * (wo - 1) + 1, xpad.shape[3]),
                    (1, sh, sw, 1),
                ),
            )


def place_view(v, offset, stride, padded_hw):
    """Adjoint of one :func:`window_views` view: zero array of the padded shape
    with ``v[n, i, j, c]`` at ``(a + s_h i, b + s_w j)``."""
    (a, b), (sh, sw) = offset, stride
    ho, wo = v.shape[1], v.shape[2]
    hp, wp = padded_hw
    cfg = ((0, 0, 0), (a, hp - a - (sh * (ho - 1) + 1), sh - 1), (b, wp - b - (sw * (wo - 1) + 1), sw - 1), (0, 0, 0))
    return lax.pad(v, lax.convert_element_type(0, v.dtype), cfg)
