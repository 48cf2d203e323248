"""The training loop, written once for every model family.

`train_and_evaluate(config, workdir)`:
  * builds the mesh (a `data` axis over all devices of all processes), the task
    and the data iterator (each process reads its own shard);
  * resumes automatically and exactly from the newest checkpoint in the workdir
    (params, optimizer, model state such as EMA codebooks, step, RNG, and the
    data-iterator position), refusing a workdir made by another model;
  * runs the task's `train_step` under one `jax.jit` with the batch sharded over
    `data`, the state replicated and donated;
  * fetches metrics only every `log_every_steps` (no host sync in between),
    writes them to TensorBoard, and shows a progress bar with steps/s and ETA;
  * evaluates every `eval_every_steps` (metrics JSON + PNG grids) and checkpoints
    every `checkpoint_every_steps` (keeping `keep_checkpoints`);
  * on SIGTERM finishes the current step, saves, and returns; a non-finite loss
    stops the run before anything non-finite is saved.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from vqlatent import data as data_lib
from vqlatent.evaluation import images as image_lib
from vqlatent.parallel import mesh as mesh_lib
from vqlatent.trainers.base import GRID_COLUMNS, Task, TrainState, make_task
from vqlatent.utils import checkpoint as ckpt_lib
from vqlatent.utils.writer import MetricWriter


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or inf; nothing after the last good checkpoint was saved."""


class _SigtermFlag:
  """Turns SIGTERM into a flag the loop checks between steps (preemption)."""

  def __init__(self):
    self.received = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # Not the main thread (e.g. inside some test runners).
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.received = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


class Runner:
  """The pieces shared by training, evaluation and the tasks' extra modes."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self.config = config
    self.workdir = workdir
    self.spec = data_lib.get_spec(config.data)
    self.task: Task = make_task(config, self.spec)
    self.mesh = mesh_lib.make_mesh(config.mesh.data)
    mesh_lib.check_batch_size(config.batch_size, self.mesh, "batch_size")
    mesh_lib.check_batch_size(config.eval_batch_size, self.mesh, "eval_batch_size")
    self.replicated = mesh_lib.replicated(self.mesh)
    self.data_sharded = mesh_lib.data_sharded(self.mesh)
    self._init = jax.jit(self.task.init_state, out_shardings=self.replicated)
    self._eval_step = jax.jit(self.task.eval_step, in_shardings=(self.replicated, self.data_sharded),
                              out_shardings=self.replicated)
    self._eval_images = jax.jit(self.task.eval_images, in_shardings=(self.replicated, self.data_sharded),
                                out_shardings=self.replicated)

  # -- state -------------------------------------------------------------------
  def initial_state(self) -> TrainState:
    rng = jax.random.PRNGKey(self.config.seed)
    return self._init(rng, self.task.dummy_batch())

  def abstract_state(self) -> TrainState:
    shapes = jax.eval_shape(self._init, jax.random.PRNGKey(0), self.task.dummy_batch())
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=self.replicated), shapes)

  def restore(self, checkpointer: ckpt_lib.Checkpointer, step: int | None = None,
              with_data: bool = True) -> tuple[TrainState, dict | None]:
    step = checkpointer.latest_step() if step is None else step
    return checkpointer.restore(step, self.abstract_state(), with_data=with_data)

  def restore_for_eval(self) -> tuple[TrainState, int]:
    """The newest checkpoint in the workdir, or a clear error if there is none."""
    ckpt_lib.check_workdir_config(self.workdir, self.config, write=False)
    checkpointer = ckpt_lib.Checkpointer(self.workdir)
    step = checkpointer.latest_step()
    if step is None:
      raise FileNotFoundError(
          f"No checkpoint in {checkpointer.directory}: train first "
          f"(python -m vqlatent.main --config=... --workdir={self.workdir} --mode=train).")
    state, _ = self.restore(checkpointer, step, with_data=False)
    checkpointer.close()
    return state, step

  # -- evaluation ----------------------------------------------------------------
  def evaluate(self, state: TrainState, step: int, writer: MetricWriter) -> dict[str, Any]:
    """Runs the task's eval over the eval split; writes JSON, TensorBoard and PNGs."""
    start = time.time()
    totals, first = None, None
    batches = data_lib.make_eval_batches(
        self.config.data, global_batch_size=self.config.eval_batch_size,
        num_examples=self.config.eval_num_examples,
        process_index=jax.process_index(), process_count=jax.process_count())
    for local_batch in batches:
      batch = mesh_lib.shard_batch(local_batch, self.mesh)
      sums = self._eval_step(state, batch)
      totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
      if first is None:
        first = batch
    if totals is None:
      raise ValueError(f"The eval split {self.config.data.eval_split!r} of {self.config.data.name!r} is empty.")
    metrics = self.task.eval_summary(jax.device_get(totals))
    metrics["eval_seconds"] = time.time() - start
    writer.scalars(step, {k: v for k, v in metrics.items() if np.isscalar(v)}, prefix="eval/")
    path = writer.eval_json(step, metrics)
    grids = jax.device_get(self._eval_images(state, first))
    if jax.process_index() == 0:
      for name, stack in grids.items():
        stack = np.asarray(stack)
        grid = image_lib.make_grid(stack, num_cols=min(GRID_COLUMNS, len(stack)),
                                   upscale=image_lib.auto_upscale(stack.shape[1]))
        image_lib.save_png(os.path.join(self.workdir, "images", f"{name}_{step:08d}.png"), grid)
        image_lib.save_png(os.path.join(self.workdir, "images", f"{name}.png"), grid)
        writer.image(step, name, grid)
    logging.info("eval at step %d: %s (written to %s)", step,
                 {k: v for k, v in metrics.items() if np.isscalar(v)}, path)
    return metrics


def _mean_metrics(pending: list[dict[str, jax.Array]]) -> dict[str, float]:
  fetched = jax.device_get(pending)
  return {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains (resuming if the workdir has a checkpoint), evaluating and checkpointing on the way."""
  runner = Runner(config, workdir)
  ckpt_lib.check_workdir_config(workdir, config)
  checkpointer = ckpt_lib.Checkpointer(workdir, max_to_keep=config.keep_checkpoints)
  writer = MetricWriter(workdir)
  train_iter = data_lib.make_train_iterator(
      config.data, global_batch_size=config.batch_size, seed=config.seed,
      process_index=jax.process_index(), process_count=jax.process_count())

  start_step = checkpointer.latest_step()
  if start_step is None:
    state = runner.initial_state()
    start_step = 0
  else:
    state, data_state = runner.restore(checkpointer, start_step)
    if data_state is not None:
      train_iter.set_state(data_state)
    logging.info("Resumed from step %d in %s", start_step, checkpointer.directory)
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  logging.info("%s: %d parameters, %d devices, global batch %d", config.model_name, num_params,
               runner.mesh.devices.size, config.batch_size)

  train_step = jax.jit(runner.task.train_step, in_shardings=(runner.replicated, runner.data_sharded),
                       out_shardings=(runner.replicated, runner.replicated), donate_argnums=(0,))

  def save(step: int) -> None:
    checkpointer.save(step, state, train_iter.get_state(), force=True)

  pending: list[dict[str, jax.Array]] = []
  last_good_step = start_step if start_step > 0 else None

  def flush_metrics(step: int) -> None:
    """Fetches the metrics of the steps since the last flush (the only host sync)."""
    nonlocal pending
    if not pending:
      return
    means = _mean_metrics(pending)
    pending = []
    bad = [k for k, v in means.items() if not np.isfinite(v)]
    if bad:
      checkpointer.wait()
      raise NonFiniteLossError(
          f"Non-finite {', '.join(bad)} ({', '.join(f'{k}={means[k]}' for k in bad)}) in the steps "
          f"up to step {step}; training stopped without saving. The last good checkpoint is "
          f"step {last_good_step} in {checkpointer.directory}.")
    writer.scalars(step, means, prefix="train/")
    progress.set_postfix({k: f"{means[k]:.4g}" for k in list(means)[:3]}, refresh=False)

  step = start_step
  progress = tqdm.tqdm(total=config.num_train_steps, initial=start_step, desc="train",
                       unit="step", dynamic_ncols=True, mininterval=2.0,
                       disable=jax.process_index() != 0 or not config.progress_bar)
  with _SigtermFlag() as sigterm:
    while step < config.num_train_steps:
      batch = mesh_lib.shard_batch(next(train_iter), runner.mesh)
      state, metrics = train_step(state, batch)
      step += 1
      pending.append(metrics)
      progress.update(1)
      is_last = step == config.num_train_steps
      if step % config.log_every_steps == 0 or is_last:
        flush_metrics(step)
      if step % config.checkpoint_every_steps == 0 or is_last or sigterm.received:
        flush_metrics(step)  # Never save parameters produced by a non-finite step.
        save(step)
        last_good_step = step
      if config.eval_every_steps and (step % config.eval_every_steps == 0 or is_last):
        runner.evaluate(state, step, writer)
      if sigterm.received:
        logging.warning("SIGTERM: saved step %d to %s; exiting.", step, checkpointer.directory)
        break
  progress.close()
  checkpointer.close()
  writer.close()
  return state


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """`--mode=eval`: evaluates the newest checkpoint of the workdir."""
  runner = Runner(config, workdir)
  state, step = runner.restore_for_eval()
  writer = MetricWriter(workdir)
  metrics = runner.evaluate(state, step, writer)
  writer.close()
  return metrics
