"""Load the task and the restored state of a trained run's workdir, for inference.

Sampling reads several workdirs besides its own (the lower priors, the VQ-VAE(-2)
that decodes the codes, the classifier that judges the samples). Each needs only its
saved `config.json`, its task (the model and its shapes) and a checkpoint: no mesh
checks, no jitted train or eval step, and no pass over the training data. The data's
shapes (image shape, classes, code levels) come from the workdir's `spec.json`, written
when training starts; a workdir from before that file reads them from its dataset.

  run = workdir.load(path)           # config.json + spec.json -> task (nothing restored)
  state, step = run.restore()        # the newest checkpoint (or restore(step))

States are restored replicated over every device, whatever mesh trained them.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import ml_collections

from vqlatent import data as data_lib
from vqlatent.codes import dataset as codes_dataset
from vqlatent.parallel import mesh as mesh_lib
from vqlatent.trainers import base
from vqlatent.utils import checkpoint as ckpt_lib

# Config fields that only shape training and cost time to honour when a task is built: the
# VQ-VAE's loss scale is the training data's pixel variance, one pass over the training set.
# Inference (encode, decode, classify, sample) never reads them.
# InfoGAN's continuous-code measures load a classifier of another workdir: not for inference.
INFERENCE_OVERRIDES = {
    ("loss", "normalize_by_data_variance"): False,
    ("traversal", "classifier_workdir"): "",
}


@dataclasses.dataclass(frozen=True)
class Workdir:
    """A run's workdir with its config and task (`restore` reads its checkpoints)."""

    path: str
    config: ml_collections.ConfigDict
    spec: Any
    task: base.Task

    def abstract_state(self) -> base.TrainState:
        """The TrainState's shapes and dtypes (no compute), replicated over all devices."""
        shapes = jax.eval_shape(self.task.init_state, jax.random.PRNGKey(0), self.task.dummy_batch())
        replicated = mesh_lib.replicated(mesh_lib.make_mesh())
        return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated), shapes)

    def restore(self, step: int | None = None) -> tuple[base.TrainState, int]:
        """(state, step) of checkpoint `step`, or of the newest one (a clear error if there is none)."""
        checkpointer = ckpt_lib.Checkpointer(self.path)
        try:
            step = checkpointer.latest_step() if step is None else step
            if step is None:
                raise FileNotFoundError(
                    f"No checkpoint in {checkpointer.directory}: train first "
                    f"(python -m vqlatent.main --config=... --workdir={self.path} --mode=train)."
                )
            state, _ = checkpointer.restore(step, self.abstract_state(), with_data=False)
        finally:
            checkpointer.close()
        return state, int(step)


def load_config(path: str) -> ml_collections.ConfigDict:
    """The config saved in workdir `path` (its config.json), or FileNotFoundError."""
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{path} has no config.json: is it the workdir of a trained model?")
    with open(config_path) as f:
        return ml_collections.ConfigDict(json.load(f))


def for_inference(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config` with `INFERENCE_OVERRIDES` applied (in place; fields a config lacks are left alone)."""
    for fields, value in INFERENCE_OVERRIDES.items():
        node = config
        for field in fields[:-1]:
            node = node.get(field) if node is not None else None
        if node is not None and fields[-1] in node:
            node[fields[-1]] = value
    return config


def load_spec(path: str, config: ml_collections.ConfigDict) -> Any:
    """The data spec recorded in workdir `path` (`spec.json`), or, for a workdir written before
    that file existed, its dataset's spec (which needs the dataset)."""
    spec = codes_dataset.read_spec_file(path)
    if spec is not None:
        return spec
    try:
        return data_lib.get_spec(config.data)
    except Exception as e:  # pylint: disable=broad-exception-caught
        raise FileNotFoundError(
            f"{path} has no {codes_dataset.SPEC_FILE} (it was trained before the data's shapes were "
            f"recorded), and its dataset could not be opened to read them: {e} Load it where its "
            f"data is, and export it there (python -m vqlatent.main --mode=export --workdir={path} "
            f"--config.export.dir=OUT): the export loads anywhere."
        ) from e


def load(path: str) -> Workdir:
    """The workdir `path` with the task of its saved config (nothing restored yet)."""
    config = for_inference(load_config(path))
    spec = load_spec(path, config)
    return Workdir(path, config, spec, base.make_task(config, spec))


TRAIN_CLASSIFIER_HINT = (
    "python -m vqlatent.main --config=configs/classifier.py:mnist "
    "--config.data.manual_dir=... --workdir=CLASSIFIER_WORKDIR"
)


def load_classifier(path: str | None, field: str, purpose: str) -> tuple[Workdir, base.TrainState]:
    """(workdir, newest state) of the project's classifier (`configs/classifier.py`) in `path`.

    `path` is the value of the config field `field` (e.g. 'sample.classifier_workdir'), which
    `purpose` needs (e.g. '--mode=sample_eval'); a ValueError naming the field when it is unset,
    not a workdir, or the workdir of another model.
    """
    if not path:
        raise ValueError(
            f"{purpose} needs config.{field}: the workdir of a classifier trained on the same "
            f"dataset ({TRAIN_CLASSIFIER_HINT})."
        )
    try:
        model_name = load_config(path).get("model_name")
    except FileNotFoundError:
        raise ValueError(
            f"config.{field}={path!r} has no config.json: it is not the workdir of a trained "
            f"classifier ({TRAIN_CLASSIFIER_HINT})."
        ) from None
    if model_name != "classifier":
        raise ValueError(
            f"config.{field}={path!r} holds a model_name={model_name!r} run, not a classifier "
            f"({TRAIN_CLASSIFIER_HINT})."
        )
    classifier = load(path)
    state, _ = classifier.restore()
    return classifier, state


def from_runner(runner: Any) -> Workdir:
    """The workdir of a `loop.Runner` (its config, spec and task)."""
    return Workdir(runner.workdir, runner.config, runner.spec, runner.task)
