r"""Where an InfoGAN MNIST run's time goes: the train step's pieces, the loop around it, evaluation.

  taskset -c 0 python experiments/infogan_step_profile.py [--config=configs/infogan.py:mnist] \
      [--repeats=5] [--eval_batches=4] [--data_dir=DIR --manual_dir=DIR] [--torch] [--nopieces]

Times (median of `--repeats` calls, after a warm-up that compiles) on random images of MNIST's
shape, batch 128:

* the whole train step as the loop runs it (jitted, the state donated, uint8 input converted
  inside), and its pieces, each jitted alone: G's forward pass for the D/Q update, the D/Q
  update's gradients, the G update's gradients, and the two Adam updates alone;
* what the loop adds per step: reading a batch from the data pipeline (only with --data_dir and
  --manual_dir: the prepared mnist_idx) and fetching the metrics (every log_every_steps);
* with --torch, the PyTorch port's full update (benchmarks/reference/torch_infogan.py), same batch;
* one evaluation of the config (eval_step over the eval split, extrapolated from
  `--eval_batches` batches of eval_batch_size, plus the grids), and its share of a run when it
  runs every eval_every_steps.

For a per-instruction profile of the same step use experiments/profile_step.py
(--config=configs/infogan.py:mnist --image_shape=28,28,1 --batch_size=128); its separately
jitted pieces need a `loss_fn`, which the InfoGAN task does not have (it overrides its whole
train step): this script times those pieces instead.
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags  # pylint: disable=g-import-not-at-top,g-multiple-import
from ml_collections import config_flags

# Run as a file: the repository root makes `benchmarks` importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import bench_timing  # noqa: E402
from vqlatent import data as data_lib  # pylint: disable=wrong-import-position
from vqlatent import infogan as ig  # pylint: disable=wrong-import-position
from vqlatent.data.device import to_model_input  # pylint: disable=wrong-import-position
from vqlatent.data.sources import DatasetSpec  # pylint: disable=wrong-import-position
from vqlatent.trainers.base import make_task  # pylint: disable=wrong-import-position

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "infogan.py")
_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG + ":mnist", "InfoGAN config.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls of each piece (median).")
_EVAL_BATCHES = flags.DEFINE_integer("eval_batches", 4, "Eval batches timed (extrapolated to the split).")
_TORCH = flags.DEFINE_bool(
    "torch", False, "Also time the PyTorch port (benchmarks/reference/torch_infogan.py)."
)
_TORCH_THREADS = flags.DEFINE_integer("torch_threads", 1, "torch.set_num_threads for the port.")
_PIECES = flags.DEFINE_bool("pieces", True, "Also time the pieces, the loop's extras and evaluation.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir with mnist_idx prepared (optional).")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "The MNIST idx files (with --data_dir).")


def _row(label: str, seconds: float, step: float | None = None) -> None:
    share = f" | {seconds / step:.0%}" if step else " |"
    print(f"| {label} | {seconds * 1e3:.1f}{share}")


def main(argv):
    del argv
    config = _CONFIG.value
    repeats = _REPEATS.value
    batch_size = config.batch_size
    spec = DatasetSpec(image_shape=(28, 28, 1), num_classes=10, num_train=60000, num_eval=10000)
    task = make_task(config, spec)
    rng = np.random.default_rng(0)
    batch = {
        "image": jnp.asarray(rng.integers(0, 256, (batch_size, 28, 28, 1)).astype(np.uint8)),
        "label": jnp.asarray(rng.integers(0, 10, batch_size).astype(np.int32)),
    }
    state = jax.jit(task.init_state)(jax.random.PRNGKey(0), task.dummy_batch())
    print(
        f"config {config.model_name} batch {batch_size}, info.augment "
        f"{'on' if task.augment is not None else 'off'}; load average "
        f"{'/'.join(f'{x:.1f}' for x in os.getloadavg())}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}"
    )

    # The whole step as the loop jits it: uint8 in, state donated.
    step_fn = jax.jit(lambda s, b: task.train_step(s, to_model_input(b)), donate_argnums=(0,))
    start = time.perf_counter()
    compiled = step_fn.lower(state, batch).compile()
    print(f"train step compile: {time.perf_counter() - start:.1f} s")
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    print(f"XLA cost analysis: {cost.get('flops', float('nan')) / 1e9:.1f} GFLOP per step")
    times = []
    metrics = None
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready(state)
        times.append(time.perf_counter() - t0)
    step = float(np.median(times[1:]))
    print(f"whole train step: {step * 1e3:.0f} ms (median of {repeats})", flush=True)
    if _TORCH.value:  # The PyTorch port's full update (D/Q then G, Adam), same batch size.
        import torch  # pylint: disable=g-import-not-at-top

        from benchmarks.reference import torch_infogan  # pylint: disable=g-import-not-at-top

        torch.set_num_threads(_TORCH_THREADS.value)
        port, torch_batch = torch_infogan.torch_infogan_step(config, batch_size)
        theirs = bench_timing.median_seconds(lambda: port.step(torch_batch), repeats=repeats)
        print(
            f"PyTorch port ({_TORCH_THREADS.value} thread(s)): {theirs * 1e3:.0f} ms per step; "
            f"ours/PyTorch in steps per second: {theirs / step:.2f}x",
            flush=True,
        )
    if not _PIECES.value:
        return

    images = to_model_input(batch)["image"]
    half = batch_size
    latents = ig.sample_latents(jax.random.PRNGKey(1), task.latent_spec, half)
    g_vars = task._variables(state, "generator")  # pylint: disable=protected-access
    d_params, d_state = state.params["discriminator"], state.model_state["discriminator"]
    d_variables = {"params": d_params, **d_state}
    transform_rng = jax.random.PRNGKey(2) if task.augment is not None else None

    def g_forward(latents):
        return task.generator.apply(
            g_vars, ig.generator_input(task.latent_spec, latents), train=True, mutable=["batch_stats"]
        )[0]

    fake = jax.jit(g_forward)(latents)
    d_grad = jax.jit(jax.grad(task.discriminator_loss, has_aux=True))
    g_grad = jax.jit(jax.grad(task.generator_loss, has_aux=True))
    grads_d, _ = d_grad(d_params, d_state, images, fake, latents, transform_rng)
    grads_g, _ = g_grad(
        state.params["generator"], state.model_state["generator"], d_variables, latents, transform_rng
    )

    def adam(grads, opt_state, params, name):
        updates, opt_state = task.tx[name].update(grads, opt_state, params)
        return jax.tree.map(jnp.add, params, updates), opt_state

    adam_jit = jax.jit(adam, static_argnums=3)
    timed = lambda fn, *args: bench_timing.median_seconds(fn, *args, repeats=repeats)  # noqa: E731
    pieces = [
        ("G forward (the D/Q update's fakes)", timed(jax.jit(g_forward), latents)),
        (
            "D/Q update: gradients",
            timed(d_grad, d_params, d_state, images, fake, latents, transform_rng),
        ),
        (
            "G update: gradients (through D/Q)",
            timed(
                g_grad,
                state.params["generator"],
                state.model_state["generator"],
                d_variables,
                latents,
                transform_rng,
            ),
        ),
        (
            "Adam, D/Q",
            timed(adam_jit, grads_d, state.opt_state["discriminator"], d_params, "discriminator"),
        ),
        (
            "Adam, G",
            timed(adam_jit, grads_g, state.opt_state["generator"], state.params["generator"], "generator"),
        ),
    ]
    print("\n| piece (jitted alone) | ms | share of the step |\n|---|---|---|")
    _row("**whole train step** (donated, as the loop runs it)", step, step)
    for label, seconds in pieces:
        _row(label, seconds, step)

    print("\n| around the step | ms per step |\n|---|---|")
    fetch = bench_timing.median_seconds(jax.device_get, metrics, repeats=repeats)
    _row(f"metrics fetch (every {config.log_every_steps} steps), per step", fetch / config.log_every_steps)
    if _DATA_DIR.value:
        config.data.data_dir, config.data.manual_dir = _DATA_DIR.value, _MANUAL_DIR.value
        it = data_lib.make_train_iterator(config.data, global_batch_size=batch_size, seed=0)
        next(it)
        t0 = time.perf_counter()
        for _ in range(20):
            jax.block_until_ready(jax.device_put(next(it)))
        _row("data: next batch + device_put", (time.perf_counter() - t0) / 20)

    eval_step = jax.jit(lambda s, b: task.eval_step(s, to_model_input(b)))
    eval_bs = config.eval_batch_size
    eval_batch = {
        "image": jnp.asarray(rng.integers(0, 256, (eval_bs, 28, 28, 1)).astype(np.uint8)),
        "label": jnp.asarray(rng.integers(0, 10, eval_bs).astype(np.int32)),
        "mask": jnp.ones((eval_bs,), jnp.float32),
    }
    per_batch = bench_timing.median_seconds(eval_step, state, eval_batch, repeats=max(1, _EVAL_BATCHES.value))
    images_fn = jax.jit(lambda s, b: task.eval_images(s, to_model_input(b)))
    grids = bench_timing.median_seconds(images_fn, state, eval_batch, repeats=1)
    num_batches = -(-spec.num_eval // eval_bs)
    evaluation = per_batch * num_batches + grids
    every = config.eval_every_steps
    print(
        f"\nevaluation: {evaluation:.1f} s ({num_batches} eval batches of {eval_bs} at "
        f"{per_batch * 1e3:.0f} ms + grids {grids * 1e3:.0f} ms), every {every} steps = "
        f"{evaluation / every * 1e3:.0f} ms per step ({evaluation / every / step:.0%} of a step)"
    )


if __name__ == "__main__":
    app.run(main)
