r"""InfoGAN (Chen et al. 2016) configs.

Variants (`--config=configs/infogan.py:VARIANT`):

digits (default) — the embedded scikit-learn digits (8x8, 1497 train / 300 test),
  a scaled-down Table 1 network (G: FC 256, FC 2x2x64, upconv 32, upconv 1;
  D: conv 32, conv 64, FC 256; Q: FC 64), 16 noise + one 10-way code + 2
  continuous codes, batch 64, 3000 steps. Offline, no preparation:
    python -m vqlatent.main --config=configs/infogan.py --workdir=/tmp/infogan_digits
  A few minutes on a 2-core CPU. At 8x8 and with 1497 training digits the
  code captures digit type only in part (docs/lab/infogan.md).

mnist — the paper's setting (appendix C, Table 1): 62 noise variables uniform on
  [-1, 1], one 10-way categorical code, 2 continuous codes uniform on [-1, 1];
  Adam beta1 0.5, learning rates 2e-4 (D, Q) and 1e-3 (G), batch 128. The
  continuous codes as in the paper's released code (launchers/run_mnist_exp.py:
  `Uniform(1, fix_std=True)`, info_reg_coeff 1): Q is a Gaussian of fixed
  standard deviation 1 and lambda = 1 for every code. The continuous term,
  (c - mu)^2 / 2, is then at most var(c) / 2 = 1/6 nat: the paper's "smaller
  lambda for continuous codes". A learned std (`--config.model.q.continuous_std=
  learned`, e.g. with `--config.info.lambda_continuous=0.1`) makes it much
  stronger: Q's std falls well below 1, so the codes' squared error weighs
  lambda / sigma^2 >> lambda (docs/lab/infogan.md).
  Reads the canonical idx files:
    python -m vqlatent.main --config=configs/infogan.py:mnist \
      --config.data.manual_dir=/path/to/mnist_idx_files --workdir=/tmp/infogan_mnist
  5000 steps (the released code's 50 "epochs" of 100 updates), evaluated every
  250 on the 10000 test images. Evaluation reports cat0_accuracy (test-set
  accuracy of the categorical code, categories matched one-to-one to digits),
  L_I and H(c) per code, and writes the traversal grids to WORKDIR/images;
  `--mode=traverse` writes them with 10 columns. Expected: test accuracy of the
  categorical code about 76% (median of 3 seeds; the paper reports 95%), the
  lambda = 0 control about 43%; about an hour a seed on one CPU core
  (docs/results.md).

mnist_invariant — `:mnist` with the invariant information term
  (`vqlatent.infogan.invariance`): the categorical code's log Q(c | x) is read
  from a randomly transformed copy of each generated image (strokes thickened
  or thinned by a blend a ~ U[-0.5, 0.5] towards the 3x3 dilation or erosion,
  columns sheared by k ~ U[-0.3, 0.3] pixels per row, rotation +-15 degrees,
  scale 0.9-1.1, shift +-2 px, bilinear, a fresh draw per sample) in
  both the D/Q and the G update; the GAN loss and the continuous codes' terms
  stay on the clean images. Still a lower bound on I(c; G(z, c)) (data-processing
  inequality), but one a partition of the digits by slant, width or position no
  longer satisfies. Everything else is `:mnist`:
    python -m vqlatent.main --config=configs/infogan.py:mnist_invariant \
      --config.data.manual_dir=/path/to/mnist_idx_files --workdir=/tmp/infogan_inv
  Expected at 5000 steps: test accuracy of the categorical code median 97.35%,
  minimum 96.17% over five seeds (every seed above the paper's 95%), one
  continuous code rotating the digits; about 48 min a seed on one CPU core
  (docs/results.md). `--config.info.augment.max_shear=0` (thickness only) or
  also `max_thickness=0` (the affine map alone) are the ablations of
  docs/lab/infogan.md. `--config.traversal.classifier_workdir=` (a
  configs/classifier.py:mnist workdir) adds the fraction of each sweep that
  keeps its digit class to the evaluation.

mnist_gan — the paper's control (Figure 1): the same networks and codes with
  lambda = 0, so G and D play a plain GAN; Q is still fit to the generated
  samples (maximum likelihood, its gradient stopped at D's trunk: info.detach_q)
  to measure how much information about c the samples carry without the term.

celeba — colour faces through TFDS `celeb_a` (prepare once with
  `python -m vqlatent.data.prepare --dataset=celeb_a`, which needs TensorFlow and
  the data), centre-cropped and resized to 32x32 as in the paper's Table 4
  (G: FC 2x2x448, upconvs 256/128/64, upconv 3; D: convs 64/128/256; Q: FC
  128), 128 noise variables and 10 ten-way categorical codes. No labels: no
  accuracy, only L_I and the grids.
"""

import ml_collections

from vqlatent import configs as cfg_lib
from vqlatent.infogan.invariance import augment_default_config
from vqlatent.trainers.optim import default_optimizer_config

VARIANTS = ("digits", "mnist", "mnist_invariant", "mnist_gan", "celeba")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant, _ = cfg_lib.parse_arg(arg, VARIANTS, "digits")
    config = ml_collections.ConfigDict()
    config.model_name = "infogan"
    # The paper's MNIST model (Table 1); other variants change widths below.
    latent = dict(
        noise_dim=62,
        noise_distribution="uniform",
        categorical_sizes=(10,),
        num_continuous=2,
        continuous_range=(-1.0, 1.0),
    )
    # upsample: 'auto' = per-phase sub-pixel on CPU, ConvTranspose on GPU/TPU (same function; README).
    generator = dict(fc_features=(1024,), base_shape=(7, 7, 128), upconv_features=(64,), upsample="auto")
    # downsample: 'auto' = input gradients per phase on CPU, XLA's strided convolution elsewhere (README).
    discriminator = dict(conv_features=(64, 128), fc_features=(1024,), leaky_slope=0.1, downsample="auto")
    q = dict(hidden=128, continuous_std="learned", fixed_std=1.0)
    info = dict(lambda_categorical=1.0, lambda_continuous=0.1, detach_q=False)
    augment = augment_default_config()  # Off except in :mnist_invariant.
    batch_size, steps, eval_every = 128, 5000, 500
    if variant == "digits":
        config.data = cfg_lib.data_config("sklearn_digits")
        latent.update(noise_dim=16)
        generator.update(fc_features=(256,), base_shape=(2, 2, 64), upconv_features=(32,))
        discriminator.update(conv_features=(32, 64), fc_features=(256,))
        q.update(hidden=64)
        batch_size, steps, eval_every = 64, 3000, 500
    elif variant in ("mnist", "mnist_invariant", "mnist_gan"):
        config.data = cfg_lib.data_config("mnist_idx")
        eval_every = 250
        # The released code's continuous codes: Q a Gaussian of fixed std 1, lambda 1.
        q.update(continuous_std="fixed", fixed_std=1.0)
        info.update(lambda_continuous=1.0)
        if variant == "mnist_gan":
            info.update(lambda_categorical=0.0, lambda_continuous=0.0, detach_q=True)
        if variant == "mnist_invariant":
            # Rotation, scale and shift, with the strokes thickened or thinned (a ~ U[-0.5, 0.5]) and
            # the columns sheared (k ~ U[-0.3, 0.3]); docs/results.md has what it reaches.
            augment.update(enabled=True, max_thickness=0.5, max_shear=0.3)
    elif variant == "celeba":
        config.data = cfg_lib.data_config("celeb_a", image_size=32, label_key="", eval_split="validation")
        latent.update(noise_dim=128, categorical_sizes=(10,) * 10, num_continuous=0)
        generator.update(fc_features=(), base_shape=(2, 2, 448), upconv_features=(256, 128, 64))
        discriminator.update(conv_features=(64, 128, 256), fc_features=())
        batch_size, steps, eval_every = 128, 50_000, 2500
    config.model = ml_collections.ConfigDict(
        dict(latent=latent, generator=generator, discriminator=discriminator, q=q, init_std=0.02)
    )
    config.info = ml_collections.ConfigDict(info)
    config.info.augment = ml_collections.ConfigDict(augment)
    # Figure 2's sweep of a continuous code, beyond its training range [-1, 1].
    # Eval grids use GRID_COLUMNS (8) values; --mode=traverse uses num_values.
    # Evaluation also measures each continuous code (vqlatent.infogan.measures): slant and width of
    # `measure_rows_per_batch` random sweeps per eval batch over `measure_values` values from low to
    # high; with `classifier_workdir` (a configs/classifier.py run on the same data) also how often a
    # sweep keeps the digit class ('' skips that measure).
    config.traversal = ml_collections.ConfigDict(
        dict(
            low=-2.0,
            high=2.0,
            num_values=10,
            measure_values=9,
            measure_rows_per_batch=4,
            classifier_workdir="",
        )
    )
    cfg_lib.training_config(
        config,
        batch_size=batch_size,
        num_train_steps=steps,
        eval_every_steps=eval_every,
        checkpoint_every_steps=max(eval_every, 500),
    )
    config.optimizer = ml_collections.ConfigDict(
        dict(
            discriminator=default_optimizer_config(2e-4, b1=0.5),
            generator=default_optimizer_config(1e-3, b1=0.5),
        )
    )
    return config
