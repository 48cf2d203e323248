"""What a model must offer to have its codes extracted and decoded (VQ-VAE and VQ-VAE-2 alike).

A `CodeModel` has `code_levels` ({level: LevelSpec}, top last) and two pure,
jittable functions of a `TrainState`:

  encode_codes(state, images)  images in [0, 1] (B, H, W, C) -> {level: int (B, *shape)}
  decode_codes(state, codes)   {level: int (B, *shape)} -> images (B, H, W, C)

The VQ-VAE-2 task implements it directly; `as_code_model` adapts the one-level
VQ-VAE task (whose single level is called 'top': the level with an unconditional
prior).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import jax
import numpy as np

from vqlatent.codes import layout


class CodeModel(Protocol):
    code_levels: Mapping[str, layout.LevelSpec]

    def encode_codes(self, state: Any, images: jax.Array) -> dict[str, jax.Array]: ...

    def decode_codes(self, state: Any, codes: Mapping[str, jax.Array]) -> jax.Array: ...


def infer_code_levels(
    task: Any, encode_codes: Callable[[Any, jax.Array], Mapping[str, jax.Array]], num_codes: Mapping[str, int]
) -> dict[str, layout.LevelSpec]:
    """Level shapes from `jax.eval_shape` of the encoder on the task's dummy batch (no compute)."""
    batch = task.dummy_batch(1)
    state = jax.eval_shape(task.init_state, jax.random.PRNGKey(0), batch)
    shapes = jax.eval_shape(encode_codes, state, batch["image"])
    return {
        name: layout.LevelSpec(tuple(int(d) for d in shapes[name].shape[1:]), int(num_codes[name]))
        for name in num_codes
    }


def check_codes(
    codes: Mapping[str, Any], levels: Mapping[str, layout.LevelSpec], what: str = "the model"
) -> None:
    """`CodeShapeError` unless `codes` has exactly the levels of `levels` with their shapes."""
    if set(codes) != set(levels):
        raise layout.CodeShapeError(
            f"Codes for levels {sorted(codes)} given, but {what} has levels "
            f"{list(levels)} ({layout.describe_levels(levels)})."
        )
    for name, spec in levels.items():
        shape = tuple(np.shape(codes[name]))
        if shape[1:] != spec.shape:
            raise layout.CodeShapeError(
                f"Level {name!r}: code maps of shape {shape[1:]} (batch shape {shape}), but {what} "
                f"expects {spec.shape} ({layout.describe_levels(levels)}): these codes come from another "
                f"model or image size."
            )


def as_code_model(task: Any) -> CodeModel:
    """The task itself if it implements `CodeModel` (the autoencoder task does, for any number of
    levels), or an error naming what is missing."""
    if all(hasattr(task, a) for a in ("code_levels", "encode_codes", "decode_codes")):
        return task
    raise TypeError(
        f"{type(task).__module__}.{type(task).__name__} has no code maps to extract: a "
        f"task needs code_levels, encode_codes and decode_codes (see vqlatent.codes.interface)."
    )
