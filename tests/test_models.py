"""Trained models as products: export, load anywhere, encode / decode / sample / generate, the CLI modes."""

from __future__ import annotations

import filecmp
import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from helpers import REPO_ROOT, load_config, tiny_vqvae2_config, tiny_vqvae_config, train_tiny_prior
from PIL import Image

import vqlatent
from vqlatent import main as main_lib
from vqlatent.codes import layout
from vqlatent.evaluation import metrics as metric_lib
from vqlatent.models import batching, cli, cli_config, components, evaluate
from vqlatent.models import export as export_lib
from vqlatent.models import format as fmt
from vqlatent.models.autoencoder import ImageInputError
from vqlatent.trainers import loop
from vqlatent.trainers import workdir as workdir_lib


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Trained workdirs: a 2-level VQ-VAE-2 with its two priors (a chain) and an InfoGAN (digits)."""
    from test_infogan import tiny_infogan_config  # pylint: disable=g-import-not-at-top

    root = tmp_path_factory.mktemp("models")
    data_dir = root / "tfds"
    vq = tiny_vqvae2_config(data_dir, num_train_steps=2)
    out = {"root": root, "data_dir": data_dir, "vqvae2": str(root / "vqvae2")}
    loop.train_and_evaluate(vq, out["vqvae2"])
    main_lib.run(vq, out["vqvae2"], "extract_codes")
    for level in ("bottom", "top"):
        out[f"prior_{level}"] = str(root / f"prior_{level}")
        config = train_tiny_prior(f"{out['vqvae2']}/codes", out[f"prior_{level}"], f"digits,level={level}")
    # The top prior's config names its lower prior (as `--config.sample.lower_priors` does).
    config_path = os.path.join(out["prior_top"], "config.json")
    saved = json.load(open(config_path))
    saved["sample"]["lower_priors"] = f"bottom={out['prior_bottom']}"
    json.dump(saved, open(config_path, "w"))
    del config
    gan = tiny_infogan_config(data_dir)
    gan.num_train_steps, gan.eval_every_steps, gan.checkpoint_every_steps = 2, 0, 2
    out["infogan"] = str(root / "infogan")
    loop.train_and_evaluate(gan, out["infogan"])
    return out


def _digits(n=10, seed=0):
    images = (np.random.default_rng(seed).random((n, 8, 8, 1)) * 255).astype(np.uint8)
    return images


# -- SSIM ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(28, 28, 1), (8, 8, 1), (32, 24, 3), (5, 7, 1)])
def test_ssim_equals_scikit_image(shape):
    from skimage.metrics import structural_similarity  # pylint: disable=g-import-not-at-top

    rng = np.random.default_rng(0)
    a = rng.random((3, *shape)).astype(np.float32)
    b = np.clip(a + 0.2 * rng.standard_normal(a.shape), 0, 1).astype(np.float32)
    ours = np.asarray(metric_lib.ssim(a, b))
    _, sigma = metric_lib.ssim_window(*shape[:2])
    reference = [
        structural_similarity(
            a[i].astype(np.float64),
            b[i].astype(np.float64),
            gaussian_weights=True,
            sigma=sigma,
            use_sample_covariance=False,
            data_range=1.0,
            channel_axis=-1,
        )
        for i in range(3)
    ]
    np.testing.assert_allclose(ours, reference, atol=1e-5)
    np.testing.assert_allclose(np.asarray(metric_lib.ssim(a, a)), 1.0, atol=1e-6)


# -- the autoencoder ------------------------------------------------------------------------------


def test_loaded_workdir_computes_what_its_checkpoint_computes(runs):
    run = workdir_lib.load(runs["vqvae2"])
    state, _ = run.restore()
    model = vqlatent.load(runs["vqvae2"])
    images = _digits(16)
    expected = jax.device_get(jax.jit(run.task.encode_codes)(state, images.astype(np.float32) / 255))
    codes = model.encode(images)
    assert (
        set(codes) == {"bottom", "top"}
        and codes["bottom"].shape == (16, 4, 4)
        and codes["top"].shape == (16, 2, 2)
    )
    for level in codes:
        np.testing.assert_array_equal(codes[level], expected[level])
        assert codes[level].dtype == np.int32
    decoded = model.decode(codes, clip=False)
    np.testing.assert_array_equal(decoded, jax.device_get(jax.jit(run.task.decode_codes)(state, expected)))
    np.testing.assert_array_equal(model.reconstruct(images), np.clip(decoded, 0, 1))
    # float input in [0, 1] is the same as uint8.
    for level, c in model.encode(images.astype(np.float32) / np.float32(255)).items():
        np.testing.assert_array_equal(c, codes[level])


def test_any_batch_size_compiles_only_the_buckets(runs):
    model = vqlatent.load(runs["vqvae2"], step=2)
    images = _digits(9, seed=1)
    full = model.encode(images)
    for n in range(1, 10):
        part = model.encode(images[:n])
        np.testing.assert_array_equal(part["bottom"], full["bottom"][:n])
    assert model._encode._cache_size() == len({batching.bucket(n, model.max_batch) for n in range(1, 10)})  # pylint: disable=protected-access
    model.max_batch = 4  # Chunks of 4: 9 = 4 + 4 + 1 (bucket 1), already compiled.
    np.testing.assert_array_equal(model.encode(images)["top"], full["top"])
    assert model._encode._cache_size() == 5  # pylint: disable=protected-access


def test_fully_convolutional_sizes_and_clear_errors(runs):
    model = vqlatent.load(runs["vqvae2"])
    assert model.total_stride == 4
    big = (np.random.default_rng(2).random((3, 16, 24, 1)) * 255).astype(np.uint8)
    codes = model.encode(big)
    assert codes["bottom"].shape == (3, 8, 12) and codes["top"].shape == (3, 4, 6)
    assert model.code_shapes(16, 24) == {"bottom": (8, 12), "top": (4, 6)}
    assert model.decode(codes).shape == (3, 16, 24, 1)
    for bad, match in [
        (np.zeros((2, 10, 8, 1), np.uint8), r"10x8 pixels.*multiples of 4 \(it was trained on 8x8\)"),
        (np.zeros((2, 8, 8, 3), np.uint8), r"3 channels.*\[B, H, W, 1\]"),
        (np.zeros((8, 8, 1), np.uint8), r"one image: images\[None\]"),
        (np.full((1, 8, 8, 1), 255.0), r"Float images with values in \[255.0, 255.0\]"),
        (np.zeros((0, 8, 8, 1), np.uint8), "empty batch"),
    ]:
        with pytest.raises(ImageInputError, match=match):
            model.encode(bad)
    good = model.encode(_digits(2))
    for bad, match in [
        ({**good, "top": good["top"] + 8}, r"level 'top' in \[\d+, \d+\], but its codebook has K=8"),
        ({"bottom": good["bottom"]}, r"levels \['bottom'\] given, but the model has levels"),
        ({**good, "top": good["top"][:, :1]}, "stride between them is 2"),
        ({**good, "bottom": good["bottom"][..., None]}, r"level 'bottom' have shape \(2, 4, 4, 1\)"),
        (good["top"], "Codes given as one array"),
    ]:
        with pytest.raises(layout.CodeShapeError, match=match):
            model.decode(bad)


# -- export and load anywhere ----------------------------------------------------------------------

FRESH_PROCESS = textwrap.dedent(
    """
    import sys, numpy as np, vqlatent
    out = {}
    ae = vqlatent.load(sys.argv[1])
    images = np.load(sys.argv[4])["images"]
    for level, c in ae.encode(images).items():
        out["codes_" + level] = c
    out["decoded"] = ae.decode({k[6:]: v for k, v in out.items()}, clip=False)
    chain = vqlatent.load(sys.argv[2])
    s = chain.sample(12, temperature=1.0, seed=3)
    out["sample_images"], out["sample_top"], out["sample_bottom"] = s.images, s.codes["top"], s.codes["bottom"]
    gan = vqlatent.load(sys.argv[3])
    out["generated"] = gan.generate(categorical=np.arange(6) % 10, continuous=[[0.5, -1.0]] * 6, seed=4)
    q = gan.infer(images)
    out["q_categorical"], out["q_continuous"] = q["categorical"], q["continuous"]
    np.savez(sys.argv[5], **out)
    """
)


def test_exports_load_in_a_fresh_process_without_data_and_compute_bit_for_bit(runs, tmp_path):
    exports = {}
    for name, source in (("ae", runs["vqvae2"]), ("chain", runs["prior_top"]), ("gan", runs["infogan"])):
        exports[name] = str(tmp_path / name)
        export_lib.export(vqlatent.load(source), exports[name], evaluation=None)
    images = _digits(7, seed=5)
    np.savez(tmp_path / "images.npz", images=images)
    # No data anywhere: the training data directory moved away, TFDS pointed at an empty folder.
    moved = str(runs["data_dir"]) + ".moved"
    os.rename(runs["data_dir"], moved)
    try:
        empty = tmp_path / "empty_tfds"
        empty.mkdir()
        env = {**os.environ, "TFDS_DATA_DIR": str(empty), "JAX_PLATFORMS": "cpu"}
        env.pop("XLA_FLAGS", None)  # One CPU device, as a user has.
        result = subprocess.run(
            [sys.executable, "-c", FRESH_PROCESS, exports["ae"], exports["chain"], exports["gan"]]
            + [str(tmp_path / "images.npz"), str(tmp_path / "out.npz")],
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
            cwd=str(tmp_path),
        )
    finally:
        os.rename(moved, runs["data_dir"])
    assert result.returncode == 0, result.stderr[-3000:]
    fresh = np.load(tmp_path / "out.npz")

    # What the checkpoints compute, through the tasks' own functions on the restored states.
    ae_run = workdir_lib.load(runs["vqvae2"])
    ae_state, _ = ae_run.restore()
    codes = jax.device_get(jax.jit(ae_run.task.encode_codes)(ae_state, images.astype(np.float32) / 255))
    for level in ("bottom", "top"):
        np.testing.assert_array_equal(fresh[f"codes_{level}"], codes[level])
    np.testing.assert_array_equal(
        fresh["decoded"], jax.device_get(jax.jit(ae_run.task.decode_codes)(ae_state, codes))
    )

    chain = vqlatent.load(runs["prior_top"])  # From the workdirs.
    s = chain.sample(12, temperature=1.0, seed=3)
    np.testing.assert_array_equal(fresh["sample_top"], s.codes["top"])
    np.testing.assert_array_equal(fresh["sample_bottom"], s.codes["bottom"])
    np.testing.assert_array_equal(fresh["sample_images"], s.images)
    np.testing.assert_array_equal(s.labels, np.arange(12) % 10)

    gan_run = workdir_lib.load(runs["infogan"])
    gan_state, _ = gan_run.restore()
    gan = vqlatent.load(runs["infogan"])
    latents = gan.latents(None, np.arange(6) % 10, [[0.5, -1.0]] * 6, 4)
    np.testing.assert_array_equal(
        fresh["generated"], jax.device_get(jax.jit(gan_run.task.generate)(gan_state, latents))
    )
    np.testing.assert_array_equal(np.asarray(latents.categorical)[:, 0], np.arange(6) % 10)
    q = gan.infer(images)
    np.testing.assert_array_equal(fresh["q_categorical"], q["categorical"])
    np.testing.assert_array_equal(fresh["q_continuous"], q["continuous"])


def test_sample_equals_the_sample_mode_of_the_workdirs(runs):
    config = workdir_lib.load_config(runs["prior_top"])
    config.sample.num_per_class = 2
    out = main_lib.run(config, runs["prior_top"], "sample")
    chain = vqlatent.load(runs["prior_top"])
    s = chain.sample(20, labels=out["labels"], seed=int(config.sample.seed))
    for level in ("top", "bottom"):
        np.testing.assert_array_equal(s.codes[level], out["codes_by_level"][level])
    np.testing.assert_array_equal(s.images, out["samples"])
    bits = chain.bits_per_code(s.codes, s.labels)
    assert set(bits) == {"top", "bottom"} and all(b.shape == (20,) and np.all(b > 0) for b in bits.values())


def test_export_is_deterministic_and_checked(runs, tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    for out in (a, b):
        export_lib.export(vqlatent.load(runs["prior_top"]), out, evaluation={"metrics": {"mse": 0.5}})
    names = sorted(os.listdir(a))
    assert names == [
        "README.md",
        "autoencoder.safetensors",
        "config.json",
        "prior_bottom.safetensors",
        "prior_top.safetensors",
    ]
    match, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    assert match == names and not mismatch and not errors
    record = json.load(open(os.path.join(a, "config.json")))
    assert record["family"] == "prior_chain" and record["priors"] == ["prior_top", "prior_bottom"]
    assert "opt_state" not in json.dumps(record) and record["components"]["prior_top"]["spec"]["levels"]
    # The weights hold parameters and EMA codebooks, no optimizer state.
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top

    keys = list(load_file(os.path.join(a, "autoencoder.safetensors")))
    assert any(k.startswith("params/") for k in keys) and any(
        k.startswith("model_state/vq_ema/") for k in keys
    )
    assert not any("opt" in k or "rng" in k for k in keys)
    # A damaged, missing or foreign weights file is refused.
    path = os.path.join(a, "prior_top.safetensors")
    data = bytearray(open(path, "rb").read())
    data[-3] ^= 0xFF
    open(path, "wb").write(bytes(data))
    with pytest.raises(fmt.ModelFormatError, match="prior_top.safetensors is damaged: its SHA-256 is"):
        vqlatent.load(a)
    os.remove(path)
    with pytest.raises(fmt.ModelFormatError, match="prior_top.safetensors is missing"):
        vqlatent.load(a)
    with pytest.raises(fmt.ModelFormatError, match="not empty and holds no exported model"):
        export_lib.export(vqlatent.load(runs["vqvae2"]), str(REPO_ROOT / "configs"))


def test_loading_needs_only_the_recorded_spec(runs, tmp_path):
    spec = json.load(open(os.path.join(runs["vqvae2"], "spec.json")))
    assert spec["image_shape"] == [8, 8, 1] and spec["num_classes"] == 10 and "command" in spec["run"]
    top = json.load(open(os.path.join(runs["prior_top"], "spec.json")))
    assert top["levels"]["top"]["shape"] == [2, 2] and top["codes_checkpoint"]["workdir"] == runs["vqvae2"]
    comp = components.from_workdir("autoencoder", runs["vqvae2"], step=2)
    assert comp.step == 2 and comp.state.opt_state is None


# -- the command line ------------------------------------------------------------------------------


def _write_folder(root, n_per_class=6, classes=("a", "b")):
    from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top

    digits = load_digits()
    k = 0
    for c in classes:
        os.makedirs(root / c, exist_ok=True)
        for i in range(n_per_class):
            image = np.round(digits.images[k] * (255 / 16)).astype(np.uint8)
            Image.fromarray(np.kron(image, np.ones((3, 3), np.uint8))).save(root / c / f"{i}.png")  # 24x24.
            k += 1
    (root / classes[0] / "broken.png").write_bytes(b"not a png")


def _mode_config(mode, **options):
    config = cli_config.get_config()
    config[mode].update(options)
    return config


def test_encode_a_folder_train_a_prior_on_it_and_decode_its_samples(runs, tmp_path):
    vq = tiny_vqvae_config(runs["data_dir"])
    vq.num_train_steps, vq.eval_every_steps = 2, 0
    ae_dir = str(tmp_path / "vqvae")
    loop.train_and_evaluate(vq, ae_dir)
    export_dir = str(tmp_path / "export")
    main_lib.run(_mode_config("export", dir=export_dir, evaluate=False), ae_dir, "export")

    folder = tmp_path / "images"
    _write_folder(folder)
    codes_dir = str(tmp_path / "codes")
    out = main_lib.run(
        _mode_config("encode", input=str(folder), output_dir=codes_dir, eval_fraction=0.25),
        export_dir,
        "encode",
    )
    assert out["classes"] == ["a", "b"] and out["num_images"] == 12
    assert [s["path"] for s in out["skipped"]] == [os.path.join("a", "broken.png")]
    sources = json.load(open(os.path.join(codes_dir, "sources.json")))
    assert len(sources["train"]) + len(sources["eval"]) == 12 and sources["eval"]
    assert not set(sources["train"]) & set(sources["eval"])
    # The codes are the model's codes of the images resized to its 8x8 training size.
    model = vqlatent.load(export_dir)
    from vqlatent.codes import load_codes  # pylint: disable=g-import-not-at-top

    train = load_codes(codes_dir, "train")
    first = train.arrays()
    image = np.asarray(Image.open(folder / sources["train"][0]).convert("L"))[..., None]
    from vqlatent.data.preprocess import center_crop_resize  # pylint: disable=g-import-not-at-top

    expected = model.encode(center_crop_resize(image, (8, 8))[None])["top"][0]
    np.testing.assert_array_equal(first["codes"]["top"][0], expected)
    assert first["label"][0] == (0 if sources["train"][0].startswith("a") else 1)

    # A class-conditional prior trains on those codes (the loop, unchanged), then samples through the export.
    prior_dir = str(tmp_path / "prior")
    config = load_config("pixelcnn", f"digits,level=top,codes_dir={codes_dir}")
    config.data.num_classes = 2
    config.model.update(dict(channels=8, num_layers=2, head_channels=8, cond_channels=4))
    config.update(
        dict(batch_size=8, num_train_steps=2, eval_every_steps=2, checkpoint_every_steps=2, log_every_steps=1)
    )
    config.progress_bar, config.data.num_workers = False, 1
    loop.train_and_evaluate(config, prior_dir)
    chain = vqlatent.load(prior_dir)
    samples = chain.sample(6, seed=1)
    np.testing.assert_array_equal(samples.labels, [0, 1, 0, 1, 0, 1])
    np.savez(tmp_path / "samples.npz", labels=samples.labels, **samples.codes)
    png_dir = tmp_path / "pngs"
    main_lib.run(
        _mode_config("decode", input=str(tmp_path / "samples.npz"), output_dir=str(png_dir)),
        export_dir,
        "decode",
    )
    assert sorted(os.listdir(png_dir)) == [f"{i:05d}.png" for i in range(6)] + ["grid.png"]
    for i in range(6):
        png = np.asarray(Image.open(png_dir / f"{i:05d}.png"))
        np.testing.assert_array_equal(png, np.round(samples.images[i, ..., 0] * 255).astype(np.uint8))

    # --mode=reconstruct: per-image metrics equal the API's.
    rec_dir = tmp_path / "rec"
    report = main_lib.run(
        _mode_config("reconstruct", input=str(folder), output_dir=str(rec_dir)), export_dir, "reconstruct"
    )
    assert len(report["per_image"]) == 12 and report["skipped"][0]["path"] == os.path.join("a", "broken.png")
    saved = json.load(open(rec_dir / "metrics.json"))
    assert saved["mean"]["mse"] == pytest.approx(np.mean([v["mse"] for v in saved["per_image"].values()]))
    assert os.path.isfile(rec_dir / "b" / "3.png") and os.path.isfile(rec_dir / "grid.png")
    arrays = np.stack(
        [
            center_crop_resize(np.asarray(Image.open(folder / p).convert("L"))[..., None], (8, 8))
            for p in sorted(report["per_image"])
        ]
    )
    per_image, _ = evaluate.reconstruction_metrics(model, arrays)
    np.testing.assert_allclose(
        [report["per_image"][p]["ssim"] for p in sorted(report["per_image"])], per_image["ssim"], rtol=1e-6
    )


def _cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "vqlatent.main", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=str(REPO_ROOT),
        env={**os.environ, **(env or {})},
    )


def test_bad_model_inputs_are_one_paragraph_errors(runs, tmp_path):
    empty = tmp_path / "empty_workdir"
    empty.mkdir()
    (empty / "config.json").write_text(open(os.path.join(runs["vqvae2"], "config.json")).read())
    np.savez(
        tmp_path / "bad_codes.npz", bottom=np.zeros((2, 4, 4), np.int32), top=np.full((2, 2, 2), 99, np.int32)
    )
    cases = [
        (
            ["--mode=export", f"--workdir={empty}", f"--config.export.dir={tmp_path / 'x'}"],
            "No checkpoint in",
        ),
        (
            [
                "--mode=encode",
                "--workdir=pretrained:no_such_model",
                "--config.encode.input=.",
                f"--config.encode.output_dir={tmp_path / 'c'}",
            ],
            "No pretrained model 'no_such_model'",
        ),
        (
            [
                "--mode=decode",
                f"--workdir={runs['vqvae2']}",
                f"--config.decode.input={tmp_path / 'bad_codes.npz'}",
                f"--config.decode.output_dir={tmp_path / 'd'}",
            ],
            "codebook has K=8 codes",
        ),
        (["--mode=export", f"--workdir={runs['vqvae2']}"], "needs --config.export.dir="),
        (["--mode=train", f"--workdir={tmp_path / 't'}"], "--mode=train needs --config"),
    ]
    for args, message in cases:
        result = _cli(*args)
        assert result.returncode == 1, (args, result.stderr[-2000:])
        assert message in result.stderr and "Traceback" not in result.stderr, (args, result.stderr[-2000:])
    with pytest.raises(vqlatent.models.loading.ModelPathError, match="holds no config.json"):
        vqlatent.load(str(tmp_path))
    with pytest.raises(cli.ModeOptionError, match="eval_fraction=1.5"):
        cli.encode_mode(
            _mode_config("encode", input=".", output_dir=str(tmp_path / "o"), eval_fraction=1.5),
            runs["vqvae2"],
        )


PLAIN_JAX = textwrap.dedent(
    """
    import sys, jax, numpy as np
    def load(name):
        return jax.export.deserialize(bytearray(open(name, "rb").read()))
    images, d = np.load(sys.argv[4])["images"], sys.argv[1] + "/portable/"
    out = {}
    codes = load(d + "encode.cpu.jax").call(images)
    out.update({"codes_" + k: np.asarray(v) for k, v in codes.items()})
    out["decoded"] = np.asarray(load(d + "decode.cpu.jax").call(codes))
    sample = load(sys.argv[2] + "/portable/sample.cpu.jax")
    n = sample.in_avals[0].shape[0]
    codes, images = sample.call(np.arange(n, dtype=np.int32) % 10, np.uint32(7))
    out.update({"sample_" + k: np.asarray(v) for k, v in codes.items()})
    out["sample_images"] = np.asarray(images)
    z = np.load(sys.argv[4])
    out["generated"] = np.asarray(load(sys.argv[3] + "/portable/generate.cpu.jax").call(z["noise"], z["cat"], z["cont"]))
    for name in ("encode", "decode"):
        assert load(d + name + ".cuda_tpu.jax").platforms == ("cuda", "tpu")
    assert not [m for m in sys.modules if m.startswith("vqlatent")]
    np.savez(sys.argv[5], **out)
    """
)


def test_portable_programs_run_with_plain_jax(runs, tmp_path):
    exports = {}
    for name, source in (("ae", runs["vqvae2"]), ("chain", runs["prior_top"]), ("gan", runs["infogan"])):
        exports[name] = str(tmp_path / name)
        record = export_lib.export(vqlatent.load(source), exports[name], portable=True)
        assert set(record["portable"].values()) == {"cpu", "cuda,tpu"}
    assert "jax.export.deserialize" in open(os.path.join(exports["ae"], "README.md")).read()
    gan = vqlatent.load(runs["infogan"])
    latents = gan.latents(3, [1, 2, 3], [[0.5, -0.5]] * 3, seed=2)
    images = _digits(6, seed=8)
    np.savez(
        tmp_path / "in.npz",
        images=images,
        noise=np.asarray(latents.noise),
        cat=np.asarray(latents.categorical),
        cont=np.asarray(latents.continuous),
    )
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    result = subprocess.run(
        [sys.executable, "-c", PLAIN_JAX, exports["ae"], exports["chain"], exports["gan"]]
        + [str(tmp_path / "in.npz"), str(tmp_path / "out.npz")],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=str(tmp_path),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = np.load(tmp_path / "out.npz")
    ae = vqlatent.load(runs["vqvae2"])
    codes = ae.encode(images)
    for level in codes:
        np.testing.assert_array_equal(out[f"codes_{level}"], codes[level])
    np.testing.assert_allclose(out["decoded"], ae.decode(codes), atol=1e-5)
    chain = vqlatent.load(runs["prior_top"])
    s = chain.sample(chain.batch_size, labels=np.arange(chain.batch_size) % 10, seed=7)
    for level in ("top", "bottom"):
        np.testing.assert_array_equal(out[f"sample_{level}"], s.codes[level])
    np.testing.assert_allclose(out["sample_images"], s.images, atol=1e-5)
    np.testing.assert_allclose(
        out["generated"], gan.generate([1, 2, 3], [[0.5, -0.5]] * 3, seed=2), atol=1e-5
    )


def test_a_prior_trained_on_an_exported_models_codes_samples_above_the_exports_lower_prior(runs, tmp_path):
    export_dir = str(tmp_path / "chain")
    main_lib.run(_mode_config("export", dir=export_dir, evaluate=False), runs["prior_top"], "export")
    # The export's training data, encoded without its workdir: the codes `--mode=extract_codes` wrote.
    codes_dir = str(tmp_path / "codes")
    main_lib.run(_mode_config("encode", input="training_data", output_dir=codes_dir), export_dir, "encode")
    from vqlatent.codes import load_codes  # pylint: disable=g-import-not-at-top

    for split in ("train", "eval"):
        ours, theirs = (
            load_codes(codes_dir, split).arrays(),
            load_codes(f"{runs['vqvae2']}/codes", split).arrays(),
        )
        np.testing.assert_array_equal(ours["label"], theirs["label"])
        for level in ("top", "bottom"):
            np.testing.assert_array_equal(ours["codes"][level], theirs["codes"][level])
    assert layout.read_json(os.path.join(codes_dir, layout.PROVENANCE))["checkpoint"]["workdir"] == export_dir

    # A new top prior on those codes, sampled above the export's bottom prior (a model directory as
    # a lower prior) and decoded by the export's autoencoder: as the workdirs' chain with that top.
    top = str(tmp_path / "new_top")
    train_tiny_prior(codes_dir, top, "digits,level=top")
    mixed = vqlatent.load(top, lower_priors=f"bottom={export_dir}")
    workdirs = vqlatent.load(top, lower_priors=f"bottom={runs['prior_bottom']}")
    assert mixed.autoencoder.component.source == export_dir
    a, b = mixed.sample(6, seed=3), workdirs.sample(6, seed=3)
    for level in ("top", "bottom"):
        np.testing.assert_array_equal(a.codes[level], b.codes[level])
    np.testing.assert_array_equal(a.images, b.images)

    # The other way round: a new bottom prior below the export's own top prior, in place of the
    # export's bottom prior; as the workdirs' chain with that bottom.
    bottom = str(tmp_path / "new_bottom")
    train_tiny_prior(codes_dir, bottom, "digits,level=bottom", seed=1)
    replaced = vqlatent.load(export_dir, lower_priors=f"bottom={bottom}")
    assert [p.task.level for p in replaced.priors] == ["top", "bottom"]
    a = replaced.sample(6, seed=3)
    b = vqlatent.load(runs["prior_top"], lower_priors=f"bottom={bottom}").sample(6, seed=3)
    c = vqlatent.load(export_dir).sample(6, seed=3)
    np.testing.assert_array_equal(a.codes["top"], c.codes["top"])  # The export's own top prior.
    for level in ("top", "bottom"):
        np.testing.assert_array_equal(a.codes[level], b.codes[level])
    np.testing.assert_array_equal(a.images, b.images)
    assert not np.array_equal(a.codes["bottom"], c.codes["bottom"])

    with pytest.raises(fmt.ModelFormatError, match=r"none of level .middle."):
        vqlatent.load(top, lower_priors=f"middle={export_dir}")
    with pytest.raises(fmt.ModelFormatError, match=r"names level 'top', the top prior of"):
        vqlatent.load(export_dir, lower_priors=f"top={top}")
    ae_export = str(tmp_path / "ae")
    main_lib.run(_mode_config("export", dir=ae_export, evaluate=False), runs["vqvae2"], "export")
    with pytest.raises(fmt.ModelFormatError, match=r"holds a autoencoder, not a prior chain"):
        vqlatent.load(top, lower_priors=f"bottom={ae_export}")
    with pytest.raises(fmt.ModelFormatError, match=r"holds a autoencoder: only a prior chain has lower"):
        vqlatent.load(ae_export, lower_priors=f"bottom={bottom}")
    with pytest.raises(ValueError, match=r"--config.encode.batch_size=0: must be >= 1"):
        main_lib.run(
            _mode_config("encode", input="training_data", output_dir=str(tmp_path / "c2"), batch_size=0),
            export_dir,
            "encode",
        )
