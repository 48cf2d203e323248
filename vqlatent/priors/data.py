"""The priors' data: a codes dataset (`vqlatent.codes.dataset`, registered as `data.name='codes'`).

A prior trains on the code maps written by `--mode=extract_codes`; its
`config.data` is `default_config(codes_dir, num_classes)`, and the loop reads it
through `vqlatent.data` like any other dataset. The names below are kept here
for the priors' configs and tests.
"""

from vqlatent.codes.dataset import (
    NAME,
    CodesDatasetSpec,
    default_config,
    is_codes_config,
    write_codes_dataset,
)
from vqlatent.data import get_spec, make_eval_batches, make_train_iterator

__all__ = [
    "CodesDatasetSpec",
    "default_config",
    "get_spec",
    "is_codes_config",
    "make_eval_batches",
    "make_train_iterator",
    "NAME",
    "write_codes_dataset",
]
