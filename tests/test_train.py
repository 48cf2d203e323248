"""The shared training loop with the VQ-VAE: resume, sharding, evaluation, bad input."""

import json
import os
import shutil
import socket
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest
from helpers import (
    REPO_ROOT,
    kill_after_a_checkpoint,
    load_config,
    run_steps,
    subprocess_env,
    tiny_vqvae_config,
)

from vqlatent import data as data_lib
from vqlatent import main as main_lib
from vqlatent.nets.autoencoder import check_image_shape
from vqlatent.parallel import mesh as mesh_lib
from vqlatent.trainers import loop
from vqlatent.trainers.base import make_task
from vqlatent.trainers.optim import default_optimizer_config, make_optimizer
from vqlatent.utils import checkpoint as ckpt_lib
from vqlatent.utils import errors, run_lock


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


def test_sigkill_then_rerun_resumes_bit_exactly(tmp_path, data_dir):
    steps = 400
    # Make sure the dataset is prepared before the timing-sensitive part.
    data_lib.get_spec(tiny_vqvae_config(data_dir).data)
    killed_dir, clean_dir = tmp_path / "killed", tmp_path / "clean"
    killed_at = kill_after_a_checkpoint(_main_command(killed_dir, data_dir, steps), killed_dir)
    assert killed_at < steps

    subprocess.run(
        _main_command(killed_dir, data_dir, steps),
        cwd=REPO_ROOT,
        env=subprocess_env(),
        check=True,
        capture_output=True,
    )
    subprocess.run(
        _main_command(clean_dir, data_dir, steps),
        cwd=REPO_ROOT,
        env=subprocess_env(),
        check=True,
        capture_output=True,
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
        env=subprocess_env(),
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


@pytest.mark.parametrize("name", ["vqvae", "vqvae2", "infogan"])
def test_workdir_written_before_an_implementation_field_existed_still_resumes(tmp_path, name):
    """A workdir whose config.json predates a per-backend field (model.downsample, model.upsample,
    quantizer.argmin_form, ...) is the same model: accepted. A real model change is still refused."""
    config = load_config(name)
    saved = ckpt_lib.config_to_json_dict(config)

    def drop(tree):  # The config as written before the implementation fields existed.
        if isinstance(tree, dict):
            return {k: drop(v) for k, v in tree.items() if k not in ckpt_lib.IMPLEMENTATION_LEAVES}
        return tree

    def auto_leaves(tree, prefix=""):  # Every per-backend choice: its default is 'auto'.
        if isinstance(tree, dict):
            return {leaf for k, v in tree.items() for leaf in auto_leaves(v, f"{prefix}{k}.")}
        return {prefix[:-1]} if tree == "auto" else set()

    per_backend = {key.rsplit(".", 1)[-1] for key in auto_leaves(saved)}
    assert per_backend and per_backend <= ckpt_lib.IMPLEMENTATION_LEAVES  # A new 'auto' field needs listing.
    old = drop(saved)
    assert old != saved  # Something was dropped, so the check below can fail.
    (tmp_path / "checkpoints" / "10").mkdir(parents=True)
    (tmp_path / "config.json").write_text(json.dumps(old))
    ckpt_lib.check_workdir_config(str(tmp_path), config, write=False)
    (tmp_path / "config.json").write_text(json.dumps(dict(old, model_name="pixelcnn")))
    with pytest.raises(ckpt_lib.WorkdirMismatchError, match="model_name: workdir has 'pixelcnn'"):
        ckpt_lib.check_workdir_config(str(tmp_path), config, write=False)


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


# -- checkpoints written by earlier code -----------------------------------------------


def _flat_variables(state) -> dict[str, np.ndarray]:
    variables = {"params": state.params, **state.model_state}
    return {
        "/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
        for path, v in jax.tree_util.tree_leaves_with_path(variables)
    }


@pytest.mark.parametrize("name", ["vqvae", "vqvae2"])
def test_checkpoints_written_before_the_autoencoder_merge_restore_and_evaluate_the_same(
    tmp_path, data_dir, name
):
    """tests/data/legacy/<name>: 2 steps of configs/<name>.py (shrunk) written by commit 82db423,
    before trainers/vqvae.py and vqvae2.py became trainers/autoencoder.py (see its script)."""
    source = REPO_ROOT / "tests" / "data" / "legacy" / name
    workdir = tmp_path / name
    shutil.copytree(source, workdir)
    with open(source / "overrides.json") as f:
        overrides = json.load(f)
    config = load_config(name)
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = config
        for p in parents:
            node = node[p]
        node[leaf] = value
    config.data.data_dir = data_dir
    config.mesh.data = 1  # As it was written: 8 devices would add the eval sums in another order.
    state, step = _restore_params(config, str(workdir))  # Also checks config.json: the same model.
    assert step == 2
    restored, recorded = _flat_variables(state), np.load(source / "variables.npz")
    assert sorted(restored) == sorted(recorded.files)  # Today's parameter names are the old ones.
    for key, value in restored.items():
        np.testing.assert_array_equal(value, recorded[key], err_msg=key)
    loop.evaluate_checkpoint(config, str(workdir))
    with open(source / "eval" / "metrics_00000002.json") as f:
        expected = json.load(f)
    with open(workdir / "eval" / "latest.json") as f:
        measured = json.load(f)
    for metrics in (expected, measured):
        del metrics["eval_seconds"]
    assert set(measured) - set(expected) == {"ssim"}  # The one metric added since.
    assert {k: measured[k] for k in expected} == expected  # Bit for bit: every number of the eval JSON.


# -- one run per workdir, resuming as it was trained -------------------------------------


def _hold_lock(workdir):
    """A subprocess holding `workdir`'s run lock until killed."""
    code = (
        "import sys, time; from vqlatent.utils.run_lock import WorkdirLock; "
        "WorkdirLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(600)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(workdir)],
        cwd=REPO_ROOT,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_live_run_holds_its_workdir_and_a_killed_runs_lock_is_taken_over(tmp_path, data_dir):
    workdir = tmp_path / "wd"
    holder = _hold_lock(workdir)
    try:
        with open(workdir / run_lock.LOCK_NAME) as f:
            record = json.load(f)
        assert record["pid"] == holder.pid and record["host"] == socket.gethostname()
        message = rf"Workdir .*wd is in use by PID {holder.pid} on host {socket.gethostname()}"
        with pytest.raises(run_lock.WorkdirLockedError, match=message):
            loop.train_and_evaluate(tiny_vqvae_config(data_dir), str(workdir))
        assert not (workdir / "checkpoints").exists()  # Refused before anything was written.
    finally:
        holder.kill()
        holder.wait()
    # The holder was killed: its lock file stays, naming a dead process, and is taken over.
    with open(workdir / run_lock.LOCK_NAME) as f:
        assert json.load(f)["pid"] == holder.pid
    with run_lock.WorkdirLock(str(workdir)):
        with open(workdir / run_lock.LOCK_NAME) as f:
            assert json.load(f)["pid"] == os.getpid()
        with pytest.raises(run_lock.WorkdirLockedError, match=rf"PID {os.getpid()}"):
            run_lock.WorkdirLock(str(workdir)).acquire()  # Held, even within one process.
    assert not (workdir / run_lock.LOCK_NAME).exists()  # Released at the end of the run.


def test_resuming_with_another_batch_size_is_refused(tmp_path, data_dir):
    config = tiny_vqvae_config(data_dir)
    config.num_train_steps, config.eval_every_steps = 2, 0
    loop.train_and_evaluate(config, str(tmp_path))
    config.num_train_steps, config.batch_size = 4, 32
    with pytest.raises(
        ckpt_lib.ResumeMismatchError,
        match=r"trained with batch_size=16 on 1 process\(es\); this run has batch_size=32 on 1.*"
        r"--config.batch_size=16",
    ):
        loop.train_and_evaluate(config, str(tmp_path))
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]
    # A checkpoint records what its data position counts; other process counts are refused too.
    saved = ckpt_lib.with_batching({"next_index": 2}, 16, 2)
    with pytest.raises(ckpt_lib.ResumeMismatchError, match="on 2 process"):
        ckpt_lib.check_batching(saved, 16, 1, "here")
    assert ckpt_lib.check_batching(saved, 16, 2, "here") == {"next_index": 2}
    assert ckpt_lib.check_batching({"next_index": 2}, 32, 1, "here") == {"next_index": 2}  # Older ones.


# -- errors a user can fix -------------------------------------------------------------


def test_user_errors_print_their_message_alone_and_unexpected_ones_their_traceback(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "vqlatent.main",
            "--config=configs/vqvae.py",
            f"--workdir={tmp_path}",
            "--config.model.num_downsamples=4",
            "--config.data.data_dir=" + str(tmp_path / "tfds"),
        ],
        cwd=REPO_ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ValueError: Image size 8x8 cannot be downsampled evenly by 16"), result.stderr
    assert "Traceback" not in result.stderr
    # The decision: a ValueError raised by vqlatent's code is the user's; one raised inside JAX is not.
    with pytest.raises(ValueError) as ours:
        check_image_shape((8, 8, 1), 4)
    assert errors.is_user_error(ours.value)
    with pytest.raises(ValueError) as theirs:
        jax.numpy.concatenate([])
    assert not errors.is_user_error(theirs.value)
    assert errors.is_user_error(run_lock.WorkdirLockedError("held"))
    assert not errors.is_user_error(KeyError("a bug"))
    # A config file's own ValueError (an unknown variant) is printed without ml_collections' traceback.
    result = subprocess.run(
        [sys.executable, "-m", "vqlatent.main", "--config=configs/vqvae.py:nope", f"--workdir={tmp_path}"],
        cwd=REPO_ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "Unknown config variant 'nope'; choose one of" in result.stderr


def test_gpu_deterministic_ops_flag_is_set_unless_the_user_chose(monkeypatch):
    monkeypatch.setattr(main_lib.backend, "_backend_started", lambda: False)
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    assert main_lib.set_deterministic_ops(True)
    assert os.environ["XLA_FLAGS"].split() == [
        "--xla_force_host_platform_device_count=8",
        "--xla_gpu_deterministic_ops=true",
    ]
    monkeypatch.setenv("XLA_FLAGS", "--xla_gpu_deterministic_ops=false")
    assert not main_lib.set_deterministic_ops(True)  # The user's choice stays.
    assert os.environ["XLA_FLAGS"] == "--xla_gpu_deterministic_ops=false"
    monkeypatch.delenv("XLA_FLAGS")
    assert not main_lib.set_deterministic_ops(False) and "XLA_FLAGS" not in os.environ
    assert (
        main_lib.set_deterministic_ops(True) and os.environ["XLA_FLAGS"] == "--xla_gpu_deterministic_ops=true"
    )
    assert tiny_vqvae_config("/unused").deterministic_ops  # On by default (read by vqlatent.main).


def test_constant_schedule_warms_up_linearly_then_holds_the_learning_rate():
    cfg = default_optimizer_config(1e-3)
    cfg.warmup_steps = 10
    tx = make_optimizer(cfg, num_train_steps=100)
    params = {"w": jax.numpy.zeros(())}
    state = tx.init(params)
    rates = []
    for _ in range(15):  # Adam's first update of a unit gradient is -lr (bias-corrected, eps aside).
        updates, state = tx.update({"w": jax.numpy.ones(())}, state, params)
        rates.append(-float(updates["w"]))
    np.testing.assert_allclose(rates[:10], 1e-3 * np.arange(10) / 10, rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(rates[10:], 1e-3, rtol=1e-5)


def test_lr_multipliers_scale_the_named_parameters_learning_rate_only():
    cfg = default_optimizer_config(1e-3)
    cfg.lr_multipliers = "codebook_transform=10, head=0.5"
    tx = make_optimizer(cfg, num_train_steps=100)
    zeros = jax.numpy.zeros(())
    params = {
        "quantizer": {"codebook_transform": {"kernel": zeros}, "proj": {"kernel": zeros}},
        "head": {"kernel": zeros, "bias": zeros},
    }
    state = tx.init(params)
    ones = jax.tree.map(jax.numpy.ones_like, params)
    for _ in range(3):  # Adam's update of a constant unit gradient is -lr each step (float32 rounding aside).
        updates, state = tx.update(ones, state, params)
        rates = jax.tree.map(lambda u: -float(u), updates)
        np.testing.assert_allclose(rates["quantizer"]["codebook_transform"]["kernel"], 1e-2, rtol=1e-4)
        np.testing.assert_allclose(rates["quantizer"]["proj"]["kernel"], 1e-3, rtol=1e-4)
        np.testing.assert_allclose([rates["head"]["kernel"], rates["head"]["bias"]], 5e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "spec, match",
    [
        ("codebook_transform", "positive finite"),
        ("w=-1", "positive finite"),
        ("=3", "NAME=M"),
        ("w=2,w=3", "twice"),
        ("nothere=2", "on no parameter's path.*kernel"),
    ],
)
def test_lr_multipliers_bad_input_is_refused(spec, match):
    cfg = default_optimizer_config(1e-3)
    cfg.lr_multipliers = spec
    with pytest.raises(ValueError, match=match):
        make_optimizer(cfg, num_train_steps=10).init({"w": {"kernel": jax.numpy.zeros(())}})
