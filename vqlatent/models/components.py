"""A network of a trained model with its restored state, from a training workdir or a model directory.

A `Component` is what a model family computes with: the task of its training config (which builds
the networks from the config and the data's recorded shapes; no data, optimizer or mesh is touched)
and an inference `TrainState` holding the parameters and the other variable collections (EMA
codebooks, BatchNorm statistics). The task's own functions (`encode_codes`, `decode_codes`,
`generate`, ...) then run on it, so a loaded model computes exactly what its checkpoint computes.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vqlatent.codes import dataset as codes_dataset
from vqlatent.models import format as fmt
from vqlatent.trainers import base
from vqlatent.trainers import workdir as workdir_lib
from vqlatent.utils import checkpoint as ckpt_lib


@dataclasses.dataclass
class Component:
    """One network of a model.

    Attributes:
      name: its name in the model directory ('autoencoder', 'prior_top', 'infogan', ...).
      config: the training config (with `workdir.INFERENCE_OVERRIDES`).
      spec: the data's shapes (`DatasetSpec` or `CodesDatasetSpec`).
      task: the model family's task built from them.
      state: a TrainState with `params` and `model_state` restored (no optimizer state or RNG).
      step: the training step of the checkpoint.
      source: where it was loaded from (a workdir or a model directory).
    """

    name: str
    config: ml_collections.ConfigDict
    spec: Any
    task: base.Task
    state: base.TrainState
    step: int
    source: str

    def variables(self) -> dict[str, Any]:
        """What is exported: {'params': ..., 'model_state': ...} (host numpy arrays)."""
        return jax.device_get({"params": self.state.params, "model_state": self.state.model_state})

    def record(self) -> dict[str, Any]:
        """The component's entry in a model directory's config.json."""
        return {
            "config": ckpt_lib.config_to_json_dict(self.config),
            "spec": codes_dataset.spec_to_json(self.spec, portable=True),
            "step": int(self.step),
        }


def inference_state(params: Any, model_state: Any, step: int) -> base.TrainState:
    """A TrainState for the tasks' inference functions: no optimizer state, a fixed RNG."""
    return base.TrainState(
        step=jnp.asarray(step, jnp.int32),
        params=params,
        opt_state=None,
        model_state=model_state,
        rng=jnp.zeros((2,), jnp.uint32),
    )


def from_workdir(name: str, path: str, step: int | None = None) -> Component:
    """The component trained in workdir `path` at checkpoint `step` (default: the newest)."""
    run = workdir_lib.load(path)
    state, step = run.restore(step)
    state = inference_state(state.params, state.model_state, step)
    return Component(name, run.config, run.spec, run.task, state, step, os.path.abspath(path))


def _fill(abstract: Any, flat: Mapping[str, np.ndarray], prefix: str, where: str) -> Any:
    """`abstract`'s structure with its leaves read from `flat` ('/'-joined names), shapes checked."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract)
    values = []
    for path, leaf in leaves:
        key = fmt.SEPARATOR.join([prefix, *(str(getattr(k, "key", getattr(k, "name", k))) for k in path)])
        if key not in flat:
            raise fmt.ModelFormatError(
                f"{where} has no array {key!r} that the model's config needs: the weights belong to "
                f"another model. Export the model again."
            )
        value = flat[key]
        if tuple(value.shape) != tuple(leaf.shape) or value.dtype != leaf.dtype:
            raise fmt.ModelFormatError(
                f"{where}: {key!r} is {value.dtype}{list(value.shape)}, the model's config needs "
                f"{leaf.dtype}{list(leaf.shape)}: the weights belong to another model. Export it again."
            )
        values.append(jnp.asarray(value))
    return jax.tree_util.tree_unflatten(treedef, values)


def from_record(name: str, directory: str, record: Mapping[str, Any], sha256: str) -> Component:
    """The component `name` of model directory `directory` (its config.json entry `record`)."""
    config = workdir_lib.for_inference(ml_collections.ConfigDict(record["config"]))
    spec = codes_dataset.spec_from_json(record["spec"])
    task = base.make_task(config, spec)
    weights_path = os.path.join(directory, name + fmt.WEIGHTS_SUFFIX)
    flat = fmt.flatten_variables(fmt.read_weights(weights_path, sha256))
    abstract = jax.eval_shape(task.init_state, jax.random.PRNGKey(0), task.dummy_batch())
    params = _fill(abstract.params, flat, "params", weights_path)
    model_state = _fill(abstract.model_state, flat, "model_state", weights_path)
    unknown = sorted(set(flat) - set(fmt.flatten_variables({"params": params, "model_state": model_state})))
    if unknown:
        raise fmt.ModelFormatError(
            f"{weights_path} holds arrays the model's config does not have ({unknown[:3]}...): the "
            f"weights belong to another model. Export the model again."
        )
    state = inference_state(params, model_state, int(record["step"]))
    return Component(name, config, spec, task, state, int(record["step"]), os.path.abspath(directory))
