r"""Gated PixelCNN priors over VQ-VAE-2 codes (van den Oord et al. 2016; Razavi et al. 2019).

Variants (`--config=configs/pixelcnn.py:VARIANT[,level=top|bottom][,codes_dir=DIR]`):
one prior per level of a codes dataset written by `configs/vqvae2.py:VARIANT
--mode=extract_codes`. The top prior is class-conditional (a per-class bias in
every gate) and, for the larger variants, has causal self-attention blocks; the
bottom prior is conditioned on the top codes (a conditioning stack upsampled
to the bottom map) and on the class.

digits (default) — 8x8 digits: top 2x2 / bottom 4x4 codes, K=64, 10 classes;
  32 channels, 4 gated layers (enough to see every earlier code of a 4x4 map);
  98,304 (top) / 135,744 (bottom) parameters.
    python -m vqlatent.main --config=configs/vqvae2.py --workdir=/tmp/vqvae2_digits --mode=extract_codes
    python -m vqlatent.main --config=configs/pixelcnn.py:digits,level=top,codes_dir=/tmp/vqvae2_digits/codes \
      --workdir=/tmp/pixelcnn_digits_top
    python -m vqlatent.main --config=configs/pixelcnn.py:digits,level=bottom,codes_dir=/tmp/vqvae2_digits/codes \
      --workdir=/tmp/pixelcnn_digits_bottom
  (Tests run this pipeline end to end on tiny models; no measured run yet.)

mnist — 28x28: top 7x7 / bottom 14x14 codes, K=512; top: 64 channels, 8
  layers, attention after layers 3 and 7 (844,416 parameters); bottom: 64
  channels, 10 layers (1,108,544). Expected, for the top variant as the
  class-conditional prior over the 7x7 codes of `configs/vqvae.py:mnist,
  quantizer=vq_ema_restart`, after 10,000 steps: 2.89 bits per code on the
  test images' codes (docs/results.md).

Sample quality (`--mode=sample_eval`, class-conditional top prior): samples
judged by the project's classifier (`configs/classifier.py`), e.g. for the 7x7
top prior over the one-level VQ-VAE's codes (configs/vqvae.py:mnist):
    python -m vqlatent.main --config=configs/pixelcnn.py:mnist,level=top,codes_dir=VQVAE_WORKDIR/codes \
      --workdir=PRIOR_WORKDIR --mode=sample_eval --config.sample.classifier_workdir=CLASSIFIER_WORKDIR
  writes PRIOR_WORKDIR/eval/sample_eval.json (fraction of samples classified as
  their label, Frechet distance of classifier features to the real test set,
  and both figures for as many held-out real test images) and
  PRIOR_WORKDIR/images/sample_eval.png. Expected for that prior: 90.9% of the
  samples classified as their label at temperature 1, 95.3% at 0.7 (real test
  images: 99.1%) (docs/results.md).

cifar10 — 32x32: top 4x4 / bottom 8x8 codes (strides (4, 2)), K=512; 128
  channels, 12 layers, attention on the top prior (4.5M / 4.9M parameters).

imagenet256 — 256x256: top 32x32 / bottom 64x64, K=512 (VQ-VAE-2 table 4 uses
  far larger priors: PixelSNAIL-style top with 20 residual layers and attention);
  here 256 channels, 20 layers, attention every 5th layer on the top prior
  (49M / 51M parameters, 41M of them the 1000 classes' per-gate biases).
"""

from __future__ import annotations

import ml_collections

from vqlatent import configs as cfg_lib
from vqlatent.codes import dataset as codes_data

VARIANTS = ("digits", "mnist", "cifar10", "imagenet256")
NUM_CLASSES = {"digits": 10, "mnist": 10, "cifar10": 10, "imagenet256": 1000}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant, opts = cfg_lib.parse_arg(arg, VARIANTS, "digits", level="top", codes_dir="")
    if opts["level"] not in ("top", "bottom"):
        raise ValueError(f"Config option level={opts['level']!r}: choose 'top' or 'bottom'.")
    is_top = opts["level"] == "top"
    config = ml_collections.ConfigDict()
    config.model_name = "pixelcnn"
    config.data = codes_data.default_config(opts["codes_dir"] or None, NUM_CLASSES[variant])
    config.prior = ml_collections.ConfigDict(
        dict(
            level=opts["level"],
            conditioning_level=ml_collections.FieldReference(None if is_top else "top", field_type=str),
            class_conditional=True,
        )
    )
    model = dict(
        channels=64,
        num_layers=8,
        kernel_size=3,
        cond_channels=32,
        attention_layers=(),
        num_heads=4,
        head_channels=128,
    )
    if variant == "digits":
        model.update(channels=32, num_layers=4, head_channels=64)
        batch_size, steps, eval_every = 64, 2000, 500
    elif variant == "mnist":
        model.update(num_layers=8 if is_top else 10, attention_layers=(3, 7) if is_top else ())
        batch_size, steps, eval_every = 64, 5000, 1000
    elif variant == "cifar10":
        model.update(
            channels=128,
            num_layers=12,
            cond_channels=64,
            head_channels=256,
            attention_layers=(5, 11) if is_top else (),
        )
        batch_size, steps, eval_every = 128, 100_000, 5000
    else:  # imagenet256
        model.update(
            channels=256,
            num_layers=20,
            cond_channels=128,
            head_channels=512,
            attention_layers=(4, 9, 14, 19) if is_top else (),
            num_heads=8,
        )
        batch_size, steps, eval_every = 128, 250_000, 10_000
    config.model = ml_collections.ConfigDict(model)
    cfg_lib.training_config(
        config,
        batch_size=batch_size,
        num_train_steps=steps,
        eval_every_steps=eval_every,
        checkpoint_every_steps=eval_every,
        eval_batch_size=256,
    )
    config.sample = ml_collections.ConfigDict(
        dict(
            temperature=1.0,
            num_per_class=8,
            seed=0,
            batch_size=100,
            lower_priors=ml_collections.FieldReference(None, field_type=str),  # 'bottom=WORKDIR'.
            # --mode=sample_eval: samples per class, judged by a configs/classifier.py checkpoint.
            eval_per_class=100,
            classifier_workdir=ml_collections.FieldReference(None, field_type=str),
        )
    )
    return config
