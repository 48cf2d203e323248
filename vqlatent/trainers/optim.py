"""Optimizers from the config (optax)."""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import optax


def make_optimizer(cfg: ml_collections.ConfigDict, num_train_steps: int) -> optax.GradientTransformation:
    """Adam/AdamW with an optional warmup + cosine schedule and gradient clipping.

    Fields: name ('adam' | 'adamw'), learning_rate, b1, b2, eps, weight_decay,
    schedule ('constant' | 'cosine'), warmup_steps, grad_clip_norm (0 = off), and
    lr_multipliers ('' = none): 'NAME=M[,NAME=M...]' multiplies the learning rate of every
    parameter with a module or parameter called NAME on its path by M (e.g.
    'codebook_transform=10', SimVQ's linear map). Adam's and AdamW's updates are linear in the
    learning rate, so scaling a leaf's update by M (`optax.masked(optax.scale(M), ...)` after the
    optimizer) is that leaf trained at M times the rate; a parameter under several NAMEs gets the
    product.
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
    multipliers = parse_lr_multipliers(cfg.get("lr_multipliers", ""))
    if multipliers:
        tx = optax.chain(
            tx, *(optax.masked(optax.scale(m), _path_mask(name)) for name, m in multipliers.items())
        )
    return tx


def parse_lr_multipliers(spec: str) -> dict[str, float]:
    """'NAME=M,NAME2=M2' -> {NAME: M, ...}; '' -> {}. Clear errors for anything else."""
    out: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in (spec or "").split(","))):
        name, sep, value = item.partition("=")
        try:
            multiplier = float(value) if sep else float("nan")
        except ValueError:
            multiplier = float("nan")
        if not name.strip() or not multiplier > 0 or multiplier == float("inf"):
            raise ValueError(
                f"optimizer.lr_multipliers={spec!r}: {item!r} is not NAME=M with a positive finite M "
                f"(e.g. 'codebook_transform=10')."
            )
        if name.strip() in out:
            raise ValueError(f"optimizer.lr_multipliers={spec!r} names {name.strip()!r} twice.")
        out[name.strip()] = multiplier
    return out


def _path_names(path) -> list[str]:
    return [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]


def _path_mask(name: str):
    """params -> a tree of bools: True where `name` is one of the leaf's path components."""

    def mask(params: Any) -> Any:
        flags = jax.tree_util.tree_map_with_path(lambda path, _: name in _path_names(path), params)
        if not any(jax.tree_util.tree_leaves(flags)):
            modules = sorted(
                {n for path, _ in jax.tree_util.tree_leaves_with_path(params) for n in _path_names(path)}
            )
            raise ValueError(
                f"optimizer.lr_multipliers names {name!r}, which is on no parameter's path; the names "
                f"there are: {', '.join(modules)}."
            )
        return flags

    return mask


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
            lr_multipliers="",
        )
    )
