"""Per-backend choices of the hot paths, and the XLA:CPU flags the package sets.

Some graph forms are fast on one backend and slow on another (XLA:CPU's kernel gradient of a strided
transposed convolution is 80x slower than cuDNN's; a plain `argmin` over a long axis pads badly on TPU
lanes). Each such choice is a config field whose value `'auto'` resolves here, by
`jax.default_backend()`, to the form measured fastest on that backend; any other value forces that
form on every backend (every form computes the same function and is tested equal to its reference on
the CPU). `docs/lab/speed.md` holds the measurements behind each default.

Every such choice is one entry of `CHOICES`: the field, its forms, the default per backend, the
size guard (a rule on sizes that overrides the default on every backend) and the reason in a line.
The modules that implement the forms call `resolve(field, value, **sizes)`; nothing else holds a
per-backend default.

The forms another platform picks can be had on this machine, to lower a program for it
(`jax.export` with `platforms=("cuda", "tpu")`, `vqlatent.lowering`): `forms_for(platform)`
returns the value each config field's 'auto' would take there, to be written into the config;
inside `resolving_for(platform)`, `resolve` answers 'auto' as it would on that platform.

`initializer_rng()` is the random-number implementation the tasks initialise their parameters
with (see its docstring).

`set_cpu_xla_flags()` adds the XLA:CPU flags measured fastest to `XLA_FLAGS`, only when the user
has not set `XLA_FLAGS` and the backend has not started yet (XLA reads the variable once, when the
first backend is created); `VQLATENT_XLA_FLAGS=0` turns it off. The command line
(`python -m vqlatent.main`), `vqlatent.load` and the benchmark scripts call it; importing the
package never changes the environment, so a library user calls it explicitly if they want the flags.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from collections.abc import Callable, Iterator, Mapping

# XLA:CPU flags set by the package when the user has not set XLA_FLAGS (see module docstring).
# jaxlib 0.10 routes convolutions and matmuls through YNNPACK/XNNPACK library fusions by default. Their
# convolution kernel gradients run 2-10x slower than XLA's own convolutions on an AVX-512 CPU, while
# YNNPACK's matmuls are faster than XLA's (InfoGAN's dense layers). So: YNNPACK for individual dots only, no XNNPACK fusions
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


@dataclasses.dataclass(frozen=True)
class SizeGuard:
    """A size rule on top of the per-backend default: where `holds(**sizes)`, 'auto' picks `form` on
    every backend (`rule` says when, in words)."""

    form: str
    rule: str
    holds: Callable[..., bool]


@dataclasses.dataclass(frozen=True)
class Choice:
    """One per-backend choice: the config field's forms, the form 'auto' picks per backend (the key
    'default' covers backends not named), its size guard if any, and why (docs/lab/speed.md)."""

    forms: tuple[str, ...]
    per_backend: Mapping[str, str]
    reason: str
    guard: SizeGuard | None = None

    def default(self, backend_name: str) -> str:
        """The form 'auto' picks on `backend_name`, before any size guard."""
        return self.per_backend.get(backend_name, self.per_backend["default"])


# The per-phase input gradient of a strided convolution was measured faster on the CPU only for
# inputs of at least this many pixels and channels (benchmarks/downsample_bench.py; docs/lab/speed.md).
MIN_PHASE_GRAD_PIXELS = 32 * 32
MIN_PHASE_GRAD_CHANNELS = 16
# Above this many codes the (N, K) one-hot of the EMA statistics costs more memory traffic than the scatter.
ONE_HOT_MAX_CODES = 4096

# Every per-backend choice of the package, by config field name (its last name: the field appears in
# any section of a config, `model.upsample`, `model.generator.upsample`, `quantizer.argmin_form`, ...).
# The modules that implement the forms resolve their field here (`resolve`); `forms_for` reads it for
# other platforms; `vqlatent.utils.checkpoint.IMPLEMENTATION_LEAVES` is its keys. Measurements behind
# each default: docs/lab/speed.md; the same table in words: docs/backends.md.
CHOICES: dict[str, Choice] = {
    # vqlatent.nets.layers.upsampling_layer: 4x4 / stride-2 transposed convolutions.
    "upsample": Choice(
        forms=("subpixel", "conv_transpose"),
        per_backend={"cpu": "subpixel", "default": "conv_transpose"},
        reason="XLA:CPU's kernel gradient of a strided transposed convolution is 10-80x slower than "
        "the per-phase (sub-pixel) form; cuDNN and the TPU do ConvTranspose natively.",
    ),
    # vqlatent.nets.downsample.downsampling_layer: 4x4 / stride-2 convolutions.
    "downsample": Choice(
        forms=("conv", "phase_grad"),
        per_backend={"cpu": "phase_grad", "default": "conv"},
        reason="XLA:CPU differentiates a strided convolution w.r.t. its input over a zero-dilated "
        "gradient; the per-phase input gradient skips the zeros. GPUs and TPUs do it natively.",
        guard=SizeGuard(
            form="conv",
            rule=f"inputs of fewer than {MIN_PHASE_GRAD_PIXELS} pixels or {MIN_PHASE_GRAD_CHANNELS} "
            "channels (the per-phase form is no faster there)",
            holds=lambda input_pixels, input_channels: (
                input_pixels < MIN_PHASE_GRAD_PIXELS or input_channels < MIN_PHASE_GRAD_CHANNELS
            ),
        ),
    ),
    # vqlatent.quantizers.search: the nearest-code argmin.
    "argmin_form": Choice(
        forms=("two_level", "plain"),
        per_backend={"cpu": "two_level", "default": "plain"},
        reason="XLA:CPU's variadic argmin reduction is not vectorised (two levels of min are); "
        "GPUs and TPUs reduce argmin natively and the two-level reshape pads badly on TPU lanes.",
    ),
    # vqlatent.quantizers.search: the precision of the x.e matmul of the distances.
    "distance_precision": Choice(
        forms=("highest", "high", "default"),
        per_backend={"default": "highest"},
        reason="TF32 / one bf16 pass moves x.e by about 1e-3 |x||e| and changes the nearest code of "
        "near-ties, so codes would depend on the backend; 'high' and 'default' are there to measure.",
    ),
    # vqlatent.quantizers.ema: the EMA cluster statistics n and dw.
    "ema_statistics": Choice(
        forms=("segment_sum", "one_hot"),
        per_backend={"cpu": "segment_sum", "default": "one_hot"},
        reason="A one-hot matmul runs on the GPU's and TPU's matrix units instead of serialised "
        "atomic adds; on the CPU the scatter-add is over 100x faster.",
        guard=SizeGuard(
            form="segment_sum",
            rule=f"more than {ONE_HOT_MAX_CODES} codes (the (N, K) one-hot costs more memory traffic)",
            holds=lambda num_codes: num_codes > ONE_HOT_MAX_CODES,
        ),
    ),
}

# `jax.export` platform names -> `jax.default_backend()` names (the keys of `Choice.per_backend`).
PLATFORM_BACKENDS: dict[str, str] = {"cpu": "cpu", "cuda": "gpu", "rocm": "gpu", "gpu": "gpu", "tpu": "tpu"}

# Set by `resolving_for`: the backend `default_backend()` reports instead of JAX's.
_backend_override: str | None = None


def backend_of_platform(platform: str) -> str:
    """'cuda' / 'rocm' / 'gpu' -> 'gpu', 'tpu' -> 'tpu', 'cpu' -> 'cpu'; ValueError for others."""
    if platform not in PLATFORM_BACKENDS:
        raise ValueError(f"Unknown platform {platform!r}; choose one of {sorted(PLATFORM_BACKENDS)}.")
    return PLATFORM_BACKENDS[platform]


def forms_for(platform: str) -> dict[str, str]:
    """{config field name: the form 'auto' picks on `platform`} ('cuda' and 'tpu' as `jax.export`
    names them, or a backend name).

    E.g. `forms_for('cuda')['upsample'] == 'conv_transpose'` while 'auto' is 'subpixel' on the CPU.
    These are the per-backend defaults of `CHOICES`, before the size guards (the EMA statistics of
    more than `ONE_HOT_MAX_CODES` codes, the per-phase downsampling of small layers), which need
    the sizes: `resolve` applies them (and `vqlatent.lowering.force_forms` through it).
    """
    name = backend_of_platform(platform)
    return {field: choice.default(name) for field, choice in CHOICES.items()}


@contextlib.contextmanager
def resolving_for(platform: str) -> Iterator[str]:
    """Within the block `default_backend()`, hence `resolve(..., 'auto', ...)`, answers for `platform`.

    Only for Python that resolves forms when it runs (e.g. `resolve('ema_statistics', 'auto', num_codes=K)`):
    jax reuses a function's trace for equal arguments (a jitted function with a static model keeps the
    forms of its first trace), so to lower a program for another platform write the forms into its
    config instead (`forms_for`, `vqlatent.lowering.force_forms`). Yields the backend name.
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


def resolve(field: str, value: str, **sizes: int) -> str:
    """`value`, or for `'auto'` the form `CHOICES` names for this backend (and these sizes).

    Args:
      field: the config field as a user writes it, e.g. 'model.upsample' (for the error message);
        its last name is the `CHOICES` key.
      value: the configured value: one of the field's forms, or 'auto' ('auto' on every backend
        the table's default; a form: that form everywhere).
      **sizes: what the field's size guard reads ('downsample': `input_pixels`, `input_channels`;
        'ema_statistics': `num_codes`); required for those fields.
    """
    choice = CHOICES[field.rsplit(".", 1)[-1]]
    if choice.guard is not None and not sizes:
        raise TypeError(f"resolve({field!r}) needs the sizes its guard reads ({choice.guard.rule}).")
    if value not in choice.forms and value != "auto":
        raise ValueError(f"Unknown {field}={value!r}; choose 'auto' or one of {list(choice.forms)}.")
    if value != "auto":
        return value
    if choice.guard is not None and choice.guard.holds(**sizes):
        return choice.guard.form
    return choice.default(default_backend())


@contextlib.contextmanager
def initializer_rng(keep_jax_default: bool = False) -> Iterator[None]:
    """The threefry implementation to initialise a model's parameters under (`with` around `init`).

    XLA:CPU compiles the partitionable threefry (`jax_threefry_partitionable`, JAX's default) of
    every random initialiser very slowly, several times slower than the classic one, which gives
    equally good random numbers; so tasks initialise under the classic one. `keep_jax_default=True`
    keeps JAX's setting instead: the one-level VQ-VAE does, because its checkpoints and results were
    made with it. Only the initial parameters depend on this choice; the training steps draw their
    numbers under JAX's setting (sharded batches draw the same numbers as one device).
    """
    import jax  # pylint: disable=g-import-not-at-top

    with jax.threefry_partitionable(keep_jax_default and jax.config.jax_threefry_partitionable):
        yield
