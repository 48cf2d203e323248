"""The model directory: a trained model that loads without its workdir, its data or this codebase's
training code.

  OUT/config.json          {"format", "format_version", "family", "components": {name: {config, spec,
                           step, source}}, "files": {file: sha256}}: everything that rebuilds the
                           networks (the training config and the data's shapes), nothing that needs the data
  OUT/<component>.safetensors
                           one file per network of the model (e.g. `autoencoder`, `prior_top`): its
                           variables, flattened to '/'-joined names ("params/decoder/conv/kernel",
                           "vq_ema/...", "batch_stats/..."); no optimizer, RNG or data position
  OUT/README.md            the model card (`card.py`)

A family is `autoencoder` (VQ-VAE, any-level VQ-VAE-2, any quantizer), `prior_chain` (the priors of
every level of a hierarchy and the autoencoder that decodes their codes) or `infogan`. Every weight
file's SHA-256 is in config.json and is checked when the model loads. The bytes depend only on the
checkpoint: the same checkpoint exports to the same files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from safetensors import numpy as st_numpy

from vqlatent.utils import errors
from vqlatent.utils.hashing import sha256_file

FORMAT = "vqlatent.model"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
WEIGHTS_SUFFIX = ".safetensors"
FAMILIES = ("autoencoder", "prior_chain", "infogan")
SEPARATOR = "/"


class ModelFormatError(errors.UserError):
    """A model directory that is not one, or whose files are missing, damaged or of another format."""


def flatten_variables(tree: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    """{'params': {'a': {'b': x}}} -> {'params/a/b': x} (numpy, host), keys sorted."""
    out = {}
    for key in sorted(tree):
        value = tree[key]
        name = f"{prefix}{SEPARATOR}{key}" if prefix else str(key)
        if SEPARATOR in str(key):
            raise ValueError(f"A variable name contains {SEPARATOR!r}: {name!r}; it cannot be flattened.")
        if isinstance(value, Mapping):
            out.update(flatten_variables(value, name))
        else:
            out[name] = np.asarray(value)
    return out


def unflatten_variables(flat: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """The inverse of `flatten_variables`."""
    tree: dict[str, Any] = {}
    for name, value in flat.items():
        node = tree
        *parents, leaf = name.split(SEPARATOR)
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def write_weights(path: str, variables: Mapping[str, Any]) -> str:
    """Writes a network's variables as safetensors; returns the file's SHA-256.

    Arrays are written as they are stored (float32 parameters, EMA statistics, BatchNorm averages,
    integer counters), so a loaded model computes bit for bit what the checkpoint computes.
    """
    flat = {k: np.array(v, order="C") for k, v in flatten_variables(variables).items()}  # Keeps 0-d arrays.
    encoded = st_numpy.save(flat, metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)})
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(canonical_safetensors(encoded))
    os.replace(tmp, path)
    return sha256_file(path)


def canonical_safetensors(encoded: bytes) -> bytes:
    """safetensors bytes with the JSON header's keys sorted.

    The library orders the tensors' data deterministically (by dtype alignment, then name) but writes
    its header from a hash map, whose key order changes from call to call; sorting the keys makes the
    same arrays the same bytes. Offsets in the header are relative to the data, so they stay valid; the
    header is padded with spaces to a multiple of 8 bytes, as the format asks.
    """
    length = int.from_bytes(encoded[:8], "little")
    header = json.loads(encoded[8 : 8 + length])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + encoded[8 + length :]


def read_weights(path: str, expected_sha256: str) -> dict[str, Any]:
    """The variables of a weights file, after checking its SHA-256 against config.json's."""
    if not os.path.isfile(path):
        raise ModelFormatError(
            f"The weights file {path} is missing: the model directory {os.path.dirname(path)} is "
            f"incomplete. Copy the whole directory again, or export the model again "
            f"(python -m vqlatent.main --mode=export --workdir=WORKDIR --config.export.dir=OUT)."
        )
    found = sha256_file(path)
    if found != expected_sha256:
        raise ModelFormatError(
            f"The weights file {path} is damaged: its SHA-256 is {found}, but {CONFIG_FILE} records "
            f"{expected_sha256}. Copy the model directory again, or export the model again from its "
            f"training workdir."
        )
    return unflatten_variables(st_numpy.load_file(path))


def write_json(path: str, obj: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def is_model_dir(path: str) -> bool:
    """Whether `path` holds a model directory's config.json (not a training workdir's)."""
    config_path = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(config_path):
        return False
    try:
        with open(config_path) as f:
            return json.load(f).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def read_model_config(path: str) -> dict[str, Any]:
    """config.json of model directory `path`, checked for its format, version and family."""
    config_path = os.path.join(path, CONFIG_FILE)
    try:
        with open(config_path) as f:
            record = json.load(f)
    except (OSError, ValueError) as e:
        raise ModelFormatError(f"{config_path} cannot be read as a model's config.json ({e}).") from e
    if record.get("format") != FORMAT:
        raise ModelFormatError(f"{config_path} is not a vqlatent model directory's config.json.")
    version = record.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelFormatError(
            f"{path} is in model format version {version}; this vqlatent reads version {FORMAT_VERSION}. "
            f"Install the vqlatent version that wrote it, or export the model again with this one."
        )
    if record.get("family") not in FAMILIES:
        raise ModelFormatError(f"{config_path}: unknown family {record.get('family')!r}; known: {FAMILIES}.")
    return record
