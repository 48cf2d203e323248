"""VQ-VAE training: the objective of van den Oord et al. 2017, eq. (3).

  L = ||x - D(e)||^2 / Var(x)  +  ||sg[z_e(x)] - e||^2  +  beta ||z_e(x) - sg[e]||^2

The reconstruction term is divided by the pixel variance of the training data,
as in the Sonnet/Haiku example, so that beta = 0.25 has the same meaning across
datasets. The quantizer returns the two codebook terms as `vq['loss']` (for the
EMA quantizer, only the commitment term: the codebook follows the EMA updates of
appendix A.1 instead of the second term).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vqlatent import data as data_lib
from vqlatent import quantizers
from vqlatent.evaluation import metrics as metric_lib
from vqlatent.nets.vqvae import VQVAE, check_image_shape
from vqlatent.trainers import base
from vqlatent.trainers.optim import make_optimizer

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(name: str):
  if name not in DTYPES:
    raise ValueError(f"Unknown config.dtype={name!r}; choose one of {sorted(DTYPES)}.")
  return DTYPES[name]


def build_model(config: ml_collections.ConfigDict, image_shape: tuple[int, int, int]) -> VQVAE:
  m = config.model
  check_image_shape(image_shape, m.num_downsamples)
  if config.quantizer.embedding_dim != m.embedding_dim:
    raise ValueError(
        f"Code dimension mismatch: quantizer.embedding_dim={config.quantizer.embedding_dim} but "
        f"model.embedding_dim={m.embedding_dim}; set both to the same value.")
  return VQVAE(
      quantizer=quantizers.make_quantizer(config.quantizer),
      embedding_dim=m.embedding_dim, out_channels=image_shape[-1], num_hiddens=m.num_hiddens,
      num_residual_layers=m.num_residual_layers, num_residual_hiddens=m.num_residual_hiddens,
      num_downsamples=m.num_downsamples, upsample=m.upsample, dtype=compute_dtype(config.dtype))


class Task(base.Task):
  """VQ-VAE on images in [0, 1]."""

  def __init__(self, config: ml_collections.ConfigDict, spec: Any):
    super().__init__(config, spec)
    self.model = build_model(config, spec.image_shape)
    self.code_shape = check_image_shape(spec.image_shape, config.model.num_downsamples)
    self.num_codes = config.quantizer.num_embeddings
    self.tx = make_optimizer(config.optimizer, config.num_train_steps)
    self.data_variance = (data_lib.estimate_pixel_variance(config.data)
                          if config.loss.normalize_by_data_variance else 1.0)

  # -- variables ---------------------------------------------------------------
  def _variables(self, state: base.TrainState) -> dict[str, Any]:
    return {"params": state.params, **state.model_state}

  def init_state(self, rng: jax.Array, batch: Mapping[str, jax.Array]) -> base.TrainState:
    params_rng, state_rng = jax.random.split(rng)
    variables = self.model.init(params_rng, batch["image"], train=False)
    params = variables["params"]
    model_state = {k: v for k, v in variables.items() if k != "params"}
    return base.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                           opt_state=self.tx.init(params), model_state=model_state, rng=state_rng)

  # -- training ----------------------------------------------------------------
  def loss_fn(self, params, model_state, images):
    """Eq. (3); returns (loss, (new model state, metrics))."""
    mutable = list(model_state)
    outputs = self.model.apply({"params": params, **model_state}, images, train=True,
                               mutable=mutable or False)
    if mutable:
      outputs, new_model_state = outputs
    else:
      new_model_state = model_state
    mse = jnp.mean(jnp.square(outputs["reconstruction"] - images))
    vq = outputs["vq"]
    loss = mse / self.data_variance + vq["loss"]
    metrics = {"loss": loss, "mse": mse, "vq_loss": vq["loss"], "perplexity": vq["perplexity"],
               "commitment_loss": vq["e_latent_loss"], "codebook_loss": vq["q_latent_loss"]}
    return loss, (new_model_state, metrics)

  def train_step(self, state: base.TrainState, batch: Mapping[str, jax.Array]):
    grads, (model_state, metrics) = jax.grad(self.loss_fn, has_aux=True)(
        state.params, state.model_state, batch["image"])
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
    params = jax.tree.map(jnp.add, state.params, updates)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              model_state=model_state)
    return new_state, metrics

  # -- evaluation --------------------------------------------------------------
  def eval_step(self, state: base.TrainState, batch: Mapping[str, jax.Array]):
    images, mask = batch["image"], batch["mask"]
    outputs = self.model.apply(self._variables(state), images, train=False)
    per_example_sq_err = jnp.sum(jnp.square(outputs["reconstruction"] - images), axis=(1, 2, 3))
    indices = outputs["vq"]["encoding_indices"].reshape(images.shape[0], -1)
    weights = jnp.broadcast_to(mask[:, None], indices.shape)
    code_counts = jnp.zeros((self.num_codes,), jnp.float32).at[indices.reshape(-1)].add(weights.reshape(-1))
    return {"sq_err": jnp.sum(per_example_sq_err * mask), "num_examples": jnp.sum(mask),
            "code_counts": code_counts}

  def eval_summary(self, totals: Mapping[str, np.ndarray]) -> dict[str, Any]:
    n = float(totals["num_examples"])
    mse = float(totals["sq_err"]) / (n * float(np.prod(self.spec.image_shape)))
    counts = np.asarray(totals["code_counts"])
    return {
        "mse": mse,
        "psnr": metric_lib.psnr(mse),
        "perplexity": metric_lib.perplexity_from_counts(counts),
        "codebook_usage": metric_lib.usage_from_counts(counts),
        "codes_used": int(np.count_nonzero(counts)),
        "num_codes": self.num_codes,
        "compression_factor": metric_lib.compression_factor(
            self.spec.image_shape, [self.code_shape], [self.num_codes]),
        "num_examples": int(n),
        "code_counts": counts.astype(np.int64).tolist(),
    }

  def eval_images(self, state: base.TrainState, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """Rows of 8 originals, each directly above the row of their reconstructions."""
    cols = base.GRID_COLUMNS
    n = min(32, batch["image"].shape[0]) // cols * cols or batch["image"].shape[0]
    images = batch["image"][:n]
    recon = self.model.apply(self._variables(state), images, train=False)["reconstruction"]
    rows = max(n // cols, 1)
    pairs = jnp.stack([images.reshape(rows, -1, *images.shape[1:]),
                       recon.reshape(rows, -1, *images.shape[1:])], axis=1)
    return {"reconstructions": jnp.clip(pairs.reshape(-1, *images.shape[1:]), 0.0, 1.0)}
