"""Gated PixelCNN over code maps (van den Oord et al. 2016, "Conditional Image
Generation with PixelCNN Decoders"), the prior of VQ-VAE / VQ-VAE-2.

The model factorises a code map x (H, W) with values in [0, K) in raster order,

  p(x | y, c) = prod_{i,j} p(x_ij | x_<ij, y, c),                         (eq. 1)

where y is an optional class label and c optional codes of the level above
(VQ-VAE-2: the bottom prior is conditioned on the top codes).

Architecture (section 2 of the paper):
  * the K code values are embedded (a learned table, C channels);
  * two stacks remove the blind spot of the masked 3x3 PixelCNN: a *vertical*
    stack whose output at row r sees input rows <= r (every column within the
    kernel's reach), and a *horizontal* stack whose output at (i, j) sees the
    positions (i, j' <= j) of its input row plus the vertical stack of the rows
    above through a down-shifted 1x1 link;
  * every layer is gated (eq. 2 with conditioning, eq. 4):
      y = tanh(W_f * x + V_f^T h + U_f * s) ⊙ sigmoid(W_g * x + V_g^T h + U_g * s)
    with h the one-hot class (a learned per-class bias in each gate) and s the
    conditioning features (a 1x1 convolution of the conditioning stack's output,
    itself the embedded codes of the level above, convolved and upsampled to
    this level's size);
  * the horizontal stack is residual (except on the first layer, whose input is
    the current position's own code);
  * optional causal multi-head self-attention blocks on the horizontal stream
    (a position attends to itself and to every earlier position in raster
    order; the stream at a position already depends only on earlier codes), for
    the top prior's global context (VQ-VAE-2 section 3.3);
  * a head of two 1x1 layers gives K logits per position.

Masks are implemented as *shifted convolutions* rather than masked kernels:
the vertical kernel is (k//2 + 1, k) over an input padded with k//2 rows on top
only (so row r sees rows r - k//2 .. r), the horizontal kernel is (1, k//2 + 1)
over an input padded with k//2 columns on the left (mask B: columns
j - k//2 .. j) and, on the first layer, (1, k//2) over the input shifted right by
one column (mask A: columns j - k//2 .. j - 1, the current position excluded).
The vertical stack's contribution to the horizontal one is shifted down by one
row, so the current row never reaches the output through it. This computes
exactly the function of the masked-kernel formulation with no multiplications
by zero, and each layer is a VALID convolution of a window of its padded input,
which is what lets the cached sampler (`vqlatent.priors.sampling`) evaluate one
row of the vertical stack or one position of the horizontal stack with the same
parameters and the same arithmetic as the full-map forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


class PixelCNNInputError(ValueError):
    """Inputs that do not fit the prior: shapes, labels or conditioning codes."""


def gate(x: jax.Array) -> jax.Array:
    """tanh(a) * sigmoid(b) with [a, b] = x split on channels (eq. 2)."""
    a, b = jnp.split(x, 2, axis=-1)
    return jnp.tanh(a) * jax.nn.sigmoid(b)


def shift_down(x: jax.Array) -> jax.Array:
    """(B, H, W, C): row r receives row r - 1; row 0 receives zeros."""
    return jnp.pad(x, ((0, 0), (1, 0), (0, 0), (0, 0)))[:, :-1]


def pad_vertical(x: jax.Array, half: int) -> jax.Array:
    """Pads `half` rows on top and `half` columns on each side (the vertical stack's input)."""
    return jnp.pad(x, ((0, 0), (half, 0), (half, half), (0, 0)))


def pad_horizontal(x: jax.Array, half: int) -> jax.Array:
    """Pads `half` columns on the left (the horizontal stack's input)."""
    return jnp.pad(x, ((0, 0), (0, 0), (half, 0), (0, 0)))


def upsample_nearest(x: jax.Array, factor: int) -> jax.Array:
    """(B, h, w, C) -> (B, f h, f w, C), each value copied to an f x f block (static repeats lower to a
    broadcast and a reshape; `jax.image.resize(..., 'nearest')` computes the same by a gather)."""
    return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


class GatedLayer(nn.Module):
    """One gated layer of both stacks (figure 2 of the paper)."""

    channels: int
    kernel_size: int
    first: bool
    num_classes: int | None = None
    conditioned: bool = False
    dtype: Any = jnp.float32

    @property
    def half(self) -> int:
        return self.kernel_size // 2

    @property
    def horizontal_width(self) -> int:
        """Mask A (first layer): k//2 columns to the left; mask B: those and the current one."""
        return self.half if self.first else self.half + 1

    def setup(self):
        c2 = 2 * self.channels
        self.vertical_conv = nn.Conv(
            c2, (self.half + 1, self.kernel_size), padding="VALID", dtype=self.dtype, name="vertical_conv"
        )
        self.horizontal_conv = nn.Conv(
            c2, (1, self.horizontal_width), padding="VALID", dtype=self.dtype, name="horizontal_conv"
        )
        self.vertical_to_horizontal = nn.Dense(c2, dtype=self.dtype, name="vertical_to_horizontal")
        self.horizontal_out = nn.Dense(self.channels, dtype=self.dtype, name="horizontal_out")
        if self.num_classes:
            self.class_bias_vertical = nn.Embed(
                self.num_classes, c2, dtype=self.dtype, name="class_bias_vertical"
            )
            self.class_bias_horizontal = nn.Embed(
                self.num_classes, c2, dtype=self.dtype, name="class_bias_horizontal"
            )
        if self.conditioned:
            self.cond_vertical = nn.Dense(c2, dtype=self.dtype, name="cond_vertical")
            self.cond_horizontal = nn.Dense(c2, dtype=self.dtype, name="cond_horizontal")

    def vertical_bias(self, label: jax.Array | None, cond_features: jax.Array | None) -> Any:
        """The vertical gate's conditioning terms V^T h + U * s (eq. 4), broadcastable to (B, h, w, 2C)."""
        bias = 0.0
        if self.num_classes:
            bias = bias + self.class_bias_vertical(label)[:, None, None, :]
        if self.conditioned:
            bias = bias + self.cond_vertical(cond_features)
        return bias

    def horizontal_bias(self, label: jax.Array | None, cond_features: jax.Array | None) -> Any:
        """The horizontal gate's conditioning terms (its own V and U)."""
        bias = 0.0
        if self.num_classes:
            bias = bias + self.class_bias_horizontal(label)[:, None, None, :]
        if self.conditioned:
            bias = bias + self.cond_horizontal(cond_features)
        return bias

    def vertical(self, window: jax.Array, label, cond_features) -> tuple[jax.Array, jax.Array]:
        """Padded input rows -> (pre-gate features, gated output) of the vertical stack (VALID conv)."""
        pre = self.vertical_conv(window)
        return pre, gate(pre + self.vertical_bias(label, cond_features))

    def horizontal(
        self, window: jax.Array, h_in: jax.Array, vertical_pre_above: jax.Array, label, cond_features
    ) -> jax.Array:
        """Padded input columns, the input at the output positions and the vertical
        stack's pre-gate features of the row above -> the horizontal stack's output."""
        pre = self.horizontal_conv(window) + self.vertical_to_horizontal(vertical_pre_above)
        out = self.horizontal_out(gate(pre + self.horizontal_bias(label, cond_features)))
        # Mask A: the first layer's input at (i, j) is x_ij itself, so no residual.
        return out if self.first else out + h_in

    def __call__(self, v: jax.Array, h: jax.Array, label, cond_features) -> tuple[jax.Array, jax.Array]:
        """Full maps (B, H, W, C) -> (v, h) of the next layer."""
        width = h.shape[2]
        vertical_pre, v_out = self.vertical(pad_vertical(v, self.half), label, cond_features)
        h_window = pad_horizontal(h, self.half)
        if self.first:
            h_window = h_window[:, :, : width + self.half - 1]  # Shift right by one: x_ij excluded.
        h_out = self.horizontal(h_window, h, shift_down(vertical_pre), label, cond_features)
        return v_out, h_out


class CausalSelfAttention(nn.Module):
    """Multi-head attention over raster order: position p attends to positions q <= p.

    The horizontal stream at q depends only on codes before q, so attending to
    q <= p keeps the output at p a function of codes before p.
    """

    channels: int
    num_heads: int
    dtype: Any = jnp.float32

    def setup(self):
        if self.channels % self.num_heads:
            raise ValueError(
                f"attention: channels={self.channels} is not a multiple of num_heads={self.num_heads}."
            )
        self.query = nn.Dense(self.channels, dtype=self.dtype, name="query")
        self.key = nn.Dense(self.channels, dtype=self.dtype, name="key")
        self.value = nn.Dense(self.channels, dtype=self.dtype, name="value")
        self.out = nn.Dense(self.channels, dtype=self.dtype, name="out")

    def _heads(self, x: jax.Array) -> jax.Array:
        return x.reshape(*x.shape[:-1], self.num_heads, self.channels // self.num_heads)

    def keys_values(self, h: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(B, N, C) -> keys, values (B, N, heads, d)."""
        return self._heads(self.key(h)), self._heads(self.value(h))

    def attention_logits(self, q: jax.Array, keys: jax.Array) -> jax.Array:
        """q (B, M, heads, d), keys (B, N, heads, d) -> q.k / sqrt(d) (B, heads, M, N), in float32
        whatever the compute dtype (bf16 products accumulated in float32, as softmax needs)."""
        logits = jnp.einsum("bmhd,bnhd->bhmn", q, keys, preferred_element_type=jnp.float32)
        return logits / np.sqrt(q.shape[-1]).astype(np.float32)

    def attend(self, h_query: jax.Array, keys: jax.Array, values: jax.Array, allowed: jax.Array) -> jax.Array:
        """h_query (B, M, C); keys/values (B, N, heads, d); allowed (M, N) -> h_query + attention.

        softmax(q.k / sqrt(d)) v over the allowed keys (Vaswani et al. 2017, eq. 1): the logits and the
        softmax in float32, the weighted sum of the values in the compute dtype. This is what
        `jax.nn.dot_product_attention` computes (tested equal up to rounding); it is written out
        because that function's grouped-query vmap changes XLA:CPU's summation order (last-bit
        differences, ~3e-7) and its default implementation is this same XLA graph on every backend.
        """
        q = self._heads(self.query(h_query))
        # The cached sampler keeps keys and values in float32: back to the compute dtype (exact).
        keys, values = keys.astype(q.dtype), values.astype(q.dtype)
        logits = jnp.where(allowed[None, None], self.attention_logits(q, keys), -1e30)
        weights = jax.nn.softmax(logits, axis=-1).astype(values.dtype)
        attended = jnp.einsum("bhmn,bnhd->bmhd", weights, values)
        return h_query + self.out(attended.reshape(*h_query.shape[:-1], self.channels))

    def __call__(self, h: jax.Array) -> jax.Array:
        b, height, width, c = h.shape
        flat = h.reshape(b, height * width, c)
        keys, values = self.keys_values(flat)
        n = height * width
        allowed = jnp.arange(n)[:, None] >= jnp.arange(n)[None, :]
        return self.attend(flat, keys, values, allowed).reshape(h.shape)


class ConditioningStack(nn.Module):
    """Codes of the level above (B, h, w) -> features (B, H, W, C) at this level's size."""

    num_codes: int
    channels: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, cond_codes: jax.Array, factor: int) -> jax.Array:
        x = nn.Embed(self.num_codes, self.channels, dtype=self.dtype, name="embed")(cond_codes)
        x = nn.relu(nn.Conv(self.channels, (3, 3), padding="SAME", dtype=self.dtype, name="conv_in")(x))
        x = upsample_nearest(x, factor)
        return nn.relu(nn.Conv(self.channels, (3, 3), padding="SAME", dtype=self.dtype, name="conv_out")(x))


class GatedPixelCNN(nn.Module):
    """The prior: codes (B, H, W) [, labels (B,)] [, conditioning codes (B, H/f, W/f)] -> logits (B, H, W, K).

    Attributes:
      num_codes: K, the codebook size of the modelled level.
      channels: C, channels of both stacks.
      num_layers: gated layers (the receptive field grows by k//2 per layer).
      kernel_size: k (odd, >= 3).
      num_classes: classes of the label conditioning, or None (unconditional).
      cond_num_codes: K of the conditioning level, or None (no spatial conditioning).
      cond_channels: channels of the conditioning stack.
      attention_layers: indices of the gated layers followed by a causal
        self-attention block on the horizontal stream.
      num_heads: attention heads.
      head_channels: hidden channels of the output head.
    """

    num_codes: int
    channels: int = 64
    num_layers: int = 8
    kernel_size: int = 3
    num_classes: int | None = None
    cond_num_codes: int | None = None
    cond_channels: int = 32
    attention_layers: Sequence[int] = ()
    num_heads: int = 4
    head_channels: int = 128
    dtype: Any = jnp.float32

    def setup(self):
        if self.kernel_size < 3 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size={self.kernel_size}: must be odd and >= 3.")
        if self.num_layers < 1:
            raise ValueError(f"num_layers={self.num_layers}: must be >= 1.")
        bad = [l for l in self.attention_layers if not 0 <= l < self.num_layers]
        if bad:
            raise ValueError(
                f"attention_layers={tuple(self.attention_layers)}: {bad} not in "
                f"[0, num_layers={self.num_layers})."
            )
        self.embed = nn.Embed(self.num_codes, self.channels, dtype=self.dtype, name="embed")
        self.layers = [
            GatedLayer(
                self.channels,
                self.kernel_size,
                first=l == 0,
                num_classes=self.num_classes,
                conditioned=self.cond_num_codes is not None,
                dtype=self.dtype,
                name=f"gated_{l}",
            )
            for l in range(self.num_layers)
        ]
        self.attention = {
            str(l): CausalSelfAttention(
                self.channels, self.num_heads, dtype=self.dtype, name=f"attention_{l}"
            )
            for l in self.attention_layers
        }
        if self.cond_num_codes is not None:
            self.cond_stack = ConditioningStack(self.cond_num_codes, self.cond_channels, dtype=self.dtype)
        self.head_hidden = nn.Dense(self.head_channels, dtype=self.dtype, name="head_hidden")
        self.head_logits = nn.Dense(self.num_codes, dtype=jnp.float32, name="head_logits")

    # -- inputs --------------------------------------------------------------------
    def check_inputs(self, shape: tuple[int, ...], label, cond_codes) -> None:
        """Trace-time checks of shapes and of which conditioning inputs are given."""
        if len(shape) != 3:
            raise PixelCNNInputError(f"codes must be (batch, height, width); got shape {tuple(shape)}.")
        batch = shape[0]
        if self.num_classes:
            if label is None:
                raise PixelCNNInputError(
                    f"This prior is class-conditional (num_classes={self.num_classes}): "
                    f"pass labels of shape ({batch},)."
                )
            if tuple(np.shape(label)) != (batch,):
                raise PixelCNNInputError(f"labels of shape {tuple(np.shape(label))}, expected ({batch},).")
        elif label is not None:
            raise PixelCNNInputError("labels given to a prior without class conditioning (num_classes=None).")
        if self.cond_num_codes is not None:
            if cond_codes is None:
                raise PixelCNNInputError(
                    "This prior is conditioned on the codes of the level above: pass them."
                )
            self.upsample_factor(shape[1:], np.shape(cond_codes), batch)
        elif cond_codes is not None:
            raise PixelCNNInputError("Conditioning codes given to a prior without spatial conditioning.")

    @staticmethod
    def upsample_factor(hw: Sequence[int], cond_shape: Sequence[int], batch: int) -> int:
        """The integer f with (H, W) = f * (h, w), or `PixelCNNInputError`."""
        cond_shape = tuple(cond_shape)
        ok = len(cond_shape) == 3 and cond_shape[0] == batch and all(cond_shape[1:])
        if ok:
            factor = hw[0] // cond_shape[1]
            ok = factor >= 1 and tuple(hw) == (factor * cond_shape[1], factor * cond_shape[2])
        if not ok:
            raise PixelCNNInputError(
                f"Conditioning codes of shape {cond_shape} do not fit code maps of shape {tuple(hw)} with "
                f"batch {batch}: expected ({batch}, H/f, W/f) for an integer f (the codes of the level above)."
            )
        return factor

    def condition(self, cond_codes: jax.Array | None, hw: Sequence[int]) -> jax.Array | None:
        """Conditioning features (B, H, W, cond_channels) at this level's size, or None."""
        if self.cond_num_codes is None:
            return None
        factor = self.upsample_factor(hw, cond_codes.shape, cond_codes.shape[0])
        return self.cond_stack(cond_codes, factor)

    def embed_codes(self, codes: jax.Array) -> jax.Array:
        return self.embed(codes)

    # -- the full-map forward pass ----------------------------------------------------
    def head(self, h: jax.Array) -> jax.Array:
        return self.head_logits(nn.relu(self.head_hidden(nn.relu(h))))

    def logits_from_embedding(self, x: jax.Array, label=None, cond_features=None) -> jax.Array:
        """Embedded codes (B, H, W, C) -> logits (B, H, W, K); differentiable in x (the causality tests)."""
        v = h = x
        for l, layer in enumerate(self.layers):
            v, h = layer(v, h, label, cond_features)
            if str(l) in self.attention:
                h = self.attention[str(l)](h)
        return self.head(h)

    def __call__(
        self, codes: jax.Array, label: jax.Array | None = None, cond_codes: jax.Array | None = None
    ) -> jax.Array:
        self.check_inputs(codes.shape, label, cond_codes)
        cond_features = self.condition(cond_codes, codes.shape[1:])
        return self.logits_from_embedding(self.embed_codes(codes), label, cond_features)

    # -- pieces for the cached sampler (same parameters, same arithmetic) --------------
    def vertical_row(self, l: int, window: jax.Array, label, cond_features) -> tuple[jax.Array, jax.Array]:
        """Layer l's vertical stack on (B, k//2 + 1, W + 2 (k//2), C) padded rows -> one row."""
        return self.layers[l].vertical(window, label, cond_features)

    def horizontal_position(
        self, l: int, window: jax.Array, h_in: jax.Array, vertical_pre_above: jax.Array, label, cond_features
    ) -> jax.Array:
        """Layer l's horizontal stack at one position: (B, 1, width, C) window -> (B, 1, 1, C)."""
        return self.layers[l].horizontal(window, h_in, vertical_pre_above, label, cond_features)

    def attention_keys_values(self, l: int, h: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.attention[str(l)].keys_values(h)

    def attention_attend(self, l: int, h_query, keys, values, allowed) -> jax.Array:
        return self.attention[str(l)].attend(h_query, keys, values, allowed)
