"""SimVQ: a frozen random codebook re-parameterised by one learned linear layer.

Zhu et al. (2024), "Addressing Representation Collapse in Vector Quantized Models with One Linear
Layer" (arXiv:2411.02038), section 3: the codes are ``E = C W`` with ``C`` a ``(K, d)`` random
codebook that is never trained and ``W`` a learned ``(d, d)`` linear map (eq. 6). The VQ loss of
eq. (3) (van den Oord et al. 2017) is unchanged::

  loss = |sg[z_e] - C W|^2 + beta |z_e - sg[C W]|^2

but its codebook term now moves ``W``, i.e. the whole space spanned by the codes, instead of only
the selected codes: every code follows the encoder's distribution, so the codebook stays in use
without restarts or EMA. ``C`` lives in the variable collection ``'simvq'`` (not ``'params'``, so no
optimiser or weight decay ever touches it), drawn ``N(0, 1/d)`` at ``init``; ``W`` is the bias-free
Dense layer ``codebook_transform`` in ``'params'``; ``--config.optimizer.lr_multipliers=
codebook_transform=M`` trains it at M times the model's learning rate (docs/lab/quantizers.md).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from vqlatent.quantizers import search, vq

Array = jax.Array

FROZEN_COLLECTION = "simvq"


def frozen_codebook_init(key: Array, shape: tuple[int, int]) -> Array:
    """``N(0, 1/d)`` entries for the ``(K, d)`` frozen codebook ``C``."""
    return jax.random.normal(key, shape, jnp.float32) * shape[-1] ** -0.5


class SimVQ(vq.VectorQuantizer):
    """`VectorQuantizer` whose codes are ``C W``: ``C`` frozen (collection ``'simvq'``), ``W`` learned.

    Same fields, outputs and ``lookup`` as `VectorQuantizer` (``codebook_dim`` factorises and
    ``l2_normalize`` normalises the transformed codes ``C W`` as there).
    """

    def setup(self):
        self.frozen_codebook = self.variable(
            FROZEN_COLLECTION,
            "codebook",
            lambda: frozen_codebook_init(self.make_rng("params"), (self.num_embeddings, self.code_dim)),
        )
        self.codebook_transform = nn.Dense(self.code_dim, use_bias=False, name="codebook_transform")
        self.setup_projections()

    def codes(self) -> Array:
        """The ``(K, d)`` codes ``C W`` (normalised if cosine); ``C`` never receives a gradient."""
        codes = self.codebook_transform(jax.lax.stop_gradient(self.frozen_codebook.value))
        return search.l2_normalize(codes) if self.l2_normalize else codes
