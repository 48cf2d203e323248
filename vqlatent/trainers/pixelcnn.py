"""Training a Gated PixelCNN prior over one level of VQ codes (van den Oord et al. 2016;
VQ-VAE section 3.3; VQ-VAE-2 section 3.3).

The loss is the negative log-likelihood of eq. (1), averaged over positions,

  L = - 1/(H W) sum_{i,j} log p(x_ij | x_<ij, y, c),

reported in nats (`loss`) and in bits per code (`bits_per_code` = L / ln 2); the
evaluation reports the same on the held-out codes (the codes dataset's `eval`
split).

Config (see `configs/pixelcnn.py`):
  data: a codes dataset (`vqlatent.priors.data.default_config`: name='codes',
    codes_dir, num_classes).
  prior.level: the modelled level ('top', 'bottom', ...).
  prior.conditioning_level: the level above whose codes condition this one
    (VQ-VAE-2's bottom prior: 'top'), or None.
  prior.class_conditional: condition on the labels (needs data.num_classes).
  model: channels, num_layers, kernel_size, cond_channels, attention_layers,
    num_heads, head_channels (`vqlatent.nets.pixelcnn.GatedPixelCNN`).
  sample: temperature, num_per_class, seed, batch_size, lower_priors (for
    `--mode=sample`), eval_per_class and classifier_workdir (for
    `--mode=sample_eval`).

`--mode=sample` (run with the top prior's config and workdir) draws
`sample.num_per_class` code hierarchies per class: top codes from this prior,
then each lower level from the prior trained in `sample.lower_priors`
('bottom=/path/to/bottom_prior_workdir[,middle=...]'), decodes them with the
VQ-VAE(-2) checkpoint the codes were extracted from (the codes dataset's
provenance.json: workdir and step) and writes `<workdir>/images/samples.png`
(one row per class) and `<workdir>/samples/codes.npz`. Hierarchies are drawn
`sample.batch_size` at a time (batch b with the key fold_in(PRNGKey(seed), b)).

`--mode=sample_eval` (same config and workdir) judges `sample.eval_per_class`
samples per class with the classifier trained in `sample.classifier_workdir`
(`configs/classifier.py`): the fraction classified as their label and the
Frechet distance of its features to the real eval split's, next to the same
figures for as many held-out real images (see `sample_eval_mode`); it writes
`<workdir>/eval/sample_eval.json` and `<workdir>/images/sample_eval.png`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from vqlatent import codes as codes_lib
from vqlatent import data as data_lib
from vqlatent.codes import layout
from vqlatent.evaluation import images as image_lib
from vqlatent.evaluation import sample_quality
from vqlatent.nets.pixelcnn import GatedPixelCNN
from vqlatent.priors import sampling
from vqlatent.trainers import base
from vqlatent.trainers.base import compute_dtype
from vqlatent.trainers.optim import make_optimizer


def build_model(config: ml_collections.ConfigDict, spec: Any) -> tuple[GatedPixelCNN, str, str | None]:
    """The prior of `config.prior.level` of the codes dataset described by `spec`."""
    levels = getattr(spec, "levels", None)
    if levels is None:
        raise ValueError(
            "A PixelCNN prior trains on a codes dataset: set config.data to "
            "vqlatent.priors.data.default_config(codes_dir) (data.name='codes')."
        )
    prior = config.prior
    if prior.level not in levels:
        raise ValueError(f"config.prior.level={prior.level!r}: the codes dataset has levels {list(levels)}.")
    level = levels[prior.level]
    if len(level.shape) != 2:
        raise ValueError(
            f"Level {prior.level!r} has code arrays of shape {level.shape}: the PixelCNN prior "
            f"models one code per position (shape (h, w)); several codebooks are not supported."
        )
    cond_level = prior.conditioning_level
    cond_num_codes = None
    if cond_level is not None:
        if cond_level not in levels or cond_level == prior.level:
            raise ValueError(
                f"config.prior.conditioning_level={cond_level!r}: must be another level of "
                f"{list(levels)} (the one above {prior.level!r}), or None."
            )
        GatedPixelCNN.upsample_factor(level.shape, (1, *levels[cond_level].shape), 1)
        cond_num_codes = levels[cond_level].num_codes
    num_classes = None
    if prior.class_conditional:
        if not spec.num_classes:
            raise ValueError("config.prior.class_conditional=True needs config.data.num_classes (e.g. 10).")
        num_classes = int(spec.num_classes)
    m = config.model
    model = GatedPixelCNN(
        num_codes=level.num_codes,
        channels=m.channels,
        num_layers=m.num_layers,
        kernel_size=m.kernel_size,
        num_classes=num_classes,
        cond_num_codes=cond_num_codes,
        cond_channels=m.cond_channels,
        attention_layers=tuple(m.attention_layers),
        num_heads=m.num_heads,
        head_channels=m.head_channels,
        dtype=compute_dtype(config.dtype),
    )
    return model, prior.level, cond_level


class Task(base.Task):
    """A PixelCNN prior over one level of a codes dataset."""

    def __init__(self, config: ml_collections.ConfigDict, spec: Any):
        super().__init__(config, spec)
        self.model, self.level, self.cond_level = build_model(config, spec)
        self.code_shape = tuple(spec.levels[self.level].shape)
        self.tx = make_optimizer(config.optimizer, config.num_train_steps)

    def dummy_batch(self, batch_size: int = 1) -> dict[str, np.ndarray]:
        batch = {
            layout.code_key(n): np.zeros((batch_size, *s.shape), np.int32)
            for n, s in self.spec.levels.items()
        }
        batch["label"] = np.zeros((batch_size,), np.int32)
        return batch

    def model_inputs(self, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, Any, Any]:
        """(codes, labels or None, conditioning codes or None) of a batch."""
        codes = batch[layout.code_key(self.level)]
        labels = batch["label"] if self.model.num_classes else None
        cond = batch[layout.code_key(self.cond_level)] if self.cond_level else None
        return codes, labels, cond

    def init_state(self, rng: jax.Array, batch: Mapping[str, jax.Array]) -> base.TrainState:
        params_rng, state_rng = jax.random.split(rng)
        with jax.threefry_partitionable(False):  # Fast init compile on XLA:CPU (see trainers/vqvae2.py).
            params = self.model.init(params_rng, *self.model_inputs(batch))["params"]
        return base.TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=self.tx.init(params),
            model_state={},
            rng=state_rng,
        )

    def nll_per_example(self, params, batch: Mapping[str, jax.Array]) -> jax.Array:
        """(B,) mean over positions of -log p(x_ij | x_<ij, y, c), in nats (eq. 1)."""
        codes, labels, cond = self.model_inputs(batch)
        logits = self.model.apply({"params": params}, codes, labels, cond)
        nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), codes)
        return jnp.mean(nll, axis=(1, 2))

    def loss_fn(self, params, model_state, batch, rng):
        del rng  # Deterministic.
        loss = jnp.mean(self.nll_per_example(params, batch))
        return loss, (model_state, {"loss": loss, "bits_per_code": loss / np.log(2.0)})

    def eval_step(self, state: base.TrainState, batch: Mapping[str, jax.Array]):
        nll = self.nll_per_example(state.params, batch)
        mask = batch["mask"]
        return {"nll_sum": jnp.sum(nll * mask), "num_examples": jnp.sum(mask)}

    def eval_summary(self, totals: Mapping[str, np.ndarray]) -> dict[str, Any]:
        n = float(totals["num_examples"])
        nll = float(totals["nll_sum"]) / n
        return {"nll_per_code": nll, "bits_per_code": nll / float(np.log(2.0)), "num_examples": int(n)}

    def modes(self) -> dict[str, Any]:
        return {"sample": sample_mode, "sample_eval": sample_eval_mode}

    def prior_spec(self, state: base.TrainState) -> dict[str, Any]:
        """This prior as one entry of `vqlatent.priors.sample_hierarchy`."""
        return {
            "level": self.level,
            "model": self.model,
            "variables": {"params": state.params},
            "shape": self.code_shape,
            "conditioning_level": self.cond_level,
        }


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


def _runner_for_workdir(workdir: str):
    """A Runner with the config saved in `workdir` (nothing restored yet)."""
    from vqlatent.trainers import loop  # pylint: disable=g-import-not-at-top  (loop imports the tasks)

    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{workdir} has no config.json: is it the workdir of a trained model?")
    with open(path) as f:
        config = ml_collections.ConfigDict(json.load(f))
    return loop.Runner(config, workdir)


def _restore(runner: Any, step: int | None = None) -> base.TrainState:
    """The checkpoint `step` (or the newest) of the runner's workdir."""
    from vqlatent.utils import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top

    if step is None:
        state, _ = runner.restore_for_eval()
    else:
        checkpointer = ckpt_lib.Checkpointer(runner.workdir)
        state, _ = runner.restore(checkpointer, step, with_data=False)
        checkpointer.close()
    return state


def _runner_from_workdir(workdir: str, step: int | None = None):
    """A Runner with the config saved in `workdir`, and its checkpoint (`step`, or the newest)."""
    runner = _runner_for_workdir(workdir)
    return runner, _restore(runner, step)


def _check_sample_options(options: ml_collections.ConfigDict, mode: str) -> None:
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
      priors: `sample_hierarchy`'s entries, top first.
      prior_workdirs: the workdir of each prior (same order).
      code_model: the VQ-VAE(-2) task as a `vqlatent.codes.CodeModel` (its decoder).
      vq_runner, vq_state: the VQ-VAE(-2) the codes were extracted from, at the
        extracted checkpoint (`vq_runner.config.data` is its dataset).
      vq_workdir, vq_step: where that checkpoint is.
      prior_step: the top prior's checkpoint step.
    """

    priors: list[dict[str, Any]]
    prior_workdirs: list[str]
    code_model: Any
    vq_runner: Any
    vq_state: Any
    vq_workdir: str
    vq_step: int
    prior_step: int


def checkpoint_num_codes(workdir: str) -> tuple[int, str] | None:
    """(K, checkpoint path) of the newest prior checkpoint in `workdir`: the rows of its code
    embedding, read from the checkpoint's metadata (nothing restored); None without a checkpoint."""
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
    from etils import epath  # pylint: disable=g-import-not-at-top

    from vqlatent.utils import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top

    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        return None
    checkpointer = ckpt_lib.Checkpointer(workdir)
    step = checkpointer.latest_step()
    checkpointer.close()
    if step is None:
        return None
    path = os.path.join(checkpointer.directory, str(step))
    metadata = ocp.StandardCheckpointHandler().metadata(epath.Path(path) / "state")
    return int(metadata["params"]["embed"]["embedding"].shape[0]), path


def check_prior_codebooks(
    prior_runners: list[Any], code_levels: Mapping[str, layout.LevelSpec], vq_workdir: str
) -> None:
    """ValueError unless every prior (its Runner) models its level's codebook size K and map shape
    of the VQ-VAE(-2) in `vq_workdir`, in its config (codes dataset) and in its newest checkpoint."""
    for runner in prior_runners:
        task, workdir = runner.task, runner.workdir
        level, spec = task.level, code_levels[task.level]
        num_codes = int(task.model.num_codes)
        stored = checkpoint_num_codes(workdir)
        if stored is not None and stored[0] != num_codes:
            raise ValueError(
                f"The prior checkpoint {stored[1]} (level {level!r}) has K={stored[0]} codes, but its "
                f"config.data.codes_dir={runner.config.data.codes_dir!r} has K={num_codes}: the codes were "
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


def load_hierarchy(runner: Any) -> SamplingHierarchy:
    """The top prior of `runner` (newest checkpoint), its lower priors (`config.sample.lower_priors`)
    and the VQ-VAE(-2) checkpoint its codes came from (the codes dataset's provenance).

    They are checked against each other before any checkpoint is restored (from their
    configs and the checkpoints' metadata): every level of the VQ-VAE has a prior, of
    its codebook size K and map shape.
    """
    config, task = runner.config, runner.task
    if task.cond_level is not None:
        raise ValueError(
            f"Sampling starts at the top of the hierarchy: run it with the config and "
            f"workdir of the unconditioned (top) prior, not of the {task.level!r} prior "
            f"(conditioned on {task.cond_level!r})."
        )
    prior_runners, prior_workdirs = [runner], [runner.workdir]
    for level, workdir in parse_lower_priors(config.sample.get("lower_priors")).items():
        lower_runner = _runner_for_workdir(workdir)
        if lower_runner.task.level != level:
            raise ValueError(
                f"config.sample.lower_priors: {workdir} holds the prior of level "
                f"{lower_runner.task.level!r}, not {level!r}."
            )
        prior_runners.append(lower_runner)
        prior_workdirs.append(workdir)
    provenance = codes_lib.load_provenance(config.data.codes_dir)
    vq_workdir, vq_step = provenance["checkpoint"]["workdir"], int(provenance["checkpoint"]["step"])
    vq_runner = _runner_for_workdir(vq_workdir)
    code_model = codes_lib.as_code_model(vq_runner.task)
    levels = [r.task.level for r in prior_runners]
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
    check_prior_codebooks(prior_runners, code_model.code_levels, vq_workdir)

    state, prior_step = runner.restore_for_eval()
    priors = [task.prior_spec(state)] + [r.task.prior_spec(_restore(r)) for r in prior_runners[1:]]
    return SamplingHierarchy(
        priors=priors,
        prior_workdirs=prior_workdirs,
        code_model=code_model,
        vq_runner=vq_runner,
        vq_state=_restore(vq_runner, vq_step),
        vq_workdir=vq_workdir,
        vq_step=vq_step,
        prior_step=int(prior_step),
    )


def _padded_batches(num: int, batch_size: int):
    """(batch index, start, stop) covering [0, num) in batches of `batch_size` (the last one short)."""
    for b, start in enumerate(range(0, num, batch_size)):
        yield b, start, min(start + batch_size, num)


def _pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
    """Pads axis 0 to `rows` with copies of the last row (one compiled shape for every batch)."""
    return np.concatenate([x, np.repeat(x[-1:], rows - len(x), axis=0)]) if len(x) < rows else x


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
    decode = jax.jit(hierarchy.code_model.decode_codes)
    codes_parts, image_parts = [], []
    for b, start, stop in _padded_batches(len(labels), batch):
        codes = sampling.sample_hierarchy(
            hierarchy.priors,
            jax.random.fold_in(rng, b),
            batch,
            labels=_pad_rows(labels[start:stop], batch),
            temperature=temperature,
        )
        codes, images = jax.device_get((codes, decode(hierarchy.vq_state, codes)))
        codes_parts.append({k: np.asarray(v)[: stop - start] for k, v in codes.items()})
        image_parts.append(np.asarray(images)[: stop - start])
    codes = {k: np.concatenate([part[k] for part in codes_parts]) for k in codes_parts[0]}
    return codes, np.clip(np.concatenate(image_parts), 0.0, 1.0)


def class_grid(images: np.ndarray, num_classes: int, per_class: int, num_cols: int) -> np.ndarray:
    """A PNG grid of class-major images (`per_class` of each class): one row per class, its first
    `num_cols` images."""
    rows = images.reshape(num_classes, per_class, *images.shape[1:])[:, :num_cols]
    rows = rows.reshape(-1, *images.shape[1:])
    return image_lib.make_grid(
        rows, num_cols=min(num_cols, per_class), upscale=image_lib.auto_upscale(images.shape[1])
    )


def sample_mode(runner: Any) -> dict[str, Any]:
    """`--mode=sample`: class labels -> top codes -> lower codes -> decoder -> PNG grid (rows = classes)."""
    config, task = runner.config, runner.task
    options = config.sample
    _check_sample_options(options, "sample")
    hierarchy = load_hierarchy(runner)
    num_classes = task.model.num_classes or 1
    per_class = int(options.num_per_class)
    labels = np.repeat(np.arange(num_classes, dtype=np.int32), per_class)
    codes, images = sample_images(
        hierarchy,
        labels,
        jax.random.PRNGKey(options.seed),
        float(options.temperature),
        int(options.batch_size),
    )
    grid = class_grid(images, num_classes, per_class, per_class)
    image_path = os.path.join(runner.workdir, "images", "samples.png")
    codes_path = os.path.join(runner.workdir, "samples", "codes.npz")
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


def load_classifier(workdir: str | None) -> tuple[Any, base.TrainState]:
    """(Runner, newest state) of the classifier in `workdir` (`configs/classifier.py`), or a clear error."""
    train_hint = (
        "python -m vqlatent.main --config=configs/classifier.py:mnist "
        "--config.data.manual_dir=... --workdir=CLASSIFIER_WORKDIR"
    )
    if not workdir:
        raise ValueError(
            f"--mode=sample_eval needs config.sample.classifier_workdir: the workdir of a "
            f"classifier trained on the VQ-VAE's dataset ({train_hint})."
        )
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise ValueError(
            f"config.sample.classifier_workdir={workdir!r} has no config.json: it is not the "
            f"workdir of a trained classifier ({train_hint})."
        )
    with open(path) as f:
        model_name = json.load(f).get("model_name")
    if model_name != "classifier":
        raise ValueError(
            f"config.sample.classifier_workdir={workdir!r} holds a model_name={model_name!r} "
            f"run, not a classifier ({train_hint})."
        )
    return _runner_from_workdir(workdir)


def _classify(
    classify: Any, state: base.TrainState, images: np.ndarray, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """(logits, features) of images, `batch_size` at a time (padded: one compiled shape)."""
    batch = min(batch_size, len(images))
    logits, features = [], []
    for _, start, stop in _padded_batches(len(images), batch):
        out = jax.device_get(classify(state, _pad_rows(images[start:stop], batch)))
        logits.append(np.asarray(out["logits"])[: stop - start])
        features.append(np.asarray(out["features"])[: stop - start])
    return np.concatenate(logits), np.concatenate(features)


def sample_eval_mode(runner: Any) -> dict[str, Any]:
    """`--mode=sample_eval`: class-conditional samples judged by the project's classifier.

    Draws `sample.eval_per_class` hierarchies per class (as `--mode=sample`, with
    `sample.seed`), decodes them, and classifies them with the checkpoint in
    `sample.classifier_workdir`. The real eval split of the VQ-VAE's dataset is
    split (`sample_quality.split_reference_and_heldout`) into `eval_per_class`
    held-out images per class and a reference (all the others). Reports, in
    `<workdir>/eval/sample_eval.json`:

      sample_label_accuracy     samples classified as the class they were drawn for
      sample_frechet_distance   Frechet distance of the samples' classifier
                                features to the reference's
      floor_label_accuracy, floor_frechet_distance
                                the same for the held-out real images (as many,
                                same class balance): what perfect samples would score
      classifier_test_accuracy  the classifier on the whole real eval split

    and writes `<workdir>/images/sample_eval.png` (one row per class).
    Deterministic given the checkpoints and `sample.seed` (and `sample.batch_size`).
    """
    config, task = runner.config, runner.task
    options = config.sample
    _check_sample_options(options, "sample_eval")
    num_classes = task.model.num_classes
    if not num_classes:
        raise ValueError(
            f"--mode=sample_eval judges class-conditional samples, but the prior in "
            f"{runner.workdir} is unconditional (config.prior.class_conditional=False)."
        )
    start_time = time.time()
    classifier_workdir = options.get("classifier_workdir")
    clf_runner, clf_state = load_classifier(classifier_workdir)
    hierarchy = load_hierarchy(runner)
    image_shape = tuple(hierarchy.vq_runner.spec.image_shape)
    if clf_runner.task.num_classes != num_classes or tuple(clf_runner.spec.image_shape) != image_shape:
        raise ValueError(
            f"config.sample.classifier_workdir={classifier_workdir!r}: the classifier takes "
            f"{tuple(clf_runner.spec.image_shape)} images of {clf_runner.task.num_classes} classes, but the "
            f"samples are {image_shape} images of {num_classes} classes (the VQ-VAE in "
            f"{hierarchy.vq_workdir}): train the classifier on the VQ-VAE's dataset."
        )

    per_class, batch_size = int(options.eval_per_class), int(options.batch_size)
    classify = jax.jit(clf_runner.task.classify)
    # The real images first: a split too small for eval_per_class fails before any sampling.
    real_logits, real_features, real_labels = [], [], []
    for batch in data_lib.make_eval_batches(hierarchy.vq_runner.config.data, global_batch_size=batch_size):
        keep = np.asarray(batch["mask"]) > 0
        out = jax.device_get(classify(clf_state, batch["image"]))
        real_logits.append(np.asarray(out["logits"])[keep])
        real_features.append(np.asarray(out["features"])[keep])
        real_labels.append(np.asarray(batch["label"])[keep])
    real_logits, real_features = np.concatenate(real_logits), np.concatenate(real_features)
    real_labels = np.concatenate(real_labels)
    reference, heldout = sample_quality.split_reference_and_heldout(real_labels, per_class, num_classes)
    reference_stats = sample_quality.gaussian_statistics(real_features[reference])

    labels = np.repeat(np.arange(num_classes, dtype=np.int32), per_class)
    _, images = sample_images(
        hierarchy, labels, jax.random.PRNGKey(options.seed), float(options.temperature), batch_size
    )
    sample_logits, sample_features = _classify(classify, clf_state, images, batch_size)
    sample_predictions = sample_quality.predicted_labels(sample_logits)
    real_predictions = sample_quality.predicted_labels(real_logits)

    metrics = {
        "sample_label_accuracy": sample_quality.label_accuracy(sample_predictions, labels),
        "sample_frechet_distance": sample_quality.frechet_distance(
            *sample_quality.gaussian_statistics(sample_features), *reference_stats
        ),
        "floor_label_accuracy": sample_quality.label_accuracy(
            real_predictions[heldout], real_labels[heldout]
        ),
        "floor_frechet_distance": sample_quality.frechet_distance(
            *sample_quality.gaussian_statistics(real_features[heldout]), *reference_stats
        ),
        "classifier_test_accuracy": sample_quality.label_accuracy(real_predictions, real_labels),
        "sample_per_class_accuracy": sample_quality.per_class_accuracy(
            sample_predictions, labels, num_classes
        ),
        "num_samples": len(labels),
        "eval_per_class": per_class,
        "num_reference": len(reference),
        "num_heldout": len(heldout),
        "feature_dim": int(sample_features.shape[1]),
        "temperature": float(options.temperature),
        "seed": int(options.seed),
        "batch_size": batch_size,
        "prior_workdirs": dict(zip([p["level"] for p in hierarchy.priors], hierarchy.prior_workdirs)),
        "prior_step": hierarchy.prior_step,
        "vqvae_workdir": hierarchy.vq_workdir,
        "vqvae_step": hierarchy.vq_step,
        "classifier_workdir": classifier_workdir,
        "classifier_step": int(clf_state.step),
        "seconds": time.time() - start_time,
    }
    json_path = os.path.join(runner.workdir, "eval", "sample_eval.json")
    image_path = os.path.join(runner.workdir, "images", "sample_eval.png")
    if jax.process_index() == 0:
        image_lib.save_png(
            image_path, class_grid(images, num_classes, per_class, min(per_class, int(options.num_per_class)))
        )
        os.makedirs(os.path.dirname(json_path), exist_ok=True)
        with open(json_path + ".tmp", "w") as f:
            json.dump(metrics, f, indent=2, sort_keys=True)
        os.replace(json_path + ".tmp", json_path)
    logging.info(
        "sample_eval (%d samples, %d per class, temperature %g): samples classified as their "
        "label %.4f (held-out real images: %.4f), Frechet distance to the real reference %.4g "
        "(held-out real images: %.4g), classifier accuracy on the real eval split %.4f; "
        "written to %s and %s.",
        len(labels),
        per_class,
        float(options.temperature),
        metrics["sample_label_accuracy"],
        metrics["floor_label_accuracy"],
        metrics["sample_frechet_distance"],
        metrics["floor_frechet_distance"],
        metrics["classifier_test_accuracy"],
        json_path,
        image_path,
    )
    return {**metrics, "json": json_path, "images": image_path, "samples": images, "labels": labels}
