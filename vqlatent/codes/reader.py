"""Reads codes datasets: `load_codes(dir, split)` -> a random-access source (grain-compatible)."""

from __future__ import annotations

import bisect
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vqlatent.codes import layout


def load_manifest(directory: str) -> dict[str, Any]:
    """The manifest of a finished extraction, or `IncompleteCodesError` saying what to do."""
    path = os.path.join(directory, layout.MANIFEST)
    if not os.path.isfile(path):
        if os.path.isfile(os.path.join(directory, layout.PROVENANCE)):
            raise layout.IncompleteCodesError(
                f"{directory} holds an unfinished code extraction (no {layout.MANIFEST}): re-run the same "
                f"--mode=extract_codes command to finish it (finished shards are kept)."
            )
        raise layout.IncompleteCodesError(
            f"{directory} is not a codes dataset (no {layout.MANIFEST}): create one with "
            f"python -m vqlatent.main --config=... --workdir=VQVAE_WORKDIR --mode=extract_codes."
        )
    manifest = layout.read_json(path)
    if manifest.get("format_version") != layout.FORMAT_VERSION:
        raise layout.CodesError(
            f"{path}: format_version {manifest.get('format_version')!r}, this "
            f"reader understands {layout.FORMAT_VERSION}; re-extract the codes."
        )
    return manifest


def load_provenance(directory: str) -> dict[str, Any]:
    """Where the codes came from: checkpoint (workdir, directory, step), config, plan."""
    return layout.read_json(os.path.join(directory, layout.PROVENANCE))


def load_levels(directory: str) -> dict[str, layout.LevelSpec]:
    return layout.levels_from_json(load_manifest(directory)["levels"])


class CodesSplit:
    """One split of a codes dataset: `len`, `[i]` and `__getitems__` (grain's random access).

    A record is `{'codes': {level: array of level.shape}, 'label': int32, 'index':
    int64}` with the codes in their stored unsigned dtype (`levels[name].dtype`).
    Shards are memory-mapped, so a split larger than memory reads lazily. Use
    `grain.MapDataset.source(split).shuffle(seed).batch(n)` for training, or
    `arrays()` to load everything.
    """

    def __init__(self, directory: str, split: str, manifest: Mapping[str, Any]):
        if split not in manifest["splits"]:
            raise layout.CodesError(
                f"Codes dataset {directory} has no split {split!r}; it has {sorted(manifest['splits'])}."
            )
        self.directory = directory
        self.split = split
        self.levels = layout.levels_from_json(manifest["levels"])
        info = manifest["splits"][split]
        self.source_split = info["source_split"]
        self._shards = [os.path.join(directory, split, s["name"]) for s in info["shards"]]
        sizes = [int(s["num_examples"]) for s in info["shards"]]
        self._starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64).tolist()
        self.num_examples = int(info["num_examples"])
        if self._starts[-1] != self.num_examples:
            raise layout.CodesError(
                f"{directory}/{split}: shards hold {self._starts[-1]} examples, "
                f"the manifest says {self.num_examples}."
            )
        self._keys = [layout.code_key(n) for n in self.levels] + ["label", "index"]
        self._open: dict[int, dict[str, np.ndarray]] = {}

    def __len__(self) -> int:
        return self.num_examples

    def __repr__(self) -> str:
        return (
            f"CodesSplit({self.directory!r}, {self.split!r}: {self.num_examples} examples, "
            f"{layout.describe_levels(self.levels)})"
        )

    def _shard(self, s: int) -> dict[str, np.ndarray]:
        if s not in self._open:
            self._open[s] = {
                k: np.load(os.path.join(self._shards[s], f"{k}.npy"), mmap_mode="r") for k in self._keys
            }
        return self._open[s]

    def _locate(self, i: int) -> tuple[int, int]:
        if not -self.num_examples <= i < self.num_examples:
            raise IndexError(f"index {i} out of range for {self.num_examples} examples")
        i %= self.num_examples
        s = bisect.bisect_right(self._starts, i) - 1
        return s, i - self._starts[s]

    def _record(self, arrays: Mapping[str, np.ndarray]) -> dict[str, Any]:
        return {
            "codes": {n: arrays[layout.code_key(n)] for n in self.levels},
            "label": arrays["label"],
            "index": arrays["index"],
        }

    def __getitem__(self, i: int) -> dict[str, Any]:
        s, j = self._locate(int(i))
        shard = self._shard(s)
        return self._record({k: np.array(shard[k][j]) for k in self._keys})

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        return [self[i] for i in indices]

    def arrays(self) -> dict[str, Any]:
        """The whole split in memory: {'codes': {level: (N, ...)}, 'label': (N,), 'index': (N,)}."""
        if not self._shards:
            empty = {
                layout.code_key(n): np.zeros((0, *spec.shape), spec.dtype) for n, spec in self.levels.items()
            }
            return self._record(
                {**empty, "label": np.zeros((0,), np.int32), "index": np.zeros((0,), np.int64)}
            )
        return self._record(
            {
                k: np.concatenate([np.asarray(self._shard(s)[k]) for s in range(len(self._shards))])
                for k in self._keys
            }
        )

    def check_matches(
        self, expected: Mapping[str, layout.LevelSpec], expected_what: str = "the model"
    ) -> None:
        """`CodeShapeError` unless this dataset's levels are `expected` (e.g. a task's `code_levels`)."""
        layout.check_levels_match(
            self.levels,
            expected,
            f"Codes dataset {self.directory}",
            expected_what,
            hint="Decode codes with the model they were extracted from (see provenance.json: "
            "checkpoint workdir and step), or extract new codes with this model.",
        )


def load_codes(
    directory: str, split: str, expected_levels: Mapping[str, layout.LevelSpec] | None = None
) -> CodesSplit:
    """Opens one split ('train' or 'eval') of a finished codes dataset.

    Args:
      directory: the extraction's output directory (default `<workdir>/codes`).
      split: 'train' or 'eval'.
      expected_levels: if given (e.g. `task.code_levels`), the dataset must have
        exactly these levels, shapes and codebook sizes (`CodeShapeError` otherwise).
    """
    source = CodesSplit(directory, split, load_manifest(directory))
    if expected_levels is not None:
        source.check_matches(expected_levels)
    return source
