"""Batches cross to the device as uint8 and become float32 there: the same steps as float32 input, bit for bit."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from helpers import load_config, tiny_vqvae_config

from vqlatent import data
from vqlatent.data.device import to_model_input
from vqlatent.parallel import mesh as mesh_lib
from vqlatent.trainers import loop


def _host_float(batch):
    """The conversion the host did before batches became uint8: x * float32(1/255)."""
    return {**batch, "image": batch["image"].astype(np.float32) * np.float32(1.0 / 255.0)}


def _assert_bitwise_equal(a, b):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()


def _tiny_config(model, data_dir):
    if model == "vqvae":
        return tiny_vqvae_config(data_dir)
    config = load_config("vqvae2")  # Digits: bottom 4x4, top 2x2 codes.
    config.data.data_dir, config.data.num_workers = str(data_dir), 1
    config.model.update(dict(num_hiddens=16, num_residual_hiddens=8, num_residual_layers=1))
    for level in config.quantizer.values():
        level.num_embeddings, level.embedding_dim = 16, 8
    config.batch_size, config.eval_batch_size = 16, 64
    return config


def test_conversion_on_the_device_equals_the_host_conversion():
    images = np.arange(256, dtype=np.uint8).reshape(4, 8, 8, 1)
    on_device = jax.jit(to_model_input)({"image": images, "label": np.zeros(4, np.int32)})
    _assert_bitwise_equal(on_device["image"], _host_float({"image": images})["image"])
    assert on_device["image"].dtype == np.float32 and float(on_device["image"].max()) == 1.0


@pytest.mark.parametrize("model", ["vqvae", "vqvae2"])
def test_uint8_input_gives_the_float32_train_and_eval_steps_bit_for_bit(tmp_path, model):
    config = _tiny_config(model, tmp_path / "tfds")
    runner = loop.Runner(config, str(tmp_path / "wd"))
    step = runner.train_step_fn()
    it = data.make_train_iterator(config.data, global_batch_size=config.batch_size, seed=0)
    batches = [next(it) for _ in range(2)]
    assert all(b["image"].dtype == np.uint8 for b in batches)
    eval_batch = next(iter(data.make_eval_batches(config.data, global_batch_size=config.eval_batch_size)))
    assert eval_batch["image"].dtype == np.uint8
    eval_step = jax.jit(lambda state, batch: runner.task.eval_step(state, to_model_input(batch)))

    def run(train_batches, batch_for_eval):
        state = runner.initial_state()
        for batch in train_batches:
            state, metrics = step(state, mesh_lib.shard_batch(batch, runner.mesh))
        return jax.device_get((state, metrics, eval_step(state, batch_for_eval)))

    uint8_run = run(batches, eval_batch)
    float_run = run([_host_float(b) for b in batches], _host_float(eval_batch))
    _assert_bitwise_equal(uint8_run, float_run)
    assert int(uint8_run[0].step) == 2
