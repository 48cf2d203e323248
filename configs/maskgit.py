r"""MaskGIT priors over VQ-VAE-2 codes (Chang et al. 2022): bidirectional transformers sampled in a
few parallel steps, the alternative to the PixelCNN priors of `configs/pixelcnn.py`.

Variants (`--config=configs/maskgit.py:VARIANT[,level=top|bottom][,codes_dir=DIR]`): one prior per
level of a codes dataset written by `configs/vqvae2.py:VARIANT --mode=extract_codes`, with the
batch size, steps and seed of the PixelCNN variant of the same name and about its parameter count.
The top prior is class-conditional (a class token); the bottom prior is conditioned on the top
codes (embedded, upsampled, added to the input) and on the class. Training masks cos(pi/2 u) of
the codes (u ~ U(0, 1)); the loss is the cross-entropy on the masked codes (docs/maskgit.md).

digits (default) — 8x8 digits: top 2x2 / bottom 4x4 codes, K=64, 10 classes; width 64, MLP 192,
  2 blocks (top) / 3 blocks (bottom): 92,800 / 139,392 parameters (PixelCNN: 98,304 / 135,744).
    python -m vqlatent.main --config=configs/vqvae2.py --workdir=/tmp/vqvae2_digits --mode=extract_codes
    python -m vqlatent.main --config=configs/maskgit.py:digits,level=top,codes_dir=/tmp/vqvae2_digits/codes \
      --workdir=/tmp/maskgit_digits_top
    python -m vqlatent.main --config=configs/maskgit.py:digits,level=bottom,codes_dir=/tmp/vqvae2_digits/codes \
      --workdir=/tmp/maskgit_digits_bottom
    python -m vqlatent.main --config=configs/maskgit.py:digits,level=top,codes_dir=/tmp/vqvae2_digits/codes \
      --workdir=/tmp/maskgit_digits_top --mode=sample --config.sample.lower_priors=bottom=/tmp/maskgit_digits_bottom

mnist — 28x28: top 7x7 / bottom 14x14 codes, K=512; width 128, MLP 432, 4 blocks (top) / 5 blocks
  (bottom): 850,368 / 1,112,432 parameters (PixelCNN: 844,416 / 1,108,544). Sample
  quality as for the PixelCNN (`--mode=sample_eval --config.sample.classifier_workdir=...`); the
  lower priors may be PixelCNNs or MaskGITs (`sample.lower_priors=bottom=WORKDIR` names any prior's
  workdir). Measured as the top prior of pretrained:mnist_vqvae2_chain against a PixelCNN
  (docs/results.md; `bash scripts/maskgit_mnist_comparison.sh RUNS MNIST`).

Decoding (`config.sample`): num_steps (T, 8), choice_temperature (4.5, the paper's), schedule
('cosine'); each MaskGIT prior of a chain decodes with its own config's options, except that a
MaskGIT top prior's `sample.lower_num_steps` sets the steps of the lower MaskGIT priors.
"""

from __future__ import annotations

import ml_collections

from vqlatent import configs as cfg_lib
from vqlatent.codes import dataset as codes_dataset

VARIANTS = ("digits", "mnist")
NUM_CLASSES = {"digits": 10, "mnist": 10}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant, opts = cfg_lib.parse_arg(arg, VARIANTS, "digits", level="top", codes_dir="")
    if opts["level"] not in ("top", "bottom"):
        raise ValueError(f"Config option level={opts['level']!r}: choose 'top' or 'bottom'.")
    is_top = opts["level"] == "top"
    config = ml_collections.ConfigDict()
    config.model_name = "maskgit"
    config.data = codes_dataset.default_config(opts["codes_dir"] or None, NUM_CLASSES[variant])
    config.prior = ml_collections.ConfigDict(
        dict(
            level=opts["level"],
            conditioning_level=ml_collections.FieldReference(None if is_top else "top", field_type=str),
            class_conditional=True,
            schedule="cosine",  # The training masks' schedule gamma (`vqlatent.nets.maskgit.mask_ratio`).
            eval_mask_ratios=(0.25, 0.5, 0.75, 1.0),
        )
    )
    if variant == "digits":
        model = dict(width=64, num_layers=2 if is_top else 3, num_heads=4, mlp_dim=192)
        batch_size, steps, eval_every = 64, 2000, 500
    else:  # mnist
        model = dict(width=128, num_layers=4 if is_top else 5, num_heads=4, mlp_dim=432)
        batch_size, steps, eval_every = 64, 5000, 1000
    config.model = ml_collections.ConfigDict(model)
    cfg_lib.training_config(
        config,
        batch_size=batch_size,
        num_train_steps=steps,
        eval_every_steps=eval_every,
        checkpoint_every_steps=eval_every,
        eval_batch_size=256,
    )
    # Transformers want a warmup; the cosine decay ends at num_train_steps.
    config.optimizer.update(dict(schedule="cosine", warmup_steps=min(500, steps // 10), grad_clip_norm=1.0))
    if variant == "mnist":
        # Four forward passes per example (one per eval ratio): 2,500 of the 10,000 test images' codes
        # cost one pass over all of them.
        config.eval_num_examples = 2500
    config.sample = ml_collections.ConfigDict(
        dict(
            temperature=1.0,
            num_per_class=8,
            seed=0,
            batch_size=100,
            lower_priors=ml_collections.FieldReference(None, field_type=str),  # 'bottom=WORKDIR'.
            eval_per_class=100,
            classifier_workdir=ml_collections.FieldReference(None, field_type=str),
            # MaskGIT decoding (`vqlatent.priors.maskgit_sampling`).
            num_steps=8,
            choice_temperature=4.5,
            schedule="cosine",
            # The steps of the lower MaskGIT priors when this prior is the top (None: their own).
            lower_num_steps=ml_collections.FieldReference(None, field_type=int),
        )
    )
    return config
