"""VQGAN training: the adaptive weight, LPIPS against the `lpips` package, the discriminator's
start, exact resume with both networks, bad input, and a short run that learns."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import types

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import REPO_ROOT, kill_after_a_checkpoint, load_config, run_steps, subprocess_env

import vqlatent
from vqlatent import data as data_lib
from vqlatent import main as main_lib
from vqlatent.data.sources import DatasetSpec
from vqlatent.models import cli_config, reconstruction_fd
from vqlatent.nets import lpips as lpips_lib
from vqlatent.nets.discriminator import PatchDiscriminator, patch_grid_size
from vqlatent.parallel import mesh as mesh_lib
from vqlatent.trainers import loop
from vqlatent.trainers import workdir as workdir_lib
from vqlatent.trainers.base import make_task
from vqlatent.utils.errors import UserError
from vqlatent.vqgan import losses


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def tiny_config(data_dir, arg=None, disc_start=1):
    """configs/vqgan.py (digits) shrunk: 16 channels, K=16, D=8, an 8-channel one-layer PatchGAN."""
    config = load_config("vqgan", arg)
    config.data.data_dir, config.data.num_workers = str(data_dir), 1
    config.model.update(dict(num_hiddens=16, num_residual_hiddens=8, num_residual_layers=1, embedding_dim=8))
    config.quantizer.update(dict(embedding_dim=8, num_embeddings=16))
    if "discriminator" in config.model:
        config.model.discriminator.channels = 8
        config.loss.disc_start = disc_start
    config.update(
        dict(
            batch_size=16,
            eval_batch_size=64,
            num_train_steps=4,
            log_every_steps=1,
            eval_every_steps=0,
            checkpoint_every_steps=2,
            progress_bar=False,
        )
    )
    config.mesh.data = 1  # Runs compared bit for bit take the same reduction order.
    return config


def _task(config, image_shape=None):
    spec = (
        DatasetSpec(image_shape=image_shape, num_classes=10, num_train=1, num_eval=1)
        if image_shape
        else data_lib.get_spec(config.data)
    )
    return make_task(config, spec)


def _batches(config, n):
    it = data_lib.make_train_iterator(config.data, global_batch_size=config.batch_size, seed=0)
    return [next(it) for _ in range(n)]


# -- the adaptive weight (eq. 7) ----------------------------------------------------------------


class _TinyNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(2, name="last")(jnp.tanh(nn.Dense(5, name="first")(x)))


def test_adaptive_weight_is_eq7_and_passes_no_gradient():
    net = _TinyNet()
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 3))
    target = jax.random.normal(jax.random.PRNGKey(1), (4, 2))
    params = net.init(jax.random.PRNGKey(2), x)["params"]

    def rec_loss(p):
        return jnp.mean(jnp.abs(net.apply({"params": p}, x) - target))

    def gan_loss(p):
        return -jnp.mean(jnp.sin(net.apply({"params": p}, x)))

    g_rec = jax.grad(rec_loss)(params)["last"]["kernel"]
    g_gan = jax.grad(gan_loss)(params)["last"]["kernel"]
    expected = np.linalg.norm(np.asarray(g_rec)) / (np.linalg.norm(np.asarray(g_gan)) + 1e-4)
    weight = losses.adaptive_weight(g_rec, g_gan)
    np.testing.assert_allclose(float(weight), expected, rtol=1e-6)
    # Clipped to [0, 1e4]: a vanishing GAN gradient gives 1e4, not ||g_rec|| / 1e-4.
    assert float(losses.adaptive_weight(g_rec * 1e3, g_gan * 0.0)) == 1e4

    # Stop-gradient: d/dp [lambda(p) L_GAN(p)] = lambda dL_GAN/dp, as if lambda were a constant.
    def weighted(p):
        lam = losses.adaptive_weight(
            jax.grad(rec_loss)(p)["last"]["kernel"], jax.grad(gan_loss)(p)["last"]["kernel"]
        )
        return lam * gan_loss(p)

    got = jax.grad(weighted)(params)
    want = jax.tree.map(lambda g: float(weight) * g, jax.grad(gan_loss)(params))
    chex.assert_trees_all_close(got, want, rtol=1e-5)


# -- LPIPS ----------------------------------------------------------------------------------------


def _vgg16_features(torch):
    """torchvision's `vgg16().features` layout from plain torch layers (indices features.N)."""
    layers, channels = [], 3
    for _, width, count in lpips_lib.VGG16_BLOCKS:
        for _ in range(count):
            layers += [torch.nn.Conv2d(channels, width, 3, padding=1), torch.nn.ReLU(inplace=True)]
            channels = width
        layers.append(torch.nn.MaxPool2d(2, 2))
    return torch.nn.Sequential(*layers)


@pytest.fixture
def torch_lpips(tmp_path, monkeypatch):
    """(lpips.LPIPS(net='vgg') on a random VGG16 saved in torchvision's format, that file's path).

    torchvision does not import beside this torch, so `torchvision.models.vgg16` is a stand-in of
    the same layers, loading the saved state dict (as torchvision loads its download)."""
    torch = pytest.importorskip("torch")
    if importlib.util.find_spec("lpips") is None:
        pytest.skip("the lpips package is not installed")
    torch.manual_seed(0)
    features = _vgg16_features(torch)
    with torch.no_grad():
        for layer in features:
            if isinstance(layer, torch.nn.Conv2d):
                layer.bias.normal_(0.0, 0.1)
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(4, 8)  # Ignored by the conversion, as the real classifier.
    vgg_path = str(tmp_path / "vgg16-random.pth")
    torch.save(state, vgg_path)

    def vgg16(pretrained=False, **kwargs):
        del kwargs
        model = types.SimpleNamespace(features=_vgg16_features(torch))
        if pretrained:
            loaded = torch.load(vgg_path, weights_only=True)
            model.features.load_state_dict(
                {k[len("features.") :]: v for k, v in loaded.items() if k.startswith("features.")}
            )
        return model

    models = types.ModuleType("torchvision.models")
    models.vgg16 = vgg16
    torchvision = types.ModuleType("torchvision")
    torchvision.models = models
    monkeypatch.setitem(sys.modules, "torchvision", torchvision)
    monkeypatch.setitem(sys.modules, "torchvision.models", models)
    for name in [m for m in sys.modules if m == "lpips" or m.startswith("lpips.")]:
        monkeypatch.delitem(sys.modules, name)
    import lpips  # pylint: disable=g-import-not-at-top

    model = lpips.LPIPS(net="vgg", version="0.1", verbose=False)
    yield model, vgg_path
    for name in [m for m in sys.modules if m == "lpips" or m.startswith("lpips.")]:
        del sys.modules[name]


def _convert(vgg_path, out):
    spec = importlib.util.spec_from_file_location("convert_lpips", REPO_ROOT / "scripts" / "convert_lpips.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(["--vgg", vgg_path, "--out", str(out)])


@pytest.mark.parametrize("channels", [3, 1])
def test_lpips_equals_the_lpips_package_on_a_random_vgg16(torch_lpips, tmp_path, channels):
    import torch  # pylint: disable=g-import-not-at-top

    model, vgg_path = torch_lpips
    params = lpips_lib.load_params(_convert(vgg_path, tmp_path / "lpips.safetensors"))
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(3, 32, 24, channels)).astype(np.float32)
    y = np.clip(x + 0.2 * rng.normal(size=x.shape), 0, 1).astype(np.float32)
    ours = np.asarray(lpips_lib.LPIPS().apply({"params": params}, x, y))

    def to_torch(a):
        return torch.from_numpy(np.repeat(a, 3 // channels, axis=-1)).permute(0, 3, 1, 2)

    with torch.no_grad():
        theirs = model(to_torch(x), to_torch(y), normalize=True).numpy().reshape(-1)
    assert ours.shape == (3,) and np.all(theirs > 0)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


def _write_weights(path, shapes=None):
    from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top

    rng = np.random.default_rng(0)
    shapes = shapes or lpips_lib.param_shapes()
    # Non-negative linear heads, as LPIPS's.
    save_file({k: np.abs(0.05 * rng.normal(size=s)).astype(np.float32) for k, s in shapes.items()}, str(path))
    return str(path)


def test_bad_perceptual_weights_are_clear_errors(tmp_path):
    with pytest.raises(UserError, match=r"does not exist.*vgg16-397923af\.pth.*convert_lpips\.py"):
        lpips_lib.load_params(str(tmp_path / "missing.safetensors"))
    with pytest.raises(UserError, match=r"perceptual_weights is empty.*convert_lpips"):
        lpips_lib.load_params("")
    shapes = dict(lpips_lib.param_shapes())
    shapes["vgg16/conv3_2/kernel"] = (3, 3, 128, 256)
    with pytest.raises(
        UserError, match=r"'vgg16/conv3_2/kernel' has shape \(3, 3, 128, 256\).*\(3, 3, 256, 256\)"
    ):
        lpips_lib.load_params(_write_weights(tmp_path / "wrong.safetensors", shapes))
    del shapes["lin4"]
    with pytest.raises(UserError, match=r"lacks the tensor\(s\) \['lin4'\]"):
        lpips_lib.load_params(_write_weights(tmp_path / "partial.safetensors", shapes))
    (tmp_path / "garbage.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(UserError, match="not a safetensors file"):
        lpips_lib.load_params(str(tmp_path / "garbage.safetensors"))


def test_perceptual_loss_in_a_train_step(data_dir, tmp_path, monkeypatch):
    """With loss.perceptual_weight > 0 the step adds w_p LPIPS(x, x_hat) (weights from the file);
    on a VGG of 4 channels per block (the plumbing, not the network, is tested here)."""
    monkeypatch.setattr(lpips_lib, "VGG16_BLOCKS", tuple((b, 4, 1) for b in range(1, 6)))
    config = tiny_config(data_dir, "digits,loss=l1")
    config.loss.perceptual_weight = 0.5
    with pytest.raises(UserError, match="perceptual_weights is empty"):
        _task(config, (16, 16, 1))
    with pytest.raises(ValueError, match=r"at least 16x16.*8x8"):
        _task(config)
    config.loss.perceptual_weights = _write_weights(tmp_path / "w.safetensors")
    task = _task(config, (16, 16, 1))
    images = jnp.asarray(np.random.default_rng(0).uniform(size=(4, 16, 16, 1)), jnp.float32)
    state = jax.jit(task.init_state)(jax.random.PRNGKey(0), {"image": images})
    _, metrics = jax.jit(task.train_step)(state, {"image": images, "label": jnp.zeros(4, jnp.int32)})
    assert float(metrics["perceptual_loss"]) > 0
    np.testing.assert_allclose(
        float(metrics["rec_loss"]), float(metrics["l1"]) + 0.5 * float(metrics["perceptual_loss"]), rtol=1e-6
    )


# -- the discriminator ------------------------------------------------------------------------------


def test_patch_discriminator_shapes_and_actnorm_start():
    assert [patch_grid_size(s, n) for s, n in ((256, 3), (28, 2), (8, 1))] == [30, 5, 2]
    x = jax.random.uniform(jax.random.PRNGKey(0), (8, 28, 28, 1))
    d = PatchDiscriminator(num_layers=2, channels=8, norm="actnorm")
    variables = d.init(jax.random.PRNGKey(1), x, train=False)
    logits, state = d.apply(variables, x, train=True, mutable=["actnorm_init"])
    assert logits.shape == (8, 5, 5, 1) and float(state["actnorm_init"]["norm_1"]["initialized"]) == 1.0
    # ActNorm's start normalises its first training batch per channel (the bias 0, the scale 1).
    captured = {}

    def grab(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.module.name == "norm_1":
            captured["y"] = out
        return out

    with nn.intercept_methods(grab):
        d.apply({**variables, **state}, x, train=True, mutable=["actnorm_init"])
    y = np.asarray(captured["y"]).reshape(-1, 16)
    np.testing.assert_allclose(y.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(y.std(0), 1.0, atol=1e-3)
    with pytest.raises(ValueError, match=r"num_layers=3 halves 8x8 images.*num_layers=1"):
        PatchDiscriminator(num_layers=3).init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)), train=False)


def test_sharded_step_equals_single_device_step(data_dir):
    config = tiny_config(data_dir, disc_start=1)
    task = _task(config)
    batches = _batches(config, 2)
    single, m1 = run_steps(task, mesh_lib.make_mesh(1), batches)
    sharded, m8 = run_steps(task, mesh_lib.make_mesh(8), batches)
    chex.assert_trees_all_close(single.params, sharded.params, atol=1e-5, rtol=1e-4)
    chex.assert_trees_all_close(single.model_state, sharded.model_state, atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(float(m1[1]["lambda"]), float(m8[1]["lambda"]), rtol=1e-4)


# -- resume, evaluation, bad configs ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_run(data_dir, tmp_path_factory):
    """A 4-step run (LeCam on, the discriminator from step 1) evaluated at its end: (workdir, state)."""
    config = tiny_config(data_dir, disc_start=1)
    config.loss.lecam_weight = 0.01  # With the LeCam averages in the state.
    config.eval_every_steps = 4
    workdir = str(tmp_path_factory.mktemp("vqgan_run"))
    state = loop.train_and_evaluate(config, workdir)
    return workdir, jax.device_get(state)


def test_the_state_holds_both_networks_and_evaluation_is_the_autoencoders(trained_run):
    workdir, state = trained_run
    assert int(state.step) == 4
    assert set(state.params) == {"autoencoder", "discriminator"}
    assert set(state.model_state) == {"autoencoder", "discriminator", "lecam"}
    with open(os.path.join(workdir, "eval", "metrics_00000004.json")) as f:
        metrics = json.load(f)
    assert {"mse", "psnr", "ssim", "codebook_usage", "perplexity"} <= set(metrics)
    assert os.path.exists(os.path.join(workdir, "images", "reconstructions.png"))


def _vqgan_command(workdir, data_dir, steps, cache_dir):
    """`python -m vqlatent.main` for tiny_config's model: LeCam on, the discriminator from step 1;
    one compilation cache for all runs (the first compiles, the others load)."""
    overrides = {
        "compilation_cache_dir": cache_dir,
        "num_train_steps": steps,
        "checkpoint_every_steps": 5,
        "eval_every_steps": 0,
        "log_every_steps": 5,
        "progress_bar": False,
        "batch_size": 16,
        "data.data_dir": data_dir,
        "data.num_workers": 1,
        "loss.disc_start": 1,
        "loss.lecam_weight": 0.01,
        "model.num_hiddens": 16,
        "model.num_residual_hiddens": 8,
        "model.num_residual_layers": 1,
        "model.embedding_dim": 8,
        "model.discriminator.channels": 8,
        "quantizer.embedding_dim": 8,
        "quantizer.num_embeddings": 16,
    }
    return [
        sys.executable,
        "-m",
        "vqlatent.main",
        "--config=configs/vqgan.py",
        f"--workdir={workdir}",
        *(f"--config.{k}={v}" for k, v in overrides.items()),
    ]


def test_sigkill_then_rerun_resumes_bit_exactly_with_both_networks(data_dir, tmp_path):
    """kill -9 after a checkpoint, then the same command again: the same state, bit for bit, as an
    uninterrupted run (both networks, both optimizers, BatchNorm statistics, LeCam averages)."""
    steps = 100
    data_lib.get_spec(tiny_config(data_dir).data)  # Prepared before the timing-sensitive part.
    killed_dir, clean_dir = tmp_path / "killed", tmp_path / "clean"
    cache_dir = str(tmp_path / "compilation_cache")
    killed_at = kill_after_a_checkpoint(_vqgan_command(killed_dir, data_dir, steps, cache_dir), killed_dir)
    assert killed_at < steps
    env = subprocess_env()
    for workdir in (killed_dir, clean_dir):
        subprocess.run(
            _vqgan_command(workdir, data_dir, steps, cache_dir),
            cwd=REPO_ROOT,
            env=env,
            check=True,
            capture_output=True,
        )
    resumed, _ = workdir_lib.load(str(killed_dir)).restore()
    clean, _ = workdir_lib.load(str(clean_dir)).restore()
    assert int(resumed.step) == int(clean.step) == steps
    assert set(clean.model_state) == {"autoencoder", "discriminator", "lecam"}
    chex.assert_trees_all_equal(jax.device_get(resumed), jax.device_get(clean))


def test_a_vqgan_workdir_loads_and_exports_as_an_autoencoder(trained_run, tmp_path):
    workdir, _ = trained_run
    model = vqlatent.load(workdir)
    images = (np.random.default_rng(0).random((5, 8, 8, 1)) * 255).astype(np.uint8)
    run = workdir_lib.load(workdir)
    state, _ = run.restore()
    expected = jax.device_get(jax.jit(run.task.encode_codes)(state, images.astype(np.float32) / 255))
    for level, codes in model.encode(images).items():
        np.testing.assert_array_equal(codes, expected[level])
    export_dir = str(tmp_path / "export")
    config = cli_config.get_config()
    config.export.update(dict(dir=export_dir, evaluate=False))
    main_lib.run(config, workdir, "export")
    np.testing.assert_array_equal(vqlatent.load(export_dir).reconstruct(images), model.reconstruct(images))


def test_reconstruction_frechet_distance_maths():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(400, 3))
    same = reconstruction_fd.frechet_distances(real, real)
    assert abs(same["rfd"]) < 1e-6 and same["rfd_halves"] == same["rfd_floor"] > 0
    shifted = reconstruction_fd.frechet_distances(real, real + np.array([2.0, 0.0, 0.0]))
    np.testing.assert_allclose(shifted["rfd"], 4.0, rtol=1e-6)  # |mu_1 - mu_2|^2, equal covariances.
    with pytest.raises(ValueError, match="must pair up"):
        reconstruction_fd.frechet_distances(real, real[:10])


def test_reconstruction_fd_of_a_trained_workdir(trained_run, data_dir, tmp_path):
    workdir, _ = trained_run
    clf = load_config("classifier")
    clf.data.data_dir, clf.data.num_workers = data_dir, 1
    clf.model.dense_features = 8
    clf.update(dict(num_train_steps=1, eval_every_steps=0, checkpoint_every_steps=1, progress_bar=False))
    clf_dir = str(tmp_path / "classifier")
    loop.train_and_evaluate(clf, clf_dir)
    with pytest.raises(ValueError, match="model_name='vqgan' run, not a classifier"):
        reconstruction_fd.reconstruction_fd(workdir, workdir)
    result = reconstruction_fd.reconstruction_fd(workdir, clf_dir, batch_size=128)
    assert result["num_examples"] == 300 and result["step"] == 4 and result["feature_dim"] == 8
    assert result["rfd"] > 0 and result["rfd_halves"] > 0 and result["rfd_floor"] > 0
    assert 0 <= result["recon_accuracy"] <= 1 and result["psnr"] > 0
    with open(os.path.join(workdir, "eval", "rfd_00000004.json")) as f:
        assert json.load(f)["rfd"] == result["rfd"]


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("loss.disc_start", -1, r"loss.disc_start=-1 must be an integer >= 0"),
        ("loss.gan_loss", "wasserstein", r"loss.gan_loss='wasserstein'; choose one of"),
        ("loss.l1_weight", 0.0, r"no reconstruction loss"),
        ("loss.disc_weight", -0.5, r"loss.disc_weight=-0.5 must be a finite number >= 0"),
        ("model.discriminator.norm", "layer", r"norm='layer'; choose one of"),
        ("model.discriminator.num_layers", 3, r"num_layers=3 halves 8x8 images.*num_layers=1"),
    ],
)
def test_bad_vqgan_configs_are_clear_errors(data_dir, tmp_path, field, value, message):
    config = tiny_config(data_dir)
    node = config
    *parents, leaf = field.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value
    workdir = tmp_path / "wd"
    with pytest.raises(ValueError, match=message):
        loop.train_and_evaluate(config, str(workdir))
    assert not (workdir / "checkpoints").exists()


# -- a short run: the discriminator's start, eq. (7) in the trainer, learning ---------------------------

DISC_START = 20


@pytest.fixture(scope="module")
def short_run(data_dir):
    """60 steps of the tiny digits model with the discriminator from step 20 (one compiled step):
    (task, batches, {step: state before it} for steps 0, 20, 21, per-step metrics)."""
    from vqlatent.data.device import to_model_input  # pylint: disable=g-import-not-at-top

    config = tiny_config(data_dir, disc_start=DISC_START)
    task = _task(config)
    batches = [to_model_input(jax.tree.map(jnp.asarray, b)) for b in _batches(config, 60)]
    step = jax.jit(task.train_step)
    state = jax.jit(task.init_state)(jax.random.PRNGKey(0), task.dummy_batch())
    states, metrics = {}, []
    for i, batch in enumerate(batches):
        if i in (0, DISC_START, DISC_START + 1):
            states[i] = jax.device_get(state)
        state, m = step(state, batch)
        metrics.append({k: float(v) for k, v in jax.device_get(m).items()})
    return task, batches, states, metrics


def test_the_discriminator_is_not_updated_before_disc_start_and_is_after(short_run):
    _, _, states, metrics = short_run
    init, before, after = states[0], states[DISC_START], states[DISC_START + 1]
    for part in ("params", "opt_state", "model_state"):  # Steps 0..19: D, its Adam and BatchNorm untouched.
        chex.assert_trees_all_equal(
            getattr(before, part)["discriminator"], getattr(init, part)["discriminator"]
        )
    assert all(m["disc_factor"] == 0 and m["d_loss"] == 0 and m["lambda"] == 0 for m in metrics[:DISC_START])
    # Step 20 updates D: its kernels, its Adam state and its BatchNorm statistics.
    for part in ("params", "opt_state", "model_state"):
        changed = [
            not np.array_equal(a, b)
            for a, b in zip(
                jax.tree.leaves(getattr(before, part)["discriminator"]),
                jax.tree.leaves(getattr(after, part)["discriminator"]),
            )
        ]
        assert any(changed), part
    assert not np.array_equal(
        before.params["discriminator"]["conv_0"]["kernel"], after.params["discriminator"]["conv_0"]["kernel"]
    )
    assert all(m["disc_factor"] == 1 and m["d_loss"] > 0 and m["lambda"] > 0 for m in metrics[DISC_START:])
    # The autoencoder trains from the first step.
    assert not np.array_equal(
        init.params["autoencoder"]["decoder"]["up_0"]["kernel"],
        states[DISC_START].params["autoencoder"]["decoder"]["up_0"]["kernel"],
    )


def test_the_trainers_lambda_is_eq7_at_the_decoders_last_layer(short_run):
    """The step's lambda (from G_L's recorded input) equals eq. (7) by brute force: the gradients of
    L_rec and L_GAN with respect to the last decoder kernel, through the whole network."""
    task, batches, states, metrics = short_run
    state, images = jax.tree.map(jnp.asarray, states[DISC_START]), batches[DISC_START]["image"]
    ae, d = state.params["autoencoder"], state.params["discriminator"]
    rng = jax.random.fold_in(state.rng, state.step)
    assert task.last_layer == ("decoder", "up_0")

    def reconstruct(kernel):
        p = dict(ae, decoder=dict(ae["decoder"], up_0=dict(ae["decoder"]["up_0"], kernel=kernel)))
        (x_hat, _), _ = task._forward(p, state.model_state["autoencoder"], images, rng, {})
        return x_hat

    def rec_loss(kernel):
        return task.reconstruction_loss(reconstruct(kernel), images, None)[0]

    def gan_loss(kernel):
        d_vars = {"params": d, **state.model_state["discriminator"]}
        logits, _ = task.discriminator.apply(d_vars, reconstruct(kernel), train=True, mutable=["batch_stats"])
        return losses.generator_loss("hinge", logits)

    kernel = ae["decoder"]["up_0"]["kernel"]
    g_rec, g_gan = jax.jit(jax.grad(rec_loss))(kernel), jax.jit(jax.grad(gan_loss))(kernel)
    expected = np.linalg.norm(np.asarray(g_rec)) / (np.linalg.norm(np.asarray(g_gan)) + 1e-4)
    np.testing.assert_allclose(metrics[DISC_START]["lambda"], expected, rtol=1e-4)


def test_a_short_digits_run_learns_and_the_discriminator_separates(short_run):
    _, _, _, metrics = short_run
    assert all(np.isfinite(v) for m in metrics for v in m.values())
    first, last = np.mean([m["l1"] for m in metrics[:5]]), np.mean([m["l1"] for m in metrics[-5:]])
    assert last < 0.9 * first, (first, last)
    # Once on, D scores real images above the reconstructions.
    assert np.mean([m["logits_real"] - m["logits_fake"] for m in metrics[-10:]]) > 0
