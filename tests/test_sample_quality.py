"""Sample quality: Frechet distance and accuracy maths, the project's classifier, `--mode=sample_eval`."""

import json
import math
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import load_config, tiny_vqvae_config, train_tiny_prior

import vqlatent
from vqlatent import data as data_lib
from vqlatent import main as main_lib
from vqlatent.codes import dataset as codes_data
from vqlatent.codes import layout
from vqlatent.evaluation import sample_quality as sq
from vqlatent.models import chain_eval
from vqlatent.nets.pixelcnn import GatedPixelCNN, PixelCNNInputError
from vqlatent.priors import check_sampling_inputs, generate, sampling
from vqlatent.trainers import base, loop
from vqlatent.trainers import workdir as workdir_lib
from vqlatent.trainers.classifier import random_shift

# -- pure functions ------------------------------------------------------------------


@pytest.mark.filterwarnings("error::scipy.linalg.LinAlgWarning")  # Dead units do not make sqrtm singular.
def test_frechet_distance_of_diagonal_gaussians_has_the_closed_form():
    # Diagonal covariances commute: Tr((C1 C2)^(1/2)) = sum sqrt(s1 s2), so
    # d^2 = |m1 - m2|^2 + sum (sqrt(s1) - sqrt(s2))^2.
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    var1, var2 = rng.uniform(0.1, 3.0, 6), rng.uniform(0.1, 3.0, 6)
    var1[0] = var2[0] = 0.0  # A feature constant in both sets (a dead ReLU): only its means count.
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
    got = sq.frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2))
    np.testing.assert_allclose(got, expected, rtol=1e-9)
    np.testing.assert_allclose(
        sq.frechet_distance(mu2, np.diag(var2), mu1, np.diag(var1)), expected, rtol=1e-9
    )


def test_frechet_distance_is_zero_for_identical_statistics_and_symmetric():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(200, 5)), rng.normal(size=(150, 5)) @ rng.normal(size=(5, 5)) + 1.0
    stats_a, stats_b = sq.gaussian_statistics(a), sq.gaussian_statistics(b)
    np.testing.assert_allclose(stats_a[1], np.cov(a.T), rtol=1e-12)  # Unbiased (N - 1).
    assert abs(sq.frechet_distance(*stats_a, *stats_a)) < 1e-8
    ab, ba = sq.frechet_distance(*stats_a, *stats_b), sq.frechet_distance(*stats_b, *stats_a)
    assert ab > 1.0
    np.testing.assert_allclose(ab, ba, rtol=1e-8)
    with pytest.raises(ValueError, match="same D"):
        sq.frechet_distance(stats_a[0], stats_a[1], stats_b[0][:4], stats_b[1][:4, :4])
    with pytest.raises(ValueError, match="N >= 2"):
        sq.gaussian_statistics(a[:1])


def test_label_accuracy_and_the_reference_heldout_split():
    logits = np.array([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 5.0, 0.0]])
    predictions = sq.predicted_labels(logits)
    np.testing.assert_array_equal(predictions, [1, 0, 2, 1])
    labels = np.array([1, 0, 1, 2])
    assert sq.label_accuracy(predictions, labels) == 0.5
    assert sq.per_class_accuracy(predictions, labels, 4) == [1.0, 0.5, 0.0, None]
    with pytest.raises(ValueError, match="same N"):
        sq.label_accuracy(predictions, labels[:3])

    labels = np.array([2, 0, 1, 0, 2, 1, 0, 2, 1, 1])
    reference, heldout = sq.split_reference_and_heldout(labels, 2, 3)
    np.testing.assert_array_equal(heldout, [0, 1, 2, 3, 4, 5])  # The first two of each class.
    np.testing.assert_array_equal(reference, [6, 7, 8, 9])
    np.testing.assert_array_equal(np.bincount(labels[heldout]), [2, 2, 2])
    with pytest.raises(ValueError, match=r"only \[3, 3\] images of class\(es\) \[0, 2\].*eval_per_class"):
        sq.split_reference_and_heldout(labels, 3, 3)


def test_random_shift_moves_each_image_by_at_most_max_shift():
    images = jnp.zeros((16, 9, 9, 1)).at[:, 4, 4, 0].set(1.0)
    np.testing.assert_array_equal(random_shift(jax.random.PRNGKey(0), images, 0), images)
    shifted = np.asarray(random_shift(jax.random.PRNGKey(0), images, 2))
    assert np.all(shifted.sum(axis=(1, 2, 3)) == 1.0)  # The pixel stays inside: nothing is lost.
    rows, cols = np.nonzero(shifted[..., 0])[1:]
    assert np.all(np.abs(rows - 4) <= 2) and np.all(np.abs(cols - 4) <= 2)
    assert len({(r, c) for r, c in zip(rows, cols)}) > 3  # Per-image offsets.


def test_sampler_temperature_accepts_numpy_scalars_and_rejects_bools_and_bad_batch_sizes():
    # Host-side checks only (no compile): np.float32 is not a Python float but is a temperature.
    model = GatedPixelCNN(num_codes=5, channels=8, num_layers=2, num_classes=3, head_channels=8)
    labels = np.array([0, 2])
    check_sampling_inputs(model, (3, 3), 2, labels, None, np.float32(0.5))
    check_sampling_inputs(model, (3, 3), np.int64(2), labels, None, 1)
    with pytest.raises(PixelCNNInputError, match="temperature=True"):
        check_sampling_inputs(model, (3, 3), 2, labels, None, True)
    with pytest.raises(PixelCNNInputError, match="batch_size=2.5"):
        check_sampling_inputs(model, (3, 3), 2.5, labels, None, 1.0)
    with pytest.raises(PixelCNNInputError, match=r"labels \[0, 3\]"):  # Out of range (as before).
        check_sampling_inputs(model, (3, 3), 2, np.array([0, 3]), None, 1.0)


# -- the classifier and --mode=sample_eval on tiny models ----------------------------------


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """Digits: a classifier (20 steps), a 1-level VQ-VAE (1 step, K=16, 4x4 codes) with its codes,
    and a class-conditional top prior over them (1 step): the MNIST pipeline in miniature."""
    root = tmp_path_factory.mktemp("sample_eval")
    data_dir = str(root / "tfds")
    clf = load_config("classifier")
    clf.data.data_dir, clf.data.num_workers = data_dir, 1
    clf.model.dense_features = 16  # Fewer feature dimensions than the 30 samples: regular covariances.
    clf.optimizer.update(dict(learning_rate=3e-3, warmup_steps=0, schedule="constant"))
    clf.update(
        dict(
            num_train_steps=20,
            eval_every_steps=10,
            checkpoint_every_steps=20,
            log_every_steps=10,
            progress_bar=False,
        )
    )
    clf_workdir = str(root / "classifier")
    loop.train_and_evaluate(clf, clf_workdir)

    vq = tiny_vqvae_config(data_dir)
    vq.update(dict(num_train_steps=1, eval_every_steps=0, checkpoint_every_steps=1, log_every_steps=1))
    vq_workdir = str(root / "vqvae")
    loop.train_and_evaluate(vq, vq_workdir)
    main_lib.run(vq, vq_workdir, "extract_codes")
    prior_workdir = str(root / "prior")
    prior = train_tiny_prior(os.path.join(vq_workdir, "codes"), prior_workdir)
    prior.sample.update(
        dict(eval_per_class=3, batch_size=16, num_per_class=2, classifier_workdir=clf_workdir)
    )
    return dict(
        root=root, clf_workdir=clf_workdir, vq_workdir=vq_workdir, prior=prior, prior_workdir=prior_workdir
    )


def _eval_json(workdir, step):
    with open(os.path.join(workdir, "eval", f"metrics_{step:08d}.json")) as f:
        return json.load(f)


def test_classifier_loss_goes_down_and_eval_reports_accuracy(pipeline):
    first, last = _eval_json(pipeline["clf_workdir"], 10), _eval_json(pipeline["clf_workdir"], 20)
    assert last["loss"] < first["loss"] < math.log(10.0), (first, last)  # ln 10: chance.
    for metrics in (first, last):
        assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["num_examples"] == 300
    assert last["accuracy"] > 0.3, last  # Well above chance (0.1) after 20 steps.


# The 1-step models' samples are nearly identical images: singular feature covariances.
@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")
def test_sample_eval_reports_finite_figures_deterministically(pipeline):
    config, workdir = pipeline["prior"], pipeline["prior_workdir"]
    out = main_lib.run(config, workdir, "sample_eval")
    with open(os.path.join(workdir, "eval", "sample_eval.json")) as f:
        saved = json.load(f)
    figures = (
        "sample_label_accuracy",
        "sample_frechet_distance",
        "floor_label_accuracy",
        "floor_frechet_distance",
        "classifier_test_accuracy",
    )
    for key in figures:
        assert np.isfinite(saved[key]), (key, saved[key])
    for key in ("sample_label_accuracy", "floor_label_accuracy", "classifier_test_accuracy"):
        assert 0.0 <= saved[key] <= 1.0
    assert saved["floor_frechet_distance"] > 0.0 and saved["sample_frechet_distance"] > 0.0
    assert (saved["num_samples"], saved["num_heldout"], saved["num_reference"]) == (30, 30, 270)
    assert len(saved["sample_per_class_accuracy"]) == 10 and saved["prior_step"] == 1
    # The same checkpoint on the same 300 test images as the classifier's own evaluation.
    assert saved["classifier_test_accuracy"] == _eval_json(pipeline["clf_workdir"], 20)["accuracy"]
    assert out["samples"].shape == (30, 8, 8, 1)
    np.testing.assert_array_equal(out["labels"], np.repeat(np.arange(10), 3))
    assert os.path.getsize(os.path.join(workdir, "images", "sample_eval.png")) > 100

    again = main_lib.run(config, workdir, "sample_eval")  # Same seed: the same samples and figures.
    np.testing.assert_array_equal(again["samples"], out["samples"])
    assert {k: again[k] for k in figures} == {k: out[k] for k in figures}


def test_sample_eval_needs_a_classifier_and_valid_options(pipeline):
    config, workdir = pipeline["prior"].copy_and_resolve_references(), pipeline["prior_workdir"]
    config.sample.classifier_workdir = None
    with pytest.raises(ValueError, match="needs config.sample.classifier_workdir"):
        main_lib.run(config, workdir, "sample_eval")
    config.sample.classifier_workdir = pipeline["vq_workdir"]
    with pytest.raises(ValueError, match="model_name='vqvae' run, not a classifier"):
        main_lib.run(config, workdir, "sample_eval")
    config.sample.classifier_workdir = str(pipeline["root"] / "nowhere")
    with pytest.raises(ValueError, match="has no config.json"):
        main_lib.run(config, workdir, "sample_eval")
    config.sample.classifier_workdir = pipeline["clf_workdir"]
    config.sample.temperature = 0.0
    with pytest.raises(ValueError, match=r"config.sample.temperature=0.0"):
        main_lib.run(config, workdir, "sample_eval")
    config.sample.temperature = 1.0
    config.sample.eval_per_class = 0
    with pytest.raises(ValueError, match=r"config.sample.eval_per_class=0"):
        main_lib.run(config, workdir, "sample_eval")
    config.sample.eval_per_class = 40  # Digits' 300 test images have about 30 per class.
    with pytest.raises(ValueError, match="lower config.sample.eval_per_class"):
        main_lib.run(config, workdir, "sample_eval")


def test_prior_of_another_codebook_size_is_refused_before_sampling(pipeline):
    # A codes dataset claiming to come from the VQ-VAE (its provenance) but with K=5 codes:
    # the prior trained on it cannot be decoded by the VQ-VAE's K=16 codebook.
    codes_dir = str(pipeline["root"] / "codes_k5")
    codes = {"top": np.zeros((16, 4, 4), np.int64)}
    codes_data.write_codes_dataset(
        codes_dir,
        {"top": layout.LevelSpec((4, 4), 5)},
        {"train": (codes, np.arange(16) % 10), "eval": (codes, np.arange(16) % 10)},
    )
    shutil.copy(os.path.join(pipeline["vq_workdir"], "codes", layout.PROVENANCE), codes_dir)
    workdir = str(pipeline["root"] / "prior_k5")
    config = load_config("pixelcnn", f"digits,codes_dir={codes_dir}")
    config.sample.classifier_workdir = pipeline["clf_workdir"]
    # The check compares the configs before any checkpoint is restored: the prior need not be trained.
    for mode in ("sample", "sample_eval"):
        with pytest.raises(
            ValueError,
            match=rf"level 'top' in {workdir} models K=5 codes, but the VQ-VAE "
            rf"in {pipeline['vq_workdir']} has a codebook of K=16",
        ):
            main_lib.run(config, workdir, mode)
    assert not os.path.exists(os.path.join(workdir, "images", "samples.png"))
    # The trained K=16 prior pointed at the K=5 codes: its checkpoint disagrees with its config.
    config = pipeline["prior"].copy_and_resolve_references()
    config.data.codes_dir = codes_dir
    with pytest.raises(
        ValueError,
        match=r"checkpoints/1 \(level 'top'\) has K=16 codes, but its "
        r"config.data.codes_dir=.*codes_k5' has K=5",
    ):
        main_lib.run(config, pipeline["prior_workdir"], "sample")


def test_workdir_helper_restores_what_the_runner_restores_without_a_pass_over_the_data(pipeline, monkeypatch):
    # The light helper (config.json -> task -> checkpoint) against the full Runner of the same workdir.
    def no_data_pass(*args, **kwargs):
        raise AssertionError("loading a workdir for inference must not read the training data")

    for name in ("vq_workdir", "clf_workdir", "prior_workdir"):
        path = pipeline[name]
        expected, expected_step = loop.Runner(workdir_lib.load_config(path), path).restore_for_eval()
        with monkeypatch.context() as m:
            m.setattr(data_lib, "estimate_pixel_variance", no_data_pass)
            run = workdir_lib.load(path)
            state, step = run.restore()
        module = base.ALIASES.get(run.config.model_name, run.config.model_name)
        assert step == expected_step and type(run.task).__module__.endswith(module)
        assert jax.tree.structure(state) == jax.tree.structure(expected)
        for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(expected)):
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        workdir_lib.load(str(pipeline["root"] / "nowhere"))
    untrained = pipeline["root"] / "untrained"
    untrained.mkdir()
    shutil.copy(os.path.join(pipeline["clf_workdir"], "config.json"), untrained)
    with pytest.raises(FileNotFoundError, match="No checkpoint in .*untrained/checkpoints: train first"):
        workdir_lib.load(str(untrained)).restore()


def test_sample_images_are_the_hierarchy_sampler_and_decoder_batch_by_batch(pipeline):
    # generate.sample_images against its definition: batch b of labels drawn by sample_hierarchy with
    # fold_in(rng, b) and decoded by the VQ-VAE, the last batch padded with its last label and trimmed.
    hierarchy = generate.load_hierarchy(workdir_lib.load(pipeline["prior_workdir"]))
    labels, rng = np.array([3, 1, 4, 1, 5], np.int32), jax.random.PRNGKey(11)
    codes, images = generate.sample_images(hierarchy, labels, rng, 0.8, batch_size=2)
    decode = jax.jit(hierarchy.code_model.decode_codes)
    for b, start in enumerate(range(0, len(labels), 2)):
        chunk = labels[start : start + 2]
        padded = np.concatenate([chunk, np.repeat(chunk[-1:], 2 - len(chunk))])
        want = sampling.sample_hierarchy(hierarchy.priors, jax.random.fold_in(rng, b), 2, padded, 0.8)
        want_images = np.clip(np.asarray(decode(hierarchy.vq_state, want)), 0.0, 1.0)
        np.testing.assert_array_equal(codes["top"][start : start + 2], np.asarray(want["top"])[: len(chunk)])
        np.testing.assert_array_equal(images[start : start + 2], want_images[: len(chunk)])


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")
def test_a_loaded_chain_is_judged_as_sample_eval_judges_its_workdir(pipeline):
    config, workdir = pipeline["prior"], pipeline["prior_workdir"]
    expected = main_lib.run(config, workdir, "sample_eval")
    chain = vqlatent.load(workdir)
    metrics, images = chain_eval.evaluate_chain(chain, pipeline["clf_workdir"], per_class=3, batch_size=16)
    np.testing.assert_array_equal(images, expected["samples"])
    for key in ("sample_label_accuracy", "sample_frechet_distance", "floor_frechet_distance", "num_heldout"):
        assert metrics[key] == expected[key], key
    assert metrics["prior_kinds"] == {"top": "pixelcnn"} and metrics["sample_seconds"] > 0
    with pytest.raises(chain_eval.ChainEvalError, match=r"per_class=0: must be an integer >= 1"):
        chain_eval.evaluate_chain(chain, pipeline["clf_workdir"], per_class=0)
    with pytest.raises(chain_eval.ChainEvalError, match="not a class -> codes -> pixels chain"):
        chain_eval.evaluate_chain(vqlatent.load(pipeline["vq_workdir"]), pipeline["clf_workdir"])
    with pytest.raises(ValueError, match="model_name='vqvae' run, not a classifier"):
        chain_eval.evaluate_chain(chain, pipeline["vq_workdir"])
    with pytest.raises(ValueError, match=r"num_steps=4\): only MaskGIT priors"):
        chain.sample(2, num_steps=4)
