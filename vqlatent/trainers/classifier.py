"""Training the image classifier that judges generated samples (`vqlatent.nets.classifier`).

The loss is the softmax cross-entropy of the labels,

  L = - 1/B sum_b log softmax(f(x_b))_{y_b},

optionally on randomly translated images (`augment.max_shift` pixels each way,
zero-filled: MNIST's background). The evaluation reports the accuracy and the
loss on the eval split. The checkpoint is read by the priors'
`--mode=sample_eval` (`vqlatent.priors.sample_eval`), which uses `classify`:
the logits and the penultimate features of a batch of images.

Randomness (dropout, shifts) comes from fold_in(state.rng, state.step): a run is
deterministic given `config.seed` and resumes exactly.

Config (see `configs/classifier.py`): model.conv_features, model.dense_features,
model.dropout_rate, augment.max_shift, plus the shared training fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vqlatent.nets.classifier import DROPOUT_RNG, Classifier
from vqlatent.trainers import base
from vqlatent.trainers.optim import make_optimizer


def random_shift(rng: jax.Array, images: jax.Array, max_shift: int) -> jax.Array:
    """Translates each image by its own (dy, dx) uniform in [-max_shift, max_shift], filling with 0."""
    if max_shift <= 0:
        return images
    _, height, width, _ = images.shape
    padded = jnp.pad(images, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)))
    offsets = jax.random.randint(rng, (images.shape[0], 2), 0, 2 * max_shift + 1)

    def crop(image, offset):
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (height, width, image.shape[-1]))

    return jax.vmap(crop)(padded, offsets)


class Task(base.Task):
    """An image classifier over the dataset's labels."""

    def __init__(self, config: ml_collections.ConfigDict, spec: Any):
        super().__init__(config, spec)
        if not spec.num_classes:
            raise ValueError(
                f"model_name='classifier' needs a labelled dataset: config.data.name="
                f"{config.data.name!r} has no class labels (num_classes={spec.num_classes})."
            )
        m = config.model
        if not 0.0 <= m.dropout_rate < 1.0:
            raise ValueError(f"config.model.dropout_rate={m.dropout_rate}: must be in [0, 1).")
        if config.augment.max_shift < 0:
            raise ValueError(f"config.augment.max_shift={config.augment.max_shift}: must be >= 0 pixels.")
        self.num_classes = int(spec.num_classes)
        self.model = Classifier(
            num_classes=self.num_classes,
            conv_features=tuple(m.conv_features),
            dense_features=m.dense_features,
            dropout_rate=m.dropout_rate,
            dtype=base.compute_dtype(config.dtype),
        )
        self.tx = make_optimizer(config.optimizer, config.num_train_steps)

    def init_state(self, rng: jax.Array, batch: Mapping[str, jax.Array]) -> base.TrainState:
        params_rng, state_rng = jax.random.split(rng)
        variables = self.model.init(params_rng, batch["image"], train=False)
        return base.state_from_variables(variables, self.tx, state_rng)

    def classify(self, state: base.TrainState, images: jax.Array) -> dict[str, jax.Array]:
        """{'logits': (B, num_classes), 'features': (B, dense_features)} of images in [0, 1]."""
        return self.model.apply({"params": state.params}, images, train=False)

    def loss_fn(self, params, model_state, batch, rng):
        """Cross-entropy of the shifted images; returns (loss, (model state, metrics))."""
        images, labels = batch["image"], batch["label"]
        shift_rng, dropout_rng = jax.random.split(rng)
        images = random_shift(shift_rng, images, int(self.config.augment.max_shift))
        logits = self.model.apply({"params": params}, images, train=True, rngs={DROPOUT_RNG: dropout_rng})[
            "logits"
        ]
        loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
        accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == labels)
        return loss, (model_state, {"loss": loss, "accuracy": accuracy})

    def eval_step(self, state: base.TrainState, batch: Mapping[str, jax.Array]):
        logits = self.classify(state, batch["image"])["logits"]
        labels, mask = batch["label"], batch["mask"]
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
        return {
            "correct": jnp.sum(correct * mask),
            "nll_sum": jnp.sum(nll * mask),
            "num_examples": jnp.sum(mask),
        }

    def eval_summary(self, totals: Mapping[str, np.ndarray]) -> dict[str, Any]:
        n = float(totals["num_examples"])
        return {
            "accuracy": float(totals["correct"]) / n,
            "loss": float(totals["nll_sum"]) / n,
            "num_examples": int(n),
        }
