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


@pytest.mark.parametrize("name", NAMES)
def test_pretrained_model_reproduces_its_card(name, tmp_path):
    record = json.load(open(os.path.join(pretrained.path(name), "config.json")))
    evaluation = record["evaluation"]
    model = vqlatent.load(f"pretrained:{name}")
    owner = model.autoencoder.component if isinstance(model, PriorChain) else model.component
    data = owner.config.data
    assert data.name == evaluation["data"]["name"]
    if data.name == "mnist_idx":
        if not (MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
            pytest.skip(f"real MNIST not found at {MNIST_DIR}")
        data.manual_dir = str(MNIST_DIR)
    data.data_dir = str(tmp_path / "tfds")  # Prepared afresh from the card's source.
    metrics = export_lib.evaluation_record(model, evaluation["num_examples"])["metrics"]
    assert set(metrics) == set(evaluation["metrics"])
    for key, value in evaluation["metrics"].items():
        # Another CPU computes convolutions in another order: equal to float rounding, not bit for bit.
        np.testing.assert_allclose(metrics[key], value, rtol=2e-3, err_msg=f"{name}: {key}")
    card = open(os.path.join(pretrained.path(name), "README.md")).read()
    for key, value in evaluation["metrics"].items():
        if isinstance(value, float):
            assert f"| {key} | {value:.6g} |" in card


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
