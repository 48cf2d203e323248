"""The two batch iterators every dataset shares: a resumable train stream and padded eval batches.

Both work on `sources.open_dataset(data_cfg).split(...)` (records read by index),
so images and the priors' code maps are sharded, shuffled, batched and padded by
the same code. Image batches are numpy dicts `image` uint8 (B, H, W, C) and
`label` int32 (B,), plus `mask` float32 (B,) for eval batches; they become
float32 in [0, 1] on the device (`vqlatent.data.device.to_model_input`).
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import numpy as np

from vqlatent.data import sources
from vqlatent.data.sources import DataError, cfg_value, split_of


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
    num_workers = int(cfg_value(data_cfg, "num_workers", 4))
    prefetch = max(int(cfg_value(data_cfg, "prefetch", 4)), num_workers)
    return grain.ReadOptions(num_threads=num_workers, prefetch_buffer_size=prefetch)


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
      A `grain.DatasetIterator` of the dataset's batches (images: {'image':
      uint8 (B, H, W, C), 'label': int32 (B,)}).
    """
    local_bs = _local_batch_size(global_batch_size, process_index, process_count)
    split = sources.open_dataset(data_cfg).split(split_of(data_cfg, "train_split"))
    # The pipeline shuffles and batches record *indices*; each batch is then
    # read with one batched read (in a prefetch thread).
    indices = grain.MapDataset.range(len(split))[process_index::process_count]
    if len(indices) == 0:  # pylint: disable=g-explicit-length-test
        raise DataError(f"Train split has {len(split)} examples: too few for {process_count} processes.")
    ds = indices.shuffle(seed=seed).repeat(None).batch(local_bs, drop_remainder=True).map(split.read)
    return iter(ds.to_iter_dataset(_read_options(data_cfg)))


class _EvalBatchSource:
    """Random access over padded eval batches of one process's shard."""

    def __init__(self, split: sources.Split, indices: np.ndarray, num_batches: int, batch_size: int):
        self._split = split
        self._indices = indices
        self._num_batches = num_batches
        self.batch_size = batch_size

    def __len__(self) -> int:
        return self._num_batches

    def __getitem__(self, b: int) -> dict[str, np.ndarray]:
        if not 0 <= b < self._num_batches:
            raise IndexError(b)
        real = self._indices[b * self.batch_size : (b + 1) * self.batch_size]
        batch = sources.pad_rows(self._split.read(real), self.batch_size)
        mask = np.zeros((self.batch_size,), np.float32)
        mask[: len(real)] = 1.0
        batch["mask"] = mask
        return batch


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
        self.batch_size = source.batch_size

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return iter(self._dataset.to_iter_dataset(self._read_options))


def make_eval_batches(
    data_cfg: Any,
    *,
    global_batch_size: int,
    num_examples: int | None = None,
    offset: int = 0,
    process_index: int = 0,
    process_count: int = 1,
) -> EvalBatches:
    """Returns deterministic eval batches over (a prefix of) the eval split.

    The `num_examples` records of the eval split from `offset` on (all if None;
    record order is the dataset's storage order) are split across processes (`p::count`)
    and batched without shuffling. Every batch has exactly
    `global_batch_size // process_count` rows; rows past the end are zeros
    with `mask == 0`. Every process yields the same number of batches,
    `ceil(ceil(num_examples / process_count) / local_batch)`, so collectives in
    a jitted eval step stay in lockstep. Each real example appears exactly once
    across all processes, with `mask == 1`.

    Args:
      data_cfg: the data config.
      global_batch_size: batch size across all processes.
      num_examples: evaluate only `num_examples` records.
      offset: the first record to evaluate (code extraction reads a split in shards).
      process_index: index of this process.
      process_count: number of processes.

    Returns:
      An `EvalBatches` iterable of the dataset's batches plus 'mask' float32
      (B,) (images: 'image' uint8 (B, H, W, C), 'label' int32 (B,)); it can be
      iterated multiple times.
    """
    local_bs = _local_batch_size(global_batch_size, process_index, process_count)
    split = sources.open_dataset(data_cfg).split(split_of(data_cfg, "eval_split"))
    if not 0 <= offset <= len(split):
        raise DataError(f"offset={offset} is outside the eval split of {len(split)} examples.")
    total = len(split) - offset
    if num_examples is not None:
        if num_examples < 0:
            raise DataError(f"num_examples must be >= 0, got {num_examples}.")
        total = min(total, int(num_examples))
    indices = np.arange(offset, offset + total)[process_index::process_count]
    per_process = -(-total // process_count)
    num_batches = -(-per_process // local_bs)
    return EvalBatches(
        _EvalBatchSource(split, indices, num_batches, local_bs), _read_options(data_cfg), total
    )


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
    split = sources.open_dataset(data_cfg).split(split_of(data_cfg, "train_split"))
    n = len(split)
    count = min(n, int(num_examples))
    if count <= 0:
        raise DataError(f"Cannot sample {num_examples} examples from a train split of {n}.")
    indices = np.sort(np.random.RandomState(0).choice(n, count, replace=False))
    chunks: Sequence[np.ndarray] = np.array_split(indices, -(-count // 256))
    workers = max(1, int(cfg_value(data_cfg, "num_workers", 4)))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        images = np.concatenate([batch["image"] for batch in pool.map(split.read, chunks)])
    return float(np.var(images.astype(np.float64) / 255.0))
