"""Generation through a VQ-VAE(-2) hierarchy: class -> top codes -> ... -> bottom codes -> pixels.

Ancestral sampling (VQ-VAE-2 section 3.3): the top prior draws the top codes given the
class (eq. 1), each lower prior the codes of its level given the class and the level
above, and the decoder of the VQ-VAE(-2) the codes were extracted from maps them to
images.

`--mode=sample` (`sample_mode`, run with the top prior's config and workdir) draws
`sample.num_per_class` code hierarchies per class: top codes from this prior, then each
lower level from the prior trained in `sample.lower_priors`
('bottom=/path/to/bottom_prior_workdir[,middle=...]'), decodes them with the VQ-VAE(-2)
checkpoint the codes were extracted from (the codes dataset's provenance.json: workdir
and step) and writes `<workdir>/images/samples.png` (one row per class) and
`<workdir>/samples/codes.npz`. Hierarchies are drawn `sample.batch_size` at a time
(batch b with the key fold_in(PRNGKey(seed), b)).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from vqlatent import codes as codes_lib
from vqlatent.codes import layout
from vqlatent.evaluation import images as image_lib
from vqlatent.priors import sampling
from vqlatent.trainers import workdir as workdir_lib
from vqlatent.utils import checkpoint as ckpt_lib


def parse_lower_priors(value: str | None) -> dict[str, str]:
    """'bottom=/a,middle=/b' -> {'bottom': '/a', 'middle': '/b'}."""
    out = {}
    for part in [p for p in (value or "").split(",") if p]:
        level, sep, workdir = part.partition("=")
        if not sep or not level or not workdir:
            raise ValueError(
                f"config.sample.lower_priors: bad entry {part!r}; expected LEVEL=WORKDIR "
                f"(e.g. bottom=/tmp/pixelcnn_bottom)."
            )
        out[level] = workdir
    return out


def check_sample_options(options: ml_collections.ConfigDict, mode: str) -> None:
    """`config.sample` fields a mode uses, checked before any checkpoint is loaded."""
    temperature = options.temperature
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, (int, float))
        or not np.isfinite(temperature)
        or temperature <= 0
    ):
        raise ValueError(
            f"config.sample.temperature={temperature!r}: must be a finite number > 0 "
            f"(1 samples the prior's distribution, smaller values sharpen it)."
        )
    fields = ["num_per_class", "batch_size"] + (["eval_per_class"] if mode == "sample_eval" else [])
    for field in fields:
        value = options.get(field)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"config.sample.{field}={value!r}: must be an integer >= 1 (--mode={mode}).")


@dataclasses.dataclass
class SamplingHierarchy:
    """What `--mode=sample` and `--mode=sample_eval` draw images with.

    Attributes:
      priors: `sampling.sample_hierarchy`'s entries, top first.
      prior_workdirs: the workdir of each prior (same order).
      code_model: the VQ-VAE(-2) task as a `vqlatent.codes.CodeModel` (its decoder).
      vq: the VQ-VAE(-2) workdir the codes were extracted from (`vq.config.data` is its dataset).
      vq_state: its state at the extracted checkpoint `vq_step`.
      prior_step: the top prior's checkpoint step.
    """

    priors: list[dict[str, Any]]
    prior_workdirs: list[str]
    code_model: Any
    vq: workdir_lib.Workdir
    vq_state: Any
    vq_step: int
    prior_step: int

    @property
    def vq_workdir(self) -> str:
        return self.vq.path


def checkpoint_num_codes(workdir: str) -> tuple[int, str] | None:
    """(K, checkpoint path) of the newest prior checkpoint in `workdir`: the rows of its code
    embedding, read from the checkpoint's metadata (nothing restored); None without a checkpoint."""
    found = ckpt_lib.latest_state_metadata(workdir)
    if found is None:
        return None
    metadata, path = found
    return int(metadata["params"]["embed"]["embedding"].shape[0]), path


def check_prior_codebooks(
    priors: list[workdir_lib.Workdir], code_levels: Mapping[str, layout.LevelSpec], vq_workdir: str
) -> None:
    """ValueError unless every prior models its level's codebook size K and map shape of the
    VQ-VAE(-2) in `vq_workdir`, in its config (codes dataset) and in its newest checkpoint."""
    for prior in priors:
        task, workdir = prior.task, prior.path
        level, spec = task.level, code_levels[task.level]
        num_codes = int(task.model.num_codes)
        stored = checkpoint_num_codes(workdir)
        if stored is not None and stored[0] != num_codes:
            raise ValueError(
                f"The prior checkpoint {stored[1]} (level {level!r}) has K={stored[0]} codes, but its "
                f"config.data.codes_dir={prior.config.data.codes_dir!r} has K={num_codes}: the codes were "
                f"re-extracted after the prior was trained. Point config.data.codes_dir at the codes it was "
                f"trained on, or retrain it."
            )
        if num_codes != spec.num_codes:
            raise ValueError(
                f"The prior of level {level!r} in {workdir} models K={num_codes} codes, but the VQ-VAE in "
                f"{vq_workdir} has a codebook of K={spec.num_codes} at that level: the prior was trained on "
                f"another model's codes. Train it on codes extracted from {vq_workdir} "
                f"(--mode=extract_codes), or point config.data.codes_dir at the right codes dataset."
            )
        if tuple(task.code_shape) != tuple(spec.shape):
            raise ValueError(
                f"The prior of level {level!r} in {workdir} models {tuple(task.code_shape)} code maps, but the "
                f"VQ-VAE in {vq_workdir} has {tuple(spec.shape)} maps at that level (another image size?)."
            )


def load_hierarchy(top: workdir_lib.Workdir) -> SamplingHierarchy:
    """The top prior `top` (newest checkpoint), its lower priors (`top.config.sample.lower_priors`)
    and the VQ-VAE(-2) checkpoint its codes came from (the codes dataset's provenance).

    They are checked against each other before any checkpoint is restored (from their
    configs and the checkpoints' metadata): every level of the VQ-VAE has a prior, of
    its codebook size K and map shape.
    """
    config, task = top.config, top.task
    if task.cond_level is not None:
        raise ValueError(
            f"Sampling starts at the top of the hierarchy: run it with the config and "
            f"workdir of the unconditioned (top) prior, not of the {task.level!r} prior "
            f"(conditioned on {task.cond_level!r})."
        )
    priors = [top]
    for level, path in parse_lower_priors(config.sample.get("lower_priors")).items():
        lower = workdir_lib.load(path)
        if lower.task.level != level:
            raise ValueError(
                f"config.sample.lower_priors: {path} holds the prior of level {lower.task.level!r}, "
                f"not {level!r}."
            )
        priors.append(lower)
    provenance = codes_lib.load_provenance(config.data.codes_dir)
    vq_workdir, vq_step = provenance["checkpoint"]["workdir"], int(provenance["checkpoint"]["step"])
    vq = workdir_lib.load(vq_workdir)
    code_model = codes_lib.as_code_model(vq.task)
    levels = [p.task.level for p in priors]
    missing = sorted(set(code_model.code_levels) - set(levels))
    if missing:
        raise ValueError(
            f"No prior for level(s) {missing} of {vq_workdir}: add "
            f"them as --config.sample.lower_priors=LEVEL=WORKDIR[,LEVEL=WORKDIR]."
        )
    extra = sorted(set(levels) - set(code_model.code_levels))
    if extra:
        raise ValueError(
            f"config.sample.lower_priors: level(s) {extra} are not levels of {vq_workdir} "
            f"({list(code_model.code_levels)})."
        )
    check_prior_codebooks(priors, code_model.code_levels, vq_workdir)

    # The top prior runs with the user's config: refuse a workdir of another model (as --mode=eval).
    ckpt_lib.check_workdir_config(top.path, config, write=False)
    states = [p.restore() for p in priors]
    vq_state, _ = vq.restore(vq_step)
    specs = [p.task.prior_spec(state) for p, (state, _) in zip(priors, states)]
    # A MaskGIT top prior's `sample.lower_num_steps`: the decoding steps of the lower MaskGIT priors
    # (else each decodes with its own config's), so one trained chain can be sampled at several T.
    lower_steps = config.sample.get("lower_num_steps")
    for spec in specs[1:]:
        if lower_steps is not None and spec.get("kind") == "maskgit":
            spec["decode"] = {**spec["decode"], "num_steps": lower_steps}
    return SamplingHierarchy(
        priors=specs,
        prior_workdirs=[p.path for p in priors],
        code_model=code_model,
        vq=vq,
        vq_state=vq_state,
        vq_step=vq_step,
        prior_step=states[0][1],
    )


def padded_batches(num: int, batch_size: int) -> Iterator[tuple[int, int, int]]:
    """(batch index, start, stop) covering [0, num) in batches of `batch_size` (the last one short)."""
    for b, start in enumerate(range(0, num, batch_size)):
        yield b, start, min(start + batch_size, num)


def pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
    """Pads axis 0 to `rows` with copies of the last row (one compiled shape for every batch)."""
    return np.concatenate([x, np.repeat(x[-1:], rows - len(x), axis=0)]) if len(x) < rows else x


@functools.lru_cache(maxsize=16)
def jitted_decode(code_model: Any) -> Any:
    """`jax.jit(code_model.decode_codes)`, one per code model: a new jit of a bound method each call
    would trace and compile the decoder again every time (docs/lab/models.md)."""
    return jax.jit(code_model.decode_codes)


def sample_images(
    hierarchy: SamplingHierarchy, labels: np.ndarray, rng: jax.Array, temperature: float, batch_size: int
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Labels (N,) -> ({level: (N, h, w) codes}, decoded images (N, H, W, C) in [0, 1]).

    Draws `batch_size` hierarchies at a time (memory stays bounded); batch b uses
    the key fold_in(rng, b), so the result is determined by (rng, labels,
    temperature, batch_size). The last batch is padded with copies of its last
    label (one compiled shape for every batch) and trimmed.
    """
    labels = np.asarray(labels, np.int32)
    batch = min(int(batch_size), len(labels))
    decode = jitted_decode(hierarchy.code_model)
    codes_parts, image_parts = [], []
    for b, start, stop in padded_batches(len(labels), batch):
        codes = sampling.sample_hierarchy(
            hierarchy.priors,
            jax.random.fold_in(rng, b),
            batch,
            labels=pad_rows(labels[start:stop], batch),
            temperature=temperature,
        )
        codes, images = jax.device_get((codes, decode(hierarchy.vq_state, codes)))
        codes_parts.append({k: np.asarray(v)[: stop - start] for k, v in codes.items()})
        image_parts.append(np.asarray(images)[: stop - start])
    codes = {k: np.concatenate([part[k] for part in codes_parts]) for k in codes_parts[0]}
    return codes, np.clip(np.concatenate(image_parts), 0.0, 1.0)


def class_labels(num_classes: int, per_class: int) -> np.ndarray:
    """(num_classes * per_class,) int32 labels, class-major: 0 0 .. 1 1 .. (one grid row per class)."""
    return np.repeat(np.arange(num_classes, dtype=np.int32), per_class)


def sample_mode(top: workdir_lib.Workdir) -> dict[str, Any]:
    """`--mode=sample`: class labels -> top codes -> lower codes -> decoder -> PNG grid (rows = classes)."""
    options = top.config.sample
    check_sample_options(options, "sample")
    hierarchy = load_hierarchy(top)
    num_classes = top.task.model.num_classes or 1
    per_class = int(options.num_per_class)
    labels = class_labels(num_classes, per_class)
    codes, images = sample_images(
        hierarchy,
        labels,
        jax.random.PRNGKey(options.seed),
        float(options.temperature),
        int(options.batch_size),
    )
    grid = image_lib.class_grid(images, num_classes, per_class, per_class)
    image_path = os.path.join(top.path, "images", "samples.png")
    codes_path = os.path.join(top.path, "samples", "codes.npz")
    if jax.process_index() == 0:
        image_lib.save_png(image_path, grid)
        os.makedirs(os.path.dirname(codes_path), exist_ok=True)
        np.savez(codes_path, labels=labels, **codes)
        logging.info(
            "Wrote %d samples (%d per class, temperature %g) to %s and their codes to %s.",
            len(labels),
            per_class,
            float(options.temperature),
            image_path,
            codes_path,
        )
    return {
        "images": image_path,
        "codes": codes_path,
        "labels": labels,
        "codes_by_level": codes,
        "samples": images,
    }
