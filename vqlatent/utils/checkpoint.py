"""Checkpoints in the workdir: orbax for the state, JSON for the data position, a record of
what each save wrote, and a guard against resuming (or overwriting) a different model or data.

Layout of a workdir:
  config.json              the full config of the run that created the workdir
  checkpoints/<step>/      orbax: `state` (TrainState) and `data_iterator` (grain state, with the
                           global batch size and process count it counts batches of), and
                           `vqlatent_files.json`: the size and SHA-256 of every file of the step
  checkpoints_set_aside/   checkpoints that failed verification, moved here (never deleted)
  run.lock                 held by the run training in it (`vqlatent.utils.run_lock`)
  tensorboard/             event files
  eval/                    metrics JSON per evaluation, `latest.json`
  images/                  PNG grids

orbax writes each checkpoint into a temporary directory and renames it when
complete (`commit_success.txt`), so a run killed mid-save leaves the previous
checkpoint intact and the half-written one is ignored and cleaned up. orbax does not
check what it reads back (a truncated, deleted or altered file is restored as garbage or
fails deep inside tensorstore), so `Checkpointer` records every committed save and verifies
the record before trusting a checkpoint (see `Checkpointer`).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from vqlatent import backend
from vqlatent.utils.errors import UserError
from vqlatent.utils.hashing import sha256_file

# Config fields that define *what* is trained. A workdir holding a checkpoint
# of another value for any of these is refused rather than silently overwritten.
MODEL_DEFINING_FIELDS = ("model_name", "model", "quantizer", "prior", "data.name", "data.image_size", "dtype")
# Config fields that choose the training examples: a resume under another value would go on
# training on other data than the run so far, so it is refused like another model.
DATA_DEFINING_FIELDS = (
    "data.name",
    "data.folder",
    "data.codes_dir",
    "data.image_size",
    "data.channels",
    "data.train_split",
    "data.eval_fraction",
    "data.label_key",
)
PATH_FIELDS = frozenset({"data.folder", "data.codes_dir"})
# Leaves under those fields that choose how a model is computed, not what it computes: the
# per-backend choices of `vqlatent.backend.CHOICES` (every form is tested equal). A workdir resumes
# under any of their values, and old workdirs written before such a field existed resume too.
IMPLEMENTATION_LEAVES = frozenset(backend.CHOICES)


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


def _data_diffs(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """`field_diffs` over `DATA_DEFINING_FIELDS`, paths compared absolute, fields a workdir predates skipped."""
    diffs = []
    for key, a, b in field_diffs(saved, current, DATA_DEFINING_FIELDS):
        if a is ABSENT:  # Written before the field existed: nothing to compare with.
            continue
        if key in PATH_FIELDS and isinstance(a, str) and isinstance(b, str):
            if os.path.abspath(a) == os.path.abspath(b):
                continue
        diffs.append((key, a, b))
    return diffs


def check_workdir_config(workdir: str, config: ml_collections.ConfigDict, write: bool = True) -> None:
    """Refuses a workdir created by a different model or on other data; records the config otherwise.

    With `write=False` nothing is written: the training loop checks first and writes the config
    (`write_workdir_config`) only once every other resume check has passed, so a refused resume
    leaves the workdir as it was.
    """
    path = os.path.join(workdir, "config.json")
    current = config_to_json_dict(config)
    checkpoints = os.path.join(workdir, "checkpoints")
    has_checkpoints = os.path.isdir(checkpoints) and any(name.isdigit() for name in os.listdir(checkpoints))
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
        data_diffs = [
            f"  {key}: workdir has {a!r}, config has {b!r}" for key, a, b in _data_diffs(saved, current)
        ]
        if data_diffs and has_checkpoints:
            raise WorkdirMismatchError(
                f"Workdir {workdir} holds checkpoints trained on other data:\n"
                + "\n".join(data_diffs)
                + "\nResuming would go on training on other examples than the run so far. Resume "
                "with the workdir's values, or use a new --workdir to train on this data."
            )
    elif has_checkpoints:
        raise WorkdirMismatchError(
            f"Workdir {workdir} holds checkpoints but no config.json, so it cannot be checked to be "
            f"the same model; use a new --workdir."
        )
    if write:
        write_workdir_config(workdir, config)


def write_workdir_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Writes `config.json` (process 0, atomically; left alone when it already holds this config)."""
    if jax.process_index() != 0:
        return
    path = os.path.join(workdir, "config.json")
    current = config_to_json_dict(config)
    if os.path.exists(path):
        try:
            with open(path) as f:
                if json.load(f) == current:
                    return
        except (OSError, ValueError):
            pass
    os.makedirs(workdir, exist_ok=True)
    tmp = path + ".tmp"
    try:
        with open(tmp, "w") as f:
            json.dump(current, f, indent=2, sort_keys=True)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# -- verified checkpoints ------------------------------------------------------------------

# Written into each committed step directory: the size and SHA-256 of every file orbax wrote.
RECORD_NAME = "vqlatent_files.json"
# Checkpoints that fail verification are moved here (never deleted); orbax never looks in it.
SET_ASIDE_DIR = "checkpoints_set_aside"
_ORBAX_TMP = ".orbax-checkpoint-tmp"


class CheckpointError(UserError):
    """A checkpoint could not be written, or none in the workdir can be trusted."""


class NoUsableCheckpointError(CheckpointError):
    """The workdir has checkpoints, but none is complete and verified."""


class CheckpointSaveError(CheckpointError):
    """A save did not complete (disk full, quota, I/O error): training stopped without it."""


def _files(step_dir: str) -> list[str]:
    """Every file under `step_dir` (relative paths, sorted), the record itself excepted."""
    out = []
    for directory, dirs, files in os.walk(step_dir):
        dirs.sort()
        for name in files:
            rel = os.path.relpath(os.path.join(directory, name), step_dir)
            if rel != RECORD_NAME:
                out.append(rel)
    return sorted(out)


def write_record(step_dir: str) -> None:
    """Records the size and SHA-256 of every file of a committed checkpoint (atomically)."""
    record = {
        "format": 1,
        "files": {
            rel: [os.path.getsize(os.path.join(step_dir, rel)), sha256_file(os.path.join(step_dir, rel))]
            for rel in _files(step_dir)
        },
    }
    tmp = os.path.join(step_dir, RECORD_NAME + ".tmp")
    with open(tmp, "w") as f:
        json.dump(record, f, indent=0, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(step_dir, RECORD_NAME))


def verify(step_dir: str) -> str | None:
    """Why checkpoint `step_dir` cannot be trusted, or None.

    A recorded checkpoint must hold every recorded file with its size and SHA-256 (catching
    truncated, deleted and altered files). One without a record (written before records existed,
    or by a run killed between orbax's commit and the record) must at least be complete: orbax's
    metadata and a non-empty `state` item.
    """
    if not os.path.isdir(step_dir):
        return "it is not a directory"
    record_path = os.path.join(step_dir, RECORD_NAME)
    if not os.path.exists(record_path):
        state = os.path.join(step_dir, "state")
        if not os.listdir(step_dir):
            return "the directory is empty"
        if not os.path.isdir(state) or not os.listdir(state):
            return "it has no 'state' item (an incomplete write)"
        if not os.path.exists(os.path.join(step_dir, "_CHECKPOINT_METADATA")):
            return "orbax's _CHECKPOINT_METADATA is missing (an incomplete write)"
        return None
    try:
        with open(record_path) as f:
            files = json.load(f)["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"its file record {RECORD_NAME} is unreadable ({e})"
    for rel, (size, digest) in sorted(files.items()):
        path = os.path.join(step_dir, rel)
        if not os.path.isfile(path):
            return f"{rel} is missing"
        found = os.path.getsize(path)
        if found != size:
            return f"{rel} has {found} bytes, {size} were written"
        if sha256_file(path) != digest:
            return f"{rel} does not have the content that was written (SHA-256 differs)"
    return None


def _leaf_paths(tree: Any) -> list[str]:
    return sorted(jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0])


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else jnp.array(True)


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


_FULL_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_FULL_DISK_TEXT = {
    "No space left on device": errno.ENOSPC,
    "RESOURCE_EXHAUSTED": errno.ENOSPC,
    "Disk quota exceeded": errno.EDQUOT,
    "File too large": errno.EFBIG,
}


def _write_failure(error: BaseException | None) -> str:
    """': <why>' for a failed save: the OS's words for a full disk / quota / size limit anywhere in
    the error chain (tensorstore reports ENOSPC as RESOURCE_EXHAUSTED), else the error's first line."""
    chain = error
    while chain is not None:
        if isinstance(chain, OSError) and chain.errno in _FULL_DISK_ERRNOS:
            return f": {os.strerror(chain.errno)}"
        for text, number in _FULL_DISK_TEXT.items():
            if text in str(chain):
                return f": {os.strerror(number)}"
        chain = chain.__cause__ or chain.__context__
    if error is None:
        return " (orbax did not commit it; its log above says why)"
    first = str(error).splitlines()[0][:300] if str(error) else ""
    return f": {type(error).__name__}: {first}"


def _megabytes(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def _tree_size(directory: str) -> int:
    total = 0
    for root, _, files in os.walk(directory):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total


class Checkpointer:
    """Saves and restores (TrainState, data-iterator state) pairs with orbax, verified.

    Every save is recorded once orbax has committed it: the size and SHA-256 of each file it
    wrote (`RECORD_NAME` in the step directory). `latest_step` and `restore_latest` trust only a
    checkpoint that verifies against its record (`verify`); a newer one that does not (truncated,
    deleted or altered files, an empty or half-written directory) is reported in one warning and
    skipped, so every restore path (training's resume, `--mode=eval`, `trainers.workdir` for
    inference and sampling) falls back to the newest good checkpoint. A training run
    (`repair=True`, holding the workdir's lock) also moves it aside into `<workdir>/
    checkpoints_set_aside/` (nothing is deleted) and removes orbax's temporary directories of
    interrupted saves; read-only users leave the directory as it is (a training run may be
    writing it). When no checkpoint is usable the error says which failed and what to do.

    A save that does not complete (disk full, quota, an I/O error) stops the run with
    `CheckpointSaveError` (one paragraph: the path, the free space, the size a checkpoint needs)
    and leaves no partial directory behind; the previous checkpoints stay.

    With several processes every process calls `save` and `restore` with the
    same step: orbax writes each array's shards from the processes that hold
    them (a replicated array once, from process 0), then process 0 commits the
    checkpoint after a barrier. The directory must therefore be on a filesystem
    every host sees (NFS, Filestore, a gcsfuse mount). The data-iterator state
    is the number of batches consumed (`{'next_index': n}`), the same on every
    process, so process 0's copy (`JsonSave` writes only on the primary host)
    resumes every process's own shard. Every process verifies the same files; process 0
    writes the records and moves checkpoints aside.
    """

    def __init__(self, workdir: str, max_to_keep: int = 2, async_save: bool = True, repair: bool = False):
        self.workdir = workdir
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        self.set_aside_directory = os.path.abspath(os.path.join(workdir, SET_ASIDE_DIR))
        self.max_to_keep = max_to_keep
        self.repair = repair
        self._pending: int | None = None  # A step saved asynchronously, not yet recorded.
        self._failed = False
        self._bad: dict[int, str] = {}  # Steps found bad, with the reason (reported once).
        self._verified: set[int] = set()
        if repair:
            self._remove_interrupted_saves()
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save
            ),
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "data_iterator": ocp.JsonCheckpointHandler(),
            },
        )

    # -- finding a checkpoint to trust ---------------------------------------------------
    def step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def all_steps(self) -> list[int]:
        """Every numbered checkpoint directory, oldest first (verified or not)."""
        if not os.path.isdir(self.directory):
            return []
        return sorted(int(n) for n in os.listdir(self.directory) if n.isdigit())

    def _check(self, step: int) -> str | None:
        if step in self._verified:
            return None
        if step not in self._bad:
            reason = verify(self.step_dir(step))
            if reason is None:
                self._verified.add(step)
                return None
            self._bad[step] = reason
        return self._bad[step]

    def latest_step(self) -> int | None:
        """The newest checkpoint that verifies; None when there is none at all.

        Newer ones that fail are reported (and, with `repair`, moved aside); `NoUsableCheckpointError`
        when checkpoints exist but none verifies.
        """
        steps = self.all_steps()
        bad: list[int] = []
        for step in reversed(steps):
            if self._check(step) is None:
                self._report(bad, fallback=step)
                return step
            bad.append(step)
        if bad:
            self._report(bad, fallback=None)
        elif self.repair and os.path.isdir(self.set_aside_directory) and os.listdir(self.set_aside_directory):
            raise NoUsableCheckpointError(
                f"{self.directory} has no usable checkpoint left: earlier runs moved the ones that "
                f"failed verification to {self.set_aside_directory}. Starting again from step 0 would "
                f"overwrite this workdir's evaluations. Use a new --workdir, or delete "
                f"{self.set_aside_directory} to train this one again from step 0."
            )
        return None

    def _report(self, bad: list[int], fallback: int | None) -> None:
        """One paragraph on the checkpoints skipped (moving them aside with `repair`); raises if none is left."""
        if not bad:
            return
        new = [s for s in bad if s not in getattr(self, "_reported", set())]
        self._reported = getattr(self, "_reported", set()) | set(bad)
        moved = self._set_aside(bad) if self.repair else {}
        what = "; ".join(
            f"step {s}: {self._bad[s]}" + (f" (moved to {moved[s]})" if s in moved else "") for s in bad
        )
        where = (
            "nothing was deleted"
            if self.repair
            else "left in place; the next training run in this workdir moves them aside"
        )
        if fallback is None:
            raise NoUsableCheckpointError(
                f"No usable checkpoint in {self.directory}: {what}; {where}. The files of a checkpoint "
                f"differ from what was written (a damaged disk or copy, or a write cut short), so "
                f"nothing can be resumed or evaluated from it. Restore the workdir from a backup, or "
                f"use a new --workdir to train from step 0."
            )
        if new:
            logging.warning(
                "Checkpoint(s) in %s failed verification and are skipped: %s; %s. Using step %d, the "
                "newest checkpoint that verifies%s.",
                self.directory,
                what,
                where,
                fallback,
                "; training repeats the steps after it" if self.repair else "",
            )

    def _set_aside(self, steps: list[int]) -> dict[int, str]:
        """Moves checkpoints `steps` into the set-aside folder (process 0); returns where each went."""
        _sync("vqlatent_checkpoint_verified")
        moved = {}
        for step in steps:
            target = os.path.join(self.set_aside_directory, f"{step}.corrupt")
            n = 1
            while os.path.exists(target):
                n += 1
                target = os.path.join(self.set_aside_directory, f"{step}.corrupt-{n}")
            moved[step] = target
            if jax.process_index() == 0:
                os.makedirs(self.set_aside_directory, exist_ok=True)
                os.rename(self.step_dir(step), target)
        _sync("vqlatent_checkpoint_set_aside")
        self.manager.reload()
        return moved

    def _remove_interrupted_saves(self) -> None:
        """Deletes orbax's temporary directories of saves that never committed (process 0)."""
        if jax.process_index() != 0 or not os.path.isdir(self.directory):
            return
        for name in os.listdir(self.directory):
            if _ORBAX_TMP in name:
                shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)

    # -- restoring ---------------------------------------------------------------------
    def restore(
        self,
        step: int,
        abstract_state: Any,
        with_data: bool = True,
        fresh_opt_state: Callable[[], Any] | None = None,
    ) -> tuple[Any, dict | None]:
        """Restores checkpoint `step` (verified first) into the structure, shapes, dtypes and
        shardings of `abstract_state`.

        When the checkpoint's optimizer state has another structure than `abstract_state`'s (the
        optimizer changed: gradient clipping turned on, adam -> adamw, learning-rate multipliers)
        and `fresh_opt_state` is given, everything else is restored and the optimizer state is
        `fresh_opt_state()` (a warning says so); without it that is an error naming the cause.
        """
        reason = self._check(step)
        if reason is not None:
            raise NoUsableCheckpointError(
                f"Checkpoint step {step} in {self.directory} failed verification: {reason}. Use another "
                f"step (the newest good one is found when no step is given)."
            )
        item_names = os.listdir(self.step_dir(step))
        saved = self._saved_opt_state(step)
        mismatch = saved is not None and _leaf_paths(saved) != _leaf_paths(
            ocp.tree.serialize_tree(abstract_state.opt_state, keep_empty_nodes=True)
        )
        target = abstract_state
        if mismatch:
            if fresh_opt_state is None:
                raise ResumeMismatchError(
                    f"The checkpoint at step {step} in {self.directory} holds the state of another "
                    f"optimizer than this config builds (optimizer.name, grad_clip_norm, warmup_steps "
                    f"or lr_multipliers changed): use the workdir's optimizer settings (its config.json)."
                )
            replicated = jax.sharding.NamedSharding(
                jax.sharding.Mesh(np.array(jax.devices()), ("d",)), jax.sharding.PartitionSpec()
            )
            target = {
                "step": abstract_state.step,
                "params": abstract_state.params,
                "model_state": abstract_state.model_state,
                "rng": abstract_state.rng,
                "opt_state": jax.tree.map(
                    lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=replicated), saved
                ),
            }
        args = {"state": ocp.args.StandardRestore(target)}
        if with_data and "data_iterator" in item_names:
            args["data_iterator"] = ocp.args.JsonRestore()
        restored = self.manager.restore(step, args=ocp.args.Composite(**args))
        state = restored["state"]
        if mismatch:
            state = abstract_state.replace(
                step=state["step"],
                params=state["params"],
                model_state=state["model_state"],
                rng=state["rng"],
                opt_state=fresh_opt_state(),
            )
            logging.warning(
                "The optimizer changed since step %d was saved in %s (optimizer.name, grad_clip_norm, "
                "warmup_steps or lr_multipliers): resuming its parameters, model state and data "
                "position with a freshly initialised optimizer state (Adam moments and schedule "
                "count start from zero).",
                step,
                self.directory,
            )
        data = restored.get("data_iterator") if "data_iterator" in args else None
        return state, data

    def _saved_opt_state(self, step: int) -> Any:
        """The metadata tree of the checkpoint's `opt_state`, or None when it cannot be read."""
        try:
            tree = self.manager.item_metadata(step)["state"]
            tree = getattr(tree, "tree", tree)
            return tree.get("opt_state") if isinstance(tree, Mapping) else None
        except Exception:  # pylint: disable=broad-exception-caught
            return None  # Older layouts: restore as before (a real mismatch then fails in orbax).

    def restore_latest(
        self, abstract_state: Any, with_data: bool = True, fresh_opt_state: Callable[[], Any] | None = None
    ) -> tuple[Any, dict | None, int] | None:
        """(state, data state, step) of the newest checkpoint that verifies and holds finite values.

        None when the workdir has no checkpoint; `NoUsableCheckpointError` when none is usable.
        A checkpoint without a record whose values are not all finite (a save never holds NaN)
        is treated like one that fails verification.
        """
        while True:
            step = self.latest_step()
            if step is None:
                return None
            state, data = self.restore(step, abstract_state, with_data, fresh_opt_state)
            if bool(_all_finite(state)):
                return state, data, step
            self._verified.discard(step)
            self._bad[step] = "it holds non-finite values (no save ever writes them)"

    # -- saving ------------------------------------------------------------------------
    def save(self, step: int, state: Any, data_state: dict | None, force: bool = False) -> bool:
        """Starts saving `step` (asynchronously); the previous save is finished and recorded first."""
        self._finish_pending()
        args = {"state": ocp.args.StandardSave(state)}
        if data_state is not None:
            args["data_iterator"] = ocp.args.JsonSave(data_state)
        try:
            saved = self.manager.save(step, args=ocp.args.Composite(**args), force=force)
        except Exception as e:  # pylint: disable=broad-exception-caught
            self._failed_save(step, e)
        if saved:
            self._pending = step
        return saved

    def poll(self) -> None:
        """Records a finished asynchronous save, or stops the run if it failed (cheap; one process only:
        with several processes the saves are finished at the next collective `save` or `wait`)."""
        if (
            self._pending is not None
            and jax.process_count() == 1
            and not self.manager.is_saving_in_progress()
        ):
            self._finish_pending()

    def _finish_pending(self) -> None:
        if self._pending is None:
            return
        step, self._pending = self._pending, None
        try:
            self.manager.wait_until_finished()
        except Exception as e:  # pylint: disable=broad-exception-caught
            self._failed_save(step, e)
        if not os.path.isdir(self.step_dir(step)):  # orbax logs a failed commit and goes on.
            self._failed_save(step, None)
        _sync("vqlatent_checkpoint_committed")
        if jax.process_index() == 0:
            try:
                write_record(self.step_dir(step))
            except OSError as e:
                self._failed_save(step, e)
        self._verified.add(step)

    def _failed_save(self, step: int, error: BaseException | None) -> None:
        """Raises `CheckpointSaveError` for `step`, removing its partial directory."""
        self._failed = True
        for name in os.listdir(self.directory) if os.path.isdir(self.directory) else []:
            if name.startswith(f"{step}{_ORBAX_TMP}") or name.startswith(f"{step}.orbax"):
                shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
        try:
            free = shutil.disk_usage(self.directory).free
        except OSError:
            free = None
        good = [s for s in self.all_steps() if s != step]
        needed = _tree_size(self.step_dir(good[-1])) if good else None
        cause = _write_failure(error)
        space = ""
        if free is not None:
            space = f" That filesystem has {_megabytes(free)} free"
            if needed:
                space += (
                    f"; a checkpoint here takes about {_megabytes(needed)}, so each save needs at least "
                    f"that much free (with keep_checkpoints={self.max_to_keep}, up to "
                    f"{self.max_to_keep + 1} checkpoints are on disk while the newest is written)"
                )
            space += "."
        resume = f"it resumes from step {good[-1]}" if good else "it starts from step 0"
        raise CheckpointSaveError(
            f"Saving the checkpoint of step {step} to {self.directory} failed{cause}."
            f"{space} Training stopped at step {step} without it (the partial save was removed; "
            f"the earlier checkpoints are intact). Free some space (or move --workdir to a larger "
            f"disk, or lower --config.keep_checkpoints) and rerun the same command: {resume}."
        ) from error

    def wait(self) -> None:
        """Waits for the last save to be committed and recorded (`CheckpointSaveError` if it failed)."""
        self._finish_pending()

    def close(self) -> None:
        """Finishes the last save (unless one already failed) and releases orbax's threads."""
        try:
            if not self._failed:
                self._finish_pending()
        finally:
            try:
                self.manager.close()
            except Exception:  # pylint: disable=broad-exception-caught
                if not self._failed:
                    raise


def latest_state_metadata(workdir: str) -> tuple[Any, str] | None:
    """(metadata, path) of the newest verified checkpoint of `workdir`: its saved TrainState as a
    tree of orbax array metadata (shapes and dtypes; nothing restored) and the checkpoint's
    directory; None without a checkpoint."""
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        return None
    checkpointer = Checkpointer(workdir)
    try:
        step = checkpointer.latest_step()
    finally:
        checkpointer.close()
    if step is None:
        return None
    path = checkpointer.step_dir(step)
    return ocp.StandardCheckpointHandler().metadata(epath.Path(path) / "state"), path
