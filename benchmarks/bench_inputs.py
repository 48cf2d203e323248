"""Tasks and random batches for the benchmarks, without any dataset (shared by the bench scripts).

An autoencoder (VQ-VAE, VQ-VAE-2) gets random images with the shape of its
config's dataset (or an explicit shape); a prior (model_name='pixelcnn' or 'maskgit') gets
random codes for every level of a code hierarchy and random labels. The
hierarchy is given as 'LEVEL=HxWxK,...' or derived from the VQ-VAE-2 config the
codes would be extracted with.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vqlatent.codes.dataset import CodesDatasetSpec
from vqlatent.codes.layout import LevelSpec, code_key
from vqlatent.data.sources import DatasetSpec
from vqlatent.nets.autoencoder import level_names, level_shapes
from vqlatent.trainers.base import make_task

NAMED_SHAPES = {
    "sklearn_digits": (8, 8, 1),
    "mnist_idx": (28, 28, 1),
    "mnist": (28, 28, 1),
    "cifar10": (32, 32, 3),
}


def image_shape(config, override: str | None = None) -> tuple[int, int, int]:
    """'H,W,C' if given, else the image shape of the config's dataset."""
    if override:
        return tuple(int(v) for v in override.split(","))
    if config.data.get("image_size"):
        size = config.data.image_size
        return (size, size, 3)
    if config.data.name not in NAMED_SHAPES:
        raise ValueError(
            f"No known image shape for config.data.name={config.data.name!r}: pass --image_shape=H,W,C."
        )
    return NAMED_SHAPES[config.data.name]


def parse_code_levels(text: str) -> dict[str, LevelSpec]:
    """'bottom=14x14x512,top=7x7x512' -> {level: LevelSpec((h, w), K)}, in the given order."""
    levels = {}
    for part in [p for p in text.split(",") if p]:
        name, sep, dims = part.partition("=")
        sizes = dims.split("x")
        if not sep or not name or len(sizes) != 3 or not all(s.isdigit() and int(s) > 0 for s in sizes):
            raise ValueError(f"--code_levels: bad entry {part!r}; expected LEVEL=HxWxK, e.g. top=7x7x512.")
        levels[name] = LevelSpec((int(sizes[0]), int(sizes[1])), int(sizes[2]))
    return levels


def levels_of_vqvae2(config) -> dict[str, LevelSpec]:
    """The code levels a VQ-VAE-2 config produces on its dataset's images (no data read), bottom first."""
    if config.model_name != "vqvae2":
        raise ValueError(f"--codes_config must be a VQ-VAE-2 config; got model_name={config.model_name!r}.")
    strides = tuple(config.model.strides)
    names = level_names(len(strides))
    shapes = level_shapes(image_shape(config), strides)
    quantizer = config.quantizer
    return {
        n: LevelSpec(shape, int((quantizer if "name" in quantizer else quantizer[n]).num_embeddings))
        for n, shape in zip(names, shapes)
    }


def prior_levels(config, code_levels: str | None, codes_config) -> dict[str, LevelSpec]:
    """The code hierarchy of a prior: `code_levels` text, else from `codes_config`; checks the prior's levels."""
    if code_levels:
        levels = parse_code_levels(code_levels)
    elif codes_config is not None:
        levels = levels_of_vqvae2(codes_config)
    else:
        raise ValueError(
            "A prior needs the shapes of its code levels: pass --codes_config="
            "configs/vqvae2.py:VARIANT or --code_levels=LEVEL=HxWxK,..."
        )
    needed = [config.prior.level] + (
        [config.prior.conditioning_level] if config.prior.conditioning_level else []
    )
    missing = [l for l in needed if l not in levels]
    if missing:
        raise ValueError(f"The code levels {list(levels)} lack {missing}, which config.prior needs.")
    return levels


def task_and_batch(
    config,
    batch_size: int,
    rng: np.random.Generator,
    *,
    image_override: str | None = None,
    code_levels: str | None = None,
    codes_config=None,
) -> tuple[Any, dict, Any, str]:
    """(task, numpy batch, what torch_models.build needs, a description of the inputs).

    The data variance only scales the reconstruction loss, so it is not estimated
    (which would read the dataset) for timing.
    """
    if config.model_name in ("pixelcnn", "maskgit"):
        levels = prior_levels(config, code_levels, codes_config)
        num_classes = int(config.data.num_classes or 1)
        shape = levels[config.prior.level].shape
        spec = CodesDatasetSpec(
            image_shape=(*shape, 1),
            num_classes=config.data.num_classes,
            num_train=1,
            num_eval=1,
            levels=levels,
            codes_dir="",
        )
        batch = {
            code_key(n): rng.integers(0, s.num_codes, (batch_size, *s.shape)).astype(np.int32)
            for n, s in levels.items()
        }
        batch["label"] = rng.integers(0, num_classes, batch_size).astype(np.int32)
        described = f"codes {'x'.join(map(str, shape))}, K={levels[config.prior.level].num_codes}"
        return make_task(config, spec), batch, levels, described
    shape = image_shape(config, image_override)
    spec = DatasetSpec(image_shape=shape, num_classes=10, num_train=1, num_eval=1)
    if "loss" in config and "normalize_by_data_variance" in config.loss:
        config.loss.normalize_by_data_variance = False
    if "loss" in config and "disc_start" in config.loss:  # VQGAN: time the step with the discriminator on.
        config.loss.disc_start = 0
    batch = {
        "image": rng.uniform(size=(batch_size, *shape)).astype(np.float32),
        "label": rng.integers(0, 10, batch_size).astype(np.int32),
    }
    return make_task(config, spec), batch, shape, f"image {'x'.join(map(str, shape))}"
