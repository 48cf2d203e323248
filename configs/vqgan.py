r"""VQGAN (Esser et al. 2021) configs: a VQ-VAE trained with L1 (+ LPIPS) reconstruction and a
PatchGAN discriminator weighted adaptively (`vqlatent.trainers.vqgan`, docs/vqgan.md).

Variants (`--config=configs/vqgan.py:VARIANT[,loss=LOSS][,quantizer=NAME]`):

LOSS:
  vqgan (default)  L1 + PatchGAN (hinge loss, adaptive weight of eq. 7, disc_weight 0.8; mnist 0.03), the
                   discriminator switched on at `loss.disc_start`; add LPIPS with
                   --config.loss.perceptual_weight=1.0 --config.loss.perceptual_weights=FILE
                   (scripts/convert_lpips.py makes FILE from torchvision's VGG16 weights).
  l2               the L2-only baseline: the VQ-VAE task (`model_name='vqvae'`, MSE / data
                   variance + the quantizer's losses) with the same codes, model, steps and seed.
  l1               L1 alone (the VQGAN task without the discriminator).
NAME is a quantizer preset, as in configs/vqvae.py (default vq_ema).

digits (default) — the embedded scikit-learn digits (8x8 -> 4x4 codes, K=64, D=16), a
  one-layer PatchGAN (2x2 logits) from step 1000 of 3000. Offline, no preparation:
    python -m vqlatent.main --config=configs/vqgan.py --workdir=/tmp/vqgan_digits
  A few minutes on a 2-core CPU.

mnist — 28x28 -> 7x7 codes with a small codebook (K=16, D=64; 196 bits per image), where an
  L2-trained VQ-VAE's reconstructions are visibly blurry; the encoder and decoder of
  configs/vqvae.py:mnist (128 channels, 2 residual blocks of 32), EMA codebook, Adam 3e-4,
  batch 64, 3000 steps (3.2 epochs); a two-layer PatchGAN (5x5 logits, 64 channels, BatchNorm)
  from step 1000 with disc_weight 0.03: taming's 0.8 makes the GAN gradient at the decoder's last
  layer 0.8x the reconstruction gradient while the autoencoder is still far from converged, and
  its reconstructions came out speckled, with a worse rFD than L2's; 0.03 gave a rFD 2.4-3.0x lower
  than L2's at 1.0-1.2 dB lower PSNR over two seeds (0.05: 2.7-3.2x lower at 1.2-1.6 dB lower;
  docs/results.md). Reads the canonical idx files:
    python -m vqlatent.main --config=configs/vqgan.py:mnist \
      --config.data.manual_dir=/path/to/mnist_idx_files --workdir=/tmp/vqgan_mnist
    python -m vqlatent.main --config=configs/vqgan.py:mnist,loss=l2 \
      --config.data.manual_dir=/path/to/mnist_idx_files --workdir=/tmp/vqgan_mnist_l2
  Then the reconstruction Frechet distance of each (the project's MNIST classifier,
  configs/classifier.py:mnist):
    python -m vqlatent.models.reconstruction_fd --workdir=/tmp/vqgan_mnist \
      --classifier_workdir=/path/to/mnist_classifier
  About 10 (L2) and 25 (VQGAN) minutes on a free core of a 2-core Intel Xeon.
"""

import ml_collections

from vqlatent import configs as cfg_lib
from vqlatent.trainers.optim import default_optimizer_config

VARIANTS = ("digits", "mnist")
LOSSES = ("vqgan", "l2", "l1")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant, opts = cfg_lib.parse_arg(arg, VARIANTS, "digits", loss="vqgan", quantizer="vq_ema")
    if opts["loss"] not in LOSSES:
        raise ValueError(
            f"Unknown loss={opts['loss']!r} in --config=configs/vqgan.py:...; choose one of {LOSSES}."
        )
    config = ml_collections.ConfigDict()
    model = dict(
        num_hiddens=128,
        num_residual_layers=2,
        num_residual_hiddens=32,
        num_downsamples=2,
        embedding_dim=64,
        upsample="auto",
        downsample="auto",
    )
    if variant == "digits":
        config.data = cfg_lib.data_config("sklearn_digits")
        model.update(num_hiddens=64, num_downsamples=1, embedding_dim=16)
        num_codes, batch_size, steps, eval_every, disc_start = 64, 64, 3000, 500, 1000
        discriminator = dict(num_layers=1, channels=32)
        disc_weight = 0.8  # Taming's.
    else:
        config.data = cfg_lib.data_config("mnist_idx")
        num_codes, batch_size, steps, eval_every, disc_start = 16, 64, 3000, 500, 1000
        discriminator = dict(num_layers=2, channels=64)
        disc_weight = 0.03  # 0.8 speckles the reconstructions in 3000 steps (module docstring).
    config.model = ml_collections.ConfigDict(model)
    config.quantizer = cfg_lib.quantizer_config(opts["quantizer"], num_codes, model["embedding_dim"])
    cfg_lib.training_config(
        config,
        batch_size=batch_size,
        num_train_steps=steps,
        eval_every_steps=eval_every,
        checkpoint_every_steps=eval_every,
    )
    if opts["loss"] == "l2":  # The VQ-VAE task, as configs/vqvae.py: MSE / data variance + VQ losses.
        config.model_name = "vqvae"
        config.loss = ml_collections.ConfigDict(dict(normalize_by_data_variance=True))
        return config
    config.model_name = "vqgan"
    config.model.discriminator = ml_collections.ConfigDict(
        dict(norm="batch", downsample="auto", **discriminator)
    )
    config.loss = ml_collections.ConfigDict(
        dict(
            l1_weight=1.0,
            l2_weight=0.0,
            # Divides the L2 term by the training data's pixel variance (as the VQ-VAE's loss).
            normalize_by_data_variance=False,
            perceptual_weight=0.0,
            perceptual_weights="",  # scripts/convert_lpips.py's file (VGG16 + LPIPS v0.1 heads).
            gan_loss="hinge",  # or 'non_saturating'
            disc_weight=disc_weight if opts["loss"] == "vqgan" else 0.0,  # 0: no discriminator.
            disc_factor=1.0,
            disc_start=disc_start,
            lecam_weight=0.0,  # LeCam regulariser (Tseng et al. 2021), e.g. 0.001.
            lecam_ema_decay=0.99,
        )
    )
    # Taming's Adam betas (0.5, 0.9) for the discriminator; the autoencoder keeps the VQ-VAE's.
    config.optimizer.discriminator = default_optimizer_config(3e-4, b1=0.5)
    config.optimizer.discriminator.b2 = 0.9
    return config
