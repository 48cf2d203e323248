"""`vqlatent.load(path)`: a trained model from a model directory, a training workdir or the package.

  vqlatent.load("pretrained:mnist_vqvae2_chain")   # a model shipped with the package (`pretrained`)
  vqlatent.load("/path/to/export")                 # a model directory (`--mode=export`)
  vqlatent.load("/path/to/workdir", step=2000)     # a training workdir: its newest checkpoint, or `step`

Returns the family's object: `Autoencoder` (VQ-VAE / VQ-VAE-2), `PriorChain` (a top prior's workdir or
a chain's export: class -> codes -> pixels) or `InfoGAN`. Nothing reads the training data, TFDS, the
optimizer state or a device mesh: the networks are rebuilt from the recorded config and data shapes.
"""

from __future__ import annotations

import os
from typing import Any

from vqlatent.codes import dataset as codes_dataset
from vqlatent.codes import layout
from vqlatent.models import components as comp_lib
from vqlatent.models import format as fmt
from vqlatent.models import pretrained
from vqlatent.models.autoencoder import Autoencoder
from vqlatent.models.infogan import InfoGAN
from vqlatent.models.prior_chain import PriorChain
from vqlatent.priors import generate
from vqlatent.trainers import workdir as workdir_lib

AUTOENCODER_TASKS = ("vqvae", "vqvae2", "autoencoder", "vqgan")
PRIOR_TASKS = ("pixelcnn", "maskgit")
PRETRAINED_PREFIX = "pretrained:"


class ModelPathError(fmt.ModelFormatError):
    """A path that holds no model."""


def load(path: str, step: int | None = None, lower_priors: str | None = None) -> Any:
    """The model at `path` (see the module docstring); `step` picks a workdir's checkpoint, and
    `lower_priors` ('bottom=PATH[,...]': workdirs, exports or pretrained:NAME) a chain's lower priors
    instead of its config's `sample.lower_priors` (a top prior's workdir) or its own (an export)."""
    path = str(path)
    if path.startswith(PRETRAINED_PREFIX):
        if step is not None:
            raise ModelPathError(f"step={step} was given for {path}: a pretrained model has one step.")
        model = load_model_dir(pretrained.path(path[len(PRETRAINED_PREFIX) :]))
    elif not os.path.isdir(path):
        raise ModelPathError(
            f"{path!r} is not a directory: give a model directory (--mode=export), a training workdir, "
            f"or pretrained:NAME (one of {pretrained.names()})."
        )
    elif fmt.is_model_dir(path):
        if step is not None:
            raise ModelPathError(
                f"step={step} was given for the model directory {path}, which holds one step."
            )
        model = load_model_dir(path)
    elif os.path.isfile(os.path.join(path, "config.json")):
        return load_workdir(path, step, lower_priors)
    else:
        raise ModelPathError(
            f"{path} holds no config.json: it is neither a model directory (--mode=export) nor a training "
            f"workdir. Give the directory that holds config.json."
        )
    return _with_lower_priors(model, path, lower_priors) if lower_priors else model


def load_model_dir(path: str) -> Any:
    """The model of an export directory, its weight files checked against their SHA-256."""
    record = fmt.read_model_config(path)
    files = record.get("files", {})
    parts = {}
    for name, entry in record["components"].items():
        weights = name + fmt.WEIGHTS_SUFFIX
        if weights not in files:
            raise fmt.ModelFormatError(f"{path}/{fmt.CONFIG_FILE} lists no checksum for {weights}.")
        parts[name] = comp_lib.from_record(name, path, entry, files[weights])
    family = record["family"]
    if family == "autoencoder":
        return Autoencoder(parts["autoencoder"])
    if family == "infogan":
        return InfoGAN(parts["infogan"])
    priors = [parts[name] for name in record["priors"]]
    return PriorChain(parts["autoencoder"], priors)


def load_workdir(path: str, step: int | None = None, lower_priors: str | None = None) -> Any:
    """The model trained in workdir `path` (a top prior's workdir gives its whole chain)."""
    config = workdir_lib.load_config(path)
    name = config.get("model_name")
    if name in AUTOENCODER_TASKS:
        return Autoencoder(comp_lib.from_workdir("autoencoder", path, step))
    if name == "infogan":
        return InfoGAN(comp_lib.from_workdir("infogan", path, step))
    if name in PRIOR_TASKS:
        return _chain_from_workdir(path, step, lower_priors)
    raise ModelPathError(
        f"{path} holds a {name!r} model; vqlatent.load loads autoencoders (vqvae, vqvae2, vqgan), prior chains "
        f"(PixelCNN or MaskGIT: the top prior's workdir) and InfoGAN."
    )


def _chain_from_workdir(path: str, step: int | None, lower_priors: str | None) -> PriorChain:
    top = comp_lib.from_workdir("prior_top", path, step)
    if top.task.cond_level is not None:
        raise ModelPathError(
            f"{path} holds the prior of level {top.task.level!r}, conditioned on {top.task.cond_level!r}: "
            f"load the unconditioned top prior's workdir (its config.sample.lower_priors names the others)."
        )
    priors = [top]
    for level, lower_path in generate.parse_lower_priors(
        lower_priors or top.config.sample.get("lower_priors")
    ).items():
        priors.append(_lower_prior(level, lower_path))
    checkpoint = codes_checkpoint(path, top.spec)
    source, ae_step = checkpoint["workdir"], checkpoint.get("step")
    if fmt.is_model_dir(source):
        model = load_model_dir(source)
        autoencoder = model.autoencoder.component if isinstance(model, PriorChain) else model.component
    else:
        autoencoder = comp_lib.from_workdir("autoencoder", source, ae_step)
    return PriorChain(autoencoder, priors)


def _with_lower_priors(model: Any, path: str, lower_priors: str) -> PriorChain:
    """An exported chain with the lower priors `lower_priors` names in place of (or beside) its own:
    e.g. a newly trained bottom prior below pretrained:NAME's top prior."""
    if not isinstance(model, PriorChain):
        raise ModelPathError(
            f"lower_priors={lower_priors!r} was given for {path}, which holds a {model.family}: only a "
            f"prior chain has lower priors. Leave lower_priors out."
        )
    replacements = generate.parse_lower_priors(lower_priors)
    top, own = model.priors[0], {p.task.level: p for p in model.priors[1:]}
    if top.task.level in replacements:
        raise ModelPathError(
            f"lower_priors={lower_priors!r} names level {top.task.level!r}, the top prior of {path}: "
            f"lower_priors replaces the priors below it."
        )
    lower = {**own, **{level: _lower_prior(level, p) for level, p in replacements.items()}}
    return PriorChain(model.autoencoder.component, [top, *lower.values()])


def _lower_prior(level: str, path: str) -> comp_lib.Component:
    """The prior of `level` from a training workdir, or from a chain's export or pretrained:NAME (so a
    newly trained prior can be sampled above or below an exported chain's)."""
    if not (path.startswith(PRETRAINED_PREFIX) or fmt.is_model_dir(path)):
        prior = comp_lib.from_workdir(f"prior_{level}", path)
        if prior.task.level != level:
            raise ModelPathError(
                f"config.sample.lower_priors: {path} holds the prior of level {prior.task.level!r}, "
                f"not {level!r}."
            )
        return prior
    model = load(path)
    if not isinstance(model, PriorChain):
        raise ModelPathError(
            f"config.sample.lower_priors: {path} holds a {model.family}, not a prior chain with a "
            f"{level!r} prior."
        )
    for prior in model.priors:
        if prior.task.level == level:
            return prior
    raise ModelPathError(
        f"config.sample.lower_priors: the chain {path} has priors of levels "
        f"{[p.task.level for p in model.priors]}, none of level {level!r}."
    )


def codes_checkpoint(path: str, spec: Any) -> dict[str, Any]:
    """{'workdir', 'step'} of the model a prior's codes came from: recorded in the workdir's spec.json
    at training time, or (a workdir trained before that) in its codes dataset's provenance.json."""
    spec_path = os.path.join(path, codes_dataset.SPEC_FILE)
    if os.path.isfile(spec_path):
        checkpoint = layout.read_json(spec_path).get("codes_checkpoint")
        if checkpoint:
            return checkpoint
    provenance = os.path.join(getattr(spec, "codes_dir", "") or "", layout.PROVENANCE)
    if not os.path.isfile(provenance):
        raise ModelPathError(
            f"The prior in {path} does not record which model its codes came from, and its codes dataset "
            f"({getattr(spec, 'codes_dir', None)!r}) has no {layout.PROVENANCE}: its decoder is unknown."
        )
    return layout.read_json(provenance)["checkpoint"]
