"""vqlatent.backend: per-backend choices, and the XLA:CPU flags the command line sets (importing the
package sets none)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from vqlatent import backend

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PRINT_FLAGS = "import vqlatent.main, os; print(repr(os.environ.get('XLA_FLAGS', '<unset>')))"


def _flags_after_import(env_changes: dict[str, str | None], code: str = _PRINT_FLAGS) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "VQLATENT_XLA_FLAGS")}
    env.update({k: v for k, v in env_changes.items() if v is not None})
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return eval(done.stdout.strip().splitlines()[-1])  # noqa: S307 - a literal printed by our child.


def test_the_command_line_sets_the_cpu_flags_when_the_user_set_none():
    assert _flags_after_import({}) == " ".join(backend.CPU_XLA_FLAGS)


def test_importing_the_package_or_its_quantizers_changes_no_environment_variable():
    code = (
        # Importing jax itself sets TPU_SKIP_MDS_QUERY and TF_CPP_MIN_LOG_LEVEL: vqlatent adds nothing.
        "import os, json, jax, flax, optax; before = dict(os.environ)\n"
        "import vqlatent, vqlatent.quantizers, vqlatent.nets.autoencoder, vqlatent.models\n"
        "print(repr(json.dumps({'changed': sorted(k for k in set(before) | set(os.environ) "
        "if before.get(k) != os.environ.get(k))})))"
    )
    assert _flags_after_import({}, code) == '{"changed": []}'
    # The documented call adds them, as `python -m vqlatent.main` and `vqlatent.load` do.
    explicit = "from vqlatent import backend; import os; backend.set_cpu_xla_flags(); print(repr(os.environ['XLA_FLAGS']))"
    assert _flags_after_import({}, explicit) == " ".join(backend.CPU_XLA_FLAGS)


def test_the_users_xla_flags_win_even_when_empty():
    assert _flags_after_import({"XLA_FLAGS": "--xla_cpu_enable_fast_math=false"}) == (
        "--xla_cpu_enable_fast_math=false"
    )
    assert _flags_after_import({"XLA_FLAGS": ""}) == ""


def test_opt_out_and_a_started_backend_leave_xla_flags_alone():
    assert _flags_after_import({"VQLATENT_XLA_FLAGS": "0"}) == "<unset>"
    started_first = "import jax, os; jax.devices(); import vqlatent.main; print(repr(os.environ.get('XLA_FLAGS', '<unset>')))"
    assert _flags_after_import({}, started_first) == "<unset>"


def test_the_flags_keep_convolutions_exact():
    """A convolution and its kernel gradient agree (float32 rounding) with and without the flags."""
    code = (
        "import vqlatent.main, jax, jax.numpy as jnp, numpy as np\n"
        "x = jax.random.normal(jax.random.key(0), (4, 12, 12, 8)); w = jax.random.normal(jax.random.key(1), (3, 3, 8, 16))\n"
        "f = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))\n"
        "y, dw = f(x, w), jax.grad(lambda w: jnp.sum(f(x, w) ** 2))(w)\n"
        "print(repr(repr(np.concatenate([np.ravel(y), np.ravel(dw)]).tolist())))"
    )
    with_flags = eval(_flags_after_import({}, code))  # noqa: S307 - a list literal printed by our child.
    without = eval(_flags_after_import({"VQLATENT_XLA_FLAGS": "0"}, code))  # noqa: S307
    scale = max(abs(v) for v in without)
    assert max(abs(a - b) for a, b in zip(with_flags, without)) <= 1e-5 * scale


def test_resolve_picks_the_backend_default_and_rejects_unknown_values(monkeypatch):
    monkeypatch.setattr(backend, "default_backend", lambda: "cpu")
    assert backend.resolve("model.upsample", "auto") == "subpixel"
    monkeypatch.setattr(backend, "default_backend", lambda: "tpu")
    assert backend.resolve("model.upsample", "auto") == "conv_transpose"
    assert backend.resolve("model.upsample", "subpixel") == "subpixel"
    with pytest.raises(ValueError, match=r"model.upsample='bilinear'.*'auto'"):
        backend.resolve("model.upsample", "bilinear")


def test_the_size_guards_override_every_backends_default(monkeypatch):
    for name in ("cpu", "gpu", "tpu"):
        monkeypatch.setattr(backend, "default_backend", lambda name=name: name)
        big = backend.MIN_PHASE_GRAD_PIXELS
        small = {"input_pixels": big - 1, "input_channels": 64}
        assert backend.resolve("model.downsample", "auto", **small) == "conv"
        assert backend.resolve("model.downsample", "phase_grad", **small) == "phase_grad"  # Forced.
        wide = {"input_pixels": big, "input_channels": backend.MIN_PHASE_GRAD_CHANNELS}
        assert backend.resolve("model.downsample", "auto", **wide) == (
            "phase_grad" if name == "cpu" else "conv"
        )
        many = backend.ONE_HOT_MAX_CODES + 1
        assert backend.resolve("quantizer.ema_statistics", "auto", num_codes=many) == "segment_sum"
        assert backend.resolve("quantizer.ema_statistics", "one_hot", num_codes=many) == "one_hot"
    with pytest.raises(TypeError, match="needs the sizes"):
        backend.resolve("quantizer.ema_statistics", "auto")


def test_every_choice_has_its_forms_a_default_and_a_reason():
    for field, choice in backend.CHOICES.items():
        assert "default" in choice.per_backend and choice.reason, field
        assert set(choice.per_backend.values()) <= set(choice.forms), field
        assert choice.guard is None or choice.guard.form in choice.forms, field


def test_initializer_rng_uses_the_classic_threefry_unless_told_to_keep_jaxs():
    import jax  # pylint: disable=g-import-not-at-top

    default = jax.config.jax_threefry_partitionable
    with backend.initializer_rng():
        assert jax.config.jax_threefry_partitionable is False
    with backend.initializer_rng(keep_jax_default=True):
        assert jax.config.jax_threefry_partitionable == default
    assert jax.config.jax_threefry_partitionable == default
