"""The PyTorch port of our InfoGAN (benchmarks/reference/torch_infogan.py) computes our functions.

The speed table compares our InfoGAN train step with this port; the comparison is only honest if
they are the same networks, losses and transformation. Our Flax variables (random values, biases
and BatchNorm statistics included) are copied into the port, and both must give the same images,
logits, Q outputs and losses. torch is not a test dependency: without it the file is skipped.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import load_config

from vqlatent import infogan as ig
from vqlatent.data.sources import DatasetSpec
from vqlatent.infogan import invariance
from vqlatent.trainers.base import make_task

torch = pytest.importorskip("torch")
from benchmarks.reference import torch_infogan  # noqa: E402  (after the torch skip above)

SPEC = DatasetSpec(image_shape=(28, 28, 1), num_classes=10, num_train=1, num_eval=1)


def _task_and_variables(arg: str, seed: int = 0, spec: DatasetSpec = SPEC):
    config = load_config("infogan", arg)
    task = make_task(config, spec)
    shapes = jax.eval_shape(task.init_state, jax.random.PRNGKey(0), task.dummy_batch(2))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        if "var" in name:  # BatchNorm running variances must be positive.
            return rng.uniform(0.5, 2.0, leaf.shape).astype(leaf.dtype)
        fan_in = int(np.prod(leaf.shape[:-1])) if "kernel" in name else 1
        return (rng.normal(size=leaf.shape) / np.sqrt(max(fan_in, 1))).astype(leaf.dtype)

    params = jax.tree_util.tree_map_with_path(draw, shapes.params)
    model_state = jax.tree_util.tree_map_with_path(draw, shapes.model_state)
    return config, task, params, model_state


def _port(config, params, model_state):
    port = torch_infogan.build(config, SPEC.image_shape)
    assert port.num_params() == sum(int(np.size(x)) for x in jax.tree.leaves(params))
    torch_infogan.load_flax_variables(port.module, params, model_state)
    return port


def _nchw(x):
    return torch.from_numpy(np.asarray(x, np.float32)).permute(0, 3, 1, 2).contiguous()


@pytest.mark.parametrize("arg", ["mnist", "digits"])
@pytest.mark.parametrize("train", [False, True])
def test_networks_match_flax(arg, train):
    """G's images and D's logits and Q outputs, with running statistics (eval) and batch ones (train)."""
    # digits: 8x8 images and Q's learned std, another layout of the same modules.
    image_shape = (8, 8, 1) if arg == "digits" else (28, 28, 1)
    spec = DatasetSpec(image_shape=image_shape, num_classes=10, num_train=1, num_eval=1)
    config, task, params, model_state = _task_and_variables(arg, spec=spec)
    latents = ig.sample_latents(jax.random.PRNGKey(1), task.latent_spec, 16)
    inputs = ig.generator_input(task.latent_spec, latents)
    images = np.random.default_rng(2).uniform(size=(16, *image_shape)).astype(np.float32)

    @jax.jit
    def ours(params, model_state):
        def apply(net, module, x):
            variables = {"params": params[net], **model_state[net]}
            if train:
                return module.apply(variables, x, train=True, mutable=["batch_stats"])[0]
            return module.apply(variables, x, train=False)

        return apply("generator", task.generator, inputs), apply("discriminator", task.discriminator, images)

    fake, d_out = jax.device_get(ours(params, model_state))
    port = torch_infogan.build(config, image_shape)
    assert port.num_params() == sum(int(np.size(x)) for x in jax.tree.leaves(params))
    torch_infogan.load_flax_variables(port.module, params, model_state)
    port.module.train(train)
    with torch.no_grad():
        their_fake = port.generator(torch.from_numpy(np.array(inputs)))
        their_logits, their_q = port.discriminator(_nchw(images))
    np.testing.assert_allclose(their_fake.permute(0, 2, 3, 1).numpy(), fake, atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(their_logits.numpy(), d_out["d_logits"], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(their_q.numpy(), d_out["q_outputs"], atol=1e-4, rtol=1e-4)


def test_losses_match_flax():
    """The D/Q loss and the G loss (train-mode BatchNorm, as in the step) from the same latents."""
    config, task, params, model_state = _task_and_variables("mnist")
    latents = ig.sample_latents(jax.random.PRNGKey(1), task.latent_spec, 32)
    real = np.random.default_rng(3).uniform(size=(32, 28, 28, 1)).astype(np.float32)
    fake = np.random.default_rng(4).uniform(size=(32, 28, 28, 1)).astype(np.float32)
    d_variables = {"params": params["discriminator"], **model_state["discriminator"]}

    @jax.jit
    def ours(params, model_state):
        d_loss = task.discriminator_loss(
            params["discriminator"], model_state["discriminator"], real, fake, latents
        )[0]
        g_loss = task.generator_loss(params["generator"], model_state["generator"], d_variables, latents)[0]
        return d_loss, g_loss

    d_loss, g_loss = jax.device_get(ours(params, model_state))
    port = _port(config, params, model_state)
    port.module.train()
    torch_latents = {
        "noise": torch.from_numpy(np.array(latents.noise)),
        "categorical": torch.from_numpy(np.asarray(latents.categorical).astype(np.int64)),
        "continuous": torch.from_numpy(np.array(latents.continuous)),
    }
    with torch.no_grad():
        their_d = port.discriminator_loss(_nchw(real), _nchw(fake), torch_latents)
        their_g = port.generator_loss(torch_latents)
    assert float(their_d) == pytest.approx(float(d_loss), rel=1e-5)
    assert float(their_g) == pytest.approx(float(g_loss), rel=1e-5)


def test_transformation_matches_ours():
    images = np.random.default_rng(5).uniform(size=(6, 28, 28, 1)).astype(np.float32)
    angle = np.radians(np.array([0.0, 15.0, -15.0, 90.0, 7.0, -3.0], np.float32))
    scale = np.array([1.0, 0.9, 1.1, 1.0, 1.05, 0.95], np.float32)
    shift = np.array([[0, 0], [2, -1], [-2, 1.5], [0, 0], [0.5, 0.25], [-1, -2]], np.float32)
    shear = np.array([0.0, 0.3, -0.3, 0.1, 0.0, -0.2], np.float32)
    ours = jax.jit(invariance.affine_transform)(images, angle, scale, shift, shear)
    theirs = torch_infogan.affine_transform(
        _nchw(images),
        torch.from_numpy(angle),
        torch.from_numpy(scale),
        torch.from_numpy(shift),
        torch.from_numpy(shear),
    )
    np.testing.assert_allclose(theirs.permute(0, 2, 3, 1).numpy(), np.asarray(ours), atol=1e-4)
    assert math.isclose(float(jnp.max(jnp.abs(ours[0] - images[0]))), 0.0)
    amount = np.array([1.0, -1.0, 0.5, -0.3, 0.0, 0.8], np.float32)
    ours = invariance.change_thickness(images, amount)
    theirs = torch_infogan.change_thickness(_nchw(images), torch.from_numpy(amount))
    np.testing.assert_allclose(theirs.permute(0, 2, 3, 1).numpy(), np.asarray(ours), atol=1e-6)


@pytest.mark.parametrize("arg", ["mnist", "mnist_invariant"])
def test_one_full_update_runs_and_changes_both_nets(arg):
    config = load_config("infogan", arg)
    config.batch_size = 16
    port, batch = torch_infogan.torch_infogan_step(config)
    assert batch["image"].shape == (16, 1, 28, 28)
    before = {k: v.clone() for k, v in port.module.state_dict().items()}
    loss = port.step(batch)
    assert math.isfinite(float(loss))
    after = port.module.state_dict()
    for name in (
        "generator.layers.fc0.weight",
        "discriminator.layers.conv0.weight",
        "discriminator.layers.q_out.bias",
    ):
        assert not torch.equal(before[name], after[name]), name
    with pytest.raises(ValueError, match="model_name='infogan'"):
        torch_infogan.build(load_config("vqvae", "mnist"))
