"""A folder of your own images as a dataset: `--config.data.name=image_folder --config.data.folder=DIR`.

Layouts of DIR (images: .png .jpg .jpeg .bmp .gif .tif .tiff .webp .ppm .pgm; names
starting with '.' are ignored):
  DIR/*.png                      no labels; `data.eval_fraction` held out as 'test'
  DIR/<class>/*.png              one subfolder per class: labels 0..K-1 in sorted name order
  DIR/train/..., DIR/test/...    the two splits as given (each flat or with class subfolders)
With `data.label_key=None` subfolders are not classes: every image under DIR (any
depth, e.g. FFHQ's images1024x1024/00000/00000.png) is taken, without labels.

Symbolic links are followed once per real directory and file (a link back up the tree adds
nothing; an image reached twice is taken once), and no file is in both splits.

The held-out images are a fixed function of the sorted file list: a permutation
with seed 0, whose first round(n * eval_fraction) images are 'test'. Both splits
are stored in that permuted order (so `eval_num_examples` takes a class-mixed prefix).

Preparation runs once, on first use (or ahead of time with `python -m vqlatent.data.prepare
--dataset=image_folder --folder=DIR --image_size=S`): `vqlatent.data.image_folder_prepare`
decodes, checks, centre-crops and resizes every image into array_record shards under
`<data_dir>/image_folder/<folder name>-<hash>/`, which are then read here through grain
like every other dataset.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np
from PIL import Image

from vqlatent.data.image_folder_prepare import (
    MANIFEST,
    RECORD_HEADER,
    SPLITS,
    prepare,
    prepared_dir,
    read_json,
    shard_files,
)
from vqlatent.data.sources import DataError, DatasetSpec, cfg_value

__all__ = ["ImageFolderDataset", "ImageFolderSplit", "open_dataset", "prepare", "prepared_dir"]


class ImageFolderSplit:
    """One prepared split: array_record records -> uint8 image batches (a `sources.Split`)."""

    def __init__(self, directory: str, split: str, shape: tuple[int, int, int]):
        paths = [os.path.join(directory, n) for n in shard_files(directory, split)]
        self._source = grain.sources.ArrayRecordDataSource(paths) if paths else []
        self._shape = shape

    def __len__(self) -> int:
        return len(self._source)

    def read(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
        indices = [int(i) for i in indices]
        records = self._source.__getitems__(indices) if indices else []
        images = np.empty((len(records), *self._shape), np.uint8)
        labels = np.empty((len(records),), np.int32)
        for i, record in enumerate(records):
            (labels[i],) = RECORD_HEADER.unpack_from(record)
            with Image.open(io.BytesIO(record[RECORD_HEADER.size :])) as image:
                images[i] = np.asarray(image).reshape(self._shape)
        return {"image": images, "label": labels}


class ImageFolderDataset:
    """A prepared image folder: `spec` and `split('train' | 'test')`."""

    def __init__(self, data_cfg: Any):
        self.directory = prepare(data_cfg)
        manifest = read_json(os.path.join(self.directory, MANIFEST))
        self.shape = tuple(manifest["image_shape"])
        counts = manifest["num_examples"]
        classes = manifest["classes"]
        for field in ("train_split", "eval_split"):
            if cfg_value(data_cfg, field) not in SPLITS:
                raise DataError(
                    f"config.data.{field}={cfg_value(data_cfg, field)!r}: an image folder has the splits "
                    f"{SPLITS} (its test/ subfolder, or the eval_fraction held out)."
                )
        self.spec = DatasetSpec(
            image_shape=self.shape,
            num_classes=len(classes) if classes else None,
            num_train=counts[cfg_value(data_cfg, "train_split")],
            num_eval=counts[cfg_value(data_cfg, "eval_split")],
        )

    def split(self, split: str) -> ImageFolderSplit:
        if split not in SPLITS:
            raise DataError(f"Split {split!r}: an image folder has the splits {SPLITS}.")
        return ImageFolderSplit(self.directory, split, self.shape)


def open_dataset(data_cfg: Any) -> ImageFolderDataset:
    return ImageFolderDataset(data_cfg)
