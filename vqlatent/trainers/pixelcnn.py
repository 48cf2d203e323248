"""Training a Gated PixelCNN prior over one level of VQ codes (van den Oord et al. 2016;
VQ-VAE section 3.3; VQ-VAE-2 section 3.3).

The loss is the negative log-likelihood of eq. (1), averaged over positions,

  L = - 1/(H W) sum_{i,j} log p(x_ij | x_<ij, y, c),

reported in nats (`loss`) and in bits per code (`bits_per_code` = L / ln 2); the
evaluation reports the same on the held-out codes (the codes dataset's `eval`
split).

Config (see `configs/pixelcnn.py`):
  data: a codes dataset (`vqlatent.codes.dataset.default_config`: name='codes',
    codes_dir, num_classes).
  prior.level: the modelled level ('top', 'bottom', ...).
  prior.conditioning_level: the level above whose codes condition this one
    (VQ-VAE-2's bottom prior: 'top'), or None.
  prior.class_conditional: condition on the labels (needs data.num_classes).
  model: channels, num_layers, kernel_size, cond_channels, attention_layers,
    num_heads, head_channels (`vqlatent.nets.pixelcnn.GatedPixelCNN`).
  sample: temperature, num_per_class, seed, batch_size, lower_priors (for
    `--mode=sample`), eval_per_class and classifier_workdir (for
    `--mode=sample_eval`).

`--mode=sample` draws class -> top codes -> lower codes -> pixels through the whole
hierarchy (`vqlatent.priors.generate`); `--mode=sample_eval` judges such samples with
the project's classifier (`vqlatent.priors.sample_eval`). Both run with the top
prior's config and workdir.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vqlatent.nets.pixelcnn import GatedPixelCNN
from vqlatent.priors.task import PriorTask
from vqlatent.trainers import base


def build_model(config: ml_collections.ConfigDict, spec: Any) -> tuple[GatedPixelCNN, str, str | None]:
    """The prior of `config.prior.level` of the codes dataset described by `spec`."""
    levels = getattr(spec, "levels", None)
    if levels is None:
        raise ValueError(
            "A PixelCNN prior trains on a codes dataset: set config.data to "
            "vqlatent.codes.dataset.default_config(codes_dir) (data.name='codes')."
        )
    prior = config.prior
    if prior.level not in levels:
        raise ValueError(f"config.prior.level={prior.level!r}: the codes dataset has levels {list(levels)}.")
    level = levels[prior.level]
    if len(level.shape) != 2:
        raise ValueError(
            f"Level {prior.level!r} has code arrays of shape {level.shape}: the PixelCNN prior "
            f"models one code per position (shape (h, w)); several codebooks are not supported."
        )
    cond_level = prior.conditioning_level
    cond_num_codes = None
    if cond_level is not None:
        if cond_level not in levels or cond_level == prior.level:
            raise ValueError(
                f"config.prior.conditioning_level={cond_level!r}: must be another level of "
                f"{list(levels)} (the one above {prior.level!r}), or None."
            )
        GatedPixelCNN.upsample_factor(level.shape, (1, *levels[cond_level].shape), 1)
        cond_num_codes = levels[cond_level].num_codes
    num_classes = None
    if prior.class_conditional:
        if not spec.num_classes:
            raise ValueError("config.prior.class_conditional=True needs config.data.num_classes (e.g. 10).")
        num_classes = int(spec.num_classes)
    m = config.model
    model = GatedPixelCNN(
        num_codes=level.num_codes,
        channels=m.channels,
        num_layers=m.num_layers,
        kernel_size=m.kernel_size,
        num_classes=num_classes,
        cond_num_codes=cond_num_codes,
        cond_channels=m.cond_channels,
        attention_layers=tuple(m.attention_layers),
        num_heads=m.num_heads,
        head_channels=m.head_channels,
        dtype=base.compute_dtype(config.dtype),
    )
    return model, prior.level, cond_level


class Task(PriorTask):
    """A PixelCNN prior over one level of a codes dataset."""

    kind = "pixelcnn"

    def __init__(self, config: ml_collections.ConfigDict, spec: Any):
        super().__init__(config, spec, build_model)

    def nll_per_example(self, params, batch: Mapping[str, jax.Array]) -> jax.Array:
        """(B,) mean over positions of -log p(x_ij | x_<ij, y, c), in nats (eq. 1)."""
        codes, labels, cond = self.model_inputs(batch)
        logits = self.model.apply({"params": params}, codes, labels, cond)
        nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), codes)
        return jnp.mean(nll, axis=(1, 2))

    def loss_fn(self, params, model_state, batch, rng):
        del rng  # Deterministic.
        loss = jnp.mean(self.nll_per_example(params, batch))
        return loss, (model_state, {"loss": loss, "bits_per_code": loss / np.log(2.0)})

    def eval_step(self, state: base.TrainState, batch: Mapping[str, jax.Array]):
        nll = self.nll_per_example(state.params, batch)
        mask = batch["mask"]
        return {"nll_sum": jnp.sum(nll * mask), "num_examples": jnp.sum(mask)}

    def eval_summary(self, totals: Mapping[str, np.ndarray]) -> dict[str, Any]:
        n = float(totals["num_examples"])
        nll = float(totals["nll_sum"]) / n
        return {"nll_per_code": nll, "bits_per_code": nll / float(np.log(2.0)), "num_examples": int(n)}
