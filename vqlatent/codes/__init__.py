"""Codes datasets: the code maps of a trained VQ-VAE / VQ-VAE-2, the training data of the priors.

Write one with `python -m vqlatent.main --config=... --workdir=VQVAE_WORKDIR
--mode=extract_codes` (see `extract`); read it with::

  train = vqlatent.codes.load_codes(directory, "train", expected_levels=task.code_levels)
  ds = grain.MapDataset.source(train).shuffle(seed=0).batch(64)
  record = train[0]  # {'codes': {'bottom': (64, 64) uint16, 'top': (32, 32) uint16}, 'label', 'index'}

and decode sampled codes with the task's `decode_codes(state, codes)`. The
on-disk format is described in `layout`, the provenance record in `provenance`.
"""

from vqlatent.codes.extract import default_config, extract_codes, extract_codes_mode
from vqlatent.codes.interface import CodeModel, as_code_model, check_codes, infer_code_levels
from vqlatent.codes.layout import (
    CodesError,
    CodeShapeError,
    IncompleteCodesError,
    LevelSpec,
    ProvenanceMismatchError,
)
from vqlatent.codes.reader import CodesSplit, load_codes, load_levels, load_manifest, load_provenance

__all__ = [
    "as_code_model",
    "check_codes",
    "CodeModel",
    "CodeShapeError",
    "CodesError",
    "CodesSplit",
    "default_config",
    "extract_codes",
    "extract_codes_mode",
    "IncompleteCodesError",
    "infer_code_levels",
    "LevelSpec",
    "load_codes",
    "load_levels",
    "load_manifest",
    "load_provenance",
    "ProvenanceMismatchError",
]
