"""Sample quality without downloads: a classifier trained by the project judges the samples.

Two figures, both computed with the project's own classifier
(`vqlatent.nets.classifier`, `configs/classifier.py`) in place of Inception:

  label accuracy    the fraction of class-conditional samples that the
                    classifier assigns to the class they were drawn for;
  Frechet distance  between Gaussians fitted to the classifier's penultimate
                    features of two image sets (Heusel et al. 2017, section
                    "Frechet Inception Distance"; Dowson & Landau 1982):

      d^2((m_1, C_1), (m_2, C_2)) = |m_1 - m_2|^2 + Tr(C_1 + C_2 - 2 (C_1 C_2)^(1/2)).

Both are biased by the finite number of images (the Frechet distance of two
disjoint sets of real images is > 0), so they are reported next to their
*floor*: the same figures for as many held-out real images
(`split_reference_and_heldout`). Pure numpy / scipy functions of features,
logits and labels.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
from absl import logging


def gaussian_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean (D,), unbiased covariance (D, D)) of features (N, D), in float64."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(
            f"features of shape {features.shape}: need (N, D) with N >= 2 examples to estimate a covariance."
        )
    return features.mean(axis=0), np.cov(features, rowvar=False, ddof=1).reshape(features.shape[1], -1)


def frechet_distance(
    mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray, eps: float = 1e-6
) -> float:
    """Frechet distance between N(mu1, cov1) and N(mu2, cov2) (the squared one, as FID reports):

      d^2 = |mu1 - mu2|^2 + Tr(cov1) + Tr(cov2) - 2 Tr((cov1 cov2)^(1/2))

    (Heusel et al. 2017, "Frechet Inception Distance"). The matrix square root is
    scipy.linalg.sqrtm's; its real part is kept (a singular product can give
    round-off imaginary parts). Dimensions constant in both sets (zero variance:
    ReLU units that never fire, common in a classifier's features) have zero rows
    and columns in both covariances, so they add only their squared mean
    difference; the trace terms are computed on the other dimensions, which is
    exact and keeps the product from being singular for that reason. If the square
    root is still not finite (nearly singular covariances: fewer examples than
    feature dimensions), it is recomputed with `eps` added to both diagonals, and a
    warning is logged.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    cov1, cov2 = np.atleast_2d(np.asarray(cov1, np.float64)), np.atleast_2d(np.asarray(cov2, np.float64))
    dim = mu1.shape[0]
    if mu1.shape != (dim,) or mu2.shape != (dim,) or cov1.shape != (dim, dim) or cov2.shape != (dim, dim):
        raise ValueError(
            f"frechet_distance: means {mu1.shape}, {mu2.shape} and covariances {cov1.shape}, "
            f"{cov2.shape} must be (D,) and (D, D) with the same D."
        )
    diff = mu1 - mu2
    varying = (np.diag(cov1) > 0) | (np.diag(cov2) > 0)
    cov1, cov2 = cov1[np.ix_(varying, varying)], cov2[np.ix_(varying, varying)]
    covmean = scipy.linalg.sqrtm(cov1 @ cov2)
    if not np.all(np.isfinite(covmean)):
        logging.warning(
            "frechet_distance: sqrtm(cov1 cov2) is not finite (singular covariances); adding "
            "%g to the diagonals. Use more examples than feature dimensions (%d).",
            eps,
            int(varying.sum()),
        )
        offset = eps * np.eye(len(cov1))
        covmean = scipy.linalg.sqrtm((cov1 + offset) @ (cov2 + offset))
    covmean = np.real(covmean)
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * np.trace(covmean))


def predicted_labels(logits: np.ndarray) -> np.ndarray:
    """(N,) int: the most likely class of each row of logits (N, num_classes)."""
    logits = np.asarray(logits)
    if logits.ndim != 2:
        raise ValueError(f"logits of shape {logits.shape}: expected (N, num_classes).")
    return np.argmax(logits, axis=-1).astype(np.int64)


def label_accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of examples whose predicted class equals their label."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.shape != labels.shape or predictions.ndim != 1 or not len(labels):
        raise ValueError(
            f"predictions {predictions.shape} and labels {labels.shape}: need two non-empty "
            f"(N,) arrays of the same N."
        )
    return float(np.mean(predictions == labels))


def per_class_accuracy(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> list[float | None]:
    """Accuracy within each class (None for a class with no example)."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    label_accuracy(predictions, labels)  # Shape checks.
    return [
        float(np.mean(predictions[labels == c] == c)) if np.any(labels == c) else None
        for c in range(num_classes)
    ]


def split_reference_and_heldout(
    labels: np.ndarray, per_class: int, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (reference, heldout) of a labelled set: the first `per_class` examples of each class
    (in the given order) are held out, all the others are the reference.

    The held-out part has the class balance of `per_class` class-conditional
    samples per class, so its figures against the reference are the floor of the
    samples' figures against the same reference.
    """
    labels = np.asarray(labels)
    counts = np.bincount(labels, minlength=num_classes)[:num_classes]
    short = [c for c in range(num_classes) if counts[c] <= per_class]
    if short:
        raise ValueError(
            f"The real eval split has only {[int(counts[c]) for c in short]} images of "
            f"class(es) {short}: it needs more than per_class={per_class} of every class "
            f"(held-out images plus a reference); lower config.sample.eval_per_class."
        )
    heldout = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(num_classes)])
    heldout = np.sort(heldout)
    reference = np.setdiff1d(np.arange(len(labels)), heldout)
    return reference, heldout
