r"""VQ-VAE-2 (Razavi et al. 2019) configs: hierarchical code maps, top-down conditioning.

Variants (`--config=configs/vqvae2.py:VARIANT[,quantizer=NAME]`), NAME any
preset of `vqlatent.configs.QUANTIZER_PRESETS` (default vq_ema, as the paper).
Every level gets its own quantizer of that kind (`config.quantizer.<level>`,
e.g. `--config.quantizer.top.num_embeddings=256`). Parameter counts are from
`jax.eval_shape` of the model's init: trainable parameters, then the EMA
codebook state (`vq_ema`, not trained by gradients) with the default
`quantizer=vq_ema`.

digits (default) — the embedded scikit-learn digits (8x8): strides (2, 2),
  bottom 4x4 and top 2x2 codes, K=64 and D=16 per level, 64 hidden channels,
  2 residual blocks of 32, batch 64, 1000 steps. 286,593 parameters
  (+4,226 EMA). Offline:
    python -m vqlatent.main --config=configs/vqvae2.py --workdir=/tmp/vqvae2_digits
  Expected: test MSE 0.0063 (21.98 dB), every bottom code in use; about a
  minute of CPU (docs/results.md).

mnist — 28x28: strides (2, 2), bottom 14x14 and top 7x7 codes, K=512, D=64,
  128 hidden channels, 2 residual blocks of 32, EMA decay 0.99, beta 0.25,
  Adam 3e-4, batch 128, 2000 steps. 1,049,729 parameters (+132,098 EMA).
    python -m vqlatent.main --config=configs/vqvae2.py:mnist \
      --config.data.manual_dir=/path/to/mnist_idx_files --workdir=/tmp/vqvae2_mnist
  Expected at 2000 steps: test MSE 0.00077 (31.13 dB), against 0.00097 for the
  one-level model of the same bottom resolution, `configs/vqvae.py:mnist
  --config.model.num_downsamples=1` (14x14 codes; 46 min of CPU) (docs/results.md).

cifar10 — 32x32x3: strides (4, 2), bottom 8x8 and top 4x4 codes, K=512, D=64,
  batch 128, 100k steps (TFDS `cifar10`). 1,388,867 parameters (+132,098 EMA).

imagenet256 — the paper's ImageNet setting: 256x256x3, strides (4, 2) -> bottom
  64x64 and top 32x32 codes, K=512, D=64, beta 0.25, 128 hidden channels, 2
  residual blocks of 32 channels, batch 128, Adam 3e-4 (TFDS `imagenet2012`
  resized to 256; needs the manually downloaded ImageNet tars:
  `python -m vqlatent.data.prepare --dataset=imagenet2012 --manual_dir=...`).
  1,388,867 parameters (+132,098 EMA).

ffhq1024 — three levels as in the paper's FFHQ-1024 model: 1024x1024x3, strides
  (8, 2, 2) -> bottom 128x128, middle 64x64, top 32x32 codes, K=512, D=64 per
  level, otherwise as imagenet256. 2,451,139 parameters (+198,147 EMA). Data: a
  folder of the 70000 FFHQ PNGs (`images1024x1024/`, any subfolders; no labels),
  prepared once into array_record on first use (`vqlatent.data.image_folder`);
  a fixed 1/7 (10000 images) is held out for evaluation:
    python -m vqlatent.main --config=configs/vqvae2.py:ffhq1024 \
      --config.data.folder=/path/to/ffhq/images1024x1024 --workdir=/tmp/vqvae2_ffhq

Extract the codes of a trained model for the priors (see `vqlatent.codes`):
    python -m vqlatent.main --config=configs/vqvae2.py:mnist ... --mode=extract_codes
  (writes `<workdir>/codes` unless `--config.extract.output_dir=` is given).
"""

import ml_collections

from vqlatent import codes as codes_lib
from vqlatent import configs as cfg_lib
from vqlatent.nets.autoencoder import level_names

VARIANTS = ("digits", "mnist", "cifar10", "imagenet256", "ffhq1024")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant, opts = cfg_lib.parse_arg(arg, VARIANTS, "digits", quantizer="vq_ema")
    config = ml_collections.ConfigDict()
    config.model_name = "vqvae2"
    config.loss = ml_collections.ConfigDict(dict(normalize_by_data_variance=True))
    model = dict(
        strides=(4, 2),
        num_hiddens=128,
        num_residual_layers=2,
        num_residual_hiddens=32,
        upsample="auto",  # Per backend (README, "Backends"), as in configs/vqvae.py.
        downsample="auto",
    )
    num_codes, embedding_dim = 512, 64
    if variant == "digits":
        config.data = cfg_lib.data_config("sklearn_digits")
        model.update(strides=(2, 2), num_hiddens=64)
        num_codes, embedding_dim = 64, 16
        batch_size, steps, eval_every = 64, 1000, 250
    elif variant == "mnist":
        config.data = cfg_lib.data_config("mnist_idx")
        model.update(strides=(2, 2))
        batch_size, steps, eval_every = 128, 2000, 250
    elif variant == "cifar10":
        config.data = cfg_lib.data_config("cifar10")
        batch_size, steps, eval_every = 128, 100_000, 5000
    elif variant == "imagenet256":
        config.data = cfg_lib.data_config("imagenet2012", image_size=256, eval_split="validation")
        batch_size, steps, eval_every = 128, 250_000, 10_000
    elif variant == "ffhq1024":
        config.data = cfg_lib.data_config(
            "image_folder", image_size=1024, label_key=None, eval_fraction=1 / 7
        )
        model.update(strides=(8, 2, 2))
        batch_size, steps, eval_every = 128, 300_000, 10_000
    config.model = ml_collections.ConfigDict(model)
    config.quantizer = ml_collections.ConfigDict(
        {
            name: cfg_lib.quantizer_config(opts["quantizer"], num_codes, embedding_dim)
            for name in level_names(len(model["strides"]))
        }
    )
    cfg_lib.training_config(
        config,
        batch_size=batch_size,
        num_train_steps=steps,
        eval_every_steps=eval_every,
        checkpoint_every_steps=eval_every,
        eval_batch_size=256 if variant in ("digits", "mnist", "cifar10") else batch_size,
    )
    config.extract = codes_lib.default_config()
    return config
