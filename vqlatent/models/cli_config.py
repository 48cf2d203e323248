"""The default `--config` of the model modes (export, encode, decode, reconstruct): their options only.

The model itself comes from `--workdir` (a training workdir, an export directory or pretrained:NAME),
whose recorded config rebuilds it; e.g.
  python -m vqlatent.main --mode=encode --workdir=pretrained:mnist_vqvae2 \
      --config.encode.input=my_digits/ --config.encode.output_dir=/tmp/codes
"""

import ml_collections

from vqlatent.models.cli import default_configs


def get_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(default_configs())
