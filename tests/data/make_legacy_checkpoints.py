r"""Writes the tiny checkpoints in `tests/data/legacy/` with the code of one commit.

They were written by commit 82db423 (before the VQ-VAE and VQ-VAE-2 tasks were
merged into `vqlatent.trainers.autoencoder`), to check that workdirs made by
that code still restore and evaluate the same (`tests/test_train.py`):

    git archive 82db423 | tar -x -C /tmp/old
    cd /tmp/old && PYTHONPATH=/tmp/old python /path/to/tests/data/make_legacy_checkpoints.py \
        --out=/path/to/tests/data/legacy

Each `legacy/<config>/` holds what a run of `configs/<config>.py` (the default
digits variant, shrunk by `overrides.json`) left after 2 steps: `config.json`,
`checkpoints/2/` (orbax), `eval/metrics_00000002.json` (its evaluation), and
`variables.npz` (every leaf of the state's params and model state, keyed by
its path, taken from the trained state in memory).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import tempfile

import jax
import numpy as np

OVERRIDES = {
    "vqvae": {
        "model.num_hiddens": 8,
        "model.num_residual_hiddens": 4,
        "model.num_residual_layers": 1,
        "model.embedding_dim": 4,
        "quantizer.embedding_dim": 4,
        "quantizer.num_embeddings": 8,
    },
    "vqvae2": {
        "model.num_hiddens": 8,
        "model.num_residual_hiddens": 4,
        "model.num_residual_layers": 1,
        "quantizer.bottom.embedding_dim": 4,
        "quantizer.bottom.num_embeddings": 8,
        "quantizer.top.embedding_dim": 4,
        "quantizer.top.num_embeddings": 8,
    },
}
COMMON = {
    "batch_size": 8,
    "eval_batch_size": 64,
    "num_train_steps": 2,
    "log_every_steps": 1,
    "eval_every_steps": 2,
    "checkpoint_every_steps": 2,
    "progress_bar": False,
    "compilation_cache_dir": "",
    "data.num_workers": 1,
}


def apply_overrides(config, overrides):
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = config
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


def flat_leaves(tree) -> dict[str, np.ndarray]:
    return {
        "/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
        for path, v in jax.tree_util.tree_leaves_with_path(tree)
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    from vqlatent.trainers import loop  # The code under PYTHONPATH (the old commit).

    for name, overrides in OVERRIDES.items():
        spec = importlib.util.spec_from_file_location(name, os.path.join("configs", f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        all_overrides = {**overrides, **COMMON}
        config = apply_overrides(module.get_config(None), all_overrides)
        with tempfile.TemporaryDirectory() as tmp:
            config.data.data_dir = os.path.join(tmp, "tfds")
            workdir = os.path.join(tmp, "wd")
            state = loop.train_and_evaluate(config, workdir)
            target = os.path.join(args.out, name)
            shutil.rmtree(target, ignore_errors=True)
            os.makedirs(os.path.join(target, "eval"))
            shutil.copy(os.path.join(workdir, "config.json"), target)
            shutil.copytree(os.path.join(workdir, "checkpoints"), os.path.join(target, "checkpoints"))
            shutil.copy(os.path.join(workdir, "eval", "metrics_00000002.json"), os.path.join(target, "eval"))
        with open(os.path.join(target, "overrides.json"), "w") as f:
            json.dump(all_overrides, f, indent=2, sort_keys=True)
        variables = {"params": jax.device_get(state.params), **jax.device_get(state.model_state)}
        np.savez(os.path.join(target, "variables.npz"), **flat_leaves(variables))


if __name__ == "__main__":
    main()
