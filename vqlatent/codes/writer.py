"""Writes codes datasets: one shard at a time, atomically, then the manifest (see `layout`)."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from vqlatent.codes import layout


def _sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _save_npy(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())


class SplitWriter:
    """The shards of one split: `<dir>/<split>/shard-K-of-N/`, each renamed into place when complete."""

    def __init__(self, directory: str, split: str, levels: Mapping[str, layout.LevelSpec], num_shards: int):
        self.split_dir = os.path.join(directory, split)
        self.levels = dict(levels)
        self.num_shards = num_shards
        os.makedirs(self.split_dir, exist_ok=True)

    def path(self, index: int) -> str:
        return os.path.join(self.split_dir, layout.shard_name(index, self.num_shards))

    def is_written(self, index: int) -> bool:
        return os.path.isfile(os.path.join(self.path(index), layout.SHARD_INFO))

    def remove_temporaries(self) -> list[str]:
        """Deletes what a killed run left half-written; returns the names removed."""
        removed = []
        for name in sorted(os.listdir(self.split_dir)):
            if name.startswith(layout.TEMP_PREFIX):
                shutil.rmtree(os.path.join(self.split_dir, name), ignore_errors=True)
                removed.append(name)
        return removed

    def write(
        self, index: int, start: int, codes: Mapping[str, np.ndarray], labels: np.ndarray
    ) -> dict[str, Any]:
        """Validates and writes shard `index` (examples [start, start + n) of the source split)."""
        n = len(labels)
        if set(codes) != set(self.levels):
            raise layout.CodeShapeError(f"Shard has levels {sorted(codes)}, expected {list(self.levels)}.")
        arrays = {"label": np.asarray(labels, np.int32), "index": np.arange(start, start + n, dtype=np.int64)}
        for name, spec in self.levels.items():
            values = np.asarray(codes[name])
            if values.shape != (n, *spec.shape):
                raise layout.CodeShapeError(
                    f"Level {name!r}: codes of shape {values.shape}, expected {(n, *spec.shape)}."
                )
            if n and (values.min() < 0 or values.max() >= spec.num_codes):
                raise layout.CodeShapeError(f"Level {name!r}: codes outside [0, {spec.num_codes}).")
            arrays[layout.code_key(name)] = values.astype(spec.dtype)
        tmp = tempfile.mkdtemp(dir=self.split_dir, prefix=layout.TEMP_PREFIX)
        try:
            for key, array in arrays.items():
                _save_npy(os.path.join(tmp, f"{key}.npy"), array)
            info = {
                "name": os.path.basename(self.path(index)),
                "start": int(start),
                "stop": int(start + n),
                "num_examples": int(n),
                "sha256": {key: _sha256(a) for key, a in sorted(arrays.items())},
            }
            layout.write_json_atomically(os.path.join(tmp, layout.SHARD_INFO), info)
            os.rename(tmp, self.path(index))  # Atomic; fails rather than overwrite a finished shard.
        finally:
            if os.path.exists(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
        return info

    def read_info(self, index: int) -> dict[str, Any]:
        return layout.read_json(os.path.join(self.path(index), layout.SHARD_INFO))


def write_manifest(
    directory: str, levels: Mapping[str, layout.LevelSpec], splits: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """The last file of an extraction: its presence marks the dataset complete."""
    manifest = {
        "format_version": layout.FORMAT_VERSION,
        "levels": layout.levels_to_json(levels),
        "splits": {name: dict(split) for name, split in splits.items()},
    }
    layout.write_json_atomically(os.path.join(directory, layout.MANIFEST), manifest)
    return manifest
