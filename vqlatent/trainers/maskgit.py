"""Training a MaskGIT prior over one level of VQ codes (Chang et al. 2022, section 3.1).

Each training example masks a random fraction of its code map drawn from the cosine schedule,

  u ~ U(0, 1),  r = gamma(u) = cos(pi/2 u),  n = clip(ceil(r N), 1, N) positions masked
  (the n positions of lowest rank under a uniformly random order), N = H W,

replaces them by the mask token [M], and the bidirectional transformer (`vqlatent.nets.maskgit`)
predicts the codes there. The loss is the cross-entropy on the masked positions only,

  L = - sum_{b, i in M_b} log p(x_bi | x_unmasked, y, c) / sum_b |M_b|,                   (eq. 1)

in nats (`loss`; `masked_bits_per_code` = L / ln 2). Unmasked positions carry no loss: their
targets are visible in the input.

Evaluation: the same cross-entropy on the held-out codes at fixed mask ratios
(`prior.eval_mask_ratios`, each with its own fixed random order of the positions, shared by every
example, so the numbers do not depend on the eval batch size or the devices): `masked_nll_r<P>`
(nats per masked code at ratio P %) and their mean in bits, `masked_bits_per_code`. This is a proxy
for how well the prior fills in codes, not a likelihood: MaskGIT defines no tractable p(x), and the
numbers are not comparable with the PixelCNN's bits per code (ratio 100 % is the closest:
the entropy of each code given nothing but the class and the level above, per position).

Config (see `configs/maskgit.py`): data (a codes dataset), prior (level, conditioning_level,
class_conditional, schedule, eval_mask_ratios), model (width, num_layers, num_heads, mlp_dim) and
sample (the chain's options as for the PixelCNN, plus num_steps, choice_temperature and schedule of
the decoding, `vqlatent.priors.maskgit_sampling`). `--mode=sample` and `--mode=sample_eval` run the
chain as for the PixelCNN (`vqlatent.priors.generate`), with any mix of prior kinds per level.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vqlatent.codes import layout
from vqlatent.nets.maskgit import MaskGITInputError, MaskGITTransformer, mask_ratio, upsample_factor
from vqlatent.priors.task import PriorTask
from vqlatent.trainers import base


def ranks(scores: jax.Array) -> jax.Array:
    """(..., N) -> the rank of each entry along the last axis (0: the smallest)."""
    return jnp.argsort(jnp.argsort(scores, axis=-1), axis=-1)


def training_mask(rng: jax.Array, batch_size: int, num_positions: int, schedule: str = "cosine") -> jax.Array:
    """(B, N) bool, True where masked: per example ceil(gamma(u) N) positions (at least one), u ~ U(0, 1),
    chosen uniformly at random (eq. 1 of the module docstring)."""
    ratio_key, order_key = jax.random.split(rng)
    ratio = mask_ratio(jax.random.uniform(ratio_key, (batch_size,)), schedule)
    count = jnp.clip(jnp.ceil(ratio * num_positions), 1, num_positions).astype(jnp.int32)
    return ranks(jax.random.uniform(order_key, (batch_size, num_positions))) < count[:, None]


def masked_nll(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
    """(B, N, K) logits, (B, N) targets and mask -> (B, N) -log p(target) in nats where `mask`, 0
    elsewhere (nothing, not even a gradient, flows from an unmasked position)."""
    nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    return jnp.where(mask, nll, 0.0)


def fixed_masks(ratios: Sequence[float], num_positions: int) -> np.ndarray:
    """(R, N) bool: for ratio j, the round(r_j N) (at least one) first positions of a fixed random
    order (seeded by j), the evaluation's masks (the same for every example)."""
    masks = []
    for j, ratio in enumerate(ratios):
        count = int(np.clip(round(float(ratio) * num_positions), 1, num_positions))
        order = np.random.default_rng(j).permutation(num_positions)
        mask = np.zeros(num_positions, bool)
        mask[order[:count]] = True
        masks.append(mask)
    return np.stack(masks)


def build_model(config: ml_collections.ConfigDict, spec: Any) -> tuple[MaskGITTransformer, str, str | None]:
    """The prior of `config.prior.level` of the codes dataset described by `spec`."""
    levels = getattr(spec, "levels", None)
    if levels is None:
        raise ValueError(
            "A MaskGIT prior trains on a codes dataset: set config.data to "
            "vqlatent.codes.dataset.default_config(codes_dir) (data.name='codes')."
        )
    prior = config.prior
    if prior.level not in levels:
        raise ValueError(f"config.prior.level={prior.level!r}: the codes dataset has levels {list(levels)}.")
    level = levels[prior.level]
    if len(level.shape) != 2:
        raise ValueError(
            f"Level {prior.level!r} has code arrays of shape {level.shape}: the MaskGIT prior models one "
            f"code per position (shape (h, w)); several codebooks are not supported."
        )
    cond_level, cond_num_codes = prior.conditioning_level, None
    if cond_level is not None:
        if cond_level not in levels or cond_level == prior.level:
            raise ValueError(
                f"config.prior.conditioning_level={cond_level!r}: must be another level of "
                f"{list(levels)} (the one above {prior.level!r}), or None."
            )
        upsample_factor(level.shape, (1, *levels[cond_level].shape), 1)
        cond_num_codes = levels[cond_level].num_codes
    num_classes = None
    if prior.class_conditional:
        if not spec.num_classes:
            raise ValueError("config.prior.class_conditional=True needs config.data.num_classes (e.g. 10).")
        num_classes = int(spec.num_classes)
    m = config.model
    model = MaskGITTransformer(
        num_codes=level.num_codes,
        width=m.width,
        num_layers=m.num_layers,
        num_heads=m.num_heads,
        mlp_dim=m.mlp_dim,
        num_classes=num_classes,
        cond_num_codes=cond_num_codes,
        dtype=base.compute_dtype(config.dtype),
    )
    return model, prior.level, cond_level


class Task(PriorTask):
    """A MaskGIT prior over one level of a codes dataset."""

    kind = "maskgit"
    # No tractable likelihood: `vqlatent.models.PriorChain.bits_per_code` leaves this prior out.
    has_likelihood = False
    description = "MaskGIT bidirectional transformer"

    def __init__(self, config: ml_collections.ConfigDict, spec: Any):
        super().__init__(config, spec, build_model)
        self.num_positions = int(np.prod(self.code_shape))
        self.schedule = config.prior.schedule
        mask_ratio(0.5, self.schedule)  # A clear error for an unknown schedule, before any compile.
        self.eval_ratios = tuple(float(r) for r in config.prior.eval_mask_ratios)
        if not self.eval_ratios or not all(0 < r <= 1 for r in self.eval_ratios):
            raise MaskGITInputError(
                f"config.prior.eval_mask_ratios={self.eval_ratios}: give one or more ratios in (0, 1]."
            )

    def masked_cross_entropy(self, params, batch: Mapping[str, jax.Array], mask: jax.Array) -> jax.Array:
        """(B, N) cross-entropy in nats at the positions where `mask` (B, N) is True, 0 elsewhere; the
        network sees the codes with those positions replaced by the mask token."""
        codes, labels, cond = self.model_inputs(batch)
        b = codes.shape[0]
        flat = codes.reshape(b, self.num_positions)
        inputs = jnp.where(mask, self.model.mask_id, flat).reshape(codes.shape)
        logits = self.model.apply({"params": params}, inputs, labels, cond).reshape(b, self.num_positions, -1)
        return masked_nll(logits, flat, mask)

    def loss_fn(self, params, model_state, batch, rng):
        codes = batch[layout.code_key(self.level)]
        mask = training_mask(rng, codes.shape[0], self.num_positions, self.schedule)
        num_masked = jnp.sum(mask)
        loss = jnp.sum(self.masked_cross_entropy(params, batch, mask)) / num_masked
        metrics = {
            "loss": loss,
            "masked_bits_per_code": loss / np.log(2.0),
            "mask_fraction": num_masked / mask.size,
        }
        return loss, (model_state, metrics)

    def eval_step(self, state: base.TrainState, batch: Mapping[str, jax.Array]):
        examples = batch["mask"]
        b = examples.shape[0]
        sums = {"num_examples": jnp.sum(examples)}
        for ratio, mask in zip(self.eval_ratios, fixed_masks(self.eval_ratios, self.num_positions)):
            mask = jnp.broadcast_to(jnp.asarray(mask), (b, self.num_positions))
            nll = jnp.sum(self.masked_cross_entropy(state.params, batch, mask), axis=1)
            sums[f"nll_sum_r{round(100 * ratio)}"] = jnp.sum(nll * examples)
            sums[f"masked_r{round(100 * ratio)}"] = jnp.sum(jnp.sum(mask, axis=1) * examples)
        return sums

    def eval_summary(self, totals: Mapping[str, np.ndarray]) -> dict[str, Any]:
        out: dict[str, Any] = {"num_examples": int(totals["num_examples"])}
        per_ratio = []
        for ratio in self.eval_ratios:
            key = round(100 * ratio)
            nll = float(totals[f"nll_sum_r{key}"]) / float(totals[f"masked_r{key}"])
            out[f"masked_nll_r{key}"] = nll
            per_ratio.append(nll)
        out["masked_bits_per_code"] = float(np.mean(per_ratio)) / float(np.log(2.0))
        return out

    def decode_options(self) -> dict[str, Any]:
        """The decoding options of `config.sample` (`vqlatent.priors.maskgit_sampling`)."""
        s = self.config.sample
        return {"num_steps": s.num_steps, "choice_temperature": s.choice_temperature, "schedule": s.schedule}

    def prior_spec(self, state: base.TrainState) -> dict[str, Any]:
        return {**super().prior_spec(state), "decode": self.decode_options()}
