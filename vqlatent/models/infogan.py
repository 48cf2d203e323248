"""A trained InfoGAN (Chen et al. 2016) as a generator with controllable codes and as an encoder.

  gan = vqlatent.load("pretrained:digits_infogan")
  images = gan.generate(categorical=[3] * 8, continuous=[[-1.0, 0.0]] * 8, seed=0)   # G(z, c)
  codes = gan.infer(real_images)     # Q(c | x): the category and the continuous codes of real images

`generate` draws z (and every code not given) from the priors with `seed`, the same way training does
(`vqlatent.infogan.latents.sample_latents`), then sets the given codes; G runs in evaluation mode
(BatchNorm running averages). `infer` runs D's trunk and the Q head on images of the training shape.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vqlatent import infogan as ig
from vqlatent.data.device import images_to_float
from vqlatent.models import batching
from vqlatent.models.autoencoder import ImageInputError, check_images
from vqlatent.models.components import Component
from vqlatent.utils import errors


class LatentInputError(errors.UserError, ValueError):
    """Codes of a shape or range the generator does not take."""


class InfoGAN:
    """generate / infer of a trained InfoGAN (see the module docstring)."""

    family = "infogan"

    def __init__(self, component: Component, max_batch: int = batching.DEFAULT_MAX_BATCH):
        self.component = component
        self.task = component.task
        self.state = component.state
        self.max_batch = int(max_batch)
        self.latent_spec: ig.LatentSpec = self.task.latent_spec
        self.image_shape: tuple[int, int, int] = tuple(int(s) for s in component.spec.image_shape)
        self._generate = jax.jit(self.task.generate)

        def infer(state, images):
            variables = self.task._variables(state, "discriminator")  # pylint: disable=protected-access
            out = self.task.discriminator.apply(variables, images_to_float(images), train=False)
            posterior = self.task.q_posterior(out["q_outputs"])
            return {
                "categorical_probs": [jax.nn.softmax(l, axis=-1) for l in posterior.categorical_logits],
                "continuous": posterior.continuous_mean,
                "continuous_std": jnp.exp(posterior.continuous_log_std),
                "real_prob": jax.nn.sigmoid(out["d_logits"].reshape(-1)),
            }

        self._infer = jax.jit(infer)

    def latents(self, n: int | None = None, categorical: Any = None, continuous: Any = None, seed: int = 0):
        """The Latents of `generate` (z and the codes not given drawn from `seed`)."""
        spec = self.latent_spec
        sizes = [np.shape(x)[0] for x in (categorical, continuous) if x is not None and np.ndim(x) >= 1]
        if n is None:
            n = sizes[0] if sizes else 1
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise LatentInputError(f"n={n!r}: must be an integer >= 1.")
        latents = ig.sample_latents(jax.random.PRNGKey(int(seed)), spec, int(n))
        if categorical is not None:
            if not spec.num_categorical:
                raise LatentInputError("categorical given, but the model has no categorical code.")
            cat = np.asarray(categorical)
            if cat.ndim <= 1:  # One value per image (or one for all) for the first categorical code...
                cat = np.asarray(latents.categorical).copy()
                cat[:, 0] = np.broadcast_to(np.asarray(categorical), (n,))
            try:
                cat = np.broadcast_to(cat, (n, spec.num_categorical))
            except ValueError:
                raise LatentInputError(
                    f"categorical of shape {np.shape(categorical)}: give [n] (the first code) or "
                    f"[n, {spec.num_categorical}] category indices."
                ) from None
            if not np.issubdtype(cat.dtype, np.integer):
                raise LatentInputError(f"categorical of dtype {cat.dtype}: give integer category indices.")
            for i, k in enumerate(spec.categorical_sizes):
                if cat[:, i].min() < 0 or cat[:, i].max() >= k:
                    raise LatentInputError(
                        f"categorical code {i} in [{cat[:, i].min()}, {cat[:, i].max()}]: it has {k} "
                        f"categories (0..{k - 1})."
                    )
            latents = latents.replace(categorical=jnp.asarray(cat, jnp.int32))
        if continuous is not None:
            if not spec.num_continuous:
                raise LatentInputError("continuous given, but the model has no continuous code.")
            try:
                cont = np.broadcast_to(np.asarray(continuous, np.float32), (n, spec.num_continuous))
            except ValueError:
                raise LatentInputError(
                    f"continuous of shape {np.shape(continuous)}: give [{spec.num_continuous}] or "
                    f"[n, {spec.num_continuous}] values (trained on {spec.continuous_range})."
                ) from None
            if not np.all(np.isfinite(cont)):
                raise LatentInputError("continuous holds non-finite values.")
            latents = latents.replace(continuous=jnp.asarray(cont))
        return latents

    def generate(
        self, categorical: Any = None, continuous: Any = None, n: int | None = None, seed: int = 0
    ) -> np.ndarray:
        """G(z, c): float32 images [n, H, W, C] in [0, 1] (n from the codes given, else 1)."""
        latents = self.latents(n, categorical, continuous, seed)
        return np.asarray(jax.device_get(self._generate(self.state, latents)), np.float32)

    def infer(self, images: Any) -> dict[str, Any]:
        """Q(c | x) of images of the training shape: 'categorical' [B, num_categorical] (argmax),
        'categorical_probs' (one [B, K_i] per code), 'continuous' (Q's mean) and 'continuous_std'
        [B, num_continuous], and 'real_prob' (D's probability that each image is real)."""
        h, w, c = self.image_shape
        images = check_images(images, c, 1, (h, w))
        if images.shape[1:3] != (h, w):
            raise ImageInputError(
                f"Images of {images.shape[1]}x{images.shape[2]} pixels: the InfoGAN's discriminator takes "
                f"exactly {h}x{w}x{c} (dense layers). Resize them first."
            )
        out = batching.run_bucketed(lambda x: self._infer(self.state, x), images, self.max_batch)
        out["categorical"] = (
            np.stack([np.argmax(p, axis=-1) for p in out["categorical_probs"]], axis=-1).astype(np.int32)
            if out["categorical_probs"]
            else np.zeros((len(images), 0), np.int32)
        )
        return out

    def __repr__(self) -> str:
        s = self.latent_spec
        h, w, c = self.image_shape
        return (
            f"InfoGAN({h}x{w}x{c}; noise {s.noise_dim}, categorical {list(s.categorical_sizes)}, "
            f"continuous {s.num_continuous}; step {self.component.step})"
        )
