"""The numbers on a model card, computed by the loaded model itself (so anyone can reproduce them).

- Autoencoders: per-image MSE, PSNR and SSIM of `reconstruct` (MSE and PSNR on the unclipped
  reconstruction, as the training evaluation; SSIM on the reconstruction clipped to [0, 1]), and
  their means (the mean MSE's PSNR, as the training evaluation reports).
- Prior chains: the autoencoder's numbers, and each prior's held-out bits per code on the codes the
  autoencoder gives the evaluation images.
- InfoGAN: the accuracy of each categorical code on labelled images, with categories matched
  one-to-one to the labels (Hungarian matching, `vqlatent.infogan.evaluation`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vqlatent.data.device import images_to_float
from vqlatent.evaluation import metrics as metric_lib
from vqlatent.infogan import evaluation as ig_evaluation
from vqlatent.models import batching


def _per_image(reconstruction: jax.Array, images: jax.Array) -> dict[str, jax.Array]:
    images = images_to_float(images)
    sq = jnp.square(reconstruction - images)
    mse = jnp.mean(sq, axis=(1, 2, 3))
    return {
        "mse": mse,
        "psnr": jnp.where(mse > 0, -10.0 * jnp.log10(mse), jnp.inf),
        "ssim": metric_lib.ssim(jnp.clip(reconstruction, 0.0, 1.0), images),
    }


_per_image_jit = jax.jit(_per_image)


def reconstruction_metrics(model: Any, images: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """({'mse', 'psnr', 'ssim'}: per-image arrays, reconstructions clipped to [0, 1]) of an Autoencoder."""
    images = model.check_images(images)
    recon = model.reconstruct(images, clip=False)
    per_image = batching.run_bucketed(lambda pair: _per_image_jit(*pair), (recon, images), model.max_batch)
    return per_image, np.clip(recon, 0.0, 1.0)


def summarize(per_image: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Means over the images; `psnr` is the PSNR of the mean MSE (non-finite if it is)."""
    mse = float(np.mean(per_image["mse"], dtype=np.float64))
    return {
        "mse": mse,
        "psnr": metric_lib.psnr(mse) if np.isfinite(mse) else float("nan"),
        "ssim": float(np.mean(per_image["ssim"], dtype=np.float64)),
        "mean_psnr": float(np.mean(per_image["psnr"], dtype=np.float64)),
        "num_images": int(len(per_image["mse"])),
    }


def autoencoder_metrics(model: Any, batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Mean reconstruction metrics over (images, labels) batches."""
    parts = [reconstruction_metrics(model, images)[0] for images, _ in batches]
    return summarize({k: np.concatenate([p[k] for p in parts]) for k in parts[0]})


def prior_bits_per_code(chain: Any, batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """{'bits_per_code_<level>': mean over images} of each prior on the autoencoder's codes."""
    sums: dict[str, float] = {}
    count = 0
    for images, labels in batches:
        codes = chain.autoencoder.encode(images)
        for level, bits in chain.bits_per_code(codes, labels).items():
            sums[level] = sums.get(level, 0.0) + float(np.sum(bits, dtype=np.float64))
        count += len(images)
    return {f"bits_per_code_{level}": total / count for level, total in sums.items()}


def infogan_accuracy(model: Any, batches: Iterable[tuple[np.ndarray, np.ndarray]], num_classes: int) -> dict:
    """{'cat<i>_accuracy': matched accuracy} of each categorical code on labelled images."""
    predicted, labels = [], []
    for images, batch_labels in batches:
        predicted.append(model.infer(images)["categorical"])
        labels.append(np.asarray(batch_labels))
    predicted, labels = np.concatenate(predicted), np.concatenate(labels)
    out = {}
    for i, k in enumerate(model.latent_spec.categorical_sizes):
        confusion = np.zeros((k, num_classes), np.float64)
        np.add.at(confusion, (predicted[:, i], labels), 1.0)
        out[f"cat{i}_accuracy"] = float(ig_evaluation.matched_accuracy(confusion)[0])
    out["num_images"] = int(len(labels))
    return out
