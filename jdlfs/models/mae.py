"""Masked autoencoder (He et al. 2021, "Masked Autoencoders Are Scalable Vision Learners"), as plain functions.

An image ``(H, W, C)`` is cut into ``L = (H/p)(W/p)`` non-overlapping ``p x p`` patches
(:func:`jdlfs.functional.patchify`: row-major patches, each flattened as ``(pi, pj, c)``), each
linearly projected to a ``D``-wide token plus its position. Per image a random ``mask_ratio`` of
the patches is hidden (:func:`random_masking`: shuffle by uniform noise, keep the first
``K = int(L (1 - mask_ratio))``, as the paper's code does); the **encoder sees only the K
visible tokens** (:func:`jdlfs.functional.take_tokens` gathers them and scatters their
gradient back), a stack of pre-LN Transformer blocks -- the Transformer's own
:func:`jdlfs.models.transformer.encoder_block`, not a second copy -- and a final LayerNorm.
The light **decoder** projects the K encodings to its width, appends a learned mask token
for each hidden patch, puts every token back at its patch's place (``take_tokens`` with
the inverse permutation), adds positions, runs its own blocks and predicts each patch's
``p*p*C`` pixels. The **loss** is the mean squared error over the hidden patches only
(the visible ones carry no loss: copying them is no task); ``norm_pix_loss`` makes each
patch's target its own pixels standardised by the patch's mean and *unbiased* variance
(``ddof=1``, as ``torch.var`` in the paper's code computes it), the paper's
better-representation option.

Parameters (``init(key, config)``), nanoGPT style::

    params["patch_embed"]                        {"w" (p*p*C, D), "b" (D,)}
    params["pos_embed"]                          (L, D), only with positions="learned"
    params["encoder"]["layers"][i]               transformer.init_encoder_block(D, heads, d_ff)
    params["encoder"]["ln_f"]                    {"gamma", "beta"}
    params["decoder"]["embed"]                   {"w" (D, Dd), "b"}
    params["decoder"]["mask_token"]              (Dd,)           N(0, 0.02^2)
    params["decoder"]["pos_embed"]               (L, Dd), only with positions="learned"
    params["decoder"]["layers"][i], ["ln_f"]     like the encoder's, width Dd
    params["decoder"]["pred"]                    {"w" (Dd, p*p*C), "b"}

:func:`init_encoder` makes only the first four (the ViT a classifier or probe needs).

Positions: ``"sincos"`` (default, fixed) is the 2-D form of the paper's code: the first
``D/2`` features are :func:`~jdlfs.models.transformer.sinusoidal_positions` of the patch's
row, the last ``D/2`` of its column; ``"learned"`` tables start at N(0, 0.02^2).

Every piece of arithmetic goes through :mod:`jdlfs.functional` (``patchify``,
``take_tokens``, ``linear``, ``layer_norm``, ``attention`` inside the blocks, ``gelu``,
``mse``), so the backward pass is the composition of the hand-written rules; the mask
token's concatenation, the residual additions and the per-patch target statistics are
the only plain ``jnp``. Images enter as floats (e.g. standardised pixels) in the layout
``(N, H, W, C)``; they are cast to the parameters' dtype (float16, bfloat16, float32 or float64; the
per-patch target statistics are computed in float32 or wider).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jdlfs import functional as F
from jdlfs import init as initializers
from jdlfs.models.transformer import ACTIVATIONS, encoder_block, init_encoder_block, sinusoidal_positions

__all__ = [
    "Config",
    "Masking",
    "apply",
    "decode",
    "encode",
    "features",
    "init",
    "init_encoder",
    "loss",
    "masked_mse",
    "num_keep",
    "patch_targets",
    "random_masking",
    "reconstruct",
    "sincos_2d",
]

POSITIONS = ("sincos", "learned")
PIX_EPS = 1e-6  # the paper's epsilon in the per-patch target normalisation
PIX_DDOF = 1  # the paper's code: torch's ``Tensor.var`` is unbiased (divides by p*p*C - 1)


# ================================================================ configuration
def _int_field(name: str, v, minimum: int) -> None:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"Config.{name} must be an int, got {type(v).__name__} {v!r}")
    if v < minimum:
        raise ValueError(f"Config.{name} must be >= {minimum}, got {v}")


def _ratio(name: str, v) -> float:
    """``v`` as a Python float: Python and numpy reals (``np.float32(0.75)``) are accepted, bools refused."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a float, got {type(v).__name__} {v!r:.40}")
    if not np.isfinite(v):
        raise ValueError(f"{name} must be a finite float, got {v!r}")
    return float(v)


def num_keep(num_patches: int, mask_ratio: float) -> int:
    """Visible patches per image: ``int(num_patches * (1 - mask_ratio))``, as the paper's code (64, 0.75 -> 16).

    The product is rounded to 6 decimals before the floor, so float error cannot drop a patch
    (``100 * (1 - 0.9)`` is 9.999999999999998 in floating point: 10 visible, not 9)."""
    return int(round(num_patches * (1.0 - float(mask_ratio)), 6))


@dataclasses.dataclass(frozen=True)
class Config:
    """Hyper-parameters of the MAE (hashable: a ``jit`` static argument).

    Attributes:
      image_size, channels: square input images ``(image_size, image_size, channels)``.
      patch_size: side ``p`` of the square patches; must divide ``image_size``.
      d_model, depth, num_heads, d_ff: encoder width, blocks, heads, feed-forward width.
      decoder_d_model, decoder_depth, decoder_num_heads, decoder_d_ff: the same for the decoder.
      mask_ratio: fraction of patches hidden per image; at least one must stay visible and one hidden.
      positions: ``"sincos"`` (fixed 2-D sinusoids; widths must be even) or ``"learned"``.
      norm_pix_loss: targets are each patch's pixels standardised by the patch's own mean and unbiased variance.
      activation: feed-forward activation of every block, ``"gelu"`` (the ViT's) or ``"relu"``.
      ln_eps: LayerNorm epsilon (the paper's code uses 1e-6).
    """

    image_size: int = 32
    patch_size: int = 4
    channels: int = 3
    d_model: int = 192
    depth: int = 6
    num_heads: int = 3
    d_ff: int = 768
    decoder_d_model: int = 128
    decoder_depth: int = 2
    decoder_num_heads: int = 4
    decoder_d_ff: int = 512
    mask_ratio: float = 0.75
    positions: str = "sincos"
    norm_pix_loss: bool = False
    activation: str = "gelu"
    ln_eps: float = 1e-6

    def __post_init__(self):
        for name in (
            "image_size",
            "patch_size",
            "channels",
            "d_model",
            "depth",
            "num_heads",
            "d_ff",
            "decoder_d_model",
            "decoder_depth",
            "decoder_num_heads",
            "decoder_d_ff",
        ):
            _int_field(name, getattr(self, name), 1)
            object.__setattr__(self, name, int(getattr(self, name)))  # numpy ints: plain ints (hash, JSON)
        object.__setattr__(self, "mask_ratio", _ratio("Config.mask_ratio", self.mask_ratio))
        if self.image_size % self.patch_size:
            raise ValueError(f"Config.patch_size={self.patch_size} must divide image_size={self.image_size}")
        for width, heads in (("d_model", "num_heads"), ("decoder_d_model", "decoder_num_heads")):
            if getattr(self, width) % getattr(self, heads):
                raise ValueError(
                    f"Config.{width}={getattr(self, width)} must be divisible by {heads}={getattr(self, heads)}"
                )
        k = num_keep(self.num_patches, self.mask_ratio)
        if not (0.0 <= self.mask_ratio < 1.0 and 1 <= k < self.num_patches):
            raise ValueError(
                f"Config.mask_ratio={self.mask_ratio} must keep at least one of the {self.num_patches} patches "
                f"visible and hide at least one (it keeps {k})"
            )
        if self.positions not in POSITIONS:
            raise ValueError(f"Config.positions must be one of {POSITIONS}, got {self.positions!r}")
        if self.positions == "sincos" and (self.d_model % 2 or self.decoder_d_model % 2):
            raise ValueError(
                f"Config.positions='sincos' needs even widths (half for the row, half for the column), got "
                f"d_model={self.d_model}, decoder_d_model={self.decoder_d_model}"
            )
        if not isinstance(self.norm_pix_loss, (bool, np.bool_)):
            raise TypeError(f"Config.norm_pix_loss must be a bool, got {type(self.norm_pix_loss).__name__}")
        object.__setattr__(self, "norm_pix_loss", bool(self.norm_pix_loss))
        if self.norm_pix_loss and self.patch_size * self.patch_size * self.channels < 2:
            raise ValueError(
                "Config.norm_pix_loss standardises each patch by its own unbiased variance, which needs at least "
                f"2 values per patch; patch_size={self.patch_size} with channels={self.channels} gives 1"
            )
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"Config.activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        if isinstance(self.ln_eps, bool) or not isinstance(self.ln_eps, (int, float)) or not self.ln_eps > 0:
            raise ValueError(f"Config.ln_eps must be a positive float, got {self.ln_eps!r}")

    @property
    def grid(self) -> int:
        """Patches per side."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """``L``, patches per image."""
        return self.grid**2

    @property
    def patch_dim(self) -> int:
        """Values per patch, ``p * p * C``."""
        return self.patch_size**2 * self.channels

    @property
    def num_keep(self) -> int:
        """``K``, patches the encoder sees per image during pretraining."""
        return num_keep(self.num_patches, self.mask_ratio)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.image_size, self.image_size, self.channels)


# ================================================================ parameters
def _init_linear(key, d_in: int, d_out: int) -> dict:
    return {"w": initializers.xavier_uniform(key, (d_in, d_out), jnp.float32), "b": jnp.zeros((d_out,), jnp.float32)}


def _init_ln(d: int) -> dict:
    return {"gamma": jnp.ones((d,), jnp.float32), "beta": jnp.zeros((d,), jnp.float32)}


def _check_config(config) -> None:
    if not isinstance(config, Config):
        raise TypeError(f"config must be an mae.Config, got {type(config).__name__}")


def init_encoder(key, config: Config) -> dict:
    """Parameters of the ViT encoder alone: ``patch_embed``, ``pos_embed`` (learned positions), ``encoder``."""
    _check_config(config)
    return _init_encoder(key, config)


def init(key, config: Config) -> dict:
    """Fresh parameters of the whole MAE (float32; the tree is in the module docstring)."""
    _check_config(config)
    return _init(key, config)


@functools.partial(jax.jit, static_argnums=1)
def _init_encoder(key, config: Config) -> dict:
    k_patch, k_pos, k_blocks = jax.random.split(key, 3)
    d = config.d_model
    params = {"patch_embed": _init_linear(k_patch, config.patch_dim, d)}
    if config.positions == "learned":
        params["pos_embed"] = 0.02 * jax.random.normal(k_pos, (config.num_patches, d), jnp.float32)
    params["encoder"] = {
        "layers": [
            init_encoder_block(k, d, config.num_heads, config.d_ff) for k in jax.random.split(k_blocks, config.depth)
        ],
        "ln_f": _init_ln(d),
    }
    return params


@functools.partial(jax.jit, static_argnums=1)
def _init(key, config: Config) -> dict:
    k_enc, k_embed, k_mask, k_pos, k_blocks, k_pred = jax.random.split(key, 6)
    dd = config.decoder_d_model
    decoder = {
        "embed": _init_linear(k_embed, config.d_model, dd),
        "mask_token": 0.02 * jax.random.normal(k_mask, (dd,), jnp.float32),
    }
    if config.positions == "learned":
        decoder["pos_embed"] = 0.02 * jax.random.normal(k_pos, (config.num_patches, dd), jnp.float32)
    decoder["layers"] = [
        init_encoder_block(k, dd, config.decoder_num_heads, config.decoder_d_ff)
        for k in jax.random.split(k_blocks, config.decoder_depth)
    ]
    decoder["ln_f"] = _init_ln(dd)
    decoder["pred"] = _init_linear(k_pred, dd, config.patch_dim)
    return {**_init_encoder(k_enc, config), "decoder": decoder}


def _expected_shapes(config: Config, *, decoder: bool) -> dict:
    """``{path: shape}`` of the parameters outside the blocks (the blocks are checked by their count)."""
    d, dd, pd, length = config.d_model, config.decoder_d_model, config.patch_dim, config.num_patches
    shapes = {
        ("patch_embed", "w"): (pd, d),
        ("patch_embed", "b"): (d,),
        ("encoder", "ln_f", "gamma"): (d,),
        ("encoder", "ln_f", "beta"): (d,),
    }
    if config.positions == "learned":
        shapes[("pos_embed",)] = (length, d)
    if decoder:
        shapes.update(
            {
                ("decoder", "embed", "w"): (d, dd),
                ("decoder", "embed", "b"): (dd,),
                ("decoder", "mask_token"): (dd,),
                ("decoder", "ln_f", "gamma"): (dd,),
                ("decoder", "ln_f", "beta"): (dd,),
                ("decoder", "pred", "w"): (dd, pd),
                ("decoder", "pred", "b"): (pd,),
            }
        )
        if config.positions == "learned":
            shapes[("decoder", "pos_embed")] = (length, dd)
    return shapes


def _check_params(params, config: Config, *, decoder: bool) -> None:
    """ValueError / TypeError naming the first parameter that is missing, of the wrong shape or not floating."""
    _check_config(config)
    made_by = f"mae.init{'' if decoder else ' or mae.init_encoder'}"
    if not isinstance(params, dict):
        raise TypeError(f"params must be the dict {made_by} returns, got {type(params).__name__}")
    for path, shape in _expected_shapes(config, decoder=decoder).items():
        node, where = params, "params"
        for name in path:
            if not isinstance(node, dict) or name not in node:
                have = sorted(node) if isinstance(node, dict) else type(node).__name__
                raise ValueError(f"{where} has no {name!r} (params must come from {made_by}); it holds {have}")
            node, where = node[name], f"{where}[{name!r}]"
        if not hasattr(node, "dtype") or not jnp.issubdtype(node.dtype, jnp.floating):
            raise TypeError(f"{where} must be a floating array, got {getattr(node, 'dtype', type(node).__name__)}")
        if tuple(node.shape) != shape:
            raise ValueError(f"{where} must have shape {shape} for this config, got {tuple(node.shape)}")
    parts = [("encoder", config.depth, "depth")] + ([("decoder", config.decoder_depth, "decoder_depth")] * decoder)
    for part, depth, field in parts:
        layers = params[part].get("layers") if isinstance(params[part], dict) else None
        if not isinstance(layers, (list, tuple)) or len(layers) != depth:
            have = len(layers) if isinstance(layers, (list, tuple)) else type(layers).__name__
            raise ValueError(f"params[{part!r}]['layers'] must hold config.{field}={depth} blocks, got {have}")
        for i, leaf in enumerate(jax.tree.leaves(layers)):
            if not hasattr(leaf, "dtype") or not jnp.issubdtype(leaf.dtype, jnp.floating):
                raise TypeError(f"params[{part!r}]['layers'] must hold floating arrays, leaf {i} is {leaf!r:.60}")


# ================================================================ positions and masking
def sincos_2d(grid: int, dim: int, dtype=jnp.float32) -> jax.Array:
    """``(grid * grid, dim)`` fixed positions of the patches in row-major order: the first ``dim/2`` features
    are the 1-D sinusoids of the patch's row, the last ``dim/2`` those of its column."""
    if dim % 2:
        raise ValueError(f"sincos_2d needs an even dim (half per axis), got {dim}")
    pe = sinusoidal_positions(grid, dim // 2, dtype)  # (grid, dim/2)
    rows = jnp.repeat(pe, grid, axis=0)  # patch (i, j) -> row i
    cols = jnp.tile(pe, (grid, 1))  # patch (i, j) -> column j
    return jnp.concatenate([rows, cols], axis=1)


def _positions(params_part, config: Config, dim: int, dtype):
    if config.positions == "learned":
        return params_part["pos_embed"].astype(dtype)
    return sincos_2d(config.grid, dim, dtype)


class Masking(NamedTuple):
    """Which patches an image hides: all four fields follow from one random permutation per image.

    keep: ``(N, K)`` int32 patch indices the encoder sees, in the order it sees them (distinct per image).
    masked: ``(N, L - K)`` int32 indices of the hidden patches.
    restore: ``(N, L)`` int32: ``[keep, masked][n, restore[n, l]] == l`` (undoes the shuffle).
    mask: ``(N, L)`` bool, True where the patch is hidden.
    """

    keep: jax.Array
    masked: jax.Array
    restore: jax.Array
    mask: jax.Array


def random_masking(key, batch: int, num_patches: int, mask_ratio: float = 0.75) -> Masking:
    """Per image, hide a random ``mask_ratio`` of ``num_patches`` patches: uniform noise, ``argsort`` -> a random
    permutation, the first ``K = int(num_patches (1 - mask_ratio))`` are kept (the paper's code). The same key
    gives the same masks; every image of the batch gets its own."""
    for name, v in (("batch", batch), ("num_patches", num_patches)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive int (static), got {v!r}")
    mask_ratio = _ratio("mask_ratio", mask_ratio)
    k = num_keep(num_patches, mask_ratio)
    if not (0.0 <= mask_ratio < 1.0 and 1 <= k < num_patches):
        raise ValueError(
            f"mask_ratio={mask_ratio} must keep at least one of the {num_patches} patches and hide at least one "
            f"(it keeps {k})"
        )
    typed = isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
    raw = isinstance(key, jax.Array) and key.dtype == jnp.uint32 and key.ndim >= 1 and key.shape[-1] == 2
    if not (typed or raw):
        raise TypeError(f"key must be a PRNG key such as jax.random.key(0), got {key!r:.80}")
    if key.shape != (() if typed else (2,)):
        raise ValueError(
            f"key must be one PRNG key (it draws a different mask for every image of the batch), got a batch of "
            f"keys of shape {key.shape[: key.ndim - (0 if typed else 1)]}"
        )
    return _random_masking(key, int(batch), int(num_patches), k)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _random_masking(key, batch: int, num_patches: int, k: int) -> Masking:
    noise = jax.random.uniform(key, (batch, num_patches))
    shuffle = jnp.argsort(noise, axis=1).astype(jnp.int32)  # a random permutation per row
    restore = jnp.argsort(shuffle, axis=1).astype(jnp.int32)
    mask = jnp.arange(num_patches)[None, :] >= k  # in shuffled order: the first k kept
    mask = jnp.take_along_axis(mask, restore, axis=1)  # in patch order
    return Masking(shuffle[:, :k], shuffle[:, k:], restore, mask)


# ================================================================ the model
def _check_images(config: Config, images, dtype=None):
    """``images`` as a floating (N, H, W, C) jax array of the config's size, cast to ``dtype`` if given."""
    images = jnp.asarray(images) if not hasattr(images, "dtype") else images
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise TypeError(
            f"images must be floating-point (N, H, W, C) (standardise uint8 pixels first, e.g. "
            f"data.fit_normalizer(x).apply), got dtype {images.dtype}"
        )
    if images.ndim != 4 or tuple(images.shape[1:]) != config.image_shape:
        raise ValueError(f"images must have shape (N, {', '.join(map(str, config.image_shape))}), got {images.shape}")
    images = jnp.asarray(images)
    return images if dtype is None else images.astype(dtype)


def _check_keep(keep, config: Config, n: int):
    """``keep`` must be ``(N, K)`` integer patch indices; when its values are known (not under ``jit``), each in
    ``[0, L)`` and distinct within its row (a repeated or clipped index would feed the encoder a patch twice)."""
    if not hasattr(keep, "dtype") or not jnp.issubdtype(keep.dtype, jnp.integer):
        raise TypeError(f"keep must be an integer array of patch indices (N, K), got {keep!r:.80}")
    if keep.ndim != 2 or keep.shape[0] != n or not 1 <= keep.shape[1] <= config.num_patches:
        raise ValueError(
            f"keep must have shape (N={n}, K) with 1 <= K <= {config.num_patches} patch indices, got {keep.shape}"
        )
    if not isinstance(keep, jax.core.Tracer):
        values = np.asarray(keep)
        bad = (values < 0) | (values >= config.num_patches)
        if bad.any():
            raise ValueError(
                f"keep holds patch indices outside [0, {config.num_patches}), e.g. {values[bad][0]} (image "
                f"{np.argwhere(bad)[0][0]})"
            )
        repeated = np.any(np.diff(np.sort(values, axis=1), axis=1) == 0, axis=1)
        if repeated.any():
            raise ValueError(f"keep must name each patch at most once per image; image {np.argmax(repeated)} repeats")
    return keep


def _blocks(layers, x, *, num_heads: int, config: Config):
    for p in layers:
        x = encoder_block(p, x, None, num_heads=num_heads, activation=config.activation, ln_eps=config.ln_eps)
    return x


def _ln(p, x, eps):
    return F.layer_norm(x, p["gamma"], p["beta"], eps=eps)


def encode(params, config: Config, images, *, keep=None) -> jax.Array:
    """Encoder output ``(N, K, D)`` of the patches ``keep (N, K)`` (e.g. ``Masking.keep``) of each image, or of
    all ``L`` patches ``(N, L, D)`` when ``keep`` is None. Patches outside ``keep`` never reach the encoder:
    tokens are embedded, given their positions and then gathered (:func:`~jdlfs.functional.take_tokens`),
    and the blocks see the gathered tokens only."""
    _check_params(params, config, decoder=False)
    w = params["patch_embed"]["w"]
    images = _check_images(config, images, w.dtype)
    if keep is not None:
        keep = _check_keep(keep, config, images.shape[0])
    return _encode(params, config, images, keep)


def _encode(params, config: Config, images, keep, last: int = 1):
    """The final LayerNorm of the outputs of the last ``last`` blocks (stacked on a new axis 0 when ``last > 1``)."""
    pe = params["patch_embed"]
    x = F.linear(F.patchify(images, config.patch_size), pe["w"], pe["b"])  # (N, L, D)
    x = x + _positions(params, config, config.d_model, x.dtype)
    if keep is not None:
        x = F.take_tokens(x, keep)  # (N, K, D): the hidden patches are gone from here on
    outs = []
    for i, p in enumerate(params["encoder"]["layers"]):
        x = _blocks([p], x, num_heads=config.num_heads, config=config)
        if i >= config.depth - last:
            outs.append(_ln(params["encoder"]["ln_f"], x, config.ln_eps))
    return outs[0] if last == 1 else jnp.stack(outs)


def _check_masking(masking, config: Config) -> None:
    if not isinstance(masking, Masking):
        raise TypeError(f"masking must be an mae.Masking (from mae.random_masking), got {type(masking).__name__}")
    for name in Masking._fields:
        a = getattr(masking, name)
        if not hasattr(a, "shape") or a.ndim != 2:
            raise ValueError(f"masking.{name} must be a 2-D array, got {getattr(a, 'shape', type(a).__name__)}")
    n, k = masking.keep.shape
    length = config.num_patches
    expected = {"keep": (n, k), "masked": (n, length - k), "restore": (n, length), "mask": (n, length)}
    for name, shape in expected.items():
        if tuple(getattr(masking, name).shape) != shape:
            raise ValueError(
                f"masking.{name} must have shape {shape} (N={n} images, K={k} visible of L={length} patches), "
                f"got {tuple(getattr(masking, name).shape)}"
            )
    for name in ("keep", "masked", "restore"):
        if not jnp.issubdtype(getattr(masking, name).dtype, jnp.integer):
            raise TypeError(f"masking.{name} must hold integer patch indices, got {getattr(masking, name).dtype}")


def decode(params, config: Config, latent, masking: Masking) -> jax.Array:
    """Pixel predictions ``(N, L, p*p*C)`` for every patch from the encoder output ``latent (N, K, D)`` of the
    visible patches ``masking.keep``: a learned mask token stands in for each hidden patch.

    Raises TypeError / ValueError for a ``masking`` that is not an :class:`Masking` of ``L`` patches, or a
    ``latent`` that is not floating ``(N, masking.keep.shape[1], d_model)`` with the masking's ``N``."""
    _check_params(params, config, decoder=True)
    _check_masking(masking, config)
    if not hasattr(latent, "dtype") or not jnp.issubdtype(latent.dtype, jnp.floating):
        raise TypeError(f"latent must be a floating array (N, K, D) from mae.encode, got {latent!r:.80}")
    want = (masking.keep.shape[0], masking.keep.shape[1], config.d_model)
    if tuple(latent.shape) != want:
        raise ValueError(
            f"latent must have shape (N, K, d_model) = {want}: the encoder output of masking.keep's "
            f"{want[0]} images x {want[1]} visible patches, got {tuple(latent.shape)}"
        )
    return _decode(params, config, latent.astype(params["decoder"]["embed"]["w"].dtype), masking)


def _decode(params, config: Config, latent, masking: Masking):
    d = params["decoder"]
    x = F.linear(latent, d["embed"]["w"], d["embed"]["b"])  # (N, K, Dd)
    n, k, dd = x.shape
    tokens = jnp.broadcast_to(d["mask_token"].astype(x.dtype), (n, config.num_patches - k, dd))
    x = jnp.concatenate([x, tokens], axis=1)  # shuffled order: [visible, hidden]
    x = F.take_tokens(x, masking.restore)  # patch order
    x = x + _positions(d, config, dd, x.dtype)
    x = _blocks(d["layers"], x, num_heads=config.decoder_num_heads, config=config)
    x = _ln(d["ln_f"], x, config.ln_eps)
    return F.linear(x, d["pred"]["w"], d["pred"]["b"])


def apply(params, config: Config, images, mask_key) -> tuple[jax.Array, Masking]:
    """Mask each image at random (``mask_key``), encode the visible patches, decode every patch:
    ``(pred (N, L, p*p*C), masking)``."""
    _check_params(params, config, decoder=True)
    images = _check_images(config, images, params["patch_embed"]["w"].dtype)
    masking = random_masking(mask_key, images.shape[0], config.num_patches, config.mask_ratio)
    return _decode(params, config, _encode(params, config, images, masking.keep), masking), masking


def patch_targets(config: Config, images) -> jax.Array:
    """What the decoder learns to predict, ``(N, L, p*p*C)``: the patches of ``images``, each standardised by its
    own mean and unbiased variance (``ddof=1``, the paper's code) over its ``p*p*C`` values when
    ``config.norm_pix_loss``: ``(x - mean) / sqrt(var + 1e-6)``."""
    _check_config(config)
    return _patch_targets(config, _check_images(config, images))


def _patch_stats(patches):
    """Per-patch ``(mean, sqrt(var + eps))`` over the last axis, unbiased variance, in float32 or wider."""
    patches = patches.astype(jnp.promote_types(patches.dtype, jnp.float32))
    mean = jnp.mean(patches, axis=-1, keepdims=True)
    var = jnp.var(patches, axis=-1, keepdims=True, ddof=PIX_DDOF)
    return mean, jnp.sqrt(var + PIX_EPS)


def _patch_targets(config: Config, images):
    patches = F.patchify(images, config.patch_size)
    if not config.norm_pix_loss:
        return patches
    mean, std = _patch_stats(patches)
    return ((patches - mean) / std).astype(patches.dtype)


def masked_mse(pred, target, masking: Masking) -> jax.Array:
    """Mean squared error over the hidden patches only: ``mse(pred[masked], target[masked])`` with both gathered
    by :func:`~jdlfs.functional.take_tokens` (every image hides the same number of patches, so this is the mean
    over hidden patches and their values; visible patches get neither loss nor gradient)."""
    return F.mse(F.take_tokens(pred, masking.masked), F.take_tokens(target.astype(pred.dtype), masking.masked))


def loss(params, config: Config, images, mask_key) -> jax.Array:
    """The pretraining loss of a batch of images: :func:`masked_mse` of :func:`apply`'s predictions against
    :func:`patch_targets`, with the masks drawn from ``mask_key``."""
    pred, masking = apply(params, config, images, mask_key)
    target = _patch_targets(config, _check_images(config, images, pred.dtype))
    return masked_mse(pred, target, masking)


def features(params, config: Config, images, *, blocks: int = 1) -> jax.Array:
    """``(N, blocks * D)`` features for probes and classifiers, every patch visible: the encoder's tokens
    averaged over the ``L`` patches. ``blocks=1`` (default, the MAE probe's features): the encoder output, i.e.
    the final block's output after the final LayerNorm, mean-pooled. ``blocks=k`` is an extra for users: the
    outputs of the last ``k`` blocks, each through the final LayerNorm, mean-pooled and concatenated, oldest
    first (DINO's linear evaluation of ViTs concatenates the last 4 blocks the same way)."""
    _check_params(params, config, decoder=False)
    if isinstance(blocks, bool) or not isinstance(blocks, (int, np.integer)) or not 1 <= blocks <= config.depth:
        raise ValueError(f"blocks must be an int in [1, depth={config.depth}], got {blocks!r}")
    images = _check_images(config, images, params["patch_embed"]["w"].dtype)
    pooled = jnp.mean(_encode(params, config, images, None, int(blocks)), axis=-2)  # (N, D) or (k, N, D)
    return pooled if blocks == 1 else jnp.concatenate(list(pooled), axis=-1)


RECONSTRUCTION_DISPLAY = {
    False: "hidden patches: the decoder's predicted pixels (it is trained on the pixels themselves)",
    True: (
        "hidden patches: the decoder's per-patch normalised prediction, rescaled with statistics of the image's "
        "VISIBLE patches only (their mean brightness: the mean of their per-patch means; their mean contrast: the "
        "mean of their per-patch standard deviations); the model does not predict a hidden patch's own mean and "
        "standard deviation, and nothing of the hidden pixels is used"
    ),
}


def reconstruct(params, config: Config, images, mask_key) -> tuple[jax.Array, jax.Array, Masking]:
    """For figures: ``(visible, reconstruction, masking)``, both ``(N, H, W, C)`` in the input's pixel space.

    ``visible`` is the input with the hidden patches set to 0 (the mean of standardised pixels);
    ``reconstruction`` is the decoder's prediction with the visible patches pasted back. Nothing of the
    hidden pixels enters the reconstruction. With ``norm_pix_loss`` the decoder predicts each hidden patch
    standardised by that patch's own mean and standard deviation, which it is never told; mapping the
    prediction back with the hidden patch's *true* statistics would paint a ``grid x grid`` colour thumbnail
    of the hidden content into the figure. Each image's hidden predictions are instead mapped back as
    ``pred * s + m`` with ``m`` the mean of the visible patches' per-patch means and ``s`` the mean of their
    per-patch standard deviations (one pair per image): the hidden patches show the predicted structure at
    the visible patches' average brightness and contrast (:data:`RECONSTRUCTION_DISPLAY` says so in words).
    """
    pred, masking = apply(params, config, images, mask_key)
    patches = F.patchify(_check_images(config, images, pred.dtype), config.patch_size)
    if config.norm_pix_loss:
        mean, std = _patch_stats(patches)  # (N, L, 1) each; only the visible patches' are used
        visible_weight = (~masking.mask)[..., None].astype(mean.dtype)
        count = jnp.sum(visible_weight, axis=1, keepdims=True)
        m = jnp.sum(mean * visible_weight, axis=1, keepdims=True) / count  # (N, 1, 1)
        s = jnp.sum(std * visible_weight, axis=1, keepdims=True) / count
        pred = (pred.astype(m.dtype) * s + m).astype(pred.dtype)
    hidden = masking.mask[..., None]
    visible = jnp.where(hidden, 0.0, patches)
    recon = jnp.where(hidden, pred, patches)
    shape = config.image_shape
    return F.unpatchify(visible, config.patch_size, shape), F.unpatchify(recon, config.patch_size, shape), masking
