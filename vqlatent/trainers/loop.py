"""The training loop, written once for every model family.

`train_and_evaluate(config, workdir)`:
  * builds the mesh from `config.mesh` (a `data` axis over all devices of all
    processes, optionally an `fsdp` axis that shards the train state, see
    `parallel/mesh.py`), the task and the data iterator (each process reads
    only its own shard of the data);
  * holds the workdir (a lock naming host and PID; a second run on it is refused,
    the stale lock of a dead run taken over);
  * resumes automatically and exactly from the newest checkpoint in the workdir
    (params, optimizer, model state such as EMA codebooks, step, RNG, and the
    data-iterator position), refusing a workdir made by another model, and a
    resume with another global batch size or process count (the data position
    would mean other examples);
  * runs the one update (`base.update`: the gradient of the task's `loss_fn`, its
    optimizer, its new model state; or the task's own `train_step`) under one
    `jax.jit` with the batch sharded over the whole mesh, the state replicated
    (or fsdp-sharded) and donated;
  * fetches metrics only every `log_every_steps` (no host sync in between),
    writes them to TensorBoard with the throughput of those steps
    (`steps_per_second`) and the fraction of their wall time spent waiting for
    the input pipeline (`data_wait_fraction`: ~0 when prefetching keeps up),
    and shows a progress bar with steps/s and ETA;
  * evaluates every `eval_every_steps` (metrics JSON + PNG grids) and checkpoints
    every `checkpoint_every_steps` (keeping `keep_checkpoints`);
  * on preemption (SIGTERM to any process) finishes the current step, saves it
    on every process, waits for the checkpoint to be committed and returns; an
    evaluation skipped that way runs when the run resumes;
  * stops with `NonFiniteLossError` at a non-finite loss, and checks the state
    for non-finite values before every save: a checkpoint never holds NaN.

With several processes (`jax.distributed`) every process runs this same loop
over the same steps; only process 0 writes logs, JSON and images, and orbax
writes each checkpoint collectively (the workdir must be on a filesystem that
every host sees).
"""

from __future__ import annotations

import contextlib
import math
import os
import shlex
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm
from absl import logging
from jax.experimental import multihost_utils

from vqlatent import config_checks
from vqlatent import data as data_lib
from vqlatent.codes import dataset as codes_dataset
from vqlatent.data.device import to_model_input
from vqlatent.evaluation import images as image_lib
from vqlatent.parallel import dispatch, distributed
from vqlatent.parallel import mesh as mesh_lib
from vqlatent.trainers.base import GRID_COLUMNS, Task, TrainState, make_task
from vqlatent.utils import checkpoint as ckpt_lib
from vqlatent.utils import run_lock
from vqlatent.utils.errors import UserError
from vqlatent.utils.version import code_version
from vqlatent.utils.writer import MetricWriter


class NonFiniteLossError(FloatingPointError):
    """The loss or the train state became NaN or inf; nothing non-finite was saved."""


class NonFiniteEvalError(NonFiniteLossError):
    """An evaluation gave NaN (or inf) metrics; nothing was written over the earlier results."""


class TrainingInterrupted(UserError):
    """Ctrl-C (SIGINT): the current step was finished and saved, then the run stopped."""


def non_finite_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The scalar metrics that are NaN or infinite; a PSNR of +inf (a perfect reconstruction,
    mse = 0) is a value, not a failure."""
    bad = {}
    for name, value in metrics.items():
        if not np.isscalar(value) or isinstance(value, (str, bytes)):
            continue
        value = float(value)
        if math.isnan(value) or (math.isinf(value) and not ("psnr" in name and value > 0)):
            bad[name] = value
    return bad


def tree_all_finite(tree: Any) -> jax.Array:
    """True iff every floating-point leaf of `tree` is finite (one reduction per leaf)."""
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    if not leaves:
        return jnp.array(True)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


class Runner:
    """The pieces shared by training, evaluation and the tasks' extra modes.

    What a task's extra modes may use: `mesh`, `replicated` (the NamedSharding
    of replicated values), `data_sharded` (of batches), `state_sharding` (of the
    TrainState: replicated unless `config.mesh.fsdp > 1`; jit anything that takes
    the state with it), `initial_state()`, `restore_for_eval()`, `evaluate()`.
    """

    def __init__(self, config: ml_collections.ConfigDict, workdir: str):
        config_checks.check_config(config)
        self.config = config
        self.workdir = workdir
        self.spec = data_lib.get_spec(config.data)
        self.task: Task = make_task(config, self.spec)
        self.mesh = mesh_lib.mesh_from_config(config.mesh)
        mesh_lib.check_batch_size(config.batch_size, self.mesh, "batch_size")
        mesh_lib.check_batch_size(config.eval_batch_size, self.mesh, "eval_batch_size")
        self.replicated = mesh_lib.replicated(self.mesh)
        self.data_sharded = mesh_lib.data_sharded(self.mesh)
        self._state_shapes = jax.eval_shape(
            self.task.init_state, jax.random.PRNGKey(0), self.task.dummy_batch()
        )
        self.state_sharding = mesh_lib.state_sharding(self._state_shapes, self.mesh)
        self._init = jax.jit(self.task.init_state, out_shardings=self.state_sharding)
        self._eval_step = jax.jit(
            lambda state, batch: self.task.eval_step(state, to_model_input(batch)),
            in_shardings=(self.state_sharding, self.data_sharded),
            out_shardings=self.replicated,
        )
        self._eval_images = jax.jit(
            lambda state, batch: self.task.eval_images(state, to_model_input(batch)),
            in_shardings=(self.state_sharding, self.data_sharded),
            out_shardings=self.replicated,
        )
        self.all_finite = jax.jit(tree_all_finite, out_shardings=self.replicated)

    # -- state -------------------------------------------------------------------
    def initial_state(self) -> TrainState:
        rng = jax.random.PRNGKey(self.config.seed)
        return self._init(rng, self.task.dummy_batch())

    def abstract_state(self) -> TrainState:
        return jax.tree.map(
            lambda s, sharding: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
            self._state_shapes,
            self.state_sharding,
        )

    def train_step_fn(self) -> Callable[[TrainState, Any], tuple[TrainState, dict[str, jax.Array]]]:
        """The task's train step under jit: state kept in its sharding and donated."""
        return jax.jit(
            lambda state, batch: self.task.train_step(state, to_model_input(batch)),
            in_shardings=(self.state_sharding, self.data_sharded),
            out_shardings=(self.state_sharding, self.replicated),
            donate_argnums=(0,),
        )

    def fresh_opt_state(self) -> Any:
        """A freshly initialised optimizer state (for a checkpoint saved under another optimizer)."""
        return self.initial_state().opt_state

    def restore(
        self, checkpointer: ckpt_lib.Checkpointer, step: int | None = None, with_data: bool = True
    ) -> tuple[TrainState, dict | None]:
        """Checkpoint `step`, or the newest one that verifies (see `Checkpointer.restore_latest`)."""
        if step is None:
            restored = checkpointer.restore_latest(self.abstract_state(), with_data, self.fresh_opt_state)
            if restored is None:
                raise FileNotFoundError(f"No checkpoint in {checkpointer.directory}.")
            return restored[:2]
        return checkpointer.restore(step, self.abstract_state(), with_data, self.fresh_opt_state)

    def restore_for_eval(self) -> tuple[TrainState, int]:
        """The newest checkpoint in the workdir that verifies, or a clear error if there is none."""
        ckpt_lib.check_workdir_config(self.workdir, self.config, write=False)
        checkpointer = ckpt_lib.Checkpointer(self.workdir)
        try:
            restored = checkpointer.restore_latest(
                self.abstract_state(), with_data=False, fresh_opt_state=self.fresh_opt_state
            )
        finally:
            checkpointer.close()
        if restored is None:
            raise FileNotFoundError(
                f"No checkpoint in {checkpointer.directory}: train first "
                f"(python -m vqlatent.main --config=... --workdir={self.workdir} --mode=train)."
            )
        state, _, step = restored
        return state, step

    # -- evaluation ----------------------------------------------------------------
    def evaluate(self, state: TrainState, step: int, writer: MetricWriter) -> dict[str, Any]:
        """Runs the task's eval over the eval split; writes JSON, TensorBoard and PNGs (process 0)."""
        start = time.time()
        totals, first = None, None
        batches = data_lib.make_eval_batches(
            self.config.data,
            global_batch_size=self.config.eval_batch_size,
            num_examples=self.config.eval_num_examples,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
        in_flight = dispatch.DispatchWindow()
        for local_batch in batches:
            batch = mesh_lib.shard_batch(local_batch, self.mesh)
            sums = self._eval_step(state, batch)
            totals = sums if totals is None else _add(totals, sums)
            in_flight.push(totals)
            if first is None:
                first = batch
        if totals is None:
            raise ValueError(
                f"The eval split {self.config.data.eval_split!r} of {self.config.data.name!r} is empty."
            )
        totals = jax.device_get(totals)
        metrics = self.task.eval_summary(totals)
        bad = non_finite_metrics(metrics)
        if bad:
            raise NonFiniteEvalError(
                f"The evaluation of step {step} gave {', '.join(f'{k}={v}' for k, v in bad.items())}: "
                f"nothing was written ({writer.eval_json_path(step)} and latest.json keep what they "
                f"had). The train state was checked finite when saved and restored, so the model "
                f"itself produces non-finite outputs on the eval split (e.g. an overflow in "
                f"dtype={self.config.dtype!r}): evaluate with dtype='float32', or retrain from an "
                f"earlier checkpoint with a lower optimizer.learning_rate."
            )
        metrics["eval_seconds"] = time.time() - start
        writer.scalars(step, {k: v for k, v in metrics.items() if np.isscalar(v)}, prefix="eval/")
        path = writer.eval_json(step, metrics)
        grids = {**jax.device_get(self._eval_images(state, first)), **self.task.summary_images(totals)}
        if jax.process_index() == 0:
            for name, stack in grids.items():
                stack = np.asarray(stack)
                grid = image_lib.make_grid(
                    stack,
                    num_cols=min(GRID_COLUMNS, len(stack)),
                    upscale=image_lib.auto_upscale(stack.shape[1]),
                )
                image_lib.save_png(os.path.join(self.workdir, "images", f"{name}_{step:08d}.png"), grid)
                image_lib.save_png(os.path.join(self.workdir, "images", f"{name}.png"), grid)
                writer.image(step, name, grid)
        logging.info(
            "eval at step %d: %s%s",
            step,
            {k: v for k, v in metrics.items() if np.isscalar(v)},
            f" (written to {path})" if path else "",
        )
        return metrics


@jax.jit
def _add(totals: Any, sums: Any) -> Any:
    """The eval sums so far plus one batch's, as one program (one dispatch per batch)."""
    return jax.tree.map(jnp.add, totals, sums)


def _on_all_processes(value: bool) -> bool:
    """Process 0's `value` on every process (for decisions that start collectives)."""
    if jax.process_count() == 1:
        return value
    return bool(multihost_utils.broadcast_one_to_all(np.int32(value)))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
    """Trains (resuming if the workdir has a checkpoint), evaluating and checkpointing on the way.

    Process 0 holds the workdir's lock (`utils/run_lock.py`) for the whole run: a second run on
    the same workdir is refused instead of overwriting this one's checkpoints.
    """
    config_checks.check_config(config, workdir)
    lock = run_lock.WorkdirLock(workdir) if jax.process_index() == 0 else contextlib.nullcontext()
    with lock:
        return _train_and_evaluate(config, workdir)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
    runner = Runner(config, workdir)
    # Every resume check passes before anything is written: config.json, event files and
    # checkpoints of a refused resume stay as they were.
    ckpt_lib.check_workdir_config(workdir, config, write=False)
    checkpointer = ckpt_lib.Checkpointer(workdir, max_to_keep=config.keep_checkpoints, repair=True)
    try:
        train_iter = data_lib.make_train_iterator(
            config.data,
            global_batch_size=config.batch_size,
            seed=config.seed,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
        restored = checkpointer.restore_latest(runner.abstract_state(), True, runner.fresh_opt_state)
        if restored is None:
            state = runner.initial_state()
            start_step = 0
        else:
            state, data_state, start_step = restored
            if data_state is not None:
                where = f"The checkpoint at step {start_step} in {checkpointer.directory}"
                train_iter.set_state(
                    ckpt_lib.check_batching(data_state, config.batch_size, jax.process_count(), where)
                )
            logging.info("Resumed from step %d in %s", start_step, checkpointer.directory)
        ckpt_lib.write_workdir_config(workdir, config)
        if jax.process_index() == 0:  # The data's shapes: the trained model then loads without its data.
            run = {
                "command": shlex.join(["python", "-m", "vqlatent.main", *sys.argv[1:]]),
                "code": code_version(),
            }
            codes_dataset.write_spec_file(workdir, runner.spec, run)
        writer = MetricWriter(workdir)
    except BaseException:
        checkpointer.close()
        raise
    if start_step >= config.num_train_steps:
        logging.info(
            "Step %d reached num_train_steps=%d: nothing to train (raise --config.num_train_steps to "
            "train further).",
            start_step,
            config.num_train_steps,
        )
    num_params = sum(x.size for x in jax.tree.leaves(state.params))
    logging.info(
        "%s: %d parameters, %d devices in %d processes (mesh %s), global batch %d",
        config.model_name,
        num_params,
        runner.mesh.devices.size,
        jax.process_count(),
        dict(runner.mesh.shape),
        config.batch_size,
    )
    train_step = runner.train_step_fn()

    def eval_due(step: int) -> bool:
        return bool(config.eval_every_steps) and (
            step % config.eval_every_steps == 0 or step == config.num_train_steps
        )

    pending: list[tuple[int, dict[str, jax.Array]]] = []
    last_good_step = start_step if start_step > 0 else None
    # Throughput of the steps since the last flush, excluding evaluations and saves.
    window = {"start": time.perf_counter(), "data_wait": 0.0}

    def last_good_message() -> str:
        if last_good_step is None:
            return f"No checkpoint had been saved yet in {checkpointer.directory}."
        return (
            f"The last good checkpoint is step {last_good_step} in {checkpointer.directory}; "
            f"rerunning the command resumes from it. To change course on the rerun, lower "
            f"--config.optimizer.learning_rate, or set --config.optimizer.grad_clip_norm=1.0 (the "
            f"optimizer state then starts afresh, with a warning)."
        )

    def flush_metrics(step: int) -> None:
        """Fetches the metrics of the steps since the last flush (the only host sync)."""
        nonlocal pending
        if not pending:
            return
        steps = [s for s, _ in pending]
        fetched = jax.device_get([m for _, m in pending])
        pending = []
        for s, values in zip(steps, fetched):
            bad = {k: float(v) for k, v in values.items() if not np.all(np.isfinite(v))}
            if bad:
                checkpointer.wait()  # Let the last good checkpoint finish committing.
                raise NonFiniteLossError(
                    f"Non-finite {', '.join(f'{k}={v}' for k, v in bad.items())} at step {s}: training "
                    f"stopped, nothing after step {last_good_step or 0} was saved. {last_good_message()}"
                )
        means = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
        elapsed = max(time.perf_counter() - window["start"], 1e-9)  # Includes this fetch's wait.
        means["steps_per_second"] = len(steps) / elapsed
        means["data_wait_fraction"] = window["data_wait"] / elapsed
        writer.scalars(step, means, prefix="train/")
        restart_window()
        progress.set_postfix({k: f"{means[k]:.4g}" for k in list(means)[:3]}, refresh=False)

    def restart_window() -> None:
        window.update(start=time.perf_counter(), data_wait=0.0)

    def save(step: int) -> None:
        """Checkpoints `state` once its losses and its values are known to be finite."""
        nonlocal last_good_step
        flush_metrics(step)
        # A step whose loss was finite can still produce non-finite parameters
        # (an inf gradient); one reduction over the state is cheap next to a save.
        if not bool(runner.all_finite(state)):
            checkpointer.wait()
            raise NonFiniteLossError(
                f"Non-finite values in the train state after step {step} (its losses were finite): "
                f"training stopped without saving it. {last_good_message()}"
            )
        data_state = ckpt_lib.with_batching(train_iter.get_state(), config.batch_size, jax.process_count())
        checkpointer.save(step, state, data_state, force=True)
        last_good_step = step
        restart_window()

    step = start_step
    progress = tqdm.tqdm(
        total=config.num_train_steps,
        initial=start_step,
        desc="train",
        unit="step",
        dynamic_ncols=True,
        mininterval=2.0,
        disable=jax.process_index() != 0 or not config.progress_bar,
    )
    try:
        with distributed.PreemptionNotice() as preemption:
            if (
                start_step > 0
                and eval_due(start_step)
                and not _on_all_processes(os.path.exists(writer.eval_json_path(start_step)))
            ):
                logging.info("Step %d has no evaluation (the run stopped before it): evaluating.", start_step)
                runner.evaluate(state, start_step, writer)
            restart_window()
            in_flight = dispatch.DispatchWindow()
            while step < config.num_train_steps:
                wait_start = time.perf_counter()
                local_batch = next(train_iter)  # Prefetched by grain's threads (data.prefetch batches).
                window["data_wait"] += time.perf_counter() - wait_start
                batch = mesh_lib.shard_batch(local_batch, runner.mesh)
                state, metrics = train_step(state, batch)
                in_flight.push(metrics)
                step += 1
                checkpointer.poll()  # A failed asynchronous save stops the run here.
                pending.append((step, metrics))
                progress.update(1)
                preempted = preemption.reached(step)  # Every process, every step: the same answer.
                is_last = step == config.num_train_steps
                if step % config.log_every_steps == 0 or is_last:
                    flush_metrics(step)
                if step % config.checkpoint_every_steps == 0 or is_last or preempted:
                    save(step)
                if preempted:
                    checkpointer.wait()  # Committed before the scheduler's grace period runs out.
                    if not preemption.interrupted:  # Ctrl-C: `TrainingInterrupted` below says it.
                        logging.warning(
                            "Preempted: saved step %d to %s; rerun the same command to resume.",
                            step,
                            checkpointer.directory,
                        )
                    break
                if eval_due(step):
                    checkpointer.wait()  # The save of this step committed first: an eval JSON means a checkpoint.
                    runner.evaluate(state, step, writer)
                    restart_window()
    finally:
        progress.close()
        checkpointer.close()
        writer.close()
    if preemption.interrupted:
        raise TrainingInterrupted(
            f"Interrupted (Ctrl-C): step {step} was finished and saved to {checkpointer.directory}; "
            f"rerun the same command to resume from it."
        )
    return state


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """`--mode=eval`: evaluates the newest checkpoint of the workdir (that verifies)."""
    config_checks.check_config(config)
    runner = Runner(config, workdir)
    state, step = runner.restore_for_eval()
    writer = MetricWriter(workdir)
    metrics = runner.evaluate(state, step, writer)
    writer.close()
    return metrics
