"""VQ-VAE training: the objective of van den Oord et al. 2017, eq. (3).

  L = ||x - D(e)||^2 / Var(x)  +  ||sg[z_e(x)] - e||^2  +  beta ||z_e(x) - sg[e]||^2

The reconstruction term is divided by the pixel variance of the training data,
as in the Sonnet/Haiku example, so that beta = 0.25 has the same meaning across
datasets. The quantizer returns the two codebook terms as `vq['loss']` (for the
EMA quantizer, only the commitment term: the codebook follows the EMA updates of
appendix A.1 instead of the second term).

Any quantizer of `vqlatent.quantizers` can be selected (`config.quantizer.name`);
code usage is counted per codebook (residual / product VQ have several index
streams, on the trailing axis of `encoding_indices`). Quantizers that draw
random numbers in training (k-means initialisation, dead-code restarts) get the
RNG stream 'quantizer' = fold_in(state.rng, state.step), so runs stay exactly
resumable.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vqlatent import codes as codes_lib
from vqlatent import data as data_lib
from vqlatent import quantizers
from vqlatent.evaluation import metrics as metric_lib
from vqlatent.nets.vqvae import VQVAE, check_image_shape
from vqlatent.trainers import base
from vqlatent.trainers.base import compute_dtype
from vqlatent.trainers.optim import make_optimizer


def build_model(config: ml_collections.ConfigDict, image_shape: tuple[int, int, int]) -> VQVAE:
    m = config.model
    check_image_shape(image_shape, m.num_downsamples)
    if config.quantizer.embedding_dim != m.embedding_dim:
        raise ValueError(
            f"Code dimension mismatch: quantizer.embedding_dim={config.quantizer.embedding_dim} but "
            f"model.embedding_dim={m.embedding_dim}; set both to the same value."
        )
    return VQVAE(
        quantizer=quantizers.make_quantizer(config.quantizer),
        embedding_dim=m.embedding_dim,
        out_channels=image_shape[-1],
        num_hiddens=m.num_hiddens,
        num_residual_layers=m.num_residual_layers,
        num_residual_hiddens=m.num_residual_hiddens,
        num_downsamples=m.num_downsamples,
        upsample=m.upsample,
        dtype=compute_dtype(config.dtype),
    )


class Task(base.Task):
    """VQ-VAE on images in [0, 1]."""

    def __init__(self, config: ml_collections.ConfigDict, spec: Any):
        super().__init__(config, spec)
        self.model = build_model(config, spec.image_shape)
        self.code_shape = check_image_shape(spec.image_shape, config.model.num_downsamples)
        quantizer = self.model.quantizer
        self.num_codebooks = quantizer.num_codebooks  # Index streams per position.
        self.num_codes = quantizer.codebook_size  # Codes per codebook.
        self.tx = make_optimizer(config.optimizer, config.num_train_steps)
        self.data_variance = (
            data_lib.estimate_pixel_variance(config.data) if config.loss.normalize_by_data_variance else 1.0
        )

    # -- variables ---------------------------------------------------------------
    def _variables(self, state: base.TrainState) -> dict[str, Any]:
        return {"params": state.params, **state.model_state}

    def init_state(self, rng: jax.Array, batch: Mapping[str, jax.Array]) -> base.TrainState:
        params_rng, state_rng = jax.random.split(rng)
        variables = self.model.init(params_rng, batch["image"], train=False)
        return base.state_from_variables(variables, self.tx, state_rng)

    # -- training ----------------------------------------------------------------
    def loss_fn(self, params, model_state, images, rng=None):
        """Eq. (3); returns (loss, (new model state, metrics)). `rng`: the quantizer's stream."""
        rngs = {quantizers.QUANTIZER_RNG: rng} if rng is not None else None
        outputs, new_model_state = base.apply_for_training(self.model, params, model_state, images, rngs=rngs)
        mse = jnp.mean(jnp.square(outputs["reconstruction"] - images))
        vq = outputs["vq"]
        loss = mse / self.data_variance + vq["loss"]
        metrics = {
            "loss": loss,
            "mse": mse,
            "vq_loss": vq["loss"],
            "perplexity": vq["perplexity"],
            "commitment_loss": vq["e_latent_loss"],
            "codebook_loss": vq["q_latent_loss"],
            "batch_codebook_usage": jnp.mean(self._code_counts(vq["encoding_indices"]) > 0),
        }
        if "dead_codes" in vq:  # EMA usage below the restart threshold (restarted this step).
            metrics["dead_codes"] = vq["dead_codes"]
        return loss, (new_model_state, metrics)

    def _code_counts(self, encoding_indices, mask=None):
        """(num_codebooks, num_codes) usage counts of a batch of code maps."""
        return quantizers.code_counts_per_codebook(encoding_indices, self.num_codebooks, self.num_codes, mask)

    def train_step(self, state: base.TrainState, batch: Mapping[str, jax.Array]):
        rng = jax.random.fold_in(state.rng, state.step)  # Depends on (seed, step) only: resumable.
        grads, (model_state, metrics) = jax.grad(self.loss_fn, has_aux=True)(
            state.params, state.model_state, batch["image"], rng
        )
        new_state = base.apply_gradients(state, grads, self.tx, model_state)
        return new_state, metrics

    # -- evaluation --------------------------------------------------------------
    def eval_step(self, state: base.TrainState, batch: Mapping[str, jax.Array]):
        images, mask = batch["image"], batch["mask"]
        outputs = self.model.apply(self._variables(state), images, train=False)
        per_example_sq_err = jnp.sum(jnp.square(outputs["reconstruction"] - images), axis=(1, 2, 3))
        code_counts = self._code_counts(outputs["vq"]["encoding_indices"], mask)
        return {
            "sq_err": jnp.sum(per_example_sq_err * mask),
            "num_examples": jnp.sum(mask),
            "code_counts": code_counts,
        }

    def eval_summary(self, totals: Mapping[str, np.ndarray]) -> dict[str, Any]:
        n = float(totals["num_examples"])
        mse = float(totals["sq_err"]) / (n * float(np.prod(self.spec.image_shape)))
        counts = np.asarray(totals["code_counts"])  # (num_codebooks, num_codes)
        summary = {
            "mse": mse,
            "psnr": metric_lib.psnr(mse),
            **quantizers.diagnostics.codebook_summary(counts),  # perplexity, usage, dead codes
            "num_codes": self.num_codes,
            "compression_factor": metric_lib.compression_factor(
                self.spec.image_shape,
                [self.code_shape] * self.num_codebooks,
                [self.num_codes] * self.num_codebooks,
            ),
            "num_examples": int(n),
            "code_counts": (counts[0] if self.num_codebooks == 1 else counts).astype(np.int64).tolist(),
        }
        if self.num_codebooks > 1:
            summary["num_codebooks"] = self.num_codebooks
        return summary

    def modes(self) -> dict[str, Any]:
        return {"extract_codes": codes_lib.extract_codes_mode}  # Code maps for the priors (vqlatent.codes).

    def eval_images(self, state: base.TrainState, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        """Rows of 8 originals, each directly above the row of their reconstructions."""
        cols = base.GRID_COLUMNS
        n = min(32, batch["image"].shape[0]) // cols * cols or batch["image"].shape[0]
        outputs = self.model.apply(self._variables(state), batch["image"], train=False)
        images = batch["image"][:n]
        recon = outputs["reconstruction"][:n]
        rows = max(n // cols, 1)
        pairs = jnp.stack(
            [images.reshape(rows, -1, *images.shape[1:]), recon.reshape(rows, -1, *images.shape[1:])], axis=1
        )
        return {"reconstructions": jnp.clip(pairs.reshape(-1, *images.shape[1:]), 0.0, 1.0)}

    def summary_images(self, totals: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`code_usage`: a histogram of the codes used on the whole eval split, one panel per
        codebook, codes sorted by use, unused ones shaded red (`quantizers.diagnostics`)."""
        return {"code_usage": np.asarray(quantizers.diagnostics.usage_histogram(totals["code_counts"]))}
