r"""Train-step time of the MNIST VQ-VAE with each quantizer preset, relative to plain EMA VQ.

  python benchmarks/quantizer_step_bench.py [--presets=vq_ema,lfq,...] [--steps=4] [--rounds=5] \
      [--clock=process] [--mnist_dir=../shared/data/mnist] [--batch_size=128] [--json_out=FILE]

The ms/step column of the quantizer table in docs/results.md. Every
preset's train step (`configs/vqvae.py:mnist,quantizer=NAME`, batch 128, 7x7x64 latents) is compiled
in this one process, and the presets are timed round-robin, `--steps` steps each per round, so that all
of them see the same machine; the median over rounds is reported, with the ratio to `vq_ema`. The
batch is 128 real MNIST training images when `--mnist_dir` holds the idx files (dead-code restarts
and entropy terms then see realistic codes), else uniform noise. `--extra=NAME:FIELD=VALUE,...`
overrides quantizer fields of one preset (e.g. `residual_vq:num_stages=2`).
"""

from __future__ import annotations

import gzip
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import vqvae as vqvae_configs  # noqa: E402
from vqlatent import backend
from vqlatent.data.sources import DatasetSpec  # noqa: E402
from vqlatent.trainers.base import make_task  # noqa: E402

backend.set_cpu_xla_flags()  # A command line: the XLA:CPU flags `python -m vqlatent.main` sets.

DEFAULT_PRESETS = (
    "vq_ema,vq_ema_restart,fsq,lfq,bsq,simvq,vq_ema_stochastic,vq_ema_entropy,"
    "residual_vq,residual_fsq,residual_lfq"
)
_PRESETS = flags.DEFINE_string("presets", DEFAULT_PRESETS, "Comma-separated quantizer presets.")
_EXTRA = flags.DEFINE_multi_string("extra", ["residual_vq:num_stages=2"], "NAME:FIELD=VALUE,... overrides.")
_STEPS = flags.DEFINE_integer("steps", 4, "Steps per preset and round.")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Round-robin rounds (median).")
_CLOCK = flags.DEFINE_enum("clock", "process", ["wall", "process"], "wall time, or this process's CPU time.")
_MNIST = flags.DEFINE_string("mnist_dir", "../shared/data/mnist", "MNIST idx files (else noise).")
_BATCH = flags.DEFINE_integer("batch_size", 128, "Images per step (128: the config's).")
_JSON_OUT = flags.DEFINE_string("json_out", None, "Also write the results here.")


def _batch(batch_size: int) -> dict:
    path = os.path.join(_MNIST.value, "train-images-idx3-ubyte.gz")
    if os.path.exists(path):
        with gzip.open(path) as f:
            images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28, 1)[:batch_size]
        source = f"{batch_size} MNIST training images"
    else:
        images = np.random.default_rng(0).integers(0, 256, (batch_size, 28, 28, 1), dtype=np.uint8)
        source = "uniform noise (no MNIST idx files)"
    image = jnp.asarray(images.astype(np.float32) / 255.0)
    return {"image": image, "label": jnp.zeros(batch_size, jnp.int32)}, source


def _overrides() -> dict[str, dict]:
    out: dict[str, dict] = {}
    for item in _EXTRA.value:
        name, _, fields = item.partition(":")
        for field in filter(None, fields.split(",")):
            key, _, value = field.partition("=")
            out.setdefault(name, {})[key] = json.loads(value)
    return out


def _compiled_step(preset: str, overrides: dict, batch: dict):
    config = vqvae_configs.get_config(f"mnist,quantizer={preset}")
    config.loss.normalize_by_data_variance = False  # Only scales the loss; no dataset read.
    for key, value in overrides.items():
        if key not in config.quantizer:
            raise app.UsageError(f"--extra: preset {preset!r} has no quantizer field {key!r}.")
        config.quantizer[key] = value
    spec = DatasetSpec(image_shape=(28, 28, 1), num_classes=10, num_train=1, num_eval=1)
    task = make_task(config, spec)
    state = jax.jit(task.init_state)(jax.random.PRNGKey(0), task.dummy_batch())
    step = jax.jit(task.train_step, donate_argnums=(0,)).lower(state, batch).compile()
    state, metrics = step(state, batch)  # Warm-up (and the first step's one-off work, e.g. k-means).
    jax.block_until_ready(metrics)
    return step, state


def main(argv) -> None:
    del argv
    presets = _PRESETS.value.split(",")
    if "vq_ema" not in presets:
        raise app.UsageError("--presets must include vq_ema (the reference of the ratios).")
    overrides = _overrides()
    batch, source = _batch(_BATCH.value)
    steps = {name: _compiled_step(name, overrides.get(name, {}), batch) for name in presets}
    clock = time.process_time if _CLOCK.value == "process" else time.perf_counter
    times: dict[str, list[float]] = {name: [] for name in presets}
    for _ in range(_ROUNDS.value):
        for name in presets:
            step, state = steps[name]
            start = clock()
            for _ in range(_STEPS.value):
                state, metrics = step(state, batch)
            jax.block_until_ready((state, metrics))
            times[name].append((clock() - start) / _STEPS.value)
            steps[name] = (step, state)
    median = {name: statistics.median(t) for name, t in times.items()}
    print(
        f"MNIST VQ-VAE train step, batch {_BATCH.value} ({source}), {_CLOCK.value} clock, {jax.default_backend()}"
    )
    print("| quantizer | ms/step | vs plain EMA |")
    print("|---|---|---|")
    for name in presets:
        label = name + "".join(f" {k}={v}" for k, v in overrides.get(name, {}).items())
        print(f"| {label} | {1000 * median[name]:.1f} | {median[name] / median['vq_ema']:.2f}x |")
    if _JSON_OUT.value:
        with open(_JSON_OUT.value, "w") as f:
            json.dump({"source": source, "clock": _CLOCK.value, "seconds": times}, f, indent=1)


if __name__ == "__main__":
    app.run(main)
