"""Tiny configs shared by the tests (seconds per run on a 2-core CPU)."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import signal
import subprocess
import time

import jax

from vqlatent.data.device import to_model_input
from vqlatent.parallel import mesh as mesh_lib

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
_DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count="


def subprocess_env(num_devices: int = 1) -> dict[str, str]:
    """The environment of a test's child Python process (`python -m vqlatent.main ...`): this
    process's XLA flags (tests/conftest.py's, with the collective timeout) but `num_devices`
    simulated CPU devices, JAX on the CPU, and this checkout first on the import path."""
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(_DEVICE_COUNT_FLAG)]
    env = dict(os.environ)
    env["XLA_FLAGS"] = " ".join([f"{_DEVICE_COUNT_FLAG}{num_devices}", *flags])
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = str(REPO_ROOT)
    return env


def checkpoint_steps(workdir) -> list[int]:
    """The steps of the checkpoints committed in `workdir`, ascending."""
    directory = os.path.join(workdir, "checkpoints")
    return sorted(int(n) for n in os.listdir(directory) if n.isdigit()) if os.path.isdir(directory) else []


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 120) -> bool:
    """Polls `predicate()` while the child `proc` runs; whether it held before `timeout` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def kill_after_a_checkpoint(cmd: list[str], workdir, min_step: int = 10, timeout: float = 240) -> int:
    """Starts the training command `cmd` (a child process in REPO_ROOT), waits until its workdir holds
    a committed checkpoint of step >= `min_step`, kills it with SIGKILL and returns the newest
    checkpoint's step (asserting that the run was killed, not finished)."""
    proc = subprocess.Popen(
        cmd, cwd=REPO_ROOT, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_for(lambda: max(checkpoint_steps(workdir), default=0) >= min_step, proc, timeout)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = max(checkpoint_steps(workdir))
    assert killed_at >= min_step
    return killed_at


def load_config(name: str, arg: str | None = None):
    """`configs/<name>.py`'s get_config(arg), loaded by path as config_flags does."""
    spec = importlib.util.spec_from_file_location(f"configs_{name}", REPO_ROOT / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def tiny_vqvae_config(data_dir: str, arg: str | None = None):
    """The default (digits) VQ-VAE config, shrunk: 16 hidden channels, K=16, D=8."""
    config = load_config("vqvae", arg)
    config.data.data_dir = str(data_dir)
    config.model.num_hiddens = 16
    config.model.num_residual_hiddens = 8
    config.model.num_residual_layers = 1
    config.model.embedding_dim = 8
    config.quantizer.embedding_dim = 8
    config.quantizer.num_embeddings = 16
    config.batch_size = 16
    config.eval_batch_size = 64
    config.num_train_steps = 6
    config.log_every_steps = 2
    config.eval_every_steps = 6
    config.checkpoint_every_steps = 2
    config.progress_bar = False
    config.data.num_workers = 1
    return config


def tiny_vqvae2_config(data_dir: str, num_train_steps: int = 1):
    """The default (digits) VQ-VAE-2 config (bottom 4x4, top 2x2 codes), shrunk: 16 hidden channels,
    K=8 and D=4 per level, a checkpoint at the last step and no evaluation."""
    config = load_config("vqvae2")
    config.data.data_dir, config.data.num_workers = str(data_dir), 1
    config.model.update(dict(num_hiddens=16, num_residual_hiddens=8, num_residual_layers=1))
    for level in config.quantizer.values():
        level.num_embeddings, level.embedding_dim = 8, 4
    config.update(
        dict(
            batch_size=16,
            eval_batch_size=512,
            num_train_steps=num_train_steps,
            eval_every_steps=0,
            checkpoint_every_steps=num_train_steps,
            log_every_steps=1,
            progress_bar=False,
        )
    )
    return config


# The priors of train_tiny_prior, shrunk to a few hundred parameters.
TINY_PRIOR_MODELS = {
    "pixelcnn": dict(channels=8, num_layers=2, head_channels=8, cond_channels=4),
    "maskgit": dict(width=16, num_layers=1, num_heads=2, mlp_dim=16),
}


def train_tiny_prior(
    codes_dir: str, workdir: str, arg: str = "digits", seed: int | None = None, kind: str = "pixelcnn"
):
    """`configs/<kind>.py:<arg>` (a PixelCNN or MaskGIT prior) on `codes_dir`, shrunk
    (TINY_PRIOR_MODELS; MaskGIT decodes in 3 steps) and trained 1 step (from `seed`, or the config's).

    Returns the config (for `vqlatent.main.run(config, workdir, mode)`).
    """
    from vqlatent.trainers import loop  # pylint: disable=g-import-not-at-top

    config = load_config(kind, f"{arg},codes_dir={codes_dir}")
    config.model.update(TINY_PRIOR_MODELS[kind])
    config.update(
        dict(
            batch_size=16,
            num_train_steps=1,
            eval_every_steps=0,
            checkpoint_every_steps=1,
            log_every_steps=1,
            progress_bar=False,
        )
    )
    config.data.num_workers = 1
    if kind == "maskgit":
        config.sample.num_steps = 3
    if seed is not None:
        config.seed = seed
    loop.train_and_evaluate(config, workdir)
    return config


def run_steps(task, mesh, batches, eval_batch=None):
    """Init + train steps (+ one eval step) under jit on `mesh`, as the loop runs them.

    Returns host copies of (final state, per-step metrics[, eval sums]); comparing
    a 1-device mesh with an 8-device one checks that sharding changes nothing.
    """
    repl, sharded = mesh_lib.replicated(mesh), mesh_lib.data_sharded(mesh)
    state = jax.jit(task.init_state, out_shardings=repl)(jax.random.PRNGKey(0), task.dummy_batch())
    step = jax.jit(
        lambda s, b: task.train_step(s, to_model_input(b)),
        in_shardings=(repl, sharded),
        out_shardings=(repl, repl),
    )
    all_metrics = []
    for batch in batches:
        state, metrics = step(state, mesh_lib.shard_batch(batch, mesh))
        all_metrics.append(metrics)
    if eval_batch is None:
        return jax.device_get((state, all_metrics))
    sums = jax.jit(
        lambda s, b: task.eval_step(s, to_model_input(b)), in_shardings=(repl, sharded), out_shardings=repl
    )(state, mesh_lib.shard_batch(eval_batch, mesh))
    return jax.device_get((state, all_metrics, sums))


def quantizer_train_steps(module, mutable):
    """(single, multi, replicated, sharded): a quantizer's training step jitted on one device and
    with the batch sharded over 8 CPU devices (`tests/conftest.py`). A step maps (variables, inputs,
    key) to (new variables, outputs, parameter gradients, input gradients) of
    ``sum(quantize^2) + loss``, with the ``mutable`` collections updated."""
    import numpy as np
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    devices = jax.devices()
    assert len(devices) == 8, "tests/conftest.py should force 8 CPU devices"
    mesh = Mesh(np.array(devices), ("data",))
    replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))

    def step(variables, x, key):
        def loss(params, x):
            out, updates = module.apply(
                {**variables, "params": params}, x, train=True, mutable=mutable, rngs={"quantizer": key}
            )
            return jax.numpy.sum(out["quantize"] ** 2) + out["loss"], (out, updates)

        (grads, grad_x), (out, updates) = jax.grad(loss, argnums=(0, 1), has_aux=True)(
            variables.get("params", {}), x
        )
        return {**variables, **updates}, out, grads, grad_x

    multi = jax.jit(
        step,
        in_shardings=(replicated, sharded, replicated),
        out_shardings=(replicated, replicated, replicated, sharded),
    )
    return jax.jit(step), multi, replicated, sharded
