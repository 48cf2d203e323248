"""InfoGAN networks (Chen et al. 2016, appendix C, Table 1 for MNIST).

MNIST, exactly as Table 1 (the defaults of `configs/infogan.py:mnist`):

  G(z, c): FC 1024 BN ReLU -> FC 7x7x128 BN ReLU -> 4x4 upconv 64 stride 2 BN ReLU
           -> 4x4 upconv 1 stride 2 -> sigmoid
  D trunk: 4x4 conv 64 stride 2 lReLU(0.1) -> 4x4 conv 128 stride 2 BN lReLU
           -> FC 1024 BN lReLU
  D head:  FC 1 (a logit)
  Q head:  FC 128 BN lReLU -> FC (K logits per categorical code; mean and, if
           learned, log std per continuous code)

Q shares the discriminator's trunk (section 6: "Q and D share all convolutional
layers"), so the mutual-information term costs one small MLP.

Output non-linearity: sigmoid, so generated images are on the data's [0, 1]
scale (the paper's released MNIST code also uses a sigmoid, a Bernoulli mean).
This is the same family as a tanh output on [-1, 1] data, since
sigmoid(a) = (tanh(a / 2) + 1) / 2.

Both networks are parametrised by layer widths, so the same modules build the
scaled-down 8x8 digits model and the 32x32 CelebA model of Table 4:

  Generator: `fc_features` (hidden FC layers), an FC to `base_shape` (h, w, c),
    one stride-2 upconv per entry of `upconv_features`, and a final stride-2
    upconv to the image channels; image side = base side * 2^(len(upconv)+1).
  Discriminator: `conv_features` (4x4 stride-2 convs; BN on all but the first,
    as DCGAN), `fc_features` (hidden FC layers with BN), then the D and Q heads.

Upsampling is `upsampling_layer(upsample, ...)`: by default a `SubpixelConvTranspose` on the CPU (the
same function as `nn.ConvTranspose(padding='SAME')`, much faster to differentiate on XLA:CPU) and
`nn.ConvTranspose` on GPU/TPU.
Kernels are initialised N(0, 0.02^2) as in DCGAN and the paper's code
(`kernel_init`); `init_variables` draws them all at once (fast to compile).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vqlatent.nets.downsample import downsampling_layer
from vqlatent.nets.layers import upsampling_layer

BATCH_NORM_MOMENTUM = 0.9  # Running averages for evaluation; the paper's code uses decay 0.9.
BATCH_NORM_EPSILON = 1e-5


DEFAULT_KERNEL_INIT = nn.initializers.normal(0.02)


def _batch_norm(train: bool, dtype: Any, name: str) -> nn.BatchNorm:
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=BATCH_NORM_MOMENTUM,
        epsilon=BATCH_NORM_EPSILON,
        dtype=dtype,
        name=name,
    )


def check_generator_shape(image_shape: Sequence[int], base_shape: Sequence[int], num_upconvs: int) -> None:
    """Raises if FC-to-`base_shape` then `num_upconvs + 1` stride-2 upconvs misses the image size."""
    if len(base_shape) != 3 or min(base_shape) < 1:
        raise ValueError(
            f"model.generator.base_shape={tuple(base_shape)!r} must be (height, width, channels)."
        )
    factor = 2 ** (num_upconvs + 1)
    produced = (base_shape[0] * factor, base_shape[1] * factor)
    if produced != tuple(image_shape[:2]):
        raise ValueError(
            f"The generator makes {produced[0]}x{produced[1]} images (model.generator.base_shape="
            f"{tuple(base_shape)} upsampled {num_upconvs + 1} times by 2: len(upconv_features)+1) but the "
            f"data is {image_shape[0]}x{image_shape[1]}: change base_shape or upconv_features, or resize "
            f"the data with --config.data.image_size."
        )


def check_discriminator_shape(image_shape: Sequence[int], num_convs: int) -> None:
    factor = 2**num_convs
    if num_convs < 1 or image_shape[0] % factor or image_shape[1] % factor:
        raise ValueError(
            f"model.discriminator.conv_features has {num_convs} stride-2 convolutions, which do not "
            f"divide the {image_shape[0]}x{image_shape[1]} images evenly (need at least one, and 2**{num_convs} "
            f"dividing both sides)."
        )


class Generator(nn.Module):
    """G(z, c): generator input (B, input_dim) -> images (B, H, W, out_channels) in [0, 1]."""

    fc_features: Sequence[int]
    base_shape: Sequence[int]
    upconv_features: Sequence[int]
    out_channels: int
    kernel_init: nn.initializers.Initializer = DEFAULT_KERNEL_INIT
    dtype: Any = None
    upsample: str = "auto"  # `vqlatent.nets.layers.upsampling_layer`: by backend, or forced.

    @nn.compact
    def __call__(self, inputs: jax.Array, train: bool) -> jax.Array:
        init = self.kernel_init
        h = inputs.astype(self.dtype or jnp.float32)
        # Layers followed by BatchNorm have no bias: BN's shift replaces it.
        for i, features in enumerate(self.fc_features):
            h = nn.Dense(features, use_bias=False, kernel_init=init, dtype=self.dtype, name=f"fc{i}")(h)
            h = nn.relu(_batch_norm(train, self.dtype, f"fc{i}_bn")(h))
        h = nn.Dense(
            int(np.prod(self.base_shape)), use_bias=False, kernel_init=init, dtype=self.dtype, name="fc_base"
        )(h)
        h = nn.relu(_batch_norm(train, self.dtype, "fc_base_bn")(h))
        h = h.reshape(h.shape[0], *self.base_shape)
        for i, features in enumerate(self.upconv_features):
            h = upsampling_layer(
                self.upsample, features, self.dtype, f"upconv{i}", use_bias=False, kernel_init=init
            )(h)
            h = nn.relu(_batch_norm(train, self.dtype, f"upconv{i}_bn")(h))
        h = upsampling_layer(self.upsample, self.out_channels, self.dtype, "upconv_out", kernel_init=init)(h)
        # Images in float32 at least: bfloat16 logits are widened, float64 (tests) kept.
        return nn.sigmoid(h.astype(jnp.promote_types(h.dtype, jnp.float32)))


class Discriminator(nn.Module):
    """The shared trunk with the D head (a real/fake logit) and the Q head (Q(c | x)'s parameters).

    `detach_q=True` stops Q's gradient at the trunk: Q then only reads the trunk's
    features (the lambda = 0 control, where Q measures the information in G's
    samples without shaping D, and so without shaping G).
    """

    conv_features: Sequence[int]
    fc_features: Sequence[int]
    q_hidden: int
    q_output_dim: int
    leaky_slope: float = 0.1
    kernel_init: nn.initializers.Initializer = DEFAULT_KERNEL_INIT
    dtype: Any = None
    downsample: str = "auto"  # `vqlatent.nets.downsample.downsampling_layer`: by backend, or forced.

    @nn.compact
    def __call__(self, images: jax.Array, train: bool, detach_q: bool = False) -> dict[str, jax.Array]:
        init = self.kernel_init
        lrelu = functools.partial(nn.leaky_relu, negative_slope=self.leaky_slope)
        h = images.astype(self.dtype or jnp.float32)
        for i, features in enumerate(self.conv_features):
            h = downsampling_layer(
                self.downsample,
                features,
                self.dtype,
                f"conv{i}",
                "SAME",
                h.shape,
                use_bias=i == 0,
                kernel_init=init,
            )(h)
            if i > 0:  # No BN on the first layer (DCGAN; Table 1).
                h = _batch_norm(train, self.dtype, f"conv{i}_bn")(h)
            h = lrelu(h)
        h = h.reshape(h.shape[0], -1)
        for i, features in enumerate(self.fc_features):
            h = nn.Dense(features, use_bias=False, kernel_init=init, dtype=self.dtype, name=f"fc{i}")(h)
            h = lrelu(_batch_norm(train, self.dtype, f"fc{i}_bn")(h))
        d_logits = nn.Dense(1, kernel_init=init, dtype=self.dtype, name="d_out")(h)[:, 0]
        q = jax.lax.stop_gradient(h) if detach_q else h
        q = nn.Dense(self.q_hidden, use_bias=False, kernel_init=init, dtype=self.dtype, name="q_fc")(q)
        q = lrelu(_batch_norm(train, self.dtype, "q_fc_bn")(q))
        q_outputs = nn.Dense(self.q_output_dim, kernel_init=init, dtype=self.dtype, name="q_out")(q)
        return {"d_logits": d_logits.astype(jnp.float32), "q_outputs": q_outputs.astype(jnp.float32)}


def init_variables(module: nn.Module, rng: jax.Array, *args, init_std: float, **kwargs) -> dict[str, Any]:
    """`module.init(rng, *args, **kwargs)` with every `kernel` ~ N(0, init_std^2), drawn at once.

    The distribution is that of `kernel_init=nn.initializers.normal(init_std)`, but
    the kernels come from one random draw instead of one per layer: XLA:CPU compiles
    each random-number kernel separately, which made the jitted initialisation of
    these small networks slow to compile. Biases, BatchNorm
    scales and statistics keep their (deterministic) initial values.
    """
    if not init_std > 0:
        raise ValueError(f"model.init_std={init_std!r} must be positive (kernels ~ N(0, init_std^2)).")
    variables = module.clone(kernel_init=nn.initializers.zeros_init()).init(rng, *args, **kwargs)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(variables["params"])
    is_kernel = [path[-1].key == "kernel" for path, _ in leaves]
    total = sum(leaf.size for (_, leaf), k in zip(leaves, is_kernel) if k)
    draws = init_std * jax.random.normal(rng, (total,), jnp.float32)
    new_leaves, offset = [], 0
    for (_, leaf), kernel in zip(leaves, is_kernel):
        if kernel:
            leaf = draws[offset : offset + leaf.size].reshape(leaf.shape).astype(leaf.dtype)
            offset += leaf.size
        new_leaves.append(leaf)
    return {**variables, "params": jax.tree_util.tree_unflatten(treedef, new_leaves)}
