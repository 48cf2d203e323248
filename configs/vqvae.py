r"""VQ-VAE (van den Oord et al. 2017) configs.

`model_name='vqvae'` is `vqlatent.trainers.autoencoder` with one level (`model.num_downsamples`
halvings): the same task as configs/vqvae2.py, with the first paper's encoder and metric names.

Variants (`--config=configs/vqvae.py:VARIANT[,quantizer=NAME]`):

NAME is a preset of `vqlatent.configs.QUANTIZER_PRESETS` (default vq_ema):
  vq              codebook learned by the codebook loss of eq. (3)
  vq_ema          EMA codebook (appendix A.1), exactly Sonnet/Haiku
  vq_ema_restart  + dead-code restarts (EMA usage < 1 input per batch)
  vq_ema_kmeans   + k-means initialisation on the first batch, + restarts
  cosine          l2-normalised codes (ViT-VQGAN)
  factorized      8-dim l2-normalised factorised codes (ViT-VQGAN)
  rotation_trick  vq_ema with the rotation-trick gradient (Fifty et al. 2024)
  residual_vq     4 residual stages of K codes (k-means init, restarts)
  product_vq      4 groups of D/4 channels, K codes each (k-means, restarts)
  fsq             finite scalar quantisation, levels for K (8,8,8 for 512)
  lfq, bsq        lookup-free / binary spherical quantisation, log2(K) bits (+ entropy penalty)
  simvq           frozen random codebook times one learned linear map
  residual_fsq, residual_lfq   2 residual FSQ / LFQ stages with quantize dropout
  vq_ema_stochastic, vq_ema_entropy   stochastic code selection / entropy regulariser
Any field can then be overridden, e.g. `--config.quantizer.num_embeddings=256`
(residual VQ: codes per stage), `--config.quantizer.chunk_size=4096`.

digits (default) — the embedded scikit-learn digits (8x8, 1497 train / 300 test),
  8x8 -> 4x4 codes, K=64, D=16. Offline, no preparation:
    python -m vqlatent.main --config=configs/vqvae.py --workdir=/tmp/vqvae_digits
  Expected: test MSE 0.0043 (23.65 dB), every code in use, after 3000 steps;
  about 1.5 minutes on an idle 2-core CPU (docs/results.md).

mnist — 28x28 -> 7x7x64 latents, K=512, EMA decay 0.99, beta 0.25, Adam 3e-4,
  batch 128, 2000 steps, 128 hidden channels, 2 residual blocks of 32
  (the setup of the Sonnet/Haiku example). Reads the canonical idx files:
    python -m vqlatent.main --config=configs/vqvae.py:mnist \
      --config.data.manual_dir=/path/to/mnist_idx_files --workdir=/tmp/vqvae_mnist
  Expected at 2000 steps (docs/results.md, with every quantizer): test MSE
  0.0036 (vq_ema), 0.0029 (vq_ema_restart), 0.0064 (vq); about 0.5 s per step
  on one CPU core.

mnist_tfds — the same model on the TFDS catalog `mnist` (prepare it once with
  `python -m vqlatent.data.prepare --dataset=mnist`, which needs TensorFlow).

cifar10 — 32x32x3 -> 8x8 codes, K=512, D=64, batch 128 (TFDS `cifar10`).

imagenet128 — the paper's ImageNet setting: 128x128x3 -> 32x32 codes, K=512,
  D=64 (compression 42.7x), TFDS `imagenet2012` resized to 128 (needs the
  manually downloaded ImageNet tars: `python -m vqlatent.data.prepare
  --dataset=imagenet2012 --manual_dir=...`).
"""

import ml_collections

from vqlatent import configs as cfg_lib

VARIANTS = ("digits", "mnist", "mnist_tfds", "cifar10", "imagenet128")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant, opts = cfg_lib.parse_arg(arg, VARIANTS, "digits", quantizer="vq_ema")
    config = ml_collections.ConfigDict()
    config.model_name = "vqvae"
    config.loss = ml_collections.ConfigDict(dict(normalize_by_data_variance=True))
    model = dict(
        num_hiddens=128,
        num_residual_layers=2,
        num_residual_hiddens=32,
        num_downsamples=2,
        embedding_dim=64,
        upsample="auto",  # By backend: per-phase sub-pixel on CPU, ConvTranspose on GPU/TPU (README).
        downsample="auto",  # By backend: per-phase input gradients on CPU, XLA's strided conv elsewhere.
    )
    if variant == "digits":
        config.data = cfg_lib.data_config("sklearn_digits")
        model.update(num_hiddens=64, num_downsamples=1, embedding_dim=16)
        num_codes, batch_size, steps, eval_every = 64, 64, 3000, 500
    elif variant in ("mnist", "mnist_tfds"):
        config.data = cfg_lib.data_config("mnist_idx" if variant == "mnist" else "mnist")
        num_codes, batch_size, steps, eval_every = 512, 128, 2000, 250
    elif variant == "cifar10":
        config.data = cfg_lib.data_config("cifar10")
        num_codes, batch_size, steps, eval_every = 512, 128, 100_000, 5000
    elif variant == "imagenet128":
        config.data = cfg_lib.data_config("imagenet2012", image_size=128, eval_split="validation")
        num_codes, batch_size, steps, eval_every = 512, 128, 250_000, 10_000
    config.model = ml_collections.ConfigDict(model)
    config.quantizer = cfg_lib.quantizer_config(opts["quantizer"], num_codes, model["embedding_dim"])
    cfg_lib.training_config(
        config,
        batch_size=batch_size,
        num_train_steps=steps,
        eval_every_steps=eval_every,
        checkpoint_every_steps=eval_every,
    )
    return config
