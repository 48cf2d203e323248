"""Trained models as products: load, export, encode, decode, sample.

  loading.py      `vqlatent.load(path)`: a model directory, a training workdir or pretrained:NAME
  autoencoder.py  `Autoencoder`: encode / decode / reconstruct (VQ-VAE, VQ-VAE-2, any quantizer)
  prior_chain.py  `PriorChain`: class -> codes -> pixels through every level's prior and the decoder
  infogan.py      `InfoGAN`: generate from chosen codes, infer the codes of real images
  format.py       the model directory: config.json, safetensors weights with checksums, model card
  export.py       workdir -> model directory (`--mode=export`), with the card's numbers
  evaluate.py     the card's numbers, computed by the loaded model (MSE, PSNR, SSIM, bits per code)
  cli.py          `--mode=export|encode|decode|reconstruct`
  pretrained.py   the models shipped in `vqlatent/pretrained/`

This layer sits above `trainers/`: a model is rebuilt by its family's task from the recorded config
and data shapes, and computes with the task's own functions (so it computes what its checkpoint does).
"""

from vqlatent.models.autoencoder import Autoencoder
from vqlatent.models.export import export as export_model
from vqlatent.models.infogan import InfoGAN
from vqlatent.models.loading import load
from vqlatent.models.prior_chain import PriorChain, Samples

__all__ = ["Autoencoder", "InfoGAN", "PriorChain", "Samples", "export_model", "load"]
