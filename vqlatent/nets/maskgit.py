"""A bidirectional transformer over one level's code map: the MaskGIT prior (Chang et al. 2022,
"MaskGIT: Masked Generative Image Transformer").

The network reads a code map x (H, W) in which some positions hold the mask token [M] and predicts,
at every position, a distribution over the K codes,

  p(x_i | x_unmasked, y, c)  for every position i,                                   (eq. 1)

where y is an optional class label and c optional codes of the level above (VQ-VAE-2: the bottom
prior sees the top codes). Unlike the PixelCNN (`vqlatent.nets.pixelcnn`) nothing is causal: every
position attends to every other one, which is what lets the sampler
(`vqlatent.priors.maskgit_sampling`) fix many codes per network evaluation.

Architecture (a BERT-style encoder, section 3 of the paper):
  * tokens: the K codes and the mask token, id K (`mask_id`). The code table is the `embed`
    parameter (K rows, as in the PixelCNN, so tools that read K from a checkpoint read it the
    same way) and the mask token's vector is its own parameter `mask_embedding`;
  * learned position embeddings, one per position of the H x W map;
  * the level above, for a lower level: its codes are embedded with their own table, each vector
    copied to the f x f block of this level's positions it covers (nearest upsampling by the
    integer factor f between the maps) and added to the token and position embeddings. This is
    the PixelCNN bottom prior's conditioning (embed the upper codes, upsample, add to every
    layer's input) reduced to its input: a transformer mixes it into every position from the
    first block on, and the spatial alignment is given rather than learned, at no cost in
    sequence length (prepending the upper codes as tokens would add h w tokens to every
    attention);
  * the class, for a class-conditional prior: a learned class token prepended to the sequence
    (every position attends to it; its output is dropped);
  * `num_layers` pre-norm blocks, x <- x + MHA(LN(x)), x <- x + MLP(LN(x)), with
    `jax.nn.dot_product_attention` (no mask: bidirectional) and a GELU MLP;
  * a final LayerNorm and a dense layer to K logits per position (float32 whatever the compute
    dtype; the mask token is never predicted).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


class MaskGITInputError(ValueError):
    """Inputs or settings that do not fit the MaskGIT prior: shapes, ids, labels, decoding options."""


def check_mask_id(mask_id: int, num_codes: int) -> int:
    """`mask_id` as an int, or `MaskGITInputError` if it is one of the K real codes [0, K)."""
    if isinstance(mask_id, (bool, np.bool_)) or not isinstance(mask_id, (int, np.integer)):
        raise MaskGITInputError(
            f"mask_id={mask_id!r}: must be an integer (the mask token's id, K={num_codes})."
        )
    if 0 <= int(mask_id) < num_codes:
        raise MaskGITInputError(
            f"mask_id={mask_id} is inside the codebook range [0, {num_codes}): the mask token would be "
            f"read as the real code {mask_id}. Use mask_id={num_codes} (the id after the K codes)."
        )
    if int(mask_id) != num_codes:
        raise MaskGITInputError(
            f"mask_id={mask_id}: the network's mask token is id K={num_codes} (its embedding follows "
            f"the K code embeddings); use mask_id={num_codes}."
        )
    return int(mask_id)


def upsample_factor(hw: Sequence[int], cond_shape: Sequence[int], batch: int) -> int:
    """The integer f with (H, W) = f * (h, w) for conditioning codes (batch, h, w), or an error."""
    cond_shape = tuple(int(s) for s in cond_shape)
    ok = len(cond_shape) == 3 and cond_shape[0] == batch and all(cond_shape[1:])
    if ok:
        factor = hw[0] // cond_shape[1]
        ok = factor >= 1 and tuple(hw) == (factor * cond_shape[1], factor * cond_shape[2])
    if not ok:
        raise MaskGITInputError(
            f"Conditioning codes of shape {cond_shape} do not fit code maps of shape {tuple(hw)} with "
            f"batch {batch}: expected ({batch}, H/f, W/f) for an integer f (the codes of the level above)."
        )
    return factor


def check_code_values(codes: Any, num_codes: int) -> None:
    """`MaskGITInputError` unless concrete `codes` are integers in [0, K] (K: the mask token); traced
    codes (inside jit) cannot be read and are not checked."""
    if isinstance(codes, jax.core.Tracer):
        return
    values = np.asarray(codes)
    if values.size and (
        not np.issubdtype(values.dtype, np.integer) or values.min() < 0 or values.max() > num_codes
    ):
        raise MaskGITInputError(
            f"codes must be integers in [0, {num_codes}] (the K={num_codes} codes and the mask token "
            f"{num_codes}); got {values.dtype} values in [{values.min()}, {values.max()}]."
        )


def mask_ratio(progress: Any, schedule: str = "cosine") -> Any:
    """The fraction of positions masked at progress r in [0, 1] (MaskGIT section 3.2, the mask
    scheduling function gamma): cosine gamma(r) = cos(pi/2 r) (the paper's choice), linear
    gamma(r) = 1 - r. Training masks gamma(u) of the positions for u ~ U(0, 1); decoding step t of T
    leaves gamma(t / T) of them masked. Works on numpy and jax arrays."""
    xp = jnp if isinstance(progress, jax.Array) else np
    if schedule == "cosine":
        return xp.cos(0.5 * np.pi * progress)
    if schedule == "linear":
        return 1.0 - progress
    raise MaskGITInputError(f"schedule={schedule!r}: choose one of {list(SCHEDULES)}.")


SCHEDULES = ("cosine", "linear")


class Block(nn.Module):
    """One pre-norm transformer block: x + MHA(LN(x)), then + MLP(LN(x)) (bidirectional)."""

    width: int
    num_heads: int
    mlp_dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, n, _ = x.shape
        head_dim = self.width // self.num_heads
        h = nn.LayerNorm(dtype=self.dtype, name="attention_norm")(x)
        qkv = nn.Dense(3 * self.width, dtype=self.dtype, name="qkv")(h)
        q, k, v = jnp.split(qkv.reshape(b, n, 3 * self.num_heads, head_dim), 3, axis=2)
        # softmax(q.k / sqrt(d)) v over every position (Vaswani et al. 2017, eq. 1); jax.nn keeps the
        # logits and the softmax in float32 for bfloat16 inputs.
        attended = jax.nn.dot_product_attention(q, k, v)
        x = x + nn.Dense(self.width, dtype=self.dtype, name="attention_out")(
            attended.reshape(b, n, self.width)
        )
        h = nn.LayerNorm(dtype=self.dtype, name="mlp_norm")(x)
        h = nn.gelu(nn.Dense(self.mlp_dim, dtype=self.dtype, name="mlp_in")(h))
        return x + nn.Dense(self.width, dtype=self.dtype, name="mlp_out")(h)


class MaskGITTransformer(nn.Module):
    """codes (B, H, W) with ids in [0, K] (K = mask) [, labels (B,)] [, conditioning codes
    (B, H/f, W/f)] -> logits (B, H, W, K).

    Attributes:
      num_codes: K, the codebook size of the modelled level; the mask token is id K.
      width: the model width (embeddings and residual stream).
      num_layers: transformer blocks.
      num_heads: attention heads (width must be a multiple).
      mlp_dim: hidden units of each block's MLP.
      num_classes: classes of the label conditioning, or None (unconditional).
      cond_num_codes: K of the conditioning level, or None (no spatial conditioning).
    """

    num_codes: int
    width: int = 128
    num_layers: int = 4
    num_heads: int = 4
    mlp_dim: int = 512
    num_classes: int | None = None
    cond_num_codes: int | None = None
    dtype: Any = jnp.float32

    @property
    def mask_id(self) -> int:
        return int(self.num_codes)

    # -- inputs --------------------------------------------------------------------
    def check_inputs(self, shape: Sequence[int], label: Any, cond_codes: Any) -> None:
        """Trace-time checks of the shapes and of which conditioning inputs are given."""
        shape = tuple(int(s) for s in shape)
        if len(shape) != 3 or min(shape) < 1:
            raise MaskGITInputError(f"codes must be (batch, height, width) code maps; got shape {shape}.")
        batch = shape[0]
        if self.num_classes:
            if label is None:
                raise MaskGITInputError(
                    f"This prior is class-conditional (num_classes={self.num_classes}): "
                    f"pass labels of shape ({batch},)."
                )
            if tuple(np.shape(label)) != (batch,):
                raise MaskGITInputError(f"labels of shape {tuple(np.shape(label))}, expected ({batch},).")
        elif label is not None:
            raise MaskGITInputError("labels given to a prior without class conditioning (num_classes=None).")
        if self.cond_num_codes is not None:
            if cond_codes is None:
                raise MaskGITInputError(
                    "This prior is conditioned on the codes of the level above: pass them."
                )
            upsample_factor(shape[1:], np.shape(cond_codes), batch)
        elif cond_codes is not None:
            raise MaskGITInputError("Conditioning codes given to a prior without spatial conditioning.")

    def embed_tokens(self, codes: jax.Array) -> jax.Array:
        """(B, N) ids in [0, K] -> (B, N, width): the code table `embed` (K rows), and the mask vector
        `mask_embedding` at id K."""
        table = nn.Embed(
            self.num_codes,
            self.width,
            dtype=self.dtype,
            embedding_init=nn.initializers.normal(0.02),
            name="embed",
        )
        mask_vector = self.param("mask_embedding", nn.initializers.normal(0.02), (self.width,), jnp.float32)
        is_mask = (codes == self.mask_id)[..., None]
        return jnp.where(
            is_mask, mask_vector.astype(self.dtype), table(jnp.minimum(codes, self.num_codes - 1))
        )

    @nn.compact
    def __call__(
        self, codes: jax.Array, label: jax.Array | None = None, cond_codes: jax.Array | None = None
    ) -> jax.Array:
        if self.width % self.num_heads:
            raise MaskGITInputError(f"width={self.width} is not a multiple of num_heads={self.num_heads}.")
        if self.num_layers < 1:
            raise MaskGITInputError(f"num_layers={self.num_layers}: must be >= 1.")
        self.check_inputs(np.shape(codes), label, cond_codes)
        check_code_values(codes, self.num_codes)
        b, height, width = codes.shape
        n = height * width
        x = self.embed_tokens(codes.reshape(b, n))
        positions = self.param(
            "position_embedding", nn.initializers.normal(0.02), (n, self.width), jnp.float32
        )
        x = x + positions.astype(self.dtype)[None]
        if self.cond_num_codes is not None:
            factor = upsample_factor((height, width), cond_codes.shape, b)
            c = nn.Embed(self.cond_num_codes, self.width, dtype=self.dtype, name="cond_embed")(cond_codes)
            c = jnp.repeat(jnp.repeat(c, factor, axis=1), factor, axis=2)  # Nearest upsampling by f.
            x = x + c.reshape(b, n, self.width)
        if self.num_classes:
            class_token = nn.Embed(self.num_classes, self.width, dtype=self.dtype, name="class_embed")(label)
            x = jnp.concatenate([class_token[:, None], x], axis=1)
        for l in range(self.num_layers):
            x = Block(self.width, self.num_heads, self.mlp_dim, dtype=self.dtype, name=f"block_{l}")(x)
        if self.num_classes:
            x = x[:, 1:]  # The class token's output predicts nothing.
        x = nn.LayerNorm(dtype=self.dtype, name="final_norm")(x)
        logits = nn.Dense(self.num_codes, dtype=jnp.float32, name="head")(x)
        return logits.reshape(b, height, width, self.num_codes)
