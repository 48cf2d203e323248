r"""Train-step speed of a model config, ours against our PyTorch reference, side by side.

  python benchmarks/train_step_bench.py --config=configs/vqvae.py:mnist [--batch_size=128] \
      [--image_shape=64,64,3] [--steps=10] [--rounds=5] [--notorch] [--json_out=FILE] \
      [--compilation_cache_dir=DIR] [--torch_threads=N] [--config.model.upsample=conv_transpose]
  python benchmarks/train_step_bench.py --config=configs/pixelcnn.py:mnist,level=top \
      --codes_config=configs/vqvae2.py:mnist        # or --code_levels=bottom=14x14x512,top=7x7x512

For each round, times `--steps` jitted JAX train steps, then as many PyTorch
steps, alternating so both see the same machine load; prints the median step
time, examples/s, the ratio ours/PyTorch in examples/s (> 1: we are faster),
the time to compile the train step (lowering + XLA compilation; the jitted
init, compiled and run, is timed separately), and XLA's memory estimate for the
step. Needs no dataset: an autoencoder gets random images with the shape of the
config's dataset (or --image_shape); a prior (model_name='pixelcnn') gets
random codes for every level of a code hierarchy, random labels, and trains
with cross-entropy and Adam, the PyTorch port (torch_models.GatedPixelCNN)
the same. The hierarchy comes from --code_levels, or from the VQ-VAE-2 config
the codes would be extracted with (--codes_config: its levels' shapes on its
dataset's images and its codebook sizes).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags  # pylint: disable=g-import-not-at-top,g-multiple-import
from ml_collections import config_flags

# Run as a file (`python benchmarks/train_step_bench.py`): the repository root makes `benchmarks` importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import bench_inputs  # noqa: E402
from vqlatent import backend
from vqlatent.utils import compilation_cache  # noqa: E402

backend.set_cpu_xla_flags()  # A command line: the XLA:CPU flags `python -m vqlatent.main` sets.

_CONFIG = config_flags.DEFINE_config_file("config", None, "Model config.", lock_config=True)
_CODES_CONFIG = config_flags.DEFINE_config_file(
    "codes_config",
    None,
    "For a prior: the VQ-VAE-2 config whose code levels it models (e.g. configs/vqvae2.py:mnist).",
    lock_config=True,
)
_CODE_LEVELS = flags.DEFINE_string(
    "code_levels",
    None,
    "For a prior: the code hierarchy as LEVEL=HxWxK,... "
    "(e.g. bottom=14x14x512,top=7x7x512); overrides --codes_config.",
)
_BATCH = flags.DEFINE_integer("batch_size", None, "Override the config's batch size.")
_IMAGE = flags.DEFINE_string(
    "image_shape", None, "H,W,C of the random images (default: the config's dataset)."
)
_STEPS = flags.DEFINE_integer("steps", 10, "Steps per timed round.")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Alternating rounds.")
_TORCH = flags.DEFINE_bool("torch", True, "Also time the PyTorch reference.")
_JSON_OUT = flags.DEFINE_string("json_out", None, "Also write the results to this JSON file.")
_CACHE = flags.DEFINE_string(
    "compilation_cache_dir",
    None,
    "Use JAX's persistent compilation cache in this directory (run twice: "
    "the first run's compile time is cold, the second's warm). Default: no cache, a cold compile.",
)
_TORCH_THREADS = flags.DEFINE_integer(
    "torch_threads",
    None,
    "torch.set_num_threads for the reference (default: PyTorch's, one per core). "
    "On a loaded machine PyTorch's OpenMP threads slow down far more than XLA's: compare on a quiet one.",
)


_TORCH_DEVICE = flags.DEFINE_string(
    "torch_device",
    None,
    "Device of the PyTorch reference (default: 'cuda' when JAX runs on a GPU and torch sees one, else 'cpu'). "
    "A bfloat16 config (--config.dtype=bfloat16) runs PyTorch under bf16 autocast.",
)


_CLOCK = flags.DEFINE_enum(
    "clock",
    "wall",
    ["wall", "process"],
    "wall: elapsed time (a quiet machine). process: this process's CPU time, all threads (pin it to one "
    "core with taskset and use --torch_threads=1): on a shared machine it counts the steps' own work, "
    "not the time other processes held the core.",
)


def _peak_device_mib() -> float | None:
    """Peak bytes the JAX device allocator held (GPU/TPU), or None where it keeps no statistics (CPU)."""
    stats = jax.devices()[0].memory_stats()
    return stats["peak_bytes_in_use"] / 2**20 if stats and "peak_bytes_in_use" in stats else None


def main(argv):
    del argv
    config = _CONFIG.value
    batch_size = _BATCH.value or config.batch_size
    if _CACHE.value:
        compilation_cache.enable(os.path.abspath(_CACHE.value), os.getcwd())
    try:
        task, np_batch, torch_input, described = bench_inputs.task_and_batch(
            config,
            batch_size,
            np.random.default_rng(0),
            image_override=_IMAGE.value,
            code_levels=_CODE_LEVELS.value,
            codes_config=_CODES_CONFIG.value,
        )
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    batch = jax.tree.map(jnp.asarray, np_batch)

    start = time.perf_counter()
    state = jax.jit(task.init_state)(jax.random.PRNGKey(0), task.dummy_batch())
    jax.block_until_ready(state)
    init_s = time.perf_counter() - start
    start = time.perf_counter()
    compiled = jax.jit(task.train_step, donate_argnums=(0,)).lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    mem_mb = (
        ((memory.temp_size_in_bytes + memory.argument_size_in_bytes + memory.output_size_in_bytes) / 2**20)
        if memory is not None
        else float("nan")
    )
    num_params = sum(x.size for x in jax.tree.leaves(state.params))

    torch_step = None
    if _TORCH.value:
        import torch  # pylint: disable=g-import-not-at-top

        from benchmarks.reference import torch_models  # pylint: disable=g-import-not-at-top

        torch.manual_seed(0)
        if _TORCH_THREADS.value:
            torch.set_num_threads(_TORCH_THREADS.value)
        torch_device = _TORCH_DEVICE.value or (
            "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
        )
        amp = config.get("dtype", "float32") == "bfloat16"
        torch_step = torch_models.build(config.model_name, config, torch_input, device=torch_device, amp=amp)
        torch_batch = torch_models.torch_batch(np_batch, torch_device)
        torch_step.step(torch_batch)  # Warm-up.
        torch_models.synchronize(torch_device)
        if torch_device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()

    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    clock = time.process_time if _CLOCK.value == "process" else time.perf_counter
    ours, theirs = [], []
    for _ in range(_ROUNDS.value):
        start = clock()
        for _ in range(_STEPS.value):
            state, metrics = compiled(state, batch)
        jax.block_until_ready((state, metrics))
        ours.append((clock() - start) / _STEPS.value)
        if torch_step is not None:
            start = clock()
            for _ in range(_STEPS.value):
                torch_step.step(torch_batch)
            torch_models.synchronize(torch_device)
            theirs.append((clock() - start) / _STEPS.value)

    ours_s = statistics.median(ours)
    result = {
        "config": config.model_name,
        "described": described,
        "batch_size": batch_size,
        "params": int(num_params),
        "devices": jax.device_count(),
        "platform": jax.devices()[0].platform,
        "jax_ms": ours_s * 1e3,
        "jax_per_s": batch_size / ours_s,
        "init_s": init_s,
        "compile_s": compile_s,
        "compilation_cache": bool(_CACHE.value),
        "xla_memory_mib": mem_mb,
        "dtype": config.get("dtype", "float32"),
        "peak_device_mib": _peak_device_mib(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "jax_rounds_ms": [t * 1e3 for t in ours],
        "clock": _CLOCK.value,
    }
    print(
        f"model={config.model_name} {described} batch={batch_size} params={num_params} "
        f"devices={jax.device_count()} ({jax.devices()[0].platform})"
    )
    print(
        f"jax:   {ours_s * 1e3:8.1f} ms/step  {batch_size / ours_s:9.1f} ex/s  compile {compile_s:.1f} s "
        f"(init {init_s:.1f} s)  XLA memory {mem_mb:.0f} MiB  "
        f"(rounds: {', '.join(f'{t * 1e3:.0f}' for t in ours)} ms)"
    )
    if torch_step is not None:
        theirs_s = statistics.median(theirs)
        result.update(
            torch_ms=theirs_s * 1e3,
            torch_per_s=batch_size / theirs_s,
            torch_params=int(torch_step.num_params()),
            torch_threads=torch.get_num_threads(),
            torch_device=torch_device,
            torch_amp=amp,
            torch_peak_device_mib=(
                torch.cuda.max_memory_allocated() / 2**20 if torch_device.startswith("cuda") else None
            ),
            torch_rounds_ms=[t * 1e3 for t in theirs],
            ratio=theirs_s / ours_s,
        )
        print(
            f"torch: {theirs_s * 1e3:8.1f} ms/step  {batch_size / theirs_s:9.1f} ex/s  "
            f"params {torch_step.num_params()}  (rounds: {', '.join(f'{t * 1e3:.0f}' for t in theirs)} ms)"
        )
        print(f"ratio ours/torch examples/s: {theirs_s / ours_s:.2f}")
    if _JSON_OUT.value:
        with open(_JSON_OUT.value, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main)
