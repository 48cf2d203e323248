"""Data layer: datasets found by name, read through grain, batched as uint8.

  sources.py               the registry of dataset names, `DatasetSpec`, the errors, `default_config`
  tfds_sources.py          TFDS datasets: the project builders (builders/) and the catalog
  image_folder.py          a folder of your own images, prepared once into array_record
  image_folder_prepare.py  its preparation: PIL decode, checks, resize, atomic array_record shards
  preprocess.py            records -> uint8 image batches (target size, centre crop-resize)
  batching.py              the train iterator and the padded eval batches every dataset shares
  device.py                uint8 -> float32 [0, 1] inside the jitted step
  prepare.py               `python -m vqlatent.data.prepare`: prepare a dataset ahead of training

The codes dataset of the priors (`name='codes'`) is registered in `sources` and
lives in `vqlatent.codes.dataset`.
"""

from vqlatent.data.batching import (
    EvalBatches,
    estimate_pixel_variance,
    make_eval_batches,
    make_train_iterator,
)
from vqlatent.data.preprocess import center_crop_resize
from vqlatent.data.sources import (
    DataError,
    DatasetNotPreparedError,
    DatasetSpec,
    ManualDirError,
    UnknownDatasetError,
    default_config,
    get_spec,
    open_dataset,
    register,
)
from vqlatent.data.tfds_sources import get_builder, get_data_source

__all__ = [
    "center_crop_resize",
    "DataError",
    "DatasetNotPreparedError",
    "DatasetSpec",
    "default_config",
    "estimate_pixel_variance",
    "EvalBatches",
    "get_builder",
    "get_data_source",
    "get_spec",
    "make_eval_batches",
    "make_train_iterator",
    "ManualDirError",
    "open_dataset",
    "register",
    "UnknownDatasetError",
]
