"""A class -> codes -> pixels chain: the priors of every level of a VQ-VAE(-2) and its decoder.

  chain = vqlatent.load("pretrained:mnist_vqvae2_chain")      # or an export, or the top prior's workdir
  out = chain.sample(16, labels=[7] * 16, temperature=1.0, seed=0)
  out.images            # float32 [16, H, W, C] in [0, 1]
  out.codes             # {level: int32 code maps}, what the priors drew

Ancestral sampling (VQ-VAE-2 section 3.3): the top prior draws the top codes given the class, each
lower prior its level given the class and the level above, and the autoencoder decodes them. It is
`vqlatent.priors.generate.sample_images`, the function `--mode=sample` draws with: the same seed,
labels, temperature and batch size give the same codes and images.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import numpy as np

from vqlatent import codes as codes_lib
from vqlatent.codes import layout
from vqlatent.models import batching
from vqlatent.models.autoencoder import Autoencoder
from vqlatent.models.components import Component
from vqlatent.priors import generate, maskgit_sampling
from vqlatent.utils import errors


class SampleOptionError(errors.UserError, ValueError):
    """A bad argument of `PriorChain.sample`."""


@dataclasses.dataclass
class Samples:
    """images: float32 [N, H, W, C] in [0, 1]; codes: {level: int32 maps}; labels: int32 [N] or None."""

    images: np.ndarray
    codes: dict[str, np.ndarray]
    labels: np.ndarray | None


@dataclasses.dataclass
class _Hierarchy:
    """What `generate.sample_images` reads (its `SamplingHierarchy` without the workdirs)."""

    priors: list[dict[str, Any]]
    code_model: Any
    vq_state: Any


class PriorChain:
    """Priors (top first) over the levels of `autoencoder`, sampled through it."""

    family = "prior_chain"

    def __init__(self, autoencoder: Component, priors: list[Component]):
        self.autoencoder = Autoencoder(autoencoder)
        self.priors = priors
        levels = self.autoencoder.code_levels
        by_level = {p.task.level: p for p in priors}
        if priors[0].task.cond_level is not None:
            raise ValueError(
                f"The first prior models level {priors[0].task.level!r} conditioned on "
                f"{priors[0].task.cond_level!r}: a chain starts at the unconditioned top prior."
            )
        missing = sorted(set(levels) - set(by_level))
        if missing:
            raise ValueError(f"No prior for level(s) {missing} of the autoencoder (levels {list(levels)}).")
        for level, prior in by_level.items():
            if level not in levels:
                raise ValueError(
                    f"A prior of level {level!r}, which the autoencoder (levels {list(levels)}) lacks."
                )
            if int(prior.task.model.num_codes) != levels[level].num_codes or tuple(
                prior.task.code_shape
            ) != tuple(levels[level].shape):
                raise ValueError(
                    f"The prior of level {level!r} models {tuple(prior.task.code_shape)} maps of "
                    f"K={int(prior.task.model.num_codes)} codes, the autoencoder has {tuple(levels[level].shape)} "
                    f"maps of K={levels[level].num_codes}: it was trained on another model's codes."
                )
        self.num_classes = priors[0].task.model.num_classes
        self.batch_size = int(priors[0].config.sample.batch_size)
        self._nll: dict[str, Any] = {}
        self._hierarchy = _Hierarchy(
            priors=[p.task.prior_spec(p.state) for p in priors],
            code_model=codes_lib.as_code_model(self.autoencoder.task),
            vq_state=self.autoencoder.state,
        )

    @property
    def components(self) -> list[Component]:
        return [self.autoencoder.component, *self.priors]

    def default_labels(self, n: int) -> np.ndarray | None:
        """0, 1, ..., K-1, 0, 1, ... for a class-conditional chain; None otherwise."""
        return None if not self.num_classes else (np.arange(n) % self.num_classes).astype(np.int32)

    def sample(
        self,
        n: int,
        labels: Any = None,
        temperature: float = 1.0,
        seed: int = 0,
        batch_size: int | None = None,
        num_steps: int | None = None,
        choice_temperature: float | None = None,
    ) -> Samples:
        """Draws `n` images (and their codes) for `labels` (default: the classes in turn).

        `num_steps` sets the decoding steps T of every MaskGIT prior of the chain and
        `choice_temperature` the scale of the Gumbel noise on their confidences (0: greedy; default:
        each prior's `config.sample` options); a chain without a MaskGIT prior refuses them.
        """
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise SampleOptionError(f"sample(n={n!r}): n must be an integer >= 1.")
        if isinstance(temperature, bool) or not np.isfinite(temperature) or temperature <= 0:
            raise SampleOptionError(f"sample(temperature={temperature!r}): must be a finite number > 0.")
        if labels is None:
            labels = self.default_labels(int(n))
        elif not self.num_classes:
            raise SampleOptionError(
                "labels given, but the top prior is not class-conditional: leave labels=None."
            )
        else:
            labels = np.broadcast_to(np.asarray(labels), (int(n),)).astype(np.int64)
            if labels.min() < 0 or labels.max() >= self.num_classes:
                raise SampleOptionError(
                    f"labels in [{labels.min()}, {labels.max()}]: the prior has {self.num_classes} classes "
                    f"(0..{self.num_classes - 1})."
                )
            labels = labels.astype(np.int32)
        draw = labels if labels is not None else np.zeros((int(n),), np.int32)
        codes, images = generate.sample_images(
            self._with_decode_options(num_steps, choice_temperature),
            draw,
            jax.random.PRNGKey(int(seed)),
            float(temperature),
            int(batch_size or self.batch_size),
        )
        return Samples(images=images.astype(np.float32), codes=codes, labels=labels)

    def _with_decode_options(self, num_steps: int | None, choice_temperature: float | None) -> _Hierarchy:
        options = {
            k: v
            for k, v in (("num_steps", num_steps), ("choice_temperature", choice_temperature))
            if v is not None
        }
        if not options:
            return self._hierarchy
        kinds = [spec.get("kind", "pixelcnn") for spec in self._hierarchy.priors]
        if "maskgit" not in kinds:
            given = ", ".join(f"{k}={v!r}" for k, v in options.items())
            raise SampleOptionError(
                f"sample({given}): only MaskGIT priors take decoding options, and this chain's priors "
                f"are {kinds}; leave {' and '.join(options)} None."
            )
        maskgit_sampling.check_decode_options(
            options.get("num_steps", 1), options.get("choice_temperature", 1.0), "cosine"
        )
        options = {k: (int(v) if k == "num_steps" else float(v)) for k, v in options.items()}
        priors = [
            {**spec, "decode": {**spec["decode"], **options}} if spec.get("kind") == "maskgit" else spec
            for spec in self._hierarchy.priors
        ]
        return dataclasses.replace(self._hierarchy, priors=priors)

    def bits_per_code(self, codes: Any, labels: Any = None) -> dict[str, np.ndarray]:
        """{level: (B,) mean -log2 p(code) over the level's positions} of each prior (eq. 1 of the
        PixelCNN), for code hierarchies such as `autoencoder.encode` gives, with their labels.
        Priors without a tractable likelihood (MaskGIT: `task.has_likelihood` False) are left out."""
        codes = self.autoencoder.check_codes(codes)
        n = len(codes[self.autoencoder.level_names[0]])
        if labels is None:
            if self.num_classes:
                raise SampleOptionError("bits_per_code of a class-conditional chain needs the labels.")
            labels = np.zeros((n,), np.int32)
        batch = {**{layout.code_key(k): v for k, v in codes.items()}, "label": np.asarray(labels, np.int32)}
        out = {}
        for prior in self.priors:
            if not getattr(prior.task, "has_likelihood", True):
                continue
            if prior.task.level not in self._nll:
                self._nll[prior.task.level] = jax.jit(prior.task.nll_per_example)
            nll = batching.run_bucketed(
                functools.partial(self._nll[prior.task.level], prior.state.params),
                batch,
                self.autoencoder.max_batch,
            )
            out[prior.task.level] = nll / np.log(2.0)
        return out

    def __repr__(self) -> str:
        priors = ", ".join(f"{p.task.level} {'x'.join(map(str, p.task.code_shape))}" for p in self.priors)
        return f"PriorChain(priors: {priors}; classes {self.num_classes}; {self.autoencoder!r})"
