"""A small convolutional image classifier: the project's own judge of generated samples.

Sample quality is measured with a network trained here (`configs/classifier.py`),
not a downloaded Inception: whether a class-conditional sample is classified as
its label, and the Frechet distance between the classifier's penultimate-layer
features of samples and of real images (Heusel et al. 2017's FID with this
network in place of Inception; `vqlatent.evaluation.sample_quality`).

Architecture: blocks of [3x3 convolution, ReLU, 2x2 max-pool] (one per entry of
`conv_features`), flatten, a dense ReLU layer of `dense_features` units (the
`features` output), optional dropout, and a dense layer of `num_classes` logits.
No batch statistics: the function of a checkpoint does not depend on the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

DROPOUT_RNG = "dropout"


class Classifier(nn.Module):
    """images (B, H, W, C) in [0, 1] -> {'logits': (B, num_classes), 'features': (B, dense_features)}.

    Attributes:
      num_classes: number of classes.
      conv_features: output channels of each conv-ReLU-pool block.
      dense_features: width of the penultimate (feature) layer.
      dropout_rate: dropout on the features before the logits, in training only
        (draws from the 'dropout' RNG stream).
    """

    num_classes: int = 10
    conv_features: Sequence[int] = (32, 64, 128)
    dense_features: int = 256
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        if images.ndim != 4:
            raise ValueError(
                f"Classifier: images must be (batch, height, width, channels); got shape "
                f"{tuple(images.shape)}."
            )
        x = images.astype(self.dtype)
        for i, channels in enumerate(self.conv_features):
            x = nn.relu(nn.Conv(channels, (3, 3), padding="SAME", dtype=self.dtype, name=f"conv_{i}")(x))
            # 'SAME' pooling keeps a 1x1 map a 1x1 map (8x8 digits through three blocks: 8 -> 4 -> 2 -> 1).
            x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
        x = x.reshape(x.shape[0], -1)
        features = nn.relu(nn.Dense(self.dense_features, dtype=self.dtype, name="features")(x))
        h = nn.Dropout(
            self.dropout_rate, deterministic=not train or self.dropout_rate == 0.0, rng_collection=DROPOUT_RNG
        )(features)
        logits = nn.Dense(self.num_classes, dtype=jnp.float32, name="logits")(h)
        return {"logits": logits, "features": features.astype(jnp.float32)}
