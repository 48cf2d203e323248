"""Helpers for the config files in `configs/` (big_vision style `get_config(arg)`).

A config file is `configs/<model>.py` with `get_config(arg)`; the variant is
chosen on the command line as `--config=configs/vqvae.py:mnist` and any field is
overridden as `--config.batch_size=8`. The config is locked, so a misspelt
field is an error.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from vqlatent import quantizers
from vqlatent.data.sources import default_config as default_data_config
from vqlatent.trainers.optim import default_optimizer_config
from vqlatent.utils import compilation_cache


def parse_arg(
    arg: str | None, variants: tuple[str, ...], default: str, **options: Any
) -> tuple[str, dict[str, Any]]:
    """'mnist,quantizer=vq' -> ('mnist', {'quantizer': 'vq'}); validates both parts.

    The first comma-separated item is the variant; the rest are `key=value`
    options whose keys and default values are given as `options`.
    """
    parts = [p for p in (arg or "").split(",") if p]
    variant = default
    if parts and "=" not in parts[0]:
        variant = parts.pop(0)
    if variant not in variants:
        raise ValueError(f"Unknown config variant {variant!r}; choose one of {list(variants)}.")
    values = dict(options)
    for part in parts:
        key, sep, value = part.partition("=")
        if not sep or key not in options:
            raise ValueError(f"Bad config option {part!r}: expected key=value with key in {sorted(options)}.")
        values[key] = type(options[key])(value) if options[key] is not None else value
    return variant, values


# Quantizer presets selectable as `configs/<model>.py:variant,quantizer=NAME`:
# NAME -> (registry name in `vqlatent.quantizers.QUANTIZERS`, field defaults).
# `num_embeddings` is the codebook size per codebook (per stage for residual
# VQ, per group for product VQ); FSQ turns it into levels (Mentzer et al.,
# table 1). The plain names keep exactly their original fields so that
# workdirs made before the variants existed still match their config.
_EMA = dict(commitment_cost=0.25, decay=0.99, epsilon=1e-5)
QUANTIZER_PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "vq": ("vq", dict(commitment_cost=0.25)),
    "vq_ema": ("vq_ema", dict(_EMA)),
    # Dead codes (fewer than 1 input per batch, EMA) re-drawn from the batch.
    "vq_ema_restart": ("vq_ema", dict(_EMA, dead_code_threshold=1.0)),
    # k-means (10 Lloyd steps) on the first batch, plus the restarts.
    "vq_ema_kmeans": ("vq_ema", dict(_EMA, kmeans_init=True, kmeans_iterations=10, dead_code_threshold=1.0)),
    # l2-normalised (cosine) codes (ViT-VQGAN).
    "cosine": ("vq_ema", dict(_EMA, l2_normalize=True)),
    # Factorised 8-dim cosine codes (ViT-VQGAN, section 3.2).
    "factorized": ("vq_ema", dict(_EMA, l2_normalize=True, codebook_dim=8)),
    # Plain EMA VQ with the rotation-trick gradient (Fifty et al. 2024).
    "rotation_trick": ("vq_ema", dict(_EMA, gradient_estimator="rotation_trick")),
    # 4 residual stages, each its own EMA codebook with restarts.
    "residual_vq": (
        "residual_vq",
        dict(_EMA, num_stages=4, shared_codebook=False, dead_code_threshold=1.0, kmeans_init=True),
    ),
    # 4 groups of D/4 channels, one EMA codebook each, with restarts.
    "product_vq": ("product_vq", dict(_EMA, num_groups=4, dead_code_threshold=1.0, kmeans_init=True)),
    "fsq": ("fsq", {}),
    # Lookup-free (MAGVIT-v2): log2(K) sign bits, entropy penalty weight 0.1.
    "lfq": ("lfq", dict(commitment_cost=0.25, entropy_weight=0.1)),
    # Binary spherical (Zhao et al. 2024): LFQ on the unit sphere.
    "bsq": ("bsq", dict(commitment_cost=0.25, entropy_weight=0.1)),
    # Frozen random codebook times one learned linear map (Zhu et al. 2024).
    "simvq": ("simvq", dict(commitment_cost=0.25)),
    # 2 stages of K codes each (FSQ levels / LFQ bits for K), quantize dropout (SoundStream).
    "residual_fsq": ("residual_fsq", dict(num_stages=2, quantize_dropout=True)),
    "residual_lfq": ("residual_lfq", dict(num_stages=2, quantize_dropout=True, entropy_weight=0.1)),
    # EMA VQ sampling codes from softmax(-distance / T) in training, argmin at evaluation.
    "vq_ema_stochastic": ("vq_ema", dict(_EMA, stochastic_temperature=0.1)),
    # EMA VQ with MaskGIT's entropy regulariser on softmax(-distance / 0.01).
    "vq_ema_entropy": ("vq_ema", dict(_EMA, entropy_weight=0.1, entropy_temperature=0.01)),
}


def quantizer_config(
    name: str, num_embeddings: int, embedding_dim: int, **overrides: Any
) -> ml_collections.ConfigDict:
    """A quantizer config holding exactly the fields preset `name` sets.

    `name` is a key of `QUANTIZER_PRESETS` (which includes every registry name
    of `vqlatent.quantizers.QUANTIZERS` that has a preset); `cfg.name` becomes
    the registry name. Codebook quantizers get a `chunk_size` placeholder
    (None: unchunked nearest-code search).
    """
    if name not in QUANTIZER_PRESETS:
        raise ValueError(f"Unknown quantizer {name!r}; choose one of {sorted(QUANTIZER_PRESETS)}.")
    registry_name, defaults = QUANTIZER_PRESETS[name]
    module_fields = quantizers.config_fields(quantizers.QUANTIZERS[registry_name])
    cfg = dict(name=registry_name, embedding_dim=embedding_dim, **defaults)
    if registry_name in ("fsq", "residual_fsq"):
        cfg["levels"] = overrides.pop("levels", None) or quantizers.fsq.levels_for_codebook_size(
            num_embeddings
        )
    else:
        cfg["num_embeddings"] = num_embeddings
    if "chunk_size" in module_fields:
        cfg["chunk_size"] = ml_collections.config_dict.placeholder(int)
    cfg.update(overrides)
    return ml_collections.ConfigDict(cfg)


def data_config(name: str, **overrides: Any) -> ml_collections.ConfigDict:
    cfg = default_data_config()
    cfg.name = name
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


def training_config(
    config: ml_collections.ConfigDict,
    *,
    batch_size: int,
    num_train_steps: int,
    learning_rate: float = 3e-4,
    eval_every_steps: int = 500,
    checkpoint_every_steps: int = 500,
    log_every_steps: int = 50,
    eval_batch_size: int = 256,
) -> ml_collections.ConfigDict:
    """The fields the shared training loop reads (same for every model family)."""
    config.seed = 0
    config.dtype = "float32"
    config.batch_size = batch_size
    config.num_train_steps = num_train_steps
    config.optimizer = default_optimizer_config(learning_rate)
    config.log_every_steps = log_every_steps
    config.eval_every_steps = eval_every_steps
    config.checkpoint_every_steps = checkpoint_every_steps
    config.keep_checkpoints = 2
    config.eval_batch_size = eval_batch_size
    config.eval_num_examples = ml_collections.config_dict.placeholder(int)
    config.progress_bar = True
    # JAX's persistent compilation cache, relative to the workdir ('' leaves JAX's setting alone):
    # a resumed run or another mode in the same workdir reads its compiled programs back.
    config.compilation_cache_dir = compilation_cache.DEFAULT_DIR
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))
    # XLA:GPU's --xla_gpu_deterministic_ops=true (set by vqlatent.main before the backend starts):
    # resumed and sharded runs bit-exact on GPU too. No effect on CPU and TPU (deterministic anyway).
    config.deterministic_ops = True
    return config
