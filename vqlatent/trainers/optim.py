"""Optimizers from the config (optax)."""

from __future__ import annotations

import ml_collections
import optax


def make_optimizer(cfg: ml_collections.ConfigDict, num_train_steps: int) -> optax.GradientTransformation:
    """Adam/AdamW with an optional warmup + cosine schedule and gradient clipping.

    Fields: name ('adam' | 'adamw'), learning_rate, b1, b2, eps, weight_decay,
    schedule ('constant' | 'cosine'), warmup_steps, grad_clip_norm (0 = off).
    """
    if cfg.schedule == "constant":  # linear_schedule holds its end value after the warmup.
        lr = (
            optax.linear_schedule(0.0, cfg.learning_rate, cfg.warmup_steps)
            if cfg.warmup_steps
            else cfg.learning_rate
        )
    elif cfg.schedule == "cosine":
        lr = optax.warmup_cosine_decay_schedule(
            0.0, cfg.learning_rate, cfg.warmup_steps, max(num_train_steps, cfg.warmup_steps + 1)
        )
    else:
        raise ValueError(f"Unknown optimizer.schedule={cfg.schedule!r}; choose 'constant' or 'cosine'.")
    if cfg.name == "adam":
        tx = optax.adam(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
    elif cfg.name == "adamw":
        tx = optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)
    else:
        raise ValueError(f"Unknown optimizer.name={cfg.name!r}; choose 'adam' or 'adamw'.")
    if cfg.grad_clip_norm:
        tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), tx)
    return tx


def default_optimizer_config(learning_rate: float = 3e-4, b1: float = 0.9) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            name="adam",
            learning_rate=learning_rate,
            b1=b1,
            b2=0.999,
            eps=1e-8,
            weight_decay=0.0,
            schedule="constant",
            warmup_steps=0,
            grad_clip_norm=0.0,
        )
    )
