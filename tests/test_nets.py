"""Networks: the sub-pixel upsampling equals ConvTranspose, the per-phase input gradient equals XLA's
strided convolution's; VQ-VAE shapes; bad shapes."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from vqlatent import backend as vqlatent_backend
from vqlatent.backend import MIN_PHASE_GRAD_CHANNELS, MIN_PHASE_GRAD_PIXELS
from vqlatent.nets import autoencoder
from vqlatent.nets.autoencoder import check_image_shape
from vqlatent.nets.downsample import PhaseGradConv, downsampling_layer
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


@pytest.mark.parametrize(
    "shape,kernel,stride,padding",
    [
        ((2, 8, 8, 16), 4, 2, ((1, 1), (1, 1))),  # The VQ-VAE encoders (interleaved phase gradients).
        ((2, 14, 10, 6), 4, 2, "SAME"),  # InfoGAN's discriminator, non-square.
        ((2, 7, 9, 5), 4, 2, "SAME"),  # Odd sizes: the padded input is not a multiple of the stride.
        ((1, 9, 9, 3), 3, 2, ((1, 1), (1, 1))),  # Odd kernel: the phases have unequal taps.
        ((1, 12, 12, 4), 4, 4, ((0, 0), (0, 0))),  # Kernel == stride.
    ],
)
def test_phase_gradient_conv_equals_nn_conv(shape, kernel, stride, padding):
    """Same parameters, bit-identical forward values, and input/kernel/bias gradients equal to nn.Conv's
    (to float32 summation order)."""
    x = jax.random.normal(jax.random.key(0), shape)
    kwargs = dict(strides=(stride, stride), padding=padding)
    reference = nn.Conv(7, (kernel, kernel), **kwargs)
    layer = PhaseGradConv(7, (kernel, kernel), **kwargs)
    variables = reference.init(jax.random.key(1), x)
    assert jax.tree.structure(layer.init(jax.random.key(1), x)) == jax.tree.structure(variables)
    assert (layer.apply(variables, x) == reference.apply(variables, x)).all()

    def loss(module, v, x):
        return jnp.sum(jnp.sin(module.apply(v, x)))

    got = jax.jit(jax.grad(loss, argnums=(1, 2)), static_argnums=0)(layer, variables, x)
    want = jax.jit(jax.grad(loss, argnums=(1, 2)), static_argnums=0)(reference, variables, x)
    chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-5)
    assert float(jnp.max(jnp.abs(got[1]))) > 0.1  # The input gradient is not trivially zero.


def test_phase_gradient_conv_in_bfloat16_matches_nn_conv():
    """bf16 compute: the same bf16 outputs, float32 parameter gradients, input gradients equal to bf16
    rounding."""
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 16))
    kwargs = dict(strides=(2, 2), padding=((1, 1), (1, 1)), dtype=jnp.bfloat16)
    reference, layer = nn.Conv(8, (4, 4), **kwargs), PhaseGradConv(8, (4, 4), **kwargs)
    variables = reference.init(jax.random.key(1), x)
    assert layer.apply(variables, x).dtype == jnp.bfloat16
    assert (layer.apply(variables, x) == reference.apply(variables, x)).all()

    def loss(module, v, x):
        return jnp.sum(jnp.sin(module.apply(v, x).astype(jnp.float32)))

    got = jax.grad(loss, argnums=(1, 2))(layer, variables, x)
    want = jax.grad(loss, argnums=(1, 2))(reference, variables, x)
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(got[0]))
    chex.assert_trees_all_close(got, want, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize(
    "backend_name, input_shape, expected",
    [
        ("cpu", (4, 64, 64, 128), PhaseGradConv),
        ("cpu", (4, 32, 32, 64), PhaseGradConv),
        ("cpu", (128, 14, 14, 64), nn.Conv),  # Small maps: XLA's strided gradient is as fast.
        ("cpu", (4, 256, 256, 3), nn.Conv),  # Image layers.
        ("gpu", (4, 64, 64, 128), nn.Conv),
        ("tpu", (4, 64, 64, 128), nn.Conv),
    ],
)
def test_auto_downsampling_picks_the_backend_form(monkeypatch, backend_name, input_shape, expected):
    """'auto': the per-phase input gradient on the CPU for the layer sizes where it is faster
    (MIN_PHASE_GRAD_PIXELS, MIN_PHASE_GRAD_CHANNELS), XLA's strided convolution elsewhere; a forced form
    wins; a bad name is an error."""
    monkeypatch.setattr(vqlatent_backend, "default_backend", lambda: backend_name)
    assert MIN_PHASE_GRAD_CHANNELS > 3 and MIN_PHASE_GRAD_PIXELS > 14 * 14
    assert type(downsampling_layer("auto", 8, None, "down", "SAME", input_shape)) is expected
    assert type(downsampling_layer("phase_grad", 8, None, "down", "SAME", (1, 8, 8, 1))) is PhaseGradConv
    assert type(downsampling_layer("conv", 8, None, "down", "SAME", (4, 64, 64, 128))) is nn.Conv
    with pytest.raises(ValueError, match="model.downsample='pool'"):
        downsampling_layer("pool", 8, None, "down", "SAME", (4, 64, 64, 128))


def test_phase_gradient_and_xla_encoders_agree():
    """A whole VQ-VAE with either downsampling form: same parameters, same loss, same gradients."""
    x = jax.random.uniform(jax.random.key(0), (2, 28, 28, 1))
    xla = autoencoder.vqvae(
        VectorQuantizerEMA(num_embeddings=8, embedding_dim=8), 1, 2, 32, 1, 8, downsample="conv"
    )
    phase = autoencoder.vqvae(
        VectorQuantizerEMA(num_embeddings=8, embedding_dim=8), 1, 2, 32, 1, 8, downsample="phase_grad"
    )
    variables = xla.init(jax.random.key(1), x, train=False)

    def loss(model, params):
        out = model.apply({**variables, "params": params}, x, train=False)
        return jnp.mean((out["reconstruction"] - x) ** 2) + out["vq"]["top"]["loss"]

    got = jax.value_and_grad(loss, argnums=1)(phase, variables["params"])
    want = jax.value_and_grad(loss, argnums=1)(xla, variables["params"])
    assert got[0] == want[0]
    chex.assert_trees_all_close(got[1], want[1], rtol=1e-4, atol=1e-6)


def test_image_size_not_divisible_is_a_clear_error():
    with pytest.raises(ValueError, match=r"30x30 cannot be downsampled evenly by 4 .*num_downsamples=2"):
        check_image_shape((30, 30, 3), 2)
    model = _vqvae(3, 16, 8)
    with pytest.raises(ValueError, match="28x28 cannot be downsampled evenly by 8"):
        model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)), train=False)
