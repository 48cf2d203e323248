"""A codes dataset as the shared loop's data: the same three functions as `vqlatent.data`.

A prior trains on the code maps written by `--mode=extract_codes`
(`vqlatent.codes`), not on a TFDS image dataset. A data config with
`name='codes'` (see `default_config`) selects this module; its functions have
the signatures of `vqlatent.data.get_spec / make_train_iterator /
make_eval_batches`, so the loop runs unchanged once `vqlatent.data` dispatches
to them (or a test patches them in).

Batches are numpy dicts: `codes_<level>` int32 (B, *level.shape) for every
level of the dataset, `label` int32 (B,), plus `mask` float32 (B,) for eval
batches (padding rows are zero codes with mask 0).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

import grain
import ml_collections
import numpy as np

from vqlatent.codes import layout, reader

NAME = "codes"


def default_config(codes_dir: str | None = None, num_classes: int | None = None) -> ml_collections.ConfigDict:
    """`config.data` of a prior.

    Fields:
      name: 'codes' (selects this module).
      codes_dir: the extraction's output directory (`<vqvae workdir>/codes`).
      train_split, eval_split: 'train' and 'eval' (the codes dataset's split names).
      num_classes: classes of the labels (for class-conditional priors), or None.
      num_workers, prefetch: reader threads and buffered batches.
    """
    return ml_collections.ConfigDict(
        {
            "name": NAME,
            "codes_dir": ml_collections.FieldReference(codes_dir, field_type=str),
            "train_split": "train",
            "eval_split": "eval",
            "num_classes": ml_collections.FieldReference(num_classes, field_type=int),
            "num_workers": 2,
            "prefetch": 4,
        }
    )


def is_codes_config(data_cfg: Any) -> bool:
    return data_cfg.get("name") == NAME


@dataclasses.dataclass(frozen=True)
class CodesDatasetSpec:
    """`vqlatent.data.DatasetSpec` plus the levels; `image_shape` is the top level's (h, w, 1)."""

    image_shape: tuple[int, int, int]
    num_classes: int | None
    num_train: int
    num_eval: int
    levels: Mapping[str, layout.LevelSpec]
    codes_dir: str


def _codes_dir(data_cfg: Any) -> str:
    directory = data_cfg.get("codes_dir")
    if not directory:
        raise layout.CodesError(
            "config.data.codes_dir is not set: point it at a codes dataset "
            "(python -m vqlatent.main --config=configs/vqvae2.py:... --workdir=W "
            "--mode=extract_codes writes W/codes)."
        )
    return directory


def _split(data_cfg: Any, which: str) -> reader.CodesSplit:
    return reader.load_codes(_codes_dir(data_cfg), data_cfg.get(which))


def get_spec(data_cfg: Any) -> CodesDatasetSpec:
    directory = _codes_dir(data_cfg)
    manifest = reader.load_manifest(directory)
    levels = layout.levels_from_json(manifest["levels"])
    num_examples = {}
    for which in ("train_split", "eval_split"):
        split = data_cfg.get(which)
        if split not in manifest["splits"]:
            raise layout.CodesError(
                f"config.data.{which}={split!r}: codes dataset {directory} has splits "
                f"{sorted(manifest['splits'])}."
            )
        num_examples[which] = int(manifest["splits"][split]["num_examples"])
    num_classes = data_cfg.get("num_classes")
    if num_classes is not None and num_classes < 1:
        raise ValueError(f"config.data.num_classes={num_classes}: must be >= 1 or None.")
    top = levels[list(levels)[-1]] if "top" not in levels else levels["top"]
    return CodesDatasetSpec(
        image_shape=(*top.shape[:2], 1),
        num_classes=num_classes,
        num_train=num_examples["train_split"],
        num_eval=num_examples["eval_split"],
        levels=levels,
        codes_dir=directory,
    )


class _BatchReader:
    """Record indices -> a batch dict of int32 code maps and labels."""

    def __init__(self, source: reader.CodesSplit, num_classes: int | None):
        self._source = source
        self._num_classes = num_classes

    def read(self, indices) -> dict[str, np.ndarray]:
        records = self._source.__getitems__([int(i) for i in indices])
        batch = {
            layout.code_key(name): np.stack([r["codes"][name] for r in records]).astype(np.int32)
            for name in self._source.levels
        }
        labels = np.asarray([r["label"] for r in records], np.int32)
        if (
            self._num_classes is not None
            and len(labels)
            and (labels.min() < 0 or labels.max() >= self._num_classes)
        ):
            raise ValueError(
                f"Codes dataset {self._source.directory}: labels in [{labels.min()}, {labels.max()}] "
                f"but config.data.num_classes={self._num_classes}."
            )
        batch["label"] = labels
        return batch

    def __call__(self, indices) -> dict[str, np.ndarray]:
        return self.read(indices)


def _local_batch_size(global_batch_size: int, process_index: int, process_count: int) -> int:
    if global_batch_size < 1 or global_batch_size % process_count or not 0 <= process_index < process_count:
        raise ValueError(
            f"global_batch_size={global_batch_size} must be a positive multiple of "
            f"process_count={process_count} (process_index={process_index})."
        )
    return global_batch_size // process_count


def make_train_iterator(
    data_cfg: Any, *, global_batch_size: int, seed: int, process_index: int = 0, process_count: int = 1
) -> grain.DatasetIterator:
    """Infinite, seeded, resumable (`get_state`/`set_state`) iterator over train batches.

    As `vqlatent.data.make_train_iterator`: process p reads records p::count,
    reshuffled every epoch, batches straddle epochs.
    """
    local_bs = _local_batch_size(global_batch_size, process_index, process_count)
    source = _split(data_cfg, "train_split")
    indices = grain.MapDataset.range(len(source))[process_index::process_count]
    if len(indices) == 0:  # pylint: disable=g-explicit-length-test
        raise ValueError(
            f"Codes split {source.split!r} has {len(source)} examples: too few for {process_count} processes."
        )
    ds = (
        indices.shuffle(seed=seed)
        .repeat(None)
        .batch(local_bs, drop_remainder=True)
        .map(_BatchReader(source, data_cfg.get("num_classes")))
    )
    options = grain.ReadOptions(
        num_threads=int(data_cfg.get("num_workers")),
        prefetch_buffer_size=max(int(data_cfg.get("prefetch")), int(data_cfg.get("num_workers"))),
    )
    return iter(ds.to_iter_dataset(options))


class CodesEvalBatches:
    """Finite, deterministic, re-iterable padded eval batches (as `vqlatent.data.EvalBatches`)."""

    def __init__(
        self,
        batch_reader: _BatchReader,
        indices: np.ndarray,
        num_batches: int,
        batch_size: int,
        num_examples: int,
        levels: Mapping[str, layout.LevelSpec],
    ):
        self._reader = batch_reader
        self._indices = indices
        self.num_batches = num_batches
        self.batch_size = batch_size
        self.num_examples = num_examples
        self._levels = levels

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for b in range(self.num_batches):
            real = self._indices[b * self.batch_size : (b + 1) * self.batch_size]
            pad = self.batch_size - len(real)
            if len(real):
                batch = self._reader.read(real)
            else:
                batch = {
                    layout.code_key(n): np.zeros((0, *s.shape), np.int32) for n, s in self._levels.items()
                }
                batch["label"] = np.zeros((0,), np.int32)
            batch = {k: np.pad(v, [(0, pad)] + [(0, 0)] * (v.ndim - 1)) for k, v in batch.items()}
            mask = np.zeros((self.batch_size,), np.float32)
            mask[: len(real)] = 1.0
            batch["mask"] = mask
            yield batch


def make_eval_batches(
    data_cfg: Any,
    *,
    global_batch_size: int,
    num_examples: int | None = None,
    process_index: int = 0,
    process_count: int = 1,
) -> CodesEvalBatches:
    """The first `num_examples` eval records split p::count, batched in order and padded with mask 0."""
    local_bs = _local_batch_size(global_batch_size, process_index, process_count)
    source = _split(data_cfg, "eval_split")
    total = len(source) if num_examples is None else min(len(source), int(num_examples))
    indices = np.arange(total)[process_index::process_count]
    per_process = -(-total // process_count)  # ceil division
    num_batches = -(-per_process // local_bs)
    return CodesEvalBatches(
        _BatchReader(source, data_cfg.get("num_classes")),
        indices,
        num_batches,
        local_bs,
        total,
        source.levels,
    )


def write_codes_dataset(
    directory: str,
    levels: Mapping[str, layout.LevelSpec],
    splits: Mapping[str, tuple[Mapping[str, np.ndarray], np.ndarray]],
) -> None:
    """Writes in-memory code maps as a one-shard-per-split codes dataset (tests, synthetic priors).

    `splits` maps 'train' / 'eval' to ({level: (n, *shape) codes}, labels (n,)).
    """
    from vqlatent.codes import writer  # pylint: disable=g-import-not-at-top

    manifest_splits = {}
    for name, (codes, labels) in splits.items():
        info = writer.SplitWriter(directory, name, levels, num_shards=1).write(0, 0, codes, labels)
        manifest_splits[name] = {
            "source_split": name,
            "num_examples": int(len(labels)),
            "num_shards": 1,
            "shards": [info],
        }
    writer.write_manifest(directory, levels, manifest_splits)
