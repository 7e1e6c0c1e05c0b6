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
The input product x W_x is likewise hoisted out of the forward scan, one matmul of x moved to
time-major (T, B, in); b is added inside the step, where it fuses with the tanh. The
parameter-gradient matmuls stay time-major and only dx is moved back (transposing the narrow
input, never a (T, B, H) array, as for the LSTM): dW_x and dW_h are 2-D matmuls over the T*B
rows in (t, b) order, a free reshape (an ``einsum("tbk,tbh->kh")`` let XLA contract in (b, t)
order, transposing da and h_{t-1} first). These sums over T*B rows accumulate in float32 or
wider (``_precision.acc_dtype``) and are cast back to the input dtype.

Residuals (saved by the forward, all time-major): x_tm, the input already moved to
time-major (T, B, in), for dW_x; the states h_t (T, B, H) for tanh' and, with h0, for
h_{t-1} in dW_h; W_x for dx and W_h for the carry.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from .._checks import float_array, same_dtype, shape_is
from ._precision import acc_dtype


def _rnn_forward(x_tm, h0, w_x, w_h, b):
    xw = jnp.matmul(x_tm, w_x)  # (T, B, H), time-major (transposing x, not xw, is the cheap side)

    def step(h, xw_t):
        h = jnp.tanh((xw_t + b) + h @ w_h)  # (B, H); + b fuses with the tanh
        return h, h

    h_T, hs = lax.scan(step, h0, xw)  # hs (T, B, H)
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
    acc = acc_dtype(da.dtype)  # the sums over T*B rows run in float32 or wider
    da2 = da.reshape(-1, da.shape[-1])  # (T*B, H), rows in (t, b) order: a free reshape of time-major
    dw_x = jnp.matmul(x_tm.reshape(-1, x_tm.shape[-1]).T, da2, preferred_element_type=acc)  # (in, H)
    dw_h = jnp.matmul(h_prev.reshape(-1, h_prev.shape[-1]).T, da2, preferred_element_type=acc)  # (H, H)
    db = jnp.sum(da2, axis=0, dtype=acc)
    dx = jnp.swapaxes(jnp.matmul(da, w_x.T, preferred_element_type=acc), 0, 1)  # (B, T, in)
    return tuple(v.astype(da.dtype) for v in (dx, dh0, dw_x, dw_h, db))


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
