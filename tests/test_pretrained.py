"""The models shipped in vqlatent/pretrained/ load, and reproduce their model cards' numbers on the
data each card names (the embedded digits always; MNIST from ../shared/data/mnist, skipped without it)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from conftest import MNIST_DIR

import vqlatent
from vqlatent.models import export as export_lib
from vqlatent.models import pretrained
from vqlatent.models.prior_chain import PriorChain

NAMES = pretrained.names()


def test_the_package_ships_the_digits_models_and_fits_the_size_budget():
    assert {"digits_vqvae", "digits_vqvae2_chain", "digits_infogan"} <= set(NAMES)
    total = sum(
        os.path.getsize(os.path.join(root, f))
        for root, _, files in os.walk(pretrained.DIRECTORY)
        for f in files
    )
    assert total < 16 * 2**20, f"{total / 2**20:.1f} MB of pretrained models"
    with pytest.raises(
        pretrained.UnknownPretrainedError, match=r"No pretrained model 'nope': vqlatent ships \["
    ):
        vqlatent.load("pretrained:nope")


# The whole evaluation of every card instead of the spot check where one is recorded (minutes, not
# seconds, for mnist_vqvae2_chain: 10,000 images through the autoencoder and both PixelCNNs).
FULL_CARDS = os.environ.get("VQLATENT_FULL_CARD_CHECK") == "1"


@pytest.mark.parametrize("name", NAMES)
def test_pretrained_model_reproduces_its_card(name, tmp_path):
    record = json.load(open(os.path.join(pretrained.path(name), "config.json")))
    card = open(os.path.join(pretrained.path(name), "README.md")).read()
    for key, value in record["evaluation"]["metrics"].items():
        if isinstance(value, float):
            assert f"| {key} | {value:.6g} |" in card
    evaluation = record["evaluation"]
    expected = evaluation  # The metrics to reproduce, and on how many images.
    if "spot_check" in evaluation and not FULL_CARDS:
        expected = evaluation["spot_check"]
        assert expected["metrics"]["num_images"] == expected["num_examples"] == export_lib.SPOT_CHECK_EXAMPLES
    model = vqlatent.load(f"pretrained:{name}")
    owner = model.autoencoder.component if isinstance(model, PriorChain) else model.component
    data = owner.config.data
    assert data.name == evaluation["data"]["name"]
    if data.name == "mnist_idx":
        if not (MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
            pytest.skip(f"real MNIST not found at {MNIST_DIR}")
        data.manual_dir = str(MNIST_DIR)
    data.data_dir = str(tmp_path / "tfds")  # Prepared afresh from the card's source.
    metrics = export_lib.evaluation_record(model, expected["num_examples"])["metrics"]
    assert set(metrics) == set(expected["metrics"])
    for key, value in expected["metrics"].items():
        # Another CPU computes convolutions in another order: equal to float rounding, not bit for bit.
        np.testing.assert_allclose(metrics[key], value, rtol=2e-3, err_msg=f"{name}: {key}")


def test_pretrained_models_sample_encode_and_generate():
    chain = vqlatent.load("pretrained:digits_vqvae2_chain")
    out = chain.sample(20, temperature=1.0, seed=0)
    assert out.images.shape == (20, 8, 8, 1) and 0 <= out.images.min() and out.images.max() <= 1
    np.testing.assert_array_equal(out.labels, np.arange(20) % 10)
    # Samples of a class look like that class to the autoencoder-free check: their codes are likely
    # under their own class's prior.
    bits = chain.bits_per_code(out.codes, out.labels)["top"]
    other = chain.bits_per_code(out.codes, (out.labels + 5) % 10)["top"]
    assert np.mean(bits) < np.mean(other)
    gan = vqlatent.load("pretrained:digits_infogan")
    images = gan.generate(categorical=np.arange(10), seed=0)
    assert images.shape == (10, 8, 8, 1)
    # Q reads back the category it was generated with (InfoGAN's mutual information at work).
    assert np.mean(gan.infer(images)["categorical"][:, 0] == np.arange(10)) >= 0.8


def test_an_evaluation_of_more_images_than_the_spot_check_records_one(monkeypatch, tmp_path):
    model = vqlatent.load("pretrained:digits_vqvae")
    model.component.config.data.data_dir = str(tmp_path / "tfds")
    full = export_lib.evaluation_record(model)
    num_images = full["metrics"]["num_images"]
    monkeypatch.setattr(export_lib, "SPOT_CHECK_EXAMPLES", num_images)  # Not more: nothing to add.
    assert export_lib.with_spot_check(model, full) == full
    monkeypatch.setattr(export_lib, "SPOT_CHECK_EXAMPLES", num_images // 3)
    record = export_lib.with_spot_check(model, full)
    assert {k: v for k, v in record.items() if k != "spot_check"} == full
    spot = record["spot_check"]
    assert spot["num_examples"] == spot["metrics"]["num_images"] == num_images // 3
    assert spot["metrics"]["mse"] != full["metrics"]["mse"]
    assert spot["metrics"] == export_lib.evaluation_record(model, num_images // 3)["metrics"]
    card = export_lib.model_card(
        model,
        {
            **json.load(open(os.path.join(pretrained.path("digits_vqvae"), "config.json"))),
            "evaluation": record,
        },
    )
    assert f"on the first {num_images // 3} of these images" in card
