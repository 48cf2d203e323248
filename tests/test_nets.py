"""Networks: the sub-pixel upsampling equals ConvTranspose; VQ-VAE shapes; bad shapes."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from vqlatent import backend as vqlatent_backend
from vqlatent.nets import autoencoder
from vqlatent.nets.autoencoder import check_image_shape
from vqlatent.nets.layers import SubpixelConvTranspose, upsampling_layer
from vqlatent.quantizers import VectorQuantizerEMA


@pytest.mark.parametrize(
    "kernel,stride,height,width",
    [
        (4, 2, 7, 7),  # VQ-VAE decoders: 4x4 stride 2 (7 -> 14 -> 28).
        (4, 2, 8, 5),  # Non-square input.
        (3, 2, 5, 6),  # Odd kernel.
        (4, 4, 3, 3),  # Kernel == stride (VQ-VAE-2's 4x upsampling by one layer).
        (8, 4, 4, 4),
        (3, 1, 5, 5),  # Stride 1: a plain convolution.
        (2, 3, 4, 4),  # Kernel < stride: some phases have no tap (one sub-pixel convolution).
    ],
)
@pytest.mark.parametrize("per_phase", [True, False])
def test_subpixel_equals_conv_transpose(kernel, stride, height, width, per_phase):
    x = jax.random.normal(jax.random.key(0), (2, height, width, 3))
    reference = nn.ConvTranspose(5, (kernel, kernel), (stride, stride), padding="SAME")
    fast = SubpixelConvTranspose(5, (kernel, kernel), (stride, stride), per_phase=per_phase)
    params = reference.init(jax.random.key(1), x)
    params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(2), p.shape), params)
    chex.assert_trees_all_equal_shapes(params, fast.init(jax.random.key(1), x))
    y_ref, y_fast = reference.apply(params, x), fast.apply(params, x)
    chex.assert_shape(y_fast, (2, height * stride, width * stride, 5))
    chex.assert_trees_all_close(y_fast, y_ref, atol=1e-5)

    cotangent = jax.random.normal(jax.random.key(3), y_ref.shape)

    def loss(module, params, x):
        return jnp.sum(module.apply(params, x) * cotangent)

    g_ref = jax.grad(loss, argnums=(1, 2))(reference, params, x)
    g_fast = jax.grad(loss, argnums=(1, 2))(fast, params, x)
    chex.assert_trees_all_close(g_fast, g_ref, atol=1e-4, rtol=1e-5)


def _vqvae(num_downsamples, num_codes=512, dim=64, channels=1, upsample="subpixel"):
    return autoencoder.vqvae(
        quantizer=VectorQuantizerEMA(num_codes, dim),
        out_channels=channels,
        num_hiddens=32,
        num_residual_hiddens=8,
        num_downsamples=num_downsamples,
        upsample=upsample,
    )


@pytest.mark.parametrize(
    "size,channels,num_downsamples,code_size",
    [
        (28, 1, 2, 7),  # MNIST -> 7x7.
        (32, 3, 2, 8),  # CIFAR-10 -> 8x8.
        (128, 3, 2, 32),  # The paper's ImageNet 128x128 -> 32x32, K=512.
    ],
)
def test_vqvae_shapes(size, channels, num_downsamples, code_size):
    model = _vqvae(num_downsamples, channels=channels)
    x = jnp.zeros((2, size, size, channels))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    out = jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
    chex.assert_shape(out["reconstruction"], (2, size, size, channels))
    chex.assert_shape(out["z_e"]["top"], (2, code_size, code_size, 64))
    chex.assert_shape(out["vq"]["top"]["encoding_indices"], (2, code_size, code_size))
    assert "params" in variables and "vq_ema" in variables
    assert "codebook" not in variables["params"].get("quantizer", {})


def test_decode_codes_matches_reconstruction():
    model = _vqvae(2, num_codes=16, dim=8)
    x = jax.random.uniform(jax.random.key(0), (2, 28, 28, 1))
    variables = model.init(jax.random.key(1), x, train=False)
    out = model.apply(variables, x, train=False)
    from_codes = model.apply(variables, out["codes"], method=autoencoder.Autoencoder.decode_codes)
    chex.assert_trees_all_close(from_codes, out["reconstruction"], atol=1e-6)


def test_conv_transpose_and_subpixel_models_agree():
    x = jax.random.uniform(jax.random.key(0), (2, 28, 28, 1))
    slow, fast = _vqvae(2, 16, 8, upsample="conv_transpose"), _vqvae(2, 16, 8)
    variables = slow.init(jax.random.key(1), x, train=False)
    chex.assert_trees_all_close(
        fast.apply(variables, x, train=False)["reconstruction"],
        slow.apply(variables, x, train=False)["reconstruction"],
        atol=1e-5,
    )


@pytest.mark.parametrize(
    "backend_name, expected",
    [("cpu", SubpixelConvTranspose), ("gpu", nn.ConvTranspose), ("tpu", nn.ConvTranspose)],
)
def test_auto_upsampling_picks_the_backend_form_with_the_same_parameters(monkeypatch, backend_name, expected):
    """'auto' resolves by backend; every form has the same parameter tree and computes the same function,
    so a checkpoint moves between backends (values and gradients checked on the CPU)."""
    monkeypatch.setattr(vqlatent_backend, "default_backend", lambda: backend_name)
    layer = upsampling_layer("auto", 8, None, "up")
    assert type(layer) is expected
    x = jax.random.normal(jax.random.key(0), (2, 5, 5, 4))
    reference = upsampling_layer("conv_transpose", 8, None, "up")
    variables = reference.init(jax.random.key(1), x)
    assert jax.tree.structure(layer.init(jax.random.key(1), x)) == jax.tree.structure(variables)

    def loss(module, v, x):
        return jnp.sum(jnp.sin(module.apply(v, x)))

    chex.assert_trees_all_close(layer.apply(variables, x), reference.apply(variables, x), atol=1e-5)
    chex.assert_trees_all_close(
        jax.grad(loss, argnums=(1, 2))(layer, variables, x),
        jax.grad(loss, argnums=(1, 2))(reference, variables, x),
        atol=1e-4,
    )
    with pytest.raises(ValueError, match="model.upsample='nearest'"):
        upsampling_layer("nearest", 8, None, "up")


def test_image_size_not_divisible_is_a_clear_error():
    with pytest.raises(ValueError, match=r"30x30 cannot be downsampled evenly by 4 .*num_downsamples=2"):
        check_image_shape((30, 30, 3), 2)
    model = _vqvae(3, 16, 8)
    with pytest.raises(ValueError, match="28x28 cannot be downsampled evenly by 8"):
        model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)), train=False)
