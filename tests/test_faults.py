"""Faults and bad input, as a fault injector and a careful user would drive them.

Each test damages a workdir, a folder or a config the way docs/faults.md lists, and checks that
the run either recovers exactly or stops with one paragraph that says what to do, leaving every
good checkpoint as it was. Subprocesses only where a signal or an exit status is the point.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import chex
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from helpers import REPO_ROOT, checkpoint_steps, subprocess_env, tiny_vqvae_config, wait_for
from PIL import Image

from vqlatent import config_checks
from vqlatent import data as data_lib
from vqlatent.data import image_folder
from vqlatent.evaluation import metrics as metric_lib
from vqlatent.parallel import distributed
from vqlatent.trainers import loop
from vqlatent.utils import checkpoint as ckpt_lib
from vqlatent.utils import run_lock


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def _config(data_dir, steps=4):
    config = tiny_vqvae_config(data_dir)
    config.num_train_steps, config.eval_every_steps = steps, 2
    config.mesh.data = 1  # One device: runs compared bit for bit take the same reduction order.
    return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    """A workdir trained 4 steps (checkpoints 2 and 4, evaluations 2 and 4) and its final state."""
    workdir = str(tmp_path_factory.mktemp("trained") / "wd")
    state = loop.train_and_evaluate(_config(data_dir), workdir)
    return workdir, jax.device_get(state)


def _copy(trained, tmp_path):
    workdir = str(tmp_path / "wd")
    shutil.copytree(trained[0], workdir)
    return workdir


def _snapshot(directory):
    """{relative path: (size, mtime_ns)} of every file under `directory`."""
    out = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            out[os.path.relpath(path, directory)] = (os.path.getsize(path), os.stat(path).st_mtime_ns)
    return out


def _largest_file(step_dir):
    files = [os.path.join(r, n) for r, _, ns in os.walk(step_dir) for n in ns if n != ckpt_lib.RECORD_NAME]
    return max(files, key=os.path.getsize)


def _damage(step_dir, how):
    if how == "truncated":
        path = _largest_file(step_dir)
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
    elif how == "deleted":
        os.remove(_largest_file(step_dir))
    elif how == "byte_flipped":
        path = _largest_file(step_dir)
        with open(path, "r+b") as f:
            f.seek(os.path.getsize(path) // 2)
            byte = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte[0] ^ 0xFF]))
    elif how == "emptied":
        shutil.rmtree(step_dir)
        os.mkdir(step_dir)
    else:
        raise ValueError(how)


# -- verified checkpoints -------------------------------------------------------------------


@pytest.mark.parametrize("how", ["truncated", "deleted", "byte_flipped", "emptied"])
def test_verification_catches_truncated_deleted_flipped_and_empty_checkpoints(trained, tmp_path, how):
    workdir = _copy(trained, tmp_path)
    step_dir = os.path.join(workdir, "checkpoints", "4")
    assert ckpt_lib.verify(step_dir) is None
    _damage(step_dir, how)
    assert ckpt_lib.verify(step_dir) is not None
    assert ckpt_lib.verify(os.path.join(workdir, "checkpoints", "2")) is None
    # Read-only users skip it and leave it in place; the newest good one is used.
    checkpointer = ckpt_lib.Checkpointer(workdir)
    assert checkpointer.latest_step() == 2
    checkpointer.close()
    assert os.path.isdir(step_dir)


def test_damaged_newest_checkpoint_is_set_aside_and_training_resumes_exactly(trained, data_dir, tmp_path):
    workdir = _copy(trained, tmp_path)
    good = _snapshot(os.path.join(workdir, "checkpoints", "2"))
    _damage(os.path.join(workdir, "checkpoints", "4"), "byte_flipped")
    # --mode=eval (and every restore) falls back to step 2 without writing over anything.
    runner = loop.Runner(_config(data_dir), workdir)
    state, step = runner.restore_for_eval()
    assert step == 2
    # Training moves step 4 aside (nothing deleted), resumes from 2 and reaches the same state.
    state = loop.train_and_evaluate(_config(data_dir), workdir)
    chex.assert_trees_all_equal(jax.device_get(state), trained[1])
    aside = os.path.join(workdir, ckpt_lib.SET_ASIDE_DIR, "4.corrupt")
    assert ckpt_lib.verify(aside) is not None  # The damaged copy, kept as it was found.
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]
    assert _snapshot(os.path.join(workdir, "checkpoints", "2")) == good
    assert ckpt_lib.verify(os.path.join(workdir, "checkpoints", "4")) is None


def test_no_good_checkpoint_is_a_clear_error_and_nothing_is_deleted(trained, data_dir, tmp_path):
    workdir = _copy(trained, tmp_path)
    _damage(os.path.join(workdir, "checkpoints", "4"), "truncated")
    _damage(os.path.join(workdir, "checkpoints", "2"), "deleted")
    with pytest.raises(
        ckpt_lib.NoUsableCheckpointError, match=r"No usable checkpoint .*step 4: .*step 2: .*"
    ):
        loop.Runner(_config(data_dir), workdir).restore_for_eval()
    with pytest.raises(ckpt_lib.NoUsableCheckpointError, match=r"new --workdir"):
        loop.train_and_evaluate(_config(data_dir), workdir)
    assert sorted(os.listdir(os.path.join(workdir, ckpt_lib.SET_ASIDE_DIR))) == ["2.corrupt", "4.corrupt"]
    # The next run does not quietly start again from step 0 over the old evaluations.
    with pytest.raises(ckpt_lib.NoUsableCheckpointError, match=r"delete .*checkpoints_set_aside"):
        loop.train_and_evaluate(_config(data_dir), workdir)
    assert sorted(os.listdir(os.path.join(workdir, "eval"))) == sorted(os.listdir(trained[0] + "/eval"))


def test_unrecorded_checkpoint_with_non_finite_values_is_skipped(trained, data_dir, tmp_path):
    """A checkpoint without a record (older code, or killed before recording) is trusted only if
    complete and finite: NaN parameters are never restored."""
    workdir = _copy(trained, tmp_path)
    runner = loop.Runner(_config(data_dir), workdir)
    state, _ = runner.restore_for_eval()
    bad = state.replace(params=jax.tree.map(lambda x: x * np.nan, state.params))
    checkpointer = ckpt_lib.Checkpointer(workdir)
    checkpointer.save(6, bad, {"next_index": 6}, force=True)
    checkpointer.close()
    os.remove(os.path.join(workdir, "checkpoints", "6", ckpt_lib.RECORD_NAME))
    assert ckpt_lib.verify(os.path.join(workdir, "checkpoints", "6")) is None  # Complete, unrecorded.
    _, step = runner.restore_for_eval()
    assert step == 4


def test_evaluation_never_writes_non_finite_metrics_over_good_ones(trained, data_dir, tmp_path):
    workdir = _copy(trained, tmp_path)
    runner = loop.Runner(_config(data_dir), workdir)
    state, step = runner.restore_for_eval()
    latest = os.path.join(workdir, "eval", "latest.json")
    before = open(latest).read()
    nan_state = state.replace(params=jax.tree.map(lambda x: x * np.nan, state.params))
    writer = loop.MetricWriter(workdir)
    with pytest.raises(
        loop.NonFiniteEvalError, match=r"evaluation of step 4 gave .*mse=nan.*nothing was written"
    ):
        runner.evaluate(nan_state, step, writer)
    writer.close()
    assert open(latest).read() == before
    assert np.isnan(metric_lib.psnr(float("nan"))) and metric_lib.psnr(0.0) == float("inf")
    assert metric_lib.psnr(float("inf")) == float("-inf")
    assert loop.non_finite_metrics({"psnr": float("inf"), "mse": 0.0}) == {}  # A perfect reconstruction.


# -- resume refuses other data; optimizer changes resume ---------------------------------------


def test_a_refused_resume_changes_nothing_in_the_workdir(trained, data_dir, tmp_path):
    workdir = _copy(trained, tmp_path)
    before = _snapshot(workdir)
    other_data = _config(data_dir, steps=6)
    other_data.data.train_split = "train[:50%]"
    with pytest.raises(ckpt_lib.WorkdirMismatchError, match=r"other data:\n  data.train_split: workdir has"):
        loop.train_and_evaluate(other_data, workdir)
    other_batch = _config(data_dir, steps=6)
    other_batch.batch_size = 32
    with pytest.raises(ckpt_lib.ResumeMismatchError, match="batch_size=16"):
        loop.train_and_evaluate(other_batch, workdir)
    assert _snapshot(workdir) == before  # config.json, checkpoints, events: as they were.


def test_another_image_folder_is_refused_on_resume(tmp_path, data_dir):
    config = _config(data_dir)
    config.data.name, config.data.folder = "image_folder", str(tmp_path / "a")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    ckpt_lib.check_workdir_config(str(tmp_path / "wd"), config)
    (tmp_path / "wd" / "checkpoints" / "2").mkdir(parents=True)
    config.data.folder = str(tmp_path / "b")
    with pytest.raises(
        ckpt_lib.WorkdirMismatchError, match=r"data.folder: workdir has .*a', config has .*b'"
    ):
        ckpt_lib.check_workdir_config(str(tmp_path / "wd"), config, write=False)


def test_resume_with_gradient_clipping_and_adamw_starts_a_fresh_optimizer_state(trained, data_dir, tmp_path):
    workdir = _copy(trained, tmp_path)
    config = _config(data_dir, steps=6)
    config.optimizer.grad_clip_norm, config.optimizer.name = 1.0, "adamw"
    state = loop.train_and_evaluate(config, workdir)
    assert int(state.step) == 6
    fresh = loop.Runner(config, workdir).abstract_state()
    assert jax.tree.structure(state.opt_state) == jax.tree.structure(fresh.opt_state)
    assert ckpt_lib.verify(os.path.join(workdir, "checkpoints", "6")) is None


# -- disk full, SIGINT, SIGKILL during saves, the lock --------------------------------------


def test_disk_full_during_a_save_stops_with_one_paragraph_and_the_next_run_resumes(
    trained, data_dir, tmp_path, monkeypatch
):
    workdir = _copy(trained, tmp_path)
    save = ocp.CheckpointManager.save

    def full_disk(self, step, *args, **kwargs):
        if step == 6:
            os.makedirs(os.path.join(self.directory, f"{step}.orbax-checkpoint-tmp-1"), exist_ok=True)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.directory))
        return save(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", full_disk)
    with pytest.raises(
        ckpt_lib.CheckpointSaveError,
        match=r"step 6 to .*checkpoints failed: No space left on device\. That filesystem has .* MB free; "
        r"a checkpoint here takes about .* MB.* resumes from step 4",
    ):
        loop.train_and_evaluate(_config(data_dir, steps=8), workdir)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]  # No partial save left.
    assert not os.path.exists(os.path.join(workdir, "eval", "metrics_00000006.json"))  # Nothing past it.
    monkeypatch.setattr(ocp.CheckpointManager, "save", save)
    assert int(loop.train_and_evaluate(_config(data_dir, steps=6), workdir).step) == 6


def _main(workdir, data_dir, *extra):
    return [
        sys.executable,
        "-m",
        "vqlatent.main",
        "--config=configs/vqvae.py",
        f"--workdir={workdir}",
        f"--config.data.data_dir={data_dir}",
        "--config.model.num_hiddens=16",
        "--config.model.num_residual_hiddens=8",
        "--config.model.num_residual_layers=1",
        "--config.model.embedding_dim=8",
        "--config.quantizer.embedding_dim=8",
        "--config.quantizer.num_embeddings=16",
        "--config.batch_size=16",
        "--config.eval_every_steps=0",
        "--config.progress_bar=False",
        *extra,
    ]


def _popen_as_from_a_terminal(args):
    """The run with Ctrl-C's default disposition (a background or CI shell may have it ignored,
    and an ignored signal is inherited; a handler is not)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen(args, cwd=REPO_ROOT, env=subprocess_env(), stderr=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGINT, previous)


def test_ctrl_c_finishes_the_step_saves_and_exits(tmp_path, data_dir):
    data_lib.get_spec(_config(data_dir).data)  # Prepared before the timed part.
    workdir = str(tmp_path / "wd")
    args = _main(workdir, data_dir, "--config.num_train_steps=100000", "--config.checkpoint_every_steps=5")
    proc = _popen_as_from_a_terminal(args)
    assert wait_for(lambda: 5 in checkpoint_steps(workdir), proc), "no checkpoint before the deadline"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    saved = max(checkpoint_steps(workdir))
    assert f"Interrupted (Ctrl-C): step {saved} was finished and saved" in stderr
    assert ckpt_lib.verify(os.path.join(workdir, "checkpoints", str(saved))) is None


def test_a_second_ctrl_c_exits_at_once(monkeypatch):
    """The handler itself (two signals sent back to back reach Python as one, so a subprocess
    cannot show this deterministically): the first asks for a save, the second exits with 130."""
    exits = []
    monkeypatch.setattr(distributed.os, "_exit", exits.append)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # As in a terminal.
    with distributed.PreemptionNotice() as notice:
        assert signal.getsignal(signal.SIGINT) == notice._handle_interrupt  # pylint: disable=protected-access
        assert not notice.reached(1)
        notice._handle_interrupt(signal.SIGINT, None)  # pylint: disable=protected-access
        assert notice.interrupted and notice.reached(2) and exits == []
        notice._handle_interrupt(signal.SIGINT, None)  # pylint: disable=protected-access
        assert exits == [130]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Restored.
    signal.signal(signal.SIGINT, previous)


def _in_a_save(workdir):
    """Whether orbax is writing a checkpoint (its temporary directory exists)."""
    directory = os.path.join(workdir, "checkpoints")
    return os.path.isdir(directory) and any(".orbax-checkpoint-tmp" in n for n in os.listdir(directory))


def test_sigkill_during_saves_again_and_again_then_resumes_bit_exactly(tmp_path, data_dir):
    data_lib.get_spec(_config(data_dir).data)
    steps = 40
    workdir = str(tmp_path / "killed")
    args = _main(workdir, data_dir, f"--config.num_train_steps={steps}", "--config.checkpoint_every_steps=1")
    for kill in range(3):
        proc = subprocess.Popen(
            args, cwd=REPO_ROOT, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        target = max(checkpoint_steps(workdir), default=0) + 3 + kill  # Each kill a little later in the run.
        wait_for(
            lambda t=target: max(checkpoint_steps(workdir), default=0) >= t and _in_a_save(workdir), proc
        )
        proc.kill()
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    subprocess.run(args, cwd=REPO_ROOT, env=subprocess_env(), check=True, capture_output=True)
    config = _config(data_dir, steps)
    config.eval_every_steps = 0
    config.model.num_residual_layers = 1
    clean = loop.train_and_evaluate(config, str(tmp_path / "clean"))
    resumed, step = loop.Runner(config, workdir).restore_for_eval()
    assert step == steps
    chex.assert_trees_all_equal(jax.device_get(resumed), jax.device_get(clean))


def test_a_stale_lock_whose_pid_was_reused_is_taken_over(tmp_path):
    workdir = tmp_path / "wd"
    workdir.mkdir()
    live = os.getppid()  # A live process that does not hold the lock (as a reused PID would be).
    record = {
        "host": socket.gethostname(),
        "pid": live,
        "started": time.time(),
        "boot_id": run_lock.boot_id(),
    }
    if run_lock.process_start_ticks(live) is None:
        pytest.skip("no /proc here: a live PID is taken as the owner")
    # The lock's writer started at another time than the live process now holding that PID.
    (workdir / run_lock.LOCK_NAME).write_text(
        json.dumps(dict(record, pid_start=run_lock.process_start_ticks(live) + 1))
    )
    with run_lock.WorkdirLock(str(workdir)):
        written = json.loads((workdir / run_lock.LOCK_NAME).read_text())
        assert written["pid"] == os.getpid() and written["pid_start"] == run_lock.process_start_ticks(
            os.getpid()
        )
    # The same PID with its real start time is its live owner: refused (flock not honoured).
    (workdir / run_lock.LOCK_NAME).write_text(
        json.dumps(dict(record, pid_start=run_lock.process_start_ticks(live)))
    )
    with pytest.raises(run_lock.WorkdirLockedError, match=rf"in use by PID {live}"):
        run_lock.WorkdirLock(str(workdir)).acquire()


# -- image folders ----------------------------------------------------------------------------


def _folder(root, n=12):
    for i in range(n):
        os.makedirs(root / str(i % 2), exist_ok=True)
        Image.fromarray(np.full((8, 8), i * 10, np.uint8)).save(root / str(i % 2) / f"{i:02d}.png")


def _data_cfg(folder, out, **kw):
    cfg = data_lib.default_config()
    cfg.update(
        dict(name="image_folder", folder=str(folder), data_dir=str(out), num_workers=1, eval_fraction=0.25)
    )
    cfg.update(kw)
    return cfg


def _read(cfg):
    dataset = data_lib.open_dataset(cfg)
    return {s: dataset.split(s).read(range(len(dataset.split(s)))) for s in ("train", "test")}


def test_symlink_loops_and_duplicate_links_add_no_images(tmp_path):
    _folder(tmp_path / "in")
    os.symlink("..", tmp_path / "in" / "0" / "loop")  # Back up the tree: a cycle.
    os.symlink(tmp_path / "in" / "1", tmp_path / "in" / "0" / "again")  # The same images twice.
    splits = _read(_data_cfg(tmp_path / "in", tmp_path / "out"))
    assert len(splits["train"]["image"]) + len(splits["test"]["image"]) == 12
    images = [x.tobytes() for s in splits.values() for x in s["image"]]
    assert len(set(images)) == 12  # Each file once, so no test image in train.
    for split in splits.values():  # Labels of their own class folder.
        np.testing.assert_array_equal(split["label"], (split["image"][:, 0, 0, 0] // 10) % 2)


def test_a_file_in_both_train_and_test_is_refused(tmp_path):
    _folder(tmp_path / "in" / "train")
    os.makedirs(tmp_path / "in" / "test" / "0")
    os.symlink(tmp_path / "in" / "train" / "0" / "00.png", tmp_path / "in" / "test" / "0" / "x.png")
    with pytest.raises(
        data_lib.DataError, match=r"1 file\(s\) .* in both splits.*train/0/00.png and test/0/x.png"
    ):
        data_lib.get_spec(_data_cfg(tmp_path / "in", tmp_path / "out"))


def test_a_changed_image_is_prepared_again(tmp_path):
    _folder(tmp_path / "in")
    cfg = _data_cfg(tmp_path / "in", tmp_path / "out")
    before = _read(cfg)
    target = tmp_path / "in" / "0" / "00.png"
    stat = os.stat(target)
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(target)  # Fixed: same name and size, new pixels.
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    after = _read(cfg)
    all_before = sorted(int(x[0, 0, 0]) for s in before.values() for x in s["image"])
    all_after = sorted(int(x[0, 0, 0]) for s in after.values() for x in s["image"])
    assert 0 in all_before and 0 not in all_after and 255 in all_after
    # Touched but the same bytes: not prepared again.
    directory = image_folder.prepared_dir(cfg)
    manifest = os.stat(os.path.join(directory, "manifest.json")).st_mtime_ns
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2 * 10**9))
    _read(cfg)
    assert os.stat(os.path.join(directory, "manifest.json")).st_mtime_ns == manifest


def test_an_image_folder_without_a_folder_is_refused(tmp_path):
    cfg = _data_cfg("", tmp_path / "out")
    cfg.folder = None
    with pytest.raises(data_lib.DataError, match=r"needs the folder of images: set --config.data.folder=DIR"):
        data_lib.get_spec(cfg)


# -- bad input: one paragraph each ----------------------------------------------------------


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("keep_checkpoints", 0, r"config.keep_checkpoints=0 must be an integer >= 1"),
        ("keep_checkpoints", -1, r"config.keep_checkpoints=-1 must be an integer >= 1"),
        ("checkpoint_every_steps", 0, r"config.checkpoint_every_steps=0 must be an integer >= 1"),
        ("log_every_steps", 0, r"config.log_every_steps=0 must be an integer >= 1"),
        ("num_train_steps", -5, r"config.num_train_steps=-5 must be an integer >= 0"),
        ("quantizer.num_embeddings", 1, r"config.quantizer.num_embeddings=1 must be an integer >= 2"),
        (
            "optimizer.learning_rate",
            -1.0,
            r"config.optimizer.learning_rate=-1.0 must be a finite number in \(0",
        ),
        ("data.eval_fraction", 1.0, r"config.data.eval_fraction=1.0 must be a number in \[0, 1\)"),
        ("data.name", "image_folder", r"needs the folder of images"),
        ("data.folder", "/nonexistent/folder", None),  # Only checked for image_folder: passes.
        ("batch_size", 0, r"config.batch_size=0 must be an integer >= 1"),
    ],
)
def test_bad_config_values_are_refused_before_any_work(tmp_path, data_dir, field, value, message):
    config = _config(data_dir)
    node = config
    *parents, leaf = field.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value
    if message is None:
        config_checks.check_config(config, str(tmp_path / "wd"))
        return
    with pytest.raises(config_checks.ConfigError, match=message):
        loop.train_and_evaluate(config, str(tmp_path / "wd"))
    assert not (tmp_path / "wd").exists()  # Refused before the workdir was created.


def test_a_workdir_that_is_a_file_is_refused(tmp_path, data_dir):
    (tmp_path / "file").write_text("")
    with pytest.raises(config_checks.ConfigError, match=r"--workdir=.*file is a file, not a directory"):
        loop.train_and_evaluate(_config(data_dir), str(tmp_path / "file"))
    with pytest.raises(config_checks.ConfigError, match=r"cannot be created: .*file is a file"):
        loop.train_and_evaluate(_config(data_dir), str(tmp_path / "file" / "wd"))


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["--config.batch_sise=8"],
            r"--config.batch_sise: .* has no field 'batch_sise' \(did you mean batch_size\?\)",
        ),
        (["--config=configs/nope.py"], r"--config=configs/nope.py: there is no config file configs/nope.py"),
        (["--config.num_train_steps=-5"], r"config.num_train_steps=-5 must be an integer >= 0"),
    ],
)
def test_usage_errors_are_one_paragraph_with_a_non_zero_exit(tmp_path, args, message):
    command = [
        sys.executable,
        "-m",
        "vqlatent.main",
        "--config=configs/vqvae.py",
        f"--workdir={tmp_path / 'wd'}",
    ]
    result = subprocess.run(
        command + args, cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True
    )
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line and not line.startswith("I1")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "wd").exists()
