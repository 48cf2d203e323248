"""Tests for vqlatent.data: builders, sources, grain pipelines, prepare CLI."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from vqlatent import data
from vqlatent.data import prepare
from vqlatent.data.builders import mnist_idx, sklearn_digits
from vqlatent.data.device import to_model_input

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cfg(**overrides) -> ml_collections.ConfigDict:
    cfg = data.default_config()
    cfg.num_workers = 2
    for k, v in overrides.items():
        cfg[k] = v
    return cfg


def _digest(image: np.ndarray, label) -> str:
    """Content checksum of one example (uint8 or [0,1]-float image + label)."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = np.round(image * 255.0).astype(np.uint8)
    return hashlib.sha1(image.tobytes() + str(int(label)).encode()).hexdigest()


def _source_digests(source) -> list[str]:
    return [_digest(r["image"], r["label"]) for r in (source[i] for i in range(len(source)))]


def _batch_digests(batch, mask=None) -> list[str]:
    out = []
    for i in range(len(batch["label"])):
        if mask is None or mask[i] == 1.0:
            out.append(_digest(batch["image"][i], batch["label"][i]))
    return out


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory) -> str:
    d = str(tmp_path_factory.mktemp("tfds_digits"))
    data.get_builder(_cfg(data_dir=d))  # Prepares it.
    return d


@pytest.fixture(scope="module")
def digits_cfg(digits_dir) -> ml_collections.ConfigDict:
    return _cfg(data_dir=digits_dir)


@pytest.fixture(scope="module")
def mnist_cfg(tmp_path_factory, mnist_dir) -> ml_collections.ConfigDict:
    cfg = _cfg(name="mnist_idx", data_dir=str(tmp_path_factory.mktemp("tfds_mn")), manual_dir=str(mnist_dir))
    data.get_builder(cfg)  # Prepares it (~7 s on 2 CPU cores).
    return cfg


def _read_raw_idx(path) -> np.ndarray:
    """Independent idx decoder (fixed MNIST header sizes)."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


# ---------------------------------------------------------------- builders.


def test_digits_builder_content(digits_cfg):
    train = data.get_data_source(digits_cfg, "train")
    test = data.get_data_source(digits_cfg, "test")
    assert (len(train), len(test)) == (1497, 300)
    assert data.get_spec(digits_cfg) == data.DatasetSpec((8, 8, 1), 10, 1497, 300)

    def arrays(src):
        images = np.stack([src[i]["image"] for i in range(len(src))])
        labels = np.array([src[i]["label"] for i in range(len(src))])
        return images, labels

    train_x, train_y = arrays(train)
    test_x, test_y = arrays(test)
    assert train_x.dtype == np.uint8 and train_x.shape == (1497, 8, 8, 1)
    assert train_x.min() == 0 and train_x.max() == 255
    assert set(train_y) == set(range(10)) and set(test_y) == set(range(10))
    # Real structure: class means differ, and a nearest-class-mean classifier
    # fitted on train is far better than chance on test.
    means = np.stack([train_x[train_y == c].reshape(-1, 64).mean(0) for c in range(10)]).astype(np.float64)
    assert np.abs(means[0] - means[1]).mean() > 20
    dists = ((test_x.reshape(-1, 1, 64) - means[None]) ** 2).sum(-1)
    assert (dists.argmin(1) == test_y).mean() > 0.8
    # Content equals the documented transform and seeded split of load_digits.
    images, labels = sklearn_digits.load_images_and_labels()
    idx = sklearn_digits.split_indices()
    for split, src in (("train", train), ("test", test)):
        want = sorted(_digest(images[i], labels[i]) for i in idx[split])
        assert sorted(_source_digests(src)) == want
    assert not set(idx["train"]) & set(idx["test"])


def test_digits_scaling():
    images, _ = sklearn_digits.load_images_and_labels()
    from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top

    raw = load_digits().images
    np.testing.assert_array_equal(images[..., 0], np.round(raw * 255 / 16))


def test_mnist_idx_matches_raw_files(mnist_cfg, mnist_dir):
    assert data.get_spec(mnist_cfg) == data.DatasetSpec((28, 28, 1), 10, 60000, 10000)
    raw_x = _read_raw_idx(mnist_dir / "t10k-images-idx3-ubyte.gz")
    raw_y = _read_raw_idx(mnist_dir / "t10k-labels-idx1-ubyte.gz")
    assert raw_x.shape == (10000, 28, 28)
    test = data.get_data_source(mnist_cfg, "test")
    assert len(test) == 10000
    # Records come back in hash order: compare as multisets of checksums.
    want = sorted(_digest(raw_x[i][..., None], raw_y[i]) for i in range(10000))
    assert sorted(_source_digests(test)) == want
    train = data.get_data_source(mnist_cfg, "train")
    assert len(train) == 60000
    raw_train_x = _read_raw_idx(mnist_dir / "train-images-idx3-ubyte.gz")
    raw_train_y = _read_raw_idx(mnist_dir / "train-labels-idx1-ubyte.gz")
    train_set = {_digest(raw_train_x[i][..., None], raw_train_y[i]) for i in range(60000)}
    for i in range(0, 60000, 997):
        r = train[i]
        assert r["image"].shape == (28, 28, 1) and r["image"].dtype == np.uint8
        assert _digest(r["image"], r["label"]) in train_set


def test_parse_idx_validation(tmp_path):
    header = bytes([0, 0, 8, 3]) + (2).to_bytes(4, "big") + (3).to_bytes(4, "big") + (4).to_bytes(4, "big")
    arr = mnist_idx.parse_idx(header + bytes(range(24)), "ok")
    np.testing.assert_array_equal(arr, np.arange(24, dtype=np.uint8).reshape(2, 3, 4))
    with pytest.raises(mnist_idx.IdxFormatError, match="truncated"):
        mnist_idx.parse_idx(header + bytes(23), "short")
    with pytest.raises(mnist_idx.IdxFormatError, match="magic"):
        mnist_idx.parse_idx(b"\x1f\x8b\x08\x00" + bytes(20), "bad")
    # A truncated gzip, a wrong shape and a wrong md5 all name the file.
    name = "t10k-labels-idx1-ubyte"
    good = bytes([0, 0, 8, 1]) + (10000).to_bytes(4, "big") + bytes(10000)
    path = tmp_path / (name + ".gz")
    path.write_bytes(gzip.compress(good)[:-100])
    with pytest.raises(mnist_idx.IdxFormatError, match=str(path)):
        mnist_idx.load_file(tmp_path, name)
    path.write_bytes(gzip.compress(good))
    with pytest.raises(mnist_idx.IdxFormatError, match="md5"):
        mnist_idx.load_file(tmp_path, name)
    np.testing.assert_array_equal(mnist_idx.load_file(tmp_path, name, verify_md5=False), np.zeros(10000))
    path.unlink()
    (tmp_path / name).write_bytes(good[:8] + bytes(10))  # Uncompressed, short.
    with pytest.raises(mnist_idx.IdxFormatError, match=name):
        mnist_idx.load_file(tmp_path, name)


# ---------------------------------------------------------------- training.


def test_train_iterator_batches(digits_cfg):
    it = data.make_train_iterator(digits_cfg, global_batch_size=32, seed=0)
    batch = next(it)
    assert set(batch) == {"image", "label"}
    assert batch["image"].shape == (32, 8, 8, 1)
    assert batch["image"].dtype == np.uint8  # Crosses to the device as uint8 ...
    assert batch["label"].shape == (32,) and batch["label"].dtype == np.int32
    image = np.asarray(to_model_input(batch)["image"])  # ... and becomes float32 [0, 1] there.
    assert image.dtype == np.float32
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert image.max() == 1.0


def test_train_iterator_resume_exact(digits_cfg):
    def make():
        return data.make_train_iterator(digits_cfg, global_batch_size=64, seed=3)

    it = make()
    for _ in range(5):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(3)]
    resumed = make()
    resumed.set_state(state)
    for want, got in zip(expected, (next(resumed) for _ in range(3))):
        np.testing.assert_array_equal(want["image"], got["image"])
        np.testing.assert_array_equal(want["label"], got["label"])
    # A fresh iterator with the same seed reproduces the stream.
    fresh = make()
    first = [next(fresh) for _ in range(6)]
    np.testing.assert_array_equal(first[5]["image"], expected[0]["image"])


def test_train_iterator_epochs_reshuffled(digits_cfg):
    it = data.make_train_iterator(digits_cfg, global_batch_size=1497, seed=0)
    epoch0, epoch1 = next(it), next(it)
    source = data.get_data_source(digits_cfg, "train")
    want = sorted(_source_digests(source))
    d0, d1 = _batch_digests(epoch0), _batch_digests(epoch1)
    assert sorted(d0) == want and sorted(d1) == want  # Each epoch is the data.
    assert d0 != d1  # In a new order.
    other = next(data.make_train_iterator(digits_cfg, global_batch_size=1497, seed=1))
    assert _batch_digests(other) != d0


def test_train_sharding_disjoint_union(digits_cfg):
    n = 1497  # = 3 * 499, so one local batch is one full epoch of a shard.
    shards = []
    for p in range(3):
        it = data.make_train_iterator(
            digits_cfg, global_batch_size=n, seed=0, process_index=p, process_count=3
        )
        batch = next(it)
        assert batch["image"].shape[0] == n // 3
        shards.append(_batch_digests(batch))
    source = data.get_data_source(digits_cfg, "train")
    assert sorted(sum(shards, [])) == sorted(_source_digests(source))


def test_batch_not_divisible_errors(digits_cfg):
    with pytest.raises(data.DataError, match="multiple of process_count"):
        data.make_train_iterator(digits_cfg, global_batch_size=10, seed=0, process_index=0, process_count=3)
    with pytest.raises(data.DataError, match="multiple of process_count"):
        data.make_eval_batches(digits_cfg, global_batch_size=10, process_count=4)


# ---------------------------------------------------------------- eval.


def test_eval_batches_cover_once_with_masks(digits_cfg):
    source = data.get_data_source(digits_cfg, "test")
    want = sorted(_source_digests(source))
    ev = data.make_eval_batches(digits_cfg, global_batch_size=64)
    batches = list(ev)
    assert len(batches) == len(ev) == 5  # ceil(300 / 64)
    got = []
    for b in batches:
        assert set(b) == {"image", "label", "mask"}
        assert b["image"].shape == (64, 8, 8, 1) and b["mask"].dtype == np.float32
        m = b["mask"]
        n_real = int(m.sum())
        np.testing.assert_array_equal(m, (np.arange(64) < n_real).astype(np.float32))
        assert not b["image"][n_real:].any() and not b["label"][n_real:].any()
        got += _batch_digests(b, m)
    assert [int(b["mask"].sum()) for b in batches] == [64, 64, 64, 64, 44]
    assert sorted(got) == want
    # Deterministic and re-iterable.
    again = list(ev)
    for a, b in zip(batches, again):
        np.testing.assert_array_equal(a["image"], b["image"])


def test_eval_batches_sharded_prefix(digits_cfg):
    source = data.get_data_source(digits_cfg, "test")
    want = sorted(_digest(source[i]["image"], source[i]["label"]) for i in range(250))
    got, lengths = [], []
    for p in range(3):
        ev = data.make_eval_batches(
            digits_cfg, global_batch_size=48, num_examples=250, process_index=p, process_count=3
        )
        batches = list(ev)
        lengths.append(len(batches))
        for b in batches:
            assert b["image"].shape[0] == 16
            got += _batch_digests(b, b["mask"])
    assert lengths == [6, 6, 6]  # ceil(ceil(250 / 3) / 16) on every process.
    assert sorted(got) == want


# ---------------------------------------------------------------- misc.


def test_pixel_variance(digits_cfg):
    var = data.estimate_pixel_variance(digits_cfg, num_examples=5000)
    source = data.get_data_source(digits_cfg, "train")
    images = np.stack([source[i]["image"] for i in range(len(source))])
    assert var == pytest.approx(np.var(images / 255.0), rel=1e-9)
    sample = data.estimate_pixel_variance(digits_cfg, num_examples=256)
    assert sample == data.estimate_pixel_variance(digits_cfg, num_examples=256)
    assert 0.5 * var < sample < 1.5 * var


def test_image_size_and_crop_resize(digits_cfg):
    cfg = _cfg(data_dir=digits_cfg.data_dir, image_size=(16, 12))
    assert data.get_spec(cfg).image_shape == (16, 12, 1)
    batch = next(data.make_train_iterator(cfg, global_batch_size=4, seed=0))
    assert batch["image"].shape == (4, 16, 12, 1)
    # Centre crop: a 4x8 image whose outer quarters are 0 and centre 255.
    image = np.zeros((4, 8, 3), np.uint8)
    image[:, 2:6] = 255
    out = data.center_crop_resize(image, (2, 2))
    assert out.shape == (2, 2, 3) and (out == 255).all()
    tall = np.zeros((8, 4, 1), np.uint8)
    tall[2:6] = 200
    out = data.center_crop_resize(tall, (3, 3))
    assert out.shape == (3, 3, 1) and (out == 200).all()


def test_not_prepared_catalog_dataset(tmp_path):
    cfg = _cfg(name="cifar10", data_dir=str(tmp_path))
    with pytest.raises(data.DatasetNotPreparedError) as e:
        data.get_data_source(cfg, "train")
    msg = str(e.value)
    assert isinstance(e.value, ValueError)
    assert "cifar10" in msg and str(tmp_path) in msg
    assert (f"python -m vqlatent.data.prepare --dataset=cifar10 --data_dir={tmp_path}") in msg
    assert "vqlatent[prepare]" in msg
    with pytest.raises(data.DatasetNotPreparedError):
        data.get_spec(cfg)


def test_unknown_dataset(tmp_path):
    with pytest.raises(data.UnknownDatasetError, match="no_such_dataset"):
        data.get_spec(_cfg(name="no_such_dataset", data_dir=str(tmp_path)))


@pytest.mark.parametrize("manual", ["none", "empty"])
def test_mnist_idx_missing_manual_dir(tmp_path, manual):
    manual_dir = None
    if manual == "empty":
        manual_dir = str(tmp_path / "manual")
        os.makedirs(manual_dir)
    cfg = _cfg(name="mnist_idx", data_dir=str(tmp_path / "tfds"), manual_dir=manual_dir)
    with pytest.raises(data.ManualDirError) as e:
        data.get_data_source(cfg, "train")
    msg = str(e.value)
    assert "train-images-idx3-ubyte" in msg and "t10k-labels-idx1-ubyte" in msg
    assert "--config.data.manual_dir=" in msg


def test_missing_label_gives_zeros(digits_cfg):
    cfg = _cfg(data_dir=digits_cfg.data_dir, label_key=None)
    assert data.get_spec(cfg).num_classes is None
    batch = next(data.make_train_iterator(cfg, global_batch_size=8, seed=0))
    np.testing.assert_array_equal(batch["label"], np.zeros(8, np.int32))


@pytest.mark.skipif(
    importlib.util.find_spec("tensorflow") is not None, reason="TensorFlow installed: catalog prep would run."
)
def test_prepare_catalog_without_tensorflow(tmp_path):
    with pytest.raises(data.DataError, match=r"pip install 'vqlatent\[prepare\]'"):
        prepare.prepare("cifar10", str(tmp_path))


def test_prepare_cli(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "vqlatent.data.prepare", "--dataset=sklearn_digits", f"--data_dir={tmp_path}"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert str(tmp_path / "sklearn_digits" / "1.0.0") in result.stdout
    assert "train: 1497 examples" in result.stdout
    assert "test: 300 examples" in result.stdout


def test_bad_split(digits_cfg):
    cfg = _cfg(data_dir=digits_cfg.data_dir, eval_split="validation")
    with pytest.raises(data.DataError, match="validation"):
        data.get_spec(cfg)
    with pytest.raises(data.DataError, match="validation"):
        data.get_data_source(cfg, "validation")
    sliced = _cfg(data_dir=digits_cfg.data_dir, train_split="train[:200]")
    assert data.get_spec(sliced).num_train == 200
    assert len(data.get_data_source(sliced, "train[:200]")) == 200


# ---------------------------------------------------------------- datasets by name.


class _Numbers:
    """A dataset of the numbers 0..n-1 (one int per record), registered by name below."""

    def __init__(self, data_cfg):
        self.n = data_cfg.get("num_train", 10)
        self.spec = data.DatasetSpec((1, 1, 1), None, self.n, self.n)

    def split(self, split):
        dataset = self

        class Split:
            def __len__(self):
                return dataset.n

            def read(self, indices):
                return {"number": np.asarray(indices, np.int64).reshape(-1)}

        return Split()


def test_a_registered_dataset_is_read_by_the_shared_iterators():
    data.register("numbers_for_test", _Numbers)
    cfg = ml_collections.ConfigDict(dict(name="numbers_for_test", num_train=10, num_workers=1, prefetch=1))
    assert data.get_spec(cfg).num_train == 10
    it = data.make_train_iterator(cfg, global_batch_size=5, seed=0)
    epoch = np.concatenate([next(it)["number"] for _ in range(2)])
    assert sorted(epoch) == list(range(10)) and list(epoch) != list(range(10))  # Shuffled, complete.
    batches = list(data.make_eval_batches(cfg, global_batch_size=4, offset=3, num_examples=6))
    np.testing.assert_array_equal(np.concatenate([b["number"] for b in batches]), [3, 4, 5, 6, 7, 8, 0, 0])
    np.testing.assert_array_equal(batches[-1]["mask"], [1, 1, 0, 0])
    with pytest.raises(data.DataError, match="already registered"):
        data.register("numbers_for_test", lambda cfg: None)


def test_codes_dataset_is_registered_and_batched_like_images(tmp_path):
    from vqlatent.codes import dataset as codes_dataset  # pylint: disable=g-import-not-at-top
    from vqlatent.codes import layout, load_codes  # pylint: disable=g-import-not-at-top

    rng = np.random.default_rng(0)
    levels = {"bottom": layout.LevelSpec((4, 4), 300), "top": layout.LevelSpec((2, 2), 7)}
    splits = {
        s: (
            {"bottom": rng.integers(0, 300, (n, 4, 4)), "top": rng.integers(0, 7, (n, 2, 2))},
            rng.integers(0, 10, n),
        )
        for s, n in (("train", 30), ("eval", 11))
    }
    codes_dataset.write_codes_dataset(str(tmp_path), levels, splits)
    cfg = codes_dataset.default_config(str(tmp_path), num_classes=10)
    spec = data.get_spec(cfg)
    assert (spec.num_train, spec.num_eval, spec.image_shape, spec.levels) == (30, 11, (2, 2, 1), levels)
    stored = load_codes(str(tmp_path), "eval").arrays()
    batches = list(data.make_eval_batches(cfg, global_batch_size=8))
    assert [int(b["mask"].sum()) for b in batches] == [8, 3]
    for name in levels:
        got = np.concatenate([b[f"codes_{name}"] for b in batches])
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got[:11], stored["codes"][name])
        assert not got[11:].any()
    train = next(data.make_train_iterator(cfg, global_batch_size=30, seed=0))
    assert sorted(train["label"]) == sorted(splits["train"][1])
    cfg.num_classes = 5
    with pytest.raises(ValueError, match="num_classes=5"):
        next(data.make_train_iterator(cfg, global_batch_size=30, seed=0))
