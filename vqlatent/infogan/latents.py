"""InfoGAN's latent space: incompressible noise z and the latent codes c.

Chen et al. 2016 ("InfoGAN: Interpretable Representation Learning by
Information Maximizing Generative Adversarial Nets", section 4) split the
generator input into noise z, which the generator may use freely, and latent
codes c = (c_1, ..., c_L) with a factored prior P(c) = prod_i P(c_i), whose
mutual information with the generated image is maximised. The codes here are

  * categorical: c_i ~ Cat(K_i, p = 1/K_i), fed to the generator one-hot;
  * continuous:  c_j ~ Unif(low, high) (the paper's MNIST setting: Unif(-1, 1)).

`LatentSpec` describes them; the functions sample them, build the generator
input, and give the prior entropies H(c_i) that bound the mutual information.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp

NOISE_DISTRIBUTIONS = ("uniform", "normal")


class LatentSpecError(ValueError):
    """A latent specification that cannot be sampled or does not fit the use."""


@dataclasses.dataclass(frozen=True)
class LatentSpec:
    """Noise and codes of the generator input (frozen: usable as a static jit argument).

    Attributes:
      noise_dim: dimension of the incompressible noise z.
      noise_distribution: 'uniform' (on [-1, 1], as in the paper's released code)
        or 'normal' (standard normal).
      categorical_sizes: K_i of each categorical code (each at least 2).
      num_continuous: number of continuous codes.
      continuous_range: (low, high) of the uniform prior of the continuous codes.
    """

    noise_dim: int
    noise_distribution: str = "uniform"
    categorical_sizes: tuple[int, ...] = ()
    num_continuous: int = 0
    continuous_range: tuple[float, float] = (-1.0, 1.0)

    def __post_init__(self):
        prefix = "model.latent"
        if self.noise_dim < 0:
            raise LatentSpecError(f"{prefix}.noise_dim={self.noise_dim} must be >= 0.")
        if self.noise_distribution not in NOISE_DISTRIBUTIONS:
            raise LatentSpecError(
                f"Unknown {prefix}.noise_distribution={self.noise_distribution!r}; "
                f"choose one of {NOISE_DISTRIBUTIONS}."
            )
        for i, size in enumerate(self.categorical_sizes):
            if int(size) != size or size < 2:
                raise LatentSpecError(
                    f"{prefix}.categorical_sizes[{i}]={size!r}: a categorical code needs an integer number "
                    f"of categories >= 2 (a 1-way code carries no information)."
                )
        if self.num_continuous < 0:
            raise LatentSpecError(f"{prefix}.num_continuous={self.num_continuous} must be >= 0.")
        if len(self.continuous_range) != 2:
            raise LatentSpecError(f"{prefix}.continuous_range={self.continuous_range!r} must be (low, high).")
        low, high = self.continuous_range
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise LatentSpecError(
                f"{prefix}.continuous_range={tuple(self.continuous_range)!r} is empty or unbounded: "
                f"the uniform prior of the continuous codes needs finite low < high, e.g. (-1.0, 1.0)."
            )

    @property
    def num_categorical(self) -> int:
        return len(self.categorical_sizes)

    @property
    def num_codes(self) -> int:
        return self.num_categorical + self.num_continuous

    @property
    def input_dim(self) -> int:
        """Width of the generator input: noise, one-hot categorical codes, continuous codes."""
        return self.noise_dim + sum(self.categorical_sizes) + self.num_continuous

    def code_names(self) -> list[str]:
        """'cat0', 'cat1', ..., 'cont0', ...: the names used in metrics and grids."""
        return [f"cat{i}" for i in range(self.num_categorical)] + [
            f"cont{j}" for j in range(self.num_continuous)
        ]


def latent_spec_from_config(cfg: Mapping[str, Any]) -> LatentSpec:
    """`config.model.latent` -> LatentSpec (validated)."""
    known = {f.name for f in dataclasses.fields(LatentSpec)}
    unknown = sorted(set(cfg.keys()) - known)
    if unknown:
        raise LatentSpecError(f"Unknown field(s) {unknown} in model.latent; known: {sorted(known)}.")
    return LatentSpec(
        noise_dim=int(cfg["noise_dim"]),
        noise_distribution=str(cfg.get("noise_distribution", "uniform")),
        categorical_sizes=tuple(cfg.get("categorical_sizes", ()) or ()),
        num_continuous=int(cfg.get("num_continuous", 0)),
        continuous_range=tuple(float(v) for v in cfg.get("continuous_range", (-1.0, 1.0))),
    )


def require_codes(
    spec: LatentSpec,
    *,
    categorical: int = 0,
    continuous: int = 0,
    any_code: bool = False,
    purpose: str = "this",
) -> None:
    """Raises a LatentSpecError naming `purpose` when the spec lacks the codes it needs."""
    if any_code and spec.num_codes == 0:
        raise LatentSpecError(
            f"The latent spec has no codes (model.latent.categorical_sizes=() and "
            f"model.latent.num_continuous=0), but {purpose} needs at least one: add one, e.g. "
            f"--config.model.latent.categorical_sizes='(10,)'."
        )
    if spec.num_categorical < categorical:
        raise LatentSpecError(
            f"{purpose} needs {categorical} categorical code(s) but model.latent.categorical_sizes="
            f"{spec.categorical_sizes!r} has {spec.num_categorical}."
        )
    if spec.num_continuous < continuous:
        raise LatentSpecError(
            f"{purpose} needs {continuous} continuous code(s) but model.latent.num_continuous="
            f"{spec.num_continuous}."
        )


@flax.struct.dataclass
class Latents:
    """One draw of (z, c) for a batch.

    Attributes:
      noise: (B, noise_dim) float32.
      categorical: (B, num_categorical) int32 category indices.
      continuous: (B, num_continuous) float32.
    """

    noise: jax.Array
    categorical: jax.Array
    continuous: jax.Array


def sample_latents(rng: jax.Array, spec: LatentSpec, batch_size: int) -> Latents:
    """Draws z ~ P(z) and c ~ P(c) = prod_i P(c_i), independently for each example.

    All coordinates come from ONE uniform draw u in (0, 1), mapped by inverse CDFs:
    noise 2u - 1 (uniform) or Phi^-1(u) (normal), category floor(K u), continuous
    low + (high - low) u. The distributions are exactly those of separate draws; one
    draw matters on XLA:CPU, which compiles every random-number kernel separately
    (a fraction of a second each), once per jitted function that samples.
    """
    width = spec.noise_dim + spec.num_categorical + spec.num_continuous
    # (0, 1) rather than [0, 1): Phi^-1(0) = -inf.
    u = jax.random.uniform(rng, (batch_size, width), minval=jnp.finfo(jnp.float32).tiny, maxval=1.0)
    u_noise = u[:, : spec.noise_dim]
    u_cat = u[:, spec.noise_dim : spec.noise_dim + spec.num_categorical]
    u_cont = u[:, spec.noise_dim + spec.num_categorical :]
    if spec.noise_distribution == "uniform":
        noise = 2.0 * u_noise - 1.0
    else:
        noise = jax.scipy.special.ndtri(u_noise)
    sizes = jnp.asarray(spec.categorical_sizes, jnp.float32).reshape(1, spec.num_categorical)
    categorical = jnp.minimum(jnp.floor(u_cat * sizes), sizes - 1).astype(jnp.int32)
    low, high = spec.continuous_range
    continuous = low + (high - low) * u_cont
    return Latents(noise=noise, categorical=categorical, continuous=continuous)


def generator_input(spec: LatentSpec, latents: Latents) -> jax.Array:
    """(B, input_dim): [z, one_hot(c_1), ..., one_hot(c_I), c_cont] (paper section 4)."""
    parts = [latents.noise.astype(jnp.float32)]
    for i, k in enumerate(spec.categorical_sizes):
        parts.append(jax.nn.one_hot(latents.categorical[:, i], k, dtype=jnp.float32))
    parts.append(latents.continuous.astype(jnp.float32))
    return jnp.concatenate(parts, axis=1)


def code_entropies(spec: LatentSpec) -> dict[str, float]:
    """H(c_i) of each code's prior, the value L_I reaches when Q is exact and G keeps c.

    Categorical with K uniform categories: ln K (ln 10 = 2.303 for the paper's MNIST
    code). Continuous uniform on [low, high]: the differential entropy ln(high - low)
    (ln 2 = 0.693 on [-1, 1]); unlike the discrete case it does not bound L_I, which
    grows without limit as Q's Gaussian narrows.
    """
    low, high = spec.continuous_range
    out = {f"cat{i}": math.log(k) for i, k in enumerate(spec.categorical_sizes)}
    out.update({f"cont{j}": math.log(high - low) for j in range(spec.num_continuous)})
    return out
