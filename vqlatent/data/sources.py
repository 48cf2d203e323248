"""Datasets by name: the registry, the spec every dataset reports, and the data layer's errors.

A dataset is selected by `data_cfg.name` (an `ml_collections.ConfigDict`, see
`default_config()`). `open_dataset(data_cfg)` looks the name up in a small
registry and returns a `Dataset`: its `spec` and, per split, a `Split` that
reads records by index into numpy batch dicts. The batch iterators
(`vqlatent.data.batching`) work on that interface alone, so every dataset is
shuffled, sharded, batched, padded and resumed by the same code.

Registered names:
  sklearn_digits, mnist_idx: the project's TFDS builders (`builders/`),
    prepared automatically on first use (`tfds_sources`).
  image_folder: a folder of your own images (`data.folder`), prepared once
    into array_record (`image_folder`).
  codes: the code maps written by `--mode=extract_codes`, the training data of
    the priors (`vqlatent.codes.dataset`).
Any other name is looked up in the TFDS catalog (mnist, cifar10, celeb_a,
imagenet2012, ...; 'name:version' and 'name/config' work), prepared once with
`python -m vqlatent.data.prepare`.

Entries are 'module:attribute' strings imported on first use, so this module
imports none of them (the codes dataset lives in `vqlatent.codes`, which itself
reads images through this package).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import ml_collections
import numpy as np


class DataError(ValueError):
    """Base class of the data layer's configuration/availability errors."""


class UnknownDatasetError(DataError):
    """The dataset name is neither registered nor in the TFDS catalog."""


class DatasetNotPreparedError(DataError):
    """A catalog dataset has not been prepared (as array_record) in data_dir."""


class ManualDirError(DataError):
    """A dataset needs files in `manual_dir` that are not there."""


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """Static description of a dataset as produced by this pipeline.

    Attributes:
      image_shape: (H, W, C) of the produced images (after any resize).
      num_classes: number of label classes, or None without (class) labels.
      num_train: number of examples in `train_split`.
      num_eval: number of examples in `eval_split`.
    """

    image_shape: tuple[int, int, int]
    num_classes: int | None
    num_train: int
    num_eval: int


class Split(Protocol):
    """One split of a dataset, read by record index.

    `read(indices)` returns a batch dict of numpy arrays with leading axis
    `len(indices)` (also for no indices): image datasets give `image` uint8
    (N, H, W, C) and `label` int32 (N,).
    """

    def __len__(self) -> int: ...

    def read(self, indices: Sequence[int]) -> dict[str, np.ndarray]: ...


class Dataset(Protocol):
    """What a registered opener returns for a data config."""

    spec: Any  # A DatasetSpec (or one with more fields, like the codes dataset's).

    def split(self, split: str) -> Split: ...


def default_config() -> ml_collections.ConfigDict:
    """Returns a data config with every field at its default (digits).

    Fields:
      name: a registered name or a TFDS catalog name (see the module docstring).
      data_dir: where prepared datasets live; None -> TFDS_DATA_DIR or
        ~/tensorflow_datasets.
      manual_dir: TFDS manual dir (mnist_idx, imagenet2012, ...), or None.
      folder: the image folder of `name='image_folder'` (see `image_folder`).
      eval_fraction: image_folder without train/ and test/ subfolders: the
        fraction of images held out as the 'test' split.
      channels: image_folder: None (every image must have the same channel
        count) or 1, 3 or 4 (convert every image to L, RGB or RGBA).
      train_split, eval_split: split strings ('train', 'test[:10%]', ...).
      image_key, label_key: TFDS feature names. A missing label feature (or
        label_key=None) yields zero labels and `num_classes=None`.
      image_size: None (native size), an int S (-> SxS) or (H, W): centre-crop
        to the target aspect ratio, then resize (PIL bicubic, antialiased).
      num_workers: reader/preprocessing threads per process.
      prefetch: number of batches to buffer per process (at least num_workers).
    """
    return ml_collections.ConfigDict(
        {
            "name": "sklearn_digits",
            "data_dir": ml_collections.FieldReference(None, field_type=str),
            "manual_dir": ml_collections.FieldReference(None, field_type=str),
            "folder": ml_collections.FieldReference(None, field_type=str),
            "eval_fraction": 0.05,
            "channels": ml_collections.FieldReference(None, field_type=int),
            "train_split": "train",
            "eval_split": "test",
            "image_key": "image",
            "label_key": "label",
            "image_size": ml_collections.FieldReference(None, field_type=object),
            "num_workers": 4,
            "prefetch": 4,
        }
    )


def cfg_value(data_cfg: Any, field: str, default: Any = None) -> Any:
    """Reads an optional field of a ConfigDict (or dict); None -> default."""
    value = data_cfg.get(field, default)
    return default if value is None else value


def base_name(name: str) -> str:
    """'name/config:version' -> 'name'."""
    return name.split(":")[0].split("/")[0]


def split_of(data_cfg: Any, field: str) -> str:
    """The split string of `field` ('train_split' or 'eval_split')."""
    return cfg_value(data_cfg, field, {"train_split": "train", "eval_split": "test"}[field])


TFDS_CATALOG = "vqlatent.data.tfds_sources:open_dataset"

_REGISTRY: dict[str, Callable[[Any], Dataset] | str] = {
    "sklearn_digits": TFDS_CATALOG,
    "mnist_idx": TFDS_CATALOG,
    "image_folder": "vqlatent.data.image_folder:open_dataset",
    "codes": "vqlatent.codes.dataset:open_dataset",
}


def register(name: str, opener: Callable[[Any], Dataset] | str) -> None:
    """Registers `opener(data_cfg) -> Dataset` (or a 'module:attribute' path to it) as `name`."""
    if name in _REGISTRY and _REGISTRY[name] != opener:
        raise DataError(f"Dataset name {name!r} is already registered ({_REGISTRY[name]!r}).")
    _REGISTRY[name] = opener


def registered_names() -> list[str]:
    return sorted(_REGISTRY)


def _resolve(opener: Callable[[Any], Dataset] | str) -> Callable[[Any], Dataset]:
    if isinstance(opener, str):
        module, attribute = opener.split(":")
        return getattr(importlib.import_module(module), attribute)
    return opener


def open_dataset(data_cfg: Any) -> Dataset:
    """The `Dataset` of `data_cfg.name` (a registered name, else the TFDS catalog)."""
    name = cfg_value(data_cfg, "name")
    if not name:
        raise DataError("data_cfg.name is not set (e.g. --config.data.name=mnist).")
    return _resolve(_REGISTRY.get(base_name(name), TFDS_CATALOG))(data_cfg)


def get_spec(data_cfg: Any) -> Any:
    """Returns the spec of `data_cfg`'s dataset (`DatasetSpec`; preparing project builders)."""
    return open_dataset(data_cfg).spec


def check_label_range(labels: np.ndarray, num_classes: int | None, where: str) -> None:
    """`DataError` unless every label is in [0, num_classes) (no check without classes)."""
    if num_classes is not None and len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(
            f"{where}: labels in [{labels.min()}, {labels.max()}] but config.data.num_classes={num_classes}."
        )


def pad_rows(batch: Mapping[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """Zero-pads every array of `batch` along axis 0 to `size` rows."""
    return {k: np.pad(v, [(0, size - len(v))] + [(0, 0)] * (v.ndim - 1)) for k, v in batch.items()}
