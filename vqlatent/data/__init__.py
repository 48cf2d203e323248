"""Data layer: TFDS builders (array_record) read through grain.

See `vqlatent.data.pipeline` for the config fields and the public API.
"""

from vqlatent.data.pipeline import center_crop_resize
from vqlatent.data.pipeline import DataError
from vqlatent.data.pipeline import DatasetNotPreparedError
from vqlatent.data.pipeline import DatasetSpec
from vqlatent.data.pipeline import default_config
from vqlatent.data.pipeline import estimate_pixel_variance
from vqlatent.data.pipeline import EvalBatches
from vqlatent.data.pipeline import get_builder
from vqlatent.data.pipeline import get_data_source
from vqlatent.data.pipeline import get_spec
from vqlatent.data.pipeline import make_eval_batches
from vqlatent.data.pipeline import make_train_iterator
from vqlatent.data.pipeline import ManualDirError
from vqlatent.data.pipeline import UnknownDatasetError

__all__ = [
    'center_crop_resize',
    'DataError',
    'DatasetNotPreparedError',
    'DatasetSpec',
    'default_config',
    'estimate_pixel_variance',
    'EvalBatches',
    'get_builder',
    'get_data_source',
    'get_spec',
    'make_eval_batches',
    'make_train_iterator',
    'ManualDirError',
    'UnknownDatasetError',
]
