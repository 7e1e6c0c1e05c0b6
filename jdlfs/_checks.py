"""Input validation shared by every public op.

Bad input must fail at trace time with a message that names the argument and
the expected shape/dtype — never a deep XLA traceback or a silent broadcast.
These helpers run in Python on static shapes/dtypes, so they cost nothing
under ``jit`` and see per-example shapes under ``vmap``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _describe(x) -> str:
    shape = getattr(x, "shape", None)
    dtype = getattr(x, "dtype", None)
    if shape is None:
        return f"a {type(x).__name__}"
    return f"an array of shape {tuple(shape)} and dtype {dtype}"


def float_array(name: str, x, *, rank: int | None = None, min_rank: int | None = None, layout: str | None = None):
    """Return ``x`` as a JAX array after checking it is floating point.

    Args:
      name: argument name used in error messages.
      rank / min_rank: required (minimum) number of dimensions.
      layout: human description of the expected layout, e.g. ``"(N, H, W, C)"``.
    Raises:
      TypeError: not an array-like of a floating dtype.
      ValueError: wrong rank.
    """
    if not hasattr(x, "dtype"):
        try:
            x = jnp.asarray(x)
        except TypeError as e:
            raise TypeError(f"{name} must be a floating-point array, got {_describe(x)}") from e
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(
            f"{name} must have a floating-point dtype (float16/bfloat16/float32/float64), got {_describe(x)}"
        )
    _check_rank(name, x, rank, min_rank, layout)
    return jnp.asarray(x)


def int_array(name: str, x, *, min_rank: int | None = None, rank: int | None = None, layout: str | None = None):
    """Return ``x`` as a JAX integer array (ids, labels, indices)."""
    if not hasattr(x, "dtype"):
        x = np.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.integer):
        raise TypeError(f"{name} must have an integer dtype, got {_describe(x)}")
    _check_rank(name, x, rank, min_rank, layout)
    return jnp.asarray(x)


def index_array(
    name: str,
    x,
    size: int,
    *,
    out_of_range: str,
    rank: int | None = None,
    min_rank: int | None = None,
    layout: str | None = None,
):
    """Integer ids/labels/indices of any width into ``[0, size)`` -> an int32 JAX array.

    Every integer dtype (int8..int64, uint8..uint64) gives exactly what int32
    ids of the same values give: bounds are compared in ``x``'s own dtype
    (``size - 1`` is capped at the dtype's maximum, so it never wraps) and the
    ids are converted to int32 only once they are known to lie in range.
    Values outside ``[0, size)``:

    * ``out_of_range="clip"``: the nearest edge (-1 -> 0, ``size + 3`` -> ``size - 1``);
    * ``out_of_range="drop"``: -1, which matches no class (an all-zero one-hot).

    A NumPy array (or list) is mapped in NumPy before it reaches JAX, so 64-bit
    ids stay exact with 64-bit mode off (JAX would otherwise wrap ``2**32 + 5``
    to 5 on conversion).
    """
    if not hasattr(x, "dtype"):
        x = np.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.integer):
        raise TypeError(f"{name} must have an integer dtype, got {_describe(x)}")
    _check_rank(name, x, rank, min_rank, layout)
    if size < 1:
        raise ValueError(f"{name} index an axis of size {size}; it must hold at least one entry")
    if size - 1 > np.iinfo(np.int32).max:
        raise ValueError(f"{name} index an axis of size {size}, larger than int32 indexing supports")
    xp = np if isinstance(x, (np.ndarray, np.generic)) else jnp
    dt = np.dtype(x.dtype)
    zero, top = dt.type(0), dt.type(min(size - 1, int(np.iinfo(dt).max)))  # both fit x's dtype
    if out_of_range == "clip":
        out = xp.clip(x, zero, top).astype(np.int32)
    elif out_of_range == "drop":
        out = xp.where((x >= zero) & (x <= top), x.astype(np.int32), np.int32(-1))
    else:
        raise ValueError(f"out_of_range must be 'clip' or 'drop', got {out_of_range!r}")
    return jnp.asarray(out, jnp.int32)


def _check_rank(name, x, rank, min_rank, layout):
    lay = f" {layout}" if layout else ""
    if rank is not None and x.ndim != rank:
        raise ValueError(f"{name} must have rank {rank}{lay}, got {_describe(x)}")
    if min_rank is not None and x.ndim < min_rank:
        raise ValueError(f"{name} must have rank >= {min_rank}{lay}, got {_describe(x)}")


def same_dtype(**named) -> None:
    """All named (non-None) arrays must share one dtype: no silent promotion."""
    items = [(k, v) for k, v in named.items() if v is not None]
    dtypes = {jnp.dtype(v.dtype) for _, v in items}
    if len(dtypes) > 1:
        desc = ", ".join(f"{k}: {v.dtype}" for k, v in items)
        raise TypeError(f"arguments must share one floating dtype, got {desc}")


def shape_is(name: str, x, expected: tuple, what: str = "") -> None:
    """``x.shape`` must equal ``expected`` exactly (no broadcasting)."""
    if tuple(x.shape) != tuple(expected):
        extra = f" ({what})" if what else ""
        raise ValueError(f"{name} must have shape {tuple(expected)}{extra}, got {_describe(x)}")


def static_int(name: str, v, *, minimum: int = 0) -> int:
    """A non-differentiable integer configuration value (stride, window, patch)."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name} must be a Python int, got {v!r}")
    if v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    return int(v)


def static_float(name: str, v) -> float:
    """A non-differentiable float configuration value (rate, eps, slope, smoothing).

    Config is static: a traced value here would make the rule's structure
    depend on data, so it is refused with a clear message."""
    if isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name} must be a Python float, got {v!r}")
    if isinstance(v, (int, float, np.integer, np.floating)):
        return float(v)
    if hasattr(v, "shape") and getattr(v, "shape", None) == () and not isinstance(v, jax.core.Tracer):
        return float(v)
    raise TypeError(
        f"{name} is static configuration and must be a Python float, got {type(v).__name__} "
        f"(a traced value cannot be used: pass it as a constant, not through jit/grad arguments)"
    )


def static_bool(name: str, v) -> bool:
    """A non-differentiable on/off configuration value (deterministic, approximate).

    It selects which computation runs, so it must be known when the op is
    traced: a traced value is refused with a clear message (rather than JAX's
    generic TracerBoolConversionError)."""
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, jax.core.Tracer):
        raise TypeError(
            f"{name} is static configuration and must be a Python bool (a Python constant), got a "
            f"traced {type(v).__name__} (a traced value cannot be used: pass it as a constant, e.g. "
            f"via static_argnums / static_argnames of jit, not as a jit/grad/vmap argument)"
        )
    if getattr(v, "shape", None) == () and getattr(v, "dtype", None) == np.bool_:
        return bool(v)
    raise TypeError(f"{name} must be a Python bool, got {v!r}")


def static_pair(name: str, v, *, minimum: int = 1) -> tuple[int, int]:
    """An int or a pair of ints, e.g. ``stride=2`` or ``stride=(2, 1)``."""
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
        return static_int(name, v[0], minimum=minimum), static_int(name, v[1], minimum=minimum)
    v = static_int(name, v, minimum=minimum)
    return v, v


__all__ = [
    "float_array",
    "int_array",
    "index_array",
    "same_dtype",
    "shape_is",
    "static_bool",
    "static_float",
    "static_int",
    "static_pair",
]
