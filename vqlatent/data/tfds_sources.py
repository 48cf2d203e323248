"""TFDS datasets (the project builders and the catalog) as `sources.Dataset`s.

Data is read through `tfds.data_source` (random access over array_record
files), so TensorFlow is never needed at training time. The project builders
(`sklearn_digits`, `mnist_idx`) are prepared automatically on first use;
catalog datasets must be prepared once with `python -m vqlatent.data.prepare`.

Determinism: TFDS stores records in the order of a hash of their keys, which
depends only on the keys, so a given dataset version has the same record order
on every machine. Sharding, shuffling and the eval order are all defined on
that order, so they are reproducible across runs and hosts.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from vqlatent.data import builders as project_builders
from vqlatent.data import preprocess
from vqlatent.data.sources import (
    DataError,
    DatasetNotPreparedError,
    DatasetSpec,
    ManualDirError,
    UnknownDatasetError,
    base_name,
    cfg_value,
    registered_names,
    split_of,
)

PREPARE_MODULE = "vqlatent.data.prepare"


def _prepare_command(name: str, data_dir: Any, needs_manual: bool) -> str:
    cmd = f"python -m {PREPARE_MODULE} --dataset={name} --data_dir={data_dir}"
    if needs_manual:
        cmd += " --manual_dir=DIR"
    return cmd


@contextlib.contextmanager
def file_lock(path: str) -> Iterator[None]:
    """Exclusive advisory lock, so concurrent processes prepare only once."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def is_prepared(builder: tfds.core.DatasetBuilder) -> bool:
    """Whether `builder`'s data exists (quietly False if its dir is absent)."""
    return os.path.isdir(builder.data_dir) and builder.is_prepared()


def make_builder(name: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
    """`tfds.builder`, raising `UnknownDatasetError` for unknown names."""
    try:
        return tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise UnknownDatasetError(
            f"Unknown dataset {name!r}: it is neither a registered dataset "
            f"({', '.join(registered_names())}) nor in the TFDS catalog (check --config.data.name=)."
        ) from None


def prepare_project_builder(
    name: str, data_dir: str | None, manual_dir: str | None
) -> tfds.core.DatasetBuilder:
    """Prepares a project builder (if needed) and returns it, prepared."""
    builder = make_builder(name, data_dir)
    if is_prepared(builder):
        return builder
    if base_name(name) == "mnist_idx":
        missing = project_builders.mnist_idx.missing_files(manual_dir)
        if missing:
            raise ManualDirError(
                f"Dataset mnist_idx needs the MNIST idx files in its manual dir, "
                f"but manual_dir={manual_dir!r} lacks: "
                f"{', '.join(m + '[.gz]' for m in missing)}. Put the four files "
                "(train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
                "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) in a "
                "directory and pass --config.data.manual_dir=DIR (training) or "
                "--manual_dir=DIR (python -m vqlatent.data.prepare)."
            )
    root = os.fspath(builder.data_dir_root)
    with file_lock(os.path.join(root, f".{base_name(name)}.prepare.lock")):
        builder = make_builder(name, data_dir)  # Re-check under the lock.
        if not is_prepared(builder):
            logging.info("Preparing %s in %s.", name, root)
            builder.download_and_prepare(
                file_format="array_record",
                download_config=tfds.download.DownloadConfig(manual_dir=manual_dir),
            )
            builder = make_builder(name, data_dir)
    return builder


def get_builder(data_cfg: Any) -> tfds.core.DatasetBuilder:
    """Returns the prepared TFDS builder of `data_cfg.name`.

    Project builders are prepared on first use; for catalog datasets that are
    not prepared this raises `DatasetNotPreparedError` with the command to run.

    Raises:
      UnknownDatasetError: unknown name.
      ManualDirError: `mnist_idx` without the idx files in `manual_dir`.
      DatasetNotPreparedError: catalog dataset not prepared in `data_dir`.
    """
    name = cfg_value(data_cfg, "name")
    if not name:
        raise DataError("data_cfg.name is not set (e.g. --config.data.name=mnist).")
    data_dir = cfg_value(data_cfg, "data_dir")
    manual_dir = cfg_value(data_cfg, "manual_dir")
    if base_name(name) in project_builders.PROJECT_BUILDERS:
        return prepare_project_builder(name, data_dir, manual_dir)
    builder = make_builder(name, data_dir)
    if not is_prepared(builder):
        needs_manual = bool(getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None))
        root = os.fspath(builder.data_dir_root)
        extra = " and the manually downloaded files" if needs_manual else ""
        raise DatasetNotPreparedError(
            f"Dataset {name!r} is not prepared in data_dir={root} (looked for "
            f"{builder.data_dir}). Prepare it once with:\n"
            f"  {_prepare_command(name, root, needs_manual)}\n"
            "(catalog datasets need TensorFlow for this: pip install "
            f"'vqlatent[prepare]'; plus network access{extra}), or point "
            "--config.data.data_dir= at a directory where it is prepared in "
            "array_record format."
        )
    return builder


def builder_source(builder: tfds.core.DatasetBuilder, split: str) -> Sequence[dict[str, Any]]:
    """The random-access records of `split`, in TFDS storage (key-hash) order."""
    try:
        return builder.as_data_source(split=split)
    except NotImplementedError as e:
        raise DataError(
            f"Dataset {builder.info.full_name} in {builder.data_dir} is not in "
            "a random-access format (array_record); re-prepare it with "
            f"python -m {PREPARE_MODULE} into another data_dir. ({e})"
        ) from e
    except (KeyError, ValueError) as e:
        raise DataError(f"Dataset {builder.info.full_name}: bad split {split!r} ({e}).") from e


def get_data_source(data_cfg: Any, split: str) -> Sequence[dict[str, Any]]:
    """A random-access source (`len`, `[i]`, `__getitems__`) of decoded numpy-dict records of `split`."""
    if not split:
        raise DataError("get_data_source needs a split name.")
    return builder_source(get_builder(data_cfg), split)


def _layout(data_cfg: Any, builder: tfds.core.DatasetBuilder) -> preprocess.ImageLayout:
    """Derives the spec and preprocessing parameters from builder info."""
    info = builder.info
    name = cfg_value(data_cfg, "name")
    image_key = cfg_value(data_cfg, "image_key", "image")
    # An explicit None or '' label_key means "no labels".
    label_key = data_cfg.get("label_key", "label")
    features = info.features
    if image_key not in features:
        raise DataError(
            f"Dataset {name!r} has no feature {image_key!r} (set "
            f"data.image_key); features: {list(features.keys())}."
        )
    image_feature = features[image_key]
    if np.dtype(image_feature.np_dtype) != np.uint8:
        raise DataError(f"{name}/{image_key} must be uint8, got {image_feature.np_dtype}.")
    shape = tuple(image_feature.shape)
    if len(shape) == 2:
        shape = shape + (1,)
    if len(shape) != 3 or shape[2] is None:
        raise DataError(f"{name}/{image_key} has unsupported shape {shape}.")
    target_hw = preprocess.target_hw(cfg_value(data_cfg, "image_size"))
    if target_hw is None:
        if shape[0] is None or shape[1] is None:
            raise DataError(
                f"{name}/{image_key} has variable size {shape}; set "
                "--config.data.image_size= to crop and resize."
            )
        image_shape = (int(shape[0]), int(shape[1]), int(shape[2]))
    else:
        image_shape = (target_hw[0], target_hw[1], int(shape[2]))
    num_classes = None
    if label_key and label_key in features:
        label_feature = features[label_key]
        if isinstance(label_feature, tfds.features.ClassLabel):
            num_classes = int(label_feature.num_classes)
    else:
        if label_key:
            logging.warning("Dataset %r has no feature %r; using zero labels.", name, label_key)
        label_key = None

    def count(split_key: str) -> int:
        split = split_of(data_cfg, split_key)
        try:
            return int(info.splits[split].num_examples)
        except (KeyError, ValueError) as e:
            raise DataError(
                f"Dataset {name!r} has no split {split!r} (data."
                f"{split_key}); splits: {list(info.splits.keys())}."
            ) from e

    spec = DatasetSpec(
        image_shape=image_shape,
        num_classes=num_classes,
        num_train=count("train_split"),
        num_eval=count("eval_split"),
    )
    if target_hw == tuple(shape[:2]):
        target_hw = None  # Already the requested size.
    return preprocess.ImageLayout(spec, image_key, label_key, target_hw)


class TfdsSplit:
    """Records of one TFDS split -> uint8 image batches (one batched read per batch).

    Reading a whole batch with the source's `__getitems__` is ~4x faster than
    record-by-record reads for array_record sources.
    """

    def __init__(self, source: Sequence[Any], layout: preprocess.ImageLayout):
        self.source = source
        self._layout = layout

    def __len__(self) -> int:
        return len(self.source)

    def read(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
        indices = [int(i) for i in indices]
        if hasattr(self.source, "__getitems__"):
            records = self.source.__getitems__(indices)
        else:
            records = [self.source[i] for i in indices]
        return preprocess.image_batch(records, self._layout)


class TfdsDataset:
    """A prepared TFDS dataset: `spec`, `split(name)`, and its `builder`."""

    def __init__(self, data_cfg: Any):
        self.builder = get_builder(data_cfg)
        self.layout = _layout(data_cfg, self.builder)
        self.spec = self.layout.spec

    def split(self, split: str) -> TfdsSplit:
        return TfdsSplit(builder_source(self.builder, split), self.layout)


def open_dataset(data_cfg: Any) -> TfdsDataset:
    return TfdsDataset(data_cfg)
