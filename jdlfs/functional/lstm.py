"""LSTM with backpropagation through time derived and written by hand.

Forward, for t = 1..T (x_t (B, D), h_t and c_t (B, H), sigma the logistic sigmoid):
    z_t = x_t W_x + h_{t-1} W_h + b                     (B, 4H), one fused matmul for all four gates
    i_t = sigma(z_i)  f_t = sigma(z_f)  g_t = tanh(z_g)  o_t = sigma(z_o)
    c_t = f_t * c_{t-1} + i_t * g_t
    h_t = o_t * tanh(c_t)
Layout of the 4H axis of W_x (D, 4H), W_h (H, 4H), b (4H,): four blocks of H columns in
the order i, f, g, o -- input gate [0, H), forget gate [H, 2H), cell candidate [2H, 3H),
output gate [3H, 4H) (PyTorch's and Flax's gate order; PyTorch stores the transpose).

Backward. Cotangents: gh_t = dL/dh_t from the returned sequence, gh_T and gc_T from the
returned final state. Going backwards the carry is (eh, ec): the gradient reaching h_t
and c_t from step t+1 (eh_T = gh_T, ec_T = gc_T). With k_t = tanh(c_t):
    dh_t  = gh_t + eh                        (total gradient on h_t)
    do_t  = dh_t * k_t                       (h = o k)
    dc_t  = ec + dh_t * o_t * (1 - k_t^2)    (total gradient on c_t: carried + through h_t)
    di_t  = dc_t * g_t,  dg_t = dc_t * i_t,  df_t = dc_t * c_{t-1}
Local derivatives of the gates, sigma' = sigma (1 - sigma), tanh' = 1 - tanh^2:
    dz_i = di_t * i_t (1 - i_t)    dz_f = df_t * f_t (1 - f_t)
    dz_g = dg_t * (1 - g_t^2)      dz_o = do_t * o_t (1 - o_t)
and the carry into step t-1:
    ec <- dc_t * f_t                         (c_{t-1} enters c_t only through f_t)
    eh <- dz_t W_h^T                         (h_{t-1} enters z_t only through W_h)
That recursion is the only sequential part: a reverse ``lax.scan`` carrying (eh, ec),
one (B, 4H) x (4H, H) matmul per step. The parameter gradients are then single matmuls
over all B*T rows at once, and dx is one matmul too:
    dW_x = sum_t x_t^T dz_t,   dW_h = sum_t h_{t-1}^T dz_t,   db = sum_t sum_b dz_t,
    dx_t = dz_t W_x^T,         dh_0 = eh,   dc_0 = ec    (the carry after step 1).
The input product x W_x for all T is likewise hoisted out of the forward scan, one matmul of
x moved to time-major (T, B, D); b is added inside the step, where it fuses with the gate
nonlinearities (added to the hoisted product it costs a pass over a (T, B, 4H) array). The
backward's matmuls stay time-major and only dx (T, B, D) is moved back. Transposing the narrow
x, not the (T, B, 4H) projection and dz, made the char LSTM train step 1.24x faster on XLA:CPU
(scripts/bench.py). dW_x and dW_h are 2-D matmuls over the T*B rows in (t, b) order, a free
reshape of the time-major arrays: as ``einsum("tbh,tbk->hk")`` XLA contracted in (b, t) order
and transposed dz (T, B, 4H) and h_{t-1} to batch-major first.

Residuals (saved by the forward, all time-major): the gate activations (i, f, g, o)_t
(T, B, 4H) -- every local derivative above is a function of the activation alone, so no
pre-activation and no sigmoid/tanh is recomputed; c_{t-1} (T, B, H) for df; k_t = tanh(c_t)
(T, B, H) for do and dc; the states h_t (T, B, H) (the output hs, saved before it is moved
to batch-first) and h0 for h_{t-1} in dW_h; x_tm, the input already moved to time-major
(T, B, D), for dW_x; W_x for dx and W_h for eh.

Precision. The matmuls and gate activations run in the input dtype, as for ``rnn``. The
cell state is a running sum over time (c_t = sum_s (prod f) i_s g_s), so it is carried in
float32 or wider (``_precision.acc_dtype``) and c_T is cast back; the backward carry
(eh, ec), dz and the parameter-gradient sums over all B*T rows run in that dtype too.
For float32/float64 input every cast is a no-op.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from .._checks import float_array, same_dtype, shape_is
from ._precision import acc_dtype


def _split_gates(a, hidden):
    return a[..., :hidden], a[..., hidden : 2 * hidden], a[..., 2 * hidden : 3 * hidden], a[..., 3 * hidden :]


def _lstm_scan(x_tm, h0, c0, w_x, w_h, b, save):
    hidden, dt = w_h.shape[0], x_tm.dtype
    xw = jnp.matmul(x_tm, w_x)  # (T, B, 4H), time-major (transposing x, not xw, is the cheap side)

    def step(carry, xw_t):
        h, c_prev = carry  # c in float32 or wider
        z_i, z_f, z_g, z_o = _split_gates((xw_t + b) + h @ w_h, hidden)  # (B, H) each; + b fuses with the gates
        i, f, g, o = jax.nn.sigmoid(z_i), jax.nn.sigmoid(z_f), jnp.tanh(z_g), jax.nn.sigmoid(z_o)
        c = f * c_prev + i * g
        k = jnp.tanh(c)
        h = (o * k).astype(dt)
        return (h, c), ((h, jnp.concatenate([i, f, g, o], axis=-1), c_prev, k) if save else h)

    (h_T, c_T), out = lax.scan(step, (h0, c0.astype(acc_dtype(dt))), xw)
    return out, h_T, c_T.astype(dt)


@jax.custom_vjp
def _lstm(x, h0, c0, w_x, w_h, b):
    hs, h_T, c_T = _lstm_scan(jnp.swapaxes(x, 0, 1), h0, c0, w_x, w_h, b, save=False)
    return jnp.swapaxes(hs, 0, 1), (h_T, c_T)


def _lstm_fwd(x, h0, c0, w_x, w_h, b):
    x_tm = jnp.swapaxes(x, 0, 1)  # (T, B, D)
    (hs, acts, c_prev, k), h_T, c_T = _lstm_scan(x_tm, h0, c0, w_x, w_h, b, save=True)
    return (jnp.swapaxes(hs, 0, 1), (h_T, c_T)), (x_tm, h0, w_x, w_h, hs, acts, c_prev, k)


def _lstm_bwd(res, cts):
    x_tm, h0, w_x, w_h, hs, acts, c_prev, k = res  # time-major (T, B, .)
    g_hs, (g_hT, g_cT) = cts  # (B, T, H), ((B, H), (B, H))
    hidden, dt = w_h.shape[0], x_tm.dtype
    acc = acc_dtype(dt)
    w_hT = w_h.T.astype(acc)  # (4H, H)

    def back(carry, inputs):  # carry = (eh, ec) from step t+1
        eh, ec = carry
        g_t, a_t, cp_t, k_t = inputs
        i, f, g, o = _split_gates(a_t.astype(acc), hidden)
        dh = g_t.astype(acc) + eh
        dc = ec + dh * o * (1 - k_t * k_t)
        dz = jnp.concatenate(
            [dc * g * i * (1 - i), dc * cp_t * f * (1 - f), dc * i * (1 - g * g), dh * k_t * o * (1 - o)], axis=-1
        )  # (B, 4H)
        return (dz @ w_hT, dc * f), dz

    init = (g_hT.astype(acc), g_cT.astype(acc))
    (dh0, dc0), dz = lax.scan(back, init, (jnp.swapaxes(g_hs, 0, 1), acts, c_prev, k), reverse=True)
    h_prev = jnp.concatenate([h0[None], hs[:-1]], axis=0)  # (T, B, H)
    dz2 = dz.reshape(-1, 4 * hidden)  # (T*B, 4H), rows in (t, b) order: a free reshape of time-major
    dw_x = jnp.matmul(x_tm.reshape(-1, x_tm.shape[-1]).T, dz2, preferred_element_type=acc)  # (D, 4H)
    dw_h = jnp.matmul(h_prev.reshape(-1, hidden).T, dz2, preferred_element_type=acc)  # (H, 4H)
    db = jnp.sum(dz2, axis=0)
    dx = jnp.swapaxes(jnp.matmul(dz, w_x.T, preferred_element_type=acc), 0, 1)  # (B, T, D)
    return tuple(v.astype(dt) for v in (dx, dh0, dc0, dw_x, dw_h, db))


_lstm.defvjp(_lstm_fwd, _lstm_bwd)


def lstm(x, h0, c0, w_x, w_h, b):
    """Run an LSTM over a batch of sequences (derivation in the module docstring).

    Args:
      x: ``(B, T, D)`` inputs, batch-first, ``T >= 1`` (an empty sequence is refused, as by ``rnn``).
      h0, c0: ``(B, H)`` initial hidden and cell state.
      w_x: ``(D, 4H)``; w_h: ``(H, 4H)``; b: ``(4H,)`` -- the 4H axis holds the gates i, f, g, o
        as four blocks of H columns (input, forget, cell candidate, output).
    Returns:
      ``(hs, (h_T, c_T))``: all hidden states ``(B, T, H)`` and the final hidden and cell
      states ``(B, H)`` each, all in the inputs' dtype.
    """
    x = float_array("x", x, rank=3, layout="(B, T, D)")
    h0 = float_array("h0", h0, rank=2, layout="(B, H)")
    c0 = float_array("c0", c0, rank=2, layout="(B, H)")
    w_x = float_array("w_x", w_x, rank=2, layout="(D, 4H)")
    w_h = float_array("w_h", w_h, rank=2, layout="(H, 4H)")
    b = float_array("b", b, rank=1, layout="(4H,)")
    bsz, t, d_in = x.shape
    if t < 1:
        raise ValueError(f"x must hold at least one time step (T >= 1), got shape {x.shape}")
    hidden = w_h.shape[0]
    gates = "gates i, f, g, o side by side"
    shape_is("w_h", w_h, (hidden, 4 * hidden), f"(H, 4H) with H = w_h.shape[0] = {hidden}: {gates}")
    shape_is("w_x", w_x, (d_in, 4 * hidden), f"(D, 4H) with D = x.shape[-1] = {d_in}, H = {hidden}")
    shape_is("b", b, (4 * hidden,), f"(4H,) with H = {hidden}")
    shape_is("h0", h0, (bsz, hidden), f"(B, H) with B = x.shape[0] = {bsz}, H = {hidden}")
    shape_is("c0", c0, (bsz, hidden), f"(B, H) with B = x.shape[0] = {bsz}, H = {hidden}")
    same_dtype(x=x, h0=h0, c0=c0, w_x=w_x, w_h=w_h, b=b)
    return _lstm(x, h0, c0, w_x, w_h, b)
