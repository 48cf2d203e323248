"""The PyTorch references of benchmarks/reference/torch_models.py compute our functions.

The train-step benchmark compares our speed with these ports; the comparison is
only honest if they are the same networks. Each test builds our Flax model from
a real config, copies its initial variables into the torch port and checks
that both give the same outputs (and that the port has exactly our parameter
count). torch is not a test dependency (CI installs `.[test]`): without it the
whole file is skipped.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from helpers import load_config

from vqlatent.codes.dataset import CodesDatasetSpec
from vqlatent.codes.layout import LevelSpec
from vqlatent.data.sources import DatasetSpec
from vqlatent.trainers.base import make_task

torch = pytest.importorskip("torch")
from benchmarks.reference import torch_models  # noqa: E402  (after the torch skip above)

MNIST_LEVELS = {"bottom": LevelSpec((14, 14), 512), "top": LevelSpec((7, 7), 512)}


def _random_variables(task, batch, seed: int = 0):
    """(params, model state) with our init's structure and random values, biases included.

    Drawn with numpy instead of running our jitted init (seconds of XLA compile
    for a PixelCNN), and with non-zero biases, so that every leaf's copy is checked.
    """
    shapes = jax.eval_shape(task.init_state, jax.random.PRNGKey(0), batch)
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        if not np.issubdtype(leaf.dtype, np.floating):
            return np.zeros(leaf.shape, leaf.dtype)
        name = jax.tree_util.keystr(path)
        fan_in = int(np.prod(leaf.shape[:-1])) if "kernel" in name else 1
        return (rng.normal(size=leaf.shape) / np.sqrt(max(fan_in, 1))).astype(leaf.dtype)

    return (
        jax.tree_util.tree_map_with_path(draw, shapes.params),
        jax.tree_util.tree_map_with_path(draw, shapes.model_state),
    )


def _num_params(params) -> int:
    return sum(int(np.size(x)) for x in jax.tree.leaves(params))


def _prior_task(level: str):
    config = load_config("pixelcnn", f"mnist,level={level}")
    spec = CodesDatasetSpec(
        image_shape=(7, 7, 1), num_classes=10, num_train=1, num_eval=1, levels=MNIST_LEVELS, codes_dir=""
    )
    return config, make_task(config, spec)


def _prior_loss_and_logits(task, params, batch):
    return task.loss_fn(params, {}, batch, None)[0], task.model.apply(
        {"params": params}, *task.model_inputs(batch)
    )


@pytest.mark.parametrize("level", ["top", "bottom"])
def test_pixelcnn_port_matches_flax(level):
    """configs/pixelcnn.py:mnist (top: attention + classes; bottom: conditioned on top codes)."""
    config, task = _prior_task(level)
    rng = np.random.default_rng(1)
    batch = {
        "codes_bottom": rng.integers(0, 512, (2, 14, 14)).astype(np.int32),
        "codes_top": rng.integers(0, 512, (2, 7, 7)).astype(np.int32),
        "label": np.array([3, 8], np.int32),
    }
    params, _ = _random_variables(task, batch)
    ours_loss, ours = jax.jit(_prior_loss_and_logits, static_argnums=0)(task, params, batch)
    ours = np.asarray(ours)

    reference = torch_models.build("pixelcnn", config, MNIST_LEVELS)
    assert reference.num_params() == _num_params(params)
    torch_models.load_flax_variables("pixelcnn", reference.module, params)
    tb = torch_models.torch_batch(batch)
    with torch.no_grad():
        theirs = reference.module(
            tb[f"codes_{level}"], tb["label"], tb["codes_top"] if level == "bottom" else None
        )
    np.testing.assert_allclose(theirs.permute(0, 2, 3, 1).numpy(), ours, atol=1e-4, rtol=1e-4)
    # The same loss: mean cross-entropy in nats.
    theirs_loss = float(torch.nn.functional.cross_entropy(theirs, tb[f"codes_{level}"]))
    assert theirs_loss == pytest.approx(float(ours_loss), rel=1e-5)


@pytest.mark.parametrize("name,arg", [("vqvae", "mnist"), ("vqvae2", "mnist")])
def test_autoencoder_port_matches_flax(name, arg):
    """The MNIST VQ-VAE and 2-level VQ-VAE-2: same reconstructions from the same variables."""
    config = load_config(name, arg)
    config.loss.normalize_by_data_variance = False
    spec = DatasetSpec(image_shape=(28, 28, 1), num_classes=10, num_train=1, num_eval=1)
    task = make_task(config, spec)
    images = np.random.default_rng(2).uniform(size=(2, 28, 28, 1)).astype(np.float32)
    params, model_state = _random_variables(task, {"image": images, "label": np.zeros(2, np.int32)})
    outputs = jax.jit(lambda v, x: task.model.apply(v, x, train=False))(
        {"params": params, **model_state}, images
    )

    reference = torch_models.build(name, config, spec.image_shape)
    assert reference.num_params() == _num_params(params)
    torch_models.load_flax_variables(name, reference.module, params, model_state)
    reference.module.eval()  # No EMA update: our train=False.
    with torch.no_grad():
        recon, _ = reference.module(torch_models.torch_batch({"image": images})["image"])
    np.testing.assert_allclose(
        recon.permute(0, 2, 3, 1).numpy(), np.asarray(outputs["reconstruction"]), atol=1e-4, rtol=1e-4
    )


def test_load_rejects_a_model_it_does_not_fill():
    """A torch parameter without a Flax value is an error, not a silently random layer."""
    config, task = _prior_task("top")
    params, _ = _random_variables(task, task.dummy_batch(2))
    del params["head_logits"]
    reference = torch_models.build("pixelcnn", config, MNIST_LEVELS)
    with pytest.raises(ValueError, match="head_logits"):
        torch_models.load_flax_variables("pixelcnn", reference.module, params)
