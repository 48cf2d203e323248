"""Per-backend choices of the hot paths, and the XLA:CPU flags the package sets.

Some graph forms are fast on one backend and slow on another (XLA:CPU's kernel gradient of a strided
transposed convolution is 80x slower than cuDNN's; a plain `argmin` over a long axis pads badly on TPU
lanes). Each such choice is a config field whose value `'auto'` resolves here, by
`jax.default_backend()`, to the form measured fastest on that backend; any other value forces that
form on every backend (every form computes the same function and is tested equal to its reference on
the CPU). `docs/lab/speed.md` holds the measurements behind each default.

The forms another platform picks can be had on this machine, to lower a program for it
(`jax.export` with `platforms=("cuda", "tpu")`, `vqlatent.utils.lowering`): `forms_for(platform)`
reads the per-backend tables (`FORM_TABLES`) and returns the value each config field's 'auto'
would take there, to be written into the config; inside `resolving_for(platform)`, `resolve`
answers 'auto' as it would on that platform.

`set_cpu_xla_flags()` adds the XLA:CPU flags measured fastest to `XLA_FLAGS`, only when the user
has not set `XLA_FLAGS` and the backend has not started yet (XLA reads the variable once, when the
first backend is created); `VQLATENT_XLA_FLAGS=0` turns it off. The command line
(`python -m vqlatent.main`), `vqlatent.load` and the benchmark scripts call it; importing the
package never changes the environment, so a library user calls it explicitly if they want the flags.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Iterator, Mapping

# XLA:CPU flags set by the package when the user has not set XLA_FLAGS (see module docstring).
# jaxlib 0.10 routes convolutions and matmuls through YNNPACK/XNNPACK library fusions by default. Their
# convolution kernel gradients run 2-10x slower than XLA's own convolutions on this AVX-512 CPU (all
# the models' convolution kernels together: 4.75 s -> 1.23 s), while YNNPACK's matmuls are faster than
# XLA's (InfoGAN's dense layers). So: YNNPACK for individual dots only, no XNNPACK fusions
# (experiments/xla_cpu_flags_bench.py and benchmarks/train_step_bench.py; docs/lab/speed.md).
# They only affect the CPU backend.
CPU_XLA_FLAGS: tuple[str, ...] = (
    "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
    "--xla_cpu_experimental_xnn_fusion_type=",
)


def set_cpu_xla_flags() -> bool:
    """Adds `CPU_XLA_FLAGS` to the environment if it is safe to; returns whether it did."""
    if not CPU_XLA_FLAGS or os.environ.get("VQLATENT_XLA_FLAGS", "1") == "0":
        return False
    if "XLA_FLAGS" in os.environ:  # The user's choice wins, whatever it is.
        return False
    if _backend_started():
        return False
    os.environ["XLA_FLAGS"] = " ".join(CPU_XLA_FLAGS)
    return True


def _backend_started() -> bool:
    """Whether a JAX backend already exists (then XLA_FLAGS is read and changing it does nothing)."""
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top

        return bool(getattr(xla_bridge, "_backends", {}))
    except ImportError:  # pragma: no cover - a jax without this private module: be safe, do nothing.
        return True


# The config fields with per-backend forms: the field's name (as it appears in any section of a
# config: `model.upsample`, `model.generator.upsample`, `quantizer.argmin_form`, ...) -> (module,
# name of its backend -> form table). Each module resolves its field with `resolve` and that table.
FORM_TABLES: dict[str, tuple[str, str]] = {
    "upsample": ("vqlatent.nets.layers", "UPSAMPLE_PER_BACKEND"),
    "downsample": ("vqlatent.nets.downsample", "DOWNSAMPLE_PER_BACKEND"),
    "argmin_form": ("vqlatent.quantizers.search", "ARGMIN_PER_BACKEND"),
    "distance_precision": ("vqlatent.quantizers.search", "DISTANCE_PRECISION_PER_BACKEND"),
    "ema_statistics": ("vqlatent.quantizers.ema", "EMA_STATISTICS_PER_BACKEND"),
}

# `jax.export` platform names -> `jax.default_backend()` names (the keys of the tables).
PLATFORM_BACKENDS: dict[str, str] = {"cpu": "cpu", "cuda": "gpu", "rocm": "gpu", "gpu": "gpu", "tpu": "tpu"}

# Set by `resolving_for`: the backend `default_backend()` reports instead of JAX's.
_backend_override: str | None = None


def backend_of_platform(platform: str) -> str:
    """'cuda' / 'rocm' / 'gpu' -> 'gpu', 'tpu' -> 'tpu', 'cpu' -> 'cpu'; ValueError for others."""
    if platform not in PLATFORM_BACKENDS:
        raise ValueError(f"Unknown platform {platform!r}; choose one of {sorted(PLATFORM_BACKENDS)}.")
    return PLATFORM_BACKENDS[platform]


def form_tables() -> dict[str, Mapping[str, str]]:
    """{config field name: its backend -> form table} (imports the modules that own them)."""
    return {
        field: getattr(importlib.import_module(module), table)
        for field, (module, table) in FORM_TABLES.items()
    }


def forms_for(platform: str) -> dict[str, str]:
    """{config field name: the form 'auto' picks on `platform`} ('cuda' and 'tpu' as `jax.export`
    names them, or a backend name).

    E.g. `forms_for('cuda')['upsample'] == 'conv_transpose'` while 'auto' is 'subpixel' on the CPU.
    These are the tables' entries; the few 'auto' rules that also look at sizes (the EMA statistics
    of more than `ema.ONE_HOT_MAX_CODES` codes, the CPU's per-phase downsampling of small layers)
    are applied by the modules themselves (`vqlatent.utils.lowering.force_forms` applies them).
    """
    name = backend_of_platform(platform)
    return {field: table.get(name, table["default"]) for field, table in form_tables().items()}


@contextlib.contextmanager
def resolving_for(platform: str) -> Iterator[str]:
    """Within the block `default_backend()`, hence `resolve(..., 'auto', ...)`, answers for `platform`.

    Only for Python that resolves forms when it runs (e.g. `ema.resolve_ema_statistics('auto', K)`):
    jax reuses a function's trace for equal arguments (a jitted function with a static model keeps the
    forms of its first trace), so to lower a program for another platform write the forms into its
    config instead (`forms_for`, `vqlatent.utils.lowering.force_forms`). Yields the backend name.
    """
    global _backend_override
    previous, _backend_override = _backend_override, backend_of_platform(platform)
    try:
        yield _backend_override
    finally:
        _backend_override = previous


def default_backend() -> str:
    """`jax.default_backend()` ('cpu', 'gpu', 'tpu'), or the platform of an enclosing `resolving_for`;
    jax is imported lazily so importing this module is free."""
    if _backend_override is not None:
        return _backend_override
    import jax  # pylint: disable=g-import-not-at-top

    return jax.default_backend()


def resolve(field: str, value: str, per_backend: Mapping[str, str], choices: tuple[str, ...]) -> str:
    """`value`, or for `'auto'` the form `per_backend` names for this backend.

    Args:
      field: the config field, for the error message (e.g. 'model.upsample').
      value: the configured value: one of `choices`, or 'auto'.
      per_backend: backend name -> form; the key 'default' covers backends not named.
      choices: the valid forms.
    """
    if value == "auto":
        value = per_backend.get(default_backend(), per_backend["default"])
    if value not in choices:
        raise ValueError(f"Unknown {field}={value!r}; choose 'auto' or one of {list(choices)}.")
    return value
