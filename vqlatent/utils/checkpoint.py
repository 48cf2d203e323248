"""Checkpoints in the workdir: orbax for the state, JSON for the data position,
and a guard against resuming (or overwriting) a different model.

Layout of a workdir:
  config.json              the full config of the run that created the workdir
  checkpoints/<step>/      orbax: `state` (TrainState) and `data_iterator` (grain state, with the
                           global batch size and process count it counts batches of)
  run.lock                 held by the run training in it (`vqlatent.utils.run_lock`)
  tensorboard/             event files
  eval/                    metrics JSON per evaluation, `latest.json`
  images/                  PNG grids

orbax writes each checkpoint into a temporary directory and renames it when
complete (`commit_success.txt`), so a run killed mid-save leaves the previous
checkpoint intact and the half-written one is ignored and cleaned up.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

# Config fields that define *what* is trained. A workdir holding a checkpoint
# of another value for any of these is refused rather than silently overwritten.
MODEL_DEFINING_FIELDS = ("model_name", "model", "quantizer", "prior", "data.name", "data.image_size", "dtype")
# Leaves under those fields that choose how a model is computed, not what it computes (every form is
# tested equal; `vqlatent.backend` picks the form per backend): a workdir resumes under any of them,
# and old workdirs written before such a field existed resume too.
IMPLEMENTATION_LEAVES = frozenset(
    {"upsample", "downsample", "argmin_form", "distance_precision", "ema_statistics"}
)


class WorkdirMismatchError(ValueError):
    """The workdir holds a run of a different model configuration."""


class ResumeMismatchError(ValueError):
    """The checkpoint's data position counts batches of another global batch size or process count."""


# The data-iterator state is a position in batches of one global batch size, each process reading
# its shard of every batch; it means another position under another batch size or process count.
BATCHING_KEY = "batching"


def with_batching(data_state: dict, global_batch_size: int, process_count: int) -> dict:
    """The data-iterator state to save, recording what its position counts."""
    return {
        **data_state,
        BATCHING_KEY: {"global_batch_size": int(global_batch_size), "process_count": int(process_count)},
    }


def check_batching(data_state: dict, global_batch_size: int, process_count: int, where: str) -> dict:
    """The iterator state of a restored `with_batching` record, or `ResumeMismatchError`.

    Checkpoints written before the batching was recorded resume as before (unchecked).
    """
    data_state = dict(data_state)
    saved = data_state.pop(BATCHING_KEY, None)
    if saved is None:
        return data_state
    now = {"global_batch_size": int(global_batch_size), "process_count": int(process_count)}
    if saved != now:
        raise ResumeMismatchError(
            f"{where} was trained with batch_size={saved['global_batch_size']} on "
            f"{saved['process_count']} process(es); this run has batch_size={now['global_batch_size']} on "
            f"{now['process_count']}. Its data position counts batches of that size split over that many "
            f"processes, so resuming would read other examples than an uninterrupted run. Resume with "
            f"--config.batch_size={saved['global_batch_size']} on {saved['process_count']} process(es), "
            f"or start a new --workdir."
        )
    return data_state


ABSENT = "<absent>"


def get_field(tree: Mapping[str, Any], dotted: str, default: Any = ABSENT) -> Any:
    """`tree['a']['b']` for 'a.b' in a nested (JSON) config dict, or `default`."""
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def _flatten(prefix: str, value: Any) -> dict[str, Any]:
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            out.update(_flatten(f"{prefix}.{k}", v))
        return out
    return {prefix: value}


def field_diffs(
    a: Mapping[str, Any], b: Mapping[str, Any], fields: Sequence[str]
) -> list[tuple[str, Any, Any]]:
    """(dotted leaf, value in a, value in b) for every leaf under `fields` that differs."""
    diffs = []
    for field in fields:
        flat_a, flat_b = _flatten(field, get_field(a, field)), _flatten(field, get_field(b, field))
        for key in sorted(set(flat_a) | set(flat_b)):
            value_a, value_b = flat_a.get(key, ABSENT), flat_b.get(key, ABSENT)
            if value_a != value_b:
                diffs.append((key, value_a, value_b))
    return diffs


def config_to_json_dict(config: ml_collections.ConfigDict) -> dict:
    """A JSON round-trippable dict of the config (tuples become lists)."""
    return json.loads(config.to_json_best_effort(sort_keys=True))


def check_workdir_config(workdir: str, config: ml_collections.ConfigDict, write: bool = True) -> None:
    """Refuses a workdir created by a different model; records the config otherwise."""
    path = os.path.join(workdir, "config.json")
    current = config_to_json_dict(config)
    has_checkpoints = os.path.isdir(os.path.join(workdir, "checkpoints")) and any(
        name.isdigit() for name in os.listdir(os.path.join(workdir, "checkpoints"))
    )
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        diffs = [
            f"  {key}: workdir has {a!r}, config has {b!r}"
            for key, a, b in field_diffs(saved, current, MODEL_DEFINING_FIELDS)
            if key.rsplit(".", 1)[-1] not in IMPLEMENTATION_LEAVES
        ]
        if diffs and has_checkpoints:
            raise WorkdirMismatchError(
                f"Workdir {workdir} holds checkpoints of a different model configuration:\n"
                + "\n".join(diffs)
                + "\nUse a new --workdir, or delete this one if you mean to discard it."
            )
    elif has_checkpoints:
        raise WorkdirMismatchError(
            f"Workdir {workdir} holds checkpoints but no config.json, so it cannot be checked to be "
            f"the same model; use a new --workdir."
        )
    if write and jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(current, f, indent=2, sort_keys=True)
        os.replace(tmp, path)


class Checkpointer:
    """Saves and restores (TrainState, data-iterator state) pairs with orbax.

    With several processes every process calls `save` and `restore` with the
    same step: orbax writes each array's shards from the processes that hold
    them (a replicated array once, from process 0), then process 0 commits the
    checkpoint after a barrier. The directory must therefore be on a filesystem
    every host sees (NFS, Filestore, a gcsfuse mount). The data-iterator state
    is the number of batches consumed (`{'next_index': n}`), the same on every
    process, so process 0's copy (`JsonSave` writes only on the primary host)
    resumes every process's own shard.
    """

    def __init__(self, workdir: str, max_to_keep: int = 2, async_save: bool = True):
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save
            ),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_state: dict | None, force: bool = False) -> bool:
        args = {"state": ocp.args.StandardSave(state)}
        if data_state is not None:
            args["data_iterator"] = ocp.args.JsonSave(data_state)
        return self.manager.save(step, args=ocp.args.Composite(**args), force=force)

    def restore(self, step: int, abstract_state: Any, with_data: bool = True) -> tuple[Any, dict | None]:
        """Restores into the structure, shapes, dtypes and shardings of `abstract_state`."""
        args = {"state": ocp.args.StandardRestore(abstract_state)}
        item_names = os.listdir(os.path.join(self.directory, str(step)))
        if with_data and "data_iterator" in item_names:
            args["data_iterator"] = ocp.args.JsonRestore()
        restored = self.manager.restore(step, args=ocp.args.Composite(**args))
        return restored["state"], restored.get("data_iterator") if "data_iterator" in args else None

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
