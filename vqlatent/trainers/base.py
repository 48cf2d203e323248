"""What a model family provides to the shared training loop.

A `Task` owns the model, the optimizer (`tx`) and the loss (`loss_fn`); `update` is the
one training update (gradient, optimizer, model state, per-step RNG); the loop
(`loop.py`) owns everything else: devices and sharding, data, checkpoints and exact resume,
logging, evaluation cadence, images. A task that needs more than one gradient
step per batch (InfoGAN's two updates) overrides `train_step` as a whole.
Adding a model family is adding one module `vqlatent/trainers/<model_name>.py`
that defines `Task`; the config's `model_name` selects it (no switch statement
to edit; `ALIASES` maps the names of merged tasks).
"""

from __future__ import annotations

import abc
import importlib
import os
from collections.abc import Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax


@flax.struct.dataclass
class TrainState:
    """Everything a resumed run needs, as one pytree (checkpointed by orbax).

    `model_state` holds the non-parameter variable collections (e.g. the EMA
    codebook statistics `vq_ema`, BatchNorm `batch_stats`); `rng` is raw key data
    (uint32) folded with the step for per-step randomness.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    model_state: Any
    rng: jax.Array


DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(name: str):
    """`config.dtype` -> the activations' dtype (parameters stay float32)."""
    if name not in DTYPES:
        raise ValueError(f"Unknown config.dtype={name!r}; choose one of {sorted(DTYPES)}.")
    return DTYPES[name]


GRID_COLUMNS = 8  # Columns of the PNG grids written at each evaluation.


def state_from_variables(variables: Mapping[str, Any], tx: Any, rng: jax.Array) -> TrainState:
    """A step-0 TrainState from `model.init` variables: 'params' are optimized, the rest is state."""
    params = variables["params"]
    model_state = {k: v for k, v in variables.items() if k != "params"}
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        model_state=model_state,
        rng=rng,
    )


def apply_for_training(
    model: Any,
    params: Any,
    model_state: Mapping[str, Any],
    *args: Any,
    rngs: Mapping[str, jax.Array] | None = None,
    **kwargs: Any,
) -> tuple[Any, Any]:
    """`model.apply(..., train=True)` with every state collection mutable.

    Returns (outputs, new model state); a model without state collections keeps `{}`.
    """
    mutable = list(model_state)
    outputs = model.apply(
        {"params": params, **model_state}, *args, train=True, mutable=mutable or False, rngs=rngs, **kwargs
    )
    return outputs if mutable else (outputs, model_state)


class Task(abc.ABC):
    """A model family: init, the loss (or a whole train step), evaluation sums and their summary.

    `tx` is the task's optax optimizer, applied by the loop's update.
    """

    tx: Any = None

    def __init__(self, config: ml_collections.ConfigDict, spec: Any):
        self.config = config
        self.spec = spec

    def dummy_batch(self, batch_size: int = 1) -> dict[str, np.ndarray]:
        """A batch of the dataset's shapes, for initialisation and `eval_shape`."""
        return {
            "image": np.zeros((batch_size, *self.spec.image_shape), np.float32),
            "label": np.zeros((batch_size,), np.int32),
        }

    @abc.abstractmethod
    def init_state(self, rng: jax.Array, batch: Mapping[str, jax.Array]) -> TrainState:
        """Initial TrainState; jitted by the loop with replicated outputs."""

    def loss_fn(
        self, params: Any, model_state: Any, batch: Mapping[str, jax.Array], rng: jax.Array | None
    ) -> tuple[jax.Array, tuple[Any, dict[str, jax.Array]]]:
        """The training loss of one global batch: (loss, (new model state, scalar metrics)).

        Differentiated w.r.t. `params`; `model_state` holds the other variable collections (EMA
        codebooks, BatchNorm statistics; `{}` if none), `rng` is this step's key
        (`fold_in(state.rng, state.step)`: a resumed run draws the same numbers).
        """
        raise NotImplementedError(f"{type(self).__name__} defines neither loss_fn nor train_step.")

    def train_step(
        self, state: TrainState, batch: Mapping[str, jax.Array]
    ) -> tuple[TrainState, dict[str, jax.Array]]:
        """One update on the global batch; returns scalar metrics. Pure: jitted and donated by the loop.

        By default the one update of `loss_fn` (`update`); override for more.
        """
        return update(self, state, batch)

    @abc.abstractmethod
    def eval_step(self, state: TrainState, batch: Mapping[str, jax.Array]) -> Any:
        """Sums over one (padded, masked) eval batch; the loop adds them over batches."""

    @abc.abstractmethod
    def eval_summary(self, totals: Any) -> dict[str, Any]:
        """Host-side: accumulated sums (numpy) -> metrics dict (JSON-able)."""

    def eval_images(self, state: TrainState, batch: Mapping[str, jax.Array]) -> dict[str, np.ndarray]:
        """Named image stacks (N, H, W, C) in [0, 1]; each is written as a PNG grid of
        `GRID_COLUMNS` columns at each evaluation."""
        del state, batch
        return {}

    def summary_images(self, totals: Any) -> dict[str, np.ndarray]:
        """Host-side: named image stacks drawn from the accumulated eval sums of the
        whole eval split (e.g. code-usage histograms); written like `eval_images`."""
        del totals
        return {}

    def modes(self) -> dict[str, Any]:
        """Extra `--mode=` values this task supports: name -> fn(config, workdir)."""
        return {}


def update(task: Task, state: TrainState, batch: Any) -> tuple[TrainState, dict[str, jax.Array]]:
    """The one training update (the default `Task.train_step`): gradient, optimizer, model state.

    The step's key `fold_in(state.rng, state.step)` depends on (seed, step) only, so a resumed
    run draws the same random numbers as an uninterrupted one.
    """
    rng = jax.random.fold_in(state.rng, state.step)
    grads, (model_state, metrics) = jax.grad(task.loss_fn, has_aux=True)(
        state.params, state.model_state, batch, rng
    )
    updates, opt_state = task.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(
        step=state.step + 1, params=params, opt_state=opt_state, model_state=model_state
    )
    return new_state, metrics


# model_name -> module of `vqlatent.trainers`, for tasks that were merged into another.
ALIASES = {"vqvae": "autoencoder", "vqvae2": "autoencoder"}


def make_task(config: ml_collections.ConfigDict, spec: Any) -> Task:
    """Looks the task up by `config.model_name` (module `vqlatent.trainers.<name>`, or its alias)."""
    name = ALIASES.get(config.model_name, config.model_name)
    try:
        module = importlib.import_module(f"vqlatent.trainers.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"vqlatent.trainers.{name}":
            raise
        import pkgutil  # pylint: disable=g-import-not-at-top

        known = sorted(
            {
                m.name
                for m in pkgutil.iter_modules([os.path.dirname(__file__)])
                if m.name not in ("base", "loop", "optim", "workdir")
            }
            | set(ALIASES)
        )
        raise ValueError(f"Unknown config.model_name={config.model_name!r}; known: {known}.") from None
    return module.Task(config, spec)
