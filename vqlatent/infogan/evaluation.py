"""InfoGAN's evaluation figures: how well a categorical code recovers the classes, and the summary.

The paper (section 7.2) reports that the 10-way code of an InfoGAN trained on
MNIST classifies digits with 5% error "when each category is matched to a
digit". We measure exactly that on the test set: Q's most likely category for
each real test image gives a confusion matrix N[k, y] (category k, label y); the
categories are matched to the labels by the one-to-one assignment that maximises
the number of agreeing examples (the Hungarian algorithm,
`scipy.optimize.linear_sum_assignment`), and

  accuracy = sum_k N[k, pi(k)] / sum_{k,y} N[k, y].

With K categories and C labels, min(K, C) pairs are matched; examples of
unmatched categories count as errors. We also report the many-to-one "purity"
(each category mapped to its most frequent label), which equals the accuracy
when the matched assignment is also the per-category majority.

`summarize` turns the eval totals of `vqlatent.trainers.infogan` (sums over the
eval batches) into the figures of its eval JSON:
  * on generated samples (as many as eval examples): L_I and H(c) per code (eq. 5);
  * on the real eval split: each categorical code's unsupervised accuracy — Q's
    most likely category matched one-to-one to the labels (Hungarian) — with the
    confusion matrix, assignment and purity;
  * per continuous code, along random sweeps from traversal.low to traversal.high with the
    rest fixed: the within-sweep correlation and slope of the digits' slant and width
    (`vqlatent.infogan.measures`; per-value means too), and with `traversal.classifier_workdir`
    the fraction of sweeps the project's classifier sees as one class.
Beside them the task writes PNG grids (`vqlatent.infogan.traversal`): samples per category of
the first categorical code, and one traversal per continuous code (Figure 2: rows =
categories, columns = the code swept from traversal.low to traversal.high, noise fixed per
row). `--mode=traverse` writes them with `traversal.num_values` columns, and for each
traversal a copy with the mean slant and width of each column written under it
(<grid>_..._measured.png) and the measures of every image (<grid>_..._measures.json).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

from vqlatent.infogan import measures
from vqlatent.infogan.latents import LatentSpec


def images_checksum(images: jax.Array) -> jax.Array:
    """A uint32 fingerprint of a batch's pixels (modular integer sum: the same on any mesh)."""
    pixels = jnp.round(images * 255.0).astype(jnp.uint32).reshape(-1)
    positions = jnp.arange(1, pixels.size + 1, dtype=jnp.uint32)
    return jnp.sum(pixels * positions, dtype=jnp.uint32)


def confusion_matrix(
    predicted: jax.Array,
    labels: jax.Array,
    num_categories: int,
    num_classes: int,
    weights: jax.Array | None = None,
) -> jax.Array:
    """(K, C) float32 counts N[k, y] of (predicted category, label) pairs, weighted
    (e.g. by the eval mask of padded examples). Jit-friendly: sums over the batch."""
    if weights is None:
        weights = jnp.ones(predicted.shape, jnp.float32)
    flat = predicted.astype(jnp.int32) * num_classes + labels.astype(jnp.int32)
    counts = jnp.zeros((num_categories * num_classes,), jnp.float32).at[flat].add(weights.astype(jnp.float32))
    return counts.reshape(num_categories, num_classes)


def matched_accuracy(confusion: np.ndarray) -> tuple[float, dict[int, int]]:
    """Best one-to-one matching of categories (rows) to labels (columns).

    Returns (accuracy, {category: label}); accuracy is 0 for an empty matrix.
    """
    confusion = np.asarray(confusion, np.float64)
    if confusion.ndim != 2:
        raise ValueError(f"confusion must be a (categories, labels) matrix, got shape {confusion.shape}.")
    total = confusion.sum()
    rows, cols = scipy.optimize.linear_sum_assignment(confusion, maximize=True)
    matched = confusion[rows, cols].sum()
    return (float(matched / total) if total > 0 else 0.0), {int(r): int(c) for r, c in zip(rows, cols)}


def purity(confusion: np.ndarray) -> float:
    """Many-to-one accuracy: each category predicts its most frequent label."""
    confusion = np.asarray(confusion, np.float64)
    total = confusion.sum()
    return float(confusion.max(axis=1).sum() / total) if total > 0 else 0.0


def summarize(
    totals: Mapping[str, np.ndarray],
    spec: LatentSpec,
    entropies: Mapping[str, float],
    num_classes: int | None,
) -> dict[str, Any]:
    """Eval totals (sums over the eval batches) -> the figures of the eval JSON."""
    n = float(totals["num_examples"])
    out: dict[str, Any] = {
        "num_examples": int(n),
        "d_real_prob": float(totals["d_real_prob"]) / n,
        "d_fake_prob": float(totals["d_fake_prob"]) / n,
    }
    for name, entropy in entropies.items():
        mean_ll = float(totals[f"{name}_log_likelihood"]) / n
        out[f"{name}_mi_lower_bound"] = mean_ll + entropy
        out[f"{name}_entropy"] = entropy
    for j in range(spec.num_continuous):
        if f"cont{j}_slant_sxy" not in totals:
            break
        for name in measures.MEASURES:
            stats = {k: totals[f"cont{j}_{name}_{k}"] for k in ("sxy", "sxx", "syy", "count", "column_sum")}
            summary = measures.sweep_summary(stats)
            out[f"cont{j}_{name}_correlation"] = summary["correlation"]
            out[f"cont{j}_{name}_slope"] = summary["slope"]
            out[f"cont{j}_{name}_mean_per_value"] = summary["mean_per_value"]
        if f"cont{j}_class_kept" in totals:
            num_sweeps = float(totals[f"cont{j}_slant_count"])
            num_values = len(out[f"cont{j}_slant_mean_per_value"])
            out[f"cont{j}_class_kept_fraction"] = float(totals[f"cont{j}_class_kept"]) / num_sweeps
            out[f"cont{j}_class_agreement"] = float(totals[f"cont{j}_class_agree"]) / (
                num_sweeps * num_values
            )
    for i in range(spec.num_categorical):
        counts = np.asarray(totals[f"cat{i}_counts"])
        out[f"cat{i}_categories_used"] = int(np.count_nonzero(counts))
        if num_classes:
            confusion = np.asarray(totals[f"cat{i}_confusion"])
            accuracy, assignment = matched_accuracy(confusion)
            out[f"cat{i}_accuracy"] = accuracy
            out[f"cat{i}_error"] = 1.0 - accuracy
            out[f"cat{i}_purity"] = purity(confusion)
            out[f"cat{i}_assignment"] = [assignment.get(k, -1) for k in range(confusion.shape[0])]
            out[f"cat{i}_confusion"] = confusion.astype(np.int64).tolist()
    return out
