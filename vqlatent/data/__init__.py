"""Data layer: TFDS builders (array_record) read through grain.

See `vqlatent.data.pipeline` for the config fields and the public API.
"""

from vqlatent.data.pipeline import (
    DataError,
    DatasetNotPreparedError,
    DatasetSpec,
    EvalBatches,
    ManualDirError,
    UnknownDatasetError,
    center_crop_resize,
    default_config,
    estimate_pixel_variance,
    get_builder,
    get_data_source,
    get_spec,
    make_eval_batches,
    make_train_iterator,
)

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
    "UnknownDatasetError",
]
