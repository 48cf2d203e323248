"""A codes dataset as a registered dataset (`data.name='codes'`): the priors' training data.

`vqlatent.data` finds it by name (`vqlatent.data.sources`), so the loop's
`get_spec`, `make_train_iterator` and `make_eval_batches` read code maps as they
read images: shuffled, sharded, padded and resumed by `vqlatent.data.batching`.

Batches are numpy dicts: `codes_<level>` int32 (B, *level.shape) for every
level of the dataset, `label` int32 (B,), plus `mask` float32 (B,) for eval
batches (padding rows are zero codes with mask 0).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np

from vqlatent.codes import layout, reader, writer
from vqlatent.data import sources

NAME = "codes"


def default_config(codes_dir: str | None = None, num_classes: int | None = None) -> ml_collections.ConfigDict:
    """`config.data` of a prior.

    Fields:
      name: 'codes' (this dataset).
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


class CodesBatchSplit:
    """One split of a codes dataset read by index -> int32 code maps and labels (a `sources.Split`)."""

    def __init__(self, source: reader.CodesSplit, num_classes: int | None):
        self.source = source
        self._num_classes = num_classes

    def __len__(self) -> int:
        return len(self.source)

    def read(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
        records = self.source.__getitems__([int(i) for i in indices])
        batch = {}
        for name, spec in self.source.levels.items():
            codes = np.empty((len(records), *spec.shape), np.int32)
            for i, record in enumerate(records):
                codes[i] = record["codes"][name]
            batch[layout.code_key(name)] = codes
        batch["label"] = np.asarray([r["label"] for r in records], np.int32).reshape(len(records))
        sources.check_label_range(batch["label"], self._num_classes, f"Codes dataset {self.source.directory}")
        return batch


class CodesDataset:
    """A finished codes dataset: `spec` (`CodesDatasetSpec`) and `split(name)`."""

    def __init__(self, data_cfg: Any):
        self.directory = _codes_dir(data_cfg)
        manifest = reader.load_manifest(self.directory)
        levels = layout.levels_from_json(manifest["levels"])
        num_examples = {}
        for which in ("train_split", "eval_split"):
            split = data_cfg.get(which)
            if split not in manifest["splits"]:
                raise layout.CodesError(
                    f"config.data.{which}={split!r}: codes dataset {self.directory} has splits "
                    f"{sorted(manifest['splits'])}."
                )
            num_examples[which] = int(manifest["splits"][split]["num_examples"])
        num_classes = data_cfg.get("num_classes")
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"config.data.num_classes={num_classes}: must be >= 1 or None.")
        top = levels[list(levels)[-1]] if "top" not in levels else levels["top"]
        self._manifest = manifest
        self.spec = CodesDatasetSpec(
            image_shape=(*top.shape[:2], 1),
            num_classes=num_classes,
            num_train=num_examples["train_split"],
            num_eval=num_examples["eval_split"],
            levels=levels,
            codes_dir=self.directory,
        )

    def split(self, split: str) -> CodesBatchSplit:
        return CodesBatchSplit(
            reader.CodesSplit(self.directory, split, self._manifest), self.spec.num_classes
        )


def open_dataset(data_cfg: Any) -> CodesDataset:
    return CodesDataset(data_cfg)


def write_codes_dataset(
    directory: str,
    levels: Mapping[str, layout.LevelSpec],
    splits: Mapping[str, tuple[Mapping[str, np.ndarray], np.ndarray]],
) -> None:
    """Writes in-memory code maps as a one-shard-per-split codes dataset (tests, synthetic priors).

    `splits` maps 'train' / 'eval' to ({level: (n, *shape) codes}, labels (n,)).
    """
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


def spec_to_json(spec: Any, portable: bool = False) -> dict[str, Any]:
    """A dataset spec (`DatasetSpec` or `CodesDatasetSpec`) as a JSON dict (`spec_from_json` reverses it).

    It is what a model needs of its data to be rebuilt (image shape, classes, code levels), so a
    trained model loads without its training data. A codes spec also records the checkpoint its codes
    were extracted from (the codes dataset's provenance), which decodes a prior's samples; `portable`
    leaves out both paths (a model directory records its decoder itself).
    """
    out = {
        "image_shape": [int(s) for s in spec.image_shape],
        "num_classes": None if spec.num_classes is None else int(spec.num_classes),
        "num_train": int(spec.num_train),
        "num_eval": int(spec.num_eval),
    }
    if isinstance(spec, CodesDatasetSpec):
        out["levels"] = layout.levels_to_json(spec.levels)
        if portable:
            return out
        out["codes_dir"] = spec.codes_dir
        provenance = os.path.join(spec.codes_dir, layout.PROVENANCE)
        out["codes_checkpoint"] = (
            layout.read_json(provenance)["checkpoint"] if os.path.isfile(provenance) else None
        )
    return out


def spec_from_json(d: Mapping[str, Any]) -> Any:
    """The spec written by `spec_to_json`."""
    common = dict(
        image_shape=tuple(int(s) for s in d["image_shape"]),
        num_classes=d["num_classes"],
        num_train=int(d["num_train"]),
        num_eval=int(d["num_eval"]),
    )
    if "levels" in d:
        return CodesDatasetSpec(
            **common, levels=layout.levels_from_json(d["levels"]), codes_dir=d.get("codes_dir", "")
        )
    return sources.DatasetSpec(**common)


SPEC_FILE = "spec.json"  # In a training workdir, beside config.json.


def write_spec_file(workdir: str, spec: Any, run: Mapping[str, Any] | None = None) -> None:
    """Records `spec` in `workdir/spec.json` (atomically), so the workdir's model loads without its data;
    `run` (the command and code version of the run writing it) goes into model cards."""
    record = spec_to_json(spec)
    if run is not None:
        record["run"] = dict(run)
    layout.write_json_atomically(os.path.join(workdir, SPEC_FILE), record)


def read_spec_file(workdir: str) -> Any | None:
    """The spec recorded by `write_spec_file`, or None for a workdir written before it existed."""
    path = os.path.join(workdir, SPEC_FILE)
    return spec_from_json(layout.read_json(path)) if os.path.isfile(path) else None
