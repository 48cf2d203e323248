"""How well a categorical code recovers the classes: unsupervised accuracy.

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
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize


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
