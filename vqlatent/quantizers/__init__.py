"""Vector quantisers: pure functions, thin linen modules, and a registry.

Pure functions (no Flax), each file one idea:

  search.py       distances ``|x|^2 - 2 x.e + |e|^2``, the (two-level) argmin, chunked nearest code
  estimators.py   straight-through and the rotation trick (the gradient through the assignment)
  statistics.py   the eq. (3) loss terms, code counts (int32 for metrics), perplexity
  ema.py          EMA codebook update (appendix A.1), k-means initialisation, dead-code restarts
  fsq.py          finite scalar quantisation (bound, round, mixed-radix indices)
  diagnostics.py  codebook health: usage summary and a usage histogram image

Linen modules (`base.Quantizer` / `base.EMAQuantizer`), all with the same call signature
``module(inputs, train=..., mask=None)`` and the same output keys (`COMMON_OUTPUT_KEYS`), a
``lookup(indices)`` that inverts ``encoding_indices``, and the properties ``num_codebooks`` /
``codebook_size``:

  ==========  =====================  ===========================================
  name        module                 encoding_indices
  ==========  =====================  ===========================================
  vq          VectorQuantizer        ``inputs.shape[:-1]``, in [0, K)
  vq_ema      VectorQuantizerEMA     ``inputs.shape[:-1]``, in [0, K)
  residual_vq ResidualVQ             ``inputs.shape[:-1] + (stages,)``
  product_vq  ProductVQ              ``inputs.shape[:-1] + (groups,)``
  fsq         FSQ                    ``inputs.shape[:-1]``, in [0, prod(levels))
  lfq         LFQ                    ``inputs.shape[:-1]``, in [0, 2^bits)
  bsq         BSQ                    ``inputs.shape[:-1]``, in [0, 2^bits)
  simvq       SimVQ                  ``inputs.shape[:-1]``, in [0, K)
  residual_fsq ResidualFSQ           ``inputs.shape[:-1] + (stages,)``
  residual_lfq ResidualLFQ           ``inputs.shape[:-1] + (stages,)``
  ==========  =====================  ===========================================

Options of the distance-based VQ modules: ``stochastic_temperature`` (sample the code from
``softmax(-d / T)`` in training), ``entropy_weight`` (MaskGIT-style entropy regulariser); of the
residual ones: ``quantize_dropout`` (SoundStream).

Build a quantiser from a config::

  cfg = ml_collections.ConfigDict(
      dict(name='vq_ema', num_embeddings=512, embedding_dim=64))
  quantizer = make_quantizer(cfg)

New quantisers register themselves with `register_quantizer`; their dataclass
fields become the accepted config keys.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn

from vqlatent.quantizers import base, diagnostics, ema, estimators, fsq, search, statistics
from vqlatent.quantizers.base import (
    COMMON_OUTPUT_KEYS,
    EMA_COLLECTION,
    QUANTIZER_RNG,
    Quantizer,
    uniform_codebook_init,
)
from vqlatent.quantizers.estimators import rotation_trick, straight_through
from vqlatent.quantizers.fsq import FSQ
from vqlatent.quantizers.lfq import BSQ, LFQ
from vqlatent.quantizers.product import ProductVQ
from vqlatent.quantizers.residual import ResidualVQ
from vqlatent.quantizers.residual_scalar import ResidualFSQ, ResidualLFQ
from vqlatent.quantizers.simvq import SimVQ
from vqlatent.quantizers.statistics import code_counts_per_codebook
from vqlatent.quantizers.vq import VectorQuantizer, VectorQuantizerEMA

QUANTIZERS: dict[str, type[nn.Module]] = {
    "vq": VectorQuantizer,
    "vq_ema": VectorQuantizerEMA,
    "residual_vq": ResidualVQ,
    "product_vq": ProductVQ,
    "fsq": FSQ,
    "lfq": LFQ,
    "bsq": BSQ,
    "simvq": SimVQ,
    "residual_fsq": ResidualFSQ,
    "residual_lfq": ResidualLFQ,
}

# Dataclass fields every linen Module has; not quantiser configuration.
_LINEN_FIELDS = frozenset({"parent", "name"})


def register_quantizer(name: str, module_class: type[nn.Module]) -> None:
    """Adds ``module_class`` to `QUANTIZERS` under ``name`` (must be new)."""
    if name in QUANTIZERS:
        raise ValueError(f"quantizer {name!r} is already registered ({QUANTIZERS[name].__name__}).")
    QUANTIZERS[name] = module_class


def config_fields(module_class: type[nn.Module]) -> list[str]:
    """The config keys a quantiser accepts (its fields minus parent/name): its positional fields
    first, then the keyword-only ones (e.g. the EMA quantisers' shared fields of `base.EMAQuantizer`)."""
    fields = [f for f in dataclasses.fields(module_class) if f.init and f.name not in _LINEN_FIELDS]
    return [field.name for field in sorted(fields, key=lambda f: f.kw_only is True)]


def make_quantizer(cfg: Any, *, module_name: str | None = None) -> nn.Module:
    """Builds the quantiser named ``cfg.name`` with the remaining keys as fields.

    Args:
      cfg: an ``ml_collections.ConfigDict`` (or any mapping) with ``name`` (a key
        of `QUANTIZERS`) and the module's fields, e.g. ``num_embeddings``,
        ``embedding_dim``, ``commitment_cost``. Unknown keys are an error (a
        typo would otherwise silently fall back to a default).
      module_name: optional Flax module name (the ``name`` linen field, which
        ``cfg.name`` cannot set because it selects the quantiser).

    Returns:
      An unbound linen module.

    Raises:
      ValueError: unknown quantiser name, missing ``name``, unknown config keys,
        or invalid field values.
    """
    if hasattr(cfg, "to_dict"):
        cfg = cfg.to_dict()
    if not isinstance(cfg, Mapping):
        raise ValueError(f"quantizer config must be a ConfigDict or mapping, got {type(cfg).__name__}.")
    fields = dict(cfg)
    if "name" not in fields:
        raise ValueError(
            f"quantizer config needs a `name`, one of {sorted(QUANTIZERS)}; got keys {sorted(fields)}."
        )
    quantizer_name = fields.pop("name")
    if quantizer_name not in QUANTIZERS:
        raise ValueError(f"unknown quantizer name {quantizer_name!r}; valid names: {sorted(QUANTIZERS)}.")
    module_class = QUANTIZERS[quantizer_name]
    accepted = config_fields(module_class)
    unknown = sorted(set(fields) - set(accepted))
    if unknown:
        raise ValueError(
            f"unknown config keys {unknown} for quantizer {quantizer_name!r} "
            f"({module_class.__name__}); accepted keys: {accepted}."
        )
    return module_class(**fields, name=module_name)


__all__ = [
    "COMMON_OUTPUT_KEYS",
    "EMA_COLLECTION",
    "BSQ",
    "FSQ",
    "LFQ",
    "ProductVQ",
    "QUANTIZERS",
    "QUANTIZER_RNG",
    "Quantizer",
    "ResidualFSQ",
    "ResidualLFQ",
    "ResidualVQ",
    "SimVQ",
    "VectorQuantizer",
    "VectorQuantizerEMA",
    "base",
    "code_counts_per_codebook",
    "config_fields",
    "diagnostics",
    "ema",
    "estimators",
    "fsq",
    "make_quantizer",
    "register_quantizer",
    "rotation_trick",
    "search",
    "statistics",
    "straight_through",
    "uniform_codebook_init",
]
