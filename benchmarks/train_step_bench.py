r"""Train-step speed of a model config, ours against our PyTorch reference, side by side.

  python benchmarks/train_step_bench.py --config=configs/vqvae.py:mnist [--batch_size=128] \
      [--image_size=64] [--steps=10] [--rounds=5] [--no_torch] [--config.model.upsample=conv_transpose]

For each round, times `--steps` jitted JAX train steps, then as many PyTorch
steps, alternating so both see the same machine load; prints the median step
time, images/s, the ratio ours/PyTorch in images/s (> 1: we are faster), the
compile time and XLA's memory estimate for the step. Needs no dataset: the
batch is random, with the image shape of the config's dataset (or --image_size).
"""

from __future__ import annotations

import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags  # pylint: disable=g-import-not-at-top,g-multiple-import
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np

from vqlatent.data.pipeline import DatasetSpec
from vqlatent.trainers.base import make_task

_CONFIG = config_flags.DEFINE_config_file("config", None, "Model config.", lock_config=True)
_BATCH = flags.DEFINE_integer("batch_size", None, "Override the config's batch size.")
_IMAGE = flags.DEFINE_string("image_shape", None, "H,W,C of the random images (default: the config's dataset).")
_STEPS = flags.DEFINE_integer("steps", 10, "Steps per timed round.")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Alternating rounds.")
_TORCH = flags.DEFINE_bool("torch", True, "Also time the PyTorch reference.")
_NAMED_SHAPES = {"sklearn_digits": (8, 8, 1), "mnist_idx": (28, 28, 1), "mnist": (28, 28, 1),
                 "cifar10": (32, 32, 3)}


def _image_shape(config) -> tuple[int, int, int]:
  if _IMAGE.value:
    return tuple(int(v) for v in _IMAGE.value.split(","))
  if config.data.get("image_size"):
    size = config.data.image_size
    return (size, size, 3)
  return _NAMED_SHAPES[config.data.name]


def _task(config, image_shape):
  """The model's Task without touching any dataset.

  The data variance only scales the reconstruction loss, so it is not estimated
  (which would read the dataset) for timing.
  """
  spec = DatasetSpec(image_shape=image_shape, num_classes=10, num_train=1, num_eval=1)
  if "loss" in config and "normalize_by_data_variance" in config.loss:
    config.loss.normalize_by_data_variance = False
  return make_task(config, spec)


def main(argv):
  del argv
  config = _CONFIG.value
  batch_size = _BATCH.value or config.batch_size
  image_shape = _image_shape(config)
  task = _task(config, image_shape)
  rng = np.random.default_rng(0)
  images = rng.uniform(size=(batch_size, *image_shape)).astype(np.float32)
  batch = {"image": jnp.asarray(images), "label": jnp.asarray(rng.integers(0, 10, batch_size), jnp.int32)}

  state = jax.jit(task.init_state)(jax.random.PRNGKey(0), task.dummy_batch())
  start = time.perf_counter()
  compiled = jax.jit(task.train_step, donate_argnums=(0,)).lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  memory = compiled.memory_analysis()
  mem_mb = ((memory.temp_size_in_bytes + memory.argument_size_in_bytes + memory.output_size_in_bytes)
            / 2**20) if memory is not None else float("nan")
  num_params = sum(x.size for x in jax.tree.leaves(state.params))

  torch_step = None
  if _TORCH.value:
    import torch  # pylint: disable=g-import-not-at-top
    sys.path.insert(0, os.path.dirname(__file__))
    import torch_reference  # pylint: disable=g-import-not-at-top
    torch.manual_seed(0)
    torch_step = torch_reference.build(config.model_name, config, image_shape)
    torch_images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    torch_step.step(torch_images)  # Warm-up.

  state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  ours, theirs = [], []
  for _ in range(_ROUNDS.value):
    start = time.perf_counter()
    for _ in range(_STEPS.value):
      state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    ours.append((time.perf_counter() - start) / _STEPS.value)
    if torch_step is not None:
      start = time.perf_counter()
      for _ in range(_STEPS.value):
        torch_step.step(torch_images)
      theirs.append((time.perf_counter() - start) / _STEPS.value)

  ours_s = statistics.median(ours)
  print(f"model={config.model_name} image={image_shape} batch={batch_size} params={num_params} "
        f"devices={jax.device_count()} ({jax.devices()[0].platform})")
  print(f"jax:   {ours_s * 1e3:8.1f} ms/step  {batch_size / ours_s:9.1f} img/s  compile {compile_s:.1f} s  "
        f"XLA memory {mem_mb:.0f} MiB  (rounds: {', '.join(f'{t * 1e3:.0f}' for t in ours)} ms)")
  if torch_step is not None:
    theirs_s = statistics.median(theirs)
    print(f"torch: {theirs_s * 1e3:8.1f} ms/step  {batch_size / theirs_s:9.1f} img/s  "
          f"params {torch_step.num_params()}  (rounds: {', '.join(f'{t * 1e3:.0f}' for t in theirs)} ms)")
    print(f"ratio ours/torch images/s: {theirs_s / ours_s:.2f}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
