r"""The one entry point: train, evaluate, or run a model's extra modes.

  python -m vqlatent.main --config=configs/vqvae.py[:variant] --workdir=DIR \
      [--mode=train|eval|...] [--config.field=value ...]

Re-running the same command resumes from the newest checkpoint in DIR.

Errors a user can fix (a bad config value, missing data, a workdir of another
model or in use by another run, an unknown mode) print their message alone and
exit with status 1; `--traceback` shows where they were raised. Unexpected
errors keep their traceback.

On a GPU, XLA's `--xla_gpu_deterministic_ops=true` is set (config field
`deterministic_ops`, default True) so that resumed and sharded runs are
bit-exact there too; it does nothing on CPU and TPU.

Several processes (TPU pod slices, multi-node GPUs): run the same command on
every host (`launch/`); `jax.distributed.initialize()` is called when a
launcher is detected (Cloud TPU VM, SLURM `srun` step, Open MPI), or with
  --coordinator_address=HOST:PORT --num_processes=N --process_id=I
anywhere else. `--nodistributed` forces a single process, `--distributed`
insists on several.
"""

from __future__ import annotations

import errno
import logging as std_logging
import os
import re
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax
from absl import (
    app,  # pylint: disable=g-import-not-at-top
    flags,
    logging,
)
from ml_collections import config_flags

from vqlatent import backend, config_checks
from vqlatent.parallel import distributed
from vqlatent.trainers import loop
from vqlatent.utils import compilation_cache, errors

# The command line sets the XLA:CPU flags measured fastest (importing the package sets none).
backend.set_cpu_xla_flags()

# The model modes' options (export, encode, decode, reconstruct) are the config when none is given
# (`_parse_flags`): those modes take their model from --workdir and need no --config.
MODEL_MODES_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models", "cli_config.py")
MODEL_MODES = ("export", "encode", "decode", "reconstruct")
_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Config file, e.g. configs/vqvae.py:mnist (not needed by --mode=export|encode|decode|reconstruct).",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string(
    "workdir",
    None,
    "Directory for checkpoints, logs and images; for --mode=export|encode|decode|reconstruct the model: "
    "a training workdir, an export directory or pretrained:NAME.",
)
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
_TRACEBACK = flags.DEFINE_bool(
    "traceback", False, "Show the traceback of errors a user can fix (config, data, workdir, mode) too."
)
flags.mark_flags_as_required(["workdir"])

DETERMINISTIC_FLAG = "--xla_gpu_deterministic_ops"


def run(config, workdir: str, mode: str):
    """Dispatches `mode`; returns what the mode returns (final state, metrics, ...)."""
    if mode in MODEL_MODES:
        from vqlatent.models import cli  # pylint: disable=g-import-not-at-top

        return cli.run(mode, config, workdir)
    require_model_config(config, mode)
    if mode == "train":
        return loop.train_and_evaluate(config, workdir)
    if mode == "eval":
        return loop.evaluate_checkpoint(config, workdir)
    runner = loop.Runner(config, workdir)
    extra = runner.task.modes()
    if mode not in extra:
        raise errors.UserError(
            f"--mode={mode} is not available for model_name={config.model_name!r}; "
            f"choose one of {['train', 'eval', *sorted(extra)]}."
        )
    return extra[mode](runner)


def require_model_config(config, mode: str) -> None:
    """A usage error unless `config` is a model's config (the model modes' default has none)."""
    if "model_name" not in config:
        raise errors.UserError(
            f"--mode={mode} needs --config (e.g. --config=configs/vqvae.py); only "
            f"--mode={'|'.join(MODEL_MODES)} run without one."
        )


def set_deterministic_ops(enabled: bool) -> bool:
    """Adds `--xla_gpu_deterministic_ops=true` to XLA_FLAGS; returns whether it did.

    Only XLA:GPU reads the flag (its scatters and reductions then run in a fixed order: resumed
    and sharded runs bit-exact, somewhat slower); XLA:CPU and TPU are deterministic without it.
    Left alone when disabled, when the user's XLA_FLAGS already choose it, or once a backend has
    started (XLA reads XLA_FLAGS when it creates the first one).
    """
    current = os.environ.get("XLA_FLAGS", "")
    if not enabled or DETERMINISTIC_FLAG in current:
        return False
    if backend._backend_started():  # pylint: disable=protected-access
        logging.warning("A JAX backend already started: %s=true not set.", DETERMINISTIC_FLAG)
        return False
    os.environ["XLA_FLAGS"] = f"{current} {DETERMINISTIC_FLAG}=true".strip()
    return True


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, printing an error raised by vqlatent in a config file without the
    traceback that ml_collections puts into the message (`--traceback` keeps it), and a
    misspelt `--config.FIELD` or a missing config file as one paragraph. Without `--config`, the
    model modes' options (`MODEL_MODES_CONFIG`) are the config."""
    if not any(arg == "--config" or arg.startswith("--config=") for arg in argv[1:]):
        argv = [argv[0], f"--config={MODEL_MODES_CONFIG}", *argv[1:]]
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        message = str(e)
        if "--traceback" not in argv:
            message = _without_config_traceback(message)
        sys.stderr.write(
            f"FATAL Flags parsing error: {message}\nPass --helpshort or --helpfull to see help on flags.\n"
        )
        sys.exit(1)
    except (AttributeError, KeyError, OSError) as e:
        message = None if "--traceback" in argv else _config_usage_error(e, argv)
        if message is None:
            raise
        sys.stderr.write(f"FATAL Flags parsing error: {message}\n")
        sys.exit(1)


def _flag_values(argv: list[str], name: str) -> list[str]:
    """The values of `--name=VALUE` / `--name VALUE` in argv."""
    values = []
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{name}="):
            values.append(arg.split("=", 1)[1])
        elif arg == f"--{name}" and i + 1 < len(argv):
            values.append(argv[i + 1])
    return values


def _config_usage_error(error: BaseException, argv: list[str]) -> str | None:
    """One paragraph for a misspelt `--config.FIELD` or a missing config file; None for anything else."""
    config_files = _flag_values(argv, "config")
    path = config_files[-1].split(":", 1)[0] if config_files else None
    if isinstance(error, OSError):
        if path is not None and not os.path.isfile(path):
            return (
                f"--config={config_files[-1]}: there is no config file {path} (looked in {os.getcwd()}). "
                f"Give the path of a config file, e.g. --config=configs/vqvae.py (run from the "
                f"repository root) or an absolute path."
            )
        return None
    text = str(error).replace("\\'", "'").replace("\\n", " ")
    missing = re.search(r"'([^'\s]+)'", text)
    if missing is None:
        return None
    field = missing.group(1)
    overrides = [a for a in argv if a.startswith("--config.")]
    culprit = next((a for a in overrides if field in a.split("=", 1)[0].split(".")[1:]), None)
    if culprit is None:
        return None
    suggestion = re.search(r'Did you mean "([^"]+)"', text)
    hint = f" (did you mean {suggestion.group(1)}?)" if suggestion else ""
    return (
        f"{culprit.split('=', 1)[0]}: the config of {path} has no field {field!r}{hint}. Fields can "
        f"only be overridden, not added: check the spelling against the config file (or the "
        f"config.json of a workdir trained with it)."
    )


def _without_config_traceback(message: str) -> str:
    """'flag --config=...: Error whilst parsing config file: <traceback> ValueError: msg' ->
    'flag --config=...: msg' when the error is a ValueError raised in vqlatent's code."""
    head, sep, trace = message.partition("Traceback (most recent call last):")
    if not sep:
        return message
    lines = [line.strip() for line in trace.strip().splitlines() if line.strip()]
    files = [line for line in lines if line.startswith("File ")]
    last = lines[-1] if lines else ""
    if not (last.startswith("ValueError: ") and files and "/vqlatent/" in files[-1]):
        return message
    prefix = head.split("Error whilst parsing config file:")[0].rstrip()
    return f"{prefix} {last[len('ValueError: ') :]}"


_FULL_DISK = ("No space left on device", "RESOURCE_EXHAUSTED", "Disk quota exceeded", "File too large")


class _QuietLibraries(std_logging.Filter):
    """Keeps orbax's and TFDS's per-save INFO chatter out of the console (warnings pass), and the
    tracebacks orbax's threads log for a full disk (`Checkpointer` reports that in one paragraph)."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        library = any(part in record.pathname for part in ("/orbax/", "/tensorflow_datasets/", "/asyncio/"))
        if library and record.levelno >= std_logging.WARNING:
            text = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                text += " " + str(record.exc_info[1])
            return not any(part in text for part in _FULL_DISK)
        return record.levelno >= std_logging.WARNING or not library


def _out_of_space(error: BaseException) -> OSError | None:
    """The OSError of a full disk (or quota, or file size limit) in `error`'s chain, or None."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            return error
        error = error.__cause__ or error.__context__
    return None


def main(argv):
    logging.get_absl_handler().addFilter(_QuietLibraries())
    std_logging.getLogger("asyncio").addFilter(_QuietLibraries())
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
        _main()
    except loop.TrainingInterrupted as e:
        logging.flush()
        sys.stderr.write(f"{e}\n")
        sys.exit(130)
    except KeyboardInterrupt:
        logging.flush()
        sys.stderr.write(
            "\nInterrupted (Ctrl-C) outside the training steps: nothing new was saved; the workdir "
            "keeps its newest checkpoint, and rerunning the same command resumes from it.\n"
        )
        sys.exit(130)
    except loop.NonFiniteLossError as e:
        logging.error("%s", e)
        sys.exit(1)
    except Exception as e:  # pylint: disable=broad-exception-caught
        # A config file that cannot be loaded surfaces when the config is first read.
        message = None if _TRACEBACK.value or not isinstance(e, OSError) else _config_usage_error(e, sys.argv)
        if message is not None and "config file" in str(e):
            logging.flush()
            sys.stderr.write(f"FATAL Flags parsing error: {message}\n")
            sys.exit(1)
        full = _out_of_space(e)
        if full is not None and not _TRACEBACK.value and not errors.is_user_error(e):
            logging.flush()
            where = full.filename or _WORKDIR.value
            sys.stderr.write(
                f"{os.strerror(full.errno)} writing {where}: the run stopped. Free some space on that "
                f"filesystem (or move --workdir to a larger disk) and rerun the same command: it "
                f"resumes from the newest checkpoint.\n"
            )
            sys.exit(1)
        if _TRACEBACK.value or not errors.is_user_error(e):
            raise
        logging.flush()
        sys.stderr.write(f"{type(e).__name__}: {e}\n")
        sys.exit(1)


def _main():
    if _MODE.value in MODEL_MODES:  # The model is --workdir as given (a path or pretrained:NAME).
        run(_CONFIG.value, _WORKDIR.value, _MODE.value)
        return
    config, workdir = _CONFIG.value, os.path.abspath(_WORKDIR.value)
    require_model_config(config, _MODE.value)
    config_checks.check_config(config, workdir)  # Before anything is created, compiled or read.
    set_deterministic_ops(config.get("deterministic_ops", True))
    distributed.initialize(
        _DISTRIBUTED.value, _COORDINATOR_ADDRESS.value, _NUM_PROCESSES.value, _PROCESS_ID.value
    )
    logging.info(
        "JAX devices: %s (process %d of %d)", jax.devices(), jax.process_index(), jax.process_count()
    )
    cache_dir = compilation_cache.enable(config.get("compilation_cache_dir", ""), workdir)
    if cache_dir:
        logging.info("Persistent compilation cache: %s", cache_dir)
    run(config, workdir, _MODE.value)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
