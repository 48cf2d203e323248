"""The on-disk format of a codes dataset (what `--mode=extract_codes` writes).

A codes dataset holds the code maps of every level of a trained VQ-VAE or
VQ-VAE-2, with the labels, for the train and eval splits of its dataset: the
training data of the priors (PixelCNN / PixelSNAIL over the codes).

  <dir>/provenance.json          written first: the checkpoint (workdir, step), the
                                 full config, the levels and the extraction plan
  <dir>/<split>/shard-00000-of-00004/
      codes_<level>.npy          (n, *level.shape), the smallest unsigned dtype holding K-1
      label.npy                  (n,) int32
      index.npy                  (n,) int64: position of each example in the source split
      info.json                  start/stop in the source split and SHA-256 of each array
  <dir>/manifest.json            written last: levels, splits, shards, checksums

`<split>` is `train` (the config's `data.train_split`) or `eval`
(`data.eval_split`); the manifest records which source split each one is.
Every shard directory is written under a temporary name and renamed when
complete, and the manifest exists only once every shard does, so a reader
never sees a partial shard, and a directory without a manifest is an
unfinished extraction (re-running the same command finishes it).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Mapping
from typing import Any

import numpy as np

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PROVENANCE = "provenance.json"
SHARD_INFO = "info.json"
SPLITS = ("train", "eval")  # Names in the dataset; they map to data.train_split / data.eval_split.
TEMP_PREFIX = ".tmp-"


class CodesError(ValueError):
    """Base class of the codes dataset's errors."""


class IncompleteCodesError(CodesError):
    """The directory holds no finished codes dataset (no manifest)."""


class CodeShapeError(CodesError):
    """Code maps whose levels, shapes or codebook sizes do not fit the model they are used with."""


class ProvenanceMismatchError(CodesError):
    """An output directory holds (part of) an extraction from another model, checkpoint or plan."""


@dataclasses.dataclass(frozen=True)
class LevelSpec:
    """One level of a code hierarchy.

    Attributes:
      shape: per-example shape of the level's code array, e.g. (h, w) (quantizers
        with several codes per position add trailing axes).
      num_codes: codebook size K; codes are in [0, K).
    """

    shape: tuple[int, ...]
    num_codes: int

    @property
    def dtype(self) -> np.dtype:
        """The smallest unsigned integer dtype that holds K-1 (stored codes use it)."""
        for dtype in (np.uint8, np.uint16, np.uint32):
            if self.num_codes - 1 <= np.iinfo(dtype).max:
                return np.dtype(dtype)
        raise CodesError(f"num_codes={self.num_codes} does not fit in 32 bits.")

    def to_json(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "num_codes": int(self.num_codes), "dtype": self.dtype.name}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> LevelSpec:
        return cls(shape=tuple(int(s) for s in d["shape"]), num_codes=int(d["num_codes"]))


def levels_to_json(levels: Mapping[str, LevelSpec]) -> dict[str, Any]:
    return {name: spec.to_json() for name, spec in levels.items()}


def levels_from_json(d: Mapping[str, Any]) -> dict[str, LevelSpec]:
    return {name: LevelSpec.from_json(spec) for name, spec in d.items()}


def describe_levels(levels: Mapping[str, LevelSpec]) -> str:
    return ", ".join(f"{name} {'x'.join(map(str, s.shape))} (K={s.num_codes})" for name, s in levels.items())


def check_levels_match(
    found: Mapping[str, LevelSpec],
    expected: Mapping[str, LevelSpec],
    found_what: str,
    expected_what: str,
    hint: str = "",
) -> None:
    """Raises `CodeShapeError` unless both hierarchies have the same levels, shapes and K."""
    problems = []
    if list(found) != list(expected):
        problems.append(f"levels {list(found)} vs {list(expected)}")
    for name in found:
        if name in expected and found[name] != expected[name]:
            a, b = found[name], expected[name]
            if a.shape != b.shape:
                problems.append(f"level {name!r}: shape {a.shape} vs {b.shape}")
            if a.num_codes != b.num_codes:
                problems.append(f"level {name!r}: K={a.num_codes} vs K={b.num_codes}")
    if problems:
        raise CodeShapeError(
            f"{found_what} ({describe_levels(found)}) does not match {expected_what} "
            f"({describe_levels(expected)}): {'; '.join(problems)}." + (f" {hint}" if hint else "")
        )


def shard_name(index: int, num_shards: int) -> str:
    return f"shard-{index:05d}-of-{num_shards:05d}"


def code_key(level: str) -> str:
    """The array name (file `<key>.npy`) of a level's codes in a shard."""
    return f"codes_{level}"


def write_json_atomically(path: str, obj: Any) -> None:
    """Temporary file in the same directory, fsync, rename: a reader sees all or nothing."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=TEMP_PREFIX, suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)
