"""Input pipelines: TFDS array_record data sources read with grain.

A dataset is described by an `ml_collections.ConfigDict` (`data_cfg`, see
`default_config()`), with fields:

  name: TFDS name ('sklearn_digits', 'mnist_idx', 'mnist', 'cifar10',
    'celeb_a', 'imagenet2012', ...; 'name:version' and 'name/config' work).
  data_dir: TFDS data dir; None -> TFDS default (TFDS_DATA_DIR or
    ~/tensorflow_datasets).
  manual_dir: TFDS manual dir (mnist_idx, imagenet2012, ...), or None.
  train_split, eval_split: TFDS split strings ('train', 'test[:10%]', ...).
  image_key, label_key: feature names. A missing label feature (or
    label_key=None) yields zero labels and `num_classes=None`.
  image_size: None (native size), an int S (-> SxS) or (H, W): centre-crop to
    the target aspect ratio, then resize (PIL bicubic, antialiased).
  num_workers: reader/preprocessing threads per process.
  prefetch: number of batches to buffer per process (at least num_workers).

Data is read through `tfds.data_source` (random access over array_record
files), so TensorFlow is never needed at training time. The project builders
(`sklearn_digits`, `mnist_idx`) are prepared automatically on first use;
catalog datasets must be prepared once with `python -m vqlatent.data.prepare`.

Batches are numpy dicts: `image` float32 (B, H, W, C) in [0, 1], `label`
int32 (B,), plus `mask` float32 (B,) for eval batches.

Determinism: TFDS stores records in the order of a hash of their keys, which
depends only on the keys, so a given dataset version has the same record order
on every machine. Sharding, shuffling and the eval order are all defined on
that order, so they are reproducible across runs and hosts.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import fcntl
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import grain
import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from vqlatent.data import builders as project_builders

PREPARE_MODULE = "vqlatent.data.prepare"


class DataError(ValueError):
    """Base class of the data layer's configuration/availability errors."""


class UnknownDatasetError(DataError):
    """The dataset name is neither a project builder nor in the TFDS catalog."""


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


def default_config() -> ml_collections.ConfigDict:
    """Returns a data config with every field at its default (digits)."""
    return ml_collections.ConfigDict(
        {
            "name": "sklearn_digits",
            "data_dir": ml_collections.FieldReference(None, field_type=str),
            "manual_dir": ml_collections.FieldReference(None, field_type=str),
            "train_split": "train",
            "eval_split": "test",
            "image_key": "image",
            "label_key": "label",
            "image_size": ml_collections.FieldReference(None, field_type=object),
            "num_workers": 4,
            "prefetch": 4,
        }
    )


# --------------------------------------------------------------------------
# Builders and sources.


def _cfg(data_cfg: Any, field: str, default: Any = None) -> Any:
    """Reads an optional field of a ConfigDict (or dict); None -> default."""
    value = data_cfg.get(field, default)
    return default if value is None else value


def base_name(name: str) -> str:
    """'name/config:version' -> 'name'."""
    return name.split(":")[0].split("/")[0]


def _prepare_command(name: str, data_dir: Any, needs_manual: bool) -> str:
    cmd = f"python -m {PREPARE_MODULE} --dataset={name} --data_dir={data_dir}"
    if needs_manual:
        cmd += " --manual_dir=DIR"
    return cmd


@contextlib.contextmanager
def _file_lock(path: str) -> Iterator[None]:
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
            f"Unknown dataset {name!r}: it is neither a project builder "
            f"({', '.join(sorted(project_builders.PROJECT_BUILDERS))}) nor in the "
            "TFDS catalog (check --config.data.name=)."
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
    with _file_lock(os.path.join(root, f".{base_name(name)}.prepare.lock")):
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

    Args:
      data_cfg: the data config.

    Raises:
      UnknownDatasetError: unknown name.
      ManualDirError: `mnist_idx` without the idx files in `manual_dir`.
      DatasetNotPreparedError: catalog dataset not prepared in `data_dir`.
    """
    name = _cfg(data_cfg, "name")
    if not name:
        raise DataError("data_cfg.name is not set (e.g. --config.data.name=mnist).")
    data_dir = _cfg(data_cfg, "data_dir")
    manual_dir = _cfg(data_cfg, "manual_dir")
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


def _source(builder: tfds.core.DatasetBuilder, split: str) -> Sequence[dict[str, Any]]:
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
    """Returns a random-access source for `split` of the configured dataset.

    Args:
      data_cfg: the data config.
      split: a TFDS split string ('train', 'test[:10%]', ...).

    Returns:
      A sequence (`len`, `[i]`, `__getitems__`) of decoded numpy-dict records,
      in TFDS storage (key-hash) order.
    """
    if not split:
        raise DataError("get_data_source needs a split name.")
    return _source(get_builder(data_cfg), split)


# --------------------------------------------------------------------------
# Specs and preprocessing.


def _train_split(data_cfg: Any) -> str:
    return _cfg(data_cfg, "train_split", "train")


def _eval_split(data_cfg: Any) -> str:
    return _cfg(data_cfg, "eval_split", "test")


_SPLIT_FIELDS = {"train_split": _train_split, "eval_split": _eval_split}


@dataclasses.dataclass(frozen=True)
class _Layout:
    """Everything needed to turn records into examples."""

    spec: DatasetSpec
    image_key: str
    label_key: str | None  # None: no labels, fill zeros.
    target_hw: tuple[int, int] | None  # None: keep native size.


def _target_hw(image_size: Any) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if isinstance(image_size, (int, np.integer)):
        hw = (int(image_size), int(image_size))
    else:
        hw = tuple(int(s) for s in image_size)
    if len(hw) != 2 or min(hw) <= 0:
        raise DataError(f"image_size must be None, an int or (H, W); got {image_size!r}.")
    return hw  # type: ignore[return-value]


def _layout(data_cfg: Any, builder: tfds.core.DatasetBuilder) -> _Layout:
    """Derives the spec and preprocessing parameters from builder info."""
    info = builder.info
    name = _cfg(data_cfg, "name")
    image_key = _cfg(data_cfg, "image_key", "image")
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
    target_hw = _target_hw(_cfg(data_cfg, "image_size"))
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
        split = _SPLIT_FIELDS[split_key](data_cfg)
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
    return _Layout(spec, image_key, label_key, target_hw)


CODES_DATASET = "codes"


def _is_codes_dataset(data_cfg: Any) -> bool:
    """A dataset of extracted VQ codes (`vqlatent.codes`) rather than a TFDS one.

    The priors train on those; `vqlatent.priors.data` reads them with the same
    API as this module.
    """
    return _cfg(data_cfg, "name") == CODES_DATASET


def _codes_data():
    # Imported lazily: vqlatent.codes imports vqlatent.data.
    from vqlatent.priors import data as codes_data  # pylint: disable=g-import-not-at-top

    return codes_data


def get_spec(data_cfg: Any) -> DatasetSpec:
    """Returns the `DatasetSpec` of `data_cfg` (preparing project builders)."""
    if _is_codes_dataset(data_cfg):
        return _codes_data().get_spec(data_cfg)
    return _layout(data_cfg, get_builder(data_cfg)).spec


def center_crop_resize(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Centre-crops `image` (H, W, C) uint8 to the aspect of `hw`, resizes to it.

    The crop is the largest centred window with aspect ratio hw[0]:hw[1]
    (rounded to whole pixels); the resize is PIL bicubic (antialiased when
    downsampling, like `PIL.Image.resize` always is).

    Args:
      image: uint8 array (H, W, C).
      hw: target (height, width).

    Returns:
      uint8 array (hw[0], hw[1], C).
    """
    h, w, c = image.shape
    th, tw = hw
    if (h, w) == (th, tw):
        return image
    if h * tw > w * th:  # Too tall: crop height.
        ch, cw = max(1, round(w * th / tw)), w
    else:  # Too wide (or exact aspect): crop width.
        ch, cw = h, max(1, round(h * tw / th))
    top, left = (h - ch) // 2, (w - cw) // 2
    image = image[top : top + ch, left : left + cw]
    if (ch, cw) == (th, tw):
        return np.ascontiguousarray(image)

    def resize(plane: np.ndarray) -> np.ndarray:
        pil = Image.fromarray(np.ascontiguousarray(plane))
        return np.asarray(pil.resize((tw, th), Image.Resampling.BICUBIC))

    if c == 3:
        return resize(image)
    return np.stack([resize(image[..., i]) for i in range(c)], axis=-1)


class _BatchReader:
    """Reads records by index (batched reads) -> a float32 batch dict.

    Reading a whole batch with the source's `__getitems__` is ~4x faster than
    record-by-record reads for array_record sources.
    """

    def __init__(self, source: Sequence[Any], layout: _Layout):
        self._source = source
        self._layout = layout

    def _example(self, record: Mapping[str, Any]) -> tuple[np.ndarray, int]:
        layout = self._layout
        image = np.asarray(record[layout.image_key])
        if image.ndim == 2:
            image = image[..., None]
        if layout.target_hw is not None:
            image = center_crop_resize(image, layout.target_hw)
        if image.shape != layout.spec.image_shape:
            raise DataError(
                f"Image of shape {image.shape}, expected {layout.spec.image_shape}; set data.image_size."
            )
        label = int(record[layout.label_key]) if layout.label_key else 0
        return image, label

    def read_uint8(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Returns uint8 images (N, H, W, C) and int32 labels (N,)."""
        indices = [int(i) for i in indices]
        if hasattr(self._source, "__getitems__"):
            records = self._source.__getitems__(indices)
        else:
            records = [self._source[i] for i in indices]
        images = np.empty((len(indices),) + self._layout.spec.image_shape, np.uint8)
        labels = np.empty((len(indices),), np.int32)
        for i, record in enumerate(records):
            images[i], labels[i] = self._example(record)
        return images, labels

    def __call__(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        images, labels = self.read_uint8(indices)
        return {"image": _to_float(images), "label": labels}


def _to_float(images: np.ndarray) -> np.ndarray:
    return images.astype(np.float32) * np.float32(1.0 / 255.0)


def _local_batch_size(global_batch_size: int, process_index: int, process_count: int) -> int:
    if process_count < 1 or not 0 <= process_index < process_count:
        raise DataError(f"Invalid process_index={process_index} for process_count={process_count}.")
    if global_batch_size < 1 or global_batch_size % process_count:
        raise DataError(
            f"global_batch_size={global_batch_size} must be a positive "
            f"multiple of process_count={process_count}."
        )
    return global_batch_size // process_count


def _read_options(data_cfg: Any) -> grain.ReadOptions:
    num_workers = int(_cfg(data_cfg, "num_workers", 4))
    prefetch = max(int(_cfg(data_cfg, "prefetch", 4)), num_workers)
    return grain.ReadOptions(num_threads=num_workers, prefetch_buffer_size=prefetch)


# --------------------------------------------------------------------------
# Public pipelines.


def make_train_iterator(
    data_cfg: Any,
    *,
    global_batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
) -> grain.DatasetIterator:
    """Returns an infinite, seeded, resumable iterator over train batches.

    Process `p` reads only records `p::process_count` of the train split (the
    shards are disjoint and cover the split), shuffles its shard with `seed`,
    reshuffling every epoch, and yields `global_batch_size // process_count`
    examples per batch. Batches straddle epoch boundaries (none is dropped or
    padded). `get_state()`/`set_state()` of the returned iterator resume the
    stream exactly; the state is a small JSON-able dict.

    Args:
      data_cfg: the data config.
      global_batch_size: batch size across all processes.
      seed: shuffle seed.
      process_index: index of this process (jax.process_index()).
      process_count: number of processes (jax.process_count()).

    Returns:
      A `grain.DatasetIterator` of {'image': float32 (B, H, W, C) in [0, 1],
      'label': int32 (B,)}.
    """
    if _is_codes_dataset(data_cfg):
        return _codes_data().make_train_iterator(
            data_cfg,
            global_batch_size=global_batch_size,
            seed=seed,
            process_index=process_index,
            process_count=process_count,
        )
    local_bs = _local_batch_size(global_batch_size, process_index, process_count)
    builder = get_builder(data_cfg)
    layout = _layout(data_cfg, builder)
    source = _source(builder, _train_split(data_cfg))
    # The pipeline shuffles and batches record *indices*; each batch is then
    # read with one batched read (in a prefetch thread).
    indices = grain.MapDataset.range(len(source))[process_index::process_count]
    if len(indices) == 0:  # pylint: disable=g-explicit-length-test
        raise DataError(f"Train split has {len(source)} examples: too few for {process_count} processes.")
    ds = (
        indices.shuffle(seed=seed)
        .repeat(None)
        .batch(local_bs, drop_remainder=True)
        .map(_BatchReader(source, layout))
    )
    return iter(ds.to_iter_dataset(_read_options(data_cfg)))


class _EvalBatchSource:
    """Random access over padded eval batches of one process's shard."""

    def __init__(self, reader: _BatchReader, indices: np.ndarray, num_batches: int, batch_size: int):
        self._reader = reader
        self._indices = indices
        self._num_batches = num_batches
        self._batch_size = batch_size

    def __len__(self) -> int:
        return self._num_batches

    def __getitem__(self, b: int) -> dict[str, np.ndarray]:
        if not 0 <= b < self._num_batches:
            raise IndexError(b)
        real = self._indices[b * self._batch_size : (b + 1) * self._batch_size]
        images, labels = self._reader.read_uint8(real)
        n, pad = len(real), self._batch_size - len(real)
        mask = np.zeros((self._batch_size,), np.float32)
        mask[:n] = 1.0
        return {
            "image": _to_float(np.pad(images, [(0, pad)] + [(0, 0)] * 3)),
            "label": np.pad(labels, (0, pad)),
            "mask": mask,
        }


class EvalBatches:
    """Finite, deterministic, re-iterable eval batches (see make_eval_batches).

    Attributes:
      num_batches: batches per pass (the same on every process).
      num_examples: real examples across all processes.
      batch_size: examples per local batch, padding included.
    """

    def __init__(self, source: _EvalBatchSource, read_options: grain.ReadOptions, num_examples: int):
        self._dataset = grain.MapDataset.source(source)
        self._read_options = read_options
        self.num_batches = len(source)
        self.num_examples = num_examples
        self.batch_size = source._batch_size  # pylint: disable=protected-access

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return iter(self._dataset.to_iter_dataset(self._read_options))


def make_eval_batches(
    data_cfg: Any,
    *,
    global_batch_size: int,
    num_examples: int | None = None,
    process_index: int = 0,
    process_count: int = 1,
) -> EvalBatches:
    """Returns deterministic eval batches over (a prefix of) the eval split.

    The first `num_examples` records of the eval split (all if None; record
    order is the TFDS storage order) are split across processes (`p::count`)
    and batched without shuffling. Every batch has exactly
    `global_batch_size // process_count` rows; rows past the end are zero
    images and labels with `mask == 0`. Every process yields the same number of
    batches, `ceil(ceil(num_examples / process_count) / local_batch)`, so
    collectives in a jitted eval step stay in lockstep. Each real example appears
    exactly once across all processes, with `mask == 1`.

    Args:
      data_cfg: the data config.
      global_batch_size: batch size across all processes.
      num_examples: evaluate only the first `num_examples` records.
      process_index: index of this process.
      process_count: number of processes.

    Returns:
      An `EvalBatches` iterable of {'image': float32 (B, H, W, C), 'label':
      int32 (B,), 'mask': float32 (B,)}; it can be iterated multiple times.
    """
    if _is_codes_dataset(data_cfg):
        return _codes_data().make_eval_batches(
            data_cfg,
            global_batch_size=global_batch_size,
            num_examples=num_examples,
            process_index=process_index,
            process_count=process_count,
        )
    local_bs = _local_batch_size(global_batch_size, process_index, process_count)
    builder = get_builder(data_cfg)
    layout = _layout(data_cfg, builder)
    source = _source(builder, _eval_split(data_cfg))
    total = len(source)
    if num_examples is not None:
        if num_examples < 0:
            raise DataError(f"num_examples must be >= 0, got {num_examples}.")
        total = min(total, int(num_examples))
    indices = np.arange(total)[process_index::process_count]
    per_process = -(-total // process_count)
    num_batches = -(-per_process // local_bs)
    batches = _EvalBatchSource(_BatchReader(source, layout), indices, num_batches, local_bs)
    return EvalBatches(batches, _read_options(data_cfg), total)


def estimate_pixel_variance(data_cfg: Any, num_examples: int = 1024) -> float:
    """Returns the variance of [0, 1] pixel values over a train-split sample.

    The sample is `num_examples` records (all if fewer) chosen with a fixed
    seed from the train split, so the value is deterministic for a given
    prepared dataset. Used to normalise the reconstruction loss as in the
    Sonnet VQ-VAE example (`np.var(images / 255)`).

    Args:
      data_cfg: the data config.
      num_examples: sample size.

    Returns:
      The pixel variance as a Python float.
    """
    builder = get_builder(data_cfg)
    layout = _layout(data_cfg, builder)
    source = _source(builder, _train_split(data_cfg))
    n = len(source)
    count = min(n, int(num_examples))
    if count <= 0:
        raise DataError(f"Cannot sample {num_examples} examples from a train split of {n}.")
    indices = np.sort(np.random.RandomState(0).choice(n, count, replace=False))
    reader = _BatchReader(source, layout)
    chunks = np.array_split(indices, -(-count // 256))
    workers = max(1, int(_cfg(data_cfg, "num_workers", 4)))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        images = np.concatenate([x for x, _ in pool.map(reader.read_uint8, chunks)])
    return float(np.var(images.astype(np.float64) / 255.0))
