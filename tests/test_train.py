"""The shared training loop with the VQ-VAE: resume, sharding, evaluation, bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import chex
import jax
import numpy as np
import pytest
from helpers import REPO_ROOT, run_steps, tiny_vqvae_config

from vqlatent import data as data_lib
from vqlatent.parallel import mesh as mesh_lib
from vqlatent.trainers import loop
from vqlatent.trainers.base import make_task
from vqlatent.utils import checkpoint as ckpt_lib


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def _restore_params(config, workdir):
    state, step = loop.Runner(config, workdir).restore_for_eval()
    return jax.device_get(state), step


# -- training end to end -------------------------------------------------------


def test_train_writes_checkpoints_eval_json_png_and_resumes_a_finished_run(tmp_path, data_dir, monkeypatch):
    config = tiny_vqvae_config(data_dir)
    workdir = str(tmp_path / "wd")
    train_scalars = {}
    write_scalars = loop.MetricWriter.scalars

    def recording_scalars(self, step, scalars, prefix=""):
        if prefix == "train/":
            train_scalars[step] = dict(scalars)
        write_scalars(self, step, scalars, prefix)

    monkeypatch.setattr(loop.MetricWriter, "scalars", recording_scalars)
    state = loop.train_and_evaluate(config, workdir)
    assert int(state.step) == config.num_train_steps
    assert sorted(train_scalars) == [2, 4, 6]  # Fetched every log_every_steps=2 steps.
    for scalars in train_scalars.values():
        assert np.isfinite(scalars["loss"]) and scalars["steps_per_second"] > 0
        assert 0 <= scalars["data_wait_fraction"] <= 1
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["4", "6"]  # keep_checkpoints=2
    with open(os.path.join(workdir, "eval", "latest.json")) as f:
        metrics = json.load(f)
    assert metrics["step"] == 6 and metrics["num_examples"] == 300  # The whole digits test split.
    assert 0 < metrics["mse"] < 1 and metrics["psnr"] == pytest.approx(10 * np.log10(1 / metrics["mse"]))
    assert 1 <= metrics["codes_used"] <= 16 and sum(metrics["code_counts"]) == 300 * 4 * 4
    assert metrics["compression_factor"] == pytest.approx(
        8 * 8 * 8 / (4 * 4 * 4)
    )  # 8-bit 8x8 / 16 codes of 4 bits.
    assert os.path.getsize(os.path.join(workdir, "images", "reconstructions.png")) > 100
    assert os.listdir(os.path.join(workdir, "tensorboard"))
    # --mode=eval on the finished workdir reproduces the same numbers.
    again = loop.evaluate_checkpoint(config, workdir)
    assert again["mse"] == pytest.approx(metrics["mse"], rel=1e-6)
    # Training again with more steps resumes from step 6 instead of starting over.
    config.num_train_steps = 8
    state = loop.train_and_evaluate(config, workdir)
    assert int(state.step) == 8


def test_loss_goes_down_on_real_digits(tmp_path, data_dir):
    config = tiny_vqvae_config(data_dir)
    config.num_train_steps = 150
    config.eval_every_steps = 0
    config.checkpoint_every_steps = 1000
    config.optimizer.learning_rate = 1e-3
    runner = loop.Runner(config, str(tmp_path))
    before = runner.evaluate(runner.initial_state(), 0, loop.MetricWriter(str(tmp_path / "a")))
    state = loop.train_and_evaluate(config, str(tmp_path / "b"))
    after = runner.evaluate(state, 150, loop.MetricWriter(str(tmp_path / "c")))
    assert after["mse"] < 0.5 * before["mse"], (before["mse"], after["mse"])


# -- exact resume after SIGKILL ------------------------------------------------


def _main_command(workdir, data_dir, steps, extra=()):
    return [
        sys.executable,
        "-m",
        "vqlatent.main",
        "--config=configs/vqvae.py",
        f"--workdir={workdir}",
        f"--config.data.data_dir={data_dir}",
        f"--config.num_train_steps={steps}",
        "--config.checkpoint_every_steps=5",
        "--config.eval_every_steps=0",
        "--config.log_every_steps=5",
        "--config.progress_bar=False",
        "--config.model.num_hiddens=16",
        "--config.model.num_residual_hiddens=8",
        "--config.batch_size=16",
        *extra,
    ]


def _env():
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"  # One process, one device.
    env["PYTHONPATH"] = str(REPO_ROOT)
    return env


def test_sigkill_then_rerun_resumes_bit_exactly(tmp_path, data_dir):
    steps = 400
    # Make sure the dataset is prepared before the timing-sensitive part.
    data_lib.get_spec(tiny_vqvae_config(data_dir).data)
    killed_dir, clean_dir = tmp_path / "killed", tmp_path / "clean"
    proc = subprocess.Popen(
        _main_command(killed_dir, data_dir, steps),
        cwd=REPO_ROOT,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    ckpt_dir = killed_dir / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline:  # Wait for a committed checkpoint past the first.
        steps_saved = [int(n) for n in os.listdir(ckpt_dir) if n.isdigit()] if ckpt_dir.exists() else []
        if any(s >= 10 for s in steps_saved) or proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = max(int(n) for n in os.listdir(ckpt_dir) if n.isdigit())
    assert 10 <= killed_at < steps

    subprocess.run(
        _main_command(killed_dir, data_dir, steps), cwd=REPO_ROOT, env=_env(), check=True, capture_output=True
    )
    subprocess.run(
        _main_command(clean_dir, data_dir, steps), cwd=REPO_ROOT, env=_env(), check=True, capture_output=True
    )
    config = tiny_vqvae_config(data_dir, None)
    config.model.num_hiddens, config.model.num_residual_hiddens = 16, 8
    config.model.num_residual_layers, config.model.embedding_dim = 2, 16
    config.quantizer.embedding_dim, config.quantizer.num_embeddings = 16, 64
    config.mesh.data = 1
    resumed, step_a = _restore_params(config, str(killed_dir))
    clean, step_b = _restore_params(config, str(clean_dir))
    assert step_a == step_b == steps
    chex.assert_trees_all_equal(resumed, clean)  # Bit for bit: params, optimizer, EMA state, RNG.


# -- sharding ------------------------------------------------------------------


@pytest.mark.parametrize("quantizer", ["vq_ema", "vq"])
def test_sharded_step_equals_single_device_step(data_dir, quantizer):
    assert jax.device_count() == 8, "conftest.py forces 8 CPU devices"
    config = tiny_vqvae_config(data_dir, f"digits,quantizer={quantizer}")
    spec = data_lib.get_spec(config.data)
    task = make_task(config, spec)
    it = data_lib.make_train_iterator(config.data, global_batch_size=16, seed=0)
    batches = [next(it) for _ in range(3)]
    one_state, one_metrics = run_steps(task, mesh_lib.make_mesh(1), batches)
    eight_state, eight_metrics = run_steps(task, mesh_lib.make_mesh(8), batches)
    chex.assert_trees_all_close(eight_state, one_state, atol=1e-5, rtol=1e-5)
    chex.assert_trees_all_close(eight_metrics, one_metrics, atol=1e-5, rtol=1e-5)
    if quantizer == "vq_ema":  # The EMA statistics moved, and moved the same way.
        assert int(eight_state.model_state["vq_ema"]["quantizer"]["counter"]) == 3


# -- bad input -----------------------------------------------------------------


def test_misspelt_config_field_is_an_error(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "vqlatent.main",
            "--config=configs/vqvae.py",
            f"--workdir={tmp_path}",
            "--config.batch_sise=8",
        ],
        cwd=REPO_ROOT,
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "batch_sise" in result.stderr
    assert not (tmp_path / "checkpoints").exists()


def test_workdir_of_another_model_is_refused(tmp_path, data_dir):
    config = tiny_vqvae_config(data_dir)
    config.num_train_steps = 2
    loop.train_and_evaluate(config, str(tmp_path))
    before = sorted(os.listdir(tmp_path / "checkpoints"))
    config.quantizer.num_embeddings = 32
    with pytest.raises(
        ckpt_lib.WorkdirMismatchError, match=r"quantizer.num_embeddings: workdir has 16, config has 32"
    ):
        loop.train_and_evaluate(config, str(tmp_path))
    assert sorted(os.listdir(tmp_path / "checkpoints")) == before
    with open(tmp_path / "config.json") as f:
        assert json.load(f)["quantizer"]["num_embeddings"] == 16  # Not overwritten.


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("quantizer.num_embeddings", 0, "num_embeddings"),
        ("quantizer.embedding_dim", 4, r"quantizer.embedding_dim=4 but model.embedding_dim=8"),
        ("model.num_downsamples", 4, r"8x8 cannot be downsampled evenly by 16"),
        ("batch_size", 12, r"batch_size=12 is not divisible by the 8 devices"),
        ("model_name", "vqvea", r"Unknown config.model_name='vqvea'"),
    ],
)
def test_bad_config_values_are_clear_errors(tmp_path, data_dir, field, value, message):
    config = tiny_vqvae_config(data_dir)
    node = config
    *parents, leaf = field.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value
    with pytest.raises(ValueError, match=message):
        loop.train_and_evaluate(config, str(tmp_path))


def test_dataset_not_available_offline_names_the_prepare_command(tmp_path, data_dir):
    config = tiny_vqvae_config(data_dir, "cifar10")
    config.data.data_dir = str(tmp_path / "empty_tfds")
    with pytest.raises(
        data_lib.DatasetNotPreparedError, match=r"python -m vqlatent.data.prepare --dataset=cifar10"
    ):
        loop.train_and_evaluate(config, str(tmp_path / "wd"))


def test_eval_without_checkpoint_is_a_clear_error(tmp_path, data_dir):
    with pytest.raises(FileNotFoundError, match="No checkpoint .* train first"):
        loop.evaluate_checkpoint(tiny_vqvae_config(data_dir), str(tmp_path))
