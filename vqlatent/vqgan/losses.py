"""VQGAN's objective as pure functions (Esser et al. 2021, "Taming Transformers", section 3.1).

The autoencoder (E, G, codebook Z) and the patch discriminator D play

  L = L_VQ(E, G, Z) + lambda * f(t) * L_GAN({E, G, Z}, D)                                 (eq. 6)

with the perceptual reconstruction loss inside L_VQ,

  L_rec = w_1 |x - x_hat|_1 + w_2 |x - x_hat|^2 + w_p LPIPS(x, x_hat)   (means over pixels / images)

(taming uses w_1 = 1 and LPIPS; an L2 term is the VQ-VAE's loss), the codebook and commitment
terms of the quantizer, and the adaptive weight of eq. (7),

  lambda = ||grad_{G_L} L_rec|| / (||grad_{G_L} L_GAN|| + delta),   delta = 1e-4,

the ratio of the two losses' gradient norms at the decoder's last layer G_L, clipped to
[0, 1e4] and treated as a constant (no gradient flows through it), times the configured
`disc_weight`. f(t) is the discriminator factor: 0 before step `disc_start`, `disc_factor` from
there on (taming's `adopt_weight`), so the autoencoder first learns to reconstruct.

GAN losses, on D's patch logits l (one per patch; means over patches and images):

  hinge              D: 1/2 (E relu(1 - l_real) + E relu(1 + l_fake)),  G: -E l_fake
  non_saturating     D: 1/2 (E softplus(-l_real) + E softplus(l_fake)), G: E softplus(-l_fake)

(taming's `hinge_d_loss` / `vanilla_d_loss`; its generator loss is -E l_fake for both, the
non-saturating form here is Goodfellow et al.'s -E log D(G(z)) for the vanilla game).

LeCam regularisation (Tseng et al. 2021, eq. 3), optional: D's loss gets

  R_LC = E ||l_real - alpha_F||^2 + E ||l_fake - alpha_R||^2

where alpha_R, alpha_F are exponential moving averages of D's mean logits on real and
reconstructed images; it keeps D's outputs from drifting apart under limited data.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

GAN_LOSSES = ("hinge", "non_saturating")
ADAPTIVE_WEIGHT_DELTA = 1e-4  # delta of eq. (7).
ADAPTIVE_WEIGHT_MAX = 1e4  # Taming clamps lambda to [0, 1e4].


def reconstruction_loss(
    images: jax.Array,
    reconstructions: jax.Array,
    l1_weight: float,
    l2_weight: float,
    l2_scale: float = 1.0,
) -> jax.Array:
    """w_1 mean |x - x_hat| + w_2 mean (x - x_hat)^2 / l2_scale (float32 scalar).

    `l2_scale`: the pixel variance of the data when the L2 term is normalised as in the
    VQ-VAE (`loss.normalize_by_data_variance`), else 1.
    """
    diff = reconstructions.astype(jnp.float32) - images.astype(jnp.float32)
    loss = jnp.zeros((), jnp.float32)
    if l1_weight:
        loss = loss + l1_weight * jnp.mean(jnp.abs(diff))
    if l2_weight:
        loss = loss + l2_weight * jnp.mean(jnp.square(diff)) / l2_scale
    return loss


def discriminator_loss(kind: str, real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
    """D's loss on its patch logits of real and reconstructed images."""
    real_logits, fake_logits = real_logits.astype(jnp.float32), fake_logits.astype(jnp.float32)
    if kind == "hinge":
        return 0.5 * (jnp.mean(jax.nn.relu(1.0 - real_logits)) + jnp.mean(jax.nn.relu(1.0 + fake_logits)))
    if kind == "non_saturating":
        return 0.5 * (jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits)))
    raise ValueError(f"Unknown loss.gan_loss={kind!r}; choose one of {list(GAN_LOSSES)}.")


def generator_loss(kind: str, fake_logits: jax.Array) -> jax.Array:
    """The autoencoder's GAN loss on D's patch logits of its reconstructions."""
    fake_logits = fake_logits.astype(jnp.float32)
    if kind == "hinge":
        return -jnp.mean(fake_logits)
    if kind == "non_saturating":
        return jnp.mean(jax.nn.softplus(-fake_logits))
    raise ValueError(f"Unknown loss.gan_loss={kind!r}; choose one of {list(GAN_LOSSES)}.")


def global_norm(tree: Any) -> jax.Array:
    """sqrt(sum of squares) over every leaf, in float32."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def adaptive_weight(rec_grads: Any, gan_grads: Any) -> jax.Array:
    """Eq. (7): ||rec_grads|| / (||gan_grads|| + 1e-4), clipped to [0, 1e4], stop-gradient'ed.

    `rec_grads`, `gan_grads`: the gradients of L_rec and L_GAN with respect to the decoder's last
    layer (any pytree: its kernel, or kernel and bias).
    """
    weight = global_norm(rec_grads) / (global_norm(gan_grads) + ADAPTIVE_WEIGHT_DELTA)
    return jax.lax.stop_gradient(jnp.clip(weight, 0.0, ADAPTIVE_WEIGHT_MAX))


def discriminator_factor(step: jax.Array, disc_start: int, disc_factor: float = 1.0) -> jax.Array:
    """f(t): 0 before `disc_start`, `disc_factor` from it on (taming's `adopt_weight`)."""
    return jnp.where(step >= disc_start, jnp.float32(disc_factor), jnp.float32(0.0))


def lecam_regularizer(
    real_logits: jax.Array, fake_logits: jax.Array, ema_real: jax.Array, ema_fake: jax.Array
) -> jax.Array:
    """R_LC of Tseng et al. 2021, eq. (3): real logits pulled to the fakes' EMA, and vice versa."""
    real_logits, fake_logits = real_logits.astype(jnp.float32), fake_logits.astype(jnp.float32)
    return jnp.mean(jnp.square(real_logits - ema_fake)) + jnp.mean(jnp.square(fake_logits - ema_real))


def check_loss_config(loss: Any) -> None:
    """Clear errors for VQGAN loss fields outside their domain."""
    if loss.gan_loss not in GAN_LOSSES:
        raise ValueError(f"loss.gan_loss={loss.gan_loss!r}; choose one of {list(GAN_LOSSES)}.")
    if not (isinstance(loss.disc_start, int) and loss.disc_start >= 0):
        raise ValueError(
            f"loss.disc_start={loss.disc_start!r} must be an integer >= 0: the step from which the "
            f"discriminator trains and its loss reaches the autoencoder (0: from the first step)."
        )
    for field in (
        "l1_weight",
        "l2_weight",
        "perceptual_weight",
        "disc_weight",
        "disc_factor",
        "lecam_weight",
    ):
        value = loss[field]
        if not (isinstance(value, (int, float)) and value >= 0 and value < float("inf")):
            raise ValueError(f"loss.{field}={value!r} must be a finite number >= 0.")
    if not 0.0 <= loss.lecam_ema_decay < 1.0:
        raise ValueError(f"loss.lecam_ema_decay={loss.lecam_ema_decay!r} must be in [0, 1).")
    if not (loss.l1_weight or loss.l2_weight or loss.perceptual_weight):
        raise ValueError(
            "loss.l1_weight, loss.l2_weight and loss.perceptual_weight are all 0: the autoencoder "
            "would have no reconstruction loss (and the adaptive weight of eq. (7) would be 0); "
            "set --config.loss.l1_weight=1.0."
        )
