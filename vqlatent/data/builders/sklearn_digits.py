"""TFDS builder for scikit-learn's bundled handwritten digits (UCI optdigits).

`sklearn.datasets.load_digits()` ships 1797 real 8x8 grey-scale digit images
with the scikit-learn wheel, so this dataset is available offline and prepares
in about a second. It is the project's embedded default dataset: tiny but real,
which makes it suitable for smoke tests and CPU-only experiments.

Features:
  image: uint8 tensor of shape (8, 8, 1), the original 0..16 intensities mapped
    to 0..255 by `round(v * 255 / 16)` (so 16 -> 255 exactly).
  label: `ClassLabel(num_classes=10)`, the digit.

Splits (fixed, seeded, identical on every machine):
  The 1797 examples (in `load_digits()` order) are permuted with
  `np.random.RandomState(SPLIT_SEED).permutation(1797)`; the first
  `NUM_TEST` = 300 permuted indices form `test`, the remaining 1497 form
  `train`. `RandomState` is used because its stream is frozen by NumPy's
  compatibility policy (NEP 19), so the split never changes across NumPy
  versions. Each record's key is its index into `load_digits()`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

NUM_EXAMPLES = 1797
NUM_TEST = 300
NUM_TRAIN = NUM_EXAMPLES - NUM_TEST
SPLIT_SEED = 0


def split_indices() -> dict[str, np.ndarray]:
    """Returns the sorted `load_digits()` indices of each split."""
    perm = np.random.RandomState(SPLIT_SEED).permutation(NUM_EXAMPLES)
    return {
        "train": np.sort(perm[NUM_TEST:]),
        "test": np.sort(perm[:NUM_TEST]),
    }


def load_images_and_labels() -> tuple[np.ndarray, np.ndarray]:
    """Returns all digits as uint8 (1797, 8, 8, 1) in 0..255 and int64 labels."""
    from sklearn import datasets as sk_datasets  # pylint: disable=g-import-not-at-top

    digits = sk_datasets.load_digits()
    raw = np.asarray(digits.images, dtype=np.float64)
    if raw.shape != (NUM_EXAMPLES, 8, 8):
        raise ValueError(f"Unexpected load_digits() images shape {raw.shape}.")
    if raw.min() < 0 or raw.max() > 16:
        raise ValueError("load_digits() values outside the expected 0..16 range.")
    images = np.round(raw * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = np.asarray(digits.target, dtype=np.int64)
    return images, labels


class SklearnDigits(tfds.core.GeneratorBasedBuilder):
    """scikit-learn's 8x8 handwritten digits as a TFDS dataset."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: seeded 1497/300 train/test."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "The 1797 8x8 handwritten digits bundled with scikit-learn "
                "(UCI ML hand-written digits, optdigits test set), intensities "
                "rescaled from 0..16 to 0..255. Fixed seeded split: 1497 train, "
                "300 test."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # Everything ships with scikit-learn.
        images, labels = load_images_and_labels()
        return {name: self._generate_examples(images, labels, idx) for name, idx in split_indices().items()}

    def _generate_examples(
        self, images: np.ndarray, labels: np.ndarray, indices: np.ndarray
    ) -> Iterator[tuple[int, dict[str, Any]]]:
        for i in indices:
            yield int(i), {"image": images[i], "label": int(labels[i])}
