"""The levels of a VQ-VAE hierarchy: their names and code-map shapes, with clear errors.

Levels are numbered from the bottom (level 0, the finest map) to the top; `strides[l]` is the
downsampling from level l-1 (the image, for l = 0) to level l, a power of two (each factor 2 one
4x4 stride-2 convolution). See `vqlatent.nets.autoencoder`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from vqlatent.codes.layout import CodeShapeError


def level_names(num_levels: int) -> tuple[str, ...]:
    """Names of the levels, bottom first: ('bottom', 'top'), ('bottom', 'middle', 'top'), ...

    A single level is called 'top': it is the level whose prior is unconditional,
    which is what the prior trainers key on.
    """
    if num_levels < 1:
        raise ValueError(f"A VQ-VAE needs at least one level; got {num_levels}.")
    if num_levels == 1:
        return ("top",)
    if num_levels == 2:
        return ("bottom", "top")
    if num_levels == 3:
        return ("bottom", "middle", "top")
    return ("bottom", *(f"middle{i}" for i in range(1, num_levels - 1)), "top")


def num_halvings(stride: int, field: str = "model.strides") -> int:
    """log2(stride) for a stride that is a power of two >= 2 (each factor 2 is one 4x4 conv)."""
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 2 or stride & (stride - 1):
        raise ValueError(
            f"{field} contains {stride!r}: every stride must be a power of two >= 2 "
            f"(each factor of 2 is one 4x4 stride-2 convolution)."
        )
    return stride.bit_length() - 1


def check_image_shape(
    image_shape: tuple[int, ...], num_downsamples: int, field: str = "model.num_downsamples"
) -> tuple[int, int]:
    """The code-map size of a one-level VQ-VAE, or a clear error if the image cannot be downsampled."""
    h, w = image_shape[:2]
    factor = 2**num_downsamples
    if num_downsamples < 1:
        raise ValueError(f"{field}={num_downsamples}: need at least one stride-2 downsampling.")
    if h % factor or w % factor:
        raise ValueError(
            f"Image size {h}x{w} cannot be downsampled evenly by {factor} ({field}={num_downsamples}): "
            f"choose {field} so that 2**{field.split('.')[-1]} divides both sides, or resize the images "
            f"with --config.data.image_size."
        )
    return h // factor, w // factor


def level_shapes(
    image_shape: Sequence[int], strides: Sequence[int], field: str = "model.strides"
) -> tuple[tuple[int, int], ...]:
    """The (h, w) of every level's code map, bottom first; clear error if a stride does not divide."""
    if not strides:
        raise ValueError(f"{field} is empty: give one stride per level, bottom first, e.g. (4, 2).")
    h, w = int(image_shape[0]), int(image_shape[1])
    shapes = []
    for l, stride in enumerate(strides):
        num_halvings(stride, field)
        if h % stride or w % stride:
            raise ValueError(
                f"{field}={tuple(strides)} does not fit images of {image_shape[0]}x{image_shape[1]}: "
                f"level {l} ({level_names(len(strides))[l]}) would downsample {h}x{w} by {stride}, which "
                f"does not divide it (the product of the strides up to each level must divide the image "
                f"size). Choose other strides, or resize the images with --config.data.image_size."
            )
        h, w = h // stride, w // stride
        shapes.append((h, w))
    return tuple(shapes)


def check_code_pyramid(codes: Mapping[str, Any], names: Sequence[str], strides: Sequence[int]) -> None:
    """Checks that `codes` has every level and that neighbouring levels differ by their stride."""
    if set(codes) != set(names):
        raise CodeShapeError(
            f"Codes for levels {sorted(codes)} given, but the model has levels "
            f"{list(names)}: pass one code map per level."
        )
    batch = {n: codes[n].shape[0] for n in names}
    if len(set(batch.values())) != 1:
        raise CodeShapeError(f"Code maps of different batch sizes: {batch}.")
    for l in range(1, len(names)):
        below, above = codes[names[l - 1]].shape[1:3], codes[names[l]].shape[1:3]
        if tuple(a * strides[l] for a in above) != tuple(below):
            raise CodeShapeError(
                f"Code map {names[l]} is {'x'.join(map(str, above))} and {names[l - 1]} is "
                f"{'x'.join(map(str, below))}, but the model's stride between them is {strides[l]} "
                f"(model.strides={tuple(strides)}): these codes come from another model."
            )
