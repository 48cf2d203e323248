"""VQ-VAE-2: level shapes, top-down conditioning, codes extraction/decoding, sharding, bad input."""

import json
import os

import chex
import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import load_config, run_steps

from vqlatent import backend
from vqlatent import codes as codes_lib
from vqlatent import configs as cfg_lib
from vqlatent import data as data_lib
from vqlatent import main as main_lib
from vqlatent.codes import extract as extract_lib
from vqlatent.data.device import to_model_input
from vqlatent.nets.autoencoder import Autoencoder as VQVAE2
from vqlatent.nets.autoencoder import level_shapes
from vqlatent.parallel import mesh as mesh_lib
from vqlatent.quantizers import VectorQuantizer, VectorQuantizerEMA
from vqlatent.trainers import loop
from vqlatent.trainers.base import make_task


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def tiny_config(data_dir, arg=None, num_codes=16, dim=8):
    """The digits VQ-VAE-2 config (bottom 4x4, top 2x2), shrunk: 16 hidden channels, K=16, D=8."""
    config = load_config("vqvae2", arg)
    config.data.data_dir = str(data_dir)
    config.data.num_workers = 1
    config.model.num_hiddens = 16
    config.model.num_residual_hiddens = 8
    config.model.num_residual_layers = 1
    for level in config.quantizer.values():
        level.num_embeddings, level.embedding_dim = num_codes, dim
    config.batch_size, config.eval_batch_size = 16, 64
    config.num_train_steps, config.log_every_steps = 2, 1
    config.eval_every_steps = config.checkpoint_every_steps = 2
    config.progress_bar = False
    return config


def _model(strides, quantizer=VectorQuantizerEMA, channels=1, dims=None):
    names = {1: ("top",), 2: ("bottom", "top"), 3: ("bottom", "middle", "top")}[len(strides)]
    dims = dims or {n: 8 for n in names}
    return VQVAE2(
        quantizers={n: quantizer(16, dims[n]) for n in names},
        strides=strides,
        out_channels=channels,
        num_hiddens=16,
        num_residual_layers=1,
        num_residual_hiddens=8,
    )


# -- shapes ----------------------------------------------------------------------


@pytest.mark.parametrize("stride,widths", [(2, [8]), (4, [8, 16]), (8, [8, 8, 16])])
def test_level_encoders_follow_rosinalitys_widths(stride, widths):
    """Each level's encoder (the VQ-VAE `Encoder`, half_width_single=True): C/2 after a
    single stride-2 conv, else C/2, ..., C/2, C; then a 3x3 conv to C."""
    model = VQVAE2(
        quantizers={"top": VectorQuantizerEMA(16, 8)},
        strides=(stride,),
        out_channels=1,
        num_hiddens=16,
        num_residual_layers=1,
        num_residual_hiddens=8,
    )
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 1)), train=False))
    encoder = shapes["params"]["encoders_top"]
    assert [encoder[f"down_{i}"]["kernel"].shape[-1] for i in range(len(widths))] == widths
    assert f"down_{len(widths)}" not in encoder
    assert encoder["conv3x3"]["kernel"].shape == (3, 3, widths[-1], 16)


@pytest.mark.parametrize(
    "image_shape,strides,code_shapes",
    [
        ((8, 8, 1), (2, 2), {"bottom": (4, 4), "top": (2, 2)}),  # digits
        ((28, 28, 1), (2, 2), {"bottom": (14, 14), "top": (7, 7)}),  # MNIST
        ((256, 256, 3), (4, 2), {"bottom": (64, 64), "top": (32, 32)}),  # the paper's ImageNet
        ((1024, 1024, 3), (8, 2, 2), {"bottom": (128, 128), "middle": (64, 64), "top": (32, 32)}),  # FFHQ
        ((32, 48, 3), (2, 4, 2), {"bottom": (16, 24), "middle": (4, 6), "top": (2, 3)}),
    ],
)
def test_every_level_has_the_shape_of_its_strides(image_shape, strides, code_shapes):
    dims = dict(zip(code_shapes, (8, 6, 4)))  # A different D per level.
    model = _model(strides, channels=image_shape[-1], dims=dims)
    x = jax.ShapeDtypeStruct((2, *image_shape), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
    out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
    assert level_shapes(image_shape, strides) == tuple(code_shapes.values())
    assert out["reconstruction"].shape == (2, *image_shape)
    assert {n: c.shape for n, c in out["codes"].items()} == {n: (2, *s) for n, s in code_shapes.items()}
    for level, name in enumerate(code_shapes):
        assert out["quantized"][level].shape == (2, *code_shapes[name], dims[name])
    # Codes -> images goes through the same decoder.
    codes = {n: jax.ShapeDtypeStruct((2, *s), jnp.int32) for n, s in code_shapes.items()}
    decoded = jax.eval_shape(lambda v, c: model.apply(v, c, method="decode_codes"), variables, codes)
    assert decoded.shape == (2, *image_shape)


def test_each_level_can_use_another_quantizer_variant(data_dir):
    config = tiny_config(data_dir)
    config.quantizer.bottom = cfg_lib.quantizer_config("fsq", 64, 8)
    config.quantizer.top = cfg_lib.quantizer_config("residual_vq", 16, 8)
    task = make_task(config, data_lib.get_spec(config.data))
    stages = task.num_codebooks["top"]
    assert stages > 1 and task.num_codebooks["bottom"] == 1
    assert task.code_levels == {
        "bottom": codes_lib.LevelSpec((4, 4), 64),
        "top": codes_lib.LevelSpec((2, 2, stages), 16),
    }
    state = jax.eval_shape(task.init_state, jax.random.PRNGKey(0), task.dummy_batch(16))
    batch = {**task.dummy_batch(16), "mask": jnp.ones((16,))}
    sums = jax.eval_shape(task.eval_step, state, batch)
    assert sums["code_counts_top"].shape == (stages, 16) and sums["code_counts_bottom"].shape == (1, 64)
    grids = jax.eval_shape(task.eval_images, state, batch)
    assert grids["reconstructions"].shape == (16 // 8 * 8 * 3, 8, 8, 1)  # Originals, full, top only; twice.
    histograms = task.summary_images(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), sums))
    assert histograms["code_usage_top"].shape[0] == stages and histograms["code_usage_bottom"].shape[0] == 1


# -- top-down conditioning -------------------------------------------------------


def test_top_codes_condition_the_bottom_codes_and_the_decoder_but_not_the_reverse():
    model = _model((2, 2), quantizer=VectorQuantizer)
    images = jax.random.uniform(jax.random.key(0), (4, 8, 8, 1))
    with backend.initializer_rng():  # As the task's init_state: compiles faster on XLA:CPU.
        variables = jax.jit(lambda x: model.init(jax.random.key(1), x, train=False))(images)
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    out = apply(variables, images)

    def with_codebook(level, seed):
        params = dict(variables["params"])
        quantizer = dict(params[f"quantizers_{level}"])
        quantizer["codebook"] = jax.random.uniform(
            jax.random.key(seed), quantizer["codebook"].shape, minval=-1.0, maxval=1.0
        )
        params[f"quantizers_{level}"] = quantizer
        return {"params": params}

    # Another top codebook: the top latents change, so the bottom codes (encoder
    # conditioning) and the reconstruction (decoder conditioning) change too.
    new_top = apply(with_codebook("top", 2), images)
    assert not np.array_equal(new_top["codes"]["bottom"], out["codes"]["bottom"])
    assert not np.allclose(new_top["reconstruction"], out["reconstruction"], atol=1e-4)
    # Another bottom codebook leaves the top codes alone (information flows top-down).
    new_bottom = apply(with_codebook("bottom", 3), images)
    np.testing.assert_array_equal(new_bottom["codes"]["top"], out["codes"]["top"])

    # Changing only the top code map (bottom codes fixed) changes the decoded image.
    codes = dict(out["codes"])
    changed = dict(codes, top=(codes["top"] + 1) % 16)
    decode = jax.jit(lambda v, c: model.apply(v, c, method="decode_codes"))
    assert not np.allclose(decode(variables, changed), decode(variables, codes), atol=1e-4)
    # Decoding the model's own codes reproduces its reconstruction exactly.
    np.testing.assert_array_equal(decode(variables, codes), out["reconstruction"])


# -- training: sharded == unsharded -------------------------------------------------


def test_sharded_step_equals_single_device_step(data_dir):
    assert jax.device_count() == 8, "conftest.py forces 8 CPU devices"
    config = tiny_config(data_dir)
    task = make_task(config, data_lib.get_spec(config.data))
    it = data_lib.make_train_iterator(config.data, global_batch_size=16, seed=0)
    batches = [next(it) for _ in range(3)]
    one_state, one_metrics = run_steps(task, mesh_lib.make_mesh(1), batches)
    eight_state, eight_metrics = run_steps(task, mesh_lib.make_mesh(8), batches)
    chex.assert_trees_all_close(eight_state, one_state, atol=1e-5, rtol=1e-5)
    chex.assert_trees_all_close(eight_metrics, one_metrics, atol=1e-5, rtol=1e-5)
    for level in ("bottom", "top"):  # Both EMA codebooks moved, and moved the same way.
        assert int(eight_state.model_state["vq_ema"][f"quantizers_{level}"]["counter"]) == 3
    assert set(one_metrics[0]) >= {"loss", "mse", "perplexity_bottom", "perplexity_top"}


# -- extraction --------------------------------------------------------------------


def _read_split(directory, split):
    """Every array of every shard, as bytes (the dataset's exact contents)."""
    out = {}
    split_dir = os.path.join(directory, split)
    for shard in sorted(os.listdir(split_dir)):
        for name in sorted(os.listdir(os.path.join(split_dir, shard))):
            with open(os.path.join(split_dir, shard, name), "rb") as f:
                out[(shard, name)] = f.read()
    return out


def test_train_eval_extract_then_decode_reproduces_the_reconstruction_exactly(tmp_path, data_dir):
    config = tiny_config(data_dir)
    config.extract.examples_per_shard = 600
    workdir = str(tmp_path / "wd")
    loop.train_and_evaluate(config, workdir)
    with open(os.path.join(workdir, "eval", "latest.json")) as f:
        metrics = json.load(f)
    assert metrics["num_examples"] == 300 and 0 < metrics["mse"] < 1
    for level, size in (("bottom", 4 * 4), ("top", 2 * 2)):
        assert sum(metrics[f"code_counts_{level}"]) == 300 * size
        assert metrics[f"codebook_usage_{level}"] == metrics[f"codes_used_{level}"] / 16
        assert 1 <= metrics[f"perplexity_{level}"] <= metrics[f"codes_used_{level}"] + 1e-6
    for grid in ("reconstructions", "code_usage_bottom", "code_usage_top"):
        assert os.path.getsize(os.path.join(workdir, "images", f"{grid}.png")) > 100

    manifest = main_lib.run(config, workdir, "extract_codes")
    directory = os.path.join(workdir, "codes")
    assert [s["num_examples"] for s in manifest["splits"]["train"]["shards"]] == [600, 600, 297]
    provenance = codes_lib.load_provenance(directory)
    assert provenance["checkpoint"]["step"] == 2 and provenance["checkpoint"]["workdir"] == workdir
    assert provenance["config"]["quantizer"]["top"]["num_embeddings"] == 16

    runner = loop.Runner(config, workdir)
    state, _ = runner.restore_for_eval()
    task = runner.task
    eval_codes = codes_lib.load_codes(directory, "eval", expected_levels=task.code_levels)
    assert len(eval_codes) == 300 and len(codes_lib.load_codes(directory, "train")) == 1497
    everything = eval_codes.arrays()
    np.testing.assert_array_equal(everything["index"], np.arange(300))
    batch = next(iter(data_lib.make_eval_batches(config.data, global_batch_size=64)))
    np.testing.assert_array_equal(everything["label"][:64], batch["label"])
    # The stored codes are the model's codes, and decoding them is its reconstruction, bit for bit.
    outputs = jax.jit(lambda s, x: task.model.apply(task._variables(s), x, train=False))(
        state, to_model_input(batch)["image"]
    )
    stored = {n: everything["codes"][n][:64] for n in task.level_names}
    for n in task.level_names:
        np.testing.assert_array_equal(stored[n], outputs["codes"][n])
    reconstruction = outputs["reconstruction"]
    decoded = jax.jit(task.decode_codes)(state, {n: jnp.asarray(c, jnp.int32) for n, c in stored.items()})
    np.testing.assert_array_equal(decoded, reconstruction)
    # Random access (and grain on top of it) agrees with the whole-split arrays.
    record = eval_codes[37]
    assert record["index"] == 37 and record["codes"]["top"].shape == (2, 2)
    np.testing.assert_array_equal(record["codes"]["bottom"], everything["codes"]["bottom"][37])
    grain_batch = grain.MapDataset.source(eval_codes).shuffle(seed=0).batch(8)[0]
    np.testing.assert_array_equal(
        grain_batch["codes"]["top"], everything["codes"]["top"][grain_batch["index"]]
    )

    # A second run finds the dataset complete and leaves it as it is.
    before = _read_split(directory, "train")
    assert codes_lib.extract_codes_mode(runner) == manifest
    assert _read_split(directory, "train") == before


class _Interrupt(Exception):
    pass


def test_extraction_killed_midway_then_restarted_produces_the_same_dataset(tmp_path, data_dir):
    config = tiny_config(data_dir)
    task = make_task(config, data_lib.get_spec(config.data))
    mesh = mesh_lib.make_mesh(8)
    state = jax.jit(task.init_state, out_shardings=mesh_lib.replicated(mesh))(
        jax.random.PRNGKey(0), task.dummy_batch()
    )
    kwargs = dict(workdir=str(tmp_path / "wd"), step=7, mesh=mesh, batch_size=64, examples_per_shard=256)
    clean_dir, killed_dir = str(tmp_path / "clean"), str(tmp_path / "killed")
    clean = extract_lib.extract_codes(task, state, config, output_dir=clean_dir, **kwargs)

    def kill_after_three(split, index):
        if (split, index) == ("train", 2):
            raise _Interrupt()

    with pytest.raises(_Interrupt):
        extract_lib.extract_codes(
            task, state, config, output_dir=killed_dir, on_shard_written=kill_after_three, **kwargs
        )
    assert sorted(os.listdir(os.path.join(killed_dir, "train"))) == [
        f"shard-0000{i}-of-00006" for i in range(3)
    ]
    os.makedirs(os.path.join(killed_dir, "train", ".tmp-half-written"))  # As a SIGKILL mid-write leaves.
    with pytest.raises(codes_lib.IncompleteCodesError, match="unfinished code extraction"):
        codes_lib.load_codes(killed_dir, "train")

    written = []
    resumed = extract_lib.extract_codes(
        task,
        state,
        config,
        output_dir=killed_dir,
        on_shard_written=lambda s, i: written.append((s, i)),
        **kwargs,
    )
    assert written == [
        ("train", 3),
        ("train", 4),
        ("train", 5),
        ("eval", 0),
        ("eval", 1),
    ]  # What was missing.
    assert resumed == clean  # Same shards, same checksums.
    for split in ("train", "eval"):
        assert _read_split(killed_dir, split) == _read_split(clean_dir, split)

    # Continuing with another checkpoint (or plan) would mix two models' codes: refused.
    with pytest.raises(
        codes_lib.ProvenanceMismatchError, match=r"checkpoint.step: directory has 7, this run has 8"
    ):
        extract_lib.extract_codes(task, state, config, output_dir=killed_dir, **{**kwargs, "step": 8})


def test_one_level_vqvae_codes_extract_and_decode(tmp_path, data_dir):
    from helpers import tiny_vqvae_config  # pylint: disable=g-import-not-at-top

    config = tiny_vqvae_config(data_dir)
    task = make_task(config, data_lib.get_spec(config.data))
    assert "extract_codes" in task.modes()
    code_model = codes_lib.as_code_model(task)
    assert code_model.code_levels == {"top": codes_lib.LevelSpec((4, 4), 16)}
    mesh = mesh_lib.make_mesh(8)
    with backend.initializer_rng():  # The VQ-VAE's init compiles faster on XLA:CPU.
        state = jax.jit(task.init_state, out_shardings=mesh_lib.replicated(mesh))(
            jax.random.PRNGKey(0), task.dummy_batch()
        )
    extract_lib.extract_codes(
        code_model,
        state,
        config,
        workdir=str(tmp_path),
        step=0,
        output_dir=str(tmp_path / "codes"),
        mesh=mesh,
        batch_size=64,
        examples_per_shard=1000,
    )
    eval_codes = codes_lib.load_codes(str(tmp_path / "codes"), "eval").arrays()
    images = to_model_input(next(iter(data_lib.make_eval_batches(config.data, global_batch_size=64))))[
        "image"
    ]
    reconstruction = task.model.apply(task._variables(state), images, train=False)["reconstruction"]
    decoded = code_model.decode_codes(state, {"top": jnp.asarray(eval_codes["codes"]["top"][:64], jnp.int32)})
    np.testing.assert_allclose(decoded, reconstruction, atol=1e-6)


# -- bad input ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "strides,message",
    [
        (
            (4, 4),
            r"model.strides=\(4, 4\) does not fit images of 8x8: level 1 \(top\) would downsample 2x2 by 4",
        ),
        ((3, 2), r"model.strides contains 3: every stride must be a power of two"),
        ((2, 2, 2, 2), r"level 3 \(top\) would downsample 1x1 by 2"),
    ],
)
def test_strides_that_do_not_divide_the_image_are_clear_errors(data_dir, strides, message):
    config = tiny_config(data_dir)
    config.model.strides = strides
    with pytest.raises(ValueError, match=message):
        make_task(config, data_lib.get_spec(config.data))


def test_quantizer_levels_must_match_the_strides(data_dir):
    config = tiny_config(data_dir)
    config.model.strides = (2, 2, 2)  # 8x8 -> 4, 2, 1: three levels, two quantizer configs.
    with pytest.raises(ValueError, match=r"makes the levels \['bottom', 'middle', 'top'\]"):
        make_task(config, data_lib.get_spec(config.data))


def test_codes_that_do_not_fit_the_model_are_clear_errors(tmp_path, data_dir):
    config = tiny_config(data_dir)
    task = make_task(config, data_lib.get_spec(config.data))
    mesh = mesh_lib.make_mesh(1)
    state = jax.jit(task.init_state)(jax.random.PRNGKey(0), task.dummy_batch())
    directory = str(tmp_path / "codes")
    extract_lib.extract_codes(
        task,
        state,
        config,
        workdir=str(tmp_path),
        step=0,
        output_dir=directory,
        mesh=mesh,
        batch_size=64,
        examples_per_shard=2000,
    )
    # A model with a bigger top codebook, and one with another hierarchy.
    other_k = tiny_config(data_dir)
    other_k.quantizer.top.num_embeddings = 32
    with pytest.raises(codes_lib.CodeShapeError, match=r"level 'top': K=16 vs K=32.*provenance.json"):
        codes_lib.load_codes(directory, "eval", expected_levels=make_task(other_k, task.spec).code_levels)
    one_level = tiny_config(data_dir)
    one_level.model.strides = (2,)
    one_level.quantizer = one_level.quantizer.top  # A shared quantizer config.
    with pytest.raises(codes_lib.CodeShapeError, match=r"levels \['bottom', 'top'\] vs \['top'\]"):
        codes_lib.load_codes(directory, "eval", expected_levels=make_task(one_level, task.spec).code_levels)
    # Decoding code maps of the wrong size or with a level missing.
    good = {"bottom": jnp.zeros((2, 4, 4), jnp.int32), "top": jnp.zeros((2, 2, 2), jnp.int32)}
    assert task.decode_codes(state, good).shape == (2, 8, 8, 1)
    with pytest.raises(codes_lib.CodeShapeError, match=r"Level 'bottom': code maps of shape \(8, 8\)"):
        task.decode_codes(state, {**good, "bottom": jnp.zeros((2, 8, 8), jnp.int32)})
    with pytest.raises(codes_lib.CodeShapeError, match=r"Codes for levels \['top'\] given"):
        task.decode_codes(state, {"top": good["top"]})
    with pytest.raises(codes_lib.IncompleteCodesError, match="not a codes dataset"):
        codes_lib.load_codes(str(tmp_path), "eval")
    with pytest.raises(codes_lib.CodesError, match="no split 'test'"):
        codes_lib.load_codes(directory, "test")
