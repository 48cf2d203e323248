"""Where a codes dataset came from, and whether an interrupted extraction may be continued.

`provenance.json` is written before the first shard. It records the checkpoint
(workdir, checkpoint directory, step), the full config of the run, the levels,
the extraction plan (shards per split, batch size) and the software versions. A
restarted extraction continues only if everything that determines the bytes of
the shards is unchanged (`fingerprint`); otherwise it stops with
`ProvenanceMismatchError` instead of mixing two models' codes in one dataset.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections

from vqlatent.codes import layout
from vqlatent.utils import checkpoint as ckpt_lib

# Data fields that decide which images (and labels) are encoded.
_DATA_FIELDS = ("name", "image_size", "train_split", "eval_split", "image_key", "label_key")


def make_provenance(
    config: ml_collections.ConfigDict,
    *,
    workdir: str,
    step: int,
    levels: Mapping[str, layout.LevelSpec],
    plan: Mapping[str, Any],
) -> dict[str, Any]:
    """The provenance record of extracting the codes of checkpoint `step` of `workdir`."""
    config_json = ckpt_lib.config_to_json_dict(config)
    workdir = os.path.abspath(workdir)
    return {
        "checkpoint": {
            "workdir": workdir,
            "directory": os.path.join(workdir, "checkpoints", str(step)),
            "step": int(step),
        },
        "model_name": config.model_name,
        "model_config": {f: ckpt_lib.get_field(config_json, f, None) for f in ckpt_lib.MODEL_DEFINING_FIELDS},
        "data": {f: config_json["data"].get(f) for f in _DATA_FIELDS},
        "levels": layout.levels_to_json(levels),
        "plan": dict(plan),
        "config": config_json,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": list(sys.argv),
        "versions": {"jax": jax.__version__, "python": sys.version.split()[0]},
    }


def fingerprint(provenance: Mapping[str, Any]) -> dict[str, Any]:
    """The parts that determine the shards' bytes (not the time, command or versions)."""
    return {
        k: provenance.get(k) for k in ("checkpoint", "model_name", "model_config", "data", "levels", "plan")
    }


def check_resumable(existing: Mapping[str, Any], new: Mapping[str, Any], directory: str) -> None:
    """`ProvenanceMismatchError` listing the differences, unless `existing` may be continued by `new`."""
    a, b = fingerprint(existing), fingerprint(new)
    diffs = [
        f"  {field}: directory has {x!r}, this run has {y!r}"
        for field, x, y in ckpt_lib.field_diffs(a, b, list(a))
    ]
    if diffs:
        raise layout.ProvenanceMismatchError(
            f"{directory} holds codes extracted with another model, checkpoint or plan:\n"
            + "\n".join(diffs)
            + "\nChoose another --config.extract.output_dir, or delete the directory to re-extract."
        )
