"""Vanilla (Elman) tanh RNN with backpropagation through time written by hand.

Forward, for t = 1..T (x_t (B, in), h_t (B, H)):
    a_t = x_t W_x + h_{t-1} W_h + b
    h_t = tanh(a_t)

Backward. Let gh_t = dL/dh_t from the returned sequence and gT = dL/dh_T from
the returned final state. Going backwards with carry c (the gradient flowing
into h_t from step t+1; c_T = gT):
    dh_t  = gh_t + c_t                       (total gradient on h_t)
    da_t  = dh_t * (1 - h_t^2)                (through tanh)
    c_{t-1} = da_t W_h^T                      (into the previous state)
That recurrence is the only sequential part: a reverse ``lax.scan``. The
parameter gradients are then single matmuls over all steps at once:
    dW_x = sum_t x_t^T da_t,   dW_h = sum_t h_{t-1}^T da_t,   db = sum_t da_t,
    dx_t = da_t W_x^T,         dh_0 = c_0.
The input projection x W_x + b is likewise hoisted out of the forward scan, one matmul of x
moved to time-major (T, B, in); the parameter-gradient matmuls stay time-major and only dx is
moved back (transposing the narrow input, never a (T, B, H) array, as for the LSTM).

Residuals (saved by the forward, all time-major): x_tm, the input already moved to
time-major (T, B, in), for dW_x; the states h_t (T, B, H) for tanh' and, with h0, for
h_{t-1} in dW_h; W_x for dx and W_h for the carry.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from .._checks import float_array, same_dtype, shape_is


def _rnn_forward(x_tm, h0, w_x, w_h, b):
    xa = jnp.matmul(x_tm, w_x) + b  # (T, B, H), time-major (transposing x, not xa, is the cheap side)

    def step(h, xa_t):
        h = jnp.tanh(xa_t + h @ w_h)  # (B, H)
        return h, h

    h_T, hs = lax.scan(step, h0, xa)  # hs (T, B, H)
    return hs, h_T


@jax.custom_vjp
def _rnn(x, h0, w_x, w_h, b):
    hs, h_T = _rnn_forward(jnp.swapaxes(x, 0, 1), h0, w_x, w_h, b)
    return jnp.swapaxes(hs, 0, 1), h_T


def _rnn_fwd(x, h0, w_x, w_h, b):
    x_tm = jnp.swapaxes(x, 0, 1)  # (T, B, in)
    hs, h_T = _rnn_forward(x_tm, h0, w_x, w_h, b)
    return (jnp.swapaxes(hs, 0, 1), h_T), (x_tm, h0, w_x, w_h, hs)


def _rnn_bwd(res, cts):
    x_tm, h0, w_x, w_h, hs = res  # time-major: x_tm (T, B, in), hs (T, B, H)
    g_hs, g_hT = cts  # (B, T, H), (B, H)
    g_hs = jnp.swapaxes(g_hs, 0, 1)  # (T, B, H)

    def back(c, inputs):  # c = dL/dh_t from step t+1
        g_t, h_t = inputs
        da = (g_t + c) * (1 - h_t * h_t)  # (B, H)
        return da @ w_h.T, da

    dh0, da = lax.scan(back, g_hT, (g_hs, hs), reverse=True)  # da (T, B, H)
    h_prev = jnp.concatenate([h0[None], hs[:-1]], axis=0)  # (T, B, H)
    dw_x = jnp.einsum("tbi,tbh->ih", x_tm, da)  # all time-major: no (T, B, H) transposes
    dw_h = jnp.einsum("tbk,tbh->kh", h_prev, da)
    db = jnp.sum(da, axis=(0, 1))
    dx = jnp.swapaxes(jnp.einsum("tbh,ih->tbi", da, w_x), 0, 1)  # (B, T, in)
    return dx, dh0, dw_x, dw_h, db


_rnn.defvjp(_rnn_fwd, _rnn_bwd)


def rnn(x, h0, w_x, w_h, b):
    """Run a tanh RNN over a batch of sequences.

    Args:
      x: ``(B, T, in)`` inputs, batch-first, ``T >= 1``.
      h0: ``(B, H)`` initial state.
      w_x: ``(in, H)``; w_h: ``(H, H)``; b: ``(H,)``.
    Returns:
      ``(hs, h_T)``: all states ``(B, T, H)`` and the last state ``(B, H)``.
    """
    x = float_array("x", x, rank=3, layout="(B, T, in)")
    h0 = float_array("h0", h0, rank=2, layout="(B, H)")
    w_x = float_array("w_x", w_x, rank=2, layout="(in, H)")
    w_h = float_array("w_h", w_h, rank=2, layout="(H, H)")
    b = float_array("b", b, rank=1, layout="(H,)")
    bsz, t, d_in = x.shape
    if t < 1:
        raise ValueError(f"x must hold at least one time step, got shape {x.shape}")
    hidden = w_h.shape[0]
    shape_is("w_h", w_h, (hidden, hidden), "square (H, H)")
    shape_is("w_x", w_x, (d_in, hidden), "(in, H) with in = x.shape[-1]")
    shape_is("b", b, (hidden,))
    shape_is("h0", h0, (bsz, hidden), "(B, H)")
    same_dtype(x=x, h0=h0, w_x=w_x, w_h=w_h, b=b)
    return _rnn(x, h0, w_x, w_h, b)
