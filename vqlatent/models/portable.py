"""Portable compiled artefacts of a model: `jax.export` programs that run with plain `jax`.

`--mode=export --config.export.portable=True` also writes, under `OUT/portable/`, the model's
inference functions lowered to StableHLO with the weights inside, serialised by `jax.export`:

  autoencoder   encode.<group>.jax  uint8 images [B, H, W, C] -> {level: int32 code maps}
                decode.<group>.jax  {level: int32 code maps} -> float32 images [B, H, W, C] in [0, 1]
  prior_chain   sample.<group>.jax  (labels int32 [N], seed uint32 []) -> ({level: codes}, images);
                                    N is the chain's `sample.batch_size` (fixed); temperature 1; the
                                    draws of `PriorChain.sample(N, labels, seed=seed)`
  infogan       generate.<group>.jax (noise [B, noise_dim], categorical int32 [B, n_cat],
                                     continuous [B, n_cont]) -> float32 images in [0, 1]

The batch size B is symbolic (any B) except for `sample`; the image size is the training size. `<group>` is `cpu`
(the CPU's forms of the per-backend hot paths) or `cuda_tpu` (the accelerators' forms, lowered for
both), since one program carries one set of forms (`vqlatent.backend`). Load and call one without
vqlatent:

  import jax, numpy as np
  encode = jax.export.deserialize(bytearray(open("portable/encode.cpu.jax", "rb").read()))
  codes = encode.call(np.zeros((4, 28, 28, 1), np.uint8))
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vqlatent import infogan as ig
from vqlatent import lowering
from vqlatent.data.device import images_to_float
from vqlatent.models.autoencoder import Autoencoder
from vqlatent.models.components import Component
from vqlatent.models.prior_chain import PriorChain
from vqlatent.priors import sampling
from vqlatent.trainers import base

GROUPS = {"cpu": ("cpu",), "cuda_tpu": ("cuda", "tpu")}
DIRECTORY = "portable"


def _with_forms(component: Component, platform: str) -> Component:
    """The component rebuilt with `platform`'s per-backend forms (the same state)."""
    config = lowering.force_forms(component.config, platform)
    return dataclasses.replace(component, config=config, task=base.make_task(config, component.spec))


def _programs(model: Any, platform: str) -> dict[str, tuple[Callable[..., Any], tuple[Any, ...]]]:
    """{name: (function, abstract arguments)} of a model's inference functions, with `platform`'s forms."""
    b = jax.export.symbolic_shape("b")[0]
    if isinstance(model, (Autoencoder, PriorChain)):
        ae_model = model.autoencoder if isinstance(model, PriorChain) else model
        ae = _with_forms(ae_model.component, platform)
        variables = {"params": ae.state.params, **ae.state.model_state}
        net = ae.task.model
        h, w, c = ae_model.image_shape
        levels = ae_model.code_levels

        def encode(images):
            return net.apply(variables, images_to_float(images), train=False)["codes"]

        def decode(codes):
            return jnp.clip(net.apply(variables, dict(codes), method="decode_codes"), 0.0, 1.0)

        if isinstance(model, Autoencoder):
            code_specs = {n: jax.ShapeDtypeStruct((b, *s.shape), jnp.int32) for n, s in levels.items()}
            return {
                "encode": (encode, (jax.ShapeDtypeStruct((b, h, w, c), jnp.uint8),)),
                "decode": (decode, (code_specs,)),
            }
        priors = [_with_forms(p, platform) for p in model.priors]
        specs = [p.task.prior_spec(p.state) for p in priors]

        def sample(labels, seed):
            codes = sampling.sample_hierarchy(
                specs,
                jax.random.fold_in(jax.random.PRNGKey(seed), 0),
                labels.shape[0],
                labels=labels,
                traced=True,
            )
            return codes, decode(codes)

        n = model.batch_size  # The samplers' loops need a concrete batch size.
        return {
            "sample": (
                sample,
                (jax.ShapeDtypeStruct((n,), jnp.int32), jax.ShapeDtypeStruct((), jnp.uint32)),
            )
        }
    gan = _with_forms(model.component, platform)
    spec = model.latent_spec

    def generate(noise, categorical, continuous):
        latents = ig.Latents(noise=noise, categorical=categorical, continuous=continuous)
        return gan.task.generate(gan.state, latents)

    return {
        "generate": (
            generate,
            (
                jax.ShapeDtypeStruct((b, spec.noise_dim), jnp.float32),
                jax.ShapeDtypeStruct((b, spec.num_categorical), jnp.int32),
                jax.ShapeDtypeStruct((b, spec.num_continuous), jnp.float32),
            ),
        )
    }


def write(model: Any, out_dir: str) -> dict[str, str]:
    """Writes every program for every group under `out_dir/portable/`; returns {file: platforms}."""
    directory = os.path.join(out_dir, DIRECTORY)
    os.makedirs(directory, exist_ok=True)
    written = {}
    for group, platforms in GROUPS.items():
        for name, (fn, args) in _programs(model, platforms[0]).items():
            exported = lowering.export(fn, *args, platforms=platforms, forms=platforms[0])
            lowering.check_portable(exported, platforms)
            path = os.path.join(directory, f"{name}.{group}.jax")
            with open(path, "wb") as f:
                f.write(exported.serialize())
            written[os.path.join(DIRECTORY, os.path.basename(path))] = ",".join(platforms)
    return written


def call(path: str, *args: Any) -> Any:
    """Deserialises and calls a portable program (what a user does with plain jax)."""
    with open(path, "rb") as f:
        exported = jax.export.deserialize(bytearray(f.read()))
    return jax.device_get(exported.call(*jax.tree.map(np.asarray, args)))
