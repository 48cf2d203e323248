"""InfoGAN: the bound, the likelihoods, the matched accuracy, sharding, gradients, bad input."""

import dataclasses
import json
import math
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from helpers import load_config, run_steps

from vqlatent import data as data_lib
from vqlatent import infogan as ig
from vqlatent import main as main_lib
from vqlatent.data.device import to_model_input
from vqlatent.infogan import invariance, measures
from vqlatent.parallel import mesh as mesh_lib
from vqlatent.trainers import loop
from vqlatent.trainers.base import DTYPES, make_task


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def tiny_infogan_config(data_dir, arg=None):
    """The digits config with every layer narrowed (a few ms per step)."""
    config = load_config("infogan", arg)
    config.data.data_dir = str(data_dir)
    config.data.num_workers = 1
    m = config.model
    m.latent.noise_dim = 4
    m.generator.fc_features, m.generator.base_shape, m.generator.upconv_features = (32,), (2, 2, 16), (8,)
    m.discriminator.conv_features, m.discriminator.fc_features = (8, 16), (32,)
    m.q.hidden = 16
    config.batch_size = 16
    config.eval_batch_size = 64
    config.num_train_steps = 4
    config.log_every_steps = 2
    config.eval_every_steps = 4
    config.checkpoint_every_steps = 4
    config.progress_bar = False
    return config


SPEC = ig.LatentSpec(noise_dim=5, categorical_sizes=(10, 3), num_continuous=2)
# Jitted once: eager JAX compiles every operation separately, which is slower here.
sample_latents = jax.jit(ig.sample_latents, static_argnums=(1, 2))


# -- the lower bound and the likelihoods -----------------------------------------


def test_mi_lower_bound_is_entropy_for_exact_q_and_zero_for_uniform_q():
    latents = sample_latents(jax.random.PRNGKey(0), SPEC, 256)
    entropies = ig.code_entropies(SPEC)
    assert entropies["cat0"] == pytest.approx(math.log(10)) and entropies["cat1"] == pytest.approx(
        math.log(3)
    )
    assert entropies["cont0"] == pytest.approx(math.log(2))
    # Q exactly right for the categorical codes: all mass on the true category.
    exact_logits = tuple(
        50.0 * jax.nn.one_hot(latents.categorical[:, i], k) for i, k in enumerate(SPEC.categorical_sizes)
    )
    sigma = 0.1
    exact = ig.Posterior(exact_logits, latents.continuous, jnp.full_like(latents.continuous, math.log(sigma)))
    bounds_of = jax.jit(
        lambda posterior: ig.mutual_information_lower_bounds(
            ig.code_log_likelihoods(SPEC, posterior, latents), entropies
        )
    )
    bounds = bounds_of(exact)
    assert float(bounds["cat0"]) == pytest.approx(math.log(10), abs=1e-5)
    assert float(bounds["cat1"]) == pytest.approx(math.log(3), abs=1e-5)
    # Gaussian Q centred on c with std sigma: E log Q = -0.5 log(2 pi) - log sigma.
    expected_cont = -0.5 * math.log(2 * math.pi) - math.log(sigma) + math.log(2)
    assert float(bounds["cont1"]) == pytest.approx(expected_cont, abs=1e-5)
    # Uniform Q for the categorical codes: log(1/K) + ln K = 0 exactly.
    uniform = exact.replace(categorical_logits=tuple(jnp.zeros_like(l) for l in exact_logits))
    bounds = bounds_of(uniform)
    assert float(bounds["cat0"]) == pytest.approx(0.0, abs=1e-6)
    assert float(bounds["cat1"]) == pytest.approx(0.0, abs=1e-6)


def test_gaussian_log_likelihood_matches_the_density_formula():
    rng = np.random.RandomState(0)
    x, mean = rng.uniform(-1, 1, (7, 3)), rng.normal(size=(7, 3))
    log_std = rng.uniform(-2, 1, (7, 3))
    expected = scipy.stats.norm.logpdf(x, loc=mean, scale=np.exp(log_std))
    got = ig.gaussian_log_likelihood(jnp.asarray(x), jnp.asarray(mean), jnp.asarray(log_std))
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-5)


def test_categorical_log_likelihood_and_q_output_layout():
    logits = jnp.asarray([[1.0, 2.0, 3.0], [0.0, 0.0, 5.0]])
    got = ig.categorical_log_likelihood(logits, jnp.asarray([2, 0]))
    expected = np.asarray(jax.nn.log_softmax(logits))[[0, 1], [2, 0]]
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-6)
    assert ig.q_output_dim(SPEC, "learned") == 10 + 3 + 2 * 2
    assert ig.q_output_dim(SPEC, "fixed") == 10 + 3 + 2
    flat = jnp.arange(17.0)[None]
    post = ig.split_q_outputs(SPEC, flat, "learned")
    assert [l.tolist() for l in post.categorical_logits] == [[list(range(10))], [[10.0, 11.0, 12.0]]]
    assert post.continuous_mean.tolist() == [[13.0, 14.0]]
    assert post.continuous_log_std.tolist() == [[15.0, 16.0]]
    fixed = ig.split_q_outputs(SPEC, flat[:, :15], "fixed", fixed_std=2.0)
    np.testing.assert_allclose(np.asarray(fixed.continuous_log_std), [[math.log(2.0)] * 2])


def test_gan_losses_are_the_log_formulas():
    real, fake = jnp.asarray([2.0, -1.0]), jnp.asarray([0.5, -3.0])
    d = lambda l: 1 / (1 + np.exp(-np.asarray(l)))  # pylint: disable=unnecessary-lambda-assignment
    expected_d = -np.mean(np.log(d(real))) - np.mean(np.log(1 - d(fake)))
    assert float(ig.discriminator_gan_loss(real, fake)) == pytest.approx(expected_d, rel=1e-6)
    assert float(ig.generator_gan_loss(fake)) == pytest.approx(-np.mean(np.log(d(fake))), rel=1e-6)


# -- latents and traversals ------------------------------------------------------


def test_sampled_latents_follow_the_spec_and_the_generator_input_is_one_hot():
    spec = ig.LatentSpec(
        noise_dim=5, categorical_sizes=(10, 3), num_continuous=2, continuous_range=(0.5, 2.0)
    )
    latents = sample_latents(jax.random.PRNGKey(1), spec, 4000)
    inputs = np.asarray(jax.jit(ig.generator_input, static_argnums=0)(spec, latents))
    noise, cat, cont = map(np.asarray, (latents.noise, latents.categorical, latents.continuous))
    assert noise.shape == (4000, 5) and cat.shape == (4000, 2) and cont.shape == (4000, 2)
    assert -1 <= noise.min() and noise.max() <= 1 and abs(noise.mean()) < 0.03
    assert 0.5 <= cont.min() and cont.max() <= 2.0 and abs(cont.mean() - 1.25) < 0.03
    assert sorted(np.unique(cat[:, 1]).tolist()) == [0, 1, 2]
    counts = np.bincount(cat[:, 0], minlength=10)
    assert len(counts) == 10 and counts.min() > 300  # Uniform over 10: 400 each.
    assert inputs.shape == (4000, spec.input_dim) == (4000, 5 + 10 + 3 + 2)
    np.testing.assert_array_equal(inputs[:, :5], noise)
    np.testing.assert_array_equal(np.argmax(inputs[:, 5:15], axis=1), cat[:, 0])
    np.testing.assert_array_equal(np.argmax(inputs[:, 15:18], axis=1), cat[:, 1])
    np.testing.assert_array_equal(inputs[:, 5:18].sum(axis=1), 2.0)
    np.testing.assert_array_equal(inputs[:, 18:], cont)
    normal = sample_latents(
        jax.random.PRNGKey(1), ig.LatentSpec(noise_dim=3, noise_distribution="normal", num_continuous=1), 4000
    )
    assert np.std(np.asarray(normal.noise)) == pytest.approx(1.0, abs=0.05)
    assert np.all(np.isfinite(np.asarray(normal.noise)))


def test_traversal_rows_are_categories_columns_sweep_one_code_and_noise_is_fixed_per_row():
    sweep = ig.sweep_values(-2.0, 2.0, 8)
    np.testing.assert_allclose(sweep[[0, -1]], [-2.0, 2.0])
    grid = jax.jit(lambda rng, values: ig.traversal_latents(rng, SPEC, continuous_index=1, sweep=values))(
        jax.random.PRNGKey(0), sweep
    )
    rows, cols = 10, 8
    assert grid.noise.shape == (rows * cols, 5)
    cat = np.asarray(grid.categorical).reshape(rows, cols, 2)
    np.testing.assert_array_equal(cat[:, :, 0], np.repeat(np.arange(10)[:, None], cols, axis=1))
    cont = np.asarray(grid.continuous).reshape(rows, cols, 2)
    np.testing.assert_allclose(cont[:, :, 1], np.tile(sweep, (rows, 1)))
    for fixed in (np.asarray(grid.noise).reshape(rows, cols, 5), cont[:, :, :1], cat[:, :, 1:]):
        np.testing.assert_array_equal(fixed, np.repeat(fixed[:, :1], cols, axis=1))  # Fixed along each row.
    assert not np.allclose(np.asarray(grid.noise)[0], np.asarray(grid.noise)[cols])  # Rows differ.
    by_cat = jax.jit(lambda rng: ig.category_latents(rng, SPEC, num_columns=8))(jax.random.PRNGKey(0))
    np.testing.assert_array_equal(
        np.asarray(by_cat.categorical[:, 0]).reshape(10, 8), np.repeat(np.arange(10)[:, None], 8, axis=1)
    )


# -- the matched accuracy --------------------------------------------------------


def test_matched_accuracy_on_a_hand_built_confusion_matrix():
    # Greedy (each category to its most frequent label) would give categories 0 and 1
    # both the label 0; the best one-to-one assignment is 0->1, 1->0, 2->2.
    confusion = np.array([[50, 45, 0], [40, 0, 0], [0, 0, 30]])
    accuracy, assignment = ig.matched_accuracy(confusion)
    assert assignment == {0: 1, 1: 0, 2: 2}
    assert accuracy == pytest.approx((45 + 40 + 30) / 165)  # Against 80/165 for 0->0, 1->1, 2->2.
    assert ig.purity(confusion) == pytest.approx((50 + 40 + 30) / 165)
    perfect = np.eye(10)[np.random.RandomState(0).permutation(10)] * 7
    assert ig.matched_accuracy(perfect)[0] == 1.0
    # More categories than labels: one category stays unmatched and counts as errors.
    accuracy, assignment = ig.matched_accuracy(np.array([[5, 0], [0, 5], [3, 0]]))
    assert accuracy == pytest.approx(10 / 13) and set(assignment) == {0, 1}


def test_confusion_matrix_counts_with_the_eval_mask():
    predicted = jnp.asarray([0, 2, 2, 1, 0])
    labels = jnp.asarray([1, 2, 2, 0, 0])
    mask = jnp.asarray([1.0, 1.0, 0.0, 1.0, 1.0])
    got = jax.jit(ig.confusion_matrix, static_argnums=(2, 3))(predicted, labels, 3, 4, mask)
    expected = np.zeros((3, 4))
    for p, y, w in zip(predicted.tolist(), labels.tolist(), mask.tolist()):
        expected[p, y] += w
    np.testing.assert_array_equal(np.asarray(got), expected)


# -- the task: gradients, sharding, training end to end ----------------------------


def _task_and_batches(config, num_batches):
    spec = data_lib.get_spec(config.data)
    task = make_task(config, spec)
    it = data_lib.make_train_iterator(config.data, global_batch_size=config.batch_size, seed=0)
    # Model inputs (float32 images in [0, 1]), as the loop hands them to the task inside its jit.
    return task, [jax.device_get(to_model_input(next(it))) for _ in range(num_batches)]


def test_information_term_reaches_the_generator_through_q(data_dir):
    task, _ = _task_and_batches(tiny_infogan_config(data_dir), 0)
    state = jax.jit(task.init_state)(jax.random.PRNGKey(0), task.dummy_batch())
    latents = sample_latents(jax.random.PRNGKey(1), task.latent_spec, 16)
    g_state = state.model_state["generator"]
    d_variables = {"params": state.params["discriminator"], **state.model_state["discriminator"]}

    def objective(g_params, weights, gan_weight):
        """gan_weight * (-E log D(G)) - sum_i weights_i E log Q(c_i | G), written out here."""
        inputs = ig.generator_input(task.latent_spec, latents)
        fake, _ = task.generator.apply(
            {"params": g_params, **g_state}, inputs, train=True, mutable=["batch_stats"]
        )
        out, _ = task.discriminator.apply(d_variables, fake, train=True, mutable=["batch_stats"])
        log_liks = ig.code_log_likelihoods(task.latent_spec, task.q_posterior(out["q_outputs"]), latents)
        return gan_weight * ig.generator_gan_loss(out["d_logits"]) + ig.info_loss(log_liks, weights)

    @jax.jit
    def all_grads(g_params):
        one_code = {
            code: jax.grad(objective)(g_params, {n: float(n == code) for n in task.g_weights}, 0.0)
            for code in ("cat0", "cont0")
        }
        task_step = jax.grad(lambda p: task.generator_loss(p, g_state, d_variables, latents)[0])(g_params)
        with_info = jax.grad(objective)(g_params, task.g_weights, 1.0)
        gan_only = jax.grad(objective)(g_params, {n: 0.0 for n in task.g_weights}, 1.0)
        return one_code, task_step, with_info, gan_only

    one_code, task_step, with_info, gan_only = jax.device_get(all_grads(state.params["generator"]))
    for code, grads in one_code.items():
        norms = {k: float(np.linalg.norm(v["kernel"])) for k, v in grads.items() if "kernel" in v}
        assert len(norms) == 4  # fc0, fc_base, upconv0, upconv_out.
        assert all(n > 0 for n in norms.values()), (code, norms)  # Every G layer, down to the first FC.
    # The task's G step is the GAN loss plus lambda-weighted information term, not the GAN loss alone.
    chex.assert_trees_all_close(task_step, with_info, rtol=1e-5, atol=1e-7)
    assert not np.allclose(task_step["fc0"]["kernel"], gan_only["fc0"]["kernel"], rtol=1e-3)


def test_detached_q_trains_q_but_not_the_trunk(data_dir):
    config = tiny_infogan_config(data_dir)
    config.info.lambda_categorical, config.info.lambda_continuous, config.info.detach_q = 0.0, 0.0, True
    task, (batch,) = _task_and_batches(config, 1)
    state = jax.jit(task.init_state)(jax.random.PRNGKey(0), task.dummy_batch())
    latents = sample_latents(jax.random.PRNGKey(1), task.latent_spec, 16)
    fake = jax.jit(task.generate)(state, latents)

    @jax.jit
    @jax.grad
    def q_loss_grads(d_params):
        return task.discriminator_loss(
            d_params, state.model_state["discriminator"], to_model_input(batch)["image"], fake, latents
        )[1][1]["q_loss"]

    grads = jax.device_get(q_loss_grads(state.params["discriminator"]))
    for head in ("q_fc", "q_out"):
        assert float(np.abs(grads[head]["kernel"]).sum()) > 0, head
    for trunk in ("conv0", "conv1", "fc0", "d_out"):
        assert float(np.abs(grads[trunk]["kernel"]).sum()) == 0, trunk
    # Q is fit with weight 1 per code; the generator gets no information gradient (lambda = 0).
    assert task.q_weights == {name: 1.0 for name in task.latent_spec.code_names()}
    assert all(w == 0 for w in task.g_weights.values())


def test_sharded_step_equals_single_device_step(data_dir):
    assert jax.device_count() == 8, "conftest.py forces 8 CPU devices"
    config = tiny_infogan_config(data_dir)
    task, batches = _task_and_batches(config, 2)
    eval_batch = next(iter(data_lib.make_eval_batches(config.data, global_batch_size=64)))
    one = run_steps(task, mesh_lib.make_mesh(1), batches, eval_batch)
    eight = run_steps(task, mesh_lib.make_mesh(8), batches, eval_batch)
    # BatchNorm statistics over the global batch: the 8-way split computes the same
    # update up to float32 summation order (measured: at most 4e-4 of a leaf's scale;
    # per-device statistics over 2 examples would differ at order 1).
    for path, a, b in zip(
        *[[p for p, _ in jax.tree_util.tree_leaves_with_path(one)]],
        jax.tree.leaves(eight),
        jax.tree.leaves(one),
    ):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        name = jax.tree_util.keystr(path)
        if "_slant_" in name or "_width_" in name:
            # The continuous-code measures of the untrained tiny G's near-uniform images: slants of
            # about 1e-4 degrees, ratios of near-zero moments. Equal to far below what they measure.
            assert np.max(np.abs(a - b)) <= 1e-4 * max(1.0, np.max(np.abs(b))), name
            continue
        assert np.max(np.abs(a - b)) <= 2e-3 * np.max(np.abs(b)) + 1e-7, name
    assert int(eight[0].step) == 2


def test_train_eval_and_traverse_end_to_end(tmp_path, data_dir):
    config = tiny_infogan_config(data_dir)
    workdir = str(tmp_path / "wd")
    state = loop.train_and_evaluate(config, workdir)
    assert int(state.step) == 4
    with open(os.path.join(workdir, "eval", "latest.json")) as f:
        metrics = json.load(f)
    assert metrics["num_examples"] == 300
    assert 0.1 <= metrics["cat0_accuracy"] <= 1
    assert metrics["cat0_error"] == pytest.approx(1 - metrics["cat0_accuracy"])
    assert metrics["cat0_entropy"] == pytest.approx(math.log(10))
    assert metrics["cat0_mi_lower_bound"] <= math.log(10)
    assert np.sum(metrics["cat0_confusion"]) == 300 and len(metrics["cat0_assignment"]) == 10
    for name in ("samples_by_cat0", "traversal_cont0", "traversal_cont1"):
        assert os.path.getsize(os.path.join(workdir, "images", f"{name}.png")) > 100
    # --mode=traverse: 10 columns from -2 to 2, rows = the 10 categories, 8x8 digits upscaled 8x.
    paths = main_lib.run(config, workdir, "traverse")
    from PIL import Image  # pylint: disable=g-import-not-at-top

    width, height = Image.open(paths["traversal_cont0"]).size
    assert (width, height) == (10 * 65 + 1, 10 * 65 + 1)
    # The continuous codes, measured: within-sweep correlations, slopes and per-value means; no
    # classifier workdir: no class measure.
    for j in range(2):
        for name in ("slant", "width"):
            assert -1 <= metrics[f"cont{j}_{name}_correlation"] <= 1
            assert np.isfinite(metrics[f"cont{j}_{name}_slope"])
            assert len(metrics[f"cont{j}_{name}_mean_per_value"]) == config.traversal.measure_values
        assert f"cont{j}_class_kept_fraction" not in metrics
    measured = paths["traversal_cont0"].removesuffix(".png")
    assert Image.open(measured + "_measured.png").size[1] > height
    with open(measured + "_measures.json") as f:
        assert np.asarray(json.load(f)["slant"]).shape == (10, 10)


def test_continuous_code_measures_with_a_classifier_keep_class_fractions(tmp_path, data_dir):
    classifier = load_config("classifier")
    classifier.data.data_dir = str(data_dir)
    classifier.update(
        dict(num_train_steps=2, eval_every_steps=0, checkpoint_every_steps=2, progress_bar=False)
    )
    loop.train_and_evaluate(classifier, str(tmp_path / "classifier"))
    config = tiny_infogan_config(data_dir)
    config.traversal.classifier_workdir = str(tmp_path / "classifier")
    config.num_train_steps = 2
    loop.train_and_evaluate(config, str(tmp_path / "wd"))
    with open(tmp_path / "wd" / "eval" / "latest.json") as f:
        metrics = json.load(f)
    for j in range(2):
        assert 0 <= metrics[f"cont{j}_class_kept_fraction"] <= metrics[f"cont{j}_class_agreement"] <= 1
    config.traversal.classifier_workdir = str(tmp_path / "wd")  # An InfoGAN, not a classifier.
    with pytest.raises(ValueError, match=r"holds a model_name='infogan' run, not a classifier"):
        loop.train_and_evaluate(config, str(tmp_path / "wd2"))


def test_mnist_configs_have_the_papers_hyperparameters():
    config = load_config("infogan", "mnist")
    latent = config.model.latent
    assert (latent.noise_dim, tuple(latent.categorical_sizes), latent.num_continuous) == (62, (10,), 2)
    assert tuple(latent.continuous_range) == (-1.0, 1.0) and config.batch_size == 128
    g, d = config.model.generator, config.model.discriminator
    assert (tuple(g.fc_features), tuple(g.base_shape), tuple(g.upconv_features)) == (
        (1024,),
        (7, 7, 128),
        (64,),
    )
    assert (tuple(d.conv_features), tuple(d.fc_features), d.leaky_slope) == ((64, 128), (1024,), 0.1)
    assert config.model.q.hidden == 128
    # The released code's continuous codes: Q's Gaussian has std 1, lambda 1 (launchers/run_mnist_exp.py).
    assert (config.model.q.continuous_std, config.model.q.fixed_std, config.info.lambda_continuous) == (
        "fixed",
        1.0,
        1.0,
    )
    opt = config.optimizer
    assert (opt.discriminator.learning_rate, opt.generator.learning_rate) == (2e-4, 1e-3)
    assert opt.discriminator.b1 == opt.generator.b1 == 0.5
    assert config.info.lambda_categorical == 1.0 and not config.info.detach_q
    control = load_config("infogan", "mnist_gan")
    info = control.info
    assert (info.lambda_categorical, info.lambda_continuous, info.detach_q) == (0.0, 0.0, True)
    assert control.model.to_dict() == config.model.to_dict()  # Same networks and codes.
    celeba = load_config("infogan", "celeba")
    assert tuple(celeba.model.latent.categorical_sizes) == (10,) * 10 and celeba.data.image_size == 32


# -- bad input -----------------------------------------------------------------


@pytest.mark.parametrize(
    "field,value,error,message",
    [
        (
            "categorical_sizes",
            (10, 1),
            ig.LatentSpecError,
            r"categorical_sizes\[1\]=1: a categorical code needs",
        ),
        ("continuous_range", (1.0, 1.0), ig.LatentSpecError, r"continuous_range=\(1.0, 1.0\) is empty"),
        ("continuous_range", (1.0, -1.0), ig.LatentSpecError, r"continuous_range=\(1.0, -1.0\) is empty"),
        ("noise_distribution", "cauchy", ig.LatentSpecError, r"noise_distribution='cauchy'"),
    ],
)
def test_bad_latent_specs_are_clear_errors(tmp_path, data_dir, field, value, error, message):
    config = tiny_infogan_config(data_dir)
    config.model.latent[field] = value
    with pytest.raises(error, match=message):
        loop.train_and_evaluate(config, str(tmp_path))
    assert not (tmp_path / "checkpoints").exists()


def test_spec_without_codes_is_refused_where_codes_are_needed(tmp_path, data_dir):
    config = tiny_infogan_config(data_dir)
    config.model.latent.categorical_sizes, config.model.latent.num_continuous = (), 0
    with pytest.raises(ig.LatentSpecError, match=r"has no codes .* InfoGAN .* needs at least one"):
        loop.train_and_evaluate(config, str(tmp_path))
    # A traversal needs a continuous code.
    categorical_only = ig.LatentSpec(noise_dim=4, categorical_sizes=(10,))
    with pytest.raises(ig.LatentSpecError, match=r"needs 1 continuous code\(s\) but .*num_continuous=0"):
        ig.traversal_latents(jax.random.PRNGKey(0), categorical_only, 0, ig.sweep_values())
    with pytest.raises(ig.LatentSpecError, match=r"needs 1 categorical code\(s\)"):
        ig.category_latents(jax.random.PRNGKey(0), ig.LatentSpec(noise_dim=4, num_continuous=1), 8)
    config.model.latent.categorical_sizes = (10,)
    with pytest.raises(ig.LatentSpecError, match=r"--mode=traverse needs 1 continuous code"):
        main_lib.run(config, str(tmp_path / "cat_only"), "traverse")


@pytest.mark.parametrize(
    "updates,message",
    [
        ({"info.lambda_continuous": 0.0}, r"lambda_continuous=0 with info.detach_q=False leaves Q untrained"),
        ({"info.lambda_categorical": -1.0}, r"info.lambda_categorical=-1.0 must be >= 0"),
        ({"model.q.continuous_std": "learnt"}, r"Unknown model.q.continuous_std='learnt'"),
        ({"model.generator.base_shape": (3, 3, 16)}, r"generator makes 12x12 images .* data is 8x8"),
        ({"model.discriminator.conv_features": (8, 8, 8, 8)}, r"do not divide the 8x8 images"),
    ],
)
def test_bad_model_configs_are_clear_errors(tmp_path, data_dir, updates, message):
    config = tiny_infogan_config(data_dir)
    for dotted, value in updates.items():
        node = config
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    with pytest.raises(ValueError, match=message):
        loop.train_and_evaluate(config, str(tmp_path))


# -- the invariant information term (info.augment, issue 14) -----------------------

IDENTITY = {"max_rotation_degrees": 0.0, "scale_range": (1.0, 1.0), "max_shift_pixels": 0.0}


def _random_images(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).uniform(size=shape).astype(np.float32))


def test_affine_transform_is_exact_for_the_identity_integer_shifts_and_quarter_turns():
    images = _random_images((3, 9, 9, 2))
    zeros, ones = jnp.zeros((3,)), jnp.ones((3,))
    transform = jax.jit(invariance.affine_transform)
    np.testing.assert_array_equal(transform(images, zeros, ones, jnp.zeros((3, 2))), images)
    identity = invariance.TransformRanges(**IDENTITY)
    assert identity.is_identity
    np.testing.assert_array_equal(
        jax.jit(invariance.random_transform, static_argnums=2)(jax.random.PRNGKey(0), images, identity),
        images,
    )
    # A shift by whole pixels moves the content, with zeros coming in.
    shifted = np.asarray(transform(images, zeros, ones, jnp.tile(jnp.array([[2.0, -1.0]]), (3, 1))))
    expected = np.zeros_like(np.asarray(images))
    expected[:, 2:, :-1] = np.asarray(images)[:, :-2, 1:]
    np.testing.assert_array_equal(shifted, expected)
    # A quarter turn counter-clockwise (as displayed) about the centre is np.rot90.
    turned = np.asarray(transform(images, jnp.full((3,), math.pi / 2), ones, jnp.zeros((3, 2))))
    np.testing.assert_allclose(turned, np.rot90(np.asarray(images), 1, axes=(1, 2)), atol=1e-5)
    # Scaling by 2 about the centre of an odd image reads pixel (c + (p - c) / 2) at even offsets.
    doubled = np.asarray(transform(images, zeros, 2 * ones, jnp.zeros((3, 2))))
    np.testing.assert_allclose(doubled[:, ::2, ::2], np.asarray(images)[:, 2:7, 2:7], atol=1e-6)


def test_random_transform_draws_per_sample_within_the_ranges_and_keeps_bf16():
    ranges = invariance.TransformRanges(
        max_rotation_degrees=15.0, scale_range=(0.9, 1.1), max_shift_pixels=2.0
    )
    angle, scale, shift = jax.jit(invariance.random_affine, static_argnums=(1, 2))(
        jax.random.PRNGKey(0), 4096, ranges
    )
    assert float(jnp.max(jnp.abs(angle))) <= math.radians(15) and float(
        jnp.max(jnp.abs(angle))
    ) > 0.9 * math.radians(15)
    assert 0.9 <= float(scale.min()) < 0.91 and 1.09 < float(scale.max()) <= 1.1
    assert shift.shape == (4096, 2) and float(jnp.max(jnp.abs(shift))) <= 2.0
    assert len(np.unique(np.asarray(angle))) == 4096  # A fresh draw per sample.
    images = _random_images((4, 28, 28, 1)).astype(jnp.bfloat16)
    out = jax.jit(invariance.random_transform, static_argnums=2)(jax.random.PRNGKey(1), images, ranges)
    assert out.shape == images.shape and out.dtype == jnp.bfloat16
    assert bool(jnp.all(jnp.isfinite(out.astype(jnp.float32))))


def test_thickness_change_dilates_and_erodes_a_bar_by_one_pixel_each_side():
    # A vertical bar 3 pixels wide in a 9x9 image (two images, two channels).
    bar = np.zeros((2, 9, 9, 2), np.float32)
    bar[:, 2:7, 3:6] = 1.0
    change = jax.jit(invariance.change_thickness)
    np.testing.assert_array_equal(change(bar, jnp.zeros((2,))), bar)
    thick, thin = np.asarray(change(bar, jnp.array([1.0, -1.0])))
    expected_thick, expected_thin = np.zeros((9, 9, 2), np.float32), np.zeros((9, 9, 2), np.float32)
    expected_thick[1:8, 2:7] = 1.0  # One pixel more on every side (the 3x3 maximum).
    expected_thin[3:6, 4:5] = 1.0  # One pixel less on every side (the 3x3 minimum).
    np.testing.assert_array_equal(thick, expected_thick)
    np.testing.assert_array_equal(thin, expected_thin)
    # A blend: half-way to the dilation adds 0.5 on the new border pixels, keeps the rest.
    half = np.asarray(change(bar, jnp.array([0.5, 0.5])))[0]
    np.testing.assert_array_equal(half, 0.5 * (bar[0] + expected_thick))
    # The ink changes monotonically with the blend, and the transformation is differentiable.
    ink = [float(change(bar, jnp.full((2,), a)).sum()) for a in (-1.0, -0.5, 0.0, 0.5, 1.0)]
    assert ink == sorted(ink) and ink[0] < ink[2] < ink[4]
    grad = jax.grad(lambda x: jnp.sum(change(x, jnp.array([0.7, -0.3])) ** 2))(jnp.asarray(bar))
    assert bool(jnp.all(jnp.isfinite(grad))) and float(jnp.abs(grad).sum()) > 0


def test_random_transform_with_thickness_keeps_the_affine_draw_and_is_identity_at_zero():
    images = _random_images((5, 12, 12, 1))
    rng = jax.random.PRNGKey(3)
    affine = invariance.TransformRanges(
        max_rotation_degrees=10.0, scale_range=(0.9, 1.1), max_shift_pixels=1.0
    )
    thick = invariance.TransformRanges(
        max_rotation_degrees=0.0, scale_range=(1.0, 1.0), max_shift_pixels=0.0, max_thickness=0.5
    )
    both = dataclasses.replace(affine, max_thickness=0.5)
    transform = jax.jit(invariance.random_transform, static_argnums=2)
    assert not thick.is_identity and not both.is_identity
    # The thickness draw is a key folded from the affine one: the affine part of a run is the same
    # with or without it, so T = affine(thickness(x)).
    amount = jax.random.uniform(jax.random.fold_in(rng, 1), (5,), jnp.float32, -0.5, 0.5)
    thickened = invariance.change_thickness(images, amount)
    np.testing.assert_allclose(transform(rng, images, thick), thickened, atol=1e-6)  # Up to fusion.
    np.testing.assert_allclose(transform(rng, images, both), transform(rng, thickened, affine), atol=1e-6)
    assert not np.allclose(transform(rng, images, both), transform(rng, images, affine))


def test_shear_moves_each_row_by_k_pixels_per_row_and_keeps_the_other_draws():
    images = _random_images((3, 9, 9, 2))
    zeros, ones, no_shift = jnp.zeros((3,)), jnp.ones((3,)), jnp.zeros((3, 2))
    transform = jax.jit(invariance.affine_transform)
    np.testing.assert_array_equal(transform(images, zeros, ones, no_shift, zeros), images)
    # k = 1 on an odd image: row r (from the centre, 4) moves by r - 4 whole pixels, zeros coming in.
    sheared = np.asarray(transform(images, zeros, ones, no_shift, jnp.array([1.0, -1.0, 0.0])))
    expected = np.zeros((2, 9, 9, 2), np.float32)
    for r in range(9):
        for sign, out in ((1, expected[0]), (-1, expected[1])):
            step = sign * (r - 4)
            for c in range(9):
                if 0 <= c - step < 9:
                    out[r, c] = np.asarray(images)[0 if sign == 1 else 1, r, c - step]
    np.testing.assert_array_equal(sheared[:2], expected)
    np.testing.assert_array_equal(sheared[2], np.asarray(images)[2])
    # The shear draw is a key folded from the affine one (2): with it on, the rotation, scale and
    # shift of a run are the same draws, and the thickness draw too.
    rng = jax.random.PRNGKey(4)
    affine = invariance.TransformRanges(max_rotation_degrees=10.0, max_shift_pixels=1.0, max_thickness=0.5)
    both = dataclasses.replace(affine, max_shear=0.3)
    assert not dataclasses.replace(invariance.TransformRanges(**IDENTITY), max_shear=0.3).is_identity
    k = jax.random.uniform(jax.random.fold_in(rng, 2), (3,), jnp.float32, -0.3, 0.3)
    amount = jax.random.uniform(jax.random.fold_in(rng, 1), (3,), jnp.float32, -0.5, 0.5)
    expected = invariance.affine_transform(
        invariance.change_thickness(images, amount), *invariance.random_affine(rng, 3, affine), shear=k
    )
    np.testing.assert_allclose(
        jax.jit(invariance.random_transform, static_argnums=2)(rng, images, both), expected, atol=1e-6
    )


def _augment_task(data_dir, ranges=None, dtype="float32"):
    config = tiny_infogan_config(data_dir)
    config.dtype = dtype
    config.info.augment.enabled = True
    config.info.augment.update(ranges or {})
    task, (batch,) = _task_and_batches(config, 1)
    return task, batch


def test_invariant_term_with_the_identity_transformation_is_the_plain_term(data_dir, monkeypatch):
    rng = jax.random.PRNGKey(2)

    def tasks_and_inputs(dtype):
        config = tiny_infogan_config(data_dir)
        config.dtype = dtype
        plain, (batch,) = _task_and_batches(config, 1)
        invariant, _ = _augment_task(data_dir, IDENTITY, dtype=dtype)
        assert plain.augment is None and invariant.augment.is_identity
        state = jax.jit(plain.init_state)(jax.random.PRNGKey(0), plain.dummy_batch())
        latents = sample_latents(jax.random.PRNGKey(1), plain.latent_spec, 16)
        fake = jax.jit(plain.generate)(state, latents)
        inputs = (state.params, state.model_state, batch["image"], fake, latents)
        as_dtype = lambda x: x.astype(DTYPES[dtype]) if jnp.issubdtype(x.dtype, jnp.floating) else x
        return plain, invariant, jax.tree.map(as_dtype, inputs)

    def losses_and_grads(task, params, model_state, image, fake, latents):
        d_params, g_params = params["discriminator"], params["generator"]
        d_variables = {"params": d_params, **model_state["discriminator"]}
        (d_loss, (_, d_metrics)), d_grads = jax.value_and_grad(task.discriminator_loss, has_aux=True)(
            d_params, model_state["discriminator"], image, fake, latents, rng
        )
        (g_loss, (_, g_metrics)), g_grads = jax.value_and_grad(task.generator_loss, has_aux=True)(
            g_params, model_state["generator"], d_variables, latents, rng
        )
        return d_loss, d_metrics["q_loss"], g_loss, g_metrics, (d_grads, g_grads)

    def both(dtype):
        plain, invariant, inputs = tasks_and_inputs(dtype)
        step = jax.jit(losses_and_grads, static_argnums=0)
        return [jax.device_get(step(task, *inputs)) for task in (plain, invariant)]

    # float32, as trained: the same losses and bounds to the last bit.
    (d0, q0, g0, m0, _), (d1, q1, g1, m1, _) = both("float32")
    assert float(d0) == float(d1) and float(q0) == float(q1) and float(g0) == float(g1)
    assert (
        float(m1["cat0_mi_lower_bound"])
        == float(m1["cat0_clean_mi_lower_bound"])
        == float(m0["cat0_mi_lower_bound"])
    )
    # The same gradients. The invariant term runs Q on a second pass over the (identical) images,
    # so in float32 the two sum in another order, and BatchNorm's backward pass amplifies that: the
    # gradient it passes down sums to ~0 per channel, so the first convolution's gradients are small
    # differences of large terms (seen: 2e-3 of the leaf's scale, varying with the CPU type). The
    # networks computed in float64 leave no room for summation order; a real difference between the
    # terms (a missing or doubled term, another draw) would be of the order of the gradient itself.
    monkeypatch.setitem(DTYPES, "float64", jnp.float64)
    with jax.enable_x64(True):
        (*_, grads0), (*_, grads1) = both("float64")
    for a, b in zip(jax.tree.leaves(grads1), jax.tree.leaves(grads0)):
        assert a.dtype == np.float64
        assert np.max(np.abs(a - b)) <= 1e-9 * np.max(np.abs(b)) + 1e-15  # seen: <= 3e-12


def test_invariant_term_reaches_the_generator_and_differs_from_the_plain_term(data_dir):
    task, _ = _augment_task(data_dir)
    state = jax.jit(task.init_state)(jax.random.PRNGKey(0), task.dummy_batch())
    latents = sample_latents(jax.random.PRNGKey(1), task.latent_spec, 16)
    g_state = state.model_state["generator"]
    d_variables = {"params": state.params["discriminator"], **state.model_state["discriminator"]}

    def cat_term(g_params, transform_rng):
        fake, _ = task.generator.apply(
            {"params": g_params, **g_state},
            ig.generator_input(task.latent_spec, latents),
            train=True,
            mutable=["batch_stats"],
        )
        out, _ = task.discriminator.apply(d_variables, fake, train=True, mutable=["batch_stats"])
        log_liks, _ = task.fake_log_likelihoods(d_variables, fake, out, latents, transform_rng)
        return -jnp.mean(log_liks["cat0"])

    @jax.jit
    def run(g_params):
        rng = jax.random.PRNGKey(3)
        return (
            jax.grad(cat_term)(g_params, rng),
            cat_term(g_params, rng),
            cat_term(g_params, jax.random.PRNGKey(4)),
        )

    grads, term, other_draw = jax.device_get(run(state.params["generator"]))
    norms = {k: float(np.linalg.norm(v["kernel"])) for k, v in grads.items() if "kernel" in v}
    assert len(norms) == 4 and all(n > 0 for n in norms.values()), norms
    assert float(term) != float(other_draw)  # The transformation is random.


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_invariant_train_step_runs_finite_in_float32_and_bf16(data_dir, dtype):
    task, batch = _augment_task(data_dir, dtype=dtype)
    state = jax.jit(task.init_state)(jax.random.PRNGKey(0), task.dummy_batch())
    new_state, metrics = jax.jit(task.train_step)(state, batch)
    metrics = jax.device_get(metrics)
    assert int(new_state.step) == 1
    assert {"cat0_mi_lower_bound", "cat0_clean_mi_lower_bound", "cont0_mi_lower_bound"} <= set(metrics)
    assert all(np.isfinite(v) for v in metrics.values()), metrics
    for leaf in jax.tree.leaves(new_state.params):
        assert leaf.dtype == jnp.float32


def test_mnist_invariant_is_mnist_with_the_augmented_term():
    faithful, invariant = load_config("infogan", "mnist"), load_config("infogan", "mnist_invariant")
    assert not faithful.info.augment.enabled and invariant.info.augment.enabled
    assert (
        invariant.info.augment.max_rotation_degrees,
        tuple(invariant.info.augment.scale_range),
        invariant.info.augment.max_shift_pixels,
        invariant.info.augment.max_thickness,
        invariant.info.augment.max_shear,
    ) == (15.0, (0.9, 1.1), 2.0, 0.5, 0.3)
    invariant.info.augment.update(enabled=False, max_thickness=0.0, max_shear=0.0)  # Everything else equal.
    assert invariant.to_dict() == faithful.to_dict()


@pytest.mark.parametrize(
    "updates,message",
    [
        ({"max_rotation_degrees": -5.0}, r"info.augment.max_rotation_degrees=-5.0: .* must be in \[0, 180\]"),
        ({"max_shift_pixels": -1.0}, r"info.augment.max_shift_pixels=-1.0: .* must be >= 0"),
        ({"scale_range": (1.1, 0.9)}, r"info.augment.scale_range=\(1.1, 0.9\) is empty or not positive"),
        ({"scale_range": (0.0, 1.0)}, r"info.augment.scale_range=\(0.0, 1.0\) is empty or not positive"),
        ({"scale_range": (1.0,)}, r"info.augment.scale_range=\(1.0,\) must be \(low, high\)"),
        ({"max_thickness": -0.5}, r"info.augment.max_thickness=-0.5: .* must be in \[0, 1\]"),
        ({"max_thickness": 1.5}, r"info.augment.max_thickness=1.5: .* must be in \[0, 1\]"),
        ({"max_shear": -0.1}, r"info.augment.max_shear=-0.1: .* must be in \[0, 1\]"),
        ({"max_shear": 2.0}, r"info.augment.max_shear=2.0: .* must be in \[0, 1\]"),
    ],
)
def test_bad_transformation_ranges_are_clear_errors(tmp_path, data_dir, updates, message):
    config = tiny_infogan_config(data_dir)
    config.info.augment.enabled = True
    config.info.augment.update(updates)
    with pytest.raises(ValueError, match=message):
        loop.train_and_evaluate(config, str(tmp_path))
    assert not (tmp_path / "checkpoints").exists()


def test_augment_without_a_categorical_code_is_a_clear_error(tmp_path, data_dir):
    config = tiny_infogan_config(data_dir)
    config.info.augment.enabled = True
    config.model.latent.categorical_sizes = ()
    with pytest.raises(ig.LatentSpecError, match=r"info.augment.enabled=True .* no categorical code"):
        loop.train_and_evaluate(config, str(tmp_path))


# -- the continuous codes, measured (slant and width, issue 14 item 4) ----------------


def _bar(angle_degrees, length=18.0, width=1.5, size=28, supersample=8):
    """A bar through the image centre, rotated by `angle_degrees` from the vertical (top to the
    right for positive angles), rasterised with pixel values = the covered fraction."""
    sub = (np.arange(size * supersample) + 0.5) / supersample - size / 2
    rows, cols = np.meshgrid(sub, sub, indexing="ij")
    t = math.radians(angle_degrees)
    along = -rows * math.cos(t) + cols * math.sin(t)  # Coordinate along the bar (up = positive).
    across = rows * math.sin(t) + cols * math.cos(t)
    inside = (np.abs(along) <= length / 2) & (np.abs(across) <= width / 2)
    return inside.reshape(size, supersample, size, supersample).mean(axis=(1, 3))[..., None]


def test_a_rotated_bar_has_the_slant_it_was_rotated_by():
    angles = [-35.0, -20.0, -5.0, 0.0, 10.0, 25.0, 40.0]
    bars = jnp.asarray(np.stack([_bar(a) for a in angles]).astype(np.float32))
    slant = np.asarray(jax.jit(measures.slant_degrees)(bars))
    np.testing.assert_allclose(slant, angles, atol=1.0)
    # The same through the transformation of the invariant term: rotating the vertical bar
    # counter-clockwise by theta leans its top to the left, slant -theta.
    vertical = jnp.tile(bars[3:4], (len(angles), 1, 1, 1))
    turned = invariance.affine_transform(
        vertical, jnp.radians(jnp.asarray(angles)), jnp.ones(len(angles)), jnp.zeros((len(angles), 2))
    )
    np.testing.assert_allclose(np.asarray(measures.slant_degrees(turned)), -np.asarray(angles), atol=1.5)


def test_the_transformations_shear_slants_a_vertical_bar_by_minus_atan_k_and_keeps_its_width():
    k = np.array([-0.4, -0.2, 0.0, 0.2, 0.4], np.float32)
    vertical = jnp.tile(jnp.asarray(_bar(0.0, width=3.0).astype(np.float32))[None], (len(k), 1, 1, 1))
    sheared = invariance.affine_transform(
        vertical, jnp.zeros(len(k)), jnp.ones(len(k)), jnp.zeros((len(k), 2)), jnp.asarray(k)
    )
    np.testing.assert_allclose(
        np.asarray(measures.slant_degrees(sheared)), -np.degrees(np.arctan(k)), atol=1.0
    )
    # The width is the deskewed spread, so the shear keeps it up to the resampling: bilinear
    # interpolation at a fractional column offset f adds the variance f (1 - f) <= 1/4 to a row.
    variance = np.asarray(measures.width_pixels(sheared)) ** 2 / 12
    added = np.delete(variance - variance[2], 2)
    assert np.all(added > 0) and np.all(added <= 0.25 + 1e-4), added


def test_a_wider_rectangle_is_wider_and_shearing_keeps_the_width():
    images = np.zeros((4, 28, 28, 1), np.float32)
    images[0, 6:22, 12:16] = 1.0  # 4 wide.
    images[1, 6:22, 10:18] = 1.0  # 8 wide.
    images[2, 6:22, 8:20] = 0.5  # 12 wide, fainter: the ink's scale does not matter.
    for r in range(6, 22):  # The 8-wide rectangle sheared by one column per row (top to the left).
        images[3, r, 2 + (r - 6) : 10 + (r - 6)] = 1.0
    width = np.asarray(jax.jit(measures.width_pixels)(jnp.asarray(images)))
    # A uniform on w whole pixels has variance (w^2 - 1) / 12.
    np.testing.assert_allclose(width[:3], np.sqrt(np.array([4, 8, 12]) ** 2 - 1.0), rtol=1e-4)
    assert width[0] < width[1] < width[2]
    np.testing.assert_allclose(width[3], width[1], rtol=1e-4)
    slant = np.asarray(measures.slant_degrees(jnp.asarray(images)))
    np.testing.assert_allclose(slant[:3], 0.0, atol=1e-3)
    np.testing.assert_allclose(slant[3], -45.0, atol=1e-3)


def test_sweep_statistics_add_up_over_batches_to_the_within_sweep_correlation():
    rng = np.random.default_rng(0)
    values = np.linspace(-2, 2, 9).astype(np.float32)
    offsets = rng.normal(0, 10, (12, 1))  # Between-sweep variation: not the code's.
    measured = (offsets + 3.0 * values[None] + rng.normal(0, 1, (12, 9))).astype(np.float32)
    halves = [measures.sweep_statistics(jnp.asarray(values), jnp.asarray(m)) for m in np.split(measured, 2)]
    total = jax.tree.map(lambda a, b: np.asarray(a) + np.asarray(b), *halves)
    summary = measures.sweep_summary(total)
    centred = measured - measured.mean(axis=1, keepdims=True)
    x = np.tile(values - values.mean(), (12, 1))
    assert summary["correlation"] == pytest.approx(np.corrcoef(x.ravel(), centred.ravel())[0, 1], abs=1e-5)
    assert summary["slope"] == pytest.approx(np.polyfit(x.ravel(), centred.ravel(), 1)[0], abs=1e-4)
    np.testing.assert_allclose(summary["mean_per_value"], measured.mean(axis=0), rtol=1e-5)
    kept = measures.class_kept(jnp.asarray([[3, 3, 3], [3, 5, 3], [1, 1, 7]]))
    assert float(kept["kept"]) == 1 and float(kept["agree"]) == 3 + 1 + 2  # Middle values 3, 5, 1.
