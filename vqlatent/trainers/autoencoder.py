"""VQ-VAE and VQ-VAE-2 training: one task for any number of levels.

The objective of Razavi et al. 2019, eq. (2), summed over the levels; with one level it is
van den Oord et al. 2017, eq. (3):

  L = ||x - D(e_0, ..., e_{L-1})||^2 / Var(x)
      + sum_l ( ||sg[E_l(x)] - e_l||^2 + beta ||E_l(x) - sg[e_l]||^2 )

The reconstruction term is divided by the pixel variance of the training data, as in the
Sonnet/Haiku example, so that beta = 0.25 has the same meaning across datasets. Each level's
quantizer returns its own codebook terms as `vq[level]['loss']` (an EMA quantizer returns only
the commitment term and moves its codebook by the EMA update of VQ-VAE appendix A.1 instead of
the second term, as the papers' models do). Quantizers that draw random numbers in training
(k-means initialisation, dead-code restarts) get the RNG stream 'quantizer' of the loop's
per-step key; flax folds each level's module path into it.

Configs (`model_name` 'vqvae' and 'vqvae2' are this task):
  configs/vqvae.py: `model.num_downsamples` (one level of 2**n, the first paper's encoder and its
    parameter names), `model.embedding_dim`, one `quantizer` config; metrics without a level
    suffix (`perplexity`, `code_counts`, ...).
  configs/vqvae2.py: `model.strides`, downsampling per level, bottom first, e.g. (4, 2); the
    quantizer either ONE config (with `name`) shared by every level, or one per level
    (`quantizer.bottom`, `quantizer.top`, ...); metrics per level (`perplexity_top`, ...).
  Both: model.num_hiddens, model.num_residual_layers, model.num_residual_hiddens, model.upsample,
  model.downsample.

Any quantizer of `vqlatent.quantizers` can be used; code usage is counted per codebook (residual
/ product VQ have several index streams, on the trailing axis of the code maps). Evaluation
reports MSE/PSNR, SSIM (`evaluation.metrics.ssim`) and, per level, perplexity, codebook usage and code counts; it writes
`code_usage[_<level>].png` histograms and `reconstructions.png`, whose row groups are: the
originals; their full reconstructions; the reconstruction from the top level alone; (three levels
and up) from the top two levels; and so on. In a partial reconstruction every level below those
kept is replaced by a constant code map holding that level's most frequent code in the displayed
batch: a valid input the decoder has seen, which carries no spatial information.

The task is also a `vqlatent.codes.CodeModel` (`code_levels`, `encode_codes`, `decode_codes`):
`--mode=extract_codes` writes the code maps the priors train on.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vqlatent import backend, quantizers
from vqlatent import codes as codes_lib
from vqlatent import data as data_lib
from vqlatent.evaluation import metrics as metric_lib
from vqlatent.nets.autoencoder import Autoencoder, check_image_shape, level_names, level_shapes
from vqlatent.trainers import base
from vqlatent.trainers.base import compute_dtype
from vqlatent.trainers.optim import make_optimizer


def is_one_level_vqvae(config: ml_collections.ConfigDict) -> bool:
    """Whether the config is in the VQ-VAE form of configs/vqvae.py (`model.num_downsamples`)."""
    return "num_downsamples" in config.model


def level_quantizer_configs(config: ml_collections.ConfigDict, names: tuple[str, ...]) -> dict[str, Any]:
    """{level: quantizer config} from a shared `config.quantizer` or one per level."""
    q = config.quantizer
    if "name" in q:
        return {n: q for n in names}
    if set(q.keys()) != set(names):
        raise ValueError(
            f"config.quantizer has entries {sorted(q.keys())}, but model.strides="
            f"{tuple(config.model.strides)} makes the levels {list(names)}: give one quantizer config "
            f"per level (config.quantizer.<level>), or one shared config with a `name`."
        )
    return {n: q[n] for n in names}


def build_model(config: ml_collections.ConfigDict, image_shape: tuple[int, int, int]) -> Autoencoder:
    m = config.model
    if is_one_level_vqvae(config):
        check_image_shape(image_shape, m.num_downsamples)
        if config.quantizer.embedding_dim != m.embedding_dim:
            raise ValueError(
                f"Code dimension mismatch: quantizer.embedding_dim={config.quantizer.embedding_dim} but "
                f"model.embedding_dim={m.embedding_dim}; set both to the same value."
            )
        strides, architecture = (2**m.num_downsamples,), "vqvae"
    else:
        strides, architecture = tuple(int(s) for s in m.strides), "vqvae2"
        level_shapes(image_shape, strides)  # Clear error if the strides do not divide the image.
    names = level_names(len(strides))
    level_quantizers = {}
    for name, cfg in level_quantizer_configs(config, names).items():
        level_quantizers[name] = quantizers.make_quantizer(cfg)
        for attr in ("embedding_dim", "codebook_size", "num_codebooks", "lookup"):
            if not hasattr(level_quantizers[name], attr):
                raise ValueError(
                    f"Quantizer {cfg.name!r} (level {name}) has no `{attr}`; a VQ-VAE needs "
                    f"quantizers with embedding_dim, codebook_size, num_codebooks and lookup()."
                )
    return Autoencoder(
        quantizers=level_quantizers,
        strides=strides,
        out_channels=image_shape[-1],
        num_hiddens=m.num_hiddens,
        num_residual_layers=m.num_residual_layers,
        num_residual_hiddens=m.num_residual_hiddens,
        upsample=m.upsample,
        downsample=m.get("downsample", "auto"),  # Configs written before the field: 'auto'.
        architecture=architecture,
        dtype=compute_dtype(config.dtype),
    )


class Task(base.Task):
    """VQ-VAE / VQ-VAE-2 on images in [0, 1]; also a `vqlatent.codes.CodeModel`."""

    def __init__(self, config: ml_collections.ConfigDict, spec: Any):
        super().__init__(config, spec)
        self.model = build_model(config, spec.image_shape)
        self.level_names = self.model.names
        one_level = self.model.architecture == "vqvae"
        # Metric names: `perplexity` for the VQ-VAE (configs/vqvae.py), `perplexity_<level>` otherwise.
        self.suffix = {n: "" if one_level else f"_{n}" for n in self.level_names}
        level_quantizers = self.model.quantizers
        self.num_codes = {
            n: int(level_quantizers[n].codebook_size) for n in self.level_names
        }  # Per codebook.
        self.num_codebooks = {n: int(level_quantizers[n].num_codebooks) for n in self.level_names}
        self.tx = make_optimizer(config.optimizer, config.num_train_steps)
        self.data_variance = (
            data_lib.estimate_pixel_variance(config.data) if config.loss.normalize_by_data_variance else 1.0
        )

    @functools.cached_property
    def code_levels(self) -> dict[str, codes_lib.LevelSpec]:
        """{level: LevelSpec(code map shape, K)}, bottom first (from `jax.eval_shape`, no compute)."""
        return codes_lib.infer_code_levels(self, self.encode_codes, self.num_codes)

    # -- variables ---------------------------------------------------------------
    def _variables(self, state: base.TrainState) -> dict[str, Any]:
        return {"params": state.params, **state.model_state}

    def init_state(self, rng: jax.Array, batch: Mapping[str, jax.Array]) -> base.TrainState:
        params_rng, state_rng = jax.random.split(rng)
        return base.state_from_variables(self.init_variables(params_rng, batch["image"]), self.tx, state_rng)

    def init_variables(self, rng: jax.Array, images: jax.Array) -> dict[str, Any]:
        """The autoencoder's initial variables ('params' and the quantizers' state collections)."""
        # The one-level VQ-VAE keeps JAX's threefry, with which its checkpoints and results were made.
        with backend.initializer_rng(keep_jax_default=self.model.architecture == "vqvae"):
            return self.model.init(rng, images, train=False)

    # -- training ----------------------------------------------------------------
    def loss_fn(self, params, model_state, batch, rng):
        """Eq. (2) summed over levels (eq. (3) for one); returns (loss, (new model state, metrics))."""
        images = batch["image"]
        rngs = {quantizers.QUANTIZER_RNG: rng} if rng is not None else None
        outputs, new_model_state = base.apply_for_training(self.model, params, model_state, images, rngs=rngs)
        mse = jnp.mean(jnp.square(outputs["reconstruction"] - images))
        vq = outputs["vq"]
        vq_loss = functools.reduce(jnp.add, [vq[n]["loss"] for n in self.level_names])
        loss = mse / self.data_variance + vq_loss
        metrics = {"loss": loss, "mse": mse, "vq_loss": vq_loss, **self.level_metrics(vq)}
        return loss, (new_model_state, metrics)

    def level_metrics(self, vq: Mapping[str, Any]) -> dict[str, jax.Array]:
        """Each level's training metrics from its quantizer's outputs (perplexity, usage, ...)."""
        metrics = {}
        for n in self.level_names:
            s = self.suffix[n]
            metrics[f"perplexity{s}"] = vq[n]["perplexity"]
            metrics[f"commitment_loss{s}"] = vq[n]["e_latent_loss"]
            metrics[f"codebook_loss{s}"] = vq[n]["q_latent_loss"]
            counts = self._code_counts(n, vq[n]["encoding_indices"])
            metrics[f"batch_codebook_usage{s}"] = jnp.mean(counts > 0)
            if "dead_codes" in vq[n]:  # EMA usage below the restart threshold (restarted this step).
                metrics[f"dead_codes{s}"] = vq[n]["dead_codes"]
        return metrics

    # -- codes (vqlatent.codes.CodeModel) -----------------------------------------
    def encode_codes(self, state: base.TrainState, images: jax.Array) -> dict[str, jax.Array]:
        """Images in [0, 1] -> {level: int32 code map}."""
        return self.model.apply(self._variables(state), images, train=False)["codes"]

    def decode_codes(self, state: base.TrainState, codes: Mapping[str, jax.Array]) -> jax.Array:
        """{level: code map} -> images on the [0, 1] scale; `CodeShapeError` if the shapes do not fit."""
        codes_lib.check_codes(codes, self.code_levels)
        return self.model.apply(self._variables(state), dict(codes), method="decode_codes")

    def modes(self) -> dict[str, Any]:
        return {"extract_codes": codes_lib.extract_codes_mode}

    # -- evaluation --------------------------------------------------------------
    def _code_counts(self, level: str, codes: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """(num_codebooks, K) usage counts of one level's code maps."""
        return quantizers.code_counts_per_codebook(
            codes, self.num_codebooks[level], self.num_codes[level], mask
        )

    def eval_step(self, state: base.TrainState, batch: Mapping[str, jax.Array]):
        images, mask = batch["image"], batch["mask"]
        outputs = self.model.apply(self._variables(state), images, train=False)
        per_example_sq_err = jnp.sum(jnp.square(outputs["reconstruction"] - images), axis=(1, 2, 3))
        # SSIM of the image one would look at: the reconstruction clipped to [0, 1].
        per_example_ssim = metric_lib.ssim(jnp.clip(outputs["reconstruction"], 0.0, 1.0), images)
        sums = {
            "sq_err": jnp.sum(per_example_sq_err * mask),
            "ssim": jnp.sum(per_example_ssim * mask),
            "num_examples": jnp.sum(mask),
        }
        for n in self.level_names:
            sums[f"code_counts{self.suffix[n]}"] = self._code_counts(n, outputs["codes"][n], mask)
        return sums

    def eval_summary(self, totals: Mapping[str, np.ndarray]) -> dict[str, Any]:
        n = float(totals["num_examples"])
        mse = float(totals["sq_err"]) / (n * float(np.prod(self.spec.image_shape)))
        levels = self.code_levels
        metrics = {
            "mse": mse,
            "psnr": metric_lib.psnr(mse),
            "ssim": float(totals["ssim"]) / n,
            "compression_factor": metric_lib.compression_factor(
                self.spec.image_shape,
                [levels[l].shape for l in self.level_names],
                [levels[l].num_codes for l in self.level_names],
            ),
            "num_examples": int(n),
        }
        for name in self.level_names:
            s = self.suffix[name]
            counts = np.asarray(totals[f"code_counts{s}"])  # (num_codebooks, K)
            for key, value in quantizers.diagnostics.codebook_summary(counts).items():
                metrics[f"{key}{s}"] = value  # perplexity, codebook_usage, codes_used, dead_codes
            metrics[f"num_codes{s}"] = self.num_codes[name]
            metrics[f"code_counts{s}"] = (counts[0] if len(counts) == 1 else counts).astype(np.int64).tolist()
            if len(counts) > 1:
                metrics[f"num_codebooks{s}"] = len(counts)
        return metrics

    def partial_codes(
        self, codes: Mapping[str, jax.Array], mask: jax.Array, keep_from: int
    ) -> dict[str, jax.Array]:
        """Keeps levels keep_from..top; every level below becomes a constant map of its most frequent code."""
        out = dict(codes)
        for l in range(keep_from):
            name = self.level_names[l]
            most_frequent = jnp.argmax(self._code_counts(name, codes[name], mask), axis=-1)  # Per codebook.
            if self.num_codebooks[name] == 1:
                most_frequent = most_frequent[0]
            out[name] = jnp.broadcast_to(most_frequent, codes[name].shape).astype(codes[name].dtype)
        return out

    def eval_images(self, state: base.TrainState, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        """Row groups: originals, full reconstructions, from the top level alone, from the top two, ...

        At most 64 images: 32 pairs for one level, 16 columns of 3 for two, ...
        """
        cols = base.GRID_COLUMNS
        num_rows = len(self.level_names) + 1
        n = min(64 // num_rows, batch["image"].shape[0]) // cols * cols or batch["image"].shape[0]
        variables = self._variables(state)
        outputs = self.model.apply(variables, batch["image"], train=False)
        images, mask = batch["image"][:n], batch["mask"][:n]
        codes = {name: c[:n] for name, c in outputs["codes"].items()}
        rows = [images, outputs["reconstruction"][:n]]
        for keep_from in reversed(range(1, len(self.level_names))):
            rows.append(
                self.model.apply(variables, self.partial_codes(codes, mask, keep_from), method="decode_codes")
            )
        groups = max(n // cols, 1)
        stacked = jnp.stack([r.reshape(groups, -1, *images.shape[1:]) for r in rows], axis=1)
        return {"reconstructions": jnp.clip(stacked.reshape(-1, *images.shape[1:]), 0.0, 1.0)}

    def summary_images(self, totals: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`code_usage[_<level>]`: histograms of the codes used on the whole eval split, one panel per
        codebook, codes sorted by use, unused ones shaded red (`quantizers.diagnostics`)."""
        return {
            f"code_usage{self.suffix[n]}": np.asarray(
                quantizers.diagnostics.usage_histogram(totals[f"code_counts{self.suffix[n]}"])
            )
            for n in self.level_names
        }
