"""A folder of your own images (`data.name='image_folder'`): preparation, bad input, and a run end to end."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from helpers import load_config
from PIL import Image
from sklearn.datasets import load_digits

from vqlatent import data
from vqlatent.data import image_folder, image_folder_prepare, preprocess

SOURCE_HW = (24, 32)  # Upscaled digits: centre-cropped to 24x24, then resized.


def _digit(i: int) -> tuple[np.ndarray, int]:
    digits = load_digits()
    image = np.kron((digits.images[i] * 15).astype(np.uint8), np.ones((3, 4), np.uint8))
    return image, int(digits.target[i])


def _write_folder(root, n=120, classes=True, prefix=""):
    """n upscaled sklearn digits as grey PNGs, in one subfolder per class (or flat)."""
    paths = {}
    for i in range(n):
        image, label = _digit(i)
        rel = os.path.join(prefix, str(label) if classes else "", f"{i:04d}.png")
        os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
        Image.fromarray(image).save(os.path.join(root, rel))
        paths[os.path.normpath(rel)] = (image, label)
    return paths


def _cfg(folder, data_dir, **overrides):
    cfg = data.default_config()
    cfg.update(dict(name="image_folder", folder=str(folder), data_dir=str(data_dir), num_workers=2))
    cfg.update(overrides)
    return cfg


def _all(cfg, split):
    dataset = data.open_dataset(cfg)
    part = dataset.split(split)
    return part.read(range(len(part)))


def test_prepared_split_holds_each_image_cropped_resized_and_labelled(tmp_path):
    files = _write_folder(tmp_path / "in")
    (tmp_path / "in" / "3" / "broken.png").write_bytes(b"not an image")
    cfg = _cfg(tmp_path / "in", tmp_path / "out", image_size=8, eval_fraction=0.25)
    spec = data.get_spec(cfg)
    assert spec == data.DatasetSpec((8, 8, 1), 10, 90, 30)  # 120 readable, a quarter held out.
    manifest = json.load(open(os.path.join(image_folder.prepared_dir(cfg), "manifest.json")))
    assert [p for p, _ in manifest["skipped"]] == [os.path.join("3", "broken.png")]
    assert "UnidentifiedImageError" in manifest["skipped"][0][1]
    # Each record is the centre crop-resize of one file with its class folder's label; the splits
    # partition the files.
    want = {}
    for image, label in files.values():
        key = preprocess.center_crop_resize(image[..., None], (8, 8)).tobytes()
        want.setdefault(key, []).append(label)
    got = []
    for split in ("train", "test"):
        batch = _all(cfg, split)
        assert batch["image"].dtype == np.uint8
        got += [(x.tobytes(), int(y)) for x, y in zip(batch["image"], batch["label"])]
    assert sorted(got) == sorted((k, v) for k, labels in want.items() for v in labels)
    # Preparing again finds the dataset ready (same directory, nothing rewritten).
    directory = image_folder.prepared_dir(cfg)
    before = {n: os.stat(os.path.join(directory, n)).st_mtime_ns for n in os.listdir(directory)}
    assert data.get_spec(cfg) == spec
    assert before == {n: os.stat(os.path.join(directory, n)).st_mtime_ns for n in os.listdir(directory)}


def test_train_and_test_subfolders_and_flat_folders(tmp_path):
    _write_folder(tmp_path / "split", n=40, prefix="train")
    _write_folder(tmp_path / "split", n=12, prefix="test")
    spec = data.get_spec(_cfg(tmp_path / "split", tmp_path / "out", image_size=(6, 8)))
    assert spec == data.DatasetSpec((6, 8, 1), 10, 40, 12)
    _write_folder(tmp_path / "flat", n=20, classes=False)
    cfg = _cfg(tmp_path / "flat", tmp_path / "out", eval_fraction=0.1)
    assert data.get_spec(cfg) == data.DatasetSpec((*SOURCE_HW, 1), None, 18, 2)  # Native size.
    assert not _all(cfg, "train")["label"].any()
    # FFHQ's layout (images1024x1024/00000/00000.png, ...): subfolders that are not classes.
    _write_folder(tmp_path / "ffhq", n=30, prefix="00000", classes=False)
    _write_folder(tmp_path / "ffhq", n=10, prefix="01000", classes=False)
    cfg = _cfg(tmp_path / "ffhq", tmp_path / "out", image_size=8, eval_fraction=0.1, label_key=None)
    assert data.get_spec(cfg) == data.DatasetSpec((8, 8, 1), None, 36, 4)
    cfg.label_key = "label"  # As classes: the two subfolders would be labels 0 and 1.
    assert data.get_spec(cfg) == data.DatasetSpec((8, 8, 1), 2, 36, 4)


def test_a_killed_preparation_resumes_to_the_same_bytes(tmp_path, monkeypatch):
    monkeypatch.setattr(image_folder_prepare, "EXAMPLES_PER_SHARD", 16)
    _write_folder(tmp_path / "in", n=70)
    cfg = _cfg(tmp_path / "in", tmp_path / "out", image_size=8)
    directory = image_folder.prepare(cfg)
    shards = sorted(n for n in os.listdir(directory) if ".array_record-" in n and not n.endswith(".json"))
    assert len(shards) == 6  # train: 66 -> 5 shards, test: 4 -> 1.
    contents = {n: open(os.path.join(directory, n), "rb").read() for n in shards}
    # A run killed while writing the 4th train shard: no manifest, a temporary file, later shards missing.
    os.remove(os.path.join(directory, "manifest.json"))
    for name in shards[3:]:
        os.rename(
            os.path.join(directory, name), os.path.join(directory, image_folder_prepare.TEMP_PREFIX + name)
        )
        os.remove(os.path.join(directory, name + ".json"))
    kept = {n: os.stat(os.path.join(directory, n)).st_mtime_ns for n in shards[:3]}
    assert image_folder.prepare(cfg) == directory
    assert {n: os.stat(os.path.join(directory, n)).st_mtime_ns for n in shards[:3]} == kept  # Not redone.
    assert {n: open(os.path.join(directory, n), "rb").read() for n in shards} == contents
    assert data.get_spec(cfg).num_train == 66


def test_reading_goes_through_the_shared_grain_iterators(tmp_path):
    _write_folder(tmp_path / "in", n=50)
    cfg = _cfg(tmp_path / "in", tmp_path / "out", image_size=8, eval_fraction=0.2)
    it = data.make_train_iterator(cfg, global_batch_size=8, seed=0)
    for _ in range(3):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(6)]  # Across the epoch boundary (40 train images).
    resumed = data.make_train_iterator(cfg, global_batch_size=8, seed=0)
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        np.testing.assert_array_equal(want["image"], got["image"])
        np.testing.assert_array_equal(want["label"], got["label"])
    batches = list(data.make_eval_batches(cfg, global_batch_size=8))
    assert [int(b["mask"].sum()) for b in batches] == [8, 2]
    test = _all(cfg, "test")
    np.testing.assert_array_equal(np.concatenate([b["image"] for b in batches])[:10], test["image"])


# -- bad input: each a message that says what to change ---------------------------------


def test_empty_missing_or_mixed_layout_folders_are_refused(tmp_path):
    with pytest.raises(data.DataError, match="is not a directory"):
        data.get_spec(_cfg(tmp_path / "nowhere", tmp_path / "out"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images")
    with pytest.raises(
        data.DataError, match=r"No images in folder .*empty \(found 1 other files, e.g. readme.txt"
    ):
        data.get_spec(_cfg(tmp_path / "empty", tmp_path / "out"))
    _write_folder(tmp_path / "mixed", n=6)
    _write_folder(tmp_path / "mixed", n=2, classes=False)
    with pytest.raises(data.DataError, match="mixes images at its top level"):
        data.get_spec(_cfg(tmp_path / "mixed", tmp_path / "out"))
    (tmp_path / "bad").mkdir()
    for i in range(3):
        (tmp_path / "bad" / f"{i}.png").write_bytes(b"garbage")
    with pytest.raises(
        data.DataError, match=r"None of the 3 images .* can be read, e.g. 0.png: Unidentified"
    ):
        data.get_spec(_cfg(tmp_path / "bad", tmp_path / "out"))


def test_mixed_channels_small_images_and_mixed_sizes_are_refused_before_writing(tmp_path):
    _write_folder(tmp_path / "in", n=10, classes=False)
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(tmp_path / "in" / "colour.png")
    cfg = _cfg(tmp_path / "in", tmp_path / "out", image_size=8)
    with pytest.raises(
        data.DataError, match=r"mixed channel counts: 10 with 1 \(L.*1 with 3 \(RGB, e.g. colour.png"
    ):
        data.get_spec(cfg)
    assert not any(".array_record" in n for n in os.listdir(image_folder.prepared_dir(cfg)))
    cfg.channels = 3  # The fix the message names: every image converted to RGB.
    assert data.get_spec(cfg).image_shape == (8, 8, 3)
    with pytest.raises(
        data.DataError, match=r"11 images .* smaller than the target size 32x32, e.g. 0000.png \(24x32\)"
    ):
        data.get_spec(_cfg(tmp_path / "in", tmp_path / "out", image_size=32, channels=3))
    with pytest.raises(data.DataError, match=r"different sizes .*set --config.data.image_size="):
        data.get_spec(_cfg(tmp_path / "in", tmp_path / "out", channels=3))


def test_a_folder_changed_after_preparation_is_refused(tmp_path):
    _write_folder(tmp_path / "in", n=10)
    cfg = _cfg(tmp_path / "in", tmp_path / "out", image_size=8)
    data.get_spec(cfg)
    os.remove(tmp_path / "in" / "0" / "0000.png")
    with pytest.raises(
        data.DataError, match=r"changed since it was prepared .*\(9 images now, 10 then\): delete"
    ):
        data.get_spec(cfg)


# -- end to end --------------------------------------------------------------------------


def test_train_evaluate_extract_codes_and_resume_on_an_image_folder(tmp_path):
    from vqlatent import codes as codes_lib  # pylint: disable=g-import-not-at-top
    from vqlatent import main as main_lib  # pylint: disable=g-import-not-at-top
    from vqlatent.trainers import loop  # pylint: disable=g-import-not-at-top

    _write_folder(tmp_path / "pngs", n=100)
    config = load_config("vqvae2")  # The digits config: 8x8 images, bottom 4x4 and top 2x2 codes.
    config.data.update(
        dict(
            name="image_folder", folder=str(tmp_path / "pngs"), data_dir=str(tmp_path / "data"), num_workers=1
        )
    )
    config.data.image_size, config.data.eval_fraction = 8, 0.2
    config.model.update(dict(num_hiddens=16, num_residual_hiddens=8, num_residual_layers=1))
    for level in config.quantizer.values():
        level.num_embeddings, level.embedding_dim = 16, 8
    config.update(dict(batch_size=16, eval_batch_size=16, num_train_steps=2, log_every_steps=1))
    config.update(dict(eval_every_steps=2, checkpoint_every_steps=2, progress_bar=False))
    workdir = str(tmp_path / "wd")
    loop.train_and_evaluate(config, workdir)
    with open(os.path.join(workdir, "eval", "latest.json")) as f:
        metrics = json.load(f)
    assert metrics["num_examples"] == 20 and 0 < metrics["mse"] < 1
    assert sum(metrics["code_counts_bottom"]) == 20 * 4 * 4

    main_lib.run(config, workdir, "extract_codes")
    train_codes = codes_lib.load_codes(os.path.join(workdir, "codes"), "train").arrays()
    assert len(train_codes["label"]) == 80 and train_codes["codes"]["top"].shape == (80, 2, 2)
    np.testing.assert_array_equal(train_codes["label"], _all(config.data, "train")["label"])

    config.num_train_steps = 4  # Resumes from the checkpoint at step 2 (data position included).
    state = loop.train_and_evaluate(config, workdir)
    assert int(state.step) == 4
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints")))[-1] == "4"
