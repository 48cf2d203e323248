"""What the prior tasks share (`trainers/pixelcnn.py`, `trainers/maskgit.py`): a network over one level
of a codes dataset, class-conditional and conditioned on the level above, sampled through the chain.

A subclass gives `build_model(config, spec) -> (network, level, conditioning level or None)` and its
loss; this base builds the network and the optimizer, reads a batch's codes, label and conditioning
codes, initialises the state, adds `--mode=sample` / `--mode=sample_eval`, and describes the prior
for the samplers (`prior_spec`, dispatched on its `kind` by `vqlatent.priors.sampling`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vqlatent import backend
from vqlatent.codes import layout
from vqlatent.priors import generate, sample_eval
from vqlatent.trainers import base
from vqlatent.trainers import workdir as workdir_lib
from vqlatent.trainers.optim import make_optimizer


class PriorTask(base.Task):
    """A prior over one level of a codes dataset (`kind`: the samplers' name for it)."""

    kind: str = ""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        spec: Any,
        build_model: Callable[[ml_collections.ConfigDict, Any], tuple[Any, str, str | None]],
    ):
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
        with backend.initializer_rng():
            params = self.model.init(params_rng, *self.model_inputs(batch))["params"]
        return base.TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=self.tx.init(params),
            model_state={},
            rng=state_rng,
        )

    def modes(self) -> dict[str, Any]:
        return {
            "sample": lambda runner: generate.sample_mode(workdir_lib.from_runner(runner)),
            "sample_eval": lambda runner: sample_eval.sample_eval_mode(workdir_lib.from_runner(runner)),
        }

    def prior_spec(self, state: base.TrainState) -> dict[str, Any]:
        """This prior as one entry of `vqlatent.priors.sampling.sample_hierarchy`."""
        return {
            "kind": self.kind,
            "level": self.level,
            "model": self.model,
            "variables": {"params": state.params},
            "shape": self.code_shape,
            "conditioning_level": self.cond_level,
        }
