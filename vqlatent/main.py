r"""The one entry point: train, evaluate, or run a model's extra modes.

  python -m vqlatent.main --config=configs/vqvae.py[:variant] --workdir=DIR \
      [--mode=train|eval|...] [--config.field=value ...]

Re-running the same command resumes from the newest checkpoint in DIR.

Several processes (TPU pod slices, multi-node GPUs): run the same command on
every host (`launch/`); `jax.distributed.initialize()` is called when a
launcher is detected (Cloud TPU VM, SLURM `srun` step, Open MPI), or with
  --coordinator_address=HOST:PORT --num_processes=N --process_id=I
anywhere else. `--nodistributed` forces a single process, `--distributed`
insists on several.
"""

from __future__ import annotations

import logging as std_logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax
from absl import (
    app,  # pylint: disable=g-import-not-at-top
    flags,
    logging,
)
from ml_collections import config_flags

from vqlatent.parallel import distributed
from vqlatent.trainers import loop
from vqlatent.utils import compilation_cache

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/vqvae.py:mnist.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and images.")
_MODE = flags.DEFINE_string("mode", "train", "train, eval, or a mode of the model (e.g. extract_codes).")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed",
    None,
    "Call jax.distributed.initialize() (several processes: TPU pods, SLURM, MPI). Default: when "
    "a launcher is detected or --coordinator_address/--num_processes/--process_id are given.",
)
_COORDINATOR_ADDRESS = flags.DEFINE_string(
    "coordinator_address", None, "HOST:PORT where process 0 serves the JAX coordination service."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes of the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes).")
flags.mark_flags_as_required(["config", "workdir"])


def run(config, workdir: str, mode: str):
    """Dispatches `mode`; returns what the mode returns (final state, metrics, ...)."""
    if mode == "train":
        return loop.train_and_evaluate(config, workdir)
    if mode == "eval":
        return loop.evaluate_checkpoint(config, workdir)
    runner = loop.Runner(config, workdir)
    extra = runner.task.modes()
    if mode not in extra:
        raise app.UsageError(
            f"--mode={mode} is not available for model_name={config.model_name!r}; "
            f"choose one of {['train', 'eval', *sorted(extra)]}."
        )
    return extra[mode](runner)


class _QuietLibraries(std_logging.Filter):
    """Keeps orbax's and TFDS's per-save INFO chatter out of the console (warnings pass)."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        return record.levelno >= std_logging.WARNING or not any(
            part in record.pathname for part in ("/orbax/", "/tensorflow_datasets/")
        )


def main(argv):
    logging.get_absl_handler().addFilter(_QuietLibraries())
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
        distributed.initialize(
            _DISTRIBUTED.value, _COORDINATOR_ADDRESS.value, _NUM_PROCESSES.value, _PROCESS_ID.value
        )
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    logging.info(
        "JAX devices: %s (process %d of %d)", jax.devices(), jax.process_index(), jax.process_count()
    )
    config, workdir = _CONFIG.value, os.path.abspath(_WORKDIR.value)
    try:
        cache_dir = compilation_cache.enable(config.get("compilation_cache_dir", ""), workdir)
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    if cache_dir:
        logging.info("Persistent compilation cache: %s", cache_dir)
    try:
        run(config, workdir, _MODE.value)
    except loop.NonFiniteLossError as e:
        logging.error("%s", e)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
