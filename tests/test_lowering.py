"""Every hot program lowered for CUDA and TPU on this CPU-only machine (`vqlatent.lowering`).

Programs, each with the per-backend forms GPUs and TPUs pick (`backend.forms_for('cuda')`, written
into the config by `lowering.force_forms`) and the shardings of the loop's 8-device mesh
(`tests/conftest.py`; the batch split over `data`, the state replicated or fsdp-sharded):

* the train step (`Runner.train_step_fn`, state donated) in float32 and bfloat16 of: the VQ-VAE
  with every preset of `vqlatent.configs.QUANTIZER_PRESETS`; the VQ-VAE-2 with 2 and 3 levels
  (the latter with fsdp-sharded state); the class-conditional PixelCNN prior with attention and
  the prior conditioned on the level above; InfoGAN with the invariant term; the classifier;
* the eval step (`Runner._eval_step`) of each family, in both dtypes;
* code extraction (the jitted encoder of `vqlatent.codes.extract`) and decoding of both VQ-VAE-2s;
* the cached and the plain PixelCNN samplers of both priors, in both dtypes;
* InfoGAN's generator (G(z, c) from a key).

For each: it lowers for ('cuda', 'tpu') over 8 devices; no custom call only XLA:CPU has (in fact
none at all; only the partitioner's sharding annotations and the top-k composite would pass); under bfloat16 every floating-point leaf of the
state (parameters, optimizer moments, EMA codebooks and their statistics, BatchNorm averages) is
float32 in and out, while the program computes in bfloat16; and the accelerators' forms are
used: transposed convolutions (input dilation) for the 2x upsamplings, the strided convolution's
own input gradient, one argmin over all K codes, and the EMA statistics as a matmul with no
scatter (each contrasted once with the CPU's forms, whose programs show the other pattern).

What this cannot show is what needs the device: the values, the speed and the memory there.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import load_config

from vqlatent import backend, configs, lowering
from vqlatent import data as data_lib
from vqlatent.codes import layout
from vqlatent.codes.dataset import CodesDatasetSpec
from vqlatent.data.device import images_to_float
from vqlatent.data.sources import DatasetSpec
from vqlatent.infogan import latents as ig
from vqlatent.parallel import mesh as mesh_lib
from vqlatent.priors import sampling
from vqlatent.trainers import loop

PLATFORMS = lowering.DEFAULT_PLATFORMS
DTYPES = ("float32", "bfloat16")
BATCH = 16  # Two examples per device of the 8-device mesh.
DIGITS = DatasetSpec(image_shape=(8, 8, 1), num_classes=10, num_train=64, num_eval=64)
NUM_CODES = 64  # The smallest K whose CPU argmin form ('two_level') differs from the plain one.


# -- building the programs ------------------------------------------------------------------------
def _runner(config, spec, monkeypatch, tmp_path, platform="cuda"):
    """The loop's `Runner` for `config` with `platform`'s forms, on `spec` (no data is read)."""
    monkeypatch.setattr(data_lib, "get_spec", lambda data_cfg: spec)
    config = lowering.force_forms(config, platform)
    config.batch_size = config.eval_batch_size = BATCH
    if "loss" in config:
        config.loss.normalize_by_data_variance = False  # The variance would be read from the data.
    return loop.Runner(config, str(tmp_path))


def _batch(runner, eval_mode=False):
    """The abstract global batch the loop feeds (uint8 images, or code maps), split over `data`."""
    sharded = runner.data_sharded
    examples = runner.task.dummy_batch(BATCH)
    if "image" in examples:
        examples["image"] = np.zeros(examples["image"].shape, np.uint8)
    if eval_mode:
        examples["mask"] = np.ones((BATCH,), np.float32)
    return lowering.abstract(examples, sharded)


def _export_steps(runner, platforms=PLATFORMS):
    """(train step, eval step) of `runner`, exported for `platforms`."""
    state = runner.abstract_state()
    train = lowering.export(runner.train_step_fn(), state, _batch(runner), platforms=platforms)
    evaluate = lowering.export(runner._eval_step, state, _batch(runner, eval_mode=True), platforms=platforms)
    return train, evaluate


def _tiny_autoencoder(name, arg, dtype):
    config = load_config(name, arg)
    config.dtype = dtype
    config.model.update(num_hiddens=16, num_residual_hiddens=8, num_residual_layers=1)
    return config


def _vqvae2(levels, dtype):
    """configs/vqvae2.py, digits (2 levels, 8x8) or ffhq1024 (3 levels, strides (8, 2, 2), on 32x32x3)."""
    if levels == 2:
        return _tiny_autoencoder("vqvae2", "digits", dtype), DIGITS
    config = _tiny_autoencoder("vqvae2", "ffhq1024", dtype)
    for level in config.quantizer.values():
        level.update(num_embeddings=NUM_CODES, embedding_dim=8)
    return config, DatasetSpec(image_shape=(32, 32, 3), num_classes=None, num_train=64, num_eval=64)


def _prior(level, dtype):
    """configs/pixelcnn.py:mnist shrunk: the top prior class-conditional with attention after
    layer 1, the bottom prior conditioned on the top codes and the class."""
    config = load_config("pixelcnn", f"mnist,level={level}")
    config.dtype = dtype
    config.model.update(channels=8, num_layers=2, cond_channels=4, num_heads=2, head_channels=8)
    if level == "top":
        config.model.attention_layers = (1,)
    spec = CodesDatasetSpec(
        image_shape=(4, 4, 1),
        num_classes=10,
        num_train=64,
        num_eval=64,
        levels={"bottom": layout.LevelSpec((8, 8), NUM_CODES), "top": layout.LevelSpec((4, 4), NUM_CODES)},
        codes_dir="",
    )
    return config, spec


def _infogan(dtype):
    """configs/infogan.py:mnist_invariant (28x28, the invariant categorical term on) shrunk."""
    config = load_config("infogan", "mnist_invariant")
    config.dtype = dtype
    m = config.model
    m.latent.noise_dim = 8
    m.generator.update(fc_features=(32,), base_shape=(7, 7, 8), upconv_features=(8,))
    m.discriminator.update(conv_features=(8, 16), fc_features=(32,))
    m.q.hidden = 16
    config.traversal.measure_rows_per_batch = 2
    assert config.info.augment.enabled
    return config, DatasetSpec(image_shape=(28, 28, 1), num_classes=10, num_train=64, num_eval=64)


def _classifier(dtype):
    config = load_config("classifier", "digits")
    config.dtype = dtype
    config.model.update(conv_features=(8, 16), dense_features=16)
    return config, DIGITS


# -- what every program must show ---------------------------------------------------------------
def _float_leaves(exported, which):
    """{path: dtype} of the floating-point leaves of the state (input 0 / output 0)."""
    tree, avals = (
        (exported.in_tree, exported.in_avals) if which == "in" else (exported.out_tree, exported.out_avals)
    )
    prefix = "[0][0]" if which == "in" else "[0]"
    return {
        path: aval.dtype
        for path, aval in lowering.avals_by_path(tree, avals).items()
        if path.startswith(prefix) and jnp.issubdtype(aval.dtype, jnp.floating)
    }


def check_program(exported, dtype=None, num_devices=8):
    """Lowered for cuda and tpu over `num_devices`, no CPU-only custom call, bf16 compute if asked."""
    text = lowering.check_portable(exported, PLATFORMS)
    assert exported.nr_devices == num_devices
    assert lowering.cpu_only_custom_calls(text) == []
    # No custom call at all but the partitioner's sharding annotations (if any), and the only
    # composite is top-k (k-means initialisation, dead-code restarts), which both backends have.
    assert set(lowering.custom_call_targets(text)) <= {
        "Sharding",
        "SPMDFullToShardShape",
        "SPMDShardToFullShape",
    }
    assert set(lowering.composite_names(text)) <= {"chlo.top_k"}
    if dtype == "bfloat16":
        assert "bf16" in text, "a bfloat16 program computes nothing in bfloat16"
    elif dtype == "float32":
        assert "bf16" not in text
    return text


def check_train_step(exported, dtype):
    """`check_program`, and the state's floating-point leaves float32 in and out (and unchanged)."""
    text = check_program(exported, dtype)
    state_in, state_out = _float_leaves(exported, "in"), _float_leaves(exported, "out")
    assert state_in and set(state_in.values()) == {jnp.dtype(jnp.float32)}, state_in
    assert state_out == {path.replace("[0][0]", "[0]", 1): d for path, d in state_in.items()}
    return text


def transposed_convolutions(text):
    return [c for c in lowering.convolutions(text) if c.is_transposed]


def argmin_sizes(text):
    """The sizes of the axes the module's argmin / argmax reductions reduce."""
    return {shape[d] for shape, dims in lowering.index_reductions(text) for d in dims}


def ema_statistics_ops(text, name):
    """The ops `name` of a module traced in `ema.cluster_statistics` (the EMA statistics)."""
    return [op for op in lowering.find_ops(text, name) if op.traced_in("cluster_statistics")]


def check_codebook_forms(text, num_codes, ema):
    """The accelerators' quantizer forms: one argmin over all K codes; EMA statistics as a matmul
    (one_hot^T x), without a scatter."""
    assert num_codes in argmin_sizes(text), "no argmin over all K codes"
    if ema:
        assert ema_statistics_ops(text, "stablehlo.dot_general"), "no one-hot EMA statistics"
        assert not ema_statistics_ops(text, "stablehlo.scatter")


# -- the contrast: the same program with the CPU's forms shows the other patterns -------------------
def test_accelerator_forms_differ_from_the_cpus(monkeypatch, tmp_path):
    """VQ-VAE-2 (2 levels, EMA, K=64): with the accelerators' forms the program has transposed
    convolutions (upsampling, strided input gradients), one argmin over K and no (K, D) scatter; with
    the CPU's forms ('subpixel', 'phase_grad', 'two_level', 'segment_sum'), none of these."""
    assert backend.forms_for("cuda") == backend.forms_for("tpu")
    assert backend.forms_for("cuda") != backend.forms_for("cpu")
    config, spec = _vqvae2(2, "float32")
    config.model.num_hiddens = 32  # The strided layer after the first gets >= 16 input channels.
    gpu_train, gpu_eval = _export_steps(_runner(config, spec, monkeypatch, tmp_path, "cuda"))
    cpu_train, cpu_eval = _export_steps(
        _runner(config, spec, monkeypatch, tmp_path, "cpu"), platforms=("cpu",)
    )
    gpu_train, gpu_eval, cpu_train, cpu_eval = (
        e.mlir_module() for e in (gpu_train, gpu_eval, cpu_train, cpu_eval)
    )
    # Upsampling: the evaluation (forward only) has transposed convolutions on the accelerators only.
    assert transposed_convolutions(gpu_eval) and not transposed_convolutions(cpu_eval)
    # Downsampling's input gradient: a transposed convolution of the output gradient, or per phase.
    assert len(transposed_convolutions(gpu_train)) > len(transposed_convolutions(gpu_eval))
    assert not transposed_convolutions(cpu_train)
    # Argmin over K = 64: plain, or over 8 blocks of 8.
    assert NUM_CODES in argmin_sizes(gpu_train)
    assert NUM_CODES not in argmin_sizes(cpu_train) and 8 in argmin_sizes(cpu_train)
    # EMA statistics: dw = onehot^T x as a matmul, or a scatter-add into (K, D).
    assert {op.result_type for op in ema_statistics_ops(cpu_train, "stablehlo.scatter")} == {
        f"tensor<{NUM_CODES}xf32>",
        f"tensor<{NUM_CODES}x16xf32>",
    }
    assert not ema_statistics_ops(cpu_train, "stablehlo.dot_general")
    check_codebook_forms(gpu_train, NUM_CODES, ema=True)


def test_forms_for_and_resolving_for_answer_for_another_platform():
    from vqlatent.nets import layers  # pylint: disable=g-import-not-at-top

    assert backend.default_backend() == "cpu"
    assert backend.forms_for("cpu")["upsample"] == "subpixel"
    assert backend.forms_for("cuda")["upsample"] == backend.forms_for("gpu")["upsample"] == "conv_transpose"
    with backend.resolving_for("tpu") as name:
        assert name == "tpu" and backend.default_backend() == "tpu"
        assert backend.resolve("model.upsample", "auto") == "conv_transpose"
        assert backend.CHOICES["upsample"].forms == layers.UPSAMPLERS
    assert backend.default_backend() == "cpu"
    with pytest.raises(ValueError, match="Unknown platform 'metal'"):
        backend.forms_for("metal")


def test_the_readers_see_the_ops_of_a_small_program():
    """A transposed convolution, an argmin over 24 values and a scatter-add traced in a named function."""

    def scatter_counts(indices):
        return jnp.zeros((24,), jnp.float32).at[indices].add(1.0)

    def f(x, kernel):
        y = jax.lax.conv_transpose(x, kernel, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        indices = jnp.argmin(y.reshape(-1, 24), axis=-1)
        return y, scatter_counts(indices)

    x, kernel = jnp.zeros((2, 6, 6, 3)), jnp.zeros((4, 4, 3, 6))  # y: (2, 12, 12, 6) = 72 rows of 24.
    exported = lowering.export(f, x, kernel)
    text = check_program(exported, "float32", num_devices=1)
    (conv,) = {c.attributes: c for c in lowering.convolutions(text)}.values()  # One per platform branch.
    assert conv.is_transposed and conv.attribute("lhs_dilate") == (2, 2) and not conv.is_strided
    assert conv.result_type == "tensor<2x12x12x6xf32>"
    assert ((72, 24), (1,)) in lowering.index_reductions(text)
    (scatter, *_) = lowering.find_ops(text, "stablehlo.scatter")
    assert scatter.result_type == "tensor<24xf32>" and scatter.traced_in("scatter_counts")
    assert lowering.scatter_result_types(text)[0] == "tensor<24xf32>"
    assert lowering.op_counts(text)["stablehlo.scatter"] >= 1


def test_export_refuses_platforms_with_different_forms_unless_told_whose():
    with pytest.raises(ValueError, match="different per-backend forms"):
        lowering.export(lambda x: x, np.zeros(2), platforms=("cpu", "cuda"))
    exported = lowering.export(lambda x: x, np.zeros(2), platforms=("cpu", "cuda", "tpu"), forms="cuda")
    assert exported.platforms == ("cpu", "cuda", "tpu")


def test_force_forms_sets_every_auto_field_and_keeps_forced_ones():
    config = load_config("vqvae2", "digits,quantizer=vq_ema")
    config.model.downsample = "phase_grad"
    forced = lowering.force_forms(config, "tpu")
    assert forced.model.upsample == "conv_transpose" and forced.model.downsample == "phase_grad"
    for level in forced.quantizer.values():
        assert (level.argmin_form, level.distance_precision, level.ema_statistics) == (
            "plain",
            "highest",
            "one_hot",
        )
    assert config.model.upsample == "auto" and "argmin_form" not in config.quantizer.top  # A copy.
    config.quantizer.top.num_embeddings = 8192  # Above backend.ONE_HOT_MAX_CODES: the scatter everywhere.
    assert lowering.force_forms(config, "cuda").quantizer.top.ema_statistics == "segment_sum"
    fsq = lowering.force_forms(load_config("vqvae", "digits,quantizer=fsq"), "cuda").quantizer
    assert "argmin_form" not in fsq  # FSQ has no codebook search.


# -- every family ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("preset", sorted(configs.QUANTIZER_PRESETS))
def test_vqvae_train_step_with_every_quantizer(preset, dtype, monkeypatch, tmp_path):
    config = _tiny_autoencoder("vqvae", f"digits,quantizer={preset}", dtype)
    runner = _runner(config, DIGITS, monkeypatch, tmp_path)
    exported = lowering.export(runner.train_step_fn(), runner.abstract_state(), _batch(runner))
    text = check_train_step(exported, dtype)
    assert transposed_convolutions(text)
    quantizer = runner.task.model.quantizers[runner.task.level_names[0]]
    if hasattr(quantizer, "argmin_form"):
        check_codebook_forms(text, int(quantizer.codebook_size), ema=hasattr(quantizer, "ema_statistics"))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("levels", (2, 3))
def test_vqvae2_steps_and_codes(levels, dtype, monkeypatch, tmp_path):
    config, spec = _vqvae2(levels, dtype)
    if levels == 3:  # The state fsdp-sharded over a second mesh axis (4 x 2 devices), as big models are.
        config.data.folder = str(tmp_path)  # ffhq1024 reads an image folder (its spec is stubbed here).
        config.mesh.fsdp = 2
        monkeypatch.setattr(mesh_lib, "FSDP_MIN_SIZE", 256)  # The tiny model's kernels are sharded too.
    runner = _runner(config, spec, monkeypatch, tmp_path)
    train, evaluate = _export_steps(runner)
    text = check_train_step(train, dtype)
    assert ('{"fsdp"}' in text) == (levels == 3)
    check_codebook_forms(text, NUM_CODES, ema=True)
    assert transposed_convolutions(check_program(evaluate, dtype))
    # Code extraction (vqlatent.codes.extract's encoder) and decoding, on the loop's shardings.
    task, state = runner.task, runner.abstract_state()
    images = lowering.abstract(np.zeros((BATCH, *spec.image_shape), np.uint8), runner.data_sharded)
    encode = jax.jit(lambda state, images: task.encode_codes(state, images_to_float(images)))
    encoded = lowering.export(encode, state, images)
    check_program(encoded, dtype)
    assert [a.dtype for a in encoded.out_avals] == [jnp.int32] * levels
    codes = {n: jax.ShapeDtypeStruct((BATCH, *s.shape), jnp.int32) for n, s in task.code_levels.items()}
    decoded = lowering.export(jax.jit(task.decode_codes), state, codes)
    assert transposed_convolutions(check_program(decoded, dtype))
    assert [a.shape for a in decoded.out_avals] == [(BATCH, *spec.image_shape)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("level", ("top", "bottom"))
def test_pixelcnn_steps_and_samplers(level, dtype, monkeypatch, tmp_path):
    config, spec = _prior(level, dtype)
    runner = _runner(config, spec, monkeypatch, tmp_path)
    train, evaluate = _export_steps(runner)
    check_train_step(train, dtype)
    check_program(evaluate, dtype)
    task = runner.task
    variables = {"params": runner.abstract_state().params}
    labels = jax.ShapeDtypeStruct((BATCH,), jnp.int32)
    cond = (
        None
        if task.cond_level is None
        else jax.ShapeDtypeStruct((BATCH, *spec.levels["top"].shape), jnp.int32)
    )
    for sampler in (sampling._sample_cached, sampling._sample_plain):
        draw = functools.partial(sampler, task.model, task.code_shape, BATCH)
        exported = lowering.export(
            jax.jit(draw),
            variables,
            jax.random.PRNGKey(0),
            labels,
            cond,
            jax.ShapeDtypeStruct((), jnp.float32),
        )
        check_program(exported, dtype)  # The parameters replicated over the mesh.
        assert [(a.shape, a.dtype) for a in exported.out_avals] == [((BATCH, *task.code_shape), jnp.int32)]


@pytest.mark.parametrize("dtype", DTYPES)
def test_infogan_with_the_invariant_term(dtype, monkeypatch, tmp_path):
    config, spec = _infogan(dtype)
    runner = _runner(config, spec, monkeypatch, tmp_path)
    assert runner.task.augment is not None
    train, evaluate = _export_steps(runner)
    text = check_train_step(train, dtype)
    assert transposed_convolutions(text)
    check_program(evaluate, dtype)
    task = runner.task
    generate = jax.jit(
        lambda state, rng: task.generate(state, ig.sample_latents(rng, task.latent_spec, BATCH))
    )
    exported = lowering.export(generate, runner.abstract_state(), jax.random.PRNGKey(0))
    assert transposed_convolutions(check_program(exported, dtype))
    assert [a.shape for a in exported.out_avals] == [(BATCH, *spec.image_shape)]


@pytest.mark.parametrize("dtype", DTYPES)
def test_classifier_steps(dtype, monkeypatch, tmp_path):
    config, spec = _classifier(dtype)
    train, evaluate = _export_steps(_runner(config, spec, monkeypatch, tmp_path))
    check_train_step(train, dtype)
    check_program(evaluate, dtype)
