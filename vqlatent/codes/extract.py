"""`--mode=extract_codes`: run a trained model over the train and eval splits and write its codes.

The examples of each split are cut into fixed shards of `examples_per_shard`
consecutive examples (in the source split's storage order, unshuffled); shard k
reads exactly its examples (eval batches from the shard's first example on),
encodes them in batches of `batch_size` (padded, on every device of the mesh;
uint8 images become float32 inside the jitted encoder) and is written
atomically (`writer.SplitWriter`). A restarted extraction removes what a killed
run left half-written, skips the finished shards and computes the rest with the
same checkpoint, shard boundaries and batch size, so it produces the same bytes
as an uninterrupted run; the manifest, written last, lists every shard with its
checksums (see `layout` for the files).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from vqlatent import data as data_lib
from vqlatent.codes import interface, layout
from vqlatent.codes import provenance as provenance_lib
from vqlatent.codes import writer as writer_lib
from vqlatent.data.device import images_to_float
from vqlatent.parallel import mesh as mesh_lib

DEFAULT_EXAMPLES_PER_SHARD = 10_000


def default_config() -> ml_collections.ConfigDict:
    """`config.extract`: where to write (None: `<workdir>/codes`) and how many examples per shard."""
    return ml_collections.ConfigDict(
        dict(
            output_dir=ml_collections.config_dict.placeholder(str),
            examples_per_shard=DEFAULT_EXAMPLES_PER_SHARD,
        )
    )


@dataclasses.dataclass(frozen=True)
class SplitPlan:
    """The shards of one split: [start, stop) ranges of the source split."""

    name: str
    source_split: str
    num_examples: int
    shards: tuple[tuple[int, int], ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "source_split": self.source_split,
            "num_examples": self.num_examples,
            "num_shards": len(self.shards),
        }


def plan_split(name: str, source_split: str, num_examples: int, examples_per_shard: int) -> SplitPlan:
    if (
        isinstance(examples_per_shard, bool)
        or not isinstance(examples_per_shard, int)
        or examples_per_shard < 1
    ):
        raise ValueError(f"extract.examples_per_shard={examples_per_shard!r}: must be a positive integer.")
    shards = tuple(
        (a, min(a + examples_per_shard, num_examples)) for a in range(0, num_examples, examples_per_shard)
    )
    return SplitPlan(name, source_split, num_examples, shards)


def _encode_shard(
    encode,
    state,
    data_cfg: ml_collections.ConfigDict,
    split: str,
    start: int,
    stop: int,
    levels: Mapping[str, layout.LevelSpec],
    batch_size: int,
    mesh: jax.sharding.Mesh,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Codes and labels of examples [start, stop) of split `split`, in order."""
    shard_cfg = data_cfg.copy_and_resolve_references()
    shard_cfg.eval_split = split
    codes = {name: [] for name in levels}
    labels = []
    batches = data_lib.make_eval_batches(
        shard_cfg, global_batch_size=batch_size, offset=start, num_examples=stop - start
    )
    for local_batch in batches:
        num_real = int(local_batch["mask"].sum())
        if not np.all(local_batch["mask"][:num_real] == 1):
            raise AssertionError("eval batches must put padding last")
        batch = mesh_lib.shard_batch(local_batch, mesh)
        batch_codes = jax.device_get(encode(state, batch["image"]))
        for name in levels:
            codes[name].append(np.asarray(batch_codes[name])[:num_real])
        labels.append(np.asarray(local_batch["label"])[:num_real])
    return (
        {
            name: np.concatenate(parts) if parts else np.zeros((0, *levels[name].shape), np.int32)
            for name, parts in codes.items()
        },
        np.concatenate(labels) if labels else np.zeros((0,), np.int32),
    )


def _start_or_resume(output_dir: str, provenance: Mapping[str, Any]) -> bool:
    """Writes provenance.json for a new extraction; True if the directory is already complete."""
    provenance_path = os.path.join(output_dir, layout.PROVENANCE)
    if os.path.isfile(provenance_path):
        provenance_lib.check_resumable(layout.read_json(provenance_path), provenance, output_dir)
        return os.path.isfile(os.path.join(output_dir, layout.MANIFEST))
    if os.path.isdir(output_dir) and [n for n in os.listdir(output_dir) if not n.startswith(".")]:
        raise layout.CodesError(
            f"Output directory {output_dir} is not empty and holds no {layout.PROVENANCE}: it is not a "
            f"codes extraction; choose another --config.extract.output_dir."
        )
    layout.write_json_atomically(provenance_path, provenance)
    return False


def extract_codes(
    code_model: interface.CodeModel,
    state: Any,
    config: ml_collections.ConfigDict,
    *,
    workdir: str,
    step: int,
    output_dir: str,
    mesh: jax.sharding.Mesh,
    batch_size: int,
    examples_per_shard: int = DEFAULT_EXAMPLES_PER_SHARD,
    on_shard_written: Callable[[str, int], None] | None = None,
) -> dict[str, Any]:
    """Writes (or finishes) the codes dataset of `state` in `output_dir`; returns its manifest.

    Args:
      code_model: the task (see `interface.as_code_model`).
      state: the restored TrainState, placed on `mesh` (replicated or fsdp-sharded).
      config: the run's config (data splits; recorded in provenance.json).
      workdir, step: the checkpoint the state came from (provenance).
      output_dir: the dataset directory.
      mesh: the device mesh; batches are split over its `data` axis.
      batch_size: global batch size (a multiple of the mesh size).
      examples_per_shard: examples per shard file.
      on_shard_written: called with (split, shard index) after each shard is
        renamed into place (progress reporting; tests use it to interrupt).
    """
    if jax.process_count() != 1:
        raise NotImplementedError(
            "extract_codes runs in one process (it may use all its local devices); "
            f"this job has {jax.process_count()} processes."
        )
    mesh_lib.check_batch_size(batch_size, mesh, "eval_batch_size")
    levels = dict(code_model.code_levels)
    spec = data_lib.get_spec(config.data)
    plans = [
        plan_split("train", config.data.train_split, spec.num_train, examples_per_shard),
        plan_split("eval", config.data.eval_split, spec.num_eval, examples_per_shard),
    ]
    plan = {
        "examples_per_shard": int(examples_per_shard),
        "batch_size": int(batch_size),
        "splits": {p.name: p.to_json() for p in plans},
    }
    provenance = provenance_lib.make_provenance(config, workdir=workdir, step=step, levels=levels, plan=plan)
    output_dir = os.path.abspath(output_dir)
    if _start_or_resume(output_dir, provenance):
        logging.info("Codes in %s are already complete (checkpoint step %d).", output_dir, step)
        return layout.read_json(os.path.join(output_dir, layout.MANIFEST))

    # The state keeps the sharding it was restored with (replicated or fsdp), the batch is split.
    encode = jax.jit(lambda state, images: code_model.encode_codes(state, images_to_float(images)))
    splits_manifest = {}
    for split_plan in plans:
        writer = writer_lib.SplitWriter(output_dir, split_plan.name, levels, len(split_plan.shards))
        removed = writer.remove_temporaries()
        if removed:
            logging.warning("Removed half-written shards of an interrupted run: %s", removed)
        infos = []
        for k, (start, stop) in enumerate(split_plan.shards):
            if writer.is_written(k):
                info = writer.read_info(k)
                if (info["start"], info["stop"]) != (start, stop):
                    raise layout.CodesError(
                        f"{writer.path(k)} holds examples [{info['start']}, {info['stop']}), "
                        f"the plan says [{start}, {stop}); delete {output_dir} and re-extract."
                    )
                infos.append(info)
                continue
            tic = time.time()
            codes, labels = _encode_shard(
                encode,
                state,
                config.data,
                split_plan.source_split,
                start,
                stop,
                levels,
                batch_size,
                mesh,
            )
            if len(labels) != stop - start:
                raise layout.CodesError(
                    f"Shard {k} of {split_plan.name!r} read {len(labels)} examples, expected {stop - start}."
                )
            infos.append(writer.write(k, start, codes, labels))
            logging.info(
                "codes %s shard %d/%d: examples [%d, %d) in %.1f s",
                split_plan.name,
                k + 1,
                len(split_plan.shards),
                start,
                stop,
                time.time() - tic,
            )
            if on_shard_written is not None:
                on_shard_written(split_plan.name, k)
        splits_manifest[split_plan.name] = {**split_plan.to_json(), "shards": infos}
    manifest = writer_lib.write_manifest(output_dir, levels, splits_manifest)
    logging.info(
        "Wrote codes of checkpoint step %d to %s (%s).", step, output_dir, layout.describe_levels(levels)
    )
    return manifest


def extract_codes_mode(runner: Any) -> dict[str, Any]:
    """`--mode=extract_codes` for any task with code maps: newest checkpoint -> `config.extract.output_dir`.

    Configs without an `extract` section use `<workdir>/codes` and
    `DEFAULT_EXAMPLES_PER_SHARD`; the batch size is `eval_batch_size`.
    """
    config = runner.config
    options = config.get("extract") or default_config()
    code_model = interface.as_code_model(runner.task)
    state, step = runner.restore_for_eval()
    output_dir = options.get("output_dir") or os.path.join(runner.workdir, "codes")
    return extract_codes(
        code_model,
        state,
        config,
        workdir=runner.workdir,
        step=step,
        output_dir=output_dir,
        mesh=runner.mesh,
        batch_size=config.eval_batch_size,
        examples_per_shard=options.get("examples_per_shard", DEFAULT_EXAMPLES_PER_SHARD),
    )
