"""Per-backend choices of the hot paths, and the XLA:CPU flags the package sets.

Some graph forms are fast on one backend and slow on another (XLA:CPU's kernel gradient of a strided
transposed convolution is 80x slower than cuDNN's; a plain `argmin` over a long axis pads badly on TPU
lanes). Each such choice is a config field whose value `'auto'` resolves here, by
`jax.default_backend()`, to the form measured fastest on that backend; any other value forces that
form on every backend (every form computes the same function and is tested equal to its reference on
the CPU). `docs/lab/speed.md` holds the measurements behind each default.

`set_cpu_xla_flags()` runs when `vqlatent` is imported: it adds the XLA:CPU flags measured fastest
to `XLA_FLAGS`, only when the user has not set `XLA_FLAGS` and the backend has not started yet
(XLA reads the variable once, when the first backend is created). `VQLATENT_XLA_FLAGS=0` turns it off.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

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


def default_backend() -> str:
    """`jax.default_backend()` ('cpu', 'gpu', 'tpu'); imported lazily so importing this module is free."""
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
