"""InfoGAN's objective: the GAN game plus the variational mutual-information bound.

Chen et al. 2016, eq. (6):

  min_{G,Q} max_D  V_InfoGAN(D, G, Q) = V(D, G) - lambda L_I(G, Q)

with the lower bound of eq. (5) (Lemma 5.1), for each code c_i:

  L_I(G, Q) = E_{c ~ P(c), x ~ G(z, c)}[log Q(c | x)] + H(c)  <=  I(c; G(z, c)).

Q is a factored posterior: a softmax over the K categories of a categorical code
and a factored Gaussian N(mu(x), sigma(x)^2) for a continuous code (section 6),
with sigma either learned (Q outputs log sigma) or fixed.

V(D, G) is played with the non-saturating generator loss (Goodfellow et al. 2014,
section 3; used by the paper's released code):

  D minimises  -E_x[log D(x)] - E_z[log(1 - D(G(z)))]
  G minimises  -E_z[log D(G(z))]

written with logits, log D = -softplus(-l) and log(1 - D) = -softplus(l), which
is exact and never takes the log of 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import flax
import jax
import jax.numpy as jnp

from vqlatent.infogan.latents import Latents, LatentSpec

CONTINUOUS_STD_MODES = ("learned", "fixed")


# -- log-likelihoods -----------------------------------------------------------


def categorical_log_likelihood(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """log Q(c = labels | x) = log softmax(logits)[labels]; (B, K), (B,) -> (B,)."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(log_probs, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]


def gaussian_log_likelihood(x: jax.Array, mean: jax.Array, log_std: jax.Array) -> jax.Array:
    """log N(x; mean, exp(log_std)^2), elementwise:

    -0.5 log(2 pi) - log sigma - (x - mean)^2 / (2 sigma^2).
    """
    x, mean, log_std = (a.astype(jnp.float32) for a in (x, mean, log_std))
    return -0.5 * math.log(2.0 * math.pi) - log_std - 0.5 * jnp.square((x - mean) * jnp.exp(-log_std))


# -- Q's outputs ---------------------------------------------------------------


def q_output_dim(spec: LatentSpec, continuous_std: str) -> int:
    """Width of Q's last layer: K_i logits per categorical code, then the continuous
    means, then (for a learned std) their log standard deviations."""
    check_continuous_std(continuous_std)
    per_continuous = 2 if continuous_std == "learned" else 1
    return sum(spec.categorical_sizes) + per_continuous * spec.num_continuous


def check_continuous_std(continuous_std: str, fixed_std: float = 1.0) -> None:
    if continuous_std not in CONTINUOUS_STD_MODES:
        raise ValueError(
            f"Unknown model.q.continuous_std={continuous_std!r}; choose one of {CONTINUOUS_STD_MODES}."
        )
    if continuous_std == "fixed" and not (fixed_std > 0 and math.isfinite(fixed_std)):
        raise ValueError(f"model.q.fixed_std={fixed_std!r} must be a positive number.")


@flax.struct.dataclass
class Posterior:
    """Q(c | x) for a batch, split per code.

    Attributes:
      categorical_logits: one (B, K_i) array per categorical code.
      continuous_mean: (B, num_continuous).
      continuous_log_std: (B, num_continuous).
    """

    categorical_logits: tuple[jax.Array, ...]
    continuous_mean: jax.Array
    continuous_log_std: jax.Array


def split_q_outputs(
    spec: LatentSpec, q_outputs: jax.Array, continuous_std: str, fixed_std: float = 1.0
) -> Posterior:
    """Q's flat (B, q_output_dim) outputs -> Posterior (layout of `q_output_dim`)."""
    expected = q_output_dim(spec, continuous_std)
    if q_outputs.shape[-1] != expected:
        raise ValueError(f"Q has {q_outputs.shape[-1]} outputs but the latent spec needs {expected}.")
    q_outputs = q_outputs.astype(jnp.float32)
    logits, offset = [], 0
    for k in spec.categorical_sizes:
        logits.append(q_outputs[:, offset : offset + k])
        offset += k
    n = spec.num_continuous
    mean = q_outputs[:, offset : offset + n]
    if continuous_std == "learned":
        log_std = q_outputs[:, offset + n : offset + 2 * n]
    else:
        log_std = jnp.full_like(mean, math.log(fixed_std))
    return Posterior(categorical_logits=tuple(logits), continuous_mean=mean, continuous_log_std=log_std)


def code_log_likelihoods(spec: LatentSpec, posterior: Posterior, latents: Latents) -> dict[str, jax.Array]:
    """log Q(c_i | x) for every code, per example: {'cat0': (B,), ..., 'cont0': (B,), ...}."""
    out = {}
    for i in range(spec.num_categorical):
        out[f"cat{i}"] = categorical_log_likelihood(
            posterior.categorical_logits[i], latents.categorical[:, i]
        )
    if spec.num_continuous:
        per_code = gaussian_log_likelihood(
            latents.continuous, posterior.continuous_mean, posterior.continuous_log_std
        )
        for j in range(spec.num_continuous):
            out[f"cont{j}"] = per_code[:, j]
    return out


# -- the bound and the losses ----------------------------------------------------


def mutual_information_lower_bounds(
    log_likelihoods: Mapping[str, jax.Array], entropies: Mapping[str, float]
) -> dict[str, jax.Array]:
    """Eq. (5) per code: L_I(c_i) = mean_b log Q(c_i^b | x^b) + H(c_i)."""
    return {name: jnp.mean(ll) + entropies[name] for name, ll in log_likelihoods.items()}


def code_weights(spec: LatentSpec, lambda_categorical: float, lambda_continuous: float) -> dict[str, float]:
    """lambda of each code (the paper: 1 for categorical codes, smaller for continuous ones)."""
    return {
        name: (lambda_categorical if name.startswith("cat") else lambda_continuous)
        for name in spec.code_names()
    }


def info_loss(log_likelihoods: Mapping[str, jax.Array], weights: Mapping[str, float]) -> jax.Array:
    """-sum_i lambda_i E[log Q(c_i | x)]: the term -lambda L_I of eq. (6) without the
    constant H(c), which has no gradient."""
    total = jnp.zeros((), jnp.float32)
    for name, ll in log_likelihoods.items():
        total = total - weights[name] * jnp.mean(ll)
    return total


def discriminator_gan_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
    """-E[log D(x)] - E[log(1 - D(G(z)))] with D = sigmoid(logits)."""
    return jnp.mean(jax.nn.softplus(-real_logits.astype(jnp.float32))) + jnp.mean(
        jax.nn.softplus(fake_logits.astype(jnp.float32))
    )


def generator_gan_loss(fake_logits: jax.Array) -> jax.Array:
    """Non-saturating: -E[log D(G(z))]."""
    return jnp.mean(jax.nn.softplus(-fake_logits.astype(jnp.float32)))
