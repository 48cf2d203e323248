"""Every config field with a domain, checked in one place before any work starts.

`check_config(config, workdir)` runs before anything is created (no data prepared, no workdir
written, nothing compiled): `vqlatent.main` calls it first, and so do the training loop and
`--mode=eval` for callers that skip `main`. A bad value is refused with one paragraph naming
the field, the value and the valid range (`ConfigError`, a `UserError` and a `ValueError`), so a
run never trains for an hour and then fails at its first evaluation or save.

The rules are by field name: the shared loop's fields (counts >= 1, intervals > 0, steps >= 0),
every quantizer's `num_embeddings` (a codebook of K >= 2 codes: log2 K bits per code),
every optimizer block (the VQ-VAE's, InfoGAN's generator and discriminator), the data fields,
and the paths that must exist (an image folder) or must not be files (the workdir). Fields a
config does not have are not checked, so every model family shares the same rules.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from vqlatent.utils.errors import UserError


class ConfigError(UserError, ValueError):
    """A config value outside its domain (the message names the field, the value and the range)."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_at_least(low: int) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: _is_int(v) and v >= low), f"an integer >= {low}"


def _number(low: float, high: float = math.inf, low_open: bool = False, high_open: bool = True):
    def ok(v: Any) -> bool:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return False
        return (v > low if low_open else v >= low) and (v < high if high_open else v <= high)

    left = "(" if low_open else "["
    right = ")" if high_open or high == math.inf else "]"
    return ok, f"a finite number in {left}{low:g}, {high:g}{right}"


def _optional(rule: tuple[Callable[[Any], bool], str]) -> tuple[Callable[[Any], bool], str]:
    check, text = rule
    return (lambda v: v is None or check(v)), f"None or {text}"


# Top-level fields of the shared training loop (`configs.training_config`): field -> (test, range, why).
LOOP_FIELDS: dict[str, tuple[Callable[[Any], bool], str, str]] = {
    "batch_size": (*_int_at_least(1), "examples per training step"),
    "eval_batch_size": (*_int_at_least(1), "examples per evaluation batch"),
    "num_train_steps": (*_int_at_least(0), "the step training stops at"),
    "log_every_steps": (*_int_at_least(1), "the interval between metric fetches"),
    "checkpoint_every_steps": (*_int_at_least(1), "the interval between checkpoints"),
    "eval_every_steps": (*_int_at_least(0), "the interval between evaluations, 0 for none"),
    "keep_checkpoints": (*_int_at_least(1), "how many newest checkpoints are kept; 0 would keep none"),
    "eval_num_examples": (*_optional(_int_at_least(1)), "None evaluates the whole eval split"),
}
# Optimizer blocks: `optimizer` itself or any sub-block holding a `learning_rate` (InfoGAN's two).
OPTIMIZER_FIELDS = {
    "learning_rate": _number(0.0, low_open=True),
    "b1": _number(0.0, 1.0),
    "b2": _number(0.0, 1.0),
    "eps": _number(0.0),
    "weight_decay": _number(0.0),
    "grad_clip_norm": _number(0.0),
    "warmup_steps": _int_at_least(0),
}
# Quantizer fields, wherever a quantizer block is (`quantizer`, `quantizer.top`, ...).
QUANTIZER_FIELDS = {
    "num_embeddings": (*_int_at_least(2), "a codebook of K codes carries log2 K bits per code"),
    "embedding_dim": (*_int_at_least(1), ""),
    "commitment_cost": (*_number(0.0), ""),
    "decay": (*_number(0.0, 1.0), ""),
    "epsilon": (*_number(0.0, low_open=True), ""),
    "num_stages": (*_int_at_least(1), ""),
    "num_groups": (*_int_at_least(1), ""),
    "chunk_size": (*_optional(_int_at_least(1)), "None searches the whole codebook at once"),
}
# Model widths and counts: a layer with 0 channels (or 0 heads) computes nothing.
MODEL_COUNTS = frozenset(
    {
        "num_hiddens",
        "num_residual_hiddens",
        "embedding_dim",
        "channels",
        "head_channels",
        "cond_channels",
        "num_layers",
        "num_heads",
        "kernel_size",
        "dense_features",
    }
)
MODEL_NON_NEGATIVE = frozenset({"num_residual_layers", "num_downsamples"})


def _walk(tree: Any, prefix: str = "") -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(dotted path, node) of every mapping node of a (nested) config, the root first."""
    if isinstance(tree, Mapping) or hasattr(tree, "items"):
        yield prefix, tree
        for key, value in tree.items():
            if isinstance(value, Mapping) or hasattr(value, "items"):
                yield from _walk(value, f"{prefix}{key}.")


def _problems(config: Any) -> Iterator[str]:
    def bad(path: str, value: Any, text: str, why: str = "") -> str:
        reason = f" ({why})" if why else ""
        return f"config.{path}={value!r} must be {text}{reason}"

    for field, (check, text, why) in LOOP_FIELDS.items():
        if field in config and not check(config[field]):
            yield bad(field, config[field], text, why)
    for prefix, node in _walk(config):
        top = prefix.split(".", 1)[0]
        if top == "optimizer" and "learning_rate" in node:
            for field, (check, text) in OPTIMIZER_FIELDS.items():
                if field in node and not check(node[field]):
                    yield bad(prefix + field, node[field], text)
        if top == "quantizer":
            for field, (check, text, why) in QUANTIZER_FIELDS.items():
                if field in node and not check(node[field]):
                    yield bad(prefix + field, node[field], text, why)
            levels = node.get("levels") if "levels" in node else None
            if levels is not None and not (len(levels) >= 1 and all(_is_int(n) and n >= 2 for n in levels)):
                yield bad(prefix + "levels", tuple(levels), "a sequence of integers >= 2 (FSQ levels)")
        if top == "model":
            for field, value in node.items():
                if field in MODEL_COUNTS and _is_int(value) and value < 1:
                    yield bad(prefix + field, value, "an integer >= 1")
                elif field in MODEL_NON_NEGATIVE and _is_int(value) and value < 0:
                    yield bad(prefix + field, value, "an integer >= 0")
                elif field == "dropout_rate" and not _number(0.0, 1.0)[0](value):
                    yield bad(prefix + field, value, _number(0.0, 1.0)[1])
    mesh = config.get("mesh") if "mesh" in config else None
    if mesh is not None:
        if "data" in mesh and not (_is_int(mesh["data"]) and (mesh["data"] == -1 or mesh["data"] >= 1)):
            yield bad("mesh.data", mesh["data"], "-1 (all devices) or an integer >= 1")
        if "fsdp" in mesh and not (_is_int(mesh["fsdp"]) and mesh["fsdp"] >= 1):
            yield bad("mesh.fsdp", mesh["fsdp"], "an integer >= 1")
    data = config.get("data") if "data" in config else None
    if data is not None:
        yield from _data_problems(data, bad)


def _data_problems(data: Any, bad: Callable[..., str]) -> Iterator[str]:
    def get(field: str) -> Any:
        return data[field] if field in data else None

    for field in ("num_workers", "prefetch"):
        if get(field) is not None and not (_is_int(get(field)) and get(field) >= 0):
            yield bad(f"data.{field}", get(field), "an integer >= 0")
    fraction = get("eval_fraction")
    if fraction is not None and not _number(0.0, 1.0)[0](fraction):
        yield bad("data.eval_fraction", fraction, "a number in [0, 1)", "the share of images held out")
    channels = get("channels")
    if channels is not None and channels not in (1, 2, 3, 4):
        yield bad("data.channels", channels, "None, 1, 2, 3 or 4")
    size = get("image_size")
    if size is not None:
        sizes = [size] if _is_int(size) else list(size) if isinstance(size, (list, tuple)) else [None]
        if len(sizes) not in (1, 2) or not all(_is_int(s) and s >= 1 for s in sizes):
            yield bad("data.image_size", size, "None, an integer >= 1 or a pair (H, W) of them")
    if get("name") == "image_folder":
        folder = get("folder")
        if not folder:
            yield (
                "config.data.name='image_folder' needs the folder of images: set "
                "--config.data.folder=DIR (a directory of images, one subfolder per class, or train/ "
                "and test/)"
            )
        elif not os.path.isdir(folder):
            what = "a file" if os.path.exists(folder) else "missing"
            yield f"config.data.folder={folder!r} must be a directory of images (it is {what})"


def _workdir_problem(workdir: str) -> str | None:
    """Why `workdir` cannot be created or written as a directory, or None."""
    path = os.path.abspath(workdir)
    if os.path.exists(path) and not os.path.isdir(path):
        return f"--workdir={workdir} is a file, not a directory: give a directory (new or of an earlier run)"
    parent = os.path.dirname(path)
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if parent and not os.path.isdir(parent):
        return f"--workdir={workdir} cannot be created: {parent} is a file"
    return None


def check_config(config: Any, workdir: str | None = None) -> None:
    """`ConfigError` listing every config value outside its domain (and a workdir that is a file).

    Called before any work (see the module docstring); passes silently when all is well.
    """
    problems = list(_problems(config))
    if workdir is not None:
        problem = _workdir_problem(workdir)
        if problem:
            problems.append(problem)
    if problems:
        head = "Invalid config: " if len(problems) > 1 else ""
        raise ConfigError(
            head + "; ".join(problems) + ". Nothing was run: fix it on the command line "
            "(--config.FIELD=VALUE, --workdir=DIR) or in the config file."
        )
